"""`jitctl demo` as a newcomer runs it: a subprocess from a clean folder, on the local broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

pytestmark = pytest.mark.slow

JITCTL = str(Path(sys.executable).with_name("jitctl"))


def demo_env(amqp_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    if amqp_url:
        env["JIT_AMQP_URL"] = amqp_url
    return env


def test_the_demo_plays_every_story_and_leaves_no_account_elevated(tmp_path: Path, amqp_run_url: str) -> None:
    done = subprocess.run([JITCTL, "demo"], cwd=tmp_path, env=demo_env(amqp_run_url), capture_output=True,
                          text=True, timeout=240, check=False)
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}"
    finals = dict(re.findall(r"^\s+(req-\S+)\s+(\S+)\s+\S+", out.split("Final state of every request:")[1], re.M))
    assert finals == {"req-1-approved": "REVOKED", "req-2-denied": "DENIED", "req-3-expires": "REVOKED",
                      "req-4-host-down": "REVOKED"}
    membership = out.split("Group membership on each simulated host")[1]
    assert "LEFT ELEVATED" not in membership
    for account in ("web-admin", "db-admin", "web-report"):
        assert account not in membership
    for event in ("elevation.requested", "elevation.approved", "elevation.elevated", "elevation.denied",
                  "elevation.expired", "secret.checked_in", "elevation.revoked"):
        assert event in out, f"{event} missing from the timeline"
    assert "no account is left elevated" in out
    assert list(tmp_path.iterdir()) == [], "the demo left files in the folder it was started from"


def test_an_unreachable_broker_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    url = f"amqp://guest:guest@127.0.0.1:1/{quote('/', safe='')}"
    done = subprocess.run([JITCTL, "demo"], cwd=tmp_path, env=demo_env(url), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert "cannot reach RabbitMQ at amqp://guest:[redacted]@127.0.0.1:1/" in done.stderr
    assert "rabbitmq-server -detached" in done.stderr
    assert "Traceback" not in done.stderr
