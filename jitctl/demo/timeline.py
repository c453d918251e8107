"""The demo's readable timeline: every event on the exchange, and the daemons' warnings, as they happen.

Events are read from an exclusive queue bound to every routing key of the demo's exchange; each
line shows the time since the demo started, the daemon that published it, the event, the request,
the request's state in the database at that moment and the host.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.amqp.connection import connect
from shared.settings import Settings

COLUMNS = "{:>8}  {:<10} {:<30} {:<16} {:<10} {}"
WHO = {"jit/approval": "approval", "jit/elevator": "elevator", "jit/reaper": "reaper",
       "demo/connection-workflow": "upstream", "demo/requests-tab": "approver"}
REPEAT_SECONDS = 1.0


class Timeline:
    def __init__(self, settings: Settings, state_of: Callable[[str], str], logs: dict[str, Path]) -> None:
        self.start = time.monotonic()
        self._state_of = state_of
        self._connection = connect(settings.amqp_url, name="jitctl demo timeline")
        channel = self._connection.channel()
        channel.exchange_declare(settings.exchange, exchange_type="topic", durable=True)
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, settings.exchange, routing_key="#")
        channel.basic_consume(queue, self._on_message, auto_ack=True)
        self._logs = logs
        self._offsets = dict.fromkeys(logs, 0)
        self._tty = sys.stdout.isatty()
        self._progress = False
        self._last_log: tuple[object, float] = (None, 0.0)
        self.seen: list[dict[str, Any]] = []
        print(COLUMNS.format("time", "daemon", "event", "request", "state", "host"))

    def close(self) -> None:
        self._connection.close()

    def _line(self, daemon: str, what: str, request: str, state: str, host: str) -> None:
        if self._progress:
            sys.stdout.write("\r\033[K")
            self._progress = False
        elapsed = f"+{time.monotonic() - self.start:.2f}s"
        print(COLUMNS.format(elapsed, daemon, what, request, state, host), flush=True)

    def _on_message(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        event = json.loads(body)
        self.seen.append(event)
        data = event.get("data", {})
        request = data.get("request_id", "")
        state = self._state_of(request) if request else ""
        if event["type"] == "secret.checked_in":
            request = f"({data.get('checkout_id')})"
        self._line(WHO.get(event.get("source", ""), event.get("source", "")), event["type"], request, state,
                   data.get("host", ""))

    def _tail_logs(self) -> None:
        for name, path in self._logs.items():
            offset = self._offsets[name]
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            complete = chunk.rfind(b"\n") + 1
            self._offsets[name] = offset + complete
            for raw in chunk[:complete].splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if line.get("level") in ("warning", "error"):
                    self._log_line(name, line)

    def _log_line(self, daemon: str, line: dict[str, Any]) -> None:
        """A daemon's warning or error; the same one again within a second is not repeated."""
        key = (daemon, line.get("event"), line.get("request_id"))
        now = time.monotonic()
        if key == self._last_log[0] and now - self._last_log[1] < REPEAT_SECONDS:
            return
        self._last_log = (key, now)
        detail = str(line.get("error", line.get("reason", "")))
        detail = detail if len(detail) <= 70 else detail[:67] + "..."
        self._line(daemon, str(line.get("event")), line.get("request_id", ""), line["level"], detail)

    def wait_until(self, label: str, done: Callable[[], bool], timeout: float,
                   alive: Callable[[], None]) -> bool:
        """Show events until `done()`; a progress line says what we wait for. False on timeout."""
        started = time.monotonic()
        if not self._tty:
            print(f"{'':>8}  ... waiting: {label}", flush=True)
        while True:
            self._connection.process_data_events(time_limit=0.1)
            self._tail_logs()
            if done():
                break
            alive()
            waited = time.monotonic() - started
            if waited > timeout:
                self._line("demo", f"timed out after {timeout:.0f}s", "", "", label)
                return False
            if self._tty:
                sys.stdout.write(f"\r\033[K{'':>8}  ... waiting {waited:4.1f}s: {label}")
                sys.stdout.flush()
                self._progress = True
        self._connection.process_data_events(time_limit=0.2)
        self._tail_logs()
        return True

    def note(self, text: str) -> None:
        self._line("demo", text, "", "", "")
