"""The HTTP side of a simulated host: TLS per connection, Basic/NTLM auth, WinRM message encryption,
fault rules applied per request; the WS-Man actions themselves are SimulatedHost.dispatch.

Connections are HTTP/1.1 keep-alive with TCP_NODELAY: NTLM authenticates a TCP connection, and
Nagle plus delayed ACK would cost ~40 ms a request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from . import soap
from .faults import FaultRule
from .ntlm import CONTENT_TYPE as ENCRYPTED_CONTENT_TYPE
from .ntlm import NtlmAcceptor

if TYPE_CHECKING:
    from .server import SimulatedHost

SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"


class WSManServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, sim: SimulatedHost) -> None:
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__((sim.address, sim.port), WSManHandler)

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


class WSManHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120
    server: WSManServer

    ntlm: NtlmAcceptor | None = None
    ntlm_user: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the command log is the record."""

    def _reply(self, status: int, body: bytes = b"", content_type: str | None = None,
               headers: tuple[tuple[str, str], ...] = (), encrypt: bool = False) -> None:
        if encrypt and self.ntlm is not None and self.ntlm.complete:
            body = self.ntlm.wrap(body)
            content_type = ENCRYPTED_CONTENT_TYPE
        if self.server.sim.latency > 0:
            time.sleep(self.server.sim.latency)
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
                sim.count("ntlm_handshakes")
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
        sim.count("http_requests")
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
