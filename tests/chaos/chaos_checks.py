"""The invariants the chaos run asserts once everything settled, each returning (ok, detail) for the record.

They read the ledger and the audit trail (shared/db models) and what the simulated hosts say: their group
members by SID and the log of every command they ran.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.ledger import HOLDING
from shared.db.models import AuditEntry, Hold, Membership, OutboxEvent, Request
from shared.states import TERMINAL
from tests.chaos.chaos_world import Daemons
from tests.factories import ADMINISTRATORS
from winrm_sim import SimulatedHost

Result = tuple[bool, str]
ADD_SCRIPTS = ("add_member", "elevate_known")  # by SID; elevate_known is the one-run add of a known SID


def _ts(value: datetime) -> float:
    return value.timestamp()


def groups_explained(factory: sessionmaker[Session], hosts: list[SimulatedHost],
                     standing: dict[str, set[str]]) -> Result:
    """Every group member is a standing one (there before the run, baseline "yes" in the ledger) or held by an
    active grant; nothing else."""
    problems = []
    with factory() as s:
        active = set(s.execute(select(Membership.host, Membership.account_sid).join(
            Hold, Hold.membership_id == Membership.id).join(Request, Request.id == Hold.request_id).where(
            Hold.held.is_(True), Request.state.in_(HOLDING), Membership.group_sid == ADMINISTRATORS)).all())
        baseline_yes = set(s.execute(select(Membership.host, Membership.account_sid).where(
            Membership.baseline == "yes", Membership.group_sid == ADMINISTRATORS)).all())
    for host in hosts:
        members = host.member_sids(ADMINISTRATORS)
        explained = standing[host.address] | {sid for h, sid in active if h == host.address}
        if members != explained:
            problems.append(f"{host.address}: unexplained {sorted(members - explained)}, "
                            f"missing {sorted(explained - members)}")
        wrong_baseline = {sid for h, sid in baseline_yes if h == host.address} - standing[host.address]
        if wrong_baseline:
            problems.append(f"{host.address}: ledger calls {sorted(wrong_baseline)} standing")
    total = sum(len(h.member_sids(ADMINISTRATORS)) for h in hosts)
    return not problems, "; ".join(problems) or f"{total} members on 3 hosts, all standing or held"


def all_final(factory: sessionmaker[Session], request_ids: list[str]) -> Result:
    with factory() as s:
        states = dict(s.execute(select(Request.id, Request.state).where(Request.id.in_(request_ids))).all())
    missing = [r for r in request_ids if r not in states]
    open_ = {r: st for r, st in states.items() if st not in TERMINAL}
    ok = not missing and not open_
    return ok, (f"{len(states)}/{len(request_ids)} final: {dict(Counter(states.values()))}" if ok
                else f"missing {missing[:5]}, not final {dict(list(open_.items())[:10])}")


def adds_only_for_approved(factory: sessionmaker[Session], hosts: list[SimulatedHost],
                           denied_only: set[tuple[str, str]]) -> Result:
    """Each add a host ran maps (host, account SID) to a request approved before the add was sent; accounts only
    ever denied are never added."""
    with factory() as s:
        approvals: dict[tuple[str, str | None], list[float]] = {}
        for address, sid, at in s.execute(select(Request.host, Request.account_sid, AuditEntry.at).join(
                AuditEntry, AuditEntry.request_id == Request.id).where(
                AuditEntry.to_state == "APPROVED", Request.account_sid.is_not(None))):
            approvals.setdefault((address, sid), []).append(_ts(at))
    adds, orphans = 0, []
    for host in hosts:
        for record in list(host.command_log):
            if record.script_name not in ADD_SCRIPTS:
                continue
            adds += 1
            sid = record.env.get("JIT_MEMBER_SID", "")
            approved_at = approvals.get((host.address, sid), [])
            if (host.address, sid) in denied_only or not any(at <= record.at + 0.5 for at in approved_at):
                orphans.append(f"{host.address} {sid} at {record.at:.1f}")
    return not orphans, f"{adds} adds, each after an approval of its account" if not orphans else \
        f"{len(orphans)} adds without an approval: {orphans[:5]}"


def revoked_once_with_audit(factory: sessionmaker[Session], request_ids: list[str]) -> Result:
    with factory() as s:
        rows = s.execute(select(AuditEntry.request_id, AuditEntry.action, AuditEntry.to_state).where(
            AuditEntry.request_id.in_(request_ids))).all()
        states = dict(s.execute(select(Request.id, Request.state).where(Request.id.in_(request_ids))).all())
        announced = Counter(rid for body in s.scalars(select(OutboxEvent.body).where(
            OutboxEvent.type == "elevation.revoked")) for rid in request_ids if rid.encode() in body)
    into_revoked = Counter(r for r, _, to in rows if to == "REVOKED")
    confirmed = Counter(r for r, action, to in rows if action == "removal_confirmed" and to == "REVOKED")
    twice = [r for r, n in into_revoked.items() if n > 1] + [r for r, n in announced.items() if n > 1]
    unaudited = [r for r, st in states.items() if st == "REVOKED" and confirmed[r] != 1]
    revoked = sum(1 for st in states.values() if st == "REVOKED")
    ok = not twice and not unaudited
    return ok, (f"{revoked} REVOKED, each once, each with its removal_confirmed row" if ok
                else f"twice: {twice[:5]}, without removal_confirmed: {unaudited[:5]}")


def no_crash_loop(daemons: Daemons) -> Result:
    bad = [slot.name for slot in daemons.slots if not daemons.consuming(slot)]
    starts = {slot.name: slot.starts for slot in daemons.slots}
    return not bad, f"starts per replica {starts}" + (f"; not alive and consuming: {bad}" if bad else
                                                      "; each last start alive and consuming")
