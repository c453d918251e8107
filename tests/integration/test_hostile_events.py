"""Hostile input at scale: generated adversarial bodies fed through the real consumers' handler.

Each daemon is built as its main builds it (`Runtime.create`, the daemon's own processor) and every
generated message goes through `Runtime.handler`, the function the Consumer calls for each delivery:
decode, validate, trust, process with backoff. jit-elevator talks to jit-winrm-sim over HTTP, so every
command the host ran is recorded. Asserted for every example: no exception escapes the handler (it
answers ack, dead-letter or requeue), no add for any request that was not approved (only the one
APPROVED request's account is ever added), and every script the host ran is one of the fixed templates
of shared/winrm/scripts.py with the data only in its base64 literal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.approval.main import NAME as APPROVAL
from services.approval.main import ROUTING_KEYS as APPROVAL_KEYS
from services.approval.main import processor
from services.elevator.handler import ROUTING_KEYS as ELEVATOR_KEYS
from services.elevator.handler import Elevator
from shared.amqp.delivery import Delivery, Outcome
from shared.daemon import Runtime
from shared.db.models import Request
from shared.events import EVENT_TYPES
from shared.settings import Settings
from shared.states import State
from shared.trust import broker_user
from shared.winrm import scripts
from tests.factories import HostSpec, make_request, seed_config
from tests.integration.test_elevator_sim import ENV, approved_event, client
from tests.reliability_record import Record, database_kind
from winrm_sim import SimulatedHost

WARNING_FILTERS = ["ignore::DeprecationWarning:requests_ntlm.*", "ignore::DeprecationWarning:urllib3.*"]
pytestmark = [pytest.mark.rabbitmq, *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]

EXAMPLES = 60  # per daemon and database: CI time
APPROVED_ACCOUNT = "$(calc)"  # a name the adapter accepts (tests/integration/test_winrm_injection.py)
HOSTILE_NAMES = [
    "a'; Remove-LocalGroupMember -Group Administrators -Member svc-jit; '", "$(Add-LocalGroupMember -SID "
    "S-1-5-32-544 -Member evil)", "`whoami`", "a`nb", "x\"; calc; \"", "CORP\\evil", "\u202eevil", "a\x00b",
    "a\r\nRemove-LocalGroupMember", "${env:JIT_MEMBER}", "@JIT_DATA@", "@@JIT_DATA@@", "o'brien", "S-1-5-32-544",
    "S-1-5-21-1-2-3-500", "'" * 50, "\\\\?\\C:\\", "%COMSPEC%", "; DROP TABLE requests; --", "..", "\ufeff",
    "\U0001f600" * 10, "x" * 300, "bob ", "BOB", "alice\u200b",
]
KNOWN_USERS = {"alice", "bob", "carol", "victor"}  # never generated as people: an approval by bob is legitimate


@dataclass
class World:
    factory: sessionmaker[Session]
    sim: SimulatedHost
    approved: Request
    others: dict[str, str]  # request id -> state it must keep
    handle: dict[str, Callable[[Delivery], Outcome]]
    publisher: str | None


@pytest.fixture
def world(settings: Settings, factory: sessionmaker[Session]) -> Iterator[World]:
    sim = SimulatedHost(users={"svc-jit": ENV["JIT_TEST_CRED_PASSWORD"]}).start()
    seed_config(factory, [HostSpec("127.0.0.1", sim.port)], secrets_per_host=4)
    approved = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", account=APPROVED_ACCOUNT)
    others = {}
    for i, (state, account) in enumerate([(State.PENDING, "a&b"), (State.DENIED, "CORP\\x&calc.exe"),
                                          (State.REVOKED, "o'brien")], start=1):
        row = make_request(factory, secret_id=f"sec-0-{i}", host="127.0.0.1", state=state, account=account)
        others[row.id] = state.value
    elevator_rt = Runtime.create("elevator", settings)
    approval_rt = Runtime.create(APPROVAL, settings)
    elevator = Elevator(elevator_rt.factory, client(settings), settings, elevator_rt.clock, environ=ENV)
    handle = {"elevator": elevator_rt.handler(ELEVATOR_KEYS, elevator.process),
              "approval": approval_rt.handler(APPROVAL_KEYS, processor(approval_rt.factory, approval_rt.clock))}
    try:
        yield World(factory, sim, approved, others, handle, broker_user(settings.amqp_url))
    finally:
        for rt in (elevator_rt, approval_rt):
            rt.publisher.close()
            bind = rt.factory.kw.get("bind")
            if bind is not None:
                bind.dispose()
        sim.close()


# -- strategies --------------------------------------------------------------------------------------------

hostile_text = st.one_of(
    st.sampled_from(HOSTILE_NAMES),
    st.text(max_size=30),
    st.text(alphabet=st.characters(max_codepoint=0x9f, categories=("Cc",)), max_size=10),
    st.text(alphabet=st.characters(categories=("Cf", "Zs", "Lo", "So", "Mn")), max_size=10),
).filter(lambda s: s not in KNOWN_USERS)
huge_ints = st.one_of(st.integers(), st.integers(min_value=10**18, max_value=10**40), st.just(-(2**63) - 1))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), huge_ints, st.floats(allow_nan=False, allow_infinity=False), hostile_text),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12)


def events(request_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Envelopes of the contract's shape, every field possibly hostile; request ids often real ones."""
    ids = st.one_of(st.sampled_from(request_ids), hostile_text)
    when = st.one_of(st.just("2099-01-01T00:00:00Z"), st.just("2000-01-01T00:00:00Z"), hostile_text, huge_ints)
    data = st.fixed_dictionaries({}, optional={
        "request_id": ids, "checkout_id": hostile_text, "secret_id": st.one_of(st.just("sec-0-1"), hostile_text),
        "requester_id": hostile_text, "approver_id": hostile_text,
        "host": st.one_of(st.just("127.0.0.1"), hostile_text),
        "justification": hostile_text, "decision": st.sampled_from(["approve", "deny", "APPROVE", ""]),
        "reason": hostile_text, "expires_at": when, "checkout_expires_at": when, "extension_id": hostile_text,
        "duration_seconds": huge_ints, "extra": json_values})
    return st.fixed_dictionaries({
        "specversion": st.one_of(st.just("1.0"), json_values), "id": st.one_of(st.uuids().map(str), hostile_text),
        "source": st.one_of(st.just("pam/workflow"), hostile_text), "type": st.sampled_from(EVENT_TYPES),
        "datacontenttype": st.just("application/json"), "data": st.one_of(data, json_values)},
        optional={"time": when})


def valid_events(request_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Events the contract accepts, carrying hostile content wherever the schema lets it through (free text,
    host names, odd but well-formed ids), so they reach the daemons' processors and the database."""
    ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,40}\Z").filter(lambda s: s not in KNOWN_USERS)
    request_id = st.one_of(st.sampled_from(request_ids), ids)
    text = hostile_text.filter(lambda s: "\x00" not in s)
    host = text.filter(lambda s: 0 < len(s) <= 255) | st.just("127.0.0.1")
    when = st.sampled_from(["2099-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "2199-12-31T23:59:59+14:00"])
    data = {
        "elevation.requested": st.fixed_dictionaries({
            "request_id": request_id, "checkout_id": ids, "secret_id": st.sampled_from(["sec-0-1", "sec-0-3"]) | ids,
            "requester_id": ids, "host": host, "justification": text, "checkout_expires_at": when},
            optional={"ticket": text, "duration_seconds": st.integers(1, 366 * 24 * 3600)}),
        "elevation.decided": st.fixed_dictionaries({
            "request_id": request_id, "approver_id": ids, "decision": st.sampled_from(["approve", "deny"])},
            optional={"reason": text, "extension_id": ids}),
        "elevation.extend_requested": st.fixed_dictionaries({
            "request_id": request_id, "extension_id": ids, "requester_id": ids, "justification": text,
            "duration_seconds": st.integers(1, 366 * 24 * 3600)}),
        "elevation.approved": st.fixed_dictionaries({
            "request_id": request_id, "checkout_id": ids, "secret_id": ids, "approver_id": ids, "expires_at": when},
            optional={"policy": text, "approvers": st.lists(text, max_size=3)}),
    }
    return st.sampled_from(sorted(data)).flatmap(lambda t: st.fixed_dictionaries({
        "specversion": st.just("1.0"), "id": st.uuids().map(str) | ids, "source": text.filter(bool) | st.just("x"),
        "type": st.just(t), "datacontenttype": st.just("application/json"), "data": data[t]}))


def bodies(request_ids: list[str]) -> st.SearchStrategy[bytes]:
    def encode(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")

    return st.one_of(
        valid_events(request_ids).map(encode),
        valid_events(request_ids).map(encode),
        st.binary(max_size=200),
        json_values.map(encode),
        events(request_ids).map(encode),
    )


# -- invariants --------------------------------------------------------------------------------------------

def delivery(body: bytes, routing_key: str, publisher: str | None) -> Delivery:
    return Delivery(body=body, routing_key=routing_key, message_id="m-1", redelivered=False, delivery_count=None,
                    user_id=publisher)


def check_invariants(world: World) -> None:
    canonical = world.sim.host.canonical(APPROVED_ACCOUNT)
    assert [(c.op, c.member) for c in world.sim.host.changes] in ([], [("add", canonical)]), world.sim.host.changes
    for record in world.sim.command_log:
        parsed = scripts.parse_rendered(record.script or "")
        assert parsed is not None, record.script
        assert scripts.render(scripts.ALL_SCRIPTS[parsed[0]], parsed[1]) == record.script
    with world.factory() as s:
        for rid, state in world.others.items():
            assert s.get(Request, rid).state == state  # type: ignore[union-attr]
        active = {State.APPROVED.value, State.ELEVATING.value, State.ELEVATED.value}
        live = s.scalars(select(Request.id).where(Request.state.in_(active))).all()
        assert set(live) <= {world.approved.id}, live


def fuzz(world: World, daemon: str, keys: tuple[str, ...]) -> dict[Outcome, int]:
    """Run the examples; how many deliveries were acked (processed) and dead-lettered."""
    ids = [world.approved.id, *world.others]
    outcomes = dict.fromkeys(Outcome, 0)

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(body=bodies(ids), routing_key=st.sampled_from(keys))
    def one(body: bytes, routing_key: str) -> None:
        outcome = world.handle[daemon](delivery(body, routing_key, world.publisher))
        assert outcome in (Outcome.ACK, Outcome.REJECT), outcome  # a requeue would mean a transient failure
        outcomes[outcome] += 1
        check_invariants(world)

    one()
    # Not only refused at the door: a good share passed validation and trust and reached the processor.
    assert outcomes[Outcome.ACK] >= 5 and outcomes[Outcome.REJECT] >= 5, outcomes
    record = Record("hostile-input", f"{daemon}-{database_kind(str(world.factory.kw['bind'].url))}",
                    command=".venv/bin/pytest -p no:cacheprovider tests/integration/test_hostile_events.py")
    record.tried(f"hypothesis event bodies through jit-{daemon}'s handler", kind="bad input",
                 count=sum(outcomes.values()), outcome="acked or dead-lettered; no exception, no add but the "
                 "approved one, every script a fixed template")
    record.checked(f"jit-{daemon} survives every generated body", ok=True,
                   detail=f"{outcomes[Outcome.ACK]} acked, {outcomes[Outcome.REJECT]} dead-lettered")
    record.write()
    return outcomes


def test_the_elevator_survives_hostile_events_and_adds_only_the_approved_account(world: World) -> None:
    # First the one legitimate approval, so the template check covers the scripts a real add sends.
    event = approved_event(world.approved)
    assert world.handle["elevator"](delivery(event.to_json(), event.type, world.publisher)) is Outcome.ACK
    assert [c.op for c in world.sim.host.changes] == ["add"] and world.sim.command_log
    fuzz(world, "elevator", ELEVATOR_KEYS)
    check_invariants(world)


def test_approval_survives_hostile_events_and_approves_nothing(world: World) -> None:
    fuzz(world, "approval", APPROVAL_KEYS)
    check_invariants(world)
    assert world.sim.command_log == []
    with world.factory() as s:  # the processor really ran: generated requests were written (and left PENDING)
        assert len(s.scalars(select(Request.id)).all()) > 1 + len(world.others)
