"""One simulated Windows host: its WS-Man actions (Create, Command, Receive, Signal, Delete), shells, and
runtime controls. The HTTP side is :mod:`winrm_sim.wsman_http`.

``SimulatedHost(...).start()`` listens on ``address:port`` (port 0: an ephemeral port, kept across
``stop()``/``start()`` and ``down_for()``). Shells live on the server until Delete (as on Windows,
where a leaked shell counts against MaxShellsPerUser).
"""

from __future__ import annotations

import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import soap
from .commands import execute
from .faults import FaultPlan, FaultRule
from .host import WindowsHost
from .ntlm import write_user_file
from .tls import CertFiles, make_certificates
from .wsman_http import WSManServer


@dataclass(frozen=True)
class CommandRecord:
    """One command the host ran, for test assertions (``env`` is the shell environment it ran with)."""

    at: float
    user: str
    shell_id: str
    command: str
    arguments: str
    script: str | None
    script_name: str | None
    env: dict[str, str]
    rc: int
    stdout: str
    stderr: str


@dataclass
class _Command:
    id: str
    stdout: bytes
    stderr: bytes
    rc: int
    ready_at: float


@dataclass
class _Shell:
    id: str
    owner: str
    env: dict[str, str]
    commands: dict[str, _Command] = field(default_factory=dict)
    idle_timeout: float | None = None  # as Windows does: dropped once unused this long (a dead client's shell)
    last_used: float = field(default_factory=time.monotonic)


class SimulatedHost:
    """A simulated Windows host with a WinRM listener. Every control method is safe to call from any thread."""

    def __init__(
        self,
        address: str = "127.0.0.1",
        port: int = 0,
        *,
        https: bool = False,
        users: dict[str, str] | None = None,
        domain: str = "CORP",
        computer_name: str = "WIN-SIM01",
        auth: tuple[str, ...] = ("basic", "ntlm"),
        max_shells_per_user: int = 30,
        group_names: dict[str, str] | None = None,
        known_principals: set[str] | None = None,
        unknown_principals: set[str] | None = None,
        cert: CertFiles | None = None,
        ps_startup_ms: float = 0.0,
        latency_ms: float = 0.0,
    ) -> None:
        self.address = address
        self.port = port
        self.https = https
        self.users = dict(users if users is not None else {"svc-jit": "Passw0rd!"})
        self.domain = domain
        self.auth = tuple(a.lower() for a in auth)
        self.max_shells_per_user = max_shells_per_user
        self.host = WindowsHost(computer_name, group_names, known_principals, unknown_principals)
        self.faults = FaultPlan()
        self.command_log: list[CommandRecord] = []
        self.command_delay = 0.0
        # The cost model of a real host: each PowerShell run's output is ready ps_startup seconds after its
        # Command (powershell.exe starting); every HTTP answer leaves `latency` seconds after the request.
        self.ps_startup = ps_startup_ms / 1000.0
        self.latency = latency_ms / 1000.0
        self.counters = {"http_requests": 0, "shells_created": 0, "commands": 0, "powershell_runs": 0,
                         "ntlm_handshakes": 0}
        self.credentials_rejected = False
        self._shells: dict[str, _Shell] = {}
        self._lock = threading.Lock()
        self._server: WSManServer | None = None
        self._thread: threading.Thread | None = None
        self._restart_timer: threading.Timer | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="jit-winrm-sim-")
        self.ntlm_user_file = write_user_file(self.users, (domain, computer_name), self._tmp.name)
        self.cert: CertFiles | None = None
        self.ssl_context: ssl.SSLContext | None = None
        if https:
            self.cert = cert or make_certificates((address,), self._tmp.name)
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(self.cert.cert_file, self.cert.key_file)

    @property
    def cert_der(self) -> bytes | None:
        return self.cert.cert_der if self.cert else None

    @property
    def ca_file(self) -> str | None:
        """PEM file of the CA that signed this host's certificate: pin it as the client's CA."""
        return self.cert.ca_file if self.cert else None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if self.https else 'http'}://{host}:{self.port}/wsman"

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> SimulatedHost:
        with self._lock:
            if self._server is not None:
                return self
            server = WSManServer(self)
            self.port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"winrm-sim-{self.address}:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections: clients get connection refused."""
        with self._lock:
            server, self._server = self._server, None
            if self._restart_timer is not None:
                self._restart_timer.cancel()
                self._restart_timer = None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.cut_connections()

    def down_for(self, seconds: float) -> None:
        """Refuse connections for ``seconds``, then listen again on the same port."""
        self.stop()
        timer = threading.Timer(seconds, self.start)
        timer.daemon = True
        with self._lock:
            self._restart_timer = timer
        timer.start()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> SimulatedHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- authentication ----------------------------------------------------------------------------
    def known_user(self, principal: str) -> str | None:
        """``DOMAIN\\user`` for a configured account name (domain, computer name or none), else None."""
        domain, _, sam = principal.rpartition("\\")
        if "@" in sam and not domain:
            sam, _, domain = sam.partition("@")
        if domain and domain.upper() not in (self.domain.upper(), self.host.computer_name.upper(), "."):
            return None
        for name in self.users:
            if name.lower() == sam.lower():
                return f"{(domain or self.host.computer_name).upper()}\\{name}"
        return None

    def check_password(self, username: str, password: str) -> str | None:
        user = self.known_user(username)
        if user is None or self.users[user.split("\\")[1]] != password:
            return None
        return user

    # -- WS-Man actions ----------------------------------------------------------------------------
    def _fault(self, req: soap.Request, name: str) -> tuple[int, bytes]:
        return 500, soap.fault_response(req.message_id, soap.FAULTS[name], self.address, self.max_shells_per_user)

    def dispatch(self, req: soap.Request, user: str, client_ip: str) -> tuple[int, bytes]:
        if req.action == "Create":
            with self._lock:
                self._drop_idle_shells()
                if sum(1 for s in self._shells.values() if s.owner == user) >= self.max_shells_per_user:
                    return self._fault(req, "Quota")
                shell = _Shell(soap.new_id(), user, dict(req.env), idle_timeout=req.idle_timeout)
                self._shells[shell.id] = shell
                self.counters["shells_created"] += 1
            return 200, soap.create_response(req, shell.id, self.url, user.split("\\")[-1], client_ip)
        with self._lock:
            shell_or_none = self._shells.get(req.shell_id or "")
        if shell_or_none is None:
            return self._fault(req, "InvalidSelectors")
        shell = shell_or_none
        shell.last_used = time.monotonic()
        if req.action == "Command":
            return self._command(req, shell, user)
        if req.action == "Receive":
            return self._receive(req, shell)
        if req.action == "Signal":
            shell.commands.pop(req.command_id or "", None)
            return 200, soap.signal_response(req)
        if req.action == "Delete":
            with self._lock:
                self._shells.pop(shell.id, None)
            return 200, soap.delete_response(req)
        return self._fault(req, "ActionNotSupported")

    def _drop_idle_shells(self) -> None:
        """Shells unused for longer than their IdleTimeOut are gone (under self._lock)."""
        now = time.monotonic()
        for shell in list(self._shells.values()):
            if shell.idle_timeout is not None and now - shell.last_used > shell.idle_timeout:
                del self._shells[shell.id]

    def _command(self, req: soap.Request, shell: _Shell, user: str) -> tuple[int, bytes]:
        run = execute(self.host, user, req.command, req.arguments, shell.env)
        self.command_log.append(CommandRecord(
            time.time(), user, shell.id, req.command, req.arguments, run.script, run.script_name,
            dict(run.env if run.env is not None else shell.env), run.result.rc, run.result.stdout,
            run.result.stderr))
        startup = self.ps_startup if run.script is not None else 0.0
        self.count("commands")
        if run.script is not None:
            self.count("powershell_runs")
        command = _Command(soap.new_id(), run.result.stdout.encode("utf-8"), run.result.stderr.encode("utf-8"),
                           run.result.rc, time.monotonic() + self.command_delay + startup)
        shell.commands[command.id] = command
        return 200, soap.command_response(req, command.id)

    def _receive(self, req: soap.Request, shell: _Shell) -> tuple[int, bytes]:
        command = shell.commands.get(req.command_id or "")
        if command is None:
            return self._fault(req, "InvalidSelectors")
        remaining = command.ready_at - time.monotonic()
        if remaining > 0:
            wait = min(remaining, req.operation_timeout)
            time.sleep(wait)
            if wait < remaining:
                return self._fault(req, "TimedOut")
        return 200, soap.receive_response(req, command.id, command.stdout, command.stderr, command.rc)

    def count(self, name: str) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + 1

    # -- controls ----------------------------------------------------------------------------------
    def set_cost(self, *, ps_startup_ms: float | None = None, latency_ms: float | None = None) -> None:
        """The cost model: milliseconds a PowerShell run takes to start, and each HTTP answer's latency."""
        if ps_startup_ms is not None:
            self.ps_startup = ps_startup_ms / 1000.0
        if latency_ms is not None:
            self.latency = latency_ms / 1000.0

    def inject(self, kind: str, action: str = "*", count: int | None = 1, *, fault: str = "InternalError",
               seconds: float = 0.0, status: int = 500) -> FaultRule:
        """Add a fault rule (see :mod:`winrm_sim.faults`); ``count=None`` keeps it until clear_faults()."""
        if kind == "wsman" and fault not in soap.FAULTS:
            raise ValueError(f"fault must be one of {sorted(soap.FAULTS)}")
        return self.faults.add(FaultRule(kind, action, count, fault, seconds, status))

    def clear_faults(self) -> None:
        self.faults.clear()
        self.credentials_rejected = False
        self.command_delay = 0.0

    def reject_credentials(self, on: bool = True) -> None:
        self.credentials_rejected = on

    def set_command_delay(self, seconds: float) -> None:
        """Commands finish ``seconds`` after they start; Receive answers w:TimedOut until then."""
        self.command_delay = seconds

    def set_max_shells_per_user(self, n: int) -> None:
        self.max_shells_per_user = n

    def set_access_denied(self, on: bool = True) -> None:
        """The service account may connect but is not an administrator: the cmdlets answer AccessDenied."""
        self.host.service_is_admin = not on

    def set_unknown_principals(self, names: set[str] | list[str]) -> None:
        with self.host.lock:
            self.host.unknown_principals = {n.lower() for n in names}

    def seed_member(self, group_sid: str, member: str) -> str:
        return self.host.seed_member(group_sid, member)

    def unseed_member(self, group_sid: str, member: str) -> None:
        self.host.unseed_member(group_sid, member)

    def members(self, group_sid: str) -> set[str]:
        """The current names of the group's members (``COMPUTER\\name`` for local accounts)."""
        return self.host.members(group_sid)

    def member_sids(self, group_sid: str) -> set[str]:
        return self.host.member_sids(group_sid)

    def group_members(self, group_sid: str) -> list[dict[str, str]]:
        """The group's members with SIDs: ``[{"sid", "name", "class"}]`` (sorted by name)."""
        return self.host.group_members(group_sid)

    def sid_of(self, name: str) -> str:
        """The SID ``name`` resolves to on this host (a new account if Windows would accept the name)."""
        return self.host.sid_of(name)

    def rename_account(self, old_name: str, new_name: str) -> str:
        """Rename-LocalUser: same SID, new name (the old one stops resolving). Returns the SID."""
        return self.host.rename_account(old_name, new_name).sid

    def add_session(self, account: str, state: str = "Active") -> str:
        return str(self.host.add_session(account, state))

    def remove_session(self, session_id: str) -> bool:
        return self.host.logoff(int(session_id))

    def open_shells(self, user: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self._shells.values() if user is None or s.owner.lower() == user.lower())

    def close_all_shells(self) -> None:
        with self._lock:
            self._shells.clear()

    def state(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.host.snapshot()
        snap.update({
            "url": self.url, "running": self.running, "open_shells": self.open_shells(),
            "max_shells_per_user": self.max_shells_per_user, "command_delay": self.command_delay,
            "credentials_rejected": self.credentials_rejected, "access_denied": not self.host.service_is_admin,
            "faults": [r.to_dict() for r in self.faults.rules()], "commands_run": len(self.command_log),
            "counters": dict(self.counters), "ps_startup_ms": self.ps_startup * 1000.0,
            "latency_ms": self.latency * 1000.0,
        })
        return snap

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "url": self.url, "https": self.https,
                "ca_file": self.ca_file, "computer_name": self.host.computer_name, "domain": self.domain}
