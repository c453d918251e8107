"""Issue 12, item 2: the three daemons against a three-node RabbitMQ cluster of the test's own
(tests/rabbitmq_cluster.py), JIT_AMQP_URL naming every node. While lifecycles flow (requested, approved by
policy, elevated on a simulated host, checked in, revoked), the node every daemon is connected to is stopped and
restarted, then the node they moved to is killed (SIGKILL) and restarted. Asserted: every lifecycle ends
REVOKED (no message lost); each account was added and removed once on the host, and each request audited and
announced REVOKED once (no duplicate effect); every daemon is the process it was, reconnected to another node by
itself; every quorum queue has a replica on each of the three nodes, all online again at the end.

Size: JIT_CLUSTER_LIFECYCLES (default 20) paced over JIT_CLUSTER_SECONDS (default 20), JIT_CLUSTER_REPLICAS
processes of each daemon (default 1). docs/cluster.md has the full command. The result is written by
tests/reliability_record.py as `cluster--n<lifecycles>-r<replicas>.json`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import OutboxEvent
from shared.routes import delete_all
from shared.settings import Settings
from shared.states import State
from shared.trust import broker_user, everyone_as
from tests.e2e.cluster_run import Daemons, Upstream
from tests.e2e.reaper_processes import confirmations, states
from tests.e2e.reaper_processes import sim as sim
from tests.factories import ADMINISTRATORS, HostSpec, seed_config
from tests.integration.test_elevator_sim import WARNING_FILTERS
from tests.rabbitmq_cluster import ExternalCluster, RabbitCluster
from tests.reliability_record import Record
from tests.support import poll
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow, pytest.mark.postgres,
              *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]
LIFECYCLES = int(os.environ.get("JIT_CLUSTER_LIFECYCLES") or 20)
SECONDS = float(os.environ.get("JIT_CLUSTER_SECONDS") or 20)
REPLICAS = int(os.environ.get("JIT_CLUSTER_REPLICAS") or 1)
FAULTS = {False: "RabbitMQ node of the daemons stopped, then started again",
          True: "RabbitMQ node of the daemons killed (SIGKILL of its VM), then started again"}
COMMAND = ("JIT_CLUSTER_LIFECYCLES={n} JIT_CLUSTER_SECONDS={s:g} JIT_CLUSTER_REPLICAS={r} "
           ".venv/bin/pytest -p no:cacheprovider tests/e2e/test_cluster_failover.py -q")


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster | ExternalCluster]:
    started = ExternalCluster.from_environment() or RabbitCluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


def cluster_settings(cluster: RabbitCluster | ExternalCluster, database_url: str) -> Settings:
    name = f"cluster-{uuid.uuid4().hex[:8]}"
    return Settings(
        amqp_url=cluster.amqp_url, database_url=database_url, exchange=f"{name}.events", queue_prefix=name,
        queue_type="quorum", sweep_interval_seconds=0.5, outbox_poll_seconds=0.1, retry_initial_seconds=0.2,
        retry_max_seconds=2.0, lease_seconds=5.0, shutdown_grace_seconds=10.0,
        publishers=everyone_as(broker_user(cluster.amqp_url)))


def fail_over(cluster: RabbitCluster | ExternalCluster, daemons: Daemons, *, crash: bool) -> tuple[float, float]:
    """Stop (or kill) the node the elevator's consumer is on; wait until every consumer is on another; start it
    again. Returns how long until every consumer was on another node, and how long the node was down."""
    address = daemons.ready_nodes("elevator-0")[0][-1]
    [victim] = [i for i, url in enumerate(cluster.urls) if f"{urlsplit(url).hostname}:{urlsplit(url).port}" == address]
    counts = daemons.ready_counts()
    stopped = time.monotonic()
    cluster.stop_node(victim, crash=crash)
    poll(lambda: daemons.on_node_other_than(address, counts), 90, f"every consumer off {address}")
    failover = time.monotonic() - stopped
    cluster.start_node(victim)
    return failover, time.monotonic() - stopped


def tally(values: Iterable[object]) -> str:
    """`1 (200 times)`, `REVOKED (198 times), FAILED (2 times)`: how many times each value came."""
    return ", ".join(f"{v} ({n} times)" for v, n in Counter(str(v) for v in values).most_common())


def ours(members: dict[str, tuple[set[str], set[str]]], settings: Settings) -> dict[str, tuple[set[str], set[str]]]:
    return {name: m for name, m in members.items() if name.startswith(f"{settings.queue_prefix}.")}


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_daemons_fail_over_while_nodes_stop_and_start(cluster: RabbitCluster | ExternalCluster, database_url: str,
                                                       factory: sessionmaker[Session], sim: SimulatedHost,
                                                       tmp_path: Path) -> None:
    record = Record("cluster", f"n{LIFECYCLES}-r{REPLICAS}",
                    command=COMMAND.format(n=LIFECYCLES, s=SECONDS, r=REPLICAS),
                    size={"lifecycles": LIFECYCLES, "nodes": cluster.size, "seconds": SECONDS, "replicas": REPLICAS})
    settings = cluster_settings(cluster, database_url)
    seed_config(factory, [HostSpec(sim.address, sim.port)], secrets_per_host=LIFECYCLES, approval_required=False)
    daemons = Daemons(settings, tmp_path, REPLICAS)
    try:
        poll(lambda: all(counts == [1] * len(counts) for counts in daemons.ready_counts().values()), 90,
             "every daemon consuming")
        replicas_before = ours(cluster.queue_members(), settings)
        upstream = Upstream(settings, factory, sim.address)
        ids = upstream.play(LIFECYCLES, SECONDS)
        time.sleep(min(2.0, SECONDS / 4))
        failovers = []  # (what, when, seconds until every consumer was on another node, seconds down)
        for crash in (False, isinstance(cluster, RabbitCluster)):  # a node run elsewhere is only stopped
            at = time.time()
            failovers.append((FAULTS[crash], at, *fail_over(cluster, daemons, crash=crash)))
        assert upstream.done.wait(240) and upstream.error is None, upstream.error
        final = poll(lambda: (found := states(factory, ids)) and all(
            s in (State.REVOKED, State.FAILED, State.DENIED) for s in found.values()) and found, 120,
            "every lifecycle final")
        alive = daemons.alive()
        replicas_after = poll(lambda: (m := ours(cluster.queue_members(), settings)) and all(
            len(online) == cluster.size for _, online in m.values()) and m, 60, "every quorum replica online")
        changes = Counter((c.op, c.member_sid) for c in sim.host.changes)
        audited = confirmations(factory, ids)
        with factory() as session:
            published = session.scalar(select(func.count()).select_from(OutboxEvent).where(
                OutboxEvent.published_at.is_not(None)))
    finally:
        codes = daemons.stop()
        if isinstance(cluster, ExternalCluster):
            delete_all(settings)
    accounts = [f"acct-0-{i}" for i in range(LIFECYCLES)]
    added = {a: changes[("add", sim.sid_of(a))] for a in accounts}
    removed = {a: changes[("remove", sim.sid_of(a))] for a in accounts}
    reconnects = {name: daemons.events(name, "amqp.connection.lost") for name in daemons.names}
    nodes_used = {name: sorted({n for nodes in daemons.ready_nodes(name) for n in nodes}) for name in daemons.names}
    revoked = [f"acct-0-{i.removeprefix('req-')}" for i, s in final.items() if s == State.REVOKED]
    checks = {
        # FAILED is final too: an elevation that could not be done (e.g. the database refused connections), the
        # account not left in the group. A lost message would leave its request APPROVED, ELEVATED or REVOKING.
        "every lifecycle final (no message lost)": (
            len(final) == LIFECYCLES and set(final.values()) <= {State.REVOKED, State.FAILED},
            f"{tally(final.values())} of {LIFECYCLES}"),
        "each account added at most once and removed as often; once each when REVOKED": (
            all(added[a] == removed[a] <= 1 for a in accounts) and all(added[a] == 1 for a in revoked),
            f"adds per account {tally(added.values())}; removes {tally(removed.values())}"),
        "each request's removal audited and announced once": (
            audited == {i: 1 for i in ids}, f"audit rows per request {tally(audited.values())}"),
        "no account left in the group": (sim.member_sids(ADMINISTRATORS) == set(), ""),
        "every daemon the same process throughout, reconnected by itself": (
            all(alive.values()) and all(n >= 2 for n in reconnects.values())
            and all(len(nodes) >= 2 for nodes in nodes_used.values()),
            f"{sum(alive.values())}/{len(alive)} processes alive; connection losses per process "
            f"{tally(reconnects.values())}; nodes reached per process {tally(len(n) for n in nodes_used.values())}"),
        "every quorum queue replicated on the three nodes": (
            bool(replicas_before) and all(len(members) == cluster.size for members, _ in replicas_before.values())
            and set(replicas_after) == set(replicas_before), f"{len(replicas_before)} quorum queues"),
        "SIGTERM: every daemon exits 0": (set(codes.values()) == {0}, f"exit codes {tally(codes.values())}"),
    }
    for what, at, failover, down in failovers:
        record.tried(what, kind="fault", at=[at], outcome=f"every consumer on another node after {failover:.1f} s, "
                     f"by itself; the node back after {down:.0f} s, its replicas caught up")
    for what, (ok, detail) in checks.items():
        record.checked(what, ok=ok, detail=detail)
    record.extra = {"failover_seconds": [round(f, 1) for _, _, f, _ in failovers],
                    "node_down_seconds": [round(d, 1) for _, _, _, d in failovers], "upstream_events": 2 * LIFECYCLES,
                    "upstream_publish_retries": upstream.retries, "daemon_events_published": published,
                    "winrm_commands": sim.counters.get("commands")}
    record.write()
    assert all(ok for ok, _ in checks.values()), {w: d for w, (ok, d) in checks.items() if not ok}
