"""Where and how to reach the account of a request: the host's WinRM settings and the task's credentials.

Shared by the elevator and the reaper. The request carries a snapshot of the account and group it
was approved for. When the elevator claims it, it also snapshots the endpoint and the credential-provider
reference (never a password) into `requests.target`: a grant can always be ended, even after the
configuration that made it has been changed or removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.credentials import CredentialError, resolve_password
from shared.db.models import CredentialProvider, Host, Request, Secret, Task
from shared.hosts import canonical_host
from shared.states import HOLDS_MEMBERSHIP
from shared.winrm import Credentials, HostEndpoint
from shared.winrm.names import member_name


class TargetError(Exception):
    """The configuration no longer allows reaching this request's host (permanent until fixed)."""


@dataclass(frozen=True)
class Target:
    endpoint: HostEndpoint
    provider_id: str
    username: str
    password_env: str | None
    password_file: str | None
    account: str
    group: str
    on_revoke: str

    def snapshot(self) -> dict[str, Any]:
        e = self.endpoint
        return {"endpoint": {"address": e.address, "scheme": e.scheme, "port": e.port, "transport": e.transport,
                             "verify_tls": e.verify_tls, "ca_file": e.ca_file},
                "provider_id": self.provider_id, "username": self.username, "password_env": self.password_env,
                "password_file": self.password_file, "account": self.account, "group": self.group,
                "on_revoke": self.on_revoke}

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> Target:
        try:
            return cls(endpoint=HostEndpoint(**data["endpoint"]), provider_id=data["provider_id"],
                       username=data["username"], password_env=data.get("password_env"),
                       password_file=data.get("password_file"), account=data["account"], group=data["group"],
                       on_revoke=data.get("on_revoke", "report"))
        except (KeyError, TypeError, ValueError) as exc:
            raise TargetError(f"stored target is unreadable: {exc}") from None

    def credentials(self, environ: Mapping[str, str] | None = None) -> Credentials:
        try:
            password = resolve_password(self.provider_id, self.password_env, self.password_file, environ)
        except CredentialError as exc:
            raise TargetError(str(exc)) from None
        return Credentials(username=self.username, password=password)


def target_for(session: Session, request: Request) -> Target:
    secret = session.get(Secret, request.secret_id)
    if secret is None:
        raise TargetError(f"secret {request.secret_id} is no longer configured")
    host = session.scalars(
        select(Host).where(Host.application_id == secret.application_id,
                           Host.address == canonical_host(request.host))
    ).first()
    if host is None:
        raise TargetError(f"host {request.host} is not a host of application {secret.application_id}")
    provider = session.get(CredentialProvider, secret.credential_provider_id)
    if provider is None:
        raise TargetError(f"credential provider {secret.credential_provider_id} is not configured")
    task = session.get(Task, request.task_id) if request.task_id else None
    endpoint = HostEndpoint(address=host.address, scheme=host.scheme, port=host.port, transport=host.transport,
                            verify_tls=host.verify_tls, ca_file=host.ca_file)
    return Target(
        endpoint=endpoint, provider_id=provider.id, username=provider.username,
        password_env=provider.password_env, password_file=provider.password_file,
        account=request.account or member_name(secret.account, secret.domain),
        group=request.group or (task.group if task else ""),
        on_revoke=task.on_revoke if task else "report",
    )


def target_of(session: Session, request: Request) -> Target:
    """The grant's own snapshot when it has one (taken at claim), else the configuration as it is now."""
    if request.target:
        return Target.from_snapshot(request.target)
    return target_for(session, request)


def other_holders(session: Session, request: Request) -> list[Request]:
    """Other requests that may hold the same account in the same group on the same host.

    The membership is removed only when this list is empty (ref-counted removal), and a membership
    that was there before us (pre_existing) is never removed.
    """
    return list(session.scalars(
        select(Request).where(
            Request.host == request.host, Request.group == request.group,
            # Windows compares account names case-insensitively.
            func.lower(Request.account) == (request.account or "").lower(),
            Request.id != request.id, Request.state.in_([s.value for s in HOLDS_MEMBERSHIP]),
        )
    ))
