"""A vhost of the run's own built from deploy/rabbitmq/definitions.json by deploy/rabbitmq/load-definitions,
with distinct broker users (prefixed with the run, so concurrent runs on one broker never share one).

`guest` is also given full permissions there and no topic permissions: a broker user the daemons'
mapping does not name, which the broker lets write any routing key, so the daemons' own check is what
refuses it (the second line behind the topic permissions).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from shared import trust
from shared.settings import Settings
from tests.conftest import REPO, RUN_ID

LOADER = REPO / "deploy" / "rabbitmq" / "load-definitions"
PERSONS = ("bob-cli", "carol-cli")


def rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=60)


@dataclass(frozen=True)
class ShippedBroker:
    vhost: str
    prefix: str
    passwords: Path

    def user(self, name: str) -> str:
        return self.prefix + name

    def url(self, name: str) -> str:
        if name == "guest":
            return f"amqp://guest:guest@127.0.0.1:5672/{quote(self.vhost, safe='')}"
        user = self.user(name)
        password = (self.passwords / user).read_text().strip()
        return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:5672/{quote(self.vhost, safe='')}"

    def mapping(self) -> str:
        """The shipped mapping (JIT_PUBLISHERS=shipped) with this run's user names."""
        return trust.render({t: tuple(self.user(u) for u in users) for t, users in trust.SHIPPED.items()})

    def settings(self, component: str, database_url: str, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "amqp_url": self.url(component), "database_url": database_url, "publishers": self.mapping(),
            "queue_type": "quorum", "outbox_poll_seconds": 0.05, "sweep_interval_seconds": 0.2}
        return Settings(**(values | overrides))


@pytest.fixture(scope="session")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedBroker]:
    vhost, prefix = f"jit-test-{RUN_ID}-trust", f"jit-test-{RUN_ID}-"
    passwords = tmp_path_factory.mktemp("broker-passwords")
    args = [str(LOADER), "--passwords", str(passwords), "--generate", "--vhost", vhost, "--prefix", prefix]
    for person in PERSONS:
        args += ["--person", person]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    broker = ShippedBroker(vhost, prefix, passwords)
    try:
        yield broker
    finally:
        rabbitmqctl("delete_vhost", vhost, check=False)
        for name in (*trust.SHIPPED_USERS, *PERSONS):
            rabbitmqctl("delete_user", prefix + name, check=False)


def purge(broker: ShippedBroker) -> None:
    """Empty every queue of the vhost: tests share its (shipped) queue names."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(broker.url("guest")))
    channel = connection.channel()
    for name in ("approval", "elevator", "reaper", "journal", "approval.status"):
        channel.queue_purge(f"jit.{name}")
        if name in ("approval", "elevator", "reaper"):
            channel.queue_purge(f"jit.{name}.dead")
    connection.close()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
