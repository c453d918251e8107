"""Loads the plain facts `shared.rules` decides on from the database, and normalises stored times.

Used by jit-approval (requests and decisions) and by `jitctl status`, so both answer the same way.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import CheckIn, Host, Request, Secret, Task, TaskSecret, User, UserPermission
from shared.hosts import canonical_host
from shared.rules import RequestFacts, SecretFacts, TaskFacts, UserFacts
from shared.states import ACTIVE


def user_facts(session: Session, user_id: str) -> UserFacts | None:
    user = session.get(User, user_id)
    if user is None:
        return None
    permissions = session.scalars(select(UserPermission.permission).where(UserPermission.user_id == user_id))
    return UserFacts(id=user.id, kind=user.kind, permissions=frozenset(permissions))


def task_of(session: Session, secret_id: str) -> Task | None:
    return session.scalars(
        select(Task).join(TaskSecret, TaskSecret.task_id == Task.id).where(TaskSecret.secret_id == secret_id)
    ).first()


def secret_facts(session: Session, secret_id: str) -> SecretFacts | None:
    secret = session.get(Secret, secret_id)
    if secret is None:
        return None
    task = task_of(session, secret_id)
    addresses = session.scalars(select(Host.address).where(Host.application_id == secret.application_id))
    task_facts = None if task is None else TaskFacts(
        id=task.id, group=task.group, approval_required=task.approval_required,
        approval_window_seconds=task.approval_window_seconds, approvals_required=task.approvals_required,
        deny_policy=task.deny_policy, decision_timeout_seconds=task.decision_timeout_seconds,
        extension=task.extension, extension_max_total_seconds=task.extension_max_total_seconds,
    )
    return SecretFacts(id=secret.id, checkout_enabled=secret.checkout_enabled,
                       hosts=frozenset(canonical_host(a) for a in addresses), task=task_facts)


def is_checked_in(session: Session, checkout_id: str) -> bool:
    return session.get(CheckIn, checkout_id) is not None


def active_request_for(session: Session, checkout_id: str, *, exclude: str | None = None) -> Request | None:
    stmt = select(Request).where(Request.checkout_id == checkout_id, Request.state.in_([s.value for s in ACTIVE]))
    if exclude is not None:
        stmt = stmt.where(Request.id != exclude)
    return session.scalars(stmt).first()


def request_facts(session: Session, *, secret_id: str, requester_id: str, host: str, checkout_id: str,
                  checkout_expires_at: datetime) -> RequestFacts:
    return RequestFacts(
        secret_id=secret_id, secret=secret_facts(session, secret_id), requester_id=requester_id,
        requester=user_facts(session, requester_id), host=canonical_host(host), checkout_expires_at=checkout_expires_at,
        checked_in=is_checked_in(session, checkout_id),
        active_request_for_checkout=active_request_for(session, checkout_id) is not None,
    )
