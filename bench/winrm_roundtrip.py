"""Round-trip time of one MembershipClient.add_member by SID (the add and its verifying listing, one
PowerShell run) against an in-process jit-winrm-sim on loopback: Basic over HTTP and NTLM (encrypted)
over HTTP. Each account is resolved to its SID first, untimed, as the elevator does before its hold.

    .venv/bin/python -m bench.winrm_roundtrip [runs]     # prints the median in ms per transport
"""

from __future__ import annotations

import statistics
import sys
import time

from shared.winrm import Credentials, HostEndpoint, MembershipClient
from winrm_sim import SimulatedHost

ADMINS = "S-1-5-32-544"


def main(runs: int = 50) -> None:
    client = MembershipClient()
    with SimulatedHost(users={"svc-jit": "Bench-Pa55"}) as host:
        for transport, user in (("basic", "svc-jit"), ("ntlm", "CORP\\svc-jit")):
            endpoint = HostEndpoint(host.address, scheme="http", port=host.port, transport=transport)
            creds = Credentials(user, "Bench-Pa55")
            warmup = client.resolve(endpoint, creds, ADMINS, "CORP\\warmup")
            client.add_member(endpoint, creds, warmup.group_sid, warmup.account_sid)
            times = []
            for i in range(runs):
                resolved = client.resolve(endpoint, creds, ADMINS, f"CORP\\{transport}{i}")
                started = time.perf_counter()
                assert client.add_member(endpoint, creds, resolved.group_sid, resolved.account_sid) is True
                times.append((time.perf_counter() - started) * 1000)
            print(f"{transport}/http add_member+verify: median {statistics.median(times):.1f} ms "
                  f"(min {min(times):.1f}, max {max(times):.1f}, n={runs})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
