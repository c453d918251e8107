"""The reconciler: a level-triggered controller that converges each watched host's group to the ledger.

Every `reconcile_interval_seconds` per (host, group) (sooner after an ambiguous outcome: a lost
elevator, an add that returned after its request ended), one replica leases the target, lists the
group's members by SID (one WinRM call, outside any transaction) and compares them with the ledger:

- a membership no active grant holds, whose baseline is not "yes" and that is ours (or of unknown
  baseline), is removed by SID, unless a grant of it became REVOKING within a lease (the reaper is removing
  it); once the host shows it gone and no add can land, it is settled;
- a membership an ELEVATED grant holds but the host no longer lists is put back (its hold's add_until
  is set before the add is sent, as the elevator does) and logged as `membership.restored`;
- on the first listing of a group its members are its standing members (baseline "yes");
- any later member that nothing explains is drift: an audit row, a `membership.drift` event and an
  error log when first seen, `jitctl drift` while it stays; removed only where the group's task says
  `drift: remove`.

The listing is compared only for memberships the ledger left unchanged while the host was listed
(row and held holds read before and after); one that changed meanwhile waits for the next pass. A removal
that a new grant's add beat to the host makes the next pass due at once, to put it back.

A lost message, a crash between two steps, a rename or a race can delay a removal, never prevent it.
Cost: one listing per watched (host, group) per interval, one host at a time per replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.reaper.policy import SOURCE
from shared import health, logs, metrics
from shared.clock import Clock
from shared.db import audit, ledger, outbox
from shared.db.engine import transaction
from shared.db.models import Drift, Hold, Membership, ReconcileTarget, Request, Task
from shared.db.targets import Target, TargetError
from shared.events import MembershipDrift, new_event
from shared.settings import Settings
from shared.states import State
from shared.winrm import WinRMError, WinRMPort
from shared.winrm.client import DEADLINE_SLACK_SEC
from shared.winrm.endpoint import GroupMember

ACTOR = "reconciler"
BATCH = 20

log = logs.get_logger()


@dataclass
class Decision:
    """What one listing calls for: SIDs to remove (ours / drift), to put back (holder id), to report."""

    remove_ours: dict[str, int] = field(default_factory=dict)  # account SID -> membership id
    remove_drift: list[str] = field(default_factory=list)
    restore: dict[str, str] = field(default_factory=dict)  # account SID -> holding request id
    drift: list[GroupMember] = field(default_factory=list)
    soonest: datetime | None = None  # an add may land until then: look again at that time


class Reconciler:
    def __init__(self, factory: sessionmaker[Session], port: WinRMPort, settings: Settings, clock: Clock) -> None:
        self.factory = factory
        self.port = port
        self.settings = settings
        self.clock = clock
        fallback = settings.winrm_deadline_seconds + DEADLINE_SLACK_SEC
        self._call_bound = float(getattr(port, "max_call_seconds", fallback))
        self._revocation_window = timedelta(seconds=settings.lease_seconds + settings.retry_in_process_seconds)

    def __call__(self) -> None:
        for host, group_sid in self.claim_due(BATCH):
            with logs.bound(host=host, group_sid=group_sid):
                self.reconcile(host, group_sid)
            health.beat()  # one pass is bounded by WinRM deadlines; a batch of slow hosts is not

    def claim_due(self, limit: int) -> list[tuple[str, str]]:
        now = self.clock.now()
        lease = now + timedelta(seconds=4 * self._call_bound)
        with transaction(self.factory) as session:
            query = (select(ReconcileTarget.host, ReconcileTarget.group_sid)
                     .where(ReconcileTarget.next_at <= now)
                     .where((ReconcileTarget.lease_until.is_(None)) | (ReconcileTarget.lease_until < now))
                     .order_by(ReconcileTarget.next_at).limit(limit))
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            due = [(h, g) for h, g in session.execute(query).all()]
            for host, group_sid in due:
                session.execute(update(ReconcileTarget).where(
                    ReconcileTarget.host == host, ReconcileTarget.group_sid == group_sid)
                    .values(lease_until=lease).execution_options(synchronize_session=False))
        return due

    def reconcile(self, host: str, group_sid: str) -> None:
        """One pass over one (host, group); never raises (errors are recorded on the target)."""
        try:
            with transaction(self.factory) as session:
                row = session.get(ReconcileTarget, (host, group_sid))
                assert row is not None
                target = Target.from_snapshot(row.target)
                before = _ledger_state(session, host, group_sid)
            creds = target.credentials()
            members = self.port.list_members(target.endpoint, creds, group_sid)
            decision = self._decide(host, group_sid, members, before)
            removed = self._act(host, group_sid, target, decision)
            self._record(host, group_sid, decision, removed, error=None)
            metrics.RECONCILE_PASSES.labels(outcome="ok").inc()
        except (WinRMError, TargetError) as exc:
            log.warning("reconcile.failed", error=str(exc))
            metrics.RECONCILE_PASSES.labels(outcome="failed").inc()
            self._record(host, group_sid, Decision(), {}, error=str(exc)[:2000])

    def _decide(self, host: str, group_sid: str, members: list[GroupMember],
                before: dict[int, LedgerState]) -> Decision:
        """`before`: the ledger as it was before the listing. A membership that changed while the host was
        listed is left to the next pass: the listing may show it before or after the change (a grant that
        ended and was confirmed out meanwhile is no drift; one that ended is the reaper's to remove)."""
        now = self.clock.now()
        present = {m.sid.upper(): m for m in members}
        decision = Decision()
        with transaction(self.factory) as session:
            row = session.get(ReconcileTarget, (host, group_sid))
            assert row is not None
            first = row.baselined_at is None
            known: set[str] = set()
            after = _ledger_state(session, host, group_sid)
            for m in session.scalars(select(Membership).where(Membership.host == host,
                                                              Membership.group_sid == group_sid)):
                known.add(m.account_sid)
                if before.get(m.id) != after.get(m.id):
                    log.info("reconcile.changed_while_listed", account_sid=m.account_sid)
                    continue
                holders = ledger.active_holders(session, m.id)
                pending = ledger.add_in_flight_until(session, m.id, now)
                if pending is not None:
                    decision.soonest = min(decision.soonest or pending, pending)
                if holders:
                    elevated = _elevated_holder(session, holders)
                    if m.account_sid not in present and elevated is not None and pending is None:
                        decision.restore[m.account_sid] = elevated
                elif m.baseline == "yes":
                    continue
                elif m.account_sid in present:
                    if _being_revoked(session, m.id, now - self._revocation_window):
                        continue  # a grant's revocation is under way: the reaper removes it
                    if m.ours or m.baseline == "unknown":
                        decision.remove_ours[m.account_sid] = m.id
                    else:
                        decision.drift.append(present[m.account_sid])
                elif m.ours and pending is None:
                    ledger.settle(session, m.id, now)
            for sid, member in present.items():
                if sid in known:
                    continue
                if first:
                    ledger.adopt_standing(session, host=host, group_sid=group_sid, account_sid=sid,
                                          account=member.name, now=now)
                else:
                    decision.drift.append(member)
            if _drift_policy(session, host, group_sid) == "remove":
                decision.remove_drift = [m.sid.upper() for m in decision.drift]
            row.baselined_at = row.baselined_at or now
        return decision

    def _act(self, host: str, group_sid: str, target: Target, decision: Decision) -> dict[str, bool]:
        """Remove and restore on the host; returns, per SID removed or attempted, whether the host confirmed."""
        creds = target.credentials()
        done: dict[str, bool] = {}
        for sid in [*decision.remove_ours, *decision.remove_drift]:
            if sid in decision.remove_ours and not self._still_unheld(decision.remove_ours[sid]):
                continue  # a grant took hold meanwhile: the membership is wanted again
            try:
                self.port.remove_member(target.endpoint, creds, group_sid, sid)
                done[sid] = True
                log.info("reconcile.removed", account_sid=sid, drift=sid in decision.remove_drift)
            except WinRMError as exc:
                done[sid] = False
                log.error("reconcile.remove.failed", account_sid=sid, error=str(exc))
        for sid, request_id in decision.restore.items():
            self._restore(target, creds, group_sid, sid, request_id)
        return done

    def _still_unheld(self, membership_id: int) -> bool:
        with transaction(self.factory) as session:
            return not ledger.active_holders(session, membership_id)

    def _restore(self, target: Target, creds: object, group_sid: str, sid: str, request_id: str) -> None:
        now = self.clock.now()
        with transaction(self.factory) as session:
            request = session.get(Request, request_id, populate_existing=True)
            if request is None or request.state != State.ELEVATED.value:
                return
            until = now + timedelta(seconds=self._call_bound)
            session.execute(update(Hold).where(Hold.request_id == request_id, Hold.held.is_(True))
                            .values(add_until=until).execution_options(synchronize_session=False))
        changed: bool | None = None
        try:
            changed = self.port.add_member(target.endpoint, creds, group_sid, sid)  # type: ignore[arg-type]
        except WinRMError as exc:
            log.error("membership.restore.failed", request_id=request_id, account_sid=sid, error=str(exc))
        with transaction(self.factory) as session:
            session.execute(update(Hold).where(Hold.request_id == request_id)
                            .values(add_until=None).execution_options(synchronize_session=False))
            if changed is not None:
                audit.record(session, at=self.clock.now(), action="membership.restored", actor=ACTOR,
                             request_id=request_id, reason="the host no longer listed an active grant's member",
                             details={"account_sid": sid, "group_sid": group_sid})
                session.execute(update(Request).where(Request.id == request_id, Request.state == State.REVOKING.value)
                                .values(next_attempt_at=self.clock.now())
                                .execution_options(synchronize_session=False))
        if changed is not None:
            log.warning("membership.restored", request_id=request_id, account_sid=sid)

    def _record(self, host: str, group_sid: str, decision: Decision, removed: dict[str, bool],
                error: str | None) -> None:
        now = self.clock.now()
        with transaction(self.factory) as session:
            for sid, ok in removed.items():
                membership_id = decision.remove_ours.get(sid)
                if ok and membership_id is not None:
                    if not ledger.settle(session, membership_id, now) and ledger.active_holders(session,
                                                                                                membership_id):
                        decision.soonest = now  # a grant took hold meanwhile: if its add landed first, put it back
                    audit.record(session, at=now, action="membership.reconciled", actor=ACTOR,
                                 reason="removed a membership of ours that no active grant holds",
                                 details={"host": host, "group_sid": group_sid, "account_sid": sid})
            if error is None:
                self._record_drift(session, host, group_sid, decision, removed, now)
            row = session.get(ReconcileTarget, (host, group_sid))
            assert row is not None
            interval = timedelta(seconds=self.settings.reconcile_interval_seconds)
            row.next_at = min(now + interval, decision.soonest or now + interval)
            if error is not None:
                row.next_at = min(row.next_at, now + timedelta(seconds=self.settings.retry_max_seconds))
            row.lease_until = None
            row.last_run_at = now
            row.last_error = error

    def _record_drift(self, session: Session, host: str, group_sid: str, decision: Decision,
                      removed: dict[str, bool], now: datetime) -> None:
        open_rows = {d.account_sid: d for d in session.scalars(select(Drift).where(
            Drift.host == host, Drift.group_sid == group_sid, Drift.resolved_at.is_(None)))}
        seen = {m.sid.upper() for m in decision.drift}
        for member in decision.drift:
            sid = member.sid.upper()
            action = "reported" if sid not in removed else ("removed" if removed[sid] else "remove_failed")
            row = open_rows.get(sid)
            if row is not None:
                row.last_seen = now
                row.action = action
                if action == "removed":
                    row.resolved_at = now
                continue
            row = Drift(host=host, group_sid=group_sid, account_sid=sid, account=member.name, action=action,
                        first_seen=now, last_seen=now, resolved_at=now if action == "removed" else None)
            session.add(row)
            metrics.after_commit(session, metrics.DRIFT_FOUND.labels(action=action).inc)
            audit.record(session, at=now, action="membership.drift", actor=ACTOR,
                         reason=f"{member.name} ({sid}) is in the group and no grant explains it",
                         details={"host": host, "group_sid": group_sid, "account_sid": sid, "account": member.name,
                                  "action": action})
            outbox.enqueue(session, new_event("membership.drift", MembershipDrift(
                host=host, group_sid=group_sid, account_sid=sid, account=member.name, action=action,
                first_seen=now), source=SOURCE))
            log.error("membership.drift", account_sid=sid, account=member.name, action=action)
        for sid, row in open_rows.items():
            if sid not in seen:
                row.resolved_at = now


LedgerState = tuple[object, ...]


def _ledger_state(session: Session, host: str, group_sid: str) -> dict[int, LedgerState]:
    """Per membership of (host, group): its row's last change and its held holds (request, state, add in
    flight). Equal before and after a listing: nothing about it changed while the host was listed."""
    rows = session.execute(
        select(Membership.id, Membership.updated_at, Membership.ours, Membership.settled_at, Hold.request_id,
               Hold.add_until, Request.state)
        .outerjoin(Hold, (Hold.membership_id == Membership.id) & Hold.held.is_(True))
        .outerjoin(Request, Request.id == Hold.request_id)
        .where(Membership.host == host, Membership.group_sid == group_sid))
    rows_by_id: dict[int, tuple[object, ...]] = {}
    holds: dict[int, set[tuple[object, ...]]] = {}
    for membership_id, updated_at, ours, settled_at, request_id, add_until, state in rows:
        rows_by_id[membership_id] = (updated_at, ours, settled_at)
        if request_id is not None:
            holds.setdefault(membership_id, set()).add((request_id, add_until, state))
    return {mid: (*row, frozenset(holds.get(mid, ()))) for mid, row in rows_by_id.items()}


def _being_revoked(session: Session, membership_id: int, since: datetime) -> bool:
    """Did a grant of this membership become REVOKING after `since` (one lease ago)? Then its removal is the
    reaper's, under way: a second removal from here would only race it. A revocation older than that may be
    stuck (its host unreachable with its own target): the reconciler removes the membership as before."""
    return session.scalar(select(Hold.request_id).join(Request, Request.id == Hold.request_id).where(
        Hold.membership_id == membership_id, Request.state == State.REVOKING.value,
        func.coalesce(Request.revoking_since, Request.updated_at) > since).limit(1)) is not None


def _elevated_holder(session: Session, holders: list[str]) -> str | None:
    return session.scalar(select(Request.id).where(Request.id.in_(holders), Request.state == State.ELEVATED.value)
                          .limit(1))


def _drift_policy(session: Session, host: str, group_sid: str) -> str:
    """`remove` when a task whose grants reach this (host, group) says so; `report` otherwise."""
    policies = set(session.scalars(select(Task.drift).join(Request, Request.task_id == Task.id).where(
        Request.host == host, Request.group_sid == group_sid).distinct()))
    return "remove" if "remove" in policies else "report"
