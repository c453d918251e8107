"""The state machine: every state x every trigger, and random interleavings of duplicate and reordered events."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.states import ACTIVE, EXPIRABLE, HOLDS_MEMBERSHIP, TERMINAL, State, Trigger, next_state

S, T = State, Trigger
EXPECTED: dict[tuple[State, Trigger], State] = {
    (S.PENDING, T.APPROVE): S.APPROVED,
    (S.PENDING, T.DENY): S.DENIED,
    (S.PENDING, T.END): S.CANCELLED,
    (S.APPROVED, T.START_ELEVATION): S.ELEVATING,
    (S.APPROVED, T.END): S.REVOKING,
    (S.ELEVATING, T.ELEVATION_SUCCEEDED): S.ELEVATED,
    (S.ELEVATING, T.ELEVATION_FAILED): S.REVOKING,
    (S.ELEVATING, T.END): S.REVOKING,
    (S.ELEVATED, T.END): S.REVOKING,
    (S.REVOKING, T.REMOVAL_FAILED): S.REVOKING,
    (S.REVOKING, T.REMOVAL_CONFIRMED): S.REVOKED,
    (S.APPROVED, T.EXTEND): S.APPROVED,
    (S.ELEVATING, T.EXTEND): S.ELEVATING,
    (S.ELEVATED, T.EXTEND): S.ELEVATED,
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_every_state_and_trigger(state: State, trigger: Trigger) -> None:
    assert next_state(state, trigger) == EXPECTED.get((state, trigger))


def test_a_failed_elevation_ends_failed_once_removal_is_confirmed() -> None:
    assert next_state(S.REVOKING, T.REMOVAL_CONFIRMED, failed=True) is S.FAILED
    assert next_state(S.REVOKING, T.REMOVAL_CONFIRMED, failed=False) is S.REVOKED


def test_terminal_states_accept_nothing() -> None:
    for state in TERMINAL:
        assert all(next_state(state, t) is None for t in Trigger)


def test_state_groups() -> None:
    assert set(State) == ACTIVE | TERMINAL and not ACTIVE & TERMINAL
    assert HOLDS_MEMBERSHIP <= ACTIVE and EXPIRABLE <= ACTIVE
    # Only ELEVATING is entered by an add-member; nothing else leads to the host being changed by an add.
    assert [k for k, v in EXPECTED.items() if v is S.ELEVATING and k[0] is not S.ELEVATING] == [
        (S.APPROVED, T.START_ELEVATION)]


def test_an_extension_applies_only_to_an_open_window() -> None:
    """Extending keeps the state; a request being ended (REVOKING), pending or terminal is never extended."""
    assert {s for s in State if next_state(s, T.EXTEND) is not None} == set(EXPIRABLE)
    assert all(next_state(s, T.EXTEND) is s for s in EXPIRABLE)
    assert next_state(S.REVOKING, T.EXTEND) is None and next_state(S.PENDING, T.EXTEND) is None


@dataclass
class World:
    """The protocol around the machine: what the daemons do on each delivery (see services/*)."""

    state: State = S.PENDING
    approved: bool = False
    ended: bool = False
    failed: bool = False
    member: bool = False
    add_in_flight: bool = False
    compensate: bool = False  # an add finished after the request left ELEVATING: the elevator removes it
    log: list[str] = field(default_factory=list)

    def apply(self, trigger: Trigger) -> bool:
        target = next_state(self.state, trigger, failed=self.failed)
        if target is None:
            return False
        self.state = target
        return True

    def deliver(self, action: str) -> None:
        self.log.append(action)
        if action == "approve" and self.apply(T.APPROVE):
            self.approved = True
        elif action == "deny":
            self.apply(T.DENY)
        elif action == "end":
            self.ended = True
            self.apply(T.END)
        elif action == "start" and not self.ended and self.apply(T.START_ELEVATION):
            assert self.approved, "an add-member call without approval"
            self.add_in_flight = True
        elif action == "add_done" and self.add_in_flight:
            self.add_in_flight = False
            self.member = True
            if not self.apply(T.ELEVATION_SUCCEEDED):
                self.compensate = True
        elif action == "add_failed" and self.add_in_flight:
            self.add_in_flight = False
            self.failed = True
            self.apply(T.ELEVATION_FAILED)
        elif action == "remove_ok" and self.state is S.REVOKING and not self.add_in_flight:
            self.member = False
            self.apply(T.REMOVAL_CONFIRMED)
        elif action == "remove_error" and self.state is S.REVOKING:
            self.apply(T.REMOVAL_FAILED)
        elif action == "extend":
            before = self.state
            if self.apply(T.EXTEND):
                # An extension keeps the state and never revives an elevation whose end has begun.
                assert self.state is before and before in EXPIRABLE and not self.ended, self.log

    def settle(self) -> None:
        """What happens after the last delivery: in-flight work ends, retries run until the host confirms."""
        if self.add_in_flight:
            self.deliver("add_done")
        if self.compensate:
            self.member = False
            self.compensate = False
        while self.state is S.REVOKING:
            self.deliver("remove_ok")


ACTIONS = ["approve", "deny", "end", "start", "add_done", "add_failed", "remove_ok", "remove_error", "extend"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(ACTIONS), max_size=25))
def test_any_interleaving_is_safe(actions: list[str]) -> None:
    world = World()
    for action in actions:
        world.deliver(action)
        if world.member:
            assert world.approved, f"elevated without approval after {world.log}"
    world.settle()
    if world.ended:
        assert world.state in TERMINAL, f"never ended after {world.log}"
    if world.ended or world.state in TERMINAL:
        assert not world.member, f"left elevated after {world.log}"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ACTIONS), max_size=12), st.data())
def test_duplicates_have_one_effect(actions: list[str], data: st.DataObject) -> None:
    """Delivering every event twice (anywhere later) ends in the same state as delivering it once."""
    once, twice = World(), World()
    doubled: list[str] = []
    for action in actions:
        doubled.append(action)
        if data.draw(st.booleans()):
            doubled.append(action)
    for a in actions:
        once.deliver(a)
    for a in doubled:
        twice.deliver(a)
    once.settle()
    twice.settle()
    if once.ended and twice.ended:
        assert once.state in TERMINAL and twice.state in TERMINAL
        assert not once.member and not twice.member
