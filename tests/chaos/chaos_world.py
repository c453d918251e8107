"""The chaos run's world: a private RabbitMQ node and PostgreSQL instance, three simulated hosts over NTLM, and
two replicas of every daemon as real processes, each of which can be SIGKILLed and started again.

Every incarnation of a daemon writes its own log (`<daemon>-<replica>.<n>.log`), so "the last restart is
alive and consuming" is read from the last file alone.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pika
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade
from shared.settings import Settings
from shared.trust import broker_user, everyone_as
from tests.conftest import settings_env
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, seed_config
from tests.private_servers import PostgresInstance, RabbitNode
from winrm_sim import SimulatedHost

BIN = Path(sys.executable).parent
DAEMONS = ("approval", "elevator", "reaper")
REPLICAS = 2
HOST_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
SVC, PASSWORD = "svc-jit", "Chaos-Pw-3Lm8Qz"
SECRETS_PER_HOST = 4  # sec-h-0..2 are granted; sec-h-3 is only ever denied
STANDING_SECRET = 2  # acct-h-2 is an administrator before the run: a standing membership every grant must keep
READY = "amqp.consumer.ready"


def settings_for(amqp_url: str, database_url: str) -> Settings:
    return Settings(
        amqp_url=amqp_url, database_url=database_url, exchange="chaos.events", queue_prefix="chaos",
        sweep_interval_seconds=0.5, outbox_poll_seconds=0.1, retry_initial_seconds=0.2, retry_max_seconds=2.0,
        retry_in_process_seconds=3.0, winrm_operation_timeout_seconds=4, winrm_read_timeout_seconds=6,
        winrm_deadline_seconds=15.0, lease_seconds=5.0, elevation_retry_seconds=10.0, shutdown_grace_seconds=10.0,
        reconcile_interval_seconds=5.0, publishers=everyone_as(broker_user(amqp_url)))


@dataclass
class Slot:
    """One replica of one daemon: its current process and how many times it was started."""

    name: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log: Path | None = None
    out: IO[bytes] | None = field(default=None, repr=False)


class Daemons:
    def __init__(self, settings: Settings, folder: Path) -> None:
        self.env = {**settings_env(settings), PASSWORD_ENV: PASSWORD}
        self.folder = folder
        self.slots = [Slot(f"{d}-{r}") for d in DAEMONS for r in range(REPLICAS)]

    def start(self, slot: Slot) -> None:
        if slot.out is not None:
            slot.out.close()
        slot.log = self.folder / f"{slot.name}.{slot.starts}.log"
        slot.out = slot.log.open("wb")
        slot.proc = subprocess.Popen([str(BIN / f"jit-{slot.name.rsplit('-', 1)[0]}")], env=self.env,
                                     stdout=slot.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        slot.starts += 1

    def start_all(self) -> None:
        for slot in self.slots:
            self.start(slot)

    def kill_and_restart(self, rng: random.Random) -> str | None:
        """SIGKILL a random replica that is up and consuming, and start it again; None when none is (a replica
        still starting is left alone: on a loaded machine, killing those turns into a restart storm)."""
        ready = [slot for slot in self.slots if self.consuming(slot)]
        if not ready:
            return None
        slot = rng.choice(ready)
        assert slot.proc is not None
        slot.proc.send_signal(signal.SIGKILL)
        slot.proc.wait(10)
        self.start(slot)
        return slot.name

    def consuming(self, slot: Slot) -> bool:
        return slot.proc is not None and slot.proc.poll() is None and slot.log is not None \
            and READY in slot.log.read_text(errors="replace")

    def stop_all(self) -> dict[str, int | None]:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.terminate()
        codes = {}
        for slot in self.slots:
            if slot.proc is not None:
                try:
                    slot.proc.wait(40)
                except subprocess.TimeoutExpired:
                    slot.proc.kill()
                    slot.proc.wait(10)
                codes[slot.name] = slot.proc.returncode
            if slot.out is not None:
                slot.out.close()
        return codes


class World:
    """Everything the run starts; `close()` stops all of it (by process id) whatever state it is in."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="jit-chaos-"))
        self.folder.chmod(0o755)  # the postgres OS user must reach its directory below
        self.rabbit = RabbitNode(self.folder / "rabbitmq")
        (self.folder / "postgres").mkdir()
        self.postgres = PostgresInstance(self.folder / "postgres")
        self.hosts: list[SimulatedHost] = []
        self.daemons: Daemons | None = None
        self.factory: sessionmaker[Session] | None = None
        self.standing: dict[str, set[str]] = {}
        self.denied_only: set[tuple[str, str]] = set()  # (host, SID) of accounts only ever denied
        self.passed = False  # the folder (logs, data) is kept for a look unless the run passed

    def start(self) -> Settings:
        self.rabbit.start()
        self.postgres.start()
        admin = make_engine(self.postgres.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql('CREATE DATABASE "jit"')
        admin.dispose()
        settings = settings_for(self.rabbit.amqp_url, self.postgres.url("jit"))
        upgrade(settings.database_url)
        self.factory = session_factory(make_engine(settings.database_url, pool_pre_ping=True))
        self.hosts = [SimulatedHost(address, users={SVC: PASSWORD}, auth=("ntlm",), computer_name=f"WIN-CHAOS{i}")
                      .start() for i, address in enumerate(HOST_ADDRESSES)]
        seed_config(self.factory, [HostSpec(h.address, h.port, transport="ntlm") for h in self.hosts],
                    username=f"CORP\\{SVC}", secrets_per_host=SECRETS_PER_HOST)
        for h, host in enumerate(self.hosts):
            host.seed_member(ADMINISTRATORS, f"acct-{h}-{STANDING_SECRET}")
            self.standing[host.address] = host.member_sids(ADMINISTRATORS)
            self.denied_only.add((host.address, host.sid_of(f"acct-{h}-{SECRETS_PER_HOST - 1}")))
        self.daemons = Daemons(settings, self.folder / "logs")
        (self.folder / "logs").mkdir()
        self.daemons.start_all()
        wait_consuming(settings, timeout=120)
        return settings

    def close(self) -> dict[str, int | None]:
        codes = self.daemons.stop_all() if self.daemons else {}
        for host in self.hosts:
            host.close()
        if self.factory is not None:
            self.factory.kw["bind"].dispose()
        self.postgres.stop()
        self.rabbit.stop()
        if self.passed:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            print(f"\nchaos: kept {self.folder} (daemon logs in logs/)")
        return codes


def wait_consuming(settings: Settings, timeout: float) -> None:
    """Every daemon queue has REPLICAS consumers (so nothing published from now on is unroutable)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with pika.BlockingConnection(pika.URLParameters(settings.amqp_url)) as conn:
                counts = [conn.channel().queue_declare(settings.queue(d), passive=True).method.consumer_count
                          for d in DAEMONS]
            if all(c >= REPLICAS for c in counts):
                return
        except pika.exceptions.AMQPError:
            counts = []
        if time.monotonic() > deadline:
            raise AssertionError(f"daemons not consuming after {timeout} s: {counts}")
        time.sleep(0.5)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)
