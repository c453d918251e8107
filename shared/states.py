"""The request state machine of design.md, as plain data and one pure function. No I/O here.

    PENDING -> APPROVED -> ELEVATING -> ELEVATED -> REVOKING -> REVOKED
    PENDING -> DENIED        PENDING -> CANCELLED (checked in or expired before a decision)
    APPROVED | ELEVATING | ELEVATED  --ended (check-in, expiry, operator)-->  REVOKING
    ELEVATING --add failed--> REVOKING -> FAILED once removal is confirmed
    APPROVED | ELEVATING | ELEVATED  --extend-->  the same state (a later `expires_at`)
    PENDING --end (checked in, checkout over, decision timeout)--> CANCELLED

`next_state` answers what a trigger does to a state: the new state, or None when the trigger does
not apply (a duplicate, a late or an out-of-order event), which callers record and otherwise ignore.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    DENIED = "DENIED"
    CANCELLED = "CANCELLED"
    ELEVATING = "ELEVATING"
    ELEVATED = "ELEVATED"
    REVOKING = "REVOKING"
    REVOKED = "REVOKED"
    FAILED = "FAILED"


class Trigger(enum.StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    START_ELEVATION = "start_elevation"
    ELEVATION_SUCCEEDED = "elevation_succeeded"
    ELEVATION_FAILED = "elevation_failed"
    END = "end"  # checked in, expired, or revoked by an operator
    REMOVAL_CONFIRMED = "removal_confirmed"
    REMOVAL_FAILED = "removal_failed"
    EXTEND = "extend"  # an extension moves `expires_at`, never the state


TERMINAL = frozenset({State.DENIED, State.CANCELLED, State.REVOKED, State.FAILED})
ACTIVE = frozenset(State) - TERMINAL
# States in which the account may be (or may become) a member of the group because of this request.
HOLDS_MEMBERSHIP = frozenset({State.ELEVATING, State.ELEVATED, State.REVOKING})
# States the expiry sweeper must end when the window passes.
EXPIRABLE = frozenset({State.APPROVED, State.ELEVATING, State.ELEVATED})

_TABLE: dict[tuple[State, Trigger], State] = {
    (State.PENDING, Trigger.APPROVE): State.APPROVED,
    (State.PENDING, Trigger.DENY): State.DENIED,
    (State.PENDING, Trigger.END): State.CANCELLED,
    (State.APPROVED, Trigger.START_ELEVATION): State.ELEVATING,
    (State.APPROVED, Trigger.END): State.REVOKING,
    (State.ELEVATING, Trigger.ELEVATION_SUCCEEDED): State.ELEVATED,
    (State.ELEVATING, Trigger.ELEVATION_FAILED): State.REVOKING,
    (State.ELEVATING, Trigger.END): State.REVOKING,
    (State.ELEVATED, Trigger.END): State.REVOKING,
    (State.REVOKING, Trigger.REMOVAL_FAILED): State.REVOKING,
    # Only while the window is still open: once REVOKING, the end has begun and no extension undoes it.
    (State.APPROVED, Trigger.EXTEND): State.APPROVED,
    (State.ELEVATING, Trigger.EXTEND): State.ELEVATING,
    (State.ELEVATED, Trigger.EXTEND): State.ELEVATED,
}


def next_state(state: State, trigger: Trigger, *, failed: bool = False) -> State | None:
    """The state `trigger` moves `state` to, or None if it does not apply.

    `failed` tells a confirmed removal that the elevation itself had failed, so it ends FAILED.
    """
    if state is State.REVOKING and trigger is Trigger.REMOVAL_CONFIRMED:
        return State.FAILED if failed else State.REVOKED
    return _TABLE.get((state, trigger))


def may_add_member(state: State) -> bool:
    """Only a request that this process just moved to ELEVATING may cause an add-member call."""
    return state is State.ELEVATING
