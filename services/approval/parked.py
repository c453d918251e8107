"""Decisions that arrive before their request: parked for a bounded time, bound to the request and the
approver's authenticated identity, and audited when dropped.

A parked decision is an audit row (`decision.parked`) carrying the decision, the broker user that
published it and how that user was trusted (`identity`: `person` when it is the approver's own
`broker_user`, `component` when JIT_PUBLISHERS trusts it to assert approvers). It is applied only to
the request with its id, only within `JIT_PARKED_DECISION_SECONDS` of its arrival, and a `person`
decision only while the approver's broker user is still the one that published it. One that is not
applied gets `decision.dropped`, written by the request that came too late or by the periodic job.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from services.approval.votes import Vote
from shared.clock import Clock
from shared.db import audit
from shared.db.engine import transaction
from shared.db.models import AuditEntry, Request, User
from shared.logs import get_logger

log = get_logger()
PARKED, DROPPED = "decision.parked", "decision.dropped"
DEFAULT_SECONDS = 300.0
# The periodic job looks this far back beyond the limit; older ones are dropped when their request comes.
HORIZON = timedelta(days=1)


def park(session: Session, request_id: str, vote: Vote, publisher: str | None, now: datetime) -> None:
    own = session.scalar(select(User.broker_user).where(User.id == vote.approver_id))
    identity = "person" if publisher is not None and own == publisher else "component"
    audit.record(session, at=now, action=PARKED, actor=vote.approver_id, request_id=request_id,
                 event_id=vote.event_id or None, reason="request not recorded yet; applied when it arrives",
                 details={"decision": vote.decision, "reason": vote.reason, "extension_id": vote.extension_id,
                          "publisher": publisher, "identity": identity})
    log.info(PARKED, request_id=request_id, approver_id=vote.approver_id, decision=vote.decision,
             publisher=publisher, identity=identity)


def take(session: Session, row: Request, now: datetime, seconds: float) -> Iterator[Vote]:
    """The parked decisions for `row` still valid, oldest first; the others are dropped (audited)."""
    dropped = aliased(AuditEntry)
    entries = session.scalars(
        select(AuditEntry).where(AuditEntry.request_id == row.id, AuditEntry.action == PARKED,
                                 ~exists().where(dropped.action == DROPPED, dropped.request_id == row.id,
                                                 dropped.event_id == AuditEntry.event_id))
        .order_by(AuditEntry.id)).all()
    for entry in entries:
        details = entry.details or {}
        why = _invalid(session, entry, details, now, seconds)
        if why is not None:
            drop(session, entry, now, why)
            continue
        yield Vote(entry.event_id or "", entry.actor, str(details.get("decision")), details.get("reason"),
                   details.get("extension_id"))


def _invalid(session: Session, entry: AuditEntry, details: dict[str, object], now: datetime,
             seconds: float) -> str | None:
    if entry.at < now - timedelta(seconds=seconds):
        return f"its request did not arrive within {seconds:g} s (JIT_PARKED_DECISION_SECONDS)"
    if details.get("identity") == "person":
        own = session.scalar(select(User.broker_user).where(User.id == entry.actor))
        if own != details.get("publisher"):
            return (f"published by broker user {details.get('publisher')!r} as {entry.actor}, whose broker user "
                    f"is now {own!r}")
    return None


def drop(session: Session, entry: AuditEntry, now: datetime, why: str) -> None:
    audit.record(session, at=now, action=DROPPED, actor=entry.actor, request_id=entry.request_id,
                 event_id=entry.event_id, reason=f"parked decision dropped: {why}",
                 details={**(entry.details or {}), "parked_at": entry.at.isoformat()})
    log.warning(DROPPED, request_id=entry.request_id, approver_id=entry.actor, reason=why)


def drop_expired(factory: sessionmaker[Session], clock: Clock, seconds: float) -> int:
    """Audit every parked decision whose request did not come in time (periodic, every replica)."""
    now = clock.now()
    limit = now - timedelta(seconds=seconds)
    dropped = aliased(AuditEntry)
    with transaction(factory) as session:
        stmt = (select(AuditEntry).where(
            AuditEntry.action == PARKED, AuditEntry.at < limit, AuditEntry.at >= limit - HORIZON,
            ~exists().where(Request.id == AuditEntry.request_id),
            ~exists().where(dropped.action == DROPPED, dropped.request_id == AuditEntry.request_id,
                            dropped.event_id == AuditEntry.event_id)).order_by(AuditEntry.id).limit(200))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        entries = session.scalars(stmt).all()
        for entry in entries:
            drop(session, entry, now, f"its request did not arrive within {seconds:g} s "
                                      "(JIT_PARKED_DECISION_SECONDS)")
    return len(entries)
