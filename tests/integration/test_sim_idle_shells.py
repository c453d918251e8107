"""jit-winrm-sim drops a shell unused for longer than its IdleTimeOut, as Windows does: the shells a SIGKILLed
daemon left open stop counting against MaxShellsPerUser. Found by the chaos run (tests/chaos): without it,
every daemon restart leaked its pooled shells for good and the host soon answered every Create with the
quota fault, failing elevations and holding revocations back."""

from __future__ import annotations

import time

import pytest
from winrm.exceptions import WinRMError
from winrm.protocol import Protocol

from tests.integration.winrm_fixtures import SVC_PASSWORD, SVC_USER
from winrm_sim import SimulatedHost


def protocol(host: SimulatedHost) -> Protocol:
    return Protocol(host.url, transport="basic", username=SVC_USER, password=SVC_PASSWORD)


@pytest.mark.parametrize("idle_timeout", ["PT1S", "PT1.000S"])
def test_a_shell_left_idle_past_its_idle_timeout_no_longer_counts_against_the_quota(idle_timeout: object) -> None:
    with SimulatedHost(users={SVC_USER: SVC_PASSWORD}, max_shells_per_user=2) as host:
        client = protocol(host)
        for _ in range(2):  # opened and abandoned, as by a process that was killed
            client.open_shell(idle_timeout=idle_timeout)
        with pytest.raises(WinRMError):  # the quota fault while both may still be in use
            client.open_shell(idle_timeout=idle_timeout)
        time.sleep(1.5)
        shell = client.open_shell(idle_timeout=idle_timeout)
        assert host.open_shells() == 1
        client.close_shell(shell)


def test_a_shell_in_use_or_without_idle_timeout_stays() -> None:
    with SimulatedHost(users={SVC_USER: SVC_PASSWORD}, max_shells_per_user=2) as host:
        client = protocol(host)
        kept = client.open_shell()  # no IdleTimeOut given: Windows' default is two hours
        used = client.open_shell(idle_timeout="PT1S")
        for _ in range(3):
            time.sleep(0.5)
            client.cleanup_command(used, client.run_command(used, "whoami"))
        with pytest.raises(WinRMError):
            client.open_shell(idle_timeout="PT1S")
        assert host.open_shells() == 2
        client.close_shell(kept)
        client.close_shell(used)


def test_a_bare_number_is_no_idle_timeout_and_the_pool_sends_a_duration() -> None:
    """pywinrm passes an int through as is; a bare number is not an xs:duration, so the simulator keeps that
    shell (as if no IdleTimeOut was given). The adapter's pooled shells carry PT<n>S and are dropped."""
    from shared.winrm.endpoint import Credentials, HostEndpoint
    from shared.winrm.shell import Connection

    with SimulatedHost(users={SVC_USER: SVC_PASSWORD}, max_shells_per_user=3) as host:
        protocol(host).open_shell(idle_timeout=1)
        endpoint = HostEndpoint(host.address, port=host.port, transport="basic", scheme="http")
        pooled = Connection(endpoint, Credentials(SVC_USER, SVC_PASSWORD), operation_timeout_sec=20,
                            read_timeout_sec=30, idle_timeout_sec=1)
        pooled.open(time.monotonic() + 30)  # then abandoned, as by a killed daemon
        assert host.open_shells() == 2
        time.sleep(1.5)
        protocol(host).open_shell(idle_timeout="PT60S")  # a Create drops what has been idle too long
        assert host.open_shells() == 2  # the bare-number shell stayed; the pooled one is gone
