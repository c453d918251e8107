"""The reaper's triggers and revocation on both databases, with the in-memory WinRM fake.

What matters: every trigger ends the request the database says is affected, the account leaves the
group (unless another elevation or a pre-existing membership needs it), each event has one effect,
and the outcome is in the outbox and the audit trail. Grants are made by the real elevator
(`tests.factories.make_grant`), so the ledger holds what production leaves: the reaper removes by the
SIDs the grant recorded, and a request that never took hold has nothing to remove.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from shared.db.engine import transaction
from shared.db.models import CheckIn
from shared.states import State
from shared.winrm import Credentials, FakeWinRM, HostEndpoint
from tests.factories import HostSpec, elevate, make_grant, make_request, seed_config
from tests.integration.reaper_harness import (
    ADMINS,
    HOST,
    InProcessReaper,
    audit,
    fast_settings,
    held,
    outbox,
    password,
    request,
    set_values,
)
from tests.support import Outage

__all__ = ["password"]
REASONS = ["service_closed", "session_timeout", "manual", "checkout_expired", "approval_expired"]


class Fake(FakeWinRM):
    """FakeWinRM that can run `during_add` (once) while the elevator's add is on the wire, before it lands."""

    during_add: Callable[[], None] | None = None

    def add_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        during, self.during_add = self.during_add, None
        if during is not None:
            during()
        return super().add_member(host, creds, group_sid, member_sid)


@pytest.fixture
def fake() -> Fake:
    return Fake()


@pytest.fixture
def reaper(factory: sessionmaker[Session], database_url: str, fake: FakeWinRM, password: str) -> InProcessReaper:
    seed_config(factory, [HostSpec(HOST, 5985)], secrets_per_host=3)
    return InProcessReaper(factory, fake, fast_settings(database_url))


def elevated(factory: sessionmaker[Session], fake: FakeWinRM, sid: str = "sec-0-0", **values: object) -> str:
    """A grant the elevator made (its add put the account in); the fake's calls start after it."""
    row = make_grant(factory, fake, secret_id=sid, host=HOST, **values)
    fake.calls.clear()
    return row.id


def removals(fake: FakeWinRM) -> list[tuple[str, ...]]:
    return [c.args for c in fake.calls if c.operation == "remove_member"]


@pytest.mark.parametrize("reason", REASONS)
def test_checkin_revokes_an_elevated_account(reaper: InProcessReaper, factory: sessionmaker[Session],
                                             fake: FakeWinRM, reason: str) -> None:
    rid = elevated(factory, fake, checkout_id="co-1")
    event = reaper.deliver("secret.checked_in", checkout_id="co-1", secret_id="sec-0-0", reason=reason)
    row = request(factory, rid)
    assert row.state == State.REVOKED.value and row.end_trigger == reason and row.ended_at is not None
    assert fake.members(HOST, ADMINS) == set()
    # By the SIDs the grant recorded: no name is looked up again at the end.
    assert removals(fake) == [(ADMINS, fake.sid_of(HOST, "acct-0-0"))]
    assert "resolve" not in [c.operation for c in fake.calls]
    [revoked] = outbox(factory, "elevation.revoked")
    assert revoked["request_id"] == rid and revoked["trigger"] == reason and revoked["attempts"] == 1
    assert revoked.get("membership_kept") is None
    assert [(a.from_state, a.to_state, a.event_id) for a in audit(factory, rid)][-2:] == [
        ("ELEVATED", "REVOKING", event.id), ("REVOKING", "REVOKED", None)]
    _hold, membership = held(factory, rid)
    assert not membership.ours  # settled: the host confirmed it out and no add of ours can land
    with transaction(factory) as s:
        assert s.get(CheckIn, "co-1") is not None


def test_checkin_cancels_a_pending_request_without_touching_the_host(
        reaper: InProcessReaper, factory: sessionmaker[Session], fake: FakeWinRM) -> None:
    row = make_request(factory, secret_id="sec-0-0", host=HOST, state=State.PENDING, checkout_id="co-p")
    reaper.deliver("secret.checked_in", checkout_id="co-p", secret_id="sec-0-0", reason="manual")
    assert request(factory, row.id).state == State.CANCELLED.value
    assert outbox(factory, "elevation.cancelled") == [{"request_id": row.id, "reason": "manual"}]
    assert fake.calls == []


def test_checkin_of_an_approved_request_ends_it_before_any_elevation(
        reaper: InProcessReaper, factory: sessionmaker[Session], fake: FakeWinRM) -> None:
    row = make_request(factory, secret_id="sec-0-0", host=HOST, state=State.APPROVED, checkout_id="co-a")
    fake.seed(HOST, ADMINS, "acct-0-0")  # someone else's membership: not ours to take away
    reaper.deliver("secret.checked_in", checkout_id="co-a", secret_id="sec-0-0", reason="service_closed")
    # It never took hold, so no add of it was ever sent: nothing to remove, no WinRM call at all.
    assert request(factory, row.id).state == State.REVOKED.value
    assert fake.calls == [] and fake.members(HOST, ADMINS) == {"acct-0-0"}
    assert outbox(factory, "elevation.revoked")[0].get("membership_kept") is None
    assert audit(factory, row.id)[-1].details["membership_kept"] == "nothing_held"
    # An approval event that arrives afterwards finds the checkout checked in: still nothing is added.
    elevate(factory, fake, row)
    assert fake.calls == [] and request(factory, row.id).state == State.REVOKED.value


def test_checkin_for_another_secret_changes_nothing_but_records_the_checkout(
        reaper: InProcessReaper, factory: sessionmaker[Session], fake: FakeWinRM) -> None:
    rid = elevated(factory, fake, checkout_id="co-m")
    reaper.deliver("secret.checked_in", checkout_id="co-m", secret_id="sec-0-1", reason="manual")
    assert request(factory, rid).state == State.ELEVATED.value
    assert fake.members(HOST, ADMINS) == {"acct-0-0"}
    with transaction(factory) as s:
        assert s.get(CheckIn, "co-m") is not None  # no elevation may start for it afterwards


def test_the_same_checkin_twice_has_one_effect(reaper: InProcessReaper, factory: sessionmaker[Session],
                                               fake: FakeWinRM) -> None:
    rid = elevated(factory, fake, checkout_id="co-d")
    event = reaper.deliver("secret.checked_in", checkout_id="co-d", secret_id="sec-0-0", reason="manual")
    before = len(audit(factory, rid))
    reaper.process(event)
    assert len(audit(factory, rid)) == before
    assert len(outbox(factory, "elevation.revoked")) == 1


def test_a_checkin_before_its_request_still_records_the_checkout(reaper: InProcessReaper,
                                                                 factory: sessionmaker[Session]) -> None:
    reaper.deliver("secret.checked_in", checkout_id="co-early", secret_id="sec-0-0", reason="manual")
    with transaction(factory) as s:
        assert [c.checkout_id for c in s.scalars(select(CheckIn))] == ["co-early"]


def test_membership_stays_while_another_elevation_holds_it(reaper: InProcessReaper, factory: sessionmaker[Session],
                                                           fake: FakeWinRM) -> None:
    first = elevated(factory, fake, checkout_id="co-1")
    second = elevated(factory, fake, checkout_id="co-2")
    # The second grant found the account in the group, but the first grant's add had put it there.
    assert not request(factory, second).pre_existing and held(factory, second)[1].baseline == "no"
    reaper.deliver("secret.checked_in", checkout_id="co-1", secret_id="sec-0-0", reason="manual")
    assert request(factory, first).state == State.REVOKED.value
    assert fake.members(HOST, ADMINS) == {"acct-0-0"} and removals(fake) == []
    [kept] = outbox(factory, "elevation.revoked")
    assert kept["membership_kept"] == "other_holders"
    assert audit(factory, first)[-1].details["holders"] == [second]
    reaper.deliver("secret.checked_in", checkout_id="co-2", secret_id="sec-0-0", reason="manual")
    assert request(factory, second).state == State.REVOKED.value
    assert fake.members(HOST, ADMINS) == set()
    assert outbox(factory, "elevation.revoked")[1].get("membership_kept") is None


def test_a_pre_existing_membership_is_never_removed(reaper: InProcessReaper, factory: sessionmaker[Session],
                                                    fake: FakeWinRM) -> None:
    fake.seed(HOST, ADMINS, "acct-0-0")  # a member before the first grant: the ledger's baseline is "yes"
    rid = elevated(factory, fake, checkout_id="co-pre")
    assert request(factory, rid).pre_existing and held(factory, rid)[1].baseline == "yes"
    reaper.deliver("secret.checked_in", checkout_id="co-pre", secret_id="sec-0-0", reason="manual")
    assert request(factory, rid).state == State.REVOKED.value
    assert fake.members(HOST, ADMINS) == {"acct-0-0"}
    assert outbox(factory, "elevation.revoked")[0]["membership_kept"] == "pre_existing"
    assert not [c for c in fake.calls if c.operation == "remove_member"]


def test_operator_revoke_is_audited_with_who_and_why(reaper: InProcessReaper, factory: sessionmaker[Session],
                                                     fake: FakeWinRM) -> None:
    rid = elevated(factory, fake)
    reaper.deliver("elevation.revoke_requested", request_id=rid, operator_id="bob", reason="incident 42")
    assert request(factory, rid).state == State.REVOKED.value
    [ending] = [a for a in audit(factory, rid) if a.to_state == "REVOKING"]
    assert (ending.actor, ending.reason, ending.to_state) == ("bob", "incident 42", "REVOKING")
    assert outbox(factory, "elevation.revoked")[0]["trigger"] == "operator"


def test_an_expiry_ends_an_elevation(reaper: InProcessReaper, factory: sessionmaker[Session],
                                     fake: FakeWinRM) -> None:
    rid = elevated(factory, fake)
    set_values(factory, rid, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    reaper.deliver("elevation.expired", request_id=rid, reason="approval_expired")
    row = request(factory, rid)
    assert (row.state, row.end_trigger) == (State.REVOKED.value, "approval_expired")
    assert fake.members(HOST, ADMINS) == set()


def test_a_session_is_reported_and_left_alone_by_default(reaper: InProcessReaper, factory: sessionmaker[Session],
                                                         fake: FakeWinRM) -> None:
    rid = elevated(factory, fake)
    fake.add_session(HOST, "acct-0-0")
    reaper.deliver("elevation.revoke_requested", request_id=rid, operator_id="bob", reason="r")
    [revoked] = outbox(factory, "elevation.revoked")
    assert [s["action"] for s in revoked["sessions"]] == ["reported"]
    assert len(fake.sessions(HOST)) == 1
    assert audit(factory, rid)[-1].details["sessions"][0]["account"] == "acct-0-0"


def test_a_removal_that_keeps_failing_stays_revoking_with_a_durable_retry(
        reaper: InProcessReaper, factory: sessionmaker[Session], fake: FakeWinRM) -> None:
    from shared.winrm import RetryableWinRMError

    rid = elevated(factory, fake)
    fake.fail(RetryableWinRMError(HOST, "remove_member", "connection refused"), times=None,
              operation="remove_member")
    reaper.deliver("elevation.revoke_requested", request_id=rid, operator_id="bob", reason="r")
    row = request(factory, rid)
    assert row.state == State.REVOKING.value and row.attempts >= 2 and row.lease_until is None
    assert "connection refused" in (row.last_error or "")
    assert row.next_attempt_at is not None
    fake.clear_faults()
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while request(factory, rid).state == State.REVOKING.value and datetime.now(UTC) < deadline:
        reaper.sweep()
    row = request(factory, rid)
    assert row.state == State.REVOKED.value and fake.members(HOST, ADMINS) == set()
    assert outbox(factory, "elevation.revoked")[0]["attempts"] == row.attempts > 2


def test_a_removal_is_not_confirmed_while_the_elevators_add_may_still_land(
        reaper: InProcessReaper, factory: sessionmaker[Session], fake: Fake) -> None:
    # A check-in while the elevator's add is on the wire: the reaper removes ("not a member" yet), but the
    # add may land after. The elevator took hold (add_until) before sending; there is no compensation.
    row = make_request(factory, secret_id="sec-0-0", host=HOST, checkout_id="co-race")
    during: dict[str, object] = {}

    def check_in() -> None:
        reaper.deliver("secret.checked_in", checkout_id="co-race", secret_id="sec-0-0", reason="service_closed")
        during.update(row=request(factory, row.id), add_until=held(factory, row.id)[0].add_until,
                      revoked=outbox(factory, "elevation.revoked"), removals=removals(fake))

    fake.during_add = check_in
    elevate(factory, fake, row)
    waiting = during["row"]
    assert isinstance(waiting, type(row)) and waiting.state == State.REVOKING.value
    assert during["removals"] == [(ADMINS, fake.sid_of(HOST, "acct-0-0"))]  # it tried, the host said "not a member"
    assert during["revoked"] == [], "confirmed while the add could still land"
    assert during["add_until"] is not None and waiting.next_attempt_at == during["add_until"]
    assert waiting.lease_until is None

    # The add landed after the removal; the elevator's record (superseded) hands the row back at once.
    assert fake.members(HOST, ADMINS) == {"acct-0-0"}
    back = request(factory, row.id)
    assert back.state == State.REVOKING.value and back.next_attempt_at is not None
    assert back.next_attempt_at <= datetime.now(UTC) and held(factory, row.id)[0].add_until is None
    reaper.sweep()
    assert request(factory, row.id).state == State.REVOKED.value
    assert fake.members(HOST, ADMINS) == set(), "the late add was left on the host"
    assert len(outbox(factory, "elevation.revoked")) == 1
    assert not held(factory, row.id)[1].ours


@pytest.mark.parametrize(("failing", "step"), [({1, 2}, "plan"), ({2, 3}, "finish")], ids=["plan", "finish"])
def test_a_database_outage_after_the_claim_is_outlasted_not_left_to_the_lease(
        reaper: InProcessReaper, factory: sessionmaker[Session], fake: FakeWinRM, failing: set[int],
        step: str) -> None:
    """The check-in's transaction claims the revocation; had the worker's next transaction failed through,
    the row would have stayed claimed, nobody working on it, until its lease ended."""
    rid = elevated(factory, fake, checkout_id="co-db")
    reaper.revoker.factory = cast(sessionmaker[Session], Outage(factory, failing))  # the worker's transactions
    with capture_logs() as logs:
        reaper.deliver("secret.checked_in", checkout_id="co-db", secret_id="sec-0-0", reason="manual")
    row = request(factory, rid)
    assert row.state == State.REVOKED.value and row.attempts == 1
    assert fake.members(HOST, ADMINS) == set() and len(removals(fake)) == 1
    retried = [line["step"] for line in logs if line["event"] == "revocation.database.retrying"]
    assert retried == [step, step]
