"""The pieces of the cluster failover test (test_cluster_failover.py): the three daemons as processes whose JSON
logs say which node each consumer reached, and an upstream that plays lifecycles while nodes go away.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jitctl.demo.processes import Children, script
from shared.amqp.publisher import Publisher, PublishError
from shared.db.models import Request
from shared.events import Event, new_event
from shared.settings import Settings
from tests.conftest import settings_env
from tests.factories import PASSWORD_ENV
from tests.integration.approval_harness import requested
from tests.integration.winrm_fixtures import SVC_PASSWORD

DAEMONS = ("approval", "elevator", "reaper")
# The consumers a daemon runs: each logs one of these lines, with the node it reached, every time it (re)connects.
READY = {"approval": ("amqp.consumer.ready", "status.server.ready"), "elevator": ("amqp.consumer.ready",),
         "reaper": ("amqp.consumer.ready",)}


class Daemons:
    """`replicas` processes of each daemon, named `<daemon>-<n>`, each logging to `<name>.log`."""

    def __init__(self, settings: Settings, folder: Path, replicas: int = 1) -> None:
        self.children = Children(folder)
        self.folder = folder
        env = {**settings_env(settings), PASSWORD_ENV: SVC_PASSWORD}
        self.names = [f"{d}-{n}" for d in DAEMONS for n in range(replicas)]
        self.procs = {name: self.children.start(name, [script(f"jit-{kind(name)}")], env) for name in self.names}

    def lines(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in (self.folder / f"{name}.log").read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found

    def ready_nodes(self, name: str) -> list[list[str]]:
        """Per consumer of the process: the node of each of its ready lines, in order."""
        lines = self.lines(name)
        return [[str(x.get("node")) for x in lines if x.get("event") == event] for event in READY[kind(name)]]

    def on_node_other_than(self, node: str, counts: dict[str, list[int]]) -> bool:
        """Every consumer that was on `node` (its last ready line among the first `counts`) is now on another."""
        for name in self.names:
            for before, nodes in zip(counts[name], self.ready_nodes(name), strict=True):
                if nodes[before - 1] == node and nodes[-1] == node:
                    return False
        return True

    def ready_counts(self) -> dict[str, list[int]]:
        return {name: [len(nodes) for nodes in self.ready_nodes(name)] for name in self.names}

    def events(self, name: str, event: str) -> int:
        return sum(1 for x in self.lines(name) if x.get("event") == event)

    def alive(self) -> dict[str, bool]:
        return {d: p.poll() is None for d, p in self.procs.items()}

    def stop(self) -> dict[str, int | None]:
        self.children.stop_all(grace=40)
        return {d: p.returncode for d, p in self.procs.items()}


def kind(name: str) -> str:
    """`elevator` of `elevator-1`."""
    return name.rsplit("-", 1)[0]


@dataclass
class Upstream:
    """The connection workflow: requests, then a check-in once elevated; each publish retried until confirmed."""

    settings: Settings
    factory: sessionmaker[Session]
    host: str
    retries: int = 0
    handled: set[str] = field(default_factory=set)  # checked in, or ended without an elevation
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def publish(self, publisher: Publisher, event: Event) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                publisher.publish(event.type, event.to_json(), message_id=event.id)
                return
            except PublishError:  # the same event id again: the daemons' inbox keeps it to one effect
                self.retries += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def play(self, count: int, seconds: float) -> list[str]:
        ids = [f"req-{i}" for i in range(count)]
        thread = threading.Thread(target=self._run, args=(ids, seconds), name="upstream", daemon=True)
        thread.start()
        return ids

    def _run(self, ids: list[str], seconds: float) -> None:
        try:
            with Publisher(self.settings) as publisher:
                for i, request_id in enumerate(ids):
                    self.publish(publisher, requested(request_id, secret_id=f"sec-0-{i}", host=self.host,
                                                      checkout_id=f"co-{i}"))
                    self._check_in_elevated(publisher, ids)
                    time.sleep(seconds / len(ids))
                deadline = time.monotonic() + 180
                while len(self.handled) < len(ids) and time.monotonic() < deadline:
                    self._check_in_elevated(publisher, ids)
                    time.sleep(0.2)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def _check_in_elevated(self, publisher: Publisher, ids: list[str]) -> None:
        with self.factory() as session:
            rows = session.execute(select(Request.id, Request.state).where(
                Request.id.in_(ids), Request.state.in_(("ELEVATED", "FAILED", "DENIED")))).all()
        for request_id, state in sorted(rows):
            if request_id in self.handled:
                continue
            if state != "ELEVATED":  # ended without an elevation: nothing to check in (the test reports it)
                self.handled.add(request_id)
                continue
            i = request_id.removeprefix("req-")
            self.publish(publisher, new_event("secret.checked_in", {
                "checkout_id": f"co-{i}", "secret_id": f"sec-0-{i}", "reason": "service_closed"}, source="test"))
            self.handled.add(request_id)
