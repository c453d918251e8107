"""Overlapping grants taking hold of one settled membership at once (found by the chaos run, tests/chaos): the
first decides the baseline from its own add's answer, but another grant's add may land first. "Already there"
is then that grant's doing, not a standing membership: the baseline must not become "yes" (which keeps the
account in the group for good once every grant ended)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from shared.db import ledger
from shared.db.engine import transaction
from shared.db.models import Membership, Request
from shared.states import State
from tests.factories import ADMINISTRATORS, HostSpec, make_request, seed_config

HOST, SID = "127.0.0.1", "S-1-5-21-1-2-3-1003"
KNOWN = datetime(2000, 1, 1, tzinfo=UTC)  # the elevator's "no look" for a known SID


def settled_membership(factory: sessionmaker[Session], now: datetime) -> None:
    with transaction(factory) as s:
        s.add(Membership(host=HOST, group_sid=ADMINISTRATORS, account_sid=SID, account="acct-0-0", baseline="no",
                         ours=False, settled_at=now - timedelta(minutes=1), created_at=now - timedelta(minutes=5),
                         updated_at=now - timedelta(minutes=1)))


def hold(factory: sessionmaker[Session], request_id: str, now: datetime) -> bool:
    with transaction(factory) as s:
        request = s.get(Request, request_id)
        assert request is not None
        taken = ledger.take_hold(s, request, host=HOST, group_sid=ADMINISTRATORS, account_sid=SID,
                                 account="acct-0-0", looked_at=KNOWN, was_member=False, target={}, now=now,
                                 add_until=now + timedelta(seconds=30), reconcile_in=60)
        assert taken is not None
        return taken.decides_baseline


def baseline(factory: sessionmaker[Session]) -> str:
    with factory() as s:
        return s.query(Membership).one().baseline


def test_the_deciding_grants_already_there_after_another_grants_add_is_not_standing(
        factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec(HOST, 5985)])
    now = datetime.now(UTC)
    settled_membership(factory, now)
    for rid in ("req-x", "req-y"):
        make_request(factory, id=rid, secret_id="sec-0-0", host=HOST, state=State.ELEVATING, account="acct-0-0")
    assert hold(factory, "req-x", now) is True  # first on a settled membership: decides the baseline
    assert hold(factory, "req-y", now + timedelta(milliseconds=5)) is False
    with transaction(factory) as s:  # y's add lands first, then x's add answers "already there"
        ledger.record_add(s, "req-y", changed=True, add_calls=1, now=now)
        ledger.record_add(s, "req-x", changed=False, add_calls=1, now=now)
    assert baseline(factory) == "unknown"
    with transaction(factory) as s:  # both grants end: the membership is removed, not kept as standing
        ledger.release(s, "req-x", now)
        ledger.release(s, "req-y", now)
        plan = ledger.removal_plan(s, "req-x")
    assert plan is not None and plan.keep is None


def test_a_grant_alone_still_learns_a_standing_membership_from_its_add(factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec(HOST, 5985)])
    now = datetime.now(UTC)
    settled_membership(factory, now)
    make_request(factory, id="req-x", secret_id="sec-0-0", host=HOST, state=State.ELEVATING, account="acct-0-0")
    assert hold(factory, "req-x", now) is True
    with transaction(factory) as s:
        ledger.record_add(s, "req-x", changed=False, add_calls=1, now=now)
    assert baseline(factory) == "yes"
