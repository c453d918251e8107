"""The membership ledger: which grants hold which (host, group SID, account SID), in the caller's transaction.

    elevator: resolve SIDs --> take_hold (intent: ours=True, add_until) --> add --> record_add
    end of a grant (check-in, expiry, failure, operator, lost elevator) --> release
    reaper / reconciler: removal_plan --> remove by SID --> settle (ours=False once nothing can land)

A membership is removed exactly when no active grant holds it and its baseline is not "yes". `ours`
is set before an add is sent and cleared only by a removal the host confirmed while no add of ours could
still land, so a crash between sending and recording never leaves an add that nobody owns. The baseline
is decided only by a grant that took hold while nothing of ours was in place: from its look at the host
(made while resolving) when nothing of ours can have been there at that moment (the membership is new,
or settled well before the look), else from the answer of its own add, sent after the hold. A look
that may have seen our own add, or an add answer after an ambiguous retry, never turns a membership
we made into a "pre-existing" one; a baseline nobody could observe stays unknown and is removed at
the end (the safe direction).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.db.models import LEGACY_SQL, Hold, Membership, ReconcileTarget, Request
from shared.states import State

HOLDING = (State.ELEVATING.value, State.ELEVATED.value)
KEPT_PRE_EXISTING = "pre_existing"
KEPT_OTHER_HOLDERS = "other_holders"
# Clocks of two daemon hosts may disagree by this much: a settle is "well before" a look past it.
SKEW = timedelta(seconds=5)


@dataclass(frozen=True)
class RemovalPlan:
    """What ending one grant means for its membership: remove it, or keep it (and why)."""

    membership_id: int
    host: str
    group_sid: str
    account_sid: str
    keep: str | None
    holders: list[str]


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def _locked(session: Session, membership_id: int) -> Membership:
    return _locked_where(session, Membership.id == membership_id)


def _locked_where(session: Session, *where: Any) -> Membership:
    query = select(Membership).where(*where).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.scalars(query).one()


def active_holders(session: Session, membership_id: int, *, exclude: str | None = None) -> list[str]:
    """Grants that hold the membership now: a held hold of a request still ELEVATING or ELEVATED."""
    query = (select(Hold.request_id).join(Request, Request.id == Hold.request_id)
             .where(Hold.membership_id == membership_id, Hold.held.is_(True), Request.state.in_(HOLDING)))
    if exclude is not None:
        query = query.where(Hold.request_id != exclude)
    return sorted(session.scalars(query))


def add_in_flight_until(session: Session, membership_id: int, now: datetime) -> datetime | None:
    """The latest time an add of ours may still land on this membership, if any may."""
    pending = list(session.scalars(select(Hold.add_until).where(
        Hold.membership_id == membership_id, Hold.add_until.is_not(None), Hold.add_until > now)))
    return max((at for at in pending if at is not None), default=None)


def legacy_grant_query(request: Request) -> Any:
    """An active grant of the same account, group and host from before the ledger (no SIDs). The literal
    predicate of ix_requests_legacy_grant, so both engines use that index, not the host's whole history."""
    return select(Request.id).where(
        text(LEGACY_SQL), Request.id != request.id, Request.host == request.host, Request.group == request.group,
        func.lower(Request.account) == (request.account or "").lower(),
        Request.state.in_((*HOLDING, State.REVOKING.value))).limit(1)


def _legacy_grant(session: Session, request: Request) -> bool:
    """Is an active grant of the same account, group and host from before the ledger (no SIDs) in place?"""
    return session.scalar(legacy_grant_query(request)) is not None


def take_hold(session: Session, request: Request, *, host: str, group_sid: str, account_sid: str, account: str,
              looked_at: datetime, was_member: bool, target: dict[str, Any], now: datetime, add_until: datetime,
              reconcile_in: float) -> Hold | None:
    """Record the intent to add (before the add is sent); None when the request is no longer ELEVATING.

    The compare-and-set on the request row serialises us with a check-in's transaction: either it
    ended the request first (we send nothing) or it waits for us and then releases this hold.
    """
    claimed = session.execute(
        update(Request).where(Request.id == request.id, Request.state == State.ELEVATING.value)
        .values(account_sid=account_sid, group_sid=group_sid, updated_at=now)
        .execution_options(synchronize_session=False))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT .. ON CONFLICT DO NOTHING .. RETURNING.
    created = session.execute(_insert(session)(Membership).values(
        host=host, group_sid=group_sid, account_sid=account_sid, account=account, baseline="unknown", ours=False,
        created_at=now, updated_at=now).on_conflict_do_nothing().returning(Membership.id)).scalar() is not None
    membership = _locked_where(session, Membership.host == host, Membership.group_sid == group_sid,
                               Membership.account_sid == account_sid)
    settled = not membership.ours and not active_holders(session, membership.id)
    if settled and _legacy_grant(session, request):
        # A grant made before the ledger (no SIDs) may hold this membership: nothing can tell whose it is.
        membership.baseline = "unknown"
        settled = False
    if settled:
        # Nothing of ours is in place now. The look while resolving shows the baseline if nothing of ours
        # was in place then either: a new membership, or one settled well before the look.
        quiet_since = membership.settled_at
        if created or (quiet_since is not None and quiet_since + SKEW < looked_at):
            membership.baseline = "yes" if was_member else "no"
            settled = False
        else:
            membership.baseline = "unknown"  # to be decided by this grant's own add
    membership.ours = True
    membership.account = account
    membership.updated_at = now
    hold = session.get(Hold, request.id)
    if hold is None:
        hold = Hold(request_id=request.id, membership_id=membership.id, created_at=now)
        session.add(hold)
    hold.membership_id = membership.id
    hold.held = True
    hold.released_at = None
    hold.add_until = add_until
    hold.decides_baseline = settled
    watch(session, host=host, group_sid=group_sid, target=target, now=now, interval=reconcile_in)
    session.flush()
    return hold


def record_add(session: Session, request_id: str, *, changed: bool | None, add_calls: int,
               now: datetime) -> str | None:
    """The elevator's add has returned (or given up): no add of this grant can land any more. Returns the
    membership's baseline after it (None: the grant never took hold).

    `changed`: True the add put the account in, False it was already there, None no answer. The baseline
    is taken from one unambiguous answer only; after a retried add, "already there" may be our own first
    attempt, and after another grant held the membership too it may be theirs, so it stays unknown (and
    unknown is removed at the end, the safe direction).
    """
    hold = session.get(Hold, request_id, populate_existing=True)
    if hold is None:
        return None
    hold.add_until = None
    membership = _locked(session, hold.membership_id)
    if hold.decides_baseline and changed is not None and membership.baseline == "unknown":
        if changed:
            membership.baseline = "no"
        elif add_calls == 1 and not _held_by_others_since(session, hold):
            membership.baseline = "yes"
    hold.decides_baseline = False
    if changed:
        membership.ours = True  # even if this grant ended meanwhile: the reaper or reconciler takes it out
    membership.updated_at = now
    return membership.baseline


def _held_by_others_since(session: Session, hold: Hold) -> bool:
    """Did another grant hold the membership at any time since `hold` was taken? Its add may then have landed
    before ours, and "already there" says nothing about what was there before any grant (found by the chaos
    run: three overlapping grants, the deciding one's add answered second and made a grant's account standing)."""
    since = hold.created_at - SKEW
    return session.scalar(select(Hold.request_id).where(
        Hold.membership_id == hold.membership_id, Hold.request_id != hold.request_id,
        or_(Hold.held.is_(True), Hold.released_at > since)).limit(1)) is not None


def release(session: Session, request_id: str, now: datetime) -> None:
    """The grant ended: it no longer holds its membership (called in the ending transition's transaction)."""
    release_all(session, [request_id], now)


def release_all(session: Session, request_ids: list[str], now: datetime) -> None:
    """`release` of many grants in one statement (a mass expiry)."""
    session.execute(update(Hold).where(Hold.request_id.in_(request_ids), Hold.held.is_(True))
                    .values(held=False, released_at=now).execution_options(synchronize_session=False))


def removal_plan(session: Session, request_id: str) -> RemovalPlan | None:
    """None: the grant never took hold, so no add of it was ever sent and there is nothing to remove."""
    hold = session.get(Hold, request_id, populate_existing=True)
    if hold is None:
        return None
    membership = session.get(Membership, hold.membership_id, populate_existing=True)
    assert membership is not None
    holders = active_holders(session, membership.id, exclude=request_id)
    keep = KEPT_OTHER_HOLDERS if holders else (KEPT_PRE_EXISTING if membership.baseline == "yes" else None)
    return RemovalPlan(membership_id=membership.id, host=membership.host, group_sid=membership.group_sid,
                       account_sid=membership.account_sid, keep=keep, holders=holders)


def settle(session: Session, membership_id: int, now: datetime) -> bool:
    """The host confirmed the account out of the group: the membership is no longer ours, unless a grant
    holds it again or an add of ours may still land. Returns whether it settled."""
    membership = _locked(session, membership_id)
    if active_holders(session, membership_id) or add_in_flight_until(session, membership_id, now) is not None:
        return False
    membership.ours = False
    membership.settled_at = now
    membership.updated_at = now
    return True


def adopt_standing(session: Session, *, host: str, group_sid: str, account_sid: str, account: str,
                   now: datetime) -> None:
    """A member found at a group's first listing is a standing one (baseline yes), unless a grant got there first."""
    session.execute(_insert(session)(Membership).values(
        host=host, group_sid=group_sid, account_sid=account_sid, account=account, baseline="yes", ours=False,
        created_at=now, updated_at=now).on_conflict_do_nothing())


def watch(session: Session, *, host: str, group_sid: str, target: dict[str, Any], now: datetime,
          interval: float) -> None:
    """Make sure the reconciler watches (host, group) with the newest way to reach it: a new target is
    listed at once (its standing members become the baseline), a known one within `interval`.

    The row is written only when the way to reach the host changed: every grant on the host passes here,
    and rewriting one row per grant (the snapshot names the grant's account) serialised all of them on its
    row lock until each grant's transaction committed."""
    row = session.get(ReconcileTarget, (host, group_sid))
    if row is None:
        session.execute(_insert(session)(ReconcileTarget).values(
            host=host, group_sid=group_sid, target=target, next_at=now).on_conflict_do_nothing())
        return
    if _reach(row.target) != _reach(target):
        row.target = target
    due = now + timedelta(seconds=interval)
    if row.next_at > due:
        row.next_at = due


def _reach(target: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the reconciler uses of a target snapshot (shared.db.targets.Target): all but the grant's account."""
    return None if target is None else {k: v for k, v in target.items() if k != "account"}


def reconcile_soon(session: Session, host: str, group_sid: str | None, now: datetime) -> None:
    """After an ambiguous outcome: have the reconciler look at the host at once."""
    query = update(ReconcileTarget).where(ReconcileTarget.host == host, ReconcileTarget.next_at > now)
    if group_sid is not None:
        query = query.where(ReconcileTarget.group_sid == group_sid)
    session.execute(query.values(next_at=now).execution_options(synchronize_session=False))
