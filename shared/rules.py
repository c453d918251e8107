"""The approval rules, pure: plain facts and `now` in, a decision with its reason out. No I/O here.

The questions answered here:
- `decide_request`: is a new request refused by a rule, approved by policy, or left for an approver?
- `check_approver`: may this approver's decision be applied to this request?
- `tally`: with the votes so far, is a request (or an extension) approved, denied, or still pending?
- `plan_extension`: how far may an active elevation be extended, or why not?
- `connection_status`: what the connection workflow shows for a secret and a user (contract section 4),
  and whether it may launch the session yet (`ready`).
The daemon and `jitctl` load the facts from the database (`shared.db.facts`) and act on the answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.hosts import canonical_host

REQUESTER_PERMISSIONS = ("LOGIN_TO_WEB_UI", "VIEW_APPLICATION", "CONNECT",
                         "VIEW_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS")
APPROVER_PERMISSIONS = ("LOGIN_TO_WEB_UI", "APPROVE_PRIVILEGE_ELEVATION_REQUEST", "APPROVE_SECRET_ACCESS_REQUEST",
                        "VIEW_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS", "UNLOCK_SECRET")
ADMINISTRATOR_PERMISSIONS = ("LOGIN_TO_WEB_UI", "VIEW_APPLICATION", "VIEW_TASK", "CREATE_TASK", "EDIT_TASK",
                             "VIEW_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS",
                             "CREATE_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS",
                             "EDIT_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS")
# The permission names of contract section 5: a configuration naming any other is refused.
KNOWN_PERMISSIONS = frozenset(REQUESTER_PERMISSIONS + APPROVER_PERMISSIONS + ADMINISTRATOR_PERMISSIONS)

POLICY = "policy"  # the approver_id of decisions made by a rule or by a not-required task
NOT_REQUIRED_POLICY = "approval_not_required"


@dataclass(frozen=True)
class UserFacts:
    id: str
    kind: str  # internal | vendor_rep
    permissions: frozenset[str]


@dataclass(frozen=True)
class TaskFacts:
    id: str
    group: str
    approval_required: bool
    approval_window_seconds: int
    approvals_required: int = 1  # distinct approvers needed (the requester never counts)
    deny_policy: str = "any"  # any: one denial ends it | majority: denials from a majority of approvals_required
    decision_timeout_seconds: int | None = None  # an undecided request is cancelled after this
    extension: str = "refused"  # refused | automatic | approval
    extension_max_total_seconds: int | None = None  # the longest window an elevation may reach, from approval


@dataclass(frozen=True)
class SecretFacts:
    id: str
    checkout_enabled: bool
    hosts: frozenset[str]  # addresses of its application's hosts, in canonical form (shared.hosts)
    task: TaskFacts | None


@dataclass(frozen=True)
class RequestFacts:
    """Everything the rules need to know about a new request; None = not in the database."""

    secret_id: str
    secret: SecretFacts | None
    requester_id: str
    requester: UserFacts | None
    host: str
    checkout_expires_at: datetime
    checked_in: bool
    active_request_for_checkout: bool


class Outcome(enum.StrEnum):
    PENDING = "pending"
    APPROVE = "approve"
    DENY = "deny"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str


def requester_refusal(user_id: str, user: UserFacts | None) -> str | None:
    """Why this user may not be a requester (unknown, vendor representative, missing permission), or None."""
    if user is None:
        return f"user {user_id} is unknown"
    if user.kind != "internal":
        return f"user {user_id} is a vendor representative; only internal users may request elevation"
    missing = [p for p in REQUESTER_PERMISSIONS if p not in user.permissions]
    if missing:
        return f"user {user_id} lacks the requester permission(s) {', '.join(missing)}"
    return None


def eligibility(secret_id: str, secret: SecretFacts | None, user_id: str, user: UserFacts | None) -> str | None:
    """Why this user may not request elevation of this secret at all, or None when they may."""
    if secret is None:
        return f"secret {secret_id} is not configured"
    if secret.task is None:
        return f"secret {secret_id} is in no task"
    reason = requester_refusal(user_id, user)
    if reason is not None:
        return reason
    if not secret.checkout_enabled:
        return f"checkout is not enabled for secret {secret_id}"
    return None


def decide_request(facts: RequestFacts, now: datetime) -> Decision:
    """Refuse by rule, approve by policy (task does not require approval), or leave pending for an approver."""
    reason = eligibility(facts.secret_id, facts.secret, facts.requester_id, facts.requester)
    if reason is not None:
        return Decision(Outcome.DENY, reason)
    assert facts.secret is not None and facts.secret.task is not None  # eligibility checked both
    if canonical_host(facts.host) not in facts.secret.hosts:
        return Decision(Outcome.DENY, f"host {facts.host} is not a host of the application of secret {facts.secret_id}")
    if facts.checkout_expires_at <= now:
        return Decision(Outcome.DENY, "the checkout window has already ended")
    if facts.checked_in:
        return Decision(Outcome.DENY, "the checkout has already been checked in")
    if facts.active_request_for_checkout:
        return Decision(Outcome.DENY, "this checkout already has an active request")
    if not facts.secret.task.approval_required:
        return Decision(Outcome.APPROVE, f"task {facts.secret.task.id} does not require approval")
    return Decision(Outcome.PENDING, "waiting for an approver")


def check_approver(approver_id: str, approver: UserFacts | None, requester_id: str) -> str | None:
    """Why this approver's decision may not be applied, or None when it may."""
    if approver is None:
        return f"approver {approver_id} is unknown"
    if approver.kind != "internal":
        return f"approver {approver_id} is not an internal user"
    if approver_id == requester_id:
        return f"approver {approver_id} is the requester; self-approval is not allowed"
    missing = [p for p in APPROVER_PERMISSIONS if p not in approver.permissions]
    if missing:
        return f"approver {approver_id} lacks the approver permission(s) {', '.join(missing)}"
    return None


def approval_expiry(checkout_expires_at: datetime, approved_at: datetime, window_seconds: int,
                    duration_seconds: int | None = None) -> datetime:
    """The end of the elevation window: the first of the checkout's end, the task's approval window
    and the duration the request asked for (when it asked for one), both counted from the approval."""
    if window_seconds <= 0 or (duration_seconds is not None and duration_seconds <= 0):
        raise ValueError(f"a window must be positive (approval window {window_seconds}, duration {duration_seconds})")
    seconds = window_seconds if duration_seconds is None else min(window_seconds, duration_seconds)
    return min(checkout_expires_at, approved_at + timedelta(seconds=seconds))


def decision_deadline(requested_at: datetime, timeout_seconds: int | None) -> datetime | None:
    """When an undecided request is cancelled (`decision_timeout`), or None when its task sets no timeout."""
    return None if timeout_seconds is None else requested_at + timedelta(seconds=timeout_seconds)


@dataclass(frozen=True)
class Tally:
    outcome: Outcome  # PENDING, APPROVE or DENY
    approvals: int
    denials: int
    needed: int  # approvals still needed (0 once approved)


def tally(approvers: frozenset[str], deniers: frozenset[str], required: int, deny_policy: str) -> Tally:
    """Votes of distinct, allowed approvers (the requester's is refused before it counts) -> the outcome.

    `any`: one denial denies. `majority`: denials from a majority of `required` (more than half) deny.
    Approved once `required` distinct approvers approved. A denial is looked at first: it is the safe side.
    """
    if required < 1:
        raise ValueError(f"approvals_required must be at least 1, got {required}")
    approvals, denials = len(approvers), len(deniers)
    denial_quorum = 1 if deny_policy == "any" else required // 2 + 1
    needed = max(0, required - approvals)
    if denials >= denial_quorum:
        return Tally(Outcome.DENY, approvals, denials, needed)
    if needed == 0:
        return Tally(Outcome.APPROVE, approvals, denials, 0)
    return Tally(Outcome.PENDING, approvals, denials, needed)


@dataclass(frozen=True)
class ExtensionPlan:
    expires_at: datetime | None  # the new end of the window, or None when refused
    reason: str


def plan_extension(*, expires_at: datetime, approved_at: datetime, checkout_expires_at: datetime, seconds: int,
                   max_total_seconds: int | None, now: datetime) -> ExtensionPlan:
    """Extend the window by `seconds`, bounded by the checkout's end and the task's most total time
    (counted from the approval). Refused when the window has already ended or nothing would be gained."""
    if seconds <= 0:
        raise ValueError(f"an extension must be positive, got {seconds}")
    if expires_at <= now:
        return ExtensionPlan(None, "the elevation window has already ended")
    wanted = expires_at + timedelta(seconds=seconds)
    bounds = [(checkout_expires_at, "the checkout's end")]
    if max_total_seconds is not None:
        bounds.append((approved_at + timedelta(seconds=max_total_seconds),
                       f"the task's most total time ({max_total_seconds} s)"))
    limit, what = min(bounds)
    if limit <= expires_at:
        return ExtensionPlan(None, f"the window already reaches {what}")
    if wanted > limit:
        return ExtensionPlan(limit, f"extended up to {what}")
    return ExtensionPlan(wanted, f"extended by {seconds} s")


class Status(enum.StrEnum):
    NOT_REQUIRED = "NOT_REQUIRED"
    NOT_REQUESTED = "NOT_REQUESTED"
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    NOT_ELIGIBLE = "NOT_ELIGIBLE"


ACTIONS = {
    Status.NOT_REQUIRED: "Launch with Elevated Privileges",
    Status.NOT_REQUESTED: "Request Privilege Elevation",
    Status.PENDING: "Pending Approval",
    Status.APPROVED: "Launch with Elevated Privileges",
    Status.NOT_ELIGIBLE: "None (no elevation option)",
}
# An approved request whose membership is not yet confirmed on the host: a Windows logon token is fixed at
# logon, so a session launched before the add lands would run without the privilege.
PREPARING = "Preparing elevated privileges"
# States in which the request is on its way to (or in) an elevation; ELEVATED alone is ready.
_UNDER_WAY = ("APPROVED", "ELEVATING", "ELEVATED")


@dataclass(frozen=True)
class ConnectionStatus:
    status: Status
    action: str
    reason: str
    # Launch now? True only once the membership is confirmed on the host (ELEVATED); None for NOT_ELIGIBLE.
    ready: bool | None = None


def connection_status(secret_id: str, secret: SecretFacts | None, user_id: str, user: UserFacts | None,
                      request_state: str | None, *, approvals_needed: int | None = None) -> ConnectionStatus:
    """Contract section 4. `request_state` is the state of the user's current request for the checkout, if any;
    `approvals_needed` how many approvals a PENDING one still needs.

    Launch is offered only when `ready`: while APPROVED or ELEVATING the action is "Preparing elevated
    privileges". For a NOT_REQUIRED task Launch means: request, then wait until ready (docs/approval.md).
    """
    ready = request_state == "ELEVATED"

    def answer(status: Status, reason: str) -> ConnectionStatus:
        action = PREPARING if request_state in ("APPROVED", "ELEVATING") else ACTIONS[status]
        return ConnectionStatus(status, action, reason, None if status is Status.NOT_ELIGIBLE else ready)

    reason = eligibility(secret_id, secret, user_id, user)
    if reason is not None:
        return ConnectionStatus(Status.NOT_ELIGIBLE, ACTIONS[Status.NOT_ELIGIBLE], reason, None)
    assert secret is not None and secret.task is not None
    if not secret.task.approval_required:
        if request_state in _UNDER_WAY:
            return answer(Status.NOT_REQUIRED, "elevated: the membership is confirmed on the host" if ready
                          else "approved by policy; the membership is not confirmed on the host yet")
        return answer(Status.NOT_REQUIRED, f"task {secret.task.id} does not require approval")
    if request_state == "PENDING":
        if approvals_needed is not None and secret.task.approvals_required > 1:
            done = secret.task.approvals_required - approvals_needed
            return answer(Status.PENDING, f"waiting for {approvals_needed} more approval(s) "
                                          f"({done} of {secret.task.approvals_required})")
        return answer(Status.PENDING, "a request is waiting for an approver")
    # REVOKING is an ending request: the account is on its way out, so the user starts over.
    if request_state in _UNDER_WAY:
        return answer(Status.APPROVED, "elevated: the membership is confirmed on the host" if ready
                      else "an approved request is active; the membership is not confirmed on the host yet")
    return answer(Status.NOT_REQUESTED, f"task {secret.task.id} requires approval and no request is active")
