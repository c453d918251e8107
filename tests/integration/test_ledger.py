"""Issue 10's review findings, each as a test on both databases, with the real elevator, reaper, sweeper and
reconciler code over the in-memory FakeWinRM (the simulator versions are in test_ledger_sim.py).

Each test names the finding it reproduces; on the code before the ledger each of them left an account in
the group (or removed a standing one) with no alert.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from services.reaper import ending
from services.reaper.sweeper import end_expired
from shared.db.engine import transaction
from shared.db.models import AuditEntry, Drift, Hold, Host, Membership, OutboxEvent, ReconcileTarget, Request, Task
from shared.db.transitions import Cause, load
from shared.events import Event, new_event
from shared.settings import Settings
from shared.states import State
from shared.winrm import Credentials, HostEndpoint, RetryableWinRMError
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, seed_config
from tests.integration.ledger_world import ACCOUNT, ENV, HOST, HookedWinRM, World


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def seeded(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    seed_config(factory, [HostSpec(HOST, 5985)], secrets_per_host=2)
    return factory


@pytest.fixture
def fake() -> HookedWinRM:
    return HookedWinRM()


@pytest.fixture
def world(seeded: sessionmaker[Session], fake: HookedWinRM) -> Iterator[World]:
    yield World(seeded, fake)


def test_overlapping_grants_a_grant_that_looks_while_another_ends_does_not_inherit_it(world: World) -> None:
    """Grant B resolves (looks) while A is checked in and revoked: B must own the membership it then adds."""
    a, b = world.request("sec-0-0"), world.request("sec-0-1")
    world.elevate(a)
    assert world.state(a) == State.ELEVATED and world.member()
    world.fake.after["resolve"] = lambda: world.end(a)  # A ends while B is between looking and adding
    world.elevate(b)
    assert world.state(a) == State.REVOKED
    assert world.state(b) == State.ELEVATED and world.member()
    world.end(b)
    assert world.state(b) == State.REVOKED
    assert not world.member(), "the account stayed an administrator after both grants ended"


def test_overlapping_grants_the_first_to_end_keeps_it_for_the_other(world: World) -> None:
    a, b = world.request("sec-0-0"), world.request("sec-0-1")
    world.elevate(a)
    world.elevate(b)
    world.end(a)
    assert world.member(), "B is still active: the membership must stay"
    with transaction(world.factory) as session:
        kept = session.scalars(select(AuditEntry).where(AuditEntry.request_id == a.id,
                                                        AuditEntry.to_state == State.REVOKED.value)).one()
    assert kept.details is not None and kept.details["membership_kept"] == "other_holders"
    world.end(b)
    assert not world.member()


def test_lost_expiry_the_sweeper_ends_the_window_in_the_database(world: World) -> None:
    """No `elevation.expired` is consumed at all (as if dead-lettered): the request still ends and is revoked."""
    request = world.request()
    world.elevate(request)
    now = datetime.now(UTC) + timedelta(hours=2)  # the window has ended
    claimed = end_expired(world.factory, now, now + timedelta(seconds=60), room=10)
    assert claimed == [request.id]
    assert world.state(request) == State.REVOKING
    with transaction(world.factory) as session:
        types = list(session.scalars(select(OutboxEvent.type)))
    assert "elevation.expired" in types  # still published, as a notification
    world.revoke(request.id)
    assert world.state(request) == State.REVOKED and not world.member()


def test_renamed_account_is_removed_by_its_sid(world: World) -> None:
    request = world.request()
    world.elevate(request)
    world.fake.rename(HOST, ACCOUNT, "innocent-name")  # Rename-LocalUser: same SID
    world.end(request)
    assert world.state(request) == State.REVOKED
    assert world.fake.sid_of(HOST, "innocent-name") not in world.fake.member_sids(HOST, ADMINISTRATORS)


def test_config_change_does_not_strand_a_grant(world: World) -> None:
    """The host row is removed while elevated: the grant's own snapshot still reaches the host."""
    request = world.request()
    world.elevate(request)
    with transaction(world.factory) as session:
        session.execute(delete(Host).where(Host.address == HOST))
    world.end(request)
    assert world.state(request) == State.REVOKED and not world.member()


def test_add_in_flight_at_check_in_is_never_confirmed_before_it_returns(world: World) -> None:
    """The reaper's removal lands before the elevator's add: it must not confirm until the add has returned."""
    request = world.request()
    revoking: list[str] = []

    def check_in_and_revoke() -> None:
        revoking.extend(world.check_in(request))
        world.revoke(request.id)

    world.fake.before["add_member"] = check_in_and_revoke
    world.elevate(request)  # the add lands after the reaper's removal; the elevator then records it
    assert revoking == [request.id]
    assert world.member(), "the add landed after the removal"
    assert world.state(request) == State.REVOKING, "confirmed REVOKED while the add was in flight"
    world.revoke(request.id)
    assert world.state(request) == State.REVOKED and not world.member()


def test_add_in_flight_then_elevator_killed_reconciler_and_reaper_still_remove(world: World) -> None:
    """SIGKILL after the add: nothing in memory survives; the durable hold makes the membership ours."""
    request = world.request()

    class Killed(BaseException):
        pass

    def land_then_die() -> None:
        world.fake.before.pop("add_member", None)
        world.fake.add_member(HostEndpoint(HOST, "http", 5985, "basic"), Credentials("x", "y"), ADMINISTRATORS,
                              world.fake.sid_of(HOST, ACCOUNT))
        raise Killed

    world.fake.before["add_member"] = land_then_die
    with pytest.raises(Killed):
        world.elevate(request)
    assert world.member() and world.state(request) == State.ELEVATING
    ids = world.check_in(request)
    world.revoke(ids[0])
    assert world.state(request) == State.REVOKING, "an add may still land until the lease: no confirmation yet"
    with transaction(world.factory) as session:  # the lease (and so add_until) passes
        hold = session.get(Hold, request.id)
        assert hold is not None and hold.add_until is not None
        hold.add_until = datetime.now(UTC) - timedelta(seconds=1)
    world.revoke(request.id)
    assert world.state(request) == State.REVOKED and not world.member()
    with transaction(world.factory) as session:
        membership = session.scalars(select(Membership)).one()
    assert membership.ours is False


def test_standing_membership_is_not_removed_by_a_grant_that_never_added(world: World) -> None:
    world.fake.seed(HOST, ADMINISTRATORS, ACCOUNT)  # a membership someone else made
    request = world.request()  # APPROVED, never elevated
    world.end(request)
    assert world.state(request) == State.REVOKED
    assert world.member(), "a request that never sent an add removed a standing membership"


def test_standing_membership_is_not_removed_after_a_grant_found_it(world: World) -> None:
    world.fake.seed(HOST, ADMINISTRATORS, ACCOUNT)
    request = world.request()
    world.elevate(request)
    with transaction(world.factory) as session:
        assert session.scalars(select(Membership.baseline)).one() == "yes"
    world.end(request)
    assert world.state(request) == State.REVOKED and world.member()


def test_failed_resolve_sends_no_add_and_removes_nothing(world: World) -> None:
    world.fake.seed(HOST, ADMINISTRATORS, ACCOUNT)
    request = world.request(account="no-such-user")
    world.fake.unknown_principals.add("no-such-user")
    world.elevate(request)
    with transaction(world.factory) as session:
        row = load(session, request.id)
        assert row is not None and row.failed
    world.revoke(request.id)
    assert world.state(request) == State.FAILED and world.member()
    assert not [c for c in world.fake.calls if c.operation in ("add_member", "remove_member")]


@pytest.mark.parametrize("account", ["Everyone", "CORP\\Domain Users"])
def test_a_principal_that_is_not_a_user_is_never_added(world: World, account: str) -> None:
    request = world.request(account=account)
    world.elevate(request)
    with transaction(world.factory) as session:
        row = load(session, request.id)
        assert row is not None and row.failed and "not" in (row.error or "")
    assert not [c for c in world.fake.calls if c.operation == "add_member"]


def test_reconciler_baselines_then_reports_drift_once(world: World) -> None:
    world.fake.seed(HOST, ADMINISTRATORS, "standing-admin")
    request = world.request()
    world.elevate(request)
    world.reconciler()  # first listing: standing-admin is a standing member
    with transaction(world.factory) as session:
        assert not session.scalars(select(Drift)).all()
        session.execute(ReconcileTarget.__table__.update().values(next_at=datetime.now(UTC)))
    world.fake.seed(HOST, ADMINISTRATORS, "sneaky")
    world.reconciler()
    with transaction(world.factory) as session:
        drift = session.scalars(select(Drift)).one()
        session.execute(ReconcileTarget.__table__.update().values(next_at=datetime.now(UTC)))
    assert drift.account_sid == world.fake.sid_of(HOST, "sneaky") and drift.action == "reported"
    world.reconciler()  # still there: not reported again
    with transaction(world.factory) as session:
        assert len(list(session.scalars(select(OutboxEvent).where(OutboxEvent.type == "membership.drift")))) == 1
        assert len(list(session.scalars(select(AuditEntry).where(AuditEntry.action == "membership.drift")))) == 1
    assert world.fake.sid_of(HOST, "sneaky") in world.fake.member_sids(HOST, ADMINISTRATORS)


def test_reconciler_removes_drift_only_where_the_task_says_so(world: World) -> None:
    request = world.request()
    world.elevate(request)
    world.reconciler()
    with transaction(world.factory) as session:
        session.execute(Task.__table__.update().values(drift="remove"))
        session.execute(ReconcileTarget.__table__.update().values(next_at=datetime.now(UTC)))
    world.fake.seed(HOST, ADMINISTRATORS, "sneaky")
    world.reconciler()
    assert world.fake.sid_of(HOST, "sneaky") not in world.fake.member_sids(HOST, ADMINISTRATORS)
    assert world.member(), "the active grant's membership stays"
    with transaction(world.factory) as session:
        assert session.scalars(select(Drift.action)).one() == "removed"


def test_reconciler_removes_a_membership_of_ours_that_no_grant_holds(world: World) -> None:
    """A late add (after its grant was confirmed revoked) is ours: the reconciler takes it out."""
    request = world.request()
    world.elevate(request)
    world.end(request)
    assert not world.member()
    with transaction(world.factory) as session:  # as if an add landed after the confirmation
        session.execute(Membership.__table__.update().values(ours=True))
        session.execute(ReconcileTarget.__table__.update().values(next_at=datetime.now(UTC)))
    world.fake.seed(HOST, ADMINISTRATORS, ACCOUNT)
    world.reconciler()
    assert not world.member()
    with transaction(world.factory) as session:
        assert session.scalars(select(Membership.ours)).one() is False
        assert session.scalars(select(AuditEntry).where(AuditEntry.action == "membership.reconciled")).one()


def test_reconciler_puts_back_a_membership_an_elevated_grant_holds(world: World) -> None:
    request = world.request()
    world.elevate(request)
    world.fake.remove_member(HostEndpoint(HOST, "http", 5985, "basic"), Credentials("x", "y"), ADMINISTRATORS,
                             world.fake.sid_of(HOST, ACCOUNT))
    world.reconciler()
    assert world.member()
    with transaction(world.factory) as session:
        assert session.get(Hold, request.id).add_until is None  # type: ignore[union-attr]


def test_an_operator_revoke_of_a_grant_ended_by_config_has_a_target(world: World) -> None:
    """The grant keeps what it needs to end: endpoint, provider reference, group, SIDs."""
    request = world.request()
    world.elevate(request)
    with transaction(world.factory) as session:
        row = load(session, request.id)
        assert row is not None and row.target is not None
        assert row.target["endpoint"]["address"] == HOST and row.target["password_env"] == PASSWORD_ENV
        assert ENV[PASSWORD_ENV] not in str(row.target)
        assert row.account_sid == world.fake.sid_of(HOST, ACCOUNT) and row.group_sid == ADMINISTRATORS
        ending.end_request(session, row, now=datetime.now(UTC), end_trigger="operator", cause=Cause("op"))
    world.revoke(request.id)
    assert world.state(request) == State.REVOKED and not world.member()


def test_database_outage_is_retried_with_backoff_not_requeued(settings: Settings) -> None:
    """A handler that hits a database outage is retried in place: no requeue, so no delivery is burned."""
    from sqlalchemy.exc import OperationalError

    from shared.amqp.delivery import Outcome
    from shared.daemon import Runtime

    runtime = Runtime.create("reaper", settings)
    calls: list[Event] = []

    def process(event: Event) -> None:
        calls.append(event)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    event = new_event("elevation.expired", {"request_id": "req-1", "reason": "checkout_expired"}, source="t")
    import shared.daemon as daemon_module

    original = daemon_module.backoff_delay
    daemon_module.backoff_delay = lambda _n: 0.01  # type: ignore[assignment]
    try:
        assert runtime._process_with_backoff(process, event) is Outcome.ACK
    finally:
        daemon_module.backoff_delay = original  # type: ignore[assignment]
        runtime.publisher.close()
    assert len(calls) == 3
    runtime.stopping.set()
    calls.clear()
    assert runtime._process_with_backoff(process, event) is Outcome.REQUEUE  # stopping: back to the broker


def test_jitctl_drift_and_memberships_show_what_the_reconciler_found(world: World, settings: Settings) -> None:
    import json
    import subprocess
    from pathlib import Path

    from tests.conftest import settings_env

    jitctl = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "jitctl")
    request = world.request()
    world.elevate(request)
    world.reconciler()
    with transaction(world.factory) as session:
        session.execute(ReconcileTarget.__table__.update().values(next_at=datetime.now(UTC)))
    world.fake.seed(HOST, ADMINISTRATORS, "sneaky")
    world.reconciler()

    def run(*args: str) -> Any:
        done = subprocess.run([jitctl, *args], env=settings_env(settings), capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    drift = json.loads(run("drift", "--json"))
    assert [(d["host"], d["account_sid"], d["action"]) for d in drift] == [
        (HOST, world.fake.sid_of(HOST, "sneaky"), "reported")]
    ledger_view = json.loads(run("memberships", "--json"))
    ours = [m for m in ledger_view["memberships"] if m["account_sid"] == world.fake.sid_of(HOST, ACCOUNT)]
    assert ours == [{"host": HOST, "group_sid": ADMINISTRATORS, "account": ours[0]["account"],
                     "account_sid": world.fake.sid_of(HOST, ACCOUNT), "baseline": "no", "ours": True,
                     "holders": [request.id]}]
    assert "sneaky" in run("drift")


def test_a_check_in_claims_its_revocation_in_the_same_transaction(world: World) -> None:
    """The sweeper must not claim what the handler is about to run (it used to, then the pool declined it
    as already held and the request waited a whole lease with nobody working on it)."""
    from services.reaper.handlers import make_process
    from shared.clock import SystemClock

    request = world.request()
    world.elevate(request)
    started: list[str] = []
    process = make_process(world.factory, SystemClock(), started.append, world.revoker.lease_until,
                           sweep_interval=1.0)
    process(new_event("secret.checked_in", {"checkout_id": request.checkout_id, "secret_id": request.secret_id,
                                            "reason": "manual"}, source="pam/test"))
    assert started == [request.id]
    assert world.revoker.claim_due(10) == [], "the sweeper could claim a revocation the handler already runs"
    with transaction(world.factory) as session:
        row = load(session, request.id)
        assert row is not None and row.lease_until is not None and row.next_attempt_at == row.lease_until


def test_standing_member_checked_in_between_hold_and_add_is_kept(world: World) -> None:
    """The first grant's look while resolving is the baseline of a new membership: a check-in before its add
    (so no add answer ever decides it) must not turn a standing administrator into one we remove."""
    world.fake.seed(HOST, ADMINISTRATORS, ACCOUNT)
    request = world.request()
    revoking: list[str] = []

    def check_in_then_fail_before_sending() -> None:
        revoking.extend(world.check_in(request))
        raise RetryableWinRMError(HOST, "add_member", "connection refused")  # nothing reached the host

    world.fake.before["add_member"] = check_in_then_fail_before_sending
    world.elevate(request)  # the retry sees the request ended: no add is ever sent
    assert not [c for c in world.fake.calls if c.operation == "add_member"]
    with transaction(world.factory) as session:
        assert session.scalars(select(Membership.baseline)).one() == "yes"
    for request_id in revoking:
        world.revoke(request_id)
    assert world.state(request) == State.REVOKED
    assert world.member(), "a standing administrator was removed"


def test_a_grant_from_before_the_ledger_never_becomes_a_standing_membership(world: World) -> None:
    """Upgrade: an ELEVATED grant of the old version (no SIDs, no hold) is in place when a new grant of the
    same account looks; its membership must not be taken for a standing one."""
    legacy = world.request(state=State.ELEVATED, elevated_at=datetime.now(UTC))
    world.fake.seed(HOST, ADMINISTRATORS, ACCOUNT)  # what the old elevator's add left
    new = world.request("sec-0-1")
    world.elevate(new)
    with transaction(world.factory) as session:
        assert session.scalars(select(Membership.baseline)).one() == "unknown"
    world.end(legacy)  # resolved by name, removed by SID (the old grant knew no SID)
    world.reconciler()  # the new grant is ELEVATED: its membership is put back
    assert world.member()
    world.end(new)
    assert world.state(legacy) == State.REVOKED and world.state(new) == State.REVOKED
    assert not world.member(), "the old grant's membership outlived both grants"


def _due_now(world: World) -> None:
    with transaction(world.factory) as session:
        session.execute(ReconcileTarget.__table__.update().values(next_at=datetime.now(UTC)))


def _removes(world: World) -> int:
    return len([c for c in world.fake.calls if c.operation == "remove_member"])


def test_a_grant_confirmed_out_while_the_host_was_listed_is_not_drift(world: World) -> None:
    """The listing still shows the account; by the time it is compared, the grant ended and the reaper confirmed
    it out (the membership is settled). Compared with the ledger after the change, it looked like drift: an
    error log, an audit row and a `membership.drift` event for nothing."""
    request = world.request()
    world.elevate(request)
    world.reconciler()  # first listing: the baseline
    _due_now(world)
    world.fake.after["list_members"] = lambda: world.end(request)
    world.reconciler()
    assert world.state(request) == State.REVOKED and not world.member()
    with transaction(world.factory) as session:
        assert not session.scalars(select(Drift)).all()
        assert not session.scalars(select(OutboxEvent).where(OutboxEvent.type == "membership.drift")).all()
    assert _removes(world) == 1, "only the reaper's removal"


def test_a_grant_ended_while_the_host_was_listed_is_left_to_the_reaper(world: World) -> None:
    """Checked in (released, not yet removed) while the host was listed: the reaper removes it, the reconciler
    does not send a second removal on the strength of an old listing."""
    request = world.request()
    world.elevate(request)
    world.reconciler()
    _due_now(world)
    revoking: list[str] = []
    world.fake.after["list_members"] = lambda: revoking.extend(world.check_in(request))
    world.reconciler()
    assert revoking == [request.id] and _removes(world) == 0
    world.revoke(request.id)
    assert world.state(request) == State.REVOKED and not world.member() and _removes(world) == 1


def test_a_grant_that_takes_hold_during_a_reconciler_removal_is_put_back_at_once(world: World) -> None:
    """The reconciler removes a late add of ours; a new grant of the account takes hold and adds just before the
    removal lands. The removal wins on the host; the next pass is due at once and puts the grant's member back
    (it used to wait a whole reconcile interval with an ELEVATED grant out of the group)."""
    first = world.request()
    world.elevate(first)
    world.end(first)
    with transaction(world.factory) as session:  # as if an add landed after the confirmation
        session.execute(Membership.__table__.update().values(ours=True))
    world.fake.seed(HOST, ADMINISTRATORS, ACCOUNT)
    _due_now(world)
    second = world.request("sec-0-1")
    world.fake.before["remove_member"] = lambda: world.elevate(second)
    world.reconciler()
    assert world.state(second) == State.ELEVATED and not world.member()
    with transaction(world.factory) as session:
        target = session.scalars(select(ReconcileTarget)).one()
        assert target.next_at <= datetime.now(UTC).replace(tzinfo=target.next_at.tzinfo)
    world.reconciler()
    assert world.member(), "the ELEVATED grant's member was not put back"


def test_a_membership_the_reaper_is_revoking_is_not_removed_twice(world: World) -> None:
    """Checked in before the pass (REVOKING, the hold released, the account still in the group): the reaper
    removes it; the reconciler, seeing a membership of ours that no grant holds, used to send its own
    removal as well (two runs at the host for one revocation, found by the benchmark smoke tests)."""
    request = world.request()
    world.elevate(request)
    world.reconciler()
    revoking = world.check_in(request)
    _due_now(world)
    world.reconciler()
    assert revoking == [request.id] and _removes(world) == 0 and world.member()
    world.revoke(request.id)
    assert world.state(request) == State.REVOKED and not world.member() and _removes(world) == 1
    _due_now(world)
    world.reconciler()
    assert _removes(world) == 1


def test_a_revocation_stuck_for_longer_than_a_lease_is_backed_up_by_the_reconciler(world: World) -> None:
    """The reaper cannot end it (say its own way to the host is broken): past a lease the reconciler removes."""
    request = world.request()
    world.elevate(request)
    world.reconciler()
    world.check_in(request)
    with transaction(world.factory) as session:
        session.execute(Request.__table__.update().values(revoking_since=datetime.now(UTC) - timedelta(hours=1)))
    _due_now(world)
    world.reconciler()
    assert _removes(world) == 1 and not world.member()
