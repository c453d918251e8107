"""The elevator's handler on the real databases (SQLite and PostgreSQL) with the in-memory FakeWinRM.

Each test seeds a request, calls `Elevator.process` with an `elevation.approved` event, and checks
the row, the audit trail, the outbox and the host. The broker and the simulator are in
test_elevator_sim.py and the e2e tests.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from services.elevator.handler import Elevator
from shared.db.engine import transaction
from shared.db.models import AuditEntry, CheckIn, OutboxEvent, Request
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
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, make_request, seed_config

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


def test_approved_request_is_elevated(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    elevator(seeded, fake).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.ELEVATED and done.elevated_at is not None and done.lease_until is None
    assert not done.pre_existing
    assert members(fake) == {"acct-0-0"}
    assert [c.operation for c in fake.calls] == ["is_member", "add_member"]
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
    assert [c.operation for c in fake.calls] == ["is_member", "add_member"]
    assert actions(seeded, req.id).count("start_elevation") == 1
    assert len(outbox(seeded, "elevation.elevated")) == 1


def test_transient_errors_are_retried(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake.fail(RetryableWinRMError(f"{HOST}:5985", "add_member", "HTTP 500"), times=3, operation="add_member")
    fake.fail(RetryableWinRMError(f"{HOST}:5985", "is_member", "HTTP 500"), times=1, operation="is_member")
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


def test_running_out_of_retry_time_fails(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake.fail(RetryableWinRMError(f"{HOST}:5985", "is_member", "connection refused"), times=None)
    with capture_logs() as logs:
        elevator(seeded, fake, elevation_retry_seconds=0.3).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.REVOKING and done.failed and "gave up" in (done.error or "")
    assert any(line["event"] == "winrm.call.retrying" for line in logs)


def test_retrying_stops_before_the_window_ends(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST, expires_in=5.4)
    fake.fail(RetryableWinRMError(f"{HOST}:5985", "is_member", "connection refused"), times=None)
    # 60 s allowed by the setting, but the window ends in 5.4 s and the margin is 5 s.
    elevator(seeded, fake, elevation_retry_seconds=60, elevation_margin_seconds=5).process(approved(req))
    assert row(seeded, req.id).state == State.REVOKING


def test_missing_credentials_fail_without_a_winrm_call(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    Elevator(seeded, fake, Settings(), environ={}).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.REVOKING and done.failed and fake.calls == []
    assert "acct-0-0" in (done.error or "")


def test_pre_existing_membership_is_recorded_not_added(seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    fake.seed(HOST, ADMINISTRATORS, "acct-0-0")
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    elevator(seeded, fake).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == State.ELEVATED and done.pre_existing
    assert [c.operation for c in fake.calls] == ["is_member"]
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
    assert [c.operation for c in fake.calls] == ["is_member"]
    assert outbox(seeded, "elevation.elevated")[1]["pre_existing"] is False


class ReaperDuringAdd(FakeWinRM):
    """Simulates a check-in handled by the reaper while our add is in flight."""

    def __init__(self, factory: sessionmaker[Session], request_id: str, end_state: State) -> None:
        super().__init__()
        self.factory, self.request_id, self.end_state = factory, request_id, end_state

    def add_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        # The reaper: ELEVATING -> REVOKING, removal ("not a member" yet), maybe already REVOKED.
        with transaction(self.factory) as s:
            s.execute(update(Request).where(Request.id == self.request_id).values(
                state=self.end_state.value, revoking_since=datetime.now(UTC), next_attempt_at=None))
        return super().add_member(host, creds, group, member)


@pytest.mark.parametrize("end_state", [State.REVOKING, State.REVOKED])
def test_check_in_during_the_add_wins(seeded: sessionmaker[Session], end_state: State) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake = ReaperDuringAdd(seeded, req.id, end_state)
    elevator(seeded, fake).process(approved(req))
    done = row(seeded, req.id)
    assert done.state == end_state
    assert members(fake) == set()
    assert [c.operation for c in fake.calls] == ["is_member", "add_member", "remove_member"]
    assert actions(seeded, req.id) == ["start_elevation", "elevation.superseded", "elevation.compensated"]
    assert outbox(seeded, "elevation.elevated") == []
    if end_state is State.REVOKING:
        assert done.next_attempt_at is not None  # the reaper looks again at once


@pytest.mark.parametrize(("other_state", "kept"), [(State.ELEVATED, True), (State.REVOKING, False)])
def test_compensation_keeps_a_membership_another_active_request_holds(
        seeded: sessionmaker[Session], other_state: State, kept: bool) -> None:
    make_request(seeded, secret_id="sec-0-1", host=HOST, account="acct-0-0", state=other_state)
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake = ReaperDuringAdd(seeded, req.id, State.REVOKED)
    elevator(seeded, fake).process(approved(req))
    # An ELEVATED holder still needs it; a REVOKING one is ending and keeps nothing alive (as in the reaper).
    assert members(fake) == ({"acct-0-0"} if kept else set())
    assert ("remove_member" in [c.operation for c in fake.calls]) is not kept


def test_a_failed_compensation_is_audited(seeded: sessionmaker[Session]) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake = ReaperDuringAdd(seeded, req.id, State.REVOKED)
    fake.fail(AccessDeniedError(f"{HOST}:5985", "remove_member", "Access denied."), operation="remove_member")
    with capture_logs() as logs:
        elevator(seeded, fake).process(approved(req))
    assert actions(seeded, req.id)[-1] == "elevation.compensation_failed"
    assert any(line["event"] == "elevation.compensation.failed" and line["log_level"] == "error" for line in logs)


def test_a_holder_that_found_the_membership_pre_existing_does_not_explain_it(
        seeded: sessionmaker[Session], fake: FakeWinRM) -> None:
    fake.seed(HOST, ADMINISTRATORS, "acct-0-0")
    first = make_request(seeded, secret_id="sec-0-0", host=HOST)
    elevator(seeded, fake).process(approved(first))
    second = make_request(seeded, secret_id="sec-0-1", host=HOST, account="acct-0-0")
    elevator(seeded, fake).process(approved(second))
    assert row(seeded, first.id).pre_existing and row(seeded, second.id).pre_existing
    assert "add_member" not in [c.operation for c in fake.calls]


class ReaperDuringIsMember(FakeWinRM):
    """The check-in is handled while we are still asking whether the account is a member."""

    def __init__(self, factory: sessionmaker[Session], request_id: str) -> None:
        super().__init__()
        self.factory, self.request_id = factory, request_id

    def is_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        with transaction(self.factory) as s:
            s.execute(update(Request).where(Request.id == self.request_id).values(state=State.REVOKING.value))
        return super().is_member(host, creds, group, member)


def test_no_add_is_sent_once_the_request_has_ended(seeded: sessionmaker[Session]) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake = ReaperDuringIsMember(seeded, req.id)
    elevator(seeded, fake).process(approved(req))
    assert [c.operation for c in fake.calls] == ["is_member"]
    assert actions(seeded, req.id) == ["start_elevation", "elevation.superseded"]
    assert row(seeded, req.id).state == State.REVOKING and members(fake) == set()


class AmbiguousAddThenCheckIn(ReaperDuringAdd):
    """The add lands but its answer is lost (a read timeout); meanwhile the request is checked in."""

    adds = 0

    def add_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        self.adds += 1
        super().add_member(host, creds, group, member)
        raise RetryableWinRMError(host.key, "add_member", "ReadTimeout")


def test_a_retry_never_re_adds_after_the_request_ended(seeded: sessionmaker[Session]) -> None:
    req = make_request(seeded, secret_id="sec-0-0", host=HOST)
    fake = AmbiguousAddThenCheckIn(seeded, req.id, State.REVOKING)
    elevator(seeded, fake, elevation_retry_seconds=5).process(approved(req))
    assert fake.adds == 1
    assert members(fake) == set()
    assert actions(seeded, req.id) == ["start_elevation", "elevation.superseded", "elevation.compensated"]
