"""The pure approval rules: every refusal reason, policy approval, approvers, expiry and the status table."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.events import BadEvent, parse_event
from shared.rules import (
    ACTIONS,
    APPROVER_PERMISSIONS,
    KNOWN_PERMISSIONS,
    PREPARING,
    REQUESTER_PERMISSIONS,
    RequestFacts,
    SecretFacts,
    Status,
    TaskFacts,
    UserFacts,
    approval_expiry,
    check_approver,
    connection_status,
    decide_request,
    decision_deadline,
    plan_extension,
    requester_refusal,
    tally,
)
from shared.rules import Outcome as O

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
TASK = TaskFacts(id="task", group="S-1-5-32-544", approval_required=True, approval_window_seconds=3600)
SECRET = SecretFacts(id="sec", checkout_enabled=True, hosts=frozenset({"web01"}), task=TASK)
ALICE = UserFacts(id="alice", kind="internal", permissions=frozenset(REQUESTER_PERMISSIONS))
BOB = UserFacts(id="bob", kind="internal", permissions=frozenset(APPROVER_PERMISSIONS))
FACTS = RequestFacts(secret_id="sec", secret=SECRET, requester_id="alice", requester=ALICE, host="web01",
                     checkout_expires_at=NOW + timedelta(hours=2), checked_in=False,
                     active_request_for_checkout=False)


def test_an_eligible_request_waits_for_an_approver() -> None:
    assert decide_request(FACTS, NOW).outcome is O.PENDING


def test_a_task_without_approval_approves_by_policy() -> None:
    facts = replace(FACTS, secret=replace(SECRET, task=replace(TASK, approval_required=False)))
    decision = decide_request(facts, NOW)
    assert decision.outcome is O.APPROVE and "does not require approval" in decision.reason


def test_host_names_compare_case_insensitively() -> None:
    assert decide_request(replace(FACTS, host="WEB01"), NOW).outcome is O.PENDING


@pytest.mark.parametrize(("change", "reason"), [
    ({"secret": None}, "secret sec is not configured"),
    ({"secret": replace(SECRET, task=None)}, "secret sec is in no task"),
    ({"requester": None}, "user alice is unknown"),
    ({"requester": replace(ALICE, kind="vendor_rep")}, "vendor representative"),
    ({"requester": replace(ALICE, permissions=frozenset(REQUESTER_PERMISSIONS) - {"CONNECT"})},
     "lacks the requester permission(s) CONNECT"),
    ({"requester": replace(ALICE, permissions=frozenset())}, "LOGIN_TO_WEB_UI, VIEW_APPLICATION, CONNECT"),
    ({"secret": replace(SECRET, checkout_enabled=False)}, "checkout is not enabled for secret sec"),
    ({"host": "db01"}, "host db01 is not a host of the application of secret sec"),
    ({"checkout_expires_at": NOW}, "checkout window has already ended"),
    ({"checkout_expires_at": NOW - timedelta(seconds=1)}, "checkout window has already ended"),
    ({"checked_in": True}, "already been checked in"),
    ({"active_request_for_checkout": True}, "already has an active request"),
])
def test_rules_deny_with_a_precise_reason(change: dict[str, object], reason: str) -> None:
    decision = decide_request(replace(FACTS, **change), NOW)  # type: ignore[arg-type]
    assert decision.outcome is O.DENY
    assert reason in decision.reason


def test_rules_deny_even_when_approval_is_not_required() -> None:
    no_approval = replace(SECRET, task=replace(TASK, approval_required=False))
    facts = replace(FACTS, secret=no_approval, requester=replace(ALICE, kind="vendor_rep"))
    assert decide_request(facts, NOW).outcome is O.DENY


def test_a_valid_approver_may_decide() -> None:
    assert check_approver("bob", BOB, "alice") is None


@pytest.mark.parametrize(("approver_id", "approver", "reason"), [
    ("zed", None, "approver zed is unknown"),
    ("bob", replace(BOB, kind="vendor_rep"), "not an internal user"),
    ("alice", replace(ALICE, permissions=frozenset(APPROVER_PERMISSIONS)), "self-approval is not allowed"),
    ("bob", replace(BOB, permissions=frozenset(APPROVER_PERMISSIONS) - {"UNLOCK_SECRET"}),
     "lacks the approver permission(s) UNLOCK_SECRET"),
    ("bob", replace(BOB, permissions=frozenset(REQUESTER_PERMISSIONS)), "APPROVE_PRIVILEGE_ELEVATION_REQUEST"),
])
def test_approvers_are_refused(approver_id: str, approver: UserFacts | None, reason: str) -> None:
    refusal = check_approver(approver_id, approver, "alice")
    assert refusal is not None and reason in refusal


def test_approval_lasts_until_the_earlier_of_checkout_end_and_window() -> None:
    assert approval_expiry(NOW + timedelta(hours=2), NOW, 3600) == NOW + timedelta(hours=1)
    assert approval_expiry(NOW + timedelta(minutes=10), NOW, 3600) == NOW + timedelta(minutes=10)


def test_a_requested_duration_shortens_the_window_never_lengthens_it() -> None:
    checkout_end = NOW + timedelta(hours=2)
    assert approval_expiry(checkout_end, NOW, 3600, 600) == NOW + timedelta(minutes=10)
    assert approval_expiry(checkout_end, NOW, 3600, 7200) == NOW + timedelta(hours=1)  # the task's window
    assert approval_expiry(NOW + timedelta(minutes=5), NOW, 3600, 600) == NOW + timedelta(minutes=5)  # checkout
    assert approval_expiry(checkout_end, NOW, 3600, None) == NOW + timedelta(hours=1)


@pytest.mark.parametrize(("window", "duration"), [(3600, 0), (3600, -60), (0, None)])
def test_a_window_that_is_not_positive_is_an_error(window: int, duration: int | None) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        approval_expiry(NOW + timedelta(hours=2), NOW, window, duration)


@pytest.mark.parametrize("duration", [0, -1])
def test_the_event_schema_refuses_a_duration_that_is_not_positive(duration: int) -> None:
    body = {"specversion": "1.0", "id": "ev-1", "source": "pam/connection-workflow", "type": "elevation.requested",
            "time": "2026-11-24T10:00:00Z", "data": {
                "request_id": "req-1", "checkout_id": "co-1", "secret_id": "sec", "requester_id": "alice",
                "host": "web01", "justification": "patch", "checkout_expires_at": "2026-11-24T11:00:00Z",
                "duration_seconds": duration}}
    with pytest.raises(BadEvent, match="duration_seconds: Input should be greater than 0"):
        parse_event(json.dumps(body).encode())
    body["data"]["duration_seconds"] = 60  # type: ignore[index]
    assert parse_event(json.dumps(body).encode()).data.duration_seconds == 60  # type: ignore[union-attr]


@pytest.mark.parametrize("host", ["web01", "WEB01", "Web01.", " web01 "])
def test_hosts_match_in_canonical_form(host: str) -> None:
    facts = RequestFacts(secret_id="sec", secret=SECRET, requester_id="alice", requester=ALICE, host=host,
                         checkout_expires_at=NOW + timedelta(hours=1), checked_in=False,
                         active_request_for_checkout=False)
    assert decide_request(facts, NOW).outcome is O.PENDING


@pytest.mark.parametrize(("user", "reason"), [
    (None, "user alice is unknown"),
    (replace(ALICE, kind="vendor_rep"), "vendor representative"),
    (replace(ALICE, permissions=frozenset(REQUESTER_PERMISSIONS) - {"CONNECT"}), "requester permission(s) CONNECT"),
])
def test_requester_refusal_names_the_rule(user: UserFacts | None, reason: str) -> None:
    refusal = requester_refusal("alice", user)
    assert refusal is not None and reason in refusal
    assert requester_refusal("alice", ALICE) is None


def test_known_permissions_cover_every_role() -> None:
    assert set(REQUESTER_PERMISSIONS) | set(APPROVER_PERMISSIONS) <= KNOWN_PERMISSIONS
    assert {"VIEW_TASK", "CREATE_TASK", "EDIT_TASK"} <= KNOWN_PERMISSIONS


@pytest.mark.parametrize(("state", "status"), [
    (None, Status.NOT_REQUESTED), ("PENDING", Status.PENDING), ("APPROVED", Status.APPROVED),
    ("ELEVATING", Status.APPROVED), ("ELEVATED", Status.APPROVED), ("REVOKING", Status.NOT_REQUESTED),
    ("REVOKED", Status.NOT_REQUESTED), ("DENIED", Status.NOT_REQUESTED), ("CANCELLED", Status.NOT_REQUESTED),
    ("FAILED", Status.NOT_REQUESTED),
])
def test_status_follows_the_request(state: str | None, status: Status) -> None:
    answer = connection_status("sec", SECRET, "alice", ALICE, state)
    preparing = state in ("APPROVED", "ELEVATING")
    assert answer.status is status and answer.action == (PREPARING if preparing else ACTIONS[status])
    assert answer.ready is (state == "ELEVATED")


@pytest.mark.parametrize("approval_required", [True, False])
def test_launch_is_offered_only_once_the_host_confirms(approval_required: bool) -> None:
    """A Windows logon token is fixed at logon: Launch only when ELEVATED; before that, Preparing."""
    secret = replace(SECRET, task=replace(TASK, approval_required=approval_required))
    expected = {None: (ACTIONS[Status.NOT_REQUIRED if not approval_required else Status.NOT_REQUESTED], False),
                "APPROVED": (PREPARING, False), "ELEVATING": (PREPARING, False),
                "ELEVATED": ("Launch with Elevated Privileges", True)}
    for state, (action, ready) in expected.items():
        answer = connection_status("sec", secret, "alice", ALICE, state)
        assert (answer.action, answer.ready) == (action, ready), state
    assert connection_status("sec", None, "alice", ALICE, None).ready is None


def test_pending_says_how_many_approvals_are_still_needed() -> None:
    secret = replace(SECRET, task=replace(TASK, approvals_required=3))
    answer = connection_status("sec", secret, "alice", ALICE, "PENDING", approvals_needed=2)
    assert answer.status is Status.PENDING and "2 more approval(s) (1 of 3)" in answer.reason
    assert answer.action == "Pending Approval" and answer.ready is False


@pytest.mark.parametrize(("approvers", "deniers", "required", "policy", "outcome", "needed"), [
    (set(), set(), 1, "any", O.PENDING, 1),
    ({"bob"}, set(), 1, "any", O.APPROVE, 0),
    ({"bob"}, set(), 2, "any", O.PENDING, 1),
    ({"bob", "carol"}, set(), 2, "any", O.APPROVE, 0),
    ({"bob"}, {"carol"}, 2, "any", O.DENY, 1),
    ({"bob", "carol"}, {"dan"}, 2, "any", O.DENY, 0),  # a denial is the safe side: it wins a tie of timing
    ({"bob"}, {"carol"}, 3, "majority", O.PENDING, 2),
    ({"bob"}, {"carol", "dan"}, 3, "majority", O.DENY, 2),
    ({"bob"}, {"carol"}, 2, "majority", O.PENDING, 1),
    (set(), {"carol", "dan"}, 2, "majority", O.DENY, 2),
    (set(), {"carol"}, 1, "majority", O.DENY, 1),
])
def test_tally(approvers: set[str], deniers: set[str], required: int, policy: str, outcome: O,
               needed: int) -> None:
    result = tally(frozenset(approvers), frozenset(deniers), required, policy)
    assert (result.outcome, result.needed) == (outcome, needed)


def test_tally_needs_at_least_one_approval() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        tally(frozenset(), frozenset(), 0, "any")


def test_decision_deadline() -> None:
    assert decision_deadline(NOW, None) is None
    assert decision_deadline(NOW, 90) == NOW + timedelta(seconds=90)


EXT = {"expires_at": NOW + timedelta(minutes=10), "approved_at": NOW - timedelta(minutes=50),
       "checkout_expires_at": NOW + timedelta(hours=2), "now": NOW}


@pytest.mark.parametrize(("change", "expires_in", "reason"), [
    ({"seconds": 600, "max_total_seconds": None}, timedelta(minutes=20), "extended by 600 s"),
    ({"seconds": 3600, "max_total_seconds": 5400}, timedelta(minutes=40), "most total time (5400 s)"),
    ({"seconds": 36000, "max_total_seconds": None}, timedelta(hours=2), "checkout's end"),
    ({"seconds": 600, "max_total_seconds": 3600}, None, "already reaches the task's most total time"),
    ({"seconds": 600, "max_total_seconds": None, "expires_at": NOW}, None, "already ended"),
    ({"seconds": 600, "max_total_seconds": None, "checkout_expires_at": NOW + timedelta(minutes=10)}, None,
     "already reaches the checkout's end"),
])
def test_an_extension_is_bounded_by_the_checkout_and_the_task(change: dict[str, object], expires_in: timedelta | None,
                                                               reason: str) -> None:
    plan = plan_extension(**{**EXT, **change})  # type: ignore[arg-type]
    assert plan.expires_at == (None if expires_in is None else NOW + expires_in) and reason in plan.reason


def test_status_not_required_shows_launch() -> None:
    secret = replace(SECRET, task=replace(TASK, approval_required=False))
    answer = connection_status("sec", secret, "alice", ALICE, None)
    assert (answer.status, answer.action) == (Status.NOT_REQUIRED, "Launch with Elevated Privileges")


@pytest.mark.parametrize(("secret", "user", "reason"), [
    (replace(SECRET, task=None), ALICE, "in no task"),
    (None, ALICE, "not configured"),
    (SECRET, None, "unknown"),
    (SECRET, replace(ALICE, kind="vendor_rep"), "vendor representative"),
    (SECRET, replace(ALICE, permissions=frozenset({"LOGIN_TO_WEB_UI"})), "lacks the requester permission"),
    (replace(SECRET, checkout_enabled=False), ALICE, "checkout is not enabled"),
])
def test_status_says_why_there_is_no_elevation_option(secret: SecretFacts | None, user: UserFacts | None,
                                                      reason: str) -> None:
    answer = connection_status("sec", secret, "alice", user, None)
    assert answer.status is Status.NOT_ELIGIBLE and reason in answer.reason
