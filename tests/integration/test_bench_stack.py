"""The daemon-level benchmark harness at a smoke size (no timing asserted): the real stack as processes runs
lifecycles end to end, each one elevated once and revoked once, at two PowerShell runs per lifecycle of an
account whose SID is known, and `stop` leaves no process, database or vhost behind."""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.pipeline import run as run_pipeline
from bench.stack import SERVER, Stack, drive
from shared.db.engine import make_engine

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]


def test_stack_runs_lifecycles_and_cleans_up(tmp_path: Path) -> None:
    stack = Stack(tmp_path, secrets=3)
    with stack:
        assert set(stack.pids) == {"winrm-sim", "approval", "elevator", "reaper"}
        first = drive(stack, 3, timeout=60)  # a burst: every account's first grant
        before = len(stack.sim_log())
        again = drive(stack, 3, rate=20.0, timeout=60)  # the same accounts again, their SIDs known
        scripts = collections.Counter(entry["script_name"] for entry in stack.sim_log()[before:])
        assert stack.settings is not None
        database = sa.make_url(stack.settings.database_url).database
    for lifecycle in first + again:
        assert {"requested", "approved", "elevated", "checked_in", "revoked"} <= set(lifecycle.times), lifecycle
        assert lifecycle.revoked["attempts"] == 1 and lifecycle.revoked["trigger"] == "service_closed"
    scripts.pop("list_members", None)  # the reaper's reconciler, on its own schedule
    assert scripts == {"elevate_known": 3, "revoke": 3}
    assert all(p.poll() is not None for p in stack.children.procs.values())
    admin = make_engine(SERVER)
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": database}).first() is None
    admin.dispose()
    vhosts = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, check=True).stdout
    assert stack.vhost not in vhosts.split()


def test_pipeline_bench_smoke(tmp_path: Path) -> None:
    """The pipeline benchmark at 2 lifecycles: the daemons with the in-memory WinRM port end every lifecycle, and
    the raw floor moves its events (no timing asserted)."""
    report = run_pipeline(2, tmp_path)
    for phase in ("first_grants", "known_accounts"):
        result = report["results"][phase]
        assert result["outcomes"] == {"revoked": 2, "failed": 0, "denied": 0, "open": 0}
        assert result["floor"]["events"] == 10 and result["revocations_retried"] == 0
