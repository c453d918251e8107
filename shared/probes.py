"""The daemon's HTTP port (`JIT_METRICS_PORT`): `/metrics`, `/healthz` and `/readyz` on one small server.

Each answer is plain text, one line per check (`ok NAME: detail` or `FAIL NAME: detail`); a probe's
status is 200 when every check passes and 503 otherwise. The server runs on daemon threads and is
off when the port is unset.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from shared.health import Check, report
from shared.logs import get_logger

log = get_logger()
Probe = Callable[[], list[Check]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would drown the logs; access logging stays off."""


def app(liveness: Probe, readiness: Probe) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app()

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        probe = {"/healthz": liveness, "/readyz": readiness}.get(path)
        if probe is None:
            answer: Iterable[bytes] = metrics(environ, start_response)
            return answer
        try:
            checks = probe()
        except Exception as exc:  # a probe that cannot answer is a failing probe, never a crashed server
            checks = [Check(path.strip("/"), False, f"probe failed: {type(exc).__name__}: {exc}")]
        status = "200 OK" if all(c.ok for c in checks) else "503 Service Unavailable"
        body = report(checks).encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return route


class ProbeServer:
    def __init__(self, address: str, port: int, liveness: Probe, readiness: Probe) -> None:
        self._server = make_server(address, port, app(liveness, readiness), _Server, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, name="probes", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        log.info("probes.listening", port=self.port, paths=["/metrics", "/healthz", "/readyz"])
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
