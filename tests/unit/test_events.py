"""The wire contract: valid events round-trip; every kind of bad input is refused with a reason naming it."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.events import EVENT_TYPES, BadEvent, ElevationRequested, new_event, parse_event

ROOT = Path(__file__).resolve().parents[2]
REQUESTED = {
    "request_id": "req-1", "checkout_id": "co-1", "secret_id": "sec-1", "requester_id": "alice",
    "host": "web01.corp.example", "justification": "patching", "checkout_expires_at": "2026-11-24T11:00:00+01:00",
}


def envelope(**overrides: Any) -> dict[str, Any]:
    body = {"specversion": "1.0", "id": "ev-1", "source": "pam/connection-workflow", "type": "elevation.requested",
            "time": "2026-11-24T10:00:00Z", "datacontenttype": "application/json", "data": dict(REQUESTED)}
    body.update(overrides)
    return body


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def test_a_valid_event_parses_with_typed_data() -> None:
    event = parse_event(raw(envelope()))
    assert event.id == "ev-1" and event.type == "elevation.requested"
    assert isinstance(event.data, ElevationRequested)
    assert event.data.checkout_expires_at == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def test_round_trip_keeps_everything_and_writes_rfc3339_times() -> None:
    event = new_event("elevation.requested", REQUESTED, source="test")
    body = json.loads(event.to_json())
    assert body["specversion"] == "1.0" and body["type"] == "elevation.requested"
    assert body["data"]["checkout_expires_at"] == "2026-11-24T10:00:00Z"
    again = parse_event(event.to_json())
    assert again.data == event.data and again.id == event.id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (raw([1, 2]), "must be a JSON object"),
        (raw(envelope(specversion="0.3")), "specversion"),
        (raw({k: v for k, v in envelope().items() if k != "id"}), "id: Field required"),
        (raw(envelope(type="elevation.teleported")), "unknown event type 'elevation.teleported'"),
        (raw(envelope(data={**REQUESTED, "checkout_expires_at": "tomorrow"})), "checkout_expires_at"),
        (raw(envelope(data={**REQUESTED, "checkout_expires_at": "2026-11-24T10:00:00"})), "timezone"),
        (raw(envelope(data={k: v for k, v in REQUESTED.items() if k != "host"})), "host: Field required"),
        (raw(envelope(data={**REQUESTED, "request_id": 42})), "request_id"),
        (raw(envelope(data={**REQUESTED, "request_id": "a b;rm"})), "request_id"),
        (raw(envelope(time="yesterday")), "time"),
        (raw(envelope(data="x")), "data"),
        (raw(envelope(data={"request_id": "r", "approver_id": "b", "decision": "maybe"}, type="elevation.decided")),
         "decision"),
        (raw(envelope(data={"checkout_id": "c", "secret_id": "s", "reason": "bored"}, type="secret.checked_in")),
         "reason"),
    ],
)
def test_bad_input_is_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(BadEvent) as info:
        parse_event(body)
    assert reason in str(info.value)


def test_an_oversized_body_is_refused_before_parsing() -> None:
    big = raw(envelope(data={**REQUESTED, "justification": "x" * 70_000}))
    with pytest.raises(BadEvent, match=r"oversized body: \d+ bytes > limit of 65536"):
        parse_event(big)


def test_an_event_for_another_consumer_is_refused() -> None:
    with pytest.raises(BadEvent, match="not handled here"):
        parse_event(raw(envelope()), expected_types=("secret.checked_in",))


def test_every_contract_type_is_known() -> None:
    for name in ["elevation.requested", "elevation.decided", "elevation.approved", "elevation.denied",
                 "elevation.elevated", "elevation.failed", "secret.checked_in", "elevation.expired",
                 "elevation.revoked", "elevation.revocation_stalled"]:
        assert name in EVENT_TYPES


def test_new_event_validates_outgoing_data() -> None:
    with pytest.raises(BadEvent, match=r"elevation\.failed: error: Field required"):
        new_event("elevation.failed", {"request_id": "r"}, source="test")


def test_the_committed_asyncapi_document_matches_the_models() -> None:
    from shared.asyncapi import render

    committed = (ROOT / "docs" / "asyncapi.yaml").read_text()
    assert committed == render(), "regenerate with: python -m shared.asyncapi > docs/asyncapi.yaml"


def test_asyncapi_operations_name_every_sender_and_what_each_daemon_consumes() -> None:
    from services.approval.main import ROUTING_KEYS as APPROVAL
    from services.elevator.handler import ROUTING_KEYS as ELEVATOR
    from services.reaper.handlers import ROUTING_KEYS as REAPER
    from shared.asyncapi import CONSUMED, SENDERS, document

    assert CONSUMED == {"approval": APPROVAL, "elevator": ELEVATOR, "reaper": REAPER}
    assert set(SENDERS) == set(EVENT_TYPES)
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    operations = doc["operations"]
    assert operations["approvalSendsElevationApproved"]["action"] == "send"
    assert operations["reaperReceivesSecretCheckedIn"]["action"] == "receive"
    assert "connectionWorkflowSendsElevationApproved" not in operations, "only jit-approval approves"
    assert {"requestsTabSendsElevationDecided", "jitctlSendsElevationDecided"} <= set(operations)
    for daemon in CONSUMED:
        assert doc["channels"][f"{daemon}DeadLetters"]["address"] == f"jit.{daemon}.dead"


def test_the_official_asyncapi_parser_reads_the_document_without_errors_or_warnings() -> None:
    node, modules = shutil.which("node"), ROOT / ".jit-tools" / "node"
    if node is None or not (modules / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.skip("Node or @asyncapi/parser is not installed (scripts/install-test-tools.sh installs the parser)")
    script = Path(__file__).with_name("asyncapi_parse.cjs")
    done = subprocess.run([node, str(script), str(modules), str(ROOT / "docs" / "asyncapi.yaml")],
                          capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout)
    assert result["version"] == "3.0.0"
    assert result["counts"]["error"] == 0 and result["counts"]["warning"] == 0, result["problems"]


def test_the_extension_and_multi_approval_additions_are_additive() -> None:
    """New types parse; the new fields of existing types are optional, so old producers stay valid."""
    assert {"elevation.extend_requested", "elevation.extended", "elevation.extension_denied"} <= set(EVENT_TYPES)
    ask = new_event("elevation.extend_requested", {"request_id": "r1", "extension_id": "x1", "requester_id": "alice",
                                                   "justification": "more", "duration_seconds": 600}, source="t")
    assert parse_event(ask.to_json()).data == ask.data
    with pytest.raises(BadEvent, match="duration_seconds: Input should be greater than 0"):
        new_event("elevation.extend_requested", {"request_id": "r1", "extension_id": "x1", "requester_id": "alice",
                                                 "justification": "more", "duration_seconds": 0}, source="t")
    old = new_event("elevation.decided", {"request_id": "r1", "approver_id": "bob", "decision": "approve"}, source="t")
    assert json.loads(old.to_json())["data"] == {"request_id": "r1", "approver_id": "bob", "decision": "approve"}
    on_extension = parse_event(new_event("elevation.decided", {"request_id": "r1", "approver_id": "bob",
                                                               "decision": "approve", "extension_id": "x1"},
                                         source="t").to_json())
    assert getattr(on_extension.data, "extension_id", None) == "x1"
    approved = {"request_id": "r1", "checkout_id": "c", "secret_id": "s", "approver_id": "bob",
                "expires_at": "2026-11-24T11:00:00Z"}
    assert "approvers" not in json.loads(new_event("elevation.approved", approved, source="t").to_json())["data"]


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"secret_id": "s", "user_id": "alice", "checkout_id": "co-1"}', None),
    (b'{"secret_id": "s", "user_id": "alice"}', None),
    (b'{"secret_id": "s"}', "user_id: Field required"),
    (b'{"secret_id": "s", "user_id": "alice", "extra": 1}', "extra: Extra inputs are not permitted"),
    (b'{"secret_id": "bad id", "user_id": "alice"}', "secret_id: Value error"),
    (b"not json", "bad status query"),
    (b"[1]", "bad status query"),
    (b'{"secret_id": "' + b"s" * 5000 + b'"}', "oversized query"),
])
def test_status_queries_are_validated(body: bytes, reason: str | None) -> None:
    from shared.events import parse_status_query

    if reason is None:
        assert parse_status_query(body).secret_id == "s"
    else:
        with pytest.raises(BadEvent, match=reason):
            parse_status_query(body)
