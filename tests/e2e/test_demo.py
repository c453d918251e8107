"""`jitctl demo` as a newcomer runs it: a subprocess from a clean folder, on the local broker."""

from __future__ import annotations

import os
import re
import signal
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


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path, amqp_run_url: str) -> None:
    # As from a terminal: SIGINT at its default. A pytest-xdist worker ignores SIGINT, and an ignored SIGINT
    # is inherited, so Python would not turn it into KeyboardInterrupt in the demo.
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    with subprocess.Popen([JITCTL, "demo"], cwd=tmp_path, env=demo_env(amqp_run_url), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint) as demo:
        assert demo.stdout is not None and demo.stderr is not None
        for line in demo.stdout:
            if "story 1" in line:
                break
        started = children_of(demo.pid)
        assert len(started) >= 4, f"expected the simulator and three daemons, found {started}"
        demo.send_signal(signal.SIGINT)  # as Ctrl-C sends
        assert demo.wait(timeout=60) == 130
        assert "interrupted" in demo.stderr.read()
    alive = [pid for pid in started if Path(f"/proc/{pid}").exists()
             and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]]
    assert alive == [], f"processes left behind: {alive}"
