"""bench.procstats reads real figures: a child process holding memory, files and database sessions under a
daemon's application_name, and outbox rows of which some are published (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from bench.procstats import Sampler, growth
from shared.db.engine import transaction
from shared.db.models import OutboxEvent

HOLDER = """
import sys
from shared.db.engine import make_engine
ballast = bytearray(64 * 1024 * 1024)
files = [open("/dev/null") for _ in range(50)]
engine = make_engine(sys.argv[1], application_name="jit-elevator")
held = [engine.connect(), engine.connect()] if not sys.argv[1].startswith("sqlite") else []
print("ready", flush=True)
sys.stdin.read()
"""


def _outbox(factory: sessionmaker[Session], unsent: int, sent: int) -> None:
    now = datetime.now(UTC)
    with transaction(factory) as session:
        for i in range(unsent + sent):
            session.add(OutboxEvent(event_id=f"procstats-{i}", type="t", body=b"{}", created_at=now,
                                    published_at=now if i >= unsent else None))


def test_sampler_reads_a_real_process_and_database(database_url: str, factory: sessionmaker[Session]) -> None:
    _outbox(factory, unsent=3, sent=2)
    child = subprocess.Popen([sys.executable, "-c", HOLDER, database_url], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    sampler = Sampler({"elevator": child.pid}, database_url)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        sample = sampler.sample()
    finally:
        child.communicate("")
        sampler.close()
    assert sample.rss_kb["elevator"] >= 64 * 1024
    assert sample.fds["elevator"] >= 50
    if database_url.startswith("sqlite"):
        assert sample.db_connections is None
    else:
        assert sample.db_connections == {"elevator": 2}
    assert sample.outbox_backlog == 3
    assert sample.as_json()["rss_kb"] == sample.rss_kb


def test_growth() -> None:
    assert growth(200, 210) == 5.0
    assert growth(200, 190) == -5.0
    assert growth(0, 3) is None
