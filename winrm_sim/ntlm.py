"""Server-side NTLM for the simulator: pyspnego's acceptor plus WinRM message encryption (MS-WSMV 2.2.9.1.1).

pyspnego's NTLM acceptor reads its accounts from the file named by ``NTLM_USER_FILE`` (lines
``DOMAIN:USER:PASSWORD``) each time it checks an Authenticate message. Each simulated host has its
own file, so the environment variable is set under one process-wide lock around every acceptor call.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import tempfile
import threading

import spnego
from spnego.channel_bindings import GssChannelBindings

_ENV_LOCK = threading.Lock()
BOUNDARY = b"--Encrypted Boundary"
PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
CONTENT_TYPE = f'multipart/encrypted;protocol="{PROTOCOL}";boundary="Encrypted Boundary"'


def write_user_file(users: dict[str, str], domains: tuple[str, ...], folder: str) -> str:
    """The accounts file (passwords in clear, mode 0600) in `folder`: the host's own temporary folder, removed
    with it when the host closes."""
    fd, path = tempfile.mkstemp(prefix="ntlm-users-", dir=folder, text=True)
    with os.fdopen(fd, "w") as f:
        for user, password in users.items():
            for domain in (*domains, ""):
                f.write(f"{domain}:{user}:{password}\n")
    return path


class NtlmAcceptor:
    """One connection's NTLM context: handshake steps, then wrap/unwrap of the SOAP bodies."""

    def __init__(self, user_file: str, cert_der: bytes | None) -> None:
        self._user_file = user_file
        bindings = None
        if cert_der is not None:  # HTTPS: requests-ntlm sends the tls-server-end-point binding
            digest = hashlib.sha256(cert_der).digest()
            bindings = GssChannelBindings(application_data=b"tls-server-end-point:" + digest)
        with self._env():
            self._ctx = spnego.server(protocol="ntlm", channel_bindings=bindings)

    def _env(self) -> _EnvFile:
        return _EnvFile(self._user_file)

    def step(self, token_b64: str) -> str | None:
        """Feed the client's token; return our answer token (base64) or None when done. Raises on failure."""
        with self._env():
            out = self._ctx.step(base64.b64decode(token_b64))
        return base64.b64encode(out).decode() if out else None

    @property
    def complete(self) -> bool:
        return bool(self._ctx.complete)

    @property
    def user(self) -> str:
        return str(self._ctx.client_principal or "")

    def unwrap(self, body: bytes) -> bytes:
        parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
        message = b""
        for i in range(0, len(parts) - 1, 2):
            payload = parts[i + 1]
            if payload.endswith(BOUNDARY + b"--\r\n"):
                payload = payload[: -len(BOUNDARY + b"--\r\n")]
            payload = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
            sig_len = struct.unpack("<i", payload[:4])[0]
            message += self._ctx.unwrap(payload[4:4 + sig_len] + payload[4 + sig_len:]).data
        return message

    def wrap(self, message: bytes) -> bytes:
        data = self._ctx.wrap(message, encrypt=True).data
        signature, sealed = data[:16], data[16:]
        return (
            BOUNDARY + b"\r\n\tContent-Type: " + PROTOCOL.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(message)).encode()
            + b"\r\n" + BOUNDARY + b"\r\n\tContent-Type: application/octet-stream\r\n"
            + struct.pack("<i", len(signature)) + signature + sealed + BOUNDARY + b"--\r\n"
        )


class _EnvFile:
    def __init__(self, path: str) -> None:
        self._path = path
        self._old: str | None = None

    def __enter__(self) -> None:
        _ENV_LOCK.acquire()
        self._old = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = self._path

    def __exit__(self, *exc: object) -> None:
        if self._old is None:
            os.environ.pop("NTLM_USER_FILE", None)
        else:
            os.environ["NTLM_USER_FILE"] = self._old
        _ENV_LOCK.release()
