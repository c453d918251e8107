"""The trust model's pure parts: the publisher mapping, who may speak for whom, the shipped broker
definitions' topic permissions equal to the mapping, hostile values refused with a reason, terminal
control characters stripped, and a daemon that will not start without a mapping."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from jitctl.common import printable, show
from shared import trust
from shared.events import BadEvent, parse_event
from shared.settings import Settings, SettingsError
from tests.conftest import REPO

REQUESTED = {"specversion": "1.0", "id": "e1", "source": "s", "type": "elevation.requested",
             "data": {"request_id": "r", "checkout_id": "c", "secret_id": "s", "requester_id": "a", "host": "h",
                      "justification": "j", "checkout_expires_at": "2030-01-01T00:00:00Z"}}


def test_the_mapping_starts_from_the_shipped_users_and_replaces_types() -> None:
    mapping = trust.parse_mapping("shipped; elevation.decided=tab-a, tab-b ;secret.checked_in=")
    assert mapping["elevation.decided"] == {"tab-a", "tab-b"}
    assert mapping["secret.checked_in"] == frozenset()
    assert mapping["elevation.requested"] == {"jit-workflow"}
    for bad, why in [("", "empty"), ("elevation.nope=x", "not an event type"), ("shipped;junk", "not TYPE=USER"),
                     ("elevation.decided=bad user", "not a broker user name")]:
        with pytest.raises(ValueError, match=why):
            trust.parse_mapping(bad)
    with pytest.raises(SettingsError, match="JIT_PUBLISHERS"):
        Settings.from_environment({"JIT_PUBLISHERS": "elevation.nope=x"})


def test_without_a_mapping_nobody_is_allowed_and_the_flag_allows_anyone() -> None:
    assert Settings().allowed_publishers("elevation.requested") == frozenset()
    assert Settings(allow_any_publisher=True).allowed_publishers("elevation.requested") is None
    locked = Settings(publishers="shipped", decision_publishers="tab")
    assert locked.allowed_publishers("elevation.decided") == {"tab"}


def test_a_person_speaks_only_for_themselves() -> None:
    people = {"bob": "bob-cli", "carol": None}.get
    allowed = frozenset({"jit-requests-tab"})
    assert trust.refusal("elevation.decided", "jit-requests-tab", allowed, "carol", people) is None
    assert trust.refusal("elevation.decided", "bob-cli", allowed, "bob", people) is None
    assert "bob's broker user is 'bob-cli'" in (trust.refusal("elevation.decided", "jitctl", allowed, "bob", people)
                                                or "")
    assert "carol has no broker_user" in (trust.refusal("elevation.decided", "bob-cli", allowed, "carol", people)
                                          or "")
    assert "not one of its publishers" in (trust.refusal("elevation.requested", "bob-cli", frozenset(), None,
                                                         people) or "")
    assert trust.refusal("elevation.requested", None, None, None, people) is None


def test_the_shipped_definitions_grant_exactly_the_mapping() -> None:
    definitions = json.loads((REPO / "deploy" / "rabbitmq" / "definitions.json").read_text())
    users = {u["name"] for u in definitions["users"]}
    assert users == set(trust.SHIPPED_USERS)
    assert all(u["password_hash"] == "" for u in definitions["users"]), "no password in the repository"
    for topic in definitions["topic_permissions"]:
        writable = {t for t in trust.KNOWN_TYPES if re.fullmatch(topic["write"], t)}
        expected = {t for t, who in trust.SHIPPED.items() if topic["user"] in who}
        if topic["user"] == trust.JITCTL:
            expected |= set(trust.PERSON_FIELDS)
        assert writable == expected, topic["user"]
    assert {q["name"] for q in definitions["queues"] if q["arguments"].get("x-queue-type") == "quorum"} >= {
        "jit.approval", "jit.elevator", "jit.reaper", "jit.approval.dead", "jit.elevator.dead", "jit.reaper.dead"}


@pytest.mark.parametrize(("change", "why"), [
    (lambda b: b["data"].update(justification="a\x00b"), "NUL character in body.data.justification"),
    (lambda b: b["data"].update(checkout_expires_at="9999-12-31T23:59:59-01:00"), "out of range"),
    (lambda b: b["data"].update(checkout_expires_at="0001-01-01T00:00:00+01:00"), "out of range"),
    (lambda b: b.update(time="0001-01-01T00:00:00+01:00"), "out of range"),
    (lambda b: b["data"].update(justification="x" * 2001), "at most 2000 characters"),
    (lambda b: b["data"].update(host="h" * 256), "at most 255 characters"),
    (lambda b: b.update(extension=json.loads("[" * 40 + "]" * 40)), "nested deeper than 32"),
])
def test_hostile_values_are_refused_with_a_reason(change: object, why: str) -> None:
    body = json.loads(json.dumps(REQUESTED))
    change(body)  # type: ignore[operator]
    with pytest.raises(BadEvent, match=re.escape(why)):
        parse_event(json.dumps(body).encode())


def test_json_nested_past_the_interpreter_limit_is_a_refusal_not_a_crash() -> None:
    with pytest.raises(BadEvent, match="nested deeper"):
        parse_event(b"[" * 60000)


def test_jitctl_output_cannot_carry_terminal_control_characters() -> None:
    hostile = "ok\x1b[2J\x1b]0;owned\x07\r\nnext\u202etxt.exe\x9b"
    shown = printable(hostile)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202e]", shown)
    assert shown.startswith("ok\\u001b[2J") and "\\u202e" in shown
    assert show(hostile) == shown


def test_a_daemon_without_a_mapping_refuses_to_start() -> None:
    env = {"PATH": "/usr/bin:/bin", "JIT_DATABASE_URL": "sqlite:////nonexistent/jit.db"}
    result = subprocess.run([sys.executable, "-m", "services.approval.main"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "JIT_PUBLISHERS" in result.stderr
    assert "JIT_ALLOW_ANY_PUBLISHER=true" in result.stderr


def test_plaintext_outside_the_loopback_is_warned_about() -> None:
    assert trust.plaintext_warnings("amqp://u:p@127.0.0.1/%2F", "postgresql+psycopg://jit@localhost/jit") == []
    found = trust.plaintext_warnings("amqp://u:p@rabbit.corp/%2F",
                                     "postgresql+psycopg://jit@db.corp/jit?sslmode=require")
    assert len(found) == 2 and "amqps://" in found[0] and "verify-full" in found[1]
