"""One simulated Windows host on the network: WS-Man over HTTP(S), Basic and NTLM, with runtime controls.

``SimulatedHost(...).start()`` listens on ``address:port`` (port 0: an ephemeral port, kept across
``stop()``/``start()`` and ``down_for()``). HTTP/1.1 keep-alive and TCP_NODELAY, because NTLM
authenticates a TCP connection and Nagle costs ~40 ms a request. Shells live on the server until
Delete (as on Windows, where a leaked shell counts against MaxShellsPerUser).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import soap
from .commands import execute
from .faults import FaultPlan, FaultRule
from .host import WindowsHost
from .ntlm import CONTENT_TYPE as ENCRYPTED_CONTENT_TYPE
from .ntlm import NtlmAcceptor, write_user_file
from .tls import CertFiles, make_certificates

SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, sim: SimulatedHost) -> None:
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__((sim.address, sim.port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.sim.ssl_context is not None:
            try:
                request.settimeout(10)
                request = self.sim.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ssl.SSLError):
                return
        with self.conn_lock:
            self.connections.add(request)
        try:
            self.RequestHandlerClass(request, client_address, self)  # type: ignore[arg-type]
        finally:
            with self.conn_lock:
                self.connections.discard(request)
            if isinstance(request, ssl.SSLSocket):
                request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections cut by stop()/drop are expected: stay quiet."""

    def cut_connections(self) -> None:
        with self.conn_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120
    server: _Server

    ntlm: NtlmAcceptor | None = None
    ntlm_user: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the command log is the record."""

    def _reply(self, status: int, body: bytes = b"", content_type: str | None = None,
               headers: tuple[tuple[str, str], ...] = (), encrypt: bool = False) -> None:
        if encrypt and self.ntlm is not None and self.ntlm.complete:
            body = self.ntlm.wrap(body)
            content_type = ENCRYPTED_CONTENT_TYPE
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _challenge(self, token: str | None = None, scheme: str = "Negotiate") -> None:
        sim = self.server.sim
        headers = []
        if token is not None:
            headers.append(("WWW-Authenticate", f"{scheme} {token}"))
        else:
            if "ntlm" in sim.auth:
                headers.append(("WWW-Authenticate", "Negotiate"))
            if "basic" in sim.auth:
                headers.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
        self._reply(401, headers=tuple(headers))

    def _reject(self) -> None:
        """401 with no scheme to negotiate: the client reports bad credentials instead of retrying."""
        self.ntlm, self.ntlm_user = None, None
        self._reply(401, headers=(("WWW-Authenticate", 'Basic realm="WSMAN"'),))

    def _authenticate(self) -> str | None:
        sim = self.server.sim
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic" and "basic" in sim.auth:
            self.ntlm, self.ntlm_user = None, None
            try:
                username, _, password = base64.b64decode(token).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                username, password = "", ""
            user = sim.check_password(username, password)
            if user is None:
                self._challenge()
            return user
        if scheme.lower() in ("negotiate", "ntlm") and "ntlm" in sim.auth:
            if self.ntlm is None or self.ntlm.complete:
                self.ntlm, self.ntlm_user = NtlmAcceptor(sim.ntlm_user_file, sim.cert_der), None
            try:
                answer = self.ntlm.step(token.strip())
            except Exception:  # any bad token or wrong password: refuse, as Windows does
                self._reject()
                return None
            if not self.ntlm.complete:
                self._challenge(answer, scheme)
                return None
            user = sim.known_user(self.ntlm.user)
            if user is None or sim.credentials_rejected:
                self._reject()
                return None
            self.ntlm_user = user
            return user
        if self.ntlm_user is not None:
            return self.ntlm_user
        self._challenge()
        return None

    def do_POST(self) -> None:
        sim = self.server.sim
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        if self.path.split("?", 1)[0].lower() != "/wsman":
            self._reply(404, b"Not Found", "text/plain")
            return
        user = self._authenticate()
        if user is None:
            return
        if sim.credentials_rejected:
            self._reject()
            return
        encrypted = self.headers.get("Content-Type", "").startswith("multipart/encrypted")
        if encrypted:
            if self.ntlm is None or not self.ntlm.complete:
                self._reply(400, b"Bad Request", "text/plain")
                return
            body = self.ntlm.unwrap(body)
        if not body:  # pywinrm's empty POST that sets up the NTLM context
            self._reply(200)
            return
        try:
            req = soap.parse_request(body)
        except soap.BadRequest:
            self._reply(400, b"Bad Request", "text/plain")
            return
        delay, rule = sim.faults.take(req.action)
        if delay:
            time.sleep(delay)
        if rule is not None and self._apply(rule, req, encrypted):
            return
        status, answer = sim.dispatch(req, user, self.client_address[0])
        self._reply(status, answer, SOAP_CONTENT_TYPE, encrypt=encrypted)

    def _apply(self, rule: FaultRule, req: soap.Request, encrypted: bool) -> bool:
        sim = self.server.sim
        if rule.kind == "auth":
            self._reject()
        elif rule.kind == "http500":
            self._reply(rule.status, b"<html><body>Internal Server Error</body></html>", "text/html")
        elif rule.kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif rule.kind == "wsman":
            fault = soap.FAULTS[rule.fault]
            answer = soap.fault_response(req.message_id, fault, sim.address, sim.max_shells_per_user)
            self._reply(500, answer, SOAP_CONTENT_TYPE, encrypt=encrypted)
        else:
            return False
        return True


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
        self.credentials_rejected = False
        self._shells: dict[str, _Shell] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._restart_timer: threading.Timer | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="jit-winrm-sim-")
        self.ntlm_user_file = write_user_file(self.users, (domain, computer_name))
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
            server = _Server(self)
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
                if sum(1 for s in self._shells.values() if s.owner == user) >= self.max_shells_per_user:
                    return self._fault(req, "Quota")
                shell = _Shell(soap.new_id(), user, dict(req.env))
                self._shells[shell.id] = shell
            return 200, soap.create_response(req, shell.id, self.url, user.split("\\")[-1], client_ip)
        with self._lock:
            shell_or_none = self._shells.get(req.shell_id or "")
        if shell_or_none is None:
            return self._fault(req, "InvalidSelectors")
        shell = shell_or_none
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

    def _command(self, req: soap.Request, shell: _Shell, user: str) -> tuple[int, bytes]:
        run = execute(self.host, user, req.command, req.arguments, shell.env)
        self.command_log.append(CommandRecord(
            time.time(), user, shell.id, req.command, req.arguments, run.script, run.script_name,
            dict(shell.env), run.result.rc, run.result.stdout, run.result.stderr))
        command = _Command(soap.new_id(), run.result.stdout.encode("utf-8"), run.result.stderr.encode("utf-8"),
                           run.result.rc, time.monotonic() + self.command_delay)
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

    # -- controls ----------------------------------------------------------------------------------
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
        return self.host.members(group_sid)

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
        })
        return snap

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "url": self.url, "https": self.https,
                "ca_file": self.ca_file, "computer_name": self.host.computer_name, "domain": self.domain}
