"""Votes: each approver's decision on a request (`extension_id` '') or on one of its extensions, counted once.

The unique key (request, extension, approver) makes "one approver counts once, however often they
decide" a fact of the database; every vote is taken under the request's lock (`effects.lock_request`),
so the count a replica reads is the count its decision completes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Vote as VoteRow


@dataclass(frozen=True)
class Vote:
    event_id: str
    approver_id: str
    decision: str  # approve | deny
    reason: str | None
    extension_id: str | None = None


def record(session: Session, request_id: str, vote: Vote, now: datetime) -> bool:
    """Record `vote`; False when this approver already decided this request (or this extension)."""
    subject = vote.extension_id or ""
    if session.scalar(select(VoteRow.id).where(VoteRow.request_id == request_id, VoteRow.extension_id == subject,
                                               VoteRow.approver_id == vote.approver_id)) is not None:
        return False
    session.add(VoteRow(request_id=request_id, extension_id=subject, approver_id=vote.approver_id,
                        decision=vote.decision, reason=vote.reason, event_id=vote.event_id or None, at=now))
    session.flush()
    return True


def cast(session: Session, request_id: str, extension_id: str | None = None) -> tuple[frozenset[str], frozenset[str]]:
    """(approvers, deniers) of a request, or of one of its extensions."""
    rows = session.execute(select(VoteRow.approver_id, VoteRow.decision).where(
        VoteRow.request_id == request_id, VoteRow.extension_id == (extension_id or ""))).all()
    return (frozenset(a for a, d in rows if d == "approve"), frozenset(a for a, d in rows if d == "deny"))
