"""A CA made by the tests, and private TLS servers started from it: a second RabbitMQ node (amqps only,
client certificates required) and a second PostgreSQL instance (hostssl only). Never the shared ones.

Each server runs from a temporary directory on free ports and is stopped (by its own process id) and
removed at the end. As root, PostgreSQL runs as the `postgres` OS user (initdb refuses root); the
RabbitMQ node runs as the current user with an Erlang cookie of its own (its own HOME).
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))


def make_pki(directory: Path, client_name: str = "postgres") -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (CN `client_name`)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("jit tests CA")).issuer_name(name("jit tests CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier,
             san: list[x509.GeneralName]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    import ipaddress

    server, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client, client_key = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pki = Pki(directory, directory / "ca.pem", directory / "server.pem", directory / "server.key",
              directory / "client.pem", directory / "client.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.server_key, server_key)
    _write_key(pki.client_key, client_key)
    return pki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, seconds: float, proc: subprocess.Popen[bytes], log: Path) -> None:
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


def _stop(proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    """Stop a server we started, by its own process group (start_new_session), never by name."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@dataclass
class TlsRabbitMQ:
    """A RabbitMQ node of the test run's own: amqps on `port` only, peer certificates required."""

    pki: Pki
    directory: Path
    port: int = 0
    node: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsRabbitMQ:
        self.port, dist = free_port(), free_port()
        self.node = f"jit-tls-{uuid.uuid4().hex[:8]}@localhost"
        home = self.directory / "home"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.directory / "enabled_plugins").write_text("[].\n")
        conf = self.directory / "rabbitmq.conf"
        conf.write_text("\n".join([
            "listeners.tcp = none",
            f"listeners.ssl.default = 127.0.0.1:{self.port}",
            f"ssl_options.cacertfile = {self.pki.ca}",
            f"ssl_options.certfile = {self.pki.server_cert}",
            f"ssl_options.keyfile = {self.pki.server_key}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = true",
            "ssl_options.versions.1 = tlsv1.3",
            "ssl_options.versions.2 = tlsv1.2",
            "", ""]))
        env = {**os.environ, "HOME": str(home), "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(free_port()),
               "RABBITMQ_DIST_PORT": str(dist), "RABBITMQ_CONFIG_FILE": str(conf),
               "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"), "RABBITMQ_LOG_BASE": str(self.directory / "log"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
               "RABBITMQ_PID_FILE": str(self.directory / "pid"), "RABBITMQ_ADVANCED_CONFIG_FILE":
               str(self.directory / "advanced.config")}
        log = self.directory / "stdout.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([RABBITMQ_SERVER], env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.directory)
        _wait_port(self.port, 90, self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@dataclass
class TlsPostgres:
    """A PostgreSQL instance of the test run's own: TCP on 127.0.0.1:`port`, SSL only (plaintext rejected)."""

    pki: Pki
    directory: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> TlsPostgres:
        self.port = free_port()
        data = self.directory / "data"
        certs = self.directory / "certs"
        certs.mkdir(parents=True)
        for source in (self.pki.ca, self.pki.server_cert, self.pki.server_key):
            shutil.copy(source, certs / source.name)
        (certs / self.pki.server_key.name).chmod(0o600)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.directory, certs, *certs.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run([*self._as_owner(), shutil.which("initdb") or "initdb", "-D", str(data), "-U", "postgres",
                        "--auth=trust", "--no-sync"], check=True, capture_output=True, timeout=120)
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
            "hostnossl all all 0.0.0.0/0 reject\n")
        log = self.directory / "server.log"
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.directory} "
                   f"-c ssl=on -c ssl_cert_file={certs / 'server.pem'} -c ssl_key_file={certs / 'server.key'} "
                   f"-c ssl_ca_file={certs / 'ca.pem'} -c fsync=off")
        postgres = Path(shutil.which("initdb") or "initdb").resolve().parent / "postgres"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([*self._as_owner(), str(postgres), "-D", str(data), *options.split()],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, 60, self.proc, log)
        return self

    def url(self, *, database: str = "postgres", sslmode: str = "verify-full", client_cert: bool = True) -> str:
        query = f"sslmode={sslmode}&sslrootcert={self.pki.ca}"
        if client_cert:
            query += f"&sslcert={self.pki.client_cert}&sslkey={self.pki.client_key}"
        return f"postgresql+psycopg://postgres@localhost:{self.port}/{database}?{query}"

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
