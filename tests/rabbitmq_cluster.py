"""RabbitMQ clusters for the failover test (tests/e2e/test_cluster_failover.py), never the shared node.

`RabbitCluster`: three `RabbitNode`s of the test's own on this machine (tests/private_servers.py), distinct node
names and ports, one Erlang cookie; the second and third join the first's cluster as they boot. `ExternalCluster`:
a cluster run elsewhere, named by JIT_TEST_CLUSTER_URL, its nodes stopped and started by commands given.

`amqp_url` is the setting the daemons get: every node's URL, separated by commas. `stop_node` / `start_node`
take one node down (a private node's Erlang VM shuts down, or is SIGKILLed as in a crash) and bring it back with
its data; `start_node` returns once it rejoined and every quorum replica is online again.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.settings import node_urls
from tests.private_servers import RabbitNode, stop_group


@dataclass
class ClusterNode(RabbitNode):
    """A node that joins `seed`'s cluster as it boots (classic peer discovery): no stop_app/join_cluster/start_app
    round of CLI calls, which cost seconds each on a loaded machine."""

    seed: str = ""

    def listener_lines(self) -> list[str]:
        if not self.seed:
            return super().listener_lines()
        return [*super().listener_lines(), "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {self.seed}"]


@dataclass
class RabbitCluster:
    directory: Path
    size: int = 3
    nodes: list[RabbitNode] = field(default_factory=list)

    @property
    def amqp_url(self) -> str:
        return ",".join(self.urls)

    def start(self) -> RabbitCluster:
        """The first node, then the others together, each joining the first's cluster as it boots."""
        cookie, tag = uuid.uuid4().hex.upper(), uuid.uuid4().hex[:6]
        first = f"jitc1-{tag}@localhost"
        self.nodes = [ClusterNode(self.directory / f"node{i}", node=f"jitc{i}-{tag}@localhost", cookie=cookie,
                                  seed=first if i > 1 else "") for i in range(1, self.size + 1)]
        try:
            # The seed first, fully up: a node that joins one still booting can find its schema not yet upgraded
            # (schema_integrity_check_failed). Then the others together: a boot is mostly waiting.
            self.nodes[0].start()
            with ThreadPoolExecutor(self.size) as pool:
                list(pool.map(RabbitNode.start, self.nodes[1:]))
            self.nodes[0].ctl("await_online_nodes", str(self.size))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def urls(self) -> list[str]:
        return [node.amqp_url for node in self.nodes]

    def queue_members(self) -> dict[str, tuple[set[str], set[str]]]:
        up = [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]
        return quorum_members(up[0].ctl(*LIST_QUEUES, "/"))

    def stop_node(self, index: int, *, crash: bool = False) -> None:
        """Stop a node's VM (`crash`: SIGKILL it, no shutdown: its connections just break)."""
        node = self.nodes[index]
        if crash and node.proc is not None:
            stop_group(node.proc, sig=signal.SIGKILL)
        node.stop()

    def start_node(self, index: int) -> None:
        self.nodes[index].start()  # returns once its AMQP listener is up: booted, back in the cluster
        wait_replicas_online(self)

    def stop(self) -> None:
        with ThreadPoolExecutor(self.size) as pool:
            list(pool.map(RabbitNode.stop, self.nodes))


@dataclass
class ExternalCluster:
    """A cluster run elsewhere (docs/cluster.md): JIT_TEST_CLUSTER_URL names its nodes (URLs separated by commas);
    JIT_TEST_CLUSTER_STOP, JIT_TEST_CLUSTER_START and JIT_TEST_CLUSTER_CTL are the commands that stop a node, start
    it and run rabbitmqctl against it, each split like a shell line (no shell runs it), `{host}` and `{port}`
    replaced by the node URL's."""

    urls: list[str]
    commands: dict[str, list[str]]
    down: set[int] = field(default_factory=set)

    @classmethod
    def from_environment(cls) -> ExternalCluster | None:
        given = os.environ.get("JIT_TEST_CLUSTER_URL")
        if not given:
            return None
        commands = {what: shlex.split(os.environ.get(f"JIT_TEST_CLUSTER_{what.upper()}", ""))
                    for what in ("stop", "start", "ctl")}
        missing = [f"JIT_TEST_CLUSTER_{what.upper()}" for what, argv in commands.items() if not argv]
        if missing:
            raise RuntimeError(f"JIT_TEST_CLUSTER_URL is set: also set {', '.join(missing)} (docs/cluster.md)")
        return cls(node_urls(given), commands)

    @property
    def size(self) -> int:
        return len(self.urls)

    @property
    def amqp_url(self) -> str:
        return ",".join(self.urls)

    def _run(self, what: str, index: int, *args: str) -> str:
        node = urlsplit(self.urls[index])
        argv = [part.replace("{host}", node.hostname or "").replace("{port}", str(node.port or 5672))
                for part in self.commands[what]]
        return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=300, check=True).stdout

    def queue_members(self) -> dict[str, tuple[set[str], set[str]]]:
        up = next(i for i in range(self.size) if i not in self.down)
        return quorum_members(self._run("ctl", up, *LIST_QUEUES, unquote(urlsplit(self.urls[up]).path[1:]) or "/"))

    def stop_node(self, index: int, *, crash: bool = False) -> None:
        """`crash` is not told apart: the stop command is what can be done to a node run elsewhere."""
        self._run("stop", index)
        self.down.add(index)

    def start_node(self, index: int) -> None:
        self._run("start", index)
        self.down.discard(index)
        wait_replicas_online(self)

    def stop(self) -> None:
        for index in sorted(self.down):  # a node the test stopped is never left down
            self.start_node(index)


LIST_QUEUES = ("list_queues", "name", "type", "members", "online", "--formatter", "json", "-p")


def quorum_members(listed: str) -> dict[str, tuple[set[str], set[str]]]:
    """Per quorum queue in `rabbitmqctl list_queues` JSON: (its members, those online)."""
    return {row["name"]: (set(row["members"]), set(row["online"])) for row in json.loads(listed)
            if row["type"] == "quorum"}


def wait_replicas_online(cluster: RabbitCluster | ExternalCluster, seconds: float = 120) -> None:
    """Until every quorum queue has all its replicas online (a node that came back has caught up)."""
    deadline = time.monotonic() + seconds
    while not all(online == members for members, online in cluster.queue_members().values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"quorum replicas not all online {seconds:g} s after a node started")
        time.sleep(0.5)
