"""The wire contract: CloudEvents 1.0 structured JSON envelopes and one validated model per event type.

`parse_event` is the only way bytes from the broker become an event. It either returns a fully
validated `Event` or raises `BadEvent` whose message names the problem; nothing is half-processed.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
)

CONTENT_TYPE = "application/cloudevents+json"
DEFAULT_MAX_BYTES = 64 * 1024

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")


def _check_id(value: str) -> str:
    if not _ID_PATTERN.match(value):
        raise ValueError("must be 1-128 characters of letters, digits and . _ : @ - (starting with a letter or digit)")
    return value


# Times outside these years are refused: far ones overflow on conversion to UTC or in the database.
YEARS = range(1970, 2200)
# JSON nested deeper than this is refused before validation (events are at most a few levels deep).
MAX_DEPTH = 32


def _check_time(value: datetime) -> datetime:
    if value.year not in YEARS:
        raise ValueError(f"out of range: a time must be between {YEARS.start} and {YEARS.stop}")
    return value


Identifier = Annotated[str, AfterValidator(_check_id)]
Text = Annotated[str, Field(max_length=2000)]
Timestamp = Annotated[AwareDatetime, AfterValidator(_check_time)]


class BadEvent(ValueError):
    """A message that is not a valid event of the contract; the message says why."""


class EventData(BaseModel):
    # cache_strings=False: else pydantic-core keeps the last 16,384 stripped strings (ids of past requests),
    # ~1.2 MB per daemon that bench/memory.py counts as growth; validation costs a little more without it.
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True, cache_strings=False)

    @field_serializer("*", when_used="json")
    def _times_as_rfc3339(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return format_time(value)
        return value


class ElevationRequested(EventData):
    request_id: Identifier
    checkout_id: Identifier
    secret_id: Identifier
    requester_id: Identifier
    host: Annotated[str, Field(min_length=1, max_length=255)]
    justification: Text
    checkout_expires_at: Timestamp
    ticket: Text | None = None
    duration_seconds: Annotated[int, Field(gt=0, le=366 * 24 * 3600)] | None = None


class ElevationDecided(EventData):
    request_id: Identifier
    approver_id: Identifier
    decision: Literal["approve", "deny"]
    reason: Text | None = None
    # Ours (optional): the decision is about this extension of the request, not the request itself.
    extension_id: Identifier | None = None


class ElevationApproved(EventData):
    request_id: Identifier
    checkout_id: Identifier
    secret_id: Identifier
    approver_id: Identifier
    expires_at: Timestamp
    policy: str | None = None
    # Ours (optional): every approver whose approval counted, when the task needs more than one.
    approvers: list[str] | None = None


class ElevationDenied(EventData):
    request_id: Identifier
    reason: Text
    approver_id: Identifier


class ElevationCancelled(EventData):
    """Ours (not in the v1 table): a pending request ended before any decision."""

    request_id: Identifier
    reason: Text


class ElevationElevated(EventData):
    request_id: Identifier
    secret_id: Identifier
    host: str
    account: str
    group: str
    elevated_at: Timestamp
    expires_at: Timestamp
    pre_existing: bool = False


class ElevationFailed(EventData):
    request_id: Identifier
    error: Text


CheckInReason = Literal["service_closed", "session_timeout", "manual", "checkout_expired", "approval_expired"]


class SecretCheckedIn(EventData):
    checkout_id: Identifier
    secret_id: Identifier
    reason: CheckInReason


class ElevationExpired(EventData):
    request_id: Identifier
    reason: Literal["checkout_expired", "approval_expired"]


class ElevationRevokeRequested(EventData):
    """Ours: an operator ends an active elevation early (`jitctl revoke`)."""

    request_id: Identifier
    operator_id: Identifier
    reason: Text


Seconds = Annotated[int, Field(gt=0, le=366 * 24 * 3600)]


class ElevationExtendRequested(EventData):
    """Ours: the requester asks for more time on an active elevation (`duration_seconds` more than now)."""

    request_id: Identifier
    extension_id: Identifier
    requester_id: Identifier
    justification: Text
    duration_seconds: Seconds


class ElevationExtended(EventData):
    """Ours: an extension was granted; the window now ends at `expires_at` (the reaper follows it)."""

    request_id: Identifier
    extension_id: Identifier
    expires_at: Timestamp
    previous_expires_at: Timestamp
    approver_id: Identifier
    policy: str | None = None


class ElevationExtensionDenied(EventData):
    """Ours: an extension was refused (by an approver, by the task, or because the window is ending)."""

    request_id: Identifier
    extension_id: Identifier
    reason: Text
    approver_id: Identifier


class ElevationRevoked(EventData):
    request_id: Identifier
    secret_id: Identifier
    host: str
    account: str
    group: str
    revoked_at: Timestamp
    attempts: int
    trigger: str
    membership_kept: str | None = None
    sessions: list[dict[str, Any]] = Field(default_factory=list)


class ElevationRevocationStalled(EventData):
    request_id: Identifier
    attempts: int
    last_error: Text
    since: Timestamp


class MembershipDrift(EventData):
    """A member of a watched group that no grant and no baseline explains (found by the reconciler)."""

    host: str
    group_sid: str
    account_sid: str
    account: str
    action: Literal["reported", "removed", "remove_failed"]
    first_seen: Timestamp


DATA_MODELS: dict[str, type[EventData]] = {
    "elevation.requested": ElevationRequested,
    "elevation.decided": ElevationDecided,
    "elevation.approved": ElevationApproved,
    "elevation.denied": ElevationDenied,
    "elevation.cancelled": ElevationCancelled,
    "elevation.elevated": ElevationElevated,
    "elevation.failed": ElevationFailed,
    "secret.checked_in": SecretCheckedIn,
    "elevation.expired": ElevationExpired,
    "elevation.revoke_requested": ElevationRevokeRequested,
    "elevation.extend_requested": ElevationExtendRequested,
    "elevation.extended": ElevationExtended,
    "elevation.extension_denied": ElevationExtensionDenied,
    "elevation.revoked": ElevationRevoked,
    "elevation.revocation_stalled": ElevationRevocationStalled,
    "membership.drift": MembershipDrift,
}
EVENT_TYPES = tuple(DATA_MODELS)


class Envelope(BaseModel):
    """The CloudEvents 1.0 attributes we require; `data` is validated separately, by type."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: Annotated[str, Field(min_length=1, max_length=128)]
    source: Annotated[str, Field(min_length=1, max_length=255)]
    type: str
    time: Timestamp | None = None
    datacontenttype: Literal["application/json"] | None = None
    data: dict[str, Any]


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    source: str
    time: datetime
    data: EventData
    # The broker user that published it (RabbitMQ's validated `user_id`), set by the consumer; not on the wire.
    publisher: str | None = None

    def to_json(self) -> bytes:
        body = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": format_time(self.time),
            "datacontenttype": "application/json",
            "data": self.data.model_dump(mode="json", exclude_none=True),
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_event(event_type: str, data: EventData | dict[str, Any], *, source: str, time: datetime | None = None,
              event_id: str | None = None) -> Event:
    """Build an outgoing event; `data` is validated against the type's model."""
    model = DATA_MODELS.get(event_type)
    if model is None:
        raise BadEvent(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    if isinstance(data, dict):
        try:
            data = model.model_validate(data)
        except ValidationError as exc:
            raise BadEvent(f"{event_type}: {_describe(exc)}") from None
    elif not isinstance(data, model):
        raise BadEvent(f"{event_type} needs {model.__name__} data, got {type(data).__name__}")
    return Event(id=event_id or str(uuid.uuid4()), type=event_type, source=source, time=time or utcnow(), data=data)


def parse_event(
    body: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, expected_types: tuple[str, ...] | None = None
) -> Event:
    """Validate a message body as one event of the contract, or raise BadEvent naming the problem."""
    if len(body) > max_bytes:
        raise BadEvent(f"oversized body: {len(body)} bytes > limit of {max_bytes}")
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadEvent(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadEvent(f"body is nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(raw, dict):
        raise BadEvent(f"body must be a JSON object (a CloudEvent), got {type(raw).__name__}")
    hostile = hostile_value(raw)
    if hostile is not None:
        raise BadEvent(f"event {str(raw.get('id'))[:128]!r}: {hostile}")
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise BadEvent(f"not a CloudEvents 1.0 envelope: {_describe(exc)}") from None
    model = DATA_MODELS.get(envelope.type)
    if model is None:
        raise BadEvent(f"unknown event type {envelope.type!r} (event {envelope.id})")
    if expected_types is not None and envelope.type not in expected_types:
        raise BadEvent(f"event type {envelope.type!r} is not handled here (event {envelope.id})")
    try:
        data = model.model_validate(envelope.data)
    except ValidationError as exc:
        raise BadEvent(f"{envelope.type} {envelope.id}: {_describe(exc)}") from None
    return Event(id=envelope.id, type=envelope.type, source=envelope.source, time=envelope.time or utcnow(), data=data)


def hostile_value(raw: Any) -> str | None:
    """Why a parsed body is refused before validation: nesting deeper than MAX_DEPTH, or a NUL character
    (PostgreSQL text cannot hold one: the insert would fail on every delivery). None when neither."""
    stack: list[tuple[Any, str, int]] = [(raw, "body", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels at {where}"
        if isinstance(value, str) and "\x00" in value:
            return f"NUL character in {where}"
        if isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    return f"NUL character in a key of {where}"
                stack.append((item, f"{where}.{key}"[:200], depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]"[:200], depth + 1) for i, item in enumerate(value))
    return None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


STATUS_QUERY = "status.query"  # routing key of the status request/reply: not an event, no CloudEvents envelope


class StatusQuery(BaseModel):
    """The connection workflow asks (AMQP request/reply, `reply_to` + `correlation_id`): the body, plain JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    secret_id: Identifier
    user_id: Identifier
    checkout_id: Identifier | None = None


class StatusReply(BaseModel):
    """The answer: `jitctl status --json` plus the request it is about (null where none applies).

    An error reply is `{"error": "..."}` alone (a malformed query)."""

    status: Literal["NOT_REQUIRED", "NOT_REQUESTED", "PENDING", "APPROVED", "NOT_ELIGIBLE"]
    action: str
    reason: str
    request_id: str | None
    state: str | None
    expires_at: str | None  # RFC 3339
    ready: bool | None  # launch now: the membership is confirmed on the host (state ELEVATED)
    approvals_needed: int | None = None  # PENDING: approvals still needed


def parse_status_query(body: bytes, *, max_bytes: int = 4096) -> StatusQuery:
    """Validate a status query's body, or raise BadEvent naming the problem."""
    if len(body) > max_bytes:
        raise BadEvent(f"oversized query: {len(body)} bytes > limit of {max_bytes}")
    try:
        return StatusQuery.model_validate_json(body)
    except ValidationError as exc:
        raise BadEvent(f"bad status query: {_describe(exc)}") from None
