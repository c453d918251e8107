"""The elevator's handler on the real databases (SQLite and PostgreSQL) with the in-memory FakeWinRM.

Each test seeds a request, calls `Elevator.process` with an `elevation.approved` event, and checks
the row, the ledger, the audit trail, the outbox and the host. The elevator resolves, takes hold, and
always sends the add by SID ("already a member" is success); it never removes anything: a request that
ends while its add is in flight is left to the reaper, which waits for the add to return (the races
below run the real reaper in-process). The broker and the simulator are in test_elevator_sim.py and
the e2e tests.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from services.elevator.handler import Elevator
from shared.clock import FakeClock
from shared.db.engine import transaction
from shared.db.models import AuditEntry, CheckIn, Hold, Membership, OutboxEvent, ReconcileTarget, Request
from shared.events import Event, new_event
from shared.settings import Settings
from shared.states import State
from shared.winrm import (
    AccessDeniedError,
    AuthenticationError,
    Credentials,
    FakeWinRM,
    HostEndpoint,
    RetryableWinRMError,
)
from shared.winrm.endpoint import Resolved
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, make_request, seed_config
from tests.integration.reaper_harness import InProcessReaper, fast_settings
from tests.support import Outage

PASSWORD = "Fake-Pa55word!"
ENV = {PASSWORD_ENV: PASSWORD}
HOST = "10.0.0.1"


def approved(request: Request, **data: Any) -> Event:
    return new_event("elevation.approved", {
        "request_id": request.id, "checkout_id": request.checkout_id, "secret_id": request.secret_id,
        "approver_id": "bob", "expires_at": datetime.now(UTC) + timedelta(hours=1), **data,
    }, source="test")


@pytest.fixture
def seeded(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    seed_config(factory, [HostSpec(HOST, 5985)], secrets_per_host=2)
    return factory


@pytest.fixture
def fake() -> FakeWinRM:
    return FakeWinRM()


def elevator(factory: sessionmaker[Session], fake: FakeWinRM, **overrides: Any) -> Elevator:
    settings = Settings(retry_initial_seconds=0.01, retry_max_seconds=0.02,
                        **({"elevation_retry_seconds": 0.5} | overrides))
    return Elevator(factory, fake, settings, environ=ENV)


def row(factory: sessionmaker[Session], request_id: str) -> Request:
    with factory() as s:
        found = s.get(Request, request_id)
        assert found is not None
        return found


def actions(factory: sessionmaker[Session], request_id: str) -> list[str]:
    with factory() as s:
        return list(s.scalars(select(AuditEntry.action).where(AuditEntry.request_id == request_id)
                              .order_by(AuditEntry.id)))


def outbox(factory: sessionmaker[Session], event_type: str) -> list[dict[str, Any]]:
    with factory() as s:
        bodies = s.scalars(select(OutboxEvent.body).where(OutboxEvent.type == event_type).order_by(OutboxEvent.id))
        return [json.loads(b)["data"] for b in bodies]


def members(fake: FakeWinRM) -> set[str]:
    return fake.members(HOST, ADMINISTRATORS)


def operations(fake: FakeWinRM) -> list[str]:
    return [c.operation for c in fake.calls]


def ledger(factory: sessionmaker[Session], request_id: str) -> tuple[Hold, Membership]:
    with factory() as s:
        hold = s.get(Hold, request_id)
        assert hold is not None, f"{request_id} never took hold"
        membership = s.get(Membership, hold.membership_id)
        assert membership is not None
        return hold, membership


def took_hold(factory: sessionmaker[Session], request_id: str) -> bool:
    with factory() as s:
        return s.get(Hold, request_id) is not None


def test_approved_request_is_elevated(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    elevator(seeded, fake).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.ELEVATED and done.elevated_at is not None and done.lease_until is None
    assert not done.pre_existing
    assert members(fake) == {"acct-0-0"}
    sid = fake.sid_of(HOST, "acct-0-0")
    assert operations(fake) == ["resolve", "add_member"]
    assert fake.calls[1].args == (ADMINISTRATORS, sid)  # the add is by SID
    assert (done.account_sid, done.group_sid) == (sid, ADMINISTRATORS)
    hold, membership = ledger(seeded, req.id)
    assert hold.held and hold.add_until is None and not hold.decides_baseline  # the add has returned
    assert (membership.account_sid, membership.baseline, membership.ours) == (sid, "no", True)
    assert actions(seeded, req.id) == ["start_elevation", "elevation_succeeded"]
    [event] = outbox(seeded, "elevation.elevated")
    assert event | {"elevated_at": None, "expires_at": None} == {
        "request_id": req.id, "secret_id": "sec-0-0", "host": HOST, "account": "acct-0-0",
        "group": ADMINISTRATORS, "elevated_at": None, "expires_at": None, "pre_existing": False}


def test_unknown_request_is_audited_and_nothing_else(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    event = approved(req, request_id="req-unknown")
    elevator(seeded, fake).process(event)
    assert actions(seeded, "req-unknown") == ["elevation.unknown_request"]
    assert fake.calls == [] and row(seeded, req.id).state == State.APPROVED


def test_expired_window_is_refused_without_a_winrm_call(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST, expires_in=-1)
    # The event claims a later window: the database's expires_at is what counts.
    elevator(seeded, fake).process(approved(req))
    assert fake.calls == [] and row(seeded, req.id).state == State.APPROVED
    assert actions(seeded, req.id) == ["elevation.refused"]


def test_checked_in_checkout_is_refused(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    with transaction(seeded) as s:
        s.add(CheckIn(checkout_id=req.checkout_id, secret_id="sec-0-0", reason="manual",
                      checked_in_at=datetime.now(UTC), event_id="ev-checkin"))
    elevator(seeded, fake).process(approved(req))
    assert fake.calls == [] and row(seeded, req.id).state == State.APPROVED
    assert actions(seeded, req.id) == ["elevation.refused"]


@pytest.mark.parametrize("state", [State.PENDING, State.REVOKING, State.REVOKED, State.DENIED])
def test_request_not_approved_is_refused(seeded: sessionmaker[Session], fake: FakeWinRM, state: State) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST, state=state)
    elevator(seeded, fake).process(approved(req))
    assert fake.calls == [] and row(seeded, req.id).state == state


def test_duplicate_event_has_one_effect(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    event = approved(req)
    daemon = elevator(seeded, fake)
    daemon.process(event)
    daemon.process(event)
    daemon.process(approved(req))  # a second approval event (new id) for the same request: refused
    assert operations(fake) == ["resolve", "add_member"]
    assert actions(seeded, req.id).count("start_elevation") == 1
    assert len(outbox(seeded, "elevation.elevated")) == 1


def test_transient_errors_are_retried(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake.fail(RetryableWinRMError(f"{HOST}:5985", "add_member", "HTTP 500"), times=3, operation="add_member")
    fake.fail(RetryableWinRMError(f"{HOST}:5985", "resolve", "HTTP 500"), times=1, operation="resolve")
    elevator(seeded, fake, elevation_retry_seconds=5).process(approved(req))
    assert row(seeded, req.id).state == State.ELEVATED and members(fake) == {"acct-0-0"}


def test_permanent_error_fails_to_revoking(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake.fail(AuthenticationError(f"{HOST}:5985", "add_member", "credentials rejected (HTTP 401)"),
              operation="add_member", times=2)
    # Were it retried, the third add would succeed within the 5 s budget.
    elevator(seeded, fake, elevation_retry_seconds=5).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.REVOKING and done.failed
    assert done.revoking_since is not None and done.next_attempt_at is not None and done.lease_until is None
    assert done.error is not None and "add_member" in done.error and HOST in done.error
    assert PASSWORD not in done.error
    assert members(fake) == set()
    assert outbox(seeded, "elevation.failed") == [{"request_id": req.id, "error": done.error}]
    assert actions(seeded, req.id) == ["start_elevation", "elevation_failed"]
    hold, _membership = ledger(seeded, req.id)
    assert not hold.held and hold.add_until is None  # released with the failure; the reaper ends it FAILED


def test_running_out_of_retry_time_fails(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake.fail(RetryableWinRMError(f"{HOST}:5985", "resolve", "connection refused"), times=None)
    with capture_logs() as logs:
        elevator(seeded, fake, elevation_retry_seconds=0.3).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.REVOKING and done.failed and "gave up" in (done.error or "")
    assert any(line["event"] == "winrm.call.retrying" for line in logs)
    assert "add_member" not in operations(fake) and not took_hold(seeded, req.id)


def test_retrying_stops_before_the_window_ends(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST, expires_in=5.4)
    fake.fail(RetryableWinRMError(f"{HOST}:5985", "resolve", "connection refused"), times=None)
    # 60 s allowed by the setting, but the window ends in 5.4 s and the margin is 5 s.
    elevator(seeded, fake, elevation_retry_seconds=60, elevation_margin_seconds=5).process(approved(req))
    assert row(seeded, req.id).state == State.REVOKING


def test_missing_credentials_fail_without_a_winrm_call(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    Elevator(seeded, fake, Settings(), environ={}).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.REVOKING and done.failed and fake.calls == []
    assert "acct-0-0" in (done.error or "")


def test_pre_existing_membership_is_recorded_and_the_add_answered_already_a_member(
        seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    fake.seed(HOST, ADMINISTRATORS, "acct-0-0")  # a member before any grant of ours
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    elevator(seeded, fake).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.ELEVATED and done.pre_existing
    # No is_member first: the add is always sent, and "already a member" is its success.
    assert operations(fake) == ["resolve", "add_member"] and members(fake) == {"acct-0-0"}
    _hold, membership = ledger(seeded, req.id)
    assert membership.baseline == "yes"  # a new membership: the look while resolving shows the baseline
    assert actions(seeded, req.id) == ["start_elevation", "elevation_succeeded", "elevation.pre_existing"]
    assert outbox(seeded, "elevation.elevated")[0]["pre_existing"] is True


def test_membership_explained_by_another_holder_is_not_pre_existing(
        seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    first = make_request(seeded, secret_id="sec-0-0", host=HOST)
    elevator(seeded, fake).process(approved(first))
    # Same account, host and group through a second checkout (e.g. a new checkout racing the end of the last).
    second = make_request(seeded, secret_id="sec-0-1", host=HOST, account="acct-0-0")
    fake.calls.clear()
    elevator(seeded, fake).process(approved(second))
    done = row(seeded, second.id)
    assert done.state == State.ELEVATED and not done.pre_existing
    # One run: the SIDs are known from the first grant (the fake records the run's steps too); it
    # answered "already a member": our first grant's add.
    assert operations(fake) == ["elevate_known", "resolve", "add_member"]
    assert ledger(seeded, first.id)[1].id == ledger(seeded, second.id)[1].id
    assert ledger(seeded, second.id)[1].baseline == "no" and not ledger(seeded, second.id)[0].decides_baseline
    assert outbox(seeded, "elevation.elevated")[1]["pre_existing"] is False


def test_a_known_account_is_elevated_in_two_transactions_and_one_run(
        seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    """Claim-and-hold, then record: the hold is durable before the one run is sent, in the claim's own
    transaction (issue 14: the elevator's transactions and statements are what a burst waits on)."""
    first = make_request(seeded, secret_id="sec-0-0", host=HOST)
    elevator(seeded, fake).process(approved(first))
    counting = Outage(seeded, set())
    second = make_request(seeded, secret_id="sec-0-1", host=HOST, account="acct-0-0")
    holds_at_send: list[bool] = []
    real = fake.elevate_known

    def elevate_known(*args: Any) -> Any:
        holds_at_send.append(took_hold(seeded, second.id))
        return real(*args)

    fake.elevate_known = elevate_known  # type: ignore[method-assign]
    fake.calls.clear()
    elevator(cast(sessionmaker[Session], counting), fake).process(approved(second))
    assert row(seeded, second.id).state == State.ELEVATED
    assert counting.begun == 2 and holds_at_send == [True]
    assert operations(fake)[0] == "elevate_known"


class ReaperDuringAdd(FakeWinRM):
    """A check-in handled by the real reaper (in-process) while our add is on the wire, before it lands."""

    def __init__(self, factory: sessionmaker[Session], request: Request) -> None:
        super().__init__()
        self.factory, self.request = factory, request
        url = factory.kw["bind"].url.render_as_string(hide_password=False)
        self.reaper = InProcessReaper(factory, self, fast_settings(url))
        self.state_during_add: str | None = None

    def check_in(self) -> None:
        self.reaper.deliver("secret.checked_in", checkout_id=self.request.checkout_id,
                            secret_id=self.request.secret_id, reason="service_closed")
        self.state_during_add = row(self.factory, self.request.id).state

    def add_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        if self.state_during_add is None:
            self.check_in()
        return super().add_member(host, creds, group_sid, member_sid)


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)  # the reaper reads the password from the environment


def test_check_in_during_the_add_is_left_to_the_reaper_which_removes_after_the_add_returns(
        seeded: sessionmaker[Session], password: None) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake = ReaperDuringAdd(seeded, req)
    with capture_logs() as logs:
        elevator(seeded, fake).process(approved(req))
    # While the add could land, the reaper removed ("not a member" yet) but did not confirm.
    assert fake.state_during_add == State.REVOKING
    done = row(seeded, req.id)
    assert done.state == State.REVOKING and outbox(seeded, "elevation.elevated") == []
    assert outbox(seeded, "elevation.revoked") == []
    assert members(fake) == {"acct-0-0"}, "the add landed after the reaper's removal"
    # The elevator compensates nothing: it records that its add returned and hands the row back at once.
    assert operations(fake) == ["resolve", "revoke", "remove_member", "list_sessions", "add_member"]
    assert actions(seeded, req.id) == ["start_elevation", "end", "elevation.superseded"]
    assert done.next_attempt_at is not None and done.next_attempt_at <= datetime.now(UTC)
    hold, membership = ledger(seeded, req.id)
    assert not hold.held and hold.add_until is None and membership.ours and membership.baseline == "no"
    with seeded() as s:
        watched = s.get(ReconcileTarget, (HOST, ADMINISTRATORS))
        assert watched is not None and watched.next_at <= datetime.now(UTC)  # the reconciler looks at once too
    assert any(line["event"] == "elevation.superseded" and line["added"] for line in logs)

    fake.reaper.sweep()  # the reaper's next attempt, now that no add of ours can land
    assert row(seeded, req.id).state == State.REVOKED and members(fake) == set()
    assert len(outbox(seeded, "elevation.revoked")) == 1


@pytest.mark.parametrize(("other_state", "kept"), [(State.ELEVATED, True), (State.REVOKING, False)])
def test_a_membership_another_active_grant_holds_is_kept_when_a_raced_grant_ends(
        seeded: sessionmaker[Session], fake: FakeWinRM, password: None, other_state: State, kept: bool) -> None:
    other = make_request(seeded, secret_id="sec-0-1", host=HOST, account="acct-0-0")
    elevator(seeded, fake).process(approved(other))
    if other_state is State.REVOKING:  # ended (hold released), its own revocation not run yet
        with transaction(seeded) as s:
            s.execute(update(Request).where(Request.id == other.id).values(state=State.REVOKING.value))
            s.execute(update(Hold).where(Hold.request_id == other.id).values(held=False))
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    racing = ReaperDuringAdd(seeded, req)
    racing.seed(HOST, ADMINISTRATORS, "acct-0-0")  # the host as the other grant left it
    elevator(seeded, racing).process(approved(req))
    racing.reaper.sweep()
    # An ELEVATED holder still needs it; a REVOKING one is ending and keeps nothing alive.
    assert row(seeded, req.id).state == State.REVOKED
    assert members(racing) == ({"acct-0-0"} if kept else set())
    [revoked] = [e for e in outbox(seeded, "elevation.revoked") if e["request_id"] == req.id]
    assert revoked.get("membership_kept") == ("other_holders" if kept else None)


def test_a_failed_removal_after_the_raced_add_stays_revoking_and_the_host_is_reconciled_soon(
        seeded: sessionmaker[Session], password: None) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake = ReaperDuringAdd(seeded, req)
    elevator(seeded, fake).process(approved(req))
    fake.fail(AccessDeniedError(f"{HOST}:5985", "remove_member", "Access denied."), operation="remove_member",
              times=None)
    fake.reaper.sweep()
    done = row(seeded, req.id)
    assert done.state == State.REVOKING and "Access denied" in (done.last_error or "")
    assert done.next_attempt_at is not None and done.lease_until is None  # a durable retry, nothing lost
    assert members(fake) == {"acct-0-0"} and ledger(seeded, req.id)[1].ours
    with seeded() as s:
        watched = s.get(ReconcileTarget, (HOST, ADMINISTRATORS))
        assert watched is not None and watched.next_at <= datetime.now(UTC)
    assert actions(seeded, req.id)[-1] == "elevation.superseded"


def test_a_holder_that_found_the_membership_pre_existing_does_not_explain_it(
        seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    fake.seed(HOST, ADMINISTRATORS, "acct-0-0")
    first = make_request(seeded, secret_id="sec-0-0", host=HOST)
    elevator(seeded, fake).process(approved(first))
    second = make_request(seeded, secret_id="sec-0-1", host=HOST, account="acct-0-0")
    elevator(seeded, fake).process(approved(second))
    assert row(seeded, first.id).pre_existing and row(seeded, second.id).pre_existing
    assert ledger(seeded, second.id)[1].baseline == "yes"
    assert operations(fake).count("add_member") == 2 and members(fake) == {"acct-0-0"}  # both "already a member"


class ReaperDuringResolve(FakeWinRM):
    """The check-in is handled while we are still resolving the account and the group."""

    def __init__(self, factory: sessionmaker[Session], request_id: str) -> None:
        super().__init__()
        self.factory, self.request_id = factory, request_id

    def resolve(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> Resolved:
        with transaction(self.factory) as s:
            s.execute(update(Request).where(Request.id == self.request_id).values(state=State.REVOKING.value))
        return super().resolve(host, creds, group, member)


def test_no_add_is_sent_once_the_request_has_ended(seeded: sessionmaker[Session]) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake = ReaperDuringResolve(seeded, req.id)
    elevator(seeded, fake).process(approved(req))
    assert operations(fake) == ["resolve"]
    assert actions(seeded, req.id) == ["start_elevation", "elevation.superseded"]
    assert row(seeded, req.id).state == State.REVOKING and members(fake) == set()
    assert not took_hold(seeded, req.id)  # nothing held: the reaper ends it without a WinRM call


class AmbiguousAddThenCheckIn(ReaperDuringAdd):
    """The add lands but its answer is lost (a read timeout); meanwhile the request is checked in."""

    adds = 0

    def add_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        self.adds += 1
        super().add_member(host, creds, group_sid, member_sid)
        raise RetryableWinRMError(host.key, "add_member", "ReadTimeout")


def test_a_retry_never_re_adds_after_the_request_ended(seeded: sessionmaker[Session], password: None) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake = AmbiguousAddThenCheckIn(seeded, req)
    elevator(seeded, fake, elevation_retry_seconds=5).process(approved(req))
    assert fake.adds == 1
    assert actions(seeded, req.id) == ["start_elevation", "end", "elevation.superseded"]
    # A new membership: the look while resolving is its baseline ("no"), never an answer after the retry.
    assert ledger(seeded, req.id)[1].baseline == "no" and not row(seeded, req.id).pre_existing
    assert members(fake) == {"acct-0-0"} and row(seeded, req.id).state == State.REVOKING
    fake.reaper.sweep()
    assert members(fake) == set() and row(seeded, req.id).state == State.REVOKED


@pytest.mark.parametrize(("failing", "step"), [
    ({2, 3}, "take_hold"),  # the transactions after the claim (which looks for known SIDs): hold, record
    ({3, 4, 5}, "record"),
], ids=["hold", "record"])
def test_a_database_outage_after_the_claim_is_outlasted_not_turned_into_a_lost_grant(
        seeded: sessionmaker[Session], fake: FakeWinRM, failing: set[int], step: str) -> None:
    """Only the claim consumes the event: had a later transaction's error reached the consumer, its retry of
    the event would be a duplicate and the grant would wait out its lease and end FAILED."""
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    flaky = Outage(seeded, failing)
    with capture_logs() as logs:
        elevator(cast(sessionmaker[Session], flaky), fake).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.ELEVATED and members(fake) == {"acct-0-0"}
    assert operations(fake) == ["resolve", "add_member"]  # one add, sent once
    retried = [line for line in logs if line["event"] == "elevation.database.retrying"]
    assert {line["step"] for line in retried} == {step} and len(retried) == len(failing)
    assert actions(seeded, req.id) == ["start_elevation", "elevation_succeeded"]


def test_an_outage_past_the_last_moment_to_add_sends_nothing(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    """The database stays away until an add could no longer return before the lease: nothing is sent, the error
    reaches the consumer (whose retry is a duplicate), and the sweeper ends the lease as a failed add."""
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    clock = FakeClock(datetime.now(UTC))
    flaky = Outage(seeded, set(range(2, 10_000)))  # from the hold on
    daemon = Elevator(cast(sessionmaker[Session], flaky), fake,
                      Settings(retry_initial_seconds=0.01, retry_max_seconds=0.02, elevation_retry_seconds=0.5),
                      clock, environ=ENV, sleep=clock.advance)
    with capture_logs() as logs, pytest.raises(OperationalError):
        daemon.process(approved(req))
    assert "add_member" not in operations(fake) and members(fake) == set()
    assert [line["step"] for line in logs if line["event"] == "elevation.database.gave_up"] == ["take_hold"]
    assert row(seeded, req.id).state == State.ELEVATING  # the sweeper's to end when the lease passes
