"""The control endpoint: JSON over HTTP on a separate port, bound to loopback only, no authentication.

Routes (``{id}`` is the host's index in the ready line, or ``address:port``):

- ``GET  /control/hosts``                      the hosts (id, address, port, url, https, ca_file)
- ``GET  /control/hosts/{id}``                 state: groups with members, sessions, open shells, faults
- ``GET  /control/hosts/{id}/log``             the command log (decoded scripts, env, exit codes)
- ``POST /control/hosts/{id}/fault``           {"kind", "action"="*", "count"=1|null, "fault", "seconds", "status"}
- ``POST /control/hosts/{id}/clear``           drop every fault, the command delay and credential rejection
- ``POST /control/hosts/{id}/stop`` | ``/start``   stop listening (connection refused) / listen again
- ``POST /control/hosts/{id}/down``            {"seconds"}: refuse connections, then come back on the same port
- ``POST /control/hosts/{id}/reject-credentials``  {"on": true|false}: every request gets 401
- ``POST /control/hosts/{id}/command-delay``   {"seconds"}: commands finish late; Receive answers w:TimedOut
- ``POST /control/hosts/{id}/max-shells``      {"n"}: MaxShellsPerUser
- ``POST /control/hosts/{id}/access-denied``   {"on"}: the cmdlets answer AccessDenied
- ``POST /control/hosts/{id}/unknown-principals``  {"names": [...]}: these names do not resolve
- ``POST /control/hosts/{id}/members``         {"group", "member"}: seed a standing membership
- ``POST /control/hosts/{id}/members/remove``  {"group", "member"}
- ``GET  /control/hosts/{id}/groups/{sid}/members``  the members with SIDs: [{"sid", "name", "class"}]
- ``POST /control/hosts/{id}/accounts/rename``  {"old", "new"}: Rename-LocalUser, same SID -> {"sid", "name"}
- ``POST /control/hosts/{id}/accounts/resolve`` {"name"} -> {"sid"} (creates the account as a lookup would)
- ``POST /control/hosts/{id}/sessions``        {"account", "state"="Active"|"Disc"} -> {"session_id"}
- ``POST /control/hosts/{id}/sessions/remove`` {"session_id"}
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .host import PSError
from .server import SimulatedHost


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _post(host: SimulatedHost, verb: str, body: dict[str, Any]) -> Any:
    if verb == "fault":
        rule = host.inject(str(body["kind"]), str(body.get("action", "*")), body.get("count", 1),
                           fault=str(body.get("fault", "InternalError")), seconds=float(body.get("seconds", 0)),
                           status=int(body.get("status", 500)))
        return rule.to_dict()
    simple: dict[str, Callable[[], Any]] = {
        "clear": lambda: host.clear_faults(),
        "stop": lambda: host.stop(),
        "start": lambda: host.start() and None,
        "down": lambda: host.down_for(float(body["seconds"])),
        "reject-credentials": lambda: host.reject_credentials(bool(body.get("on", True))),
        "command-delay": lambda: host.set_command_delay(float(body["seconds"])),
        "cost": lambda: host.set_cost(ps_startup_ms=body.get("ps_startup_ms"), latency_ms=body.get("latency_ms")),
        "max-shells": lambda: host.set_max_shells_per_user(int(body["n"])),
        "access-denied": lambda: host.set_access_denied(bool(body.get("on", True))),
        "unknown-principals": lambda: host.set_unknown_principals(list(body["names"])),
        "members/remove": lambda: host.unseed_member(str(body["group"]), str(body["member"])),
        "sessions/remove": lambda: {"removed": host.remove_session(str(body["session_id"]))},
        "members": lambda: {"member": host.seed_member(str(body["group"]), str(body["member"]))},
        "accounts/rename": lambda: {"sid": host.rename_account(str(body["old"]), str(body["new"])),
                                    "name": str(body["new"])},
        "accounts/resolve": lambda: {"sid": host.sid_of(str(body["name"]))},
        "sessions": lambda: {"session_id": host.add_session(str(body["account"]), str(body.get("state", "Active")))},
    }
    if verb not in simple:
        raise ControlError(404, f"no such control: {verb}")
    return simple[verb]() or {"ok": True}


class _ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: ControlServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        length = int(self.headers.get("Content-Length", "0") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
            parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
            if parts[:2] != ["control", "hosts"]:
                raise ControlError(404, "not found")
            if len(parts) == 2 and method == "GET":
                self._send(200, [{"id": i, **h.describe()} for i, h in enumerate(self.server.hosts)])
                return
            host = self.server.find(parts[2] if len(parts) > 2 else "")
            verb = "/".join(parts[3:])
            if method == "GET" and verb == "":
                self._send(200, host.state())
            elif method == "GET" and verb == "log":
                self._send(200, [asdict(r) for r in host.command_log])
            elif method == "GET" and len(parts) == 6 and parts[3] == "groups" and parts[5] == "members":
                if parts[4].upper() not in host.host.groups:
                    raise ControlError(404, f"no such group: {parts[4]}")
                self._send(200, host.group_members(parts[4]))
            elif method == "POST":
                self._send(200, _post(host, verb, body))
            else:
                raise ControlError(404, "not found")
        except ControlError as exc:
            self._send(exc.status, {"error": str(exc)})
        except PSError as exc:
            self._send(400, {"error": exc.message, "error_id": exc.error_id})
        except (KeyError, ValueError, TypeError) as exc:
            self._send(400, {"error": f"bad request: {exc!r}"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


class ControlServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hosts: list[SimulatedHost], address: str = "127.0.0.1", port: int = 0) -> None:
        if not ipaddress.ip_address(address).is_loopback:
            raise ValueError("the control endpoint has no authentication, so it listens on loopback only")
        self.hosts = hosts
        self._address = address
        super().__init__((address, port), _ControlHandler)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._address}:{self.server_address[1]}/control"

    def find(self, ref: str) -> SimulatedHost:
        if ref.isdigit() and int(ref) < len(self.hosts):
            return self.hosts[int(ref)]
        for host in self.hosts:
            if f"{host.address}:{host.port}" == ref:
                return host
        raise ControlError(404, f"no such host: {ref}")

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
