"""What one revocation attempt will do, decided from the database in a short read: where, as whom, which
SIDs, and whether the membership stays. The ledger decides (shared/db/ledger.py): a grant that never
took hold sent no add, so there is nothing to remove; a membership another active grant holds, or one
that was there before us (baseline "yes"), stays; otherwise it is removed by SID."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sqlalchemy.orm import Session

from shared.db import ledger
from shared.db.models import Request
from shared.db.targets import Target, TargetError, target_of

NOTHING_HELD = "nothing_held"


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
    target: Target | None  # None only when nothing is to be removed and the configuration is gone
    membership_id: int | None = None
    group_sid: str | None = None
    account_sid: str | None = None
    keep: str | None = None  # why nothing is removed, or None: remove the account's SID from the group
    holders: list[str] = field(default_factory=list)
    legacy: bool = False  # elevated before the ledger existed: resolve the name to a SID, then remove


def make_plan(session: Session, request: Request) -> Plan:
    """Raises `shared.db.targets.TargetError` when neither the grant nor the configuration says how to reach it."""
    removal = ledger.removal_plan(session, request.id)
    legacy = removal is None and request.elevated_at is not None and request.account_sid is None
    try:
        target: Target | None = target_of(session, request)
    except TargetError:
        if removal is not None or legacy:
            raise
        target = None  # a grant that never took hold needs no host to end
    plan = Plan(request_id=request.id, checkout_id=request.checkout_id, secret_id=request.secret_id,
                host=request.host, account=target.account if target else (request.account or ""),
                group=target.group if target else (request.group or ""), failed=request.failed,
                end_trigger=request.end_trigger or "unknown", attempts=request.attempts, target=target,
                keep=NOTHING_HELD)
    if removal is not None:
        return replace(plan, membership_id=removal.membership_id, group_sid=removal.group_sid,
                       account_sid=removal.account_sid, keep=removal.keep, holders=removal.holders)
    if legacy:
        # Elevated by a version without the ledger: remove by the SID the name resolves to now.
        return replace(plan, keep=ledger.KEPT_PRE_EXISTING if request.pre_existing else None, legacy=True)
    return plan
