"""A RabbitMQ cluster of the test run's own on this machine: three `RabbitNode`s (tests/private_servers.py) with
distinct node names and ports and one Erlang cookie, joined with `rabbitmqctl join_cluster`. Never the shared node.

`amqp_url` is the setting the daemons get: every node's URL, separated by commas. `stop_node` / `start_node`
take one node down (its Erlang VM stops, as a crashed or rebooted machine would) and bring it back with its data,
so it rejoins the cluster and its quorum queue replicas catch up.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.private_servers import RabbitNode


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

    def start(self) -> RabbitCluster:
        """The first node, then the others together, each joining the first's cluster as it boots."""
        cookie, tag = uuid.uuid4().hex.upper(), uuid.uuid4().hex[:6]
        first = f"jitc1-{tag}@localhost"
        self.nodes = [ClusterNode(self.directory / f"node{i}", node=f"jitc{i}-{tag}@localhost", cookie=cookie,
                                  seed=first if i > 1 else "") for i in range(1, self.size + 1)]
        try:
            self.nodes[0].start()
            with ThreadPoolExecutor(self.size) as pool:  # a node's boot is mostly waiting: start them together
                list(pool.map(RabbitNode.start, self.nodes[1:]))
            self.nodes[0].ctl("await_online_nodes", str(self.size))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def amqp_url(self) -> str:
        return ",".join(node.amqp_url for node in self.nodes)

    def up(self) -> list[RabbitNode]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def queue_members(self) -> dict[str, tuple[set[str], set[str]]]:
        """Per queue of the default vhost: (members, online members) of its quorum replicas."""
        rows = json.loads(self.up()[0].ctl("list_queues", "name", "type", "members", "online", "--formatter", "json"))
        return {row["name"]: (set(row["members"]), set(row["online"])) for row in rows if row["type"] == "quorum"}

    def stop_node(self, node: RabbitNode) -> None:
        node.stop()

    def start_node(self, node: RabbitNode, seconds: float = 120) -> None:
        """Start a stopped node again; return once every quorum queue has all its replicas online."""
        node.start()  # returns once its AMQP listener is up: booted, back in the cluster
        deadline = time.monotonic() + seconds
        while not all(online == members for members, online in self.queue_members().values()):
            if time.monotonic() > deadline:
                raise AssertionError(f"quorum replicas not all online {seconds:g} s after {node.node} started")
            time.sleep(0.5)

    def stop(self) -> None:
        with ThreadPoolExecutor(self.size) as pool:
            list(pool.map(RabbitNode.stop, self.nodes))
