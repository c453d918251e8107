"""Test data written straight to the database: configuration rows and requests in any state.

Tests of the elevator and the reaper start from here instead of driving the approval daemon, so
each can begin at the state it is about.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.elevator.handler import Elevator
from shared.clock import Clock
from shared.db.engine import transaction
from shared.db.models import (
    Application,
    CredentialProvider,
    Host,
    Request,
    Secret,
    Task,
    TaskSecret,
    User,
    UserPermission,
)
from shared.events import new_event
from shared.settings import Settings
from shared.states import State
from shared.winrm import WinRMPort

REQUESTER = ["LOGIN_TO_WEB_UI", "VIEW_APPLICATION", "CONNECT", "VIEW_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS"]
APPROVER = ["LOGIN_TO_WEB_UI", "APPROVE_PRIVILEGE_ELEVATION_REQUEST", "APPROVE_SECRET_ACCESS_REQUEST",
            "VIEW_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS", "UNLOCK_SECRET"]
ADMINISTRATORS = "S-1-5-32-544"
PASSWORD_ENV = "JIT_TEST_CRED_PASSWORD"


@dataclass(frozen=True)
class HostSpec:
    address: str
    port: int
    scheme: str = "http"
    transport: str = "basic"
    verify_tls: bool = False
    ca_file: str | None = None


def seed_config(factory: sessionmaker[Session], hosts: list[HostSpec], *, username: str = "svc-jit",
                secrets_per_host: int = 1, approval_required: bool = True, window: int = 3600,
                on_revoke: str = "report", domain: str | None = None) -> dict[str, list[str]]:
    """Users alice (requester), bob (approver), victor (vendor rep); one application and task; secrets per host.

    Returns {"secrets": [...]} with secret ids; secret i of host h is `sec-<h>-<i>` for account `acct-<h>-<i>`.
    """
    secrets: list[str] = []
    with transaction(factory) as s:
        for uid, kind, perms in [("alice", "internal", REQUESTER), ("bob", "internal", APPROVER),
                                 ("carol", "internal", APPROVER), ("victor", "vendor_rep", REQUESTER)]:
            s.add(User(id=uid, kind=kind))
            s.add_all(UserPermission(user_id=uid, permission=p) for p in perms)
        s.add(CredentialProvider(id="prov", username=username, password_env=PASSWORD_ENV))
        s.add(Application(id="app"))
        s.add(Task(id="task", group=ADMINISTRATORS, approval_required=approval_required,
                   approval_window_seconds=window, removal_policy="on_secret_check_in", on_revoke=on_revoke))
        s.flush()
        for h, spec in enumerate(hosts):
            s.add(Host(application_id="app", address=spec.address, scheme=spec.scheme, port=spec.port,
                       transport=spec.transport, verify_tls=spec.verify_tls, ca_file=spec.ca_file))
            for i in range(secrets_per_host):
                sid = f"sec-{h}-{i}"
                s.add(Secret(id=sid, account=f"acct-{h}-{i}", domain=domain, application_id="app",
                             credential_provider_id="prov", checkout_enabled=True))
                secrets.append(sid)
        s.flush()
        s.add_all(TaskSecret(task_id="task", secret_id=sid) for sid in secrets)
    return {"secrets": secrets}


def make_request(factory: sessionmaker[Session], *, secret_id: str, host: str, state: State = State.APPROVED,
                 account: str | None = None, now: datetime | None = None, expires_in: float = 3600,
                 **values: Any) -> Request:
    """A request row as jit-approval would have left it in `state`."""
    now = now or datetime.now(UTC)
    h, i = secret_id.split("-")[1:3]
    row = Request(
        id=values.pop("id", f"req-{uuid.uuid4().hex[:12]}"),
        checkout_id=values.pop("checkout_id", f"co-{uuid.uuid4().hex[:12]}"),
        secret_id=secret_id, requester_id="alice", host=host, justification="test", state=state.value,
        task_id="task", account=account or f"acct-{h}-{i}", group=ADMINISTRATORS,
        approver_id="bob" if state is not State.PENDING else None, requested_at=now,
        checkout_expires_at=now + timedelta(seconds=expires_in), decided_at=now,
        expires_at=now + timedelta(seconds=expires_in) if state is not State.PENDING else None,
        pre_existing=False, failed=False, attempts=0, updated_at=now, **values,
    )
    with transaction(factory) as s:
        s.add(row)
    return row


def elevate(factory: sessionmaker[Session], port: WinRMPort, request: Request, *,
            environ: Mapping[str, str] | None = None, clock: Clock | None = None,
            settings: Settings | None = None) -> Request:
    """Run the real elevator on an APPROVED request, so its ledger hold, membership and baseline are exactly
    what production leaves (a row written straight as ELEVATED holds nothing, and the reaper removes nothing
    for it). `environ` defaults to the process environment (the `password` fixtures set the password there)."""
    settings = settings or Settings(retry_initial_seconds=0.01, retry_max_seconds=0.02, elevation_retry_seconds=0.5)
    Elevator(factory, port, settings, clock, environ=environ).process(new_event("elevation.approved", {
        "request_id": request.id, "checkout_id": request.checkout_id, "secret_id": request.secret_id,
        "approver_id": "bob", "expires_at": request.expires_at or datetime.now(UTC)}, source="test"))
    with transaction(factory) as s:
        row = s.get(Request, request.id, populate_existing=True)
        assert row is not None
        return row


def make_grant(factory: sessionmaker[Session], port: WinRMPort, *, secret_id: str, host: str,
               environ: Mapping[str, str] | None = None, **values: Any) -> Request:
    """An ELEVATED request as the elevator leaves it (see `elevate`); `values` as for `make_request`."""
    row = elevate(factory, port, make_request(factory, secret_id=secret_id, host=host, **values), environ=environ)
    assert row.state == State.ELEVATED.value, (row.state, row.error)
    return row
