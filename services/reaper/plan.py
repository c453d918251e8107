"""What one revocation attempt will do, decided from the database in a short read: where, as whom,
and whether the membership must stay (ref-counted removal, pre-existing membership)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.reaper.policy import KEEPING_STATES, MEMBERSHIP_OTHER_HOLDERS, MEMBERSHIP_PRE_EXISTING
from shared.db.models import Request
from shared.db.targets import Target, other_holders, target_for
from shared.states import State


@dataclass(frozen=True)
class Plan:
    request_id: str
    checkout_id: str
    secret_id: str
    host: str
    account: str
    group: str
    failed: bool
    end_trigger: str
    attempts: int
    target: Target
    keep: str | None = None  # why the membership stays, or None: remove it
    holders: list[str] = field(default_factory=list)


def membership_inherited(session: Session, request: Request) -> bool:
    """True when a `pre_existing` membership was in fact made by another request of ours.

    The elevator marks a request pre_existing when the add found the account already a member; if
    that member was put there by another live request (ours, not pre-existing), the last of them to
    end must still remove it, or the account would stay elevated for ever.
    """
    if request.elevated_at is None:
        return False
    earlier = select(Request.id).where(
        Request.host == request.host, Request.group == request.group,
        func.lower(Request.account) == (request.account or "").lower(), Request.id != request.id,
        Request.pre_existing.is_(False), Request.elevated_at.is_not(None),
        Request.elevated_at <= request.elevated_at,
        (Request.ended_at.is_(None)) | (Request.ended_at >= request.elevated_at),
    ).limit(1)
    return session.scalar(earlier) is not None


def make_plan(session: Session, request: Request) -> Plan:
    """Raises `shared.db.targets.TargetError` when the host or credentials are no longer configured."""
    target = target_for(session, request)
    keep: str | None = None
    holders = [h.id for h in other_holders(session, request) if State(h.state) in KEEPING_STATES]
    if request.pre_existing and not membership_inherited(session, request):
        keep = MEMBERSHIP_PRE_EXISTING
    elif holders:
        keep = MEMBERSHIP_OTHER_HOLDERS
    return Plan(
        request_id=request.id, checkout_id=request.checkout_id, secret_id=request.secret_id, host=request.host,
        account=target.account, group=target.group, failed=request.failed,
        end_trigger=request.end_trigger or "unknown", attempts=request.attempts, target=target, keep=keep,
        holders=holders,
    )
