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

from sqlalchemy import false, select
from sqlalchemy.orm import Session

from shared.credentials import CredentialError, resolve_password
from shared.db.models import CredentialProvider, Host, Request, Secret, Task
from shared.hosts import canonical_host
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
    """The configuration as it is now (one query: secret, host, credential provider and task)."""
    task_match = Task.id == request.task_id if request.task_id else false()
    row = session.execute(
        select(Secret.account, Secret.domain, Secret.application_id, Secret.credential_provider_id,
               Host.address, Host.scheme, Host.port, Host.transport, Host.verify_tls, Host.ca_file,
               CredentialProvider.id.label("provider_id"), CredentialProvider.username, CredentialProvider.password_env,
               CredentialProvider.password_file, Task.group, Task.on_revoke)
        .select_from(Secret)
        .outerjoin(Host, (Host.application_id == Secret.application_id)
                   & (Host.address == canonical_host(request.host)))
        .outerjoin(CredentialProvider, CredentialProvider.id == Secret.credential_provider_id)
        .outerjoin(Task, task_match)
        .where(Secret.id == request.secret_id).limit(1)).first()
    if row is None:
        raise TargetError(f"secret {request.secret_id} is no longer configured")
    if row.address is None:
        raise TargetError(f"host {request.host} is not a host of application {row.application_id}")
    if row.provider_id is None:
        raise TargetError(f"credential provider {row.credential_provider_id} is not configured")
    endpoint = HostEndpoint(address=row.address, scheme=row.scheme, port=row.port, transport=row.transport,
                            verify_tls=row.verify_tls, ca_file=row.ca_file)
    return Target(
        endpoint=endpoint, provider_id=row.provider_id, username=row.username,
        password_env=row.password_env, password_file=row.password_file,
        account=request.account or member_name(row.account, row.domain),
        group=request.group or (row.group or ""),
        on_revoke=row.on_revoke or "report",
    )


def target_of(session: Session, request: Request) -> Target:
    """The grant's own snapshot when it has one (taken at claim), else the configuration as it is now."""
    if request.target:
        return Target.from_snapshot(request.target)
    return target_for(session, request)
