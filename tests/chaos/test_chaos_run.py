"""The chaos run (issue 12, item 1): mixed lifecycles across three simulated hosts with two replicas of every
daemon, while a driver SIGKILLs daemons, restarts the RabbitMQ application and PostgreSQL, makes a host slow
and takes another down. Then, once everything settled, the invariants of docs/reliability.md are asserted.

Size (env): JIT_CHAOS_LIFECYCLES (default 12, the CI size), JIT_CHAOS_SECONDS (span of the scheduled faults,
default 30), JIT_CHAOS_HOST_DOWN_SECONDS (default 6), JIT_CHAOS_CONCURRENCY (stories in flight, default 6).
The full size, documented in docs/reliability.md:

    JIT_CHAOS_LIFECYCLES=300 JIT_CHAOS_SECONDS=240 JIT_CHAOS_HOST_DOWN_SECONDS=30 \
        .venv/bin/pytest -p no:cacheprovider -m chaos tests/chaos -q

The broker and the database are private ones this test starts (tests/private_servers.py), never the shared
ones. The result is written by tests/reliability_record.py as `chaos--<size>.json`.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from shared.amqp.publisher import Publisher
from tests.chaos import chaos_checks as checks
from tests.chaos.chaos_faults import Driver, Plan
from tests.chaos.chaos_stories import STORIES, Upstream, play
from tests.chaos.chaos_world import SECRETS_PER_HOST, World, env_int
from tests.integration.test_elevator_sim import WARNING_FILTERS
from tests.reliability_record import Record

# Its own waits are bounded (stories, settling); the suite-wide 300 s would cut a CI-size run on a loaded machine.
pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(3600),
              *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]
COMMAND = ("JIT_CHAOS_LIFECYCLES={lifecycles} JIT_CHAOS_SECONDS={seconds} JIT_CHAOS_HOST_DOWN_SECONDS={down} "
           ".venv/bin/pytest -p no:cacheprovider -m chaos tests/chaos -q")


@pytest.fixture
def world() -> Iterator[World]:
    started = World()
    try:
        yield started
    finally:
        started.close()


def test_lifecycles_under_chaos_leave_every_group_explained(world: World) -> None:
    lifecycles = env_int("JIT_CHAOS_LIFECYCLES", 12)
    seconds = env_int("JIT_CHAOS_SECONDS", 30)
    down = env_int("JIT_CHAOS_HOST_DOWN_SECONDS", 6)
    concurrency = env_int("JIT_CHAOS_CONCURRENCY", 6)
    size = {"lifecycles": lifecycles, "fault_span_seconds": seconds, "host_down_seconds": down,
            "concurrency": concurrency, "hosts": 3, "replicas_per_daemon": 2}
    record = Record("chaos", "full" if lifecycles >= 200 else "ci",
                    command=COMMAND.format(lifecycles=lifecycles, seconds=seconds, down=down), size=size)
    settings = world.start()
    assert world.factory is not None and world.daemons is not None
    engine = sa.create_engine(world.postgres.url("jit"), pool_pre_ping=True)

    def state_of(request_id: str) -> str:
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text("SELECT state FROM requests WHERE id = :id"),
                                    {"id": request_id}).scalar() or "-"
        except sa.exc.OperationalError:  # PostgreSQL restarting: upstream just looks again later
            return "-"

    rng = random.Random(7)
    plan = [(STORIES[i % len(STORIES)], rng.randrange(3), rng.randrange(SECRETS_PER_HOST - 1))
            for i in range(lifecycles)]
    made: dict[str, list[str]] = {story: [] for story in STORIES}
    lock = threading.Lock()
    driver = Driver(world, Plan(seconds=seconds, kill_every=4.0, host_down_seconds=down, slow_command_seconds=2.0),
                    record)
    with Publisher(settings, connection_attempts=10) as publisher:
        up = Upstream(publisher, state_of, [h.address for h in world.hosts], expire_seconds=8)

        def one(item: tuple[str, int, int]) -> None:
            ids = play(item[0], up, item[1], item[2])
            with lock:
                made[item[0]].extend(ids)

        driver.start()
        pool = ThreadPoolExecutor(concurrency)
        try:
            list(pool.map(one, plan))
        finally:  # on an interrupt too: the stories not started yet are dropped
            pool.shutdown(cancel_futures=True)
        while not driver.scheduled_done() and driver.is_alive():
            time.sleep(0.5)
        driver.stop()
        record.extra["publishes_retried_by_upstream"] = up.retried

    request_ids = [r for ids in made.values() for r in ids]
    deadline = time.monotonic() + max(180.0, lifecycles * 0.6)
    while time.monotonic() < deadline and not checks.all_final(world.factory, request_ids)[0]:
        time.sleep(1)
    settled = time.monotonic()
    while time.monotonic() < settled + 120 and not checks.groups_explained(
            world.factory, world.hosts, world.standing)[0]:
        time.sleep(1)  # a removal may still be in its backoff after the last fault

    consuming = time.monotonic() + 90  # a replica killed last may still be importing: give it time, no help
    while time.monotonic() < consuming and not checks.no_crash_loop(world.daemons)[0]:
        time.sleep(1)
    results = {
        "no account in any group that the ledger does not explain":
            checks.groups_explained(world.factory, world.hosts, world.standing),
        "every request final": checks.all_final(world.factory, request_ids),
        "no add ever sent for a request that was not approved":
            checks.adds_only_for_approved(world.factory, world.hosts, world.denied_only),
        "no request REVOKED twice or without its removal_confirmed audit row":
            checks.revoked_once_with_audit(world.factory, request_ids),
        "no daemon left crash-looping (each last start alive and consuming)": checks.no_crash_loop(world.daemons),
    }
    results["the driver injected every fault"] = (driver.error is None, repr(driver.error) if driver.error else
                                                  "every scheduled fault done")
    for what, (ok, detail) in results.items():
        record.checked(what, ok=ok, detail=detail)
    with world.factory() as s:
        finals: dict[str, str] = {row.id: row.state for row in s.execute(sa.text("SELECT id, state FROM requests"))}
    record.extra["lifecycles_per_story"] = {story: len(ids) for story, ids in made.items()}
    record.extra["final_states_per_story"] = {story: dict(Counter(finals.get(r, "missing") for r in ids))
                                              for story, ids in made.items()}
    record.extra["requests"] = len(request_ids)
    engine.dispose()
    path = record.write()
    print(f"\nchaos result: {path}")
    failed = {what: detail for what, (ok, detail) in results.items() if not ok}
    assert not failed, failed
    assert all(s == "DENIED" for s in record.extra["final_states_per_story"]["deny"]), record.extra
    world.passed = True
