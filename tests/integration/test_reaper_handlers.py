"""The reaper's triggers and revocation on both databases, with the in-memory WinRM fake.

What matters: every trigger ends the request the database says is affected, the account leaves the
group (unless another elevation or a pre-existing membership needs it), each event has one effect,
and the outcome is in the outbox and the audit trail.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import transaction
from shared.db.models import CheckIn
from shared.states import State
from shared.winrm import FakeWinRM
from tests.factories import HostSpec, make_request, seed_config
from tests.integration.reaper_harness import (
    ADMINS,
    HOST,
    InProcessReaper,
    audit,
    fast_settings,
    outbox,
    password,
    request,
    set_values,
)

__all__ = ["password"]
REASONS = ["service_closed", "session_timeout", "manual", "checkout_expired", "approval_expired"]


@pytest.fixture
def fake() -> FakeWinRM:
    return FakeWinRM()


@pytest.fixture
def reaper(factory: sessionmaker[Session], database_url: str, fake: FakeWinRM, password: str) -> InProcessReaper:
    seed_config(factory, [HostSpec(HOST, 5985)], secrets_per_host=3)
    return InProcessReaper(factory, fake, fast_settings(database_url))


def elevated(factory: sessionmaker[Session], fake: FakeWinRM, sid: str = "sec-0-0", **values: object) -> str:
    row = make_request(factory, secret_id=sid, host=HOST, state=State.ELEVATED, **values)
    fake.seed(HOST, ADMINS, row.account or "")
    return row.id


@pytest.mark.parametrize("reason", REASONS)
def test_checkin_revokes_an_elevated_account(reaper: InProcessReaper, factory: sessionmaker[Session],
                                             fake: FakeWinRM, reason: str) -> None:
    rid = elevated(factory, fake, checkout_id="co-1")
    event = reaper.deliver("secret.checked_in", checkout_id="co-1", secret_id="sec-0-0", reason=reason)
    row = request(factory, rid)
    assert row.state == State.REVOKED.value and row.end_trigger == reason and row.ended_at is not None
    assert fake.members(HOST, ADMINS) == set()
    [revoked] = outbox(factory, "elevation.revoked")
    assert revoked["request_id"] == rid and revoked["trigger"] == reason and revoked["attempts"] == 1
    assert [(a.from_state, a.to_state, a.event_id) for a in audit(factory, rid)] == [
        ("ELEVATED", "REVOKING", event.id), ("REVOKING", "REVOKED", None)]
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
    reaper.deliver("secret.checked_in", checkout_id="co-a", secret_id="sec-0-0", reason="service_closed")
    assert request(factory, row.id).state == State.REVOKED.value
    assert [c.operation for c in fake.calls if c.operation in ("add_member", "remove_member")] == ["remove_member"]


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
    reaper.deliver("secret.checked_in", checkout_id="co-1", secret_id="sec-0-0", reason="manual")
    assert request(factory, first).state == State.REVOKED.value
    assert fake.members(HOST, ADMINS) == {"acct-0-0"}
    [kept] = outbox(factory, "elevation.revoked")
    assert kept["membership_kept"] == "other_holders"
    assert audit(factory, first)[-1].details["holders"] == [second]
    reaper.deliver("secret.checked_in", checkout_id="co-2", secret_id="sec-0-0", reason="manual")
    assert request(factory, second).state == State.REVOKED.value
    assert fake.members(HOST, ADMINS) == set()


def test_a_pre_existing_membership_is_never_removed(reaper: InProcessReaper, factory: sessionmaker[Session],
                                                    fake: FakeWinRM) -> None:
    rid = elevated(factory, fake, checkout_id="co-pre", elevated_at=datetime.now(UTC))
    set_values(factory, rid, pre_existing=True)
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
    ending = audit(factory, rid)[0]
    assert (ending.actor, ending.reason, ending.to_state) == ("bob", "incident 42", "REVOKING")
    assert outbox(factory, "elevation.revoked")[0]["trigger"] == "operator"


def test_an_expiry_ends_an_elevation(reaper: InProcessReaper, factory: sessionmaker[Session],
                                     fake: FakeWinRM) -> None:
    rid = elevated(factory, fake, expires_in=-1)
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
        reaper: InProcessReaper, factory: sessionmaker[Session], fake: FakeWinRM) -> None:
    # A check-in while the elevator's add is in flight: the reaper removes, but the add may land after.
    deadline = datetime.now(UTC) + timedelta(seconds=120)
    row = make_request(factory, secret_id="sec-0-0", host=HOST, state=State.ELEVATING, checkout_id="co-race",
                       lease_until=deadline, add_deadline=deadline)
    reaper.deliver("secret.checked_in", checkout_id="co-race", secret_id="sec-0-0", reason="service_closed")
    waiting = request(factory, row.id)
    assert waiting.state == State.REVOKING.value and waiting.next_attempt_at == deadline
    assert outbox(factory, "elevation.revoked") == []
    fake.seed(HOST, ADMINS, row.account or "")  # the add lands after the reaper's removal

    # The elevator's add returns, loses the race (the row is REVOKING) and hands the row back at once.
    set_values(factory, row.id, add_deadline=None, next_attempt_at=datetime.now(UTC))
    reaper.sweep()
    assert request(factory, row.id).state == State.REVOKED.value
    assert fake.members(HOST, ADMINS) == set(), "the late add was left on the host"
    assert len(outbox(factory, "elevation.revoked")) == 1
