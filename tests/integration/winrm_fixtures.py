"""Helpers for the WinRM adapter and simulator tests: simulated hosts, endpoints, recorded transcripts.

Hosts run in-process on loopback with ephemeral ports; the recorded real-Windows transcripts are
read from the handbook folder next to the repository (../shared/fixtures/windows-recorded).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.winrm import Credentials, HostEndpoint, MembershipClient
from winrm_sim import SimulatedHost

REPO = Path(__file__).resolve().parent.parent.parent
RECORDED = REPO.parent / "shared" / "fixtures" / "windows-recorded"
ADMINS = "S-1-5-32-544"
RDP_USERS = "S-1-5-32-555"
SVC_USER = "svc-jit"
SVC_PASSWORD = "S3cret-Pa55word!"
BASIC = Credentials(SVC_USER, SVC_PASSWORD)
NTLM = Credentials(f"CORP\\{SVC_USER}", SVC_PASSWORD)

# pywinrm/requests deprecations are not ours to fix; the per-file filter keeps pytest's "error" policy otherwise.
WARNING_FILTERS = [
    "ignore::DeprecationWarning:requests_ntlm.*",
    "ignore::DeprecationWarning:urllib3.*",
]


def endpoint(host: SimulatedHost, transport: str = "basic", **kw: Any) -> HostEndpoint:
    return HostEndpoint(
        host.address, scheme="https" if host.https else "http", port=host.port, transport=transport,
        ca_file=kw.pop("ca_file", host.ca_file), **kw,
    )


def creds(transport: str) -> Credentials:
    return NTLM if transport == "ntlm" else BASIC


def fast_client(**kw: Any) -> MembershipClient:
    """Short timeouts so fault tests stay quick (pywinrm needs read > operation >= 1)."""
    options: dict[str, Any] = {"operation_timeout_sec": 1, "read_timeout_sec": 2, "deadline_sec": 10.0}
    options.update(kw)
    return MembershipClient(**options)


@pytest.fixture
def sim() -> Iterator[SimulatedHost]:
    host = SimulatedHost(users={SVC_USER: SVC_PASSWORD}).start()
    yield host
    host.close()


@pytest.fixture(scope="module")
def tls_sim() -> Iterator[SimulatedHost]:
    host = SimulatedHost(https=True, users={SVC_USER: SVC_PASSWORD}).start()
    yield host
    host.close()


def recorded(name: str) -> list[dict[str, str]]:
    data = yaml.safe_load((RECORDED / name).read_text(encoding="utf-8"))
    return list(data["messages"])
