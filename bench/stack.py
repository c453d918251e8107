"""The real stack as processes, for the daemon-level benchmarks, and a driver that plays upstream.

`Stack` starts one `jit-winrm-sim` process (one host on 127.0.0.1, NTLM with message encryption over
HTTP, `--ps-startup-ms` / `--latency-ms` as asked), a fresh PostgreSQL database on the local server
(created, migrated and seeded here; dropped by `stop`), a fresh vhost on the local RabbitMQ (made with
rabbitmqctl; deleted by `stop`), and one process of each daemon (`jit-approval`, `jit-elevator`,
`jit-reaper`) with production defaults (quorum queues) apart from what `overrides` says. The seeded
task does not require approval, so each lifecycle is: `elevation.requested` -> approved by policy ->
`elevation.elevated`; then `secret.checked_in` -> `elevation.revoked`.

    with Stack(Path("/tmp/x"), secrets=200, ps_startup_ms=300) as stack:
        stack.pids                        # {"winrm-sim": .., "approval": .., "elevator": .., "reaper": ..}
        lifecycles = drive(stack, 200, rate=None)            # a burst; rate=20.0: 20 requests/s
        stack.sim_counters()              # the simulator's counters: powershell_runs, shells_created, ...

`drive` publishes each `elevation.requested` as upstream would (confirmed, as the broker user the
publisher mapping names), consumes `elevation.*` on an exclusive queue of its own (a thread), publishes
the `secret.checked_in` as soon as the request's `elevation.elevated` arrives, and timestamps every
transition (wall clock, seconds) on receipt. Lifecycle i uses secret `sec-0-(i % secrets)`: with fewer
secrets than lifecycles, an account is granted again once its earlier lifecycle has ended (the common
case, a SID the ledger knows). Daemon logs (JSON, level `log_level`) go to `folder`.

Needs the local PostgreSQL (trust auth; `--server` URL) and the local RabbitMQ with rabbitmqctl.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import pika

from bench.scratch import scratch_database
from jitctl.demo.processes import Children, script
from shared.amqp.publisher import Publisher
from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade
from shared.events import format_time, new_event
from shared.settings import Settings
from shared.trust import broker_user, everyone_as
from tests.factories import PASSWORD_ENV, HostSpec, seed_config

PASSWORD = "Bench-Pa55word!"  # the simulated host's service account (a test double)
SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BROKER = "127.0.0.1:5672"
DAEMONS = ("approval", "elevator", "reaper")
TRACKED = ("elevation.approved", "elevation.denied", "elevation.elevated", "elevation.failed", "elevation.revoked")


def stop_on_sigterm() -> None:
    """SIGTERM (a bench run in the background, killed) stops the stack and drops its database and vhost,
    as Ctrl-C does: both leave through the `with Stack(...)` exit."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def consumers_on(settings: Settings, queue_name: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return int(connection.channel().queue_declare(queue=queue_name, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:  # not declared yet
        return 0
    finally:
        if connection.is_open:
            connection.close()


class Stack:
    """One simulated host, a fresh database and vhost, one process per daemon; `stop` removes them all."""

    def __init__(self, folder: Path, *, secrets: int, ps_startup_ms: float = 0.0, latency_ms: float = 0.0,
                 overrides: dict[str, Any] | None = None, log_level: str = "warning", server: str = SERVER,
                 daemon_env: dict[str, str] | None = None, daemon_argv: dict[str, list[str]] | None = None,
                 replicas: dict[str, int] | None = None) -> None:
        self.folder = folder
        self.secrets = secrets
        self.ps_startup_ms = ps_startup_ms
        self.latency_ms = latency_ms
        self.overrides = overrides or {}
        self.log_level = log_level
        self.server = server
        self.daemon_env = daemon_env or {}  # e.g. PYTHONPATH of another checkout: a before/after comparison
        self.daemon_argv = daemon_argv or {}  # a daemon's command line instead of its console script
        self.replicas = replicas or {}  # processes per daemon (default 1): "elevator", "elevator-1", ...
        self.children = Children(folder)
        self.vhost = f"jit-bench-{uuid.uuid4().hex[:8]}"
        self.settings: Settings | None = None
        self.control_url = ""
        self.host = ""
        self.port = 0
        self.url = ""  # the WinRM endpoint of the simulated host
        self._drop_database: Any = None

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.children.procs.items()}

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Stack:
        self.folder.mkdir(parents=True, exist_ok=True)
        _rabbitmqctl("add_vhost", self.vhost)
        _rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        amqp_url = f"amqp://guest:guest@{BROKER}/{quote(self.vhost, safe='')}"
        database_url, self._drop_database = scratch_database("postgres", self.server)
        upgrade(database_url)
        self.settings = Settings(amqp_url=amqp_url, database_url=database_url,
                                 publishers=everyone_as(broker_user(amqp_url)), **self.overrides)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
        env |= {"JIT_WINRM_SIM_PASSWORD": PASSWORD, PASSWORD_ENV: PASSWORD}
        # Another checkout's daemons (PYTHONPATH) get that checkout's simulator too: it must recognise their
        # script templates, which may differ from this tree's.
        self._start_simulator(env | {k: v for k, v in self.daemon_env.items() if k == "PYTHONPATH"})
        engine = make_engine(database_url)
        seed_config(session_factory(engine), [HostSpec(self.host, self.port, transport="ntlm")],
                    username="CORP\\svc-jit", secrets_per_host=self.secrets, approval_required=False)
        engine.dispose()
        env |= {f"JIT_{k.upper()}": str(v) for k, v in self.settings.model_dump().items() if v is not None}
        env |= {"JIT_LOG_FORMAT": "json", "JIT_LOG_LEVEL": self.log_level} | self.daemon_env
        for name in DAEMONS:
            for replica in range(self.replicas.get(name, 1)):
                self.children.start(name if replica == 0 else f"{name}-{replica}",
                                    self.daemon_argv.get(name, [script(f"jit-{name}")]), env)
        deadline = time.monotonic() + 60
        while not all(consumers_on(self.settings, self.settings.queue(n)) >= self.replicas.get(n, 1) for n in DAEMONS):
            self.children.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemons did not start consuming within 60 s; see {self.folder}")
            time.sleep(0.1)
        return self

    def _start_simulator(self, env: dict[str, str]) -> None:
        argv = [script("jit-winrm-sim"), "--host", "127.0.0.1:0", "--user", "CORP\\svc-jit",
                "--ps-startup-ms", str(self.ps_startup_ms), "--latency-ms", str(self.latency_ms)]
        proc = self.children.start("winrm-sim", argv, env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            self.children.check_alive()
            raise RuntimeError("jit-winrm-sim printed nothing")
        ready = json.loads(line)
        self.control_url = ready["control_url"]
        self.host, self.port = ready["hosts"][0]["address"], int(ready["hosts"][0]["port"])
        self.url = str(ready["hosts"][0]["url"])

    def sim_state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.control_url}/hosts/0", timeout=30) as answer:  # noqa: S310 - loopback
            state: dict[str, Any] = json.loads(answer.read())
        return state

    def sim_log(self) -> list[dict[str, Any]]:
        """The simulator's command log: one entry per script run (`script_name`, `env`, `exit_code`, ...)."""
        with urllib.request.urlopen(f"{self.control_url}/hosts/0/log", timeout=30) as answer:  # noqa: S310 - loopback
            entries: list[dict[str, Any]] = json.loads(answer.read())
        return entries

    def sim_post(self, verb: str, body: dict[str, Any]) -> Any:
        """POST to the simulator's control endpoint for host 0, e.g. `sim_post("cost", {"ps_startup_ms": 300})`."""
        request = urllib.request.Request(  # noqa: S310 - the simulator's loopback control endpoint
            f"{self.control_url}/hosts/0/{verb}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - loopback
            return json.loads(answer.read())

    def sim_counters(self) -> dict[str, int]:
        return dict(self.sim_state()["counters"])

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), then drop the database and delete the vhost."""
        self.children.stop_all()
        simulator = self.children.procs.get("winrm-sim")
        if simulator is not None and simulator.stdout is not None:
            simulator.stdout.close()
        if self._drop_database is not None:
            self._drop_database()
            self._drop_database = None
        with contextlib.suppress(subprocess.SubprocessError):  # never created when start failed early
            _rabbitmqctl("delete_vhost", self.vhost)


@dataclass
class Lifecycle:
    """One request's times (wall clock, seconds since the epoch) as the driver saw them."""

    index: int
    request_id: str
    checkout_id: str
    secret_id: str
    times: dict[str, float] = field(default_factory=dict)
    revoked: dict[str, Any] = field(default_factory=dict)

    def span(self, start: str, end: str) -> float | None:
        if start in self.times and end in self.times:
            return self.times[end] - self.times[start]
        return None


def outcomes(lifecycles: list[Lifecycle]) -> dict[str, int]:
    """How many lifecycles ended revoked, failed or denied, and how many had not ended (`open`)."""
    counts = dict.fromkeys(("revoked", "failed", "denied", "open"), 0)
    for lc in lifecycles:
        counts[next((k for k in ("revoked", "failed", "denied") if k in lc.times), "open")] += 1
    return counts


class _Tap(threading.Thread):
    """An exclusive queue of the driver's own bound to the tracked `elevation.*` types; a thread stamps receipts."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="bench-tap", daemon=True)
        self.received: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.stopping = threading.Event()
        self._connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
        channel = self._connection.channel()
        channel.exchange_declare(exchange=settings.exchange, exchange_type="topic", durable=True)
        name = channel.queue_declare(queue="", exclusive=True).method.queue
        for event_type in TRACKED:
            channel.queue_bind(queue=name, exchange=settings.exchange, routing_key=event_type)
        channel.basic_consume(name, self._on_message, auto_ack=True)

    def _on_message(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        self.received.put((time.time(), json.loads(body)))

    def run(self) -> None:
        while not self.stopping.is_set():
            self._connection.process_data_events(time_limit=0.05)
        self._connection.close()


def _requested(lifecycle: Lifecycle, host: str) -> Any:
    return new_event("elevation.requested", {
        "request_id": lifecycle.request_id, "checkout_id": lifecycle.checkout_id, "secret_id": lifecycle.secret_id,
        "requester_id": "alice", "host": host, "justification": "bench",
        "checkout_expires_at": format_time(datetime.now(UTC) + timedelta(hours=2))}, source="bench/workflow")


def _checked_in(lifecycle: Lifecycle) -> Any:
    return new_event("secret.checked_in", {"checkout_id": lifecycle.checkout_id, "secret_id": lifecycle.secret_id,
                                           "reason": "service_closed"}, source="bench/workflow")


def drive(stack: Stack, count: int, *, rate: float | None = None, timeout: float = 300.0) -> list[Lifecycle]:
    """Run `count` lifecycles: all requests at once (`rate` None) or `rate` per second; each check-in as soon
    as its elevation is announced. Returns when every lifecycle ended (revoked, denied or failed) or after
    `timeout` seconds past the last request (unfinished lifecycles simply lack their later times)."""
    settings = stack.settings
    assert settings is not None, "start the stack first"
    run = uuid.uuid4().hex[:6]
    lifecycles = [Lifecycle(i, f"req-{run}-{i}", f"co-{run}-{i}", f"sec-0-{i % stack.secrets}") for i in range(count)]
    by_id = {lc.request_id: lc for lc in lifecycles}
    tap = _Tap(settings)
    tap.start()
    ended = 0
    try:
        with Publisher(settings) as publisher:
            started = time.monotonic()
            sent = 0
            deadline = None
            while ended < count:
                due = count if rate is None else min(count, int((time.monotonic() - started) * rate) + 1)
                for lifecycle in lifecycles[sent:due]:
                    event = _requested(lifecycle, stack.host)
                    lifecycle.times["requested"] = time.time()
                    publisher.publish(event.type, event.to_json(), message_id=event.id)
                sent = max(sent, due)
                if sent == count and deadline is None:
                    deadline = time.monotonic() + timeout
                ended += _receive(tap, by_id, publisher, wait=0.002 if sent < count else 0.05)
                if deadline is not None and time.monotonic() > deadline:
                    break
    finally:
        tap.stopping.set()
        tap.join(10)
    return lifecycles


def _receive(tap: _Tap, by_id: dict[str, Lifecycle], publisher: Publisher, wait: float) -> int:
    """Record what the tap received; check in each newly elevated request. Returns how many lifecycles ended."""
    ended = 0
    try:
        item: tuple[float, dict[str, Any]] | None = tap.received.get(timeout=wait)
    except queue.Empty:
        return 0
    while item is not None:
        at, event = item
        lifecycle = by_id.get(event["data"].get("request_id", ""))
        kind = event["type"].removeprefix("elevation.")
        if lifecycle is not None and kind not in lifecycle.times:
            lifecycle.times[kind] = at
            if kind == "elevated":
                checkin = _checked_in(lifecycle)
                lifecycle.times["checked_in"] = time.time()
                publisher.publish(checkin.type, checkin.to_json(), message_id=checkin.id)
            elif kind == "revoked":
                lifecycle.revoked = {k: event["data"].get(k) for k in ("attempts", "trigger", "revoked_at")}
            ended += kind in ("revoked", "denied", "failed")
        try:
            item = tap.received.get_nowait()
        except queue.Empty:
            item = None
    return ended
