"""Pooled connections and shells, and the one-run operations, against the simulator over HTTP."""

from __future__ import annotations

import pytest

from shared.winrm import KnownElevation, MembershipClient, PrincipalNotFoundError, scripts
from tests.integration.test_winrm_injection import ACCEPTED
from tests.integration.winrm_fixtures import ADMINS, WARNING_FILTERS, creds, endpoint, sim
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.filterwarnings(f) for f in WARNING_FILTERS]
__all__ = ["sim"]


def pooled(**kw: object) -> MembershipClient:
    return MembershipClient(operation_timeout_sec=5, read_timeout_sec=10, deadline_sec=20, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_one_connection_and_shell_serve_many_calls(sim: SimulatedHost, transport: str) -> None:
    client = pooled()
    ep, cr = endpoint(sim, transport), creds(transport)
    sid = client.resolve(ep, cr, ADMINS, "CORP\\pat").account_sid
    for _ in range(5):
        assert client.add_member(ep, cr, ADMINS, sid) in (True, False)
        assert client.remove_member(ep, cr, ADMINS, sid) is True
    assert sim.counters["shells_created"] == 1 and client.pool.opened == 1
    if transport == "ntlm":
        assert sim.counters["ntlm_handshakes"] == 1
    assert len({r.shell_id for r in sim.command_log}) == 1
    client.close()
    assert sim.open_shells() == 0


def test_a_call_that_returns_after_close_deletes_its_shell(sim: SimulatedHost) -> None:
    """A daemon closes its pool when it stops; a call still running then (a reconciler's listing) must not
    put its shell back into a pool nobody will close: it would leak against the host's shell quota."""
    client = pooled()
    ep, cr = endpoint(sim), creds("basic")
    client.list_members(ep, cr, ADMINS)
    original = client.pool._take

    def take_then_close(host, creds):  # type: ignore[no-untyped-def]
        connection = original(host, creds)
        client.close()  # the daemon stops while this call runs
        return connection

    client.pool._take = take_then_close  # type: ignore[method-assign]
    client.list_members(ep, cr, ADMINS)
    assert client.pool.idle_count() == 0 and sim.open_shells() == 0


def test_pooling_off_opens_a_shell_per_call(sim: SimulatedHost) -> None:
    client = pooled(pool_idle_sec=0)
    ep, cr = endpoint(sim), creds("basic")
    sid = client.resolve(ep, cr, ADMINS, "CORP\\pat").account_sid
    client.add_member(ep, cr, ADMINS, sid)
    assert sim.counters["shells_created"] == 2 and sim.open_shells() == 0


def test_a_shell_the_host_dropped_is_replaced_and_nothing_runs_twice(sim: SimulatedHost) -> None:
    client = pooled()
    ep, cr = endpoint(sim), creds("basic")
    sid = client.resolve(ep, cr, ADMINS, "CORP\\pat").account_sid
    sim.close_all_shells()  # as after a WinRM service restart: the pooled shell is gone (InvalidSelectors)
    assert client.add_member(ep, cr, ADMINS, sid) is True
    assert [r.script_name for r in sim.command_log] == ["resolve", "add_member"]
    assert sim.counters["shells_created"] == 2 and sim.open_shells() == 1
    client.close()


def test_idle_connections_expire(sim: SimulatedHost) -> None:
    client = pooled(pool_idle_sec=0.2)
    ep, cr = endpoint(sim), creds("basic")
    client.list_members(ep, cr, ADMINS)
    assert client.pool.idle_count(ep) == 1 and sim.open_shells() == 1
    import time

    time.sleep(0.3)
    client.list_members(ep, cr, ADMINS)  # the expired one is deleted, a new one opened
    assert sim.counters["shells_created"] == 2 and sim.open_shells() == 1
    client.close()


def test_a_failed_run_never_returns_its_connection_to_the_pool(sim: SimulatedHost) -> None:
    client = pooled()
    ep, cr = endpoint(sim), creds("basic")
    client.list_members(ep, cr, ADMINS)
    sim.inject("http500", "Receive")
    with pytest.raises(Exception):  # noqa: B017 - any WinRMError
        client.list_members(ep, cr, ADMINS)
    assert client.pool.idle_count(ep) == 0
    client.list_members(ep, cr, ADMINS)
    assert sim.counters["shells_created"] == 2
    client.close()


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_hostile_names_through_one_pooled_shell(sim: SimulatedHost, transport: str) -> None:
    """Every accepted hostile name goes through the same pooled shell, in one-run elevations and revocations:
    only that account changes, and the script text never holds the name."""
    client = pooled()
    ep, cr = endpoint(sim, transport), creds(transport)
    for name in ACCEPTED:
        sid = client.resolve(ep, cr, ADMINS, name).account_sid
        before = len(sim.host.changes)
        assert client.elevate_known(ep, cr, ADMINS, name, sid) == KnownElevation(changed=True, was_member=False)
        revocation = client.revoke(ep, cr, ADMINS, sid, name, logoff=False)
        assert revocation.removed is True and revocation.sessions_error is None
        assert [(c.op, c.member_sid) for c in sim.host.changes[before:]] == [("add", sid), ("remove", sid)]
        for record in sim.command_log[-3:]:
            assert len(name) == 1 or name not in (record.script or "")
            assert scripts.parse_rendered(record.script or "") is not None
    assert len({r.shell_id for r in sim.command_log}) == 1
    assert sim.members(ADMINS) == set()
    client.close()


def test_elevate_known_refuses_a_name_that_maps_to_another_sid(sim: SimulatedHost) -> None:
    client = pooled()
    ep, cr = endpoint(sim), creds("basic")
    old = client.resolve(ep, cr, ADMINS, "CORP\\quinn").account_sid  # as if the name had pointed there
    new = sim.sid_of("CORP\\pat")
    assert client.elevate_known(ep, cr, ADMINS, "CORP\\pat", old) == KnownElevation(sid_changed=new)
    assert sim.member_sids(ADMINS) == set() and sim.host.changes == []
    sim.set_unknown_principals(["CORP\\gone"])
    with pytest.raises(PrincipalNotFoundError):
        client.elevate_known(ep, cr, ADMINS, "CORP\\gone", old)
    client.close()


def test_revoke_lists_and_logs_off_sessions_in_the_same_run(sim: SimulatedHost) -> None:
    client = pooled()
    ep, cr = endpoint(sim), creds("basic")
    sid = client.resolve(ep, cr, ADMINS, "CORP\\carol").account_sid
    client.add_member(ep, cr, ADMINS, sid)
    first = sim.add_session("CORP\\carol")
    sim.add_session("CORP\\dave")
    runs = len(sim.command_log)
    revocation = client.revoke(ep, cr, ADMINS, sid, "CORP\\carol", logoff=True)
    assert revocation.removed and [(s.session.session_id, s.action) for s in revocation.sessions] == [
        (first, "logged_off")]
    assert len(sim.command_log) == runs + 1
    again = client.revoke(ep, cr, ADMINS, sid, "CORP\\carol", logoff=False)
    assert again.removed is False and again.sessions == ()
    client.close()


def test_revoke_whose_answer_is_lost_is_reverified(sim: SimulatedHost) -> None:
    client = pooled()
    ep, cr = endpoint(sim), creds("basic")
    sid = client.resolve(ep, cr, ADMINS, "CORP\\erin").account_sid
    client.add_member(ep, cr, ADMINS, sid)
    sim.inject("http500", "Receive")  # the script ran; its answer is lost
    revocation = client.revoke(ep, cr, ADMINS, sid, "CORP\\erin", logoff=False)
    assert revocation.removed is True and revocation.sessions_listed is False
    assert [r.script_name for r in sim.command_log][-2:] == ["revoke", "list_members"]
    client.close()
