"""The simulator's WS-Man answers have the structure of the recorded real Windows answers
(../shared/fixtures/windows-recorded, pypsrp recordings): element names in order with their
prefixes, declared namespaces, Selector/CommandId shapes, streams, CommandState and ExitCode, faults; and
its host model answers as Microsoft.PowerShell.LocalAccounts does (Get-LocalGroupMember -Member, by-SID
changes, renames)."""

# Parsing our own simulator's answers and the recorded fixtures, on loopback: no untrusted XML here.
# ruff: noqa: S314
from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests

from tests.integration.winrm_fixtures import BASIC, recorded, sim
from winrm_sim import ADMINISTRATORS, SimulatedHost
from winrm_sim.host import Group, PSError, WindowsHost

__all__ = ["sim"]

NS = {"s": "http://www.w3.org/2003/05/soap-envelope", "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
      "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
      "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"}
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def qualified_tags(xml: str, *, skip: tuple[str, ...] = ()) -> list[str]:
    """prefix:local of every start tag in document order, as written on the wire."""
    return [t for t in re.findall(r"<([A-Za-z]+:[A-Za-z_]+)[\s>/]", xml) if t not in skip]


def declared(xml: str) -> dict[str, str]:
    return dict(re.findall(r'xmlns:(\w+)="([^"]+)"', xml.split(">", 1)[0]))


def attributes(xml: str) -> list[tuple[str, list[str]]]:
    root = ET.fromstring(xml)
    return [(el.tag, sorted(el.attrib)) for el in root.iter()]


class Wire:
    """Replays recorded requests against the simulator, swapping in the simulator's ids."""

    def __init__(self, host: SimulatedHost) -> None:
        self.host = host
        self.session = requests.Session()
        self.session.auth = (BASIC.username, BASIC.password)
        self.ids: dict[str, str] = {}

    def send(self, request: str, expect: int = 200) -> str:
        for old, new in self.ids.items():
            request = request.replace(old, new)
        request = re.sub(r"uuid:" + _UUID.pattern, lambda _: f"uuid:{str(uuid.uuid4()).upper()}", request, count=1)
        answer = self.session.post(self.host.url, data=request.encode(),
                                   headers={"Content-Type": "application/soap+xml;charset=UTF-8"})
        assert answer.status_code == expect, answer.text
        return answer.text

    def close(self) -> None:
        self.session.close()


def _replay(host: SimulatedHost, name: str, command: tuple[str, str] | None = None,
            only: tuple[int, ...] | None = None) -> list[tuple[str, str]]:
    """(real answer, simulator answer) per message of a recorded transcript (or of the ``only`` ones)."""
    wire = Wire(host)
    pairs = []
    messages = recorded(name)
    try:
        for message in [messages[i] for i in only] if only is not None else messages:
            request, real = message["request"], message["response"]
            if command and "<rsp:CommandLine>" in request:
                request = re.sub(r"<rsp:CommandLine>.*</rsp:CommandLine>",
                                 f"<rsp:CommandLine><rsp:Command>{command[0]}</rsp:Command>"
                                 f"<rsp:Arguments>{command[1]}</rsp:Arguments></rsp:CommandLine>", request)
            ours = wire.send(request, expect=500 if "wsman/fault" in real else 200)
            for tag in ("ShellId", "CommandId"):  # map the recorded id to ours for the next requests
                real_id = re.search(rf'(?:Name="{tag}"|:{tag})>([0-9A-F-]{{36}})<', real)
                our_id = re.search(rf'(?:Name="{tag}"|:{tag})>([0-9A-F-]{{36}})<', ours)
                if real_id and our_id:
                    wire.ids[real_id.group(1)] = our_id.group(1)
            pairs.append((real, ours))
    finally:
        wire.close()
    return pairs


def test_standard_transcript_has_the_real_structure(sim: SimulatedHost) -> None:
    pairs = _replay(sim, "test_winrs_standard.yml", command=("whoami", ""))
    assert len(pairs) == 5  # Create, Command, Receive, Signal, Delete
    for real, ours in pairs:
        assert qualified_tags(ours) == qualified_tags(real)
        assert declared(ours) == declared(real)
        assert attributes(ours) == attributes(real)
    create, command, receive, _signal, _delete = (ours for _, ours in pairs)
    root = ET.fromstring(create)
    selector = root.find(".//w:SelectorSet/w:Selector", NS)
    assert selector is not None and selector.get("Name") == "ShellId" and _UUID.fullmatch(selector.text or "")
    assert root.findtext(".//rsp:Shell/rsp:IdleTimeOut", None, NS) == "PT7200.000S"
    assert _UUID.fullmatch(ET.fromstring(command).findtext(".//rsp:CommandId", "", NS))
    stream = ET.fromstring(receive).find(".//rsp:Stream", NS)
    assert stream is not None and base64.b64decode(stream.text or "") == b"win-sim01\\svc-jit\r\n"
    state = ET.fromstring(receive).find(".//rsp:CommandState", NS)
    assert state is not None and state.get("State", "").endswith("CommandState/Done")
    assert state.findtext("rsp:ExitCode", None, NS) == "0"


def test_relates_to_echoes_the_request_message_id(sim: SimulatedHost) -> None:
    wire = Wire(sim)
    request = recorded("test_winrs_standard.yml")[0]["request"]
    message_id = f"uuid:{str(uuid.uuid4()).upper()}"
    request = re.sub(r"<wsa:MessageID>[^<]+</wsa:MessageID>", f"<wsa:MessageID>{message_id}</wsa:MessageID>", request)
    answer = wire.session.post(sim.url, data=request.encode())
    assert ET.fromstring(answer.text).findtext(".//a:RelatesTo", None, NS) == message_id
    wire.close()


def test_environment_is_echoed_like_windows(sim: SimulatedHost) -> None:
    real, ours = _replay(sim, "test_winrs_environment.yml", command=("whoami", ""))[0]
    assert qualified_tags(ours) == qualified_tags(real, skip=("p:ActivityId",))
    real_vars = ET.fromstring(real).findall(".//rsp:Environment/rsp:Variable", NS)
    our_vars = ET.fromstring(ours).findall(".//rsp:Environment/rsp:Variable", NS)
    assert [v.get("Name") for v in our_vars][:2] == [v.get("Name") for v in real_vars][:2] == ["env1", "1234"]


def test_stderr_and_exit_code(sim: SimulatedHost) -> None:
    real, ours = _replay(sim, "test_winrs_stderr_rc.yml", command=("net", "localgroup Nope bob /add"))[2]
    real_root, our_root = ET.fromstring(real), ET.fromstring(ours)
    ends = [(s.get("Name"), s.get("End")) for s in our_root.iter(f"{{{NS['rsp']}}}Stream") if s.get("End")]
    assert ends == [(s.get("Name"), s.get("End")) for s in real_root.iter(f"{{{NS['rsp']}}}Stream") if s.get("End")]
    assert our_root.findtext(".//rsp:ExitCode", None, NS) == "2"  # net.exe's failure code
    err = [s for s in our_root.iter(f"{{{NS['rsp']}}}Stream") if s.get("Name") == "stderr" and s.text]
    assert b"NET HELPMSG 2220" in base64.b64decode(err[0].text or "")


@pytest.mark.parametrize(
    ("transcript", "index", "inject"),
    [("test_winrs_operation_timeout.yml", 3, "TimedOut"), ("test_winrs_bad_cmd_id.yml", 2, None)],
)
def test_faults_have_the_real_structure(sim: SimulatedHost, transcript: str, index: int, inject: str | None) -> None:
    if inject:
        sim.inject("wsman", "Receive", count=1, fault=inject)
    real, ours = _replay(sim, transcript, command=("whoami", ""), only=(0, 1, index))[2]
    skip = ("p:ActivityId", "w:FaultDetail")
    ours_tags = qualified_tags(ours, skip=skip)
    assert ours_tags == qualified_tags(real, skip=skip)
    assert declared(ours) == declared(real)
    for path in ("s:Body/s:Fault/s:Code/s:Value", "s:Body/s:Fault/s:Code/s:Subcode/s:Value"):
        assert ET.fromstring(ours).findtext(path, None, NS) == ET.fromstring(real).findtext(path, None, NS)
    fault_ns = "{http://schemas.microsoft.com/wbem/wsman/1/wsmanfault}WSManFault"
    real_code = next(ET.fromstring(real).iter(fault_ns)).get("Code")
    assert next(ET.fromstring(ours).iter(fault_ns)).get("Code") == real_code


# -- the host model against Microsoft.PowerShell.LocalAccounts (PowerShell/PowerShell src/.../LocalAccounts) --

def _localaccounts_host() -> tuple[WindowsHost, Group]:
    host = WindowsHost("WIN-SIM01")
    host.seed_member(ADMINISTRATORS, "alice")
    host.seed_member(ADMINISTRATORS, "CORP\\bob")
    return host, host.groups[ADMINISTRATORS]


def test_get_localgroupmember_member_strips_the_machine_prefix_from_members_only() -> None:
    host, group = _localaccounts_host()
    assert [a.full_name for a in host.check_member(group, "alice")] == ["WIN-SIM01\\alice"]
    assert [a.full_name for a in host.check_member(group, "ALICE")] == ["WIN-SIM01\\alice"]
    assert [a.full_name for a in host.check_member(group, "CORP\\bob")] == ["CORP\\bob"]
    for not_matched in ("WIN-SIM01\\alice", "win-sim01\\ALICE", "bob"):  # -Member itself is never stripped
        with pytest.raises(PSError) as info:
            host.check_member(group, not_matched)
        assert info.value.error_id == "PrincipalNotFound,Microsoft.PowerShell.Commands.GetLocalGroupMemberCommand"
        assert info.value.message == f"Principal {not_matched} was not found."


def test_get_localgroupmember_member_of_an_existing_non_member_is_principal_not_found() -> None:
    host, group = _localaccounts_host()
    assert host.lookup("carol") is not None  # carol exists on the host ...
    with pytest.raises(PSError) as info:  # ... but is no member: PrincipalNotFound, not MemberNotFound
        host.check_member(group, "carol")
    assert info.value.error_id.startswith("PrincipalNotFound,")


def test_get_localgroupmember_member_by_sid_and_wildcard() -> None:
    host, group = _localaccounts_host()
    alice = host.sid_of("alice")
    assert [a.sid for a in host.check_member(group, alice.lower())] == [alice]
    assert [a.full_name for a in host.check_member(group, "al*")] == ["WIN-SIM01\\alice"]
    assert host.check_member(group, "zz*") == []  # a wildcard that matches nothing is no error
    with pytest.raises(PSError):
        host.check_member(group, host.sid_of("carol"))


def test_sids_are_deterministic_and_renames_keep_them() -> None:
    one, two, other = WindowsHost("WIN-SIM01"), WindowsHost("WIN-SIM01"), WindowsHost("WIN-SIM02")
    assert one.machine_sid == two.machine_sid != other.machine_sid
    assert one.sid_of("alice") == two.sid_of("alice") == f"{one.machine_sid}-1001"
    assert one.sid_of("carol") == f"{one.machine_sid}-1002" and other.sid_of("carol") == f"{other.machine_sid}-1001"
    assert one.sid_of("CORP\\bob") == other.sid_of("corp\\BOB") != one.sid_of("OTHER\\bob")
    domain_users = one.lookup("CORP\\Domain Users")
    assert domain_users is not None and domain_users.sid.endswith("-513") and domain_users.object_class == "Group"
    assert (one.sid_of("Everyone"), one.sid_of("Authenticated Users")) == ("S-1-1-0", "S-1-5-11")
    sid = one.sid_of("alice")
    one.seed_member(ADMINISTRATORS, "alice")
    one.rename_account("alice", "alice2")
    assert one.lookup("alice") is None and one.sid_of("ALICE2") == sid
    assert one.members(ADMINISTRATORS) == {"WIN-SIM01\\alice2"} and one.member_sids(ADMINISTRATORS) == {sid}


def test_remove_by_sid_tells_not_a_member_from_no_such_principal() -> None:
    host, group = _localaccounts_host()
    with pytest.raises(PSError) as info:
        host.remove_member_sid(group, host.sid_of("carol"))
    assert info.value.error_id == "MemberNotFound,Microsoft.PowerShell.Commands.RemoveLocalGroupMemberCommand"
    with pytest.raises(PSError) as info:
        host.remove_member_sid(group, "S-1-5-21-1-2-3-4242")
    assert info.value.error_id == "PrincipalNotFound,Microsoft.PowerShell.Commands.RemoveLocalGroupMemberCommand"
    with pytest.raises(PSError) as info:
        host.add_member_sid(group, host.sid_of("alice"))
    assert info.value.error_id == "MemberExists,Microsoft.PowerShell.Commands.AddLocalGroupMemberCommand"


ORPHAN = "S-1-5-21-3623811015-3361044348-30300820-1013"  # an account deleted from its domain


def test_get_localgroupmember_fails_on_a_group_holding_an_orphaned_sid_and_adsi_lists_it() -> None:
    """Windows PowerShell 5.1 (PowerShell/PowerShell issues 2996, 21617): the cmdlet's sort fails on a member
    no name resolves; ADSI's WinNT provider lists it under its SID."""
    host, group = _localaccounts_host()
    assert host.seed_member(ADMINISTRATORS, ORPHAN.lower()) == ORPHAN
    with pytest.raises(PSError) as info:
        host.list_members(group)
    assert info.value.error_id == ("An unspecified error occurred.,"
                                   "Microsoft.PowerShell.Commands.GetLocalGroupMemberCommand")
    assert info.value.message == "Failed to compare two elements in the array."
    listed = {(a.sid, a.full_name) for a in host.members_of(group)}
    assert (ORPHAN, ORPHAN) in listed and (host.sid_of("alice"), "WIN-SIM01\\alice") in listed


def test_the_ntlm_accounts_file_with_its_passwords_goes_with_the_host() -> None:
    """pyspnego reads the simulator's accounts (passwords in clear) from a file: it lives in the host's own
    temporary folder, mode 0600, and is gone once the host closes (2,000 of them were left in /tmp)."""
    host = SimulatedHost(users={"svc-jit": "Sim-Pa55word!"})
    path = Path(host.ntlm_user_file)
    assert "Sim-Pa55word!" in path.read_text() and path.stat().st_mode & 0o077 == 0
    host.start()
    host.close()
    assert not path.exists() and not path.parent.exists()
