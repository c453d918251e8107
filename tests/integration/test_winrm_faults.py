"""MembershipClient under failure: every fault jit-winrm-sim can inject maps to the right error class,
retryable ones heal on retry, ambiguous failures are re-verified, shells are never leaked, and no call
outlives max_call_seconds (deadline_sec plus the fixed slack), whatever the host does."""

from __future__ import annotations

import threading
import time

import pytest

from shared.winrm import Credentials, HostEndpoint, PermanentWinRMError, RetryableWinRMError, WinRMError
from shared.winrm.errors import AccessDeniedError, AuthenticationError, TLSError
from tests.integration.winrm_fixtures import (
    ADMINS,
    SVC_PASSWORD,
    WARNING_FILTERS,
    creds,
    endpoint,
    fast_client,
    sim,
    tls_sim,
)
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.filterwarnings(f) for f in WARNING_FILTERS]
__all__ = ["sim", "tls_sim"]


def _add(host: SimulatedHost, transport: str = "basic", **client_kw: float) -> bool:
    bob = host.sid_of("CORP\\bob")
    return fast_client(**client_kw).add_member(endpoint(host, transport), creds(transport), ADMINS, bob)


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
@pytest.mark.parametrize("action", ["Create", "Command"])
def test_http_500_without_soap_is_retryable(sim: SimulatedHost, transport: str, action: str) -> None:
    sim.inject("http500", action, count=1)
    with pytest.raises(RetryableWinRMError, match="HTTP 500"):
        _add(sim, transport)
    assert sim.members(ADMINS) == set()
    assert _add(sim, transport) is True  # healed: the fault was used up
    assert sim.members(ADMINS) == {"CORP\\bob"}


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_http_500_on_receive_is_ambiguous_and_reverified(sim: SimulatedHost, transport: str) -> None:
    sim.inject("http500", "Receive", count=1)
    assert _add(sim, transport) is True  # the command had run; a listing confirmed it
    names = [r.script_name for r in sim.command_log]
    assert names == ["add_member", "list_members"]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("TimedOut", RetryableWinRMError), ("InternalError", RetryableWinRMError), ("Quota", RetryableWinRMError),
     ("AccessDenied", AccessDeniedError), ("InvalidSelectors", PermanentWinRMError)],
)
@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_wsman_faults_on_create(sim: SimulatedHost, fault: str, expected: type[WinRMError], transport: str) -> None:
    sim.inject("wsman", "Create", count=1, fault=fault)
    with pytest.raises(expected) as info:
        _add(sim, transport)
    assert info.value.retryable is (expected is RetryableWinRMError)
    assert info.value.operation == "add_member" and info.value.host == f"127.0.0.1:{sim.port}"
    assert sim.members(ADMINS) == set()


def test_receive_timeouts_are_retried_silently(sim: SimulatedHost) -> None:
    sim.inject("wsman", "Receive", count=2, fault="TimedOut")
    assert _add(sim) is True


def test_fault_after_command_ran_on_signal_and_delete_is_harmless(sim: SimulatedHost) -> None:
    sim.inject("wsman", "Signal", count=1, fault="InternalError")
    sim.inject("http500", "Delete", count=1)
    assert _add(sim) is True  # the output was read before the cleanup failed
    assert sim.members(ADMINS) == {"CORP\\bob"}


def test_slow_command_beyond_deadline_is_ambiguous_and_reverified(sim: SimulatedHost) -> None:
    sim.set_command_delay(2.5)  # Receive answers w:TimedOut each second until the command is done
    client = fast_client(deadline_sec=1.0)
    ep, cr, slow = endpoint(sim), creds("basic"), sim.sid_of("CORP\\slow")
    with pytest.raises(RetryableWinRMError):  # no time is left to re-verify within the deadline
        client.add_member(ep, cr, ADMINS, slow)
    sim.set_command_delay(0)
    assert client.is_member(ep, cr, ADMINS, slow) is True  # it did run: hence "ambiguous"


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_a_slow_host_cannot_stretch_a_call_past_max_call_seconds(sim: SimulatedHost, transport: str) -> None:
    client = fast_client(deadline_sec=2.0)
    ep, cr, bob = endpoint(sim, transport), creds(transport), sim.sid_of("CORP\\bob")
    sim.set_command_delay(30)  # the command never finishes in time: Receive after Receive times out
    started = time.monotonic()
    with pytest.raises(RetryableWinRMError):
        client.add_member(ep, cr, ADMINS, bob)
    assert time.monotonic() - started <= client.max_call_seconds
    sim.clear_faults()
    sim.inject("delay", "*", count=None, seconds=1.5)  # every answer late (but within read_timeout_sec=2)
    started = time.monotonic()
    with pytest.raises(RetryableWinRMError):
        client.remove_member(ep, cr, ADMINS, bob)
    assert time.monotonic() - started <= client.max_call_seconds


def test_cleanup_after_the_deadline_is_bounded_too(sim: SimulatedHost) -> None:
    client = fast_client(operation_timeout_sec=5, read_timeout_sec=10, deadline_sec=1.5)  # reads may take 10 s
    sim.inject("delay", "Receive", count=1, seconds=1.2)
    sim.inject("delay", "Delete", count=1, seconds=10)  # a host that hangs on Delete
    started = time.monotonic()
    assert client.add_member(endpoint(sim), creds("basic"), ADMINS, sim.sid_of("CORP\\bob")) is True
    elapsed = time.monotonic() - started
    assert elapsed <= client.max_call_seconds and client.max_call_seconds < 10
    assert sim.members(ADMINS) == {"CORP\\bob"}


def test_waiting_for_a_shell_slot_counts_against_the_deadline(sim: SimulatedHost) -> None:
    client = fast_client(deadline_sec=1.0, max_shells_per_host=1)
    sim.set_command_delay(3)
    ep, cr = endpoint(sim), creds("basic")
    def hold_the_slot() -> None:
        with pytest.raises(WinRMError):
            client.list_members(ep, cr, ADMINS)

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    time.sleep(0.3)
    started = time.monotonic()
    with pytest.raises(RetryableWinRMError):
        client.add_member(ep, cr, ADMINS, sim.sid_of("CORP\\bob"))
    assert time.monotonic() - started <= client.max_call_seconds
    holder.join()


def test_slow_command_within_deadline_succeeds(sim: SimulatedHost) -> None:
    sim.set_command_delay(1.2)
    started = time.monotonic()
    assert _add(sim) is True
    assert time.monotonic() - started >= 1.2


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_read_timeout_after_the_change_is_reverified_as_success(sim: SimulatedHost, transport: str) -> None:
    sim.inject("delay", "Receive", count=1, seconds=2.5)  # longer than read_timeout_sec=2
    assert _add(sim, transport) is True  # the ReadTimeout was ambiguous; is_member confirmed the change
    assert sim.members(ADMINS) == {"CORP\\bob"}
    sim.inject("delay", "Receive", count=1, seconds=2.5)
    bob = sim.sid_of("CORP\\bob")
    assert fast_client().remove_member(endpoint(sim, transport), creds(transport), ADMINS, bob) is True
    assert sim.members(ADMINS) == set()


def test_read_timeout_before_the_command_is_plainly_retryable(sim: SimulatedHost) -> None:
    sim.inject("delay", "Create", count=1, seconds=2.5)
    with pytest.raises(RetryableWinRMError, match="ReadTimeout"):
        _add(sim)
    assert sim.members(ADMINS) == set()


def test_dropped_connection_is_retryable(sim: SimulatedHost) -> None:
    sim.inject("drop", "Create", count=1)
    with pytest.raises(RetryableWinRMError):
        _add(sim)


def test_connection_refused_then_down_for_n_seconds_then_fine(sim: SimulatedHost) -> None:
    sim.stop()
    with pytest.raises(RetryableWinRMError, match="ConnectionError"):
        _add(sim)
    sim.start()
    sim.down_for(1.0)
    attempts, started = 0, time.monotonic()
    while True:
        attempts += 1
        try:
            assert _add(sim) is True
            break
        except RetryableWinRMError:
            assert time.monotonic() - started < 5
            time.sleep(0.2)
    assert attempts > 1 and time.monotonic() - started >= 0.9


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_credentials_rejected_mid_session(sim: SimulatedHost, transport: str) -> None:
    sim.inject("auth", "Command", count=1)
    with pytest.raises(AuthenticationError):
        _add(sim, transport)
    sim.reject_credentials(True)
    with pytest.raises(AuthenticationError):
        _add(sim, transport)
    sim.reject_credentials(False)
    assert _add(sim, transport) is True


def test_password_never_in_errors(sim: SimulatedHost) -> None:
    secret = "Sup3r-Secret-Value"
    cr = Credentials("svc-jit", secret)
    assert secret not in repr(cr) and secret not in str(cr)
    failures: list[WinRMError] = []
    for arrange in (lambda: None, lambda: sim.inject("http500", "Create"), lambda: sim.stop()):
        arrange()
        with pytest.raises(WinRMError) as info:
            fast_client().add_member(endpoint(sim), cr, ADMINS, sim.sid_of("CORP\\bob"))
        failures.append(info.value)
    for error in failures:
        assert secret not in str(error) and secret not in repr(error) and secret not in error.detail


def test_quota_max_shells_per_user_and_the_client_cap() -> None:
    with SimulatedHost(users={"svc-jit": SVC_PASSWORD}, max_shells_per_user=2) as host:
        host.set_command_delay(0.4)  # keep shells open long enough to overlap

        def burst(cap: int) -> list[BaseException | bool]:
            client = fast_client(max_shells_per_host=cap, deadline_sec=20.0)
            results: list[BaseException | bool] = []
            lock = threading.Lock()

            def one(i: int) -> None:
                try:
                    outcome: BaseException | bool = client.is_member(
                        endpoint(host), creds("basic"), ADMINS, host.sid_of(f"CORP\\u{i}"))
                except WinRMError as exc:
                    outcome = exc
                with lock:
                    results.append(outcome)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            client.close()  # its pooled shells
            return results

        unbounded = burst(cap=6)
        quota = [r for r in unbounded if isinstance(r, RetryableWinRMError) and "wmierror=2150859174" in str(r)]
        assert quota, unbounded  # beyond MaxShellsPerUser, Create gets the real quota fault
        assert all(r is False for r in burst(cap=2))  # the per-host cap keeps a burst under the limit
        assert host.open_shells() == 0


def test_untrusted_certificate_is_permanent(tls_sim: SimulatedHost) -> None:
    ep = HostEndpoint(tls_sim.address, scheme="https", port=tls_sim.port, transport="basic", ca_file=None)
    with pytest.raises(TLSError) as info:
        fast_client().add_member(ep, creds("basic"), ADMINS, tls_sim.sid_of("CORP\\bob"))
    assert not info.value.retryable
    other = SimulatedHost(https=True)  # a different CA
    try:
        ep = endpoint(tls_sim, "ntlm", ca_file=other.ca_file)
        with pytest.raises(TLSError):
            fast_client().add_member(ep, creds("ntlm"), ADMINS, tls_sim.sid_of("CORP\\bob"))
    finally:
        other.close()
    ok = tls_sim.sid_of("CORP\\tls-ok")
    assert fast_client().add_member(endpoint(tls_sim, "ntlm"), creds("ntlm"), ADMINS, ok) is True
