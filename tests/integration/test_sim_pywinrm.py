"""jit-winrm-sim as pywinrm's own Session sees it: run_cmd and run_ps, whoami, net localgroup with
net.exe's messages and exit codes, unknown scripts answered with a PowerShell error."""

from __future__ import annotations

import pytest
import winrm

from shared.winrm import scripts
from tests.integration.winrm_fixtures import ADMINS, SVC_PASSWORD, SVC_USER, WARNING_FILTERS, sim
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.filterwarnings(f) for f in WARNING_FILTERS]
__all__ = ["sim"]


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_whoami_and_net_localgroup(sim: SimulatedHost, transport: str) -> None:
    user = SVC_USER if transport == "basic" else f"CORP\\{SVC_USER}"
    session = winrm.Session(sim.url, auth=(user, SVC_PASSWORD), transport=transport)
    who = session.run_cmd("whoami")
    assert (who.status_code, who.std_out) == (0, b"win-sim01\\svc-jit\r\n" if transport == "basic"
                                              else b"corp\\svc-jit\r\n")
    ok = session.run_cmd("net", ["localgroup", "Administrators", "CORP\\bob", "/add"])
    assert (ok.status_code, ok.std_out) == (0, b"The command completed successfully.\r\n\r\n")
    again = session.run_cmd("net localgroup Administrators CORP\\bob /add")
    assert again.status_code == 2 and b"System error 1378 has occurred." in again.std_err
    assert session.run_cmd("net localgroup Administrators CORP\\bob /delete").status_code == 0
    gone = session.run_cmd("net localgroup Administrators CORP\\bob /delete")
    assert gone.status_code == 2 and b"System error 1377" in gone.std_err
    sim.set_unknown_principals(["CORP\\ghost"])
    ghost = session.run_cmd("net localgroup Administrators CORP\\ghost /add")
    assert ghost.status_code == 2 and b"NET HELPMSG 3783" in ghost.std_err
    assert session.run_cmd('net localgroup "Remote Desktop Users" CORP\\bob /add').status_code == 0
    assert sim.members("S-1-5-32-555") == {"CORP\\bob"}


def test_localised_group_name_fails_net_but_not_the_sid_script() -> None:
    with SimulatedHost(users={SVC_USER: SVC_PASSWORD}, group_names={ADMINS: "Administratoren"}) as host:
        session = winrm.Session(host.url, auth=(SVC_USER, SVC_PASSWORD), transport="basic")
        answer = session.run_cmd("net localgroup Administrators bob /add")
        assert answer.status_code == 2 and b"NET HELPMSG 2220" in answer.std_err


def test_run_ps_runs_only_the_fixed_scripts(sim: SimulatedHost) -> None:
    session = winrm.Session(sim.url, auth=(SVC_USER, SVC_PASSWORD), transport="basic")
    other = session.run_ps("Add-LocalGroupMember -SID S-1-5-32-544 -Member 'CORP\\bob'")
    assert other.status_code == 1 and b"not one this simulated host recognises" in other.std_err
    assert sim.members(ADMINS) == set()
    # A template without its data, or with anything but base64 of a JSON object of strings in the data
    # literal, is not a script the host runs.
    hostile = ["", "x'); calc; ('", "e30=' + 'x", "W10=", "eyJhIjogMX0=", "%%%%", "e30= "]
    for script in (scripts.RESOLVE, scripts.ADD_MEMBER_SID, scripts.ELEVATE_KNOWN, scripts.REVOKE):
        assert session.run_ps(script).status_code == 1
        for literal in hostile:
            answer = session.run_ps(script.replace(scripts.DATA_PLACEHOLDER, literal))
            assert answer.status_code == 1 and b"not one this simulated host recognises" in answer.std_err, literal
    # Rendered without data: each script fails the way PowerShell would ($env:JIT_* is null)
    for script in (scripts.RESOLVE, scripts.ADD_MEMBER_SID, scripts.REMOVE_MEMBER_SID, scripts.LIST_MEMBERS):
        answer = session.run_ps(scripts.render(script, {}))
        assert answer.status_code == 1 and b'"status":"error"' in answer.std_out
    assert sim.members(ADMINS) == set()
    assert session.run_cmd("calc.exe").status_code == 1
