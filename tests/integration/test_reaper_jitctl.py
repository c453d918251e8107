"""`jitctl revoke` and `jitctl revocations` on both databases, the real broker and the WinRM simulator.

A stalled revocation here is a real grant (made by the elevator on the simulator, so the ledger holds its
SIDs) that the reaper ended and could not finish; `--force` removes by those SIDs, per the plan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pika
import pytest
from sqlalchemy.orm import Session, sessionmaker

from jitctl.main import main
from services.reaper.ending import end_request
from shared.db.engine import transaction
from shared.db.transitions import Cause, load
from shared.settings import Settings
from shared.states import State
from shared.winrm import MembershipClient
from tests.conftest import settings_env
from tests.factories import PASSWORD_ENV, HostSpec, make_grant, make_request, seed_config
from tests.integration.reaper_harness import audit, outbox, request, set_values
from tests.integration.winrm_fixtures import ADMINS, SVC_PASSWORD, SVC_USER, WARNING_FILTERS
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.rabbitmq, *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]
ACCOUNT = "acct-0-0"


@pytest.fixture
def sim(settings: Settings, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedHost]:
    for key, value in {**settings_env(settings), PASSWORD_ENV: SVC_PASSWORD}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("JIT_WINRM_OPERATION_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("JIT_WINRM_READ_TIMEOUT_SECONDS", "2")
    host = SimulatedHost(users={SVC_USER: SVC_PASSWORD}).start()
    seed_config(factory, [HostSpec("127.0.0.1", host.port)])
    yield host
    host.close()


def jitctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the setup printed (log lines of the grant's elevator) is not jitctl's output
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def stalled(factory: sessionmaker[Session]) -> str:
    """A grant the elevator made (the account is in), ended by the reaper, whose removal kept failing."""
    client = MembershipClient(operation_timeout_sec=1, read_timeout_sec=2, deadline_sec=10.0)
    rid = make_grant(factory, client, secret_id="sec-0-0", host="127.0.0.1").id
    now = datetime.now(UTC)
    with transaction(factory) as s:
        row = load(s, rid)
        assert row is not None
        assert end_request(s, row, now=now, end_trigger="manual", cause=Cause("connection-workflow")) is State.REVOKING
    set_values(factory, rid, attempts=40, last_error="winrm remove_member on 127.0.0.1 failed: refused",
               stalled_at=now)
    return rid


def test_revoke_publishes_the_operators_request(sim: SimulatedHost, factory: sessionmaker[Session],
                                               settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    rid = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.ELEVATED).id
    code, out, _ = jitctl(capsys, "revoke", rid, "--as", "bob", "--reason", "incident 7")
    assert code == 0 and "elevation.revoke_requested" in out
    with pika.BlockingConnection(pika.URLParameters(settings.amqp_url)) as conn:
        _, props, body = conn.channel().basic_get(settings.queue("reaper"), auto_ack=True)
    assert body is not None and props.type in (None, "elevation.revoke_requested")
    assert json.loads(body)["data"] == {"request_id": rid, "operator_id": "bob", "reason": "incident 7"}


@pytest.mark.parametrize("state", [State.REVOKED, None])
def test_revoke_refuses_an_unknown_or_ended_request_without_a_traceback(
        sim: SimulatedHost, factory: sessionmaker[Session], capsys: pytest.CaptureFixture[str],
        state: State | None) -> None:
    rid = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=state).id if state else "req-nope"
    code, out, err = jitctl(capsys, "revoke", rid, "--as", "bob", "--reason", "r")
    assert code == 1 and out == "" and "Traceback" not in err
    assert ("already ended" if state else "no request") in err


def test_revocations_lists_the_stalled_ones(sim: SimulatedHost, factory: sessionmaker[Session],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rid = stalled(factory)
    make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.REVOKING,
                 revoking_since=datetime.now(UTC), checkout_id="co-other")
    code, out, _ = jitctl(capsys, "revocations", "--stalled", "--json")
    [listed] = json.loads(out)
    assert code == 0 and listed["request_id"] == rid and listed["attempts"] == 40
    assert listed["host"] == "127.0.0.1" and listed["account"] == ACCOUNT and "refused" in listed["last_error"]
    code, out, _ = jitctl(capsys, "revocations")
    assert code == 0 and len(out.strip().splitlines()) == 3  # header + both revocations


@pytest.mark.parametrize("member", [True, False])
def test_force_marks_revoked_only_after_the_host_confirms(sim: SimulatedHost, factory: sessionmaker[Session],
                                                          capsys: pytest.CaptureFixture[str], member: bool) -> None:
    rid = stalled(factory)
    if not member:
        sim.unseed_member(ADMINS, ACCOUNT)  # someone took it out by hand; the host is asked all the same
    as_json = () if member else ("--json",)
    code, out, err = jitctl(capsys, "revoke", rid, "--force", "--as", "carol", "--reason", "fixed the firewall",
                            *as_json)
    assert code == 0, err
    if as_json:
        assert json.loads(out) == {"request_id": rid, "marked": "REVOKED", "host_said": "not a member"}
    assert request(factory, rid).state == State.REVOKED.value and sim.members(ADMINS) == set()
    last = audit(factory, rid)[-1]
    assert (last.actor, last.reason, last.details["forced"]) == ("carol", "fixed the firewall", True)
    assert last.details["host_said"] == ("removed" if member else "not a member")
    assert outbox(factory, "elevation.revoked")[0]["request_id"] == rid


def test_force_refuses_while_the_host_cannot_confirm(sim: SimulatedHost, factory: sessionmaker[Session],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rid = stalled(factory)
    sim.stop()
    code, _, err = jitctl(capsys, "revoke", rid, "--force", "--as", "carol", "--reason", "r")
    assert code == 1 and "nothing was marked" in err and "Traceback" not in err
    assert request(factory, rid).state == State.REVOKING.value


def test_force_refuses_a_revocation_that_is_not_stalled(sim: SimulatedHost, factory: sessionmaker[Session],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rid = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.ELEVATED).id
    code, _, err = jitctl(capsys, "revoke", rid, "--force", "--as", "carol", "--reason", "r")
    assert code == 1 and "only closes a stalled revocation" in err


def test_force_closes_a_revocation_that_never_took_hold_without_the_host(
        sim: SimulatedHost, factory: sessionmaker[Session], capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    rid = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.REVOKING, revoking_since=now,
                       stalled_at=now, next_attempt_at=now, end_trigger="manual").id
    sim.stop()  # no add of it was ever sent, so there is nothing the host must confirm
    code, out, err = jitctl(capsys, "revoke", rid, "--force", "--as", "carol", "--reason", "r")
    assert code == 0, err
    assert request(factory, rid).state == State.REVOKED.value and "nothing_held" in out
    assert audit(factory, rid)[-1].details["host_said"] == "nothing_held"
