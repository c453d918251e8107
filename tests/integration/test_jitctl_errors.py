"""No traceback anywhere a person types: every command with each bad input prints one line naming the problem
and exits with the documented code (2: usage or invalid input, nothing done; 1: a failure), and a read command
never creates a database file at a mistyped path. Each command runs as a process, as an operator runs it."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings
from shared.states import State
from tests.conftest import settings_env
from tests.factories import HostSpec, make_request, seed_config

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

COMMANDS = [
    ("requests",), ("audit",), ("status", "--secret", "s", "--user", "u"), ("db", "current"), ("db", "check"),
    ("revocations",), ("drift",), ("memberships",), ("approve", "req-1", "--as", "bob"),
    ("apply", "-f", "/dev/stdin"), ("diff", "-f", "/dev/stdin"),
]


def run(settings: Settings, tool: str, *args: str, stdin: str = "users: []\n",
        **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *args], env=settings_env(settings) | env, capture_output=True, text=True,
                          timeout=60, check=False, input=stdin)


def one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def test_bad_settings_are_one_line_naming_the_variable(settings: Settings, tmp_path: Path) -> None:
    cases = [
        ({"JIT_DATABASE_URL": "postgres://jit@127.0.0.1/jit"}, "JIT_DATABASE_URL", "postgresql+psycopg://"),
        ({"JIT_DATABASE_URL": "not a url at all"}, "JIT_DATABASE_URL", "sqlite:///PATH"),
        ({"JIT_DATABASE_URL": str(tmp_path / "jit.db")}, "JIT_DATABASE_URL", "not a database URL"),
        ({"JIT_AMQP_URL": "garbage"}, "JIT_AMQP_URL", "amqp://"),
        ({"JIT_WROKERS": "3"}, "JIT_WROKERS", "JIT_WORKERS"),
        ({"JIT_LOG_LEVEL": "verbose"}, "JIT_LOG_LEVEL", "'debug'"),
    ]
    for env, *words in cases:
        for command in COMMANDS:
            one_line(run(settings, "jitctl", *command, **env), 2, *words)
        for daemon in ("jit-approval", "jit-elevator", "jit-reaper"):
            one_line(run(settings, daemon, "--check", **env), 2, *words)


def test_databases_that_are_not_usable(settings: Settings, tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("these are my notes\n")
    missing = tmp_path / "typo" / "jti.db"
    for command in COMMANDS:
        # apply and diff read the file first: `users: []` alone is refused (it removes nothing without --prune,
        # but needs a database to plan): they too fail on the database, with exit 1.
        one_line(run(settings, "jitctl", *command, JIT_DATABASE_URL=f"sqlite:///{not_a_db}"), 1,
                 "not an SQLite database")
        one_line(run(settings, "jitctl", *command, JIT_DATABASE_URL=f"sqlite:///{missing}"), 1, "no database at")
        assert not missing.exists() and not missing.parent.exists()
    down = "postgresql+psycopg://jit@127.0.0.1:1/jit"
    one_line(run(settings, "jitctl", "requests", JIT_DATABASE_URL=down), 1, "127.0.0.1:1", "not usable")
    one_line(run(settings, "jitctl", "requests", JIT_DATABASE_URL=f"sqlite:///{not_a_db}"), 1,
             "not an SQLite database")
    one_line(run(settings, "jitctl", "requests", JIT_DATABASE_URL=f"sqlite:///{missing}"), 1, "no database at",
             "jitctl db upgrade")
    one_line(run(settings, "jit-elevator", "--check", JIT_DATABASE_URL=f"sqlite:///{missing}"), 1, "no database at")
    assert not missing.exists()


def test_bad_files_options_and_a_closed_pipe(settings: Settings, factory: sessionmaker[Session],
                                             tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("users:\n  - id: jos\xe9\n    kind: internal\n".encode("latin-1"))
    one_line(run(settings, "jitctl", "apply", "-f", str(latin1)), 2, "not UTF-8")
    one_line(run(settings, "jitctl", "apply", "-f", str(tmp_path / "nope.yaml")), 2, "cannot read")
    one_line(run(settings, "jitctl", "apply", "-f", str(tmp_path)), 2, "cannot read")
    one_line(run(settings, "jitctl", "requests", "--bogus"), 2, "unrecognized arguments: --bogus", "--help")
    one_line(run(settings, "jitctl", "requests", "--limit", "-5"), 2, "--limit")
    one_line(run(settings, "jitctl", "requests", "--since", "last tuesday"), 2, "is not a time")
    one_line(run(settings, "jitctl", "audit", "--cursor", "abc"), 2, "audit cursor")
    one_line(run(settings, "jitctl", "requests", "--state", "happy"), 2, "invalid choice")
    one_line(run(settings, "jitctl", "publish", "secret.checked_in", "--data", "[1]"), 2, "JSON object")
    one_line(run(settings, "jitctl"), 2, "required")
    one_line(run(settings, "jit-reaper", "--bogus"), 2, "unrecognized arguments")
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    for i in range(1500):
        make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.REVOKED, id=f"req-{i:05d}",
                     checkout_id=f"co-{i}")
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {BIN / 'jitctl'} requests --limit 0 | head -2"],
                           env=settings_env(settings), capture_output=True, text=True, timeout=60, check=False)
    assert piped.returncode == 0 and piped.stderr == "" and len(piped.stdout.splitlines()) == 2


def test_the_simulator_command_line(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line(run(settings, "jit-winrm-sim", "--host", f"127.0.0.1:{port}", "--control-port", "-1"), 1,
                 "Address already in use", f"127.0.0.1:{port}")
        one_line(run(settings, "jit-winrm-sim", "--host", "127.0.0.1:0", "--control-port", str(port)), 1,
                 "--control-port")
    one_line(run(settings, "jit-winrm-sim", "--host", "127.0.0.1:http"), 2, "--host", "PORT 0-65535")
    one_line(run(settings, "jit-winrm-sim", "--host", "127.0.0.1:99999"), 2, "--host")
    one_line(run(settings, "jit-winrm-sim", "--seed", "Administrators"), 2, "--seed", "SID=MEMBER")
    one_line(run(settings, "jit-winrm-sim", "--seed", "S-1-5-99=svc-jit", "--control-port", "-1"), 2,
             "no group S-1-5-99")
    one_line(run(settings, "jit-winrm-sim", "--host", "no-such-host.invalid", "--control-port", "-1"), 1,
             "cannot listen on no-such-host.invalid")
