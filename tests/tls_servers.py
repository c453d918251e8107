"""A CA made by the tests, and private TLS servers started from it: a second RabbitMQ node (amqps only,
client certificates required) and a second PostgreSQL instance (hostssl only). Never the shared ones.

The servers themselves are tests/private_servers.py's, with TLS listeners and an hostssl-only pg_hba.
"""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.private_servers import PostgresInstance, RabbitNode, free_port


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


class TlsRabbitMQ(RabbitNode):
    """A RabbitMQ node of the test run's own: amqps on `port` only, peer certificates required."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        super().__init__(directory)
        self.pki = pki

    def listener_lines(self) -> list[str]:
        return ["listeners.tcp = none", f"listeners.ssl.default = 127.0.0.1:{self.port}",
                f"ssl_options.cacertfile = {self.pki.ca}", f"ssl_options.certfile = {self.pki.server_cert}",
                f"ssl_options.keyfile = {self.pki.server_key}", "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = true", "ssl_options.versions.1 = tlsv1.3",
                "ssl_options.versions.2 = tlsv1.2"]

    def node_port(self) -> int:
        return free_port()

    def start(self) -> TlsRabbitMQ:
        super().start()
        return self


class TlsPostgres(PostgresInstance):
    """A PostgreSQL instance of the test run's own: TCP on 127.0.0.1:`port`, SSL only (plaintext rejected)."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        super().__init__(directory)
        self.pki = pki

    def start(self) -> TlsPostgres:
        if not self.port:
            certs = self.directory / "certs"
            certs.mkdir(parents=True)
            for source in (self.pki.ca, self.pki.server_cert, self.pki.server_key):
                shutil.copy(source, certs / source.name)
            (certs / self.pki.server_key.name).chmod(0o600)
            self._chown(self.directory, certs, *certs.iterdir())
            self.hba = ("local all all trust\n"
                        "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
                        "hostnossl all all 0.0.0.0/0 reject\n")
            self.options = ["-c", "ssl=on", "-c", f"ssl_cert_file={certs / 'server.pem'}",
                            "-c", f"ssl_key_file={certs / 'server.key'}", "-c", f"ssl_ca_file={certs / 'ca.pem'}"]
        super().start()
        return self

    def url(self, database: str = "postgres", *, sslmode: str = "verify-full", client_cert: bool = True) -> str:
        query = f"sslmode={sslmode}&sslrootcert={self.pki.ca}"
        if client_cert:
            query += f"&sslcert={self.pki.client_cert}&sslkey={self.pki.client_key}"
        return f"postgresql+psycopg://postgres@localhost:{self.port}/{database}?{query}"
