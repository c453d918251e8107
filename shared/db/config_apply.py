"""Writes a validated `ConfigFile` to the database in the caller's transaction, idempotently.

Rows are upserted by id (hosts by application and address) and rows missing from the file are
removed. A secret that leaves its task (or whose task or itself is removed) while one of its requests
is active is revoked, not forgotten: PENDING requests are cancelled and approved or elevated ones
move to REVOKING for the reaper. Rows a REVOKING request still needs to reach its host (its secret,
application, host, credential provider and task) are kept until the removal is confirmed; the next
apply after that removes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config_file import ConfigFile
from shared.db import audit, outbox
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
from shared.db.transitions import Cause, transition
from shared.events import ElevationCancelled, new_event
from shared.states import State, Trigger

ACTOR = "jitctl apply"


@dataclass
class Summary:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed or self.ended)

    def as_dict(self) -> dict[str, list[str]]:
        return {"created": self.created, "updated": self.updated, "removed": self.removed, "kept": self.kept,
                "ended_requests": self.ended}


def _upsert(session: Session, summary: Summary, label: str, model: Any, key: Any, values: dict[str, Any]) -> None:
    row = session.get(model, key)
    if row is None:
        session.add(model(**values))
        summary.created.append(label)
        return
    changed = [k for k, v in values.items() if getattr(row, k) != v]
    for k in changed:
        setattr(row, k, values[k])
    if changed:
        summary.updated.append(f"{label} ({', '.join(changed)})")


def apply_config(session: Session, config: ConfigFile, *, now: datetime) -> Summary:
    summary = Summary()
    _apply_users(session, config, summary)
    for p in config.credential_providers:
        _upsert(session, summary, f"credential provider {p.id}", CredentialProvider, p.id, {
            "id": p.id, "username": p.username, "password_env": p.password_env, "password_file": p.password_file})
    wanted_hosts: set[tuple[str, str]] = set()
    for app in config.applications:
        _upsert(session, summary, f"application {app.id}", Application, app.id, {"id": app.id})
        session.flush()
        for h in app.hosts:
            assert h.winrm is not None  # cross_check refused hosts without WinRM
            wanted_hosts.add((app.id, h.address))
            existing = _host(session, app.id, h.address)
            values = {"application_id": app.id, "address": h.address, "scheme": h.winrm.scheme,
                      "port": h.winrm.effective_port, "transport": h.winrm.transport,
                      "verify_tls": h.winrm.verify_tls, "ca_file": h.winrm.ca_file}
            _upsert(session, summary, f"host {h.address} ({app.id})", Host, existing.id if existing else -1, values)
    session.flush()
    for s in config.secrets:
        _upsert(session, summary, f"secret {s.id}", Secret, s.id, {
            "id": s.id, "account": s.account, "domain": s.domain, "application_id": s.application,
            "credential_provider_id": s.credential_provider, "checkout_enabled": s.checkout_enabled})
    for t in config.tasks:
        _upsert(session, summary, f"task {t.id}", Task, t.id, {
            "id": t.id, "group": t.group, "approval_required": t.approval == "required",
            "approval_window_seconds": t.approval_window_seconds, "removal_policy": t.removal_policy,
            "on_revoke": t.on_revoke})
    session.flush()
    links = {sid: t.id for t in config.tasks for sid in t.secrets}
    _apply_links(session, links, summary)
    _end_orphaned_requests(session, links, summary, now)
    _remove_missing(session, config, wanted_hosts, summary)
    if summary.changed:
        audit.record(session, at=now, action="config.applied", actor=ACTOR, details=summary.as_dict())
    return summary


def _host(session: Session, app_id: str, address: str) -> Host | None:
    return session.scalars(select(Host).where(Host.application_id == app_id, Host.address == address)).first()


def _apply_users(session: Session, config: ConfigFile, summary: Summary) -> None:
    for u in config.users:
        _upsert(session, summary, f"user {u.id}", User, u.id, {"id": u.id, "kind": u.kind})
        session.flush()
        have = set(session.scalars(select(UserPermission.permission).where(UserPermission.user_id == u.id)))
        want = set(u.permissions)
        for p in sorted(have - want):
            session.delete(session.get(UserPermission, (u.id, p)))
        session.add_all(UserPermission(user_id=u.id, permission=p) for p in sorted(want - have))
        if have and have != want:
            summary.updated.append(f"user {u.id} (permissions)")


def _apply_links(session: Session, links: dict[str, str], summary: Summary) -> None:
    current = {ts.secret_id: ts for ts in session.scalars(select(TaskSecret))}
    for sid, link in current.items():
        if links.get(sid) != link.task_id:
            session.delete(link)
            summary.removed.append(f"secret {sid} from task {link.task_id}")
    session.flush()  # a secret moving between tasks: free its unique slot first
    for sid, task_id in links.items():
        if sid not in current or current[sid].task_id != task_id:
            session.add(TaskSecret(task_id=task_id, secret_id=sid))
            summary.created.append(f"secret {sid} in task {task_id}")
    session.flush()


def _end_orphaned_requests(session: Session, links: dict[str, str], summary: Summary, now: datetime) -> None:
    """Active requests whose secret is no longer in the task they were approved for are ended now."""
    live = [State.PENDING.value, State.APPROVED.value, State.ELEVATING.value, State.ELEVATED.value]
    for row in session.scalars(select(Request).where(Request.state.in_(live))).all():
        if row.task_id is not None and links.get(row.secret_id) == row.task_id:
            continue
        reason = f"secret {row.secret_id} was removed from task {row.task_id} by the configuration"
        cause = Cause(ACTOR, None, reason)
        if row.state == State.PENDING.value:
            if transition(session, row, Trigger.END, now=now, cause=cause,
                          values={"end_trigger": "config_removed", "ended_at": now}) is not None:
                outbox.enqueue(session, new_event("elevation.cancelled", ElevationCancelled(
                    request_id=row.id, reason=reason), source="jit/jitctl"))
                summary.ended.append(f"request {row.id} cancelled")
        elif transition(session, row, Trigger.END, now=now, cause=cause, values={
                "end_trigger": "config_removed", "revoking_since": now, "next_attempt_at": now}) is not None:
            summary.ended.append(f"request {row.id} revoking")


def _remove_missing(session: Session, config: ConfigFile, wanted_hosts: set[tuple[str, str]],
                    summary: Summary) -> None:
    revoking = session.scalars(select(Request).where(Request.state == State.REVOKING.value)).all()
    keep_secrets = {r.secret_id for r in revoking}
    keep_tasks = {r.task_id for r in revoking if r.task_id}
    keep_hosts: set[tuple[str, str]] = set()
    keep_apps: set[str] = set()
    keep_providers: set[str] = set()
    for r in revoking:
        secret = session.get(Secret, r.secret_id)
        if secret is not None:
            keep_hosts.add((secret.application_id, r.host))
            keep_apps.add(secret.application_id)
            keep_providers.add(secret.credential_provider_id)

    def remove(label: str, row: Any, keep: bool) -> None:
        if keep:
            summary.kept.append(f"{label} (a request is still being revoked)")
            return
        session.delete(row)
        summary.removed.append(label)

    for task in session.scalars(select(Task).where(Task.id.not_in([t.id for t in config.tasks]))).all():
        remove(f"task {task.id}", task, task.id in keep_tasks)
    for secret in session.scalars(select(Secret).where(Secret.id.not_in([s.id for s in config.secrets]))).all():
        remove(f"secret {secret.id}", secret, secret.id in keep_secrets)
    session.flush()
    for host in session.scalars(select(Host)).all():
        key = (host.application_id, host.address)
        if key not in wanted_hosts:
            remove(f"host {host.address} ({host.application_id})", host, key in keep_hosts)
    session.flush()
    for app in session.scalars(select(Application).where(
            Application.id.not_in([a.id for a in config.applications]))).all():
        remove(f"application {app.id}", app, app.id in keep_apps)
    for prov in session.scalars(select(CredentialProvider).where(
            CredentialProvider.id.not_in([p.id for p in config.credential_providers]))).all():
        remove(f"credential provider {prov.id}", prov, prov.id in keep_providers)
    for user in session.scalars(select(User).where(User.id.not_in([u.id for u in config.users]))).all():
        remove(f"user {user.id}", user, False)
    session.flush()
