"""Logging: one JSON object per line with the event name and bound context; no password ever reaches a line."""

from __future__ import annotations

import json

import pytest

from shared import logs

PASSWORD = "Sup3r-S3cret!"


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    logs.configure("debug", "json")

    def read() -> list[dict[str, object]]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]

    return read


def test_a_line_carries_the_event_name_and_the_bound_context(lines) -> None:  # type: ignore[no-untyped-def]
    log = logs.get_logger()
    with logs.bound(request_id="req-1", checkout_id="co-1", host="web01", attempt=2, event_id="ev-9"):
        log.info("elevation.revoked", attempts=2)
    log.info("daemon.started")
    first, second = lines()
    assert first["event"] == "elevation.revoked" and first["level"] == "info"
    assert {k: first[k] for k in ("request_id", "checkout_id", "host", "attempt", "event_id")} == {
        "request_id": "req-1", "checkout_id": "co-1", "host": "web01", "attempt": 2, "event_id": "ev-9"}
    assert "request_id" not in second, "context leaked out of its block"
    assert str(first["timestamp"]).endswith("Z")


def test_a_password_never_reaches_a_log_line(lines) -> None:  # type: ignore[no-untyped-def]
    log = logs.get_logger()
    log.info("config.loaded", password=PASSWORD, password_env="JIT_CRED", Authorization=f"Basic {PASSWORD}")
    log.warning("amqp.connection.failed", url=f"amqp://guest:{PASSWORD}@localhost:5672/%2F")
    log.error("winrm.call.failed", details={"credentials": {"username": "svc", "password": PASSWORD}},
              attempts=[{"secret": PASSWORD}])
    try:
        raise ValueError(f"could not connect to postgresql://jit:{PASSWORD}@db/jit")
    except ValueError:
        log.exception("db.unreachable")
    captured = lines()
    assert len(captured) == 4
    assert all(PASSWORD not in json.dumps(line) for line in captured)
    assert captured[0]["password"] == logs.REDACTED


def test_hide_password_for_messages() -> None:
    assert logs.hide_password(f"amqp://guest:{PASSWORD}@h:5672/v") == "amqp://guest:[redacted]@h:5672/v"


def test_a_daemon_s_name_and_version_are_on_every_line_from_every_thread(capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    logs.configure("info", "json", daemon="reaper", version="1.2.3")
    log = logs.get_logger()
    log.info("daemon.started", queue="jit.reaper")
    worker = threading.Thread(target=lambda: log.error("revocation.crashed"))
    worker.start()
    worker.join()
    log.info("elevation.revoked", daemon="override")
    first, second, third = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert (first["daemon"], first["version"], first["event"]) == ("reaper", "1.2.3", "daemon.started")
    assert (second["daemon"], second["version"]) == ("reaper", "1.2.3")
    assert third["daemon"] == "override"  # a line's own field wins
    logs.configure("debug", "json")
