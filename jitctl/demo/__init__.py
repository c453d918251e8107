"""`jitctl demo`: the simulator, the three daemons and four stories, on the embedded SQLite default.

Everything it starts lives in a temporary folder and on its own exchange and queues, which it
removes at the end; it exits 0 only if every story ended as expected and no account is left in a
group on any simulated host.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import pika
import sqlalchemy as sa

from jitctl.demo.config import ADMINISTRATORS, sample_config
from jitctl.demo.processes import Children, script, start_simulator
from jitctl.demo.stories import Driver, Story, play
from jitctl.demo.timeline import Timeline
from shared.amqp.connection import connect, connection_parameters
from shared.amqp.publisher import Publisher
from shared.db.engine import make_engine
from shared.db.migrate import upgrade
from shared.logs import hide_password
from shared.routes import delete_all
from shared.settings import Settings
from shared.trust import broker_user, everyone_as

DAEMONS = ("approval", "elevator", "reaper")
ADDRESSES = ["127.0.0.2", "127.0.0.3"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the simulator, the three daemons and four stories",
                                   description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (database, daemon logs)")
    parser.set_defaults(func=run)


def broker_error(settings: Settings) -> str | None:
    try:
        nodes = connection_parameters(settings.amqp_url, name="jitctl demo")
        for params in nodes:
            params.connection_attempts, params.socket_timeout = 1, 3
        pika.BlockingConnection(nodes).close()
    except Exception as exc:
        return (f"jitctl demo: cannot reach RabbitMQ at {hide_password(settings.amqp_url)} ({exc!r}).\n"
                "Start one with `rabbitmq-server -detached` (Debian: `apt-get install rabbitmq-server`), "
                "or point JIT_AMQP_URL at a running broker.")
    return None


def demo_settings(folder: Path) -> Settings:
    name = f"jit-demo-{uuid.uuid4().hex[:6]}"
    return Settings().model_copy(update={
        "database_url": f"sqlite:///{folder / 'jit.db'}", "exchange": f"{name}.events", "queue_prefix": name,
        "sweep_interval_seconds": 0.5, "retry_initial_seconds": 0.2, "retry_max_seconds": 2.0,
        "retry_in_process_seconds": 2.0, "winrm_operation_timeout_seconds": 2, "winrm_read_timeout_seconds": 4,
        "winrm_deadline_seconds": 8.0, "stall_threshold_seconds": 60.0, "lease_seconds": 20.0,
        # Every demo component shares the URL's one broker user: an explicit mapping naming it, not the
        # development flag (docs/security.md).
        "publishers": everyone_as(broker_user(Settings().amqp_url)),
        "credential_env_prefix": "JIT_DEMO_",  # the demo's password variable is JIT_DEMO_PASSWORD
    })


def child_env(settings: Settings, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    env.update({f"JIT_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None})
    env.update({"JIT_LOG_FORMAT": "json", "JIT_DEMO_PASSWORD": password})
    return env


def daemon_env(env: dict[str, str], settings: Settings, index: int) -> dict[str, str]:
    """With JIT_METRICS_PORT set, the daemons serve /metrics on it and the next two ports, in DAEMONS order."""
    if settings.metrics_port:
        return {**env, "JIT_METRICS_PORT": str(settings.metrics_port + index)}
    return env


def save_metrics(settings: Settings, folder: Path) -> None:
    """Each daemon's /metrics as the demo ends, in `<daemon>.metrics` beside its log (kept with --keep)."""
    if not settings.metrics_port:
        return
    for index, daemon in enumerate(DAEMONS):
        url = f"http://127.0.0.1:{settings.metrics_port + index}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                (folder / f"{daemon}.metrics").write_bytes(answer.read())
        except OSError as exc:
            print(f"jitctl demo: could not read {url}: {exc!r}", file=sys.stderr)


def wait_for_consumers(settings: Settings, children: Children, timeout: float = 30.0) -> None:
    connection = connect(settings.amqp_url, name="jitctl demo")
    deadline = time.monotonic() + timeout
    try:
        for daemon in DAEMONS:
            while True:
                channel = connection.channel()
                try:
                    if channel.queue_declare(settings.queue(daemon), passive=True).method.consumer_count:
                        channel.close()
                        break
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass
                children.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jit-{daemon} did not start consuming within {timeout:.0f}s")
                time.sleep(0.2)
    finally:
        connection.close()


def remove_broker_objects(settings: Settings) -> None:
    try:
        delete_all(settings)
    except Exception as exc:  # the broker went away: nothing of ours is left to remove there
        print(f"jitctl demo: could not remove the demo's queues: {exc!r}", file=sys.stderr)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="jit-demo-"))
    settings = demo_settings(folder)
    error = broker_error(settings)
    if error:
        print(error, file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    children = Children(folder)
    timeline: Timeline | None = None
    try:
        code, timeline = _run(settings, folder, children)
        return code
    except KeyboardInterrupt:
        print("\njitctl demo: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"jitctl demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if timeline is not None:
            timeline.close()
        children.stop_all()
        remove_broker_objects(settings)
        if args.keep:
            print(f"kept {folder} (jit.db and one log per process)")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _run(settings: Settings, folder: Path, children: Children) -> tuple[int, Timeline | None]:
    started = time.monotonic()
    env = child_env(settings, secrets.token_urlsafe(16))
    upgrade(settings.database_url)
    ready = start_simulator(children, ADDRESSES, env)
    hosts = ready["hosts"]
    config = folder / "demo-config.yaml"
    config.write_text(sample_config(hosts))
    applied = subprocess.run([script("jitctl"), "apply", "-f", str(config)], env=env, capture_output=True,
                             text=True, check=False)
    if applied.returncode != 0:
        raise RuntimeError(f"jitctl apply failed: {applied.stderr.strip()}")
    for index, daemon in enumerate(DAEMONS):
        children.start(daemon, [script(f"jit-{daemon}")], daemon_env(env, settings, index))
    wait_for_consumers(settings, children)

    engine = make_engine(settings.database_url)

    def state_of(request_id: str) -> str:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT state FROM requests WHERE id = :id"),
                                {"id": request_id}).scalar() or "-"

    timeline = Timeline(settings, state_of, {d: folder / f"{d}.log" for d in DAEMONS})
    web, db = (h["address"] for h in hosts)
    stories = [
        Story("req-1-approved", "co-1", "sec-web-admin", web, "CORP\\web-admin", "REVOKED",
              "approved, elevated, revoked on check-in"),
        Story("req-2-denied", "co-2", "sec-db-admin", db, "CORP\\db-admin", "DENIED", "denied by the approver"),
        Story("req-3-expires", "co-3", "sec-web-report", web, "CORP\\web-report", "REVOKED",
              "approved, elevated, revoked when its 6 s approval window ends"),
        Story("req-4-host-down", "co-4", "sec-db-admin", db, "CORP\\db-admin", "REVOKED",
              "host down at revocation, revoked once it is back"),
    ]
    with Publisher(settings) as publisher:
        driver = Driver(publisher, ready["control_url"])

        def wait(request_id: str, state: str, timeout: float) -> bool:
            return timeline.wait_until(f"{request_id} -> {state}", lambda: state_of(request_id) == state,
                                       timeout, children.check_alive)

        play(driver, stories, wait, timeline.note, db_host_index=1)
        save_metrics(settings, folder)
        return report(engine, driver, stories, hosts, time.monotonic() - started), timeline


def report(engine: sa.Engine, driver: Driver, stories: list[Story], hosts: list[dict[str, Any]],
           elapsed: float) -> int:
    print("\nFinal state of every request:")
    row = "  {:<16} {:<10} {:<9} {:<15} {:<16} {:<16} {}"
    print(row.format("request", "state", "expected", "secret", "host", "ended by", "attempts"))
    ok = True
    with engine.connect() as conn:
        for story in stories:
            found = conn.execute(sa.text("SELECT state, end_trigger, attempts FROM requests WHERE id = :id"),
                                 {"id": story.request_id}).first()
            state, trigger, attempts = found if found else ("missing", None, None)
            ok &= state == story.expected
            print(row.format(story.request_id, state, story.expected, story.secret_id, story.host,
                             trigger or "-", attempts if attempts is not None else "-"))
    print("\nGroup membership on each simulated host (Administrators, S-1-5-32-544):")
    accounts = {s.account.lower() for s in stories}
    for index, host in enumerate(hosts):
        members = driver.members(index, ADMINISTRATORS)
        left = [m for m in members if m.lower() in accounts]
        ok &= not left
        print(f"  {host['address']}:{host['port']}  members: {', '.join(members) or '(none)'}"
              f"{'  <-- LEFT ELEVATED' if left else ''}")
    verdict = "no account is left elevated" if ok else "FAILED: see above"
    print(f"\njitctl demo: {verdict} ({elapsed:.1f}s)")
    return 0 if ok else 1
