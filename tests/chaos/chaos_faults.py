"""The chaos driver: SIGKILLs a random daemon every few seconds and starts it again, and on a schedule restarts
the RabbitMQ application once, restarts PostgreSQL once, makes one host slow and takes another down.

Every fault is recorded with its time (`Record.tried`). The driver never helps a daemon: a killed one is
started again as an orchestrator would, and nothing else is done for it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.chaos.chaos_world import World
from tests.reliability_record import Record


@dataclass(frozen=True)
class Plan:
    seconds: float  # the scheduled faults happen within this span; kills go on until stop()
    kill_every: float
    host_down_seconds: float
    slow_command_seconds: float


class Driver(threading.Thread):
    def __init__(self, world: World, plan: Plan, record: Record, seed: int = 12) -> None:
        super().__init__(name="chaos-driver", daemon=True)
        self.world, self.plan, self.record = world, plan, record
        self.rng = random.Random(seed)
        self.done = threading.Event()
        self.error: BaseException | None = None
        slow, down = world.hosts[0], world.hosts[1]
        span = plan.seconds
        self.schedule: list[tuple[float, str, Callable[[], object]]] = sorted([
            (0.10 * span, "slow_on", lambda: slow.inject("delay", "Command", None,
                                                           seconds=plan.slow_command_seconds)),
            (0.30 * span, "rabbitmq", world.rabbit.restart_app),
            (0.45 * span, "slow_off", slow.clear_faults),
            (0.50 * span, "host_down", lambda: down.down_for(plan.host_down_seconds)),
            (0.65 * span, "postgres", lambda: world.postgres.restart(down_seconds=2.0)),
        ], key=lambda item: item[0])
        self.started_at = 0.0
        self.running: list[threading.Thread] = []

    def scheduled_done(self) -> bool:
        return not self.schedule and not any(t.is_alive() for t in self.running)

    def stop(self) -> None:
        self.done.set()
        self.join(120)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test, which asserts error is None
            self.error = exc

    def _run(self) -> None:
        self.started_at = time.monotonic()
        next_kill = self.started_at + self.plan.kill_every
        while not self.done.is_set():
            elapsed = time.monotonic() - self.started_at
            if self.schedule and self.schedule[0][0] <= elapsed:
                _, name, action = self.schedule[0]
                # On a thread of its own: daemons go on being killed while the broker or database restarts.
                thread = threading.Thread(target=self._scheduled, args=(name, action), daemon=True)
                thread.start()
                self.running.append(thread)
                self.schedule.pop(0)
            if time.monotonic() >= next_kill:
                killed = self.world.daemons.kill_and_restart(self.rng) if self.world.daemons else None
                if killed is not None:
                    self.record.tried(f"SIGKILL jit-{killed.rsplit('-', 1)[0]} (a consuming replica), started again",
                                      kind="fault", at=[time.time()], outcome="restarted by the driver")
                next_kill = time.monotonic() + self.plan.kill_every * self.rng.uniform(0.5, 1.5)
            self.done.wait(0.2)

    def _scheduled(self, name: str, action: Callable[[], object]) -> None:
        try:
            self._scheduled_fault(name, action)
        except BaseException as exc:
            self.error = exc

    def _scheduled_fault(self, name: str, action: Callable[[], object]) -> None:
        at = time.time()
        started = time.monotonic()
        steps = action()
        took = time.monotonic() - started
        rows = {
            "slow_on": (f"host {self.world.hosts[0].address} slow: {self.plan.slow_command_seconds:g} s per "
                        "WinRM Command (sim delay fault)", "slow until cleared"),
            "slow_off": None,
            "rabbitmq": ("RabbitMQ application restarted (rabbitmqctl stop_app/start_app, private node)",
                         f"broker back after {took:.1f} s ({steps})"),
            "host_down": (f"host {self.world.hosts[1].address} down for {self.plan.host_down_seconds:g} s "
                          "(connection refused)", "listening again after the span"),
            "postgres": ("PostgreSQL restarted (fast shutdown, 2 s down, private instance)",
                         f"database back after {took:.1f} s"),
        }
        row = rows[name]
        if row is not None:
            self.record.tried(row[0], kind="fault", at=[at], outcome=row[1])
        else:
            self.record.extra.setdefault("slow_host_cleared_at", at)
