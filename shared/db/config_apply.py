"""Writes a validated `ConfigFile` to the database in the caller's transaction, idempotently.

Rows are upserted by id (hosts by application and canonical address). Rows missing from the file are
removed only with `prune=True` (`jitctl apply --prune`); without it a file that would remove anything
is refused whole (`ApplyRefused`, nothing written), naming each removal. Grants survive configuration:
a file that would remove (or move away) the secret, task, application, host or credential provider an
APPROVED, ELEVATING or ELEVATED request depends on is refused the same way, naming each such request
and what would remove it; with `end_active=True` those requests are ended first, in the same
transaction (they move to REVOKING and the reaper removes the account). PENDING requests that depend
on removed rows are cancelled without asking, and so is every active request of a requester the file
removes or demotes (vendor representative, or a requester permission lost). A REVOKING request blocks
nothing: it carries what it needs to end in its own snapshot. Every ending is a compare-and-set
transition audited with actor `jitctl apply`.

`plan_config` computes the same changes as if `--prune --end-active` were given and leaves the
session for the caller to roll back: `jitctl apply --dry-run` and `jitctl diff` print it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.reaper.ending import end_request
from shared.config_file import ConfigFile
from shared.db import audit
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
from shared.db.transitions import Cause
from shared.hosts import canonical_host
from shared.rules import UserFacts, requester_refusal
from shared.states import State

ACTOR = "jitctl apply"
END_TRIGGER = "config_removed"
# Requests whose removal needs the operator's say-so (--end-active): they may hold, or be about to
# hold, a membership on a host. A PENDING request is simply cancelled; a REVOKING one is already ending.
GUARDED = frozenset({State.APPROVED, State.ELEVATING, State.ELEVATED})
ENDABLE = GUARDED | {State.PENDING}


@dataclass(frozen=True)
class Conflict:
    """An active request and what in the new file would remove something it depends on."""

    request_id: str
    state: str
    host: str
    secret_id: str
    causes: tuple[str, ...]

    def describe(self) -> str:
        return (f"request {self.request_id} ({self.state}, host {self.host}, secret {self.secret_id}): "
                + "; ".join(self.causes))


class ApplyRefused(Exception):
    """The file would remove rows without `prune`, or what active requests depend on without `end_active`;
    the caller rolls back, so nothing is written."""

    def __init__(self, conflicts: list[Conflict], removals: list[str] | None = None) -> None:
        self.conflicts = conflicts
        self.removals = removals or []
        parts = []
        if self.removals:
            parts.append(f"this file removes {len(self.removals)} item(s) that are not in it; nothing was changed. "
                         "Apply it with --prune to remove them, or add them back to the file (see what would "
                         "change with --dry-run):\n" + "\n".join(f"  - {r}" for r in self.removals))
        if conflicts:
            parts.append(f"{len(conflicts)} active request(s) depend on what this file removes; nothing was changed. "
                         "Apply it with --end-active to end them first (they are revoked), or wait until they "
                         "end:\n" + "\n".join(f"  - {c.describe()}" for c in conflicts))
        super().__init__("refused: " + "\n".join(parts))


ActiveRequestsError = ApplyRefused  # the name callers and tests used first

Progress = Callable[[str, int, int], None]  # (what, done, total)


def _quiet(_what: str, _done: int, _total: int) -> None:
    """The default progress hook: nothing."""


@dataclass
class Summary:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)  # the ended requests that needed end_active

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed or self.ended)

    def as_dict(self) -> dict[str, list[str]]:
        return {"created": self.created, "updated": self.updated, "removed": self.removed,
                "ended_requests": self.ended}


@dataclass(frozen=True)
class _Ending:
    request: Request
    reason: str


def apply_config(session: Session, config: ConfigFile, *, now: datetime, end_active: bool = False,
                 prune: bool = False, progress: Progress = _quiet) -> Summary:
    """Write `config`. Raise ApplyRefused (the caller's transaction rolls back: nothing written) when it
    removes rows and `prune` is false, or removes what an APPROVED, ELEVATING or ELEVATED request depends
    on and `end_active` is false."""
    summary = plan_config(session, config, now=now, progress=progress)
    conflicts = [] if end_active else summary.conflicts
    removals = [] if prune else summary.removed
    if conflicts or removals:
        raise ApplyRefused(conflicts, removals)
    return summary


def plan_config(session: Session, config: ConfigFile, *, now: datetime, progress: Progress = _quiet) -> Summary:
    """Everything `config` changes, written to `session` as `--prune --end-active` would; the caller
    commits (apply) or rolls back (dry-run, diff). `summary.conflicts` are the requests that need --end-active."""
    progress("checking active requests", 0, 1)
    endings, conflicts = _plan_endings(session, config)
    summary = Summary(conflicts=conflicts)
    _end_requests(session, endings, summary, now)
    _apply_users(session, config, summary, progress)
    for p in config.credential_providers:
        _upsert(session, summary, f"credential provider {p.id}", CredentialProvider, p.id, {
            "id": p.id, "username": p.username, "password_env": p.password_env, "password_file": p.password_file})
    kept_hosts = _apply_applications(session, config, summary, progress)
    for n, s in enumerate(config.secrets, start=1):
        _upsert(session, summary, f"secret {s.id}", Secret, s.id, {
            "id": s.id, "account": s.account, "domain": s.domain, "application_id": s.application,
            "credential_provider_id": s.credential_provider, "checkout_enabled": s.checkout_enabled})
        progress("secrets", n, len(config.secrets))
    for n, t in enumerate(config.tasks, start=1):
        _upsert(session, summary, f"task {t.id}", Task, t.id, {
            "id": t.id, "group": t.group, "approval_required": t.approval == "required",
            "approval_window_seconds": t.approval_window_seconds, "removal_policy": t.removal_policy,
            "on_revoke": t.on_revoke, "drift": t.drift, "approvals_required": t.approvals_required,
            "deny_policy": t.deny, "decision_timeout_seconds": t.decision_timeout_seconds, "extension": t.extension,
            "extension_max_total_seconds": t.extension_max_total_seconds})
        progress("tasks", n, len(config.tasks))
    session.flush()
    _apply_links(session, {sid: t.id for t in config.tasks for sid in t.secrets}, summary)
    progress("removing what the file no longer lists", 0, 1)
    _remove_missing(session, config, kept_hosts, summary)
    if summary.changed:
        audit.record(session, at=now, action="config.applied", actor=ACTOR, details=summary.as_dict())
    return summary


def _plan_endings(session: Session, config: ConfigFile) -> tuple[list[_Ending], list[Conflict]]:
    """Which active requests this file ends, and which of them need --end-active (the conflicts).

    The rows are locked (PostgreSQL) so that no daemon moves them between this check and the commit;
    SQLite's transaction already holds the write lock.
    """
    stmt = (select(Request).where(Request.state.in_([s.value for s in ENDABLE])).order_by(Request.id)
            .execution_options(populate_existing=True))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    users = {u.id: u for u in config.users}
    wanted = _Wanted(config)
    endings: list[_Ending] = []
    conflicts: list[Conflict] = []
    for row in session.scalars(stmt).all():
        requester = _requester_change(row.requester_id, users)
        if requester is not None:
            endings.append(_Ending(row, requester))  # ended without --end-active: the user may no longer hold it
            continue
        causes = _removed_dependencies(session, row, wanted)
        if not causes:
            continue
        endings.append(_Ending(row, "the configuration removes what it depends on: " + "; ".join(causes)))
        if State(row.state) in GUARDED:
            conflicts.append(Conflict(row.id, row.state, row.host, row.secret_id, tuple(causes)))
    return endings, conflicts


def _requester_change(user_id: str, users: dict[str, Any]) -> str | None:
    """Why the new file no longer lets this requester hold a request: removed or demoted; else None."""
    spec = users.get(user_id)
    if spec is None:
        return f"requester {user_id} is removed from the configuration"
    refusal = requester_refusal(user_id, UserFacts(id=spec.id, kind=spec.kind, permissions=frozenset(spec.permissions)))
    return None if refusal is None else f"requester demoted by the configuration: {refusal}"


class _Wanted:
    """What the new file keeps, indexed for the dependency checks."""

    def __init__(self, config: ConfigFile) -> None:
        self.secrets = {s.id: s for s in config.secrets}
        self.links = {sid: t.id for t in config.tasks for sid in t.secrets}
        self.tasks = {t.id for t in config.tasks}
        self.hosts = {a.id: {h.address for h in a.hosts} for a in config.applications}  # canonical (HostSpec)
        self.providers = {p.id for p in config.credential_providers}


def _removed_dependencies(session: Session, row: Request, wanted: _Wanted) -> list[str]:
    """What the new file removes or moves away that `row` depends on: its secret, and the secret's task,
    application, host and credential provider as they are now in the database."""
    causes: list[str] = []
    spec = wanted.secrets.get(row.secret_id)
    secret = session.get(Secret, row.secret_id)
    if spec is None:
        causes.append(f"secret {row.secret_id} is removed")
    elif secret is not None and spec.application != secret.application_id:
        causes.append(f"secret {row.secret_id} moves from application {secret.application_id} to {spec.application}")
    new_task = wanted.links.get(row.secret_id)
    if row.task_id is not None and row.task_id not in wanted.tasks:
        causes.append(f"task {row.task_id} is removed")
    elif new_task != row.task_id and spec is not None:
        causes.append(f"secret {row.secret_id} leaves task {row.task_id}" if new_task is None
                      else f"secret {row.secret_id} moves from task {row.task_id} to task {new_task}")
    if secret is not None:
        app = secret.application_id
        if app not in wanted.hosts:
            causes.append(f"application {app} is removed")
        elif canonical_host(row.host) not in wanted.hosts[app]:
            causes.append(f"host {row.host} is removed from application {app}")
        if secret.credential_provider_id not in wanted.providers:
            causes.append(f"credential provider {secret.credential_provider_id} is removed")
    return causes


def _end_requests(session: Session, endings: list[_Ending], summary: Summary, now: datetime) -> None:
    for ending in endings:
        row = ending.request
        before = row.state
        new = end_request(session, row, now=now, end_trigger=END_TRIGGER, cause=Cause(ACTOR, None, ending.reason))
        if new is not None:
            summary.ended.append(f"request {row.id} ({before} -> {new.value}): {ending.reason}")


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


def _apply_applications(session: Session, config: ConfigFile, summary: Summary, progress: Progress) -> set[int]:
    """Upsert applications and their hosts (matched by canonical address); returns the ids of the hosts kept."""
    kept: set[int] = set()
    for n, app in enumerate(config.applications, start=1):
        progress("applications", n, len(config.applications))
        _upsert(session, summary, f"application {app.id}", Application, app.id, {"id": app.id})
        session.flush()
        existing = session.scalars(select(Host).where(Host.application_id == app.id).order_by(Host.id)).all()
        for h in app.hosts:
            assert h.winrm is not None  # cross_check refused hosts without WinRM
            address = canonical_host(h.address)
            same = [r for r in existing if canonical_host(r.address) == address]
            # An exact match first: a stored non-canonical twin is then removed, never renamed onto it.
            row = next((r for r in same if r.address == address), same[0] if same else None)
            values = {"application_id": app.id, "address": address, "scheme": h.winrm.scheme,
                      "port": h.winrm.effective_port, "transport": h.winrm.transport,
                      "verify_tls": h.winrm.verify_tls, "ca_file": h.winrm.ca_file}
            _upsert(session, summary, f"host {address} ({app.id})", Host, row.id if row else -1, values)
            session.flush()
            if row is None:
                row = session.scalars(select(Host).where(Host.application_id == app.id,
                                                         Host.address == address)).one()
            kept.add(row.id)
    session.flush()
    return kept


def _apply_users(session: Session, config: ConfigFile, summary: Summary, progress: Progress) -> None:
    for n, u in enumerate(config.users, start=1):
        progress("users", n, len(config.users))
        _upsert(session, summary, f"user {u.id}", User, u.id,
                {"id": u.id, "kind": u.kind, "broker_user": u.broker_user})
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
            session.delete(link)  # a change of the task, not the removal of an item: no --prune needed
            summary.updated.append(f"task {link.task_id} (secret {sid} leaves it)")
    session.flush()  # a secret moving between tasks: free its unique slot first
    for sid, task_id in links.items():
        if sid not in current or current[sid].task_id != task_id:
            session.add(TaskSecret(task_id=task_id, secret_id=sid))
            summary.created.append(f"secret {sid} in task {task_id}")
    session.flush()


def _remove_missing(session: Session, config: ConfigFile, kept_hosts: set[int], summary: Summary) -> None:
    """Delete what the file no longer lists. Requests that needed it were ended (or refused the file) above."""

    def remove(label: str, row: Any) -> None:
        session.delete(row)
        summary.removed.append(label)

    for task in session.scalars(select(Task).where(Task.id.not_in([t.id for t in config.tasks]))).all():
        remove(f"task {task.id}", task)
    for secret in session.scalars(select(Secret).where(Secret.id.not_in([s.id for s in config.secrets]))).all():
        remove(f"secret {secret.id}", secret)
    session.flush()
    for host in session.scalars(select(Host).order_by(Host.id)).all():
        if host.id not in kept_hosts:
            remove(f"host {host.address} ({host.application_id})", host)
    session.flush()
    for app in session.scalars(select(Application).where(
            Application.id.not_in([a.id for a in config.applications]))).all():
        remove(f"application {app.id}", app)
    for prov in session.scalars(select(CredentialProvider).where(
            CredentialProvider.id.not_in([p.id for p in config.credential_providers]))).all():
        remove(f"credential provider {prov.id}", prov)
    for user in session.scalars(select(User).where(User.id.not_in([u.id for u in config.users]))).all():
        remove(f"user {user.id}", user)
    session.flush()
