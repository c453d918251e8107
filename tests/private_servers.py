"""Servers of the test run's own, never the shared ones: a RabbitMQ node and a PostgreSQL instance, each in a
temporary directory on free ports, stopped by its own process id (group) and removable at will.

`RabbitNode` listens on plain amqp at `port` (override `listener_lines` for TLS: tests/tls_servers.py) and
has its own node name and Erlang cookie (its own HOME), so `ctl("stop_app")` reaches this node only.
`PostgresInstance` is an `initdb` cluster (trust auth unless `hba` says otherwise); `restart()` keeps its data
and port. As root, PostgreSQL runs as the `postgres` OS user (initdb refuses root), so its directory must not
be under a 0700 parent of root's (pass one from `tempfile.mkdtemp`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# Not /usr/sbin/rabbitmqctl: as root that wrapper runs as the rabbitmq user with its HOME, hence its cookie.
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, seconds: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:g} s: "
                       f"{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")


def stop_group(proc: subprocess.Popen[bytes], seconds: float = 30, sig: int = signal.SIGTERM) -> None:
    """Stop a server we started, by its own process group (start_new_session), never by name."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@dataclass
class RabbitNode:
    """A RabbitMQ node of the run's own (default user guest/guest, vhost /)."""

    directory: Path
    port: int = 0
    node: str = ""
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cookie: str = ""  # the nodes of one cluster share it (tests/rabbitmq_cluster.py); empty: a cookie of its own

    def listener_lines(self) -> list[str]:
        return [f"listeners.tcp.default = 127.0.0.1:{self.port}", "loopback_users = none"]

    def node_port(self) -> int:
        """RABBITMQ_NODE_PORT: the plain listener's port (a TLS-only node gives an unused one)."""
        return self.port

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self) -> RabbitNode:
        """Start the node; after `stop()`, start it again with the same name, ports, cookie and data."""
        if not self.env:
            self._prepare()
        log = self.directory / "stdout.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([RABBITMQ_SERVER], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.directory)
        wait_port(self.port, 90, self.proc, log)
        return self

    def _prepare(self) -> None:
        self.port, dist = free_port(), free_port()
        self.node = self.node or f"jit-test-{uuid.uuid4().hex[:8]}@localhost"
        home = self.directory / "home"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(self.cookie or uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.directory / "enabled_plugins").write_text("[].\n")
        conf = self.directory / "rabbitmq.conf"
        conf.write_text("\n".join([*self.listener_lines(), "", ""]))
        self.env = {**os.environ, "HOME": str(home), "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_NODE_PORT": str(self.node_port()), "RABBITMQ_DIST_PORT": str(dist),
                    "RABBITMQ_CONFIG_FILE": str(conf), "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(self.directory / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
                    "RABBITMQ_PID_FILE": str(self.directory / "pid"),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config")}

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """rabbitmqctl against this node only (its name, its cookie)."""
        done = subprocess.run([RABBITMQCTL, "-q", "-n", self.node, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=True)
        return done.stdout

    def restart_app(self) -> dict[str, float]:
        """Stop and start the RabbitMQ application (the Erlang node stays): every client connection drops.
        Returns the seconds each step took."""
        took = {}
        for step in ("stop_app", "start_app", "await_startup"):
            started = time.monotonic()
            self.ctl(step, timeout=600)  # a loaded machine stops the application in minutes, not seconds
            took[step] = round(time.monotonic() - started, 1)
        return took

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)


@dataclass
class PostgresInstance:
    """A PostgreSQL instance of the run's own on 127.0.0.1:`port`, superuser `postgres`."""

    directory: Path
    hba: str = "local all all trust\nhost all all 127.0.0.1/32 trust\n"
    options: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _chown(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in paths:
                os.chown(path, owner.pw_uid, owner.pw_gid)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresInstance:
        if not self.port:
            self.port = free_port()
            self._chown(self.directory)
            subprocess.run([*self._as_owner(), shutil.which("initdb") or "initdb", "-D", str(self.data), "-U",
                            "postgres", "--auth=trust", "--no-sync"], check=True, capture_output=True, timeout=120)
            (self.data / "pg_hba.conf").write_text(self.hba)
        log = self.directory / "server.log"
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}", "-c",
                   f"unix_socket_directories={self.directory}", "-c", "fsync=off", *self.options]
        postgres = Path(shutil.which("initdb") or "initdb").resolve().parent / "postgres"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([*self._as_owner(), str(postgres), "-D", str(self.data), *options],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, 60, self.proc, log)
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open client connections are cut, as a crash or failover would."""
        if self.proc is not None:
            stop_group(self.proc, sig=signal.SIGINT)

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()
