"""Metrics and probes of a running daemon: scraped over HTTP while requests flow, and `--check` as systemd runs it.

jit-approval runs in this process (the real Consumer, the run's broker, both databases) with
`metrics_port=0`; the test reads `/metrics`, `/healthz` and `/readyz` from the port it got. The reaper
and elevator `--check` run as the console scripts.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.publisher import Publisher
from shared.daemon import Runtime
from shared.db.migrate import upgrade
from shared.db.transitions import load
from shared.events import Event
from shared.settings import Settings
from shared.states import State
from tests.conftest import settings_env
from tests.factories import PASSWORD_ENV, HostSpec, seed_config
from tests.integration.approval_harness import approval_running, decided, poll, requested

FIRST_REVISION = "0001"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> Samples:
    status, text = get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def send(publisher: Publisher, event: Event) -> None:
    publisher.publish(event.type, event.to_json(), message_id=event.id)


def probes_port(runtime: Runtime) -> int:
    assert runtime.probes is not None
    return runtime.probes.port


def state(factory: sessionmaker[Session], request_id: str) -> str | None:
    with factory() as session:
        row = load(session, request_id)
        return row.state if row else None


def test_counters_and_gauges_move_as_a_request_flows(settings: Settings, factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    settings = settings.model_copy(update={"metrics_port": 0})
    with approval_running(settings) as runtime, Publisher(settings) as publisher:
        port = probes_port(runtime)
        poll(lambda: get(port, "/readyz")[0] == 200, 15, "/readyz 200 once consuming")
        before = scrape(port)
        ask = requested()
        send(publisher, ask)
        request_id = ask.data.request_id
        poll(lambda: state(factory, request_id) == State.PENDING.value, 15, "PENDING")
        pending = scrape(port)
        send(publisher, decided(request_id, "bob"))
        poll(lambda: state(factory, request_id) == State.APPROVED.value, 15, "APPROVED")
        poll(lambda: value(scrape(port), "jit_events_published_total", type="elevation.approved",
                           outcome="published") > value(before, "jit_events_published_total",
                                                        type="elevation.approved", outcome="published"),
             15, "elevation.approved counted as published")
        after = scrape(port)

    def moved(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    assert moved(pending, "jit_state_transitions_total", from_state="NEW", to_state="PENDING") == 1
    assert moved(pending, "jit_events_consumed_total", type="elevation.requested", outcome="ack") == 1
    assert moved(after, "jit_state_transitions_total", from_state="PENDING", to_state="APPROVED") == 1
    assert moved(after, "jit_events_consumed_total", type="elevation.decided", outcome="ack") == 1
    assert moved(after, "jit_event_handling_seconds_count", type="elevation.decided") == 1
    assert moved(after, "jit_events_published_total", type="elevation.approved", outcome="published") == 1
    assert ("jit_dead_letter_messages", (("queue", f"{settings.queue('approval')}.dead"),)) in after
    assert value(after, "jit_database_gauges_updated_timestamp_seconds") > 0
    for name, _labels in after:
        assert "request_id" not in dict(_labels), f"{name} is labelled by request id"


def test_a_rejected_event_is_counted_as_dead_lettered_under_a_bounded_label(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    settings = settings.model_copy(update={"metrics_port": 0})
    with approval_running(settings) as runtime, Publisher(settings) as publisher:
        port = probes_port(runtime)
        before = scrape(port)
        publisher.publish("elevation.requested", b"{not json", message_id="bad-1")
        poll(lambda: value(scrape(port), "jit_events_consumed_total", type="elevation.requested",
                           outcome="dead_lettered") == value(before, "jit_events_consumed_total",
                                                            type="elevation.requested", outcome="dead_lettered") + 1,
             15, "the poison message counted")


def test_readyz_fails_while_the_database_is_unreachable_and_recovers(settings: Settings, tmp_path: Path) -> None:
    """The database directory does not exist yet (SQLite cannot open the file): not ready, alive; then it is."""
    later = tmp_path / "later"
    url = f"sqlite:///{later / 'jit.db'}"
    settings = settings.model_copy(update={"metrics_port": 0, "database_url": url})
    with approval_running(settings) as runtime:
        port = probes_port(runtime)
        poll(lambda: "ok broker: connected, consuming" in get(port, "/readyz")[1], 15, "consuming")
        status, body = get(port, "/readyz")
        assert status == 503
        assert "FAIL database: not reachable or no schema (OperationalError)" in body
        status, body = get(port, "/healthz")
        assert status == 200, "a database outage is not a reason to restart the process"
        assert "ok consumer: last beat" in body and "ok sweeper" in body
        later.mkdir()
        upgrade(url)
        poll(lambda: get(port, "/readyz")[0] == 200, 15, "/readyz 200 once the database is there")


def check(daemon: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = str(Path(sys.executable).with_name(f"jit-{daemon}"))
    return subprocess.run([script, "--check"], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_check_fails_when_a_credential_source_is_missing(settings: Settings, factory: sessionmaker[Session],
                                                         tmp_path: Path) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    env = settings_env(settings)
    env.pop(PASSWORD_ENV, None)
    for daemon in ("elevator", "reaper"):
        done = check(daemon, env)
        assert done.returncode == 1, done
        assert f"FAIL credentials: credential provider 'prov': variable {PASSWORD_ENV} is not set" in done.stderr
        assert "ok database" in done.stderr and "ok broker" in done.stderr
    approval = check("approval", env)
    assert approval.returncode == 0, approval  # jit-approval needs no WinRM password
    assert "credentials" not in approval.stdout
    done = check("reaper", {**env, PASSWORD_ENV: "s3cret"})
    assert done.returncode == 0, done
    assert "ok credentials: 1 credential provider(s) readable" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr


def test_check_fails_on_a_database_behind_the_code(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, FIRST_REVISION)
    done = check("approval", {**settings_env(settings), "JIT_DATABASE_URL": url})
    assert done.returncode == 1
    assert f"FAIL database: schema at revision {FIRST_REVISION}, this code needs" in done.stderr
    assert "run `jitctl db upgrade`" in done.stderr
