"""The fixed PowerShell scripts the adapter sends, and how their one-line JSON answer is read.

Each script is a constant template with one place for data, ``DATA_PLACEHOLDER``, inside a single-quoted
literal. ``render`` puts there base64 of the UTF-8 JSON object of the call's values (member name or SID,
group, session id...); the script's first line decodes it and sets them as ``$env:JIT_*`` of its own
powershell.exe process, which the rest reads. The base64 alphabet cannot end the literal, and the text
stays constant apart from it, so a pooled shell (whose environment is fixed when it is created) can run
any call, and ``parse_rendered`` (used by jit-winrm-sim) recovers the template and the data exactly.

Each script catches the cmdlet errors it expects and prints one JSON object on stdout, ``{"status": ...}``;
an error it does not expect prints ``status: "error"`` with the FullyQualifiedErrorId and exits 1.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

ENV_MEMBER = "JIT_MEMBER"  # an account name (resolve, list_sessions)
ENV_GROUP = "JIT_GROUP"  # a group SID or name (resolve)
ENV_GROUP_KIND = "JIT_GROUP_KIND"  # "SID" or "Name": which Get-LocalGroup parameter set to use (resolve)
ENV_GROUP_SID = "JIT_GROUP_SID"  # add, remove, list_members
ENV_MEMBER_SID = "JIT_MEMBER_SID"  # add, remove
ENV_SESSION_ID = "JIT_SESSION_ID"
ENV_LOGOFF = "JIT_LOGOFF"  # revoke: "1" logs the account's sessions off, "0" only lists them

DATA_PLACEHOLDER = "@@JIT_DATA@@"  # not in the base64 alphabet: a template can never match its own rendering

POWERSHELL = "powershell.exe"
POWERSHELL_FLAGS = ("-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand")

_PREAMBLE = (
    "$ErrorActionPreference = 'Stop'\n$ProgressPreference = 'SilentlyContinue'\n"
    "$jitData = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('" + DATA_PLACEHOLDER + "'))\n"
    "foreach ($p in (ConvertFrom-Json $jitData).PSObject.Properties) {"
    " [Environment]::SetEnvironmentVariable($p.Name, [string]$p.Value) }\n"  # the process's own
)

_RESOLVE_GROUP = (
    "    if ($env:JIT_GROUP_KIND -eq 'SID') { $group = Get-LocalGroup -SID $env:JIT_GROUP }\n"
    "    else { $group = Get-LocalGroup -Name $env:JIT_GROUP }\n"
)
_GROUP_BY_SID = "    $group = Get-LocalGroup -SID $env:JIT_GROUP_SID\n"
# The member as a LocalPrincipal that carries only a SID: the cmdlet then uses the SID as is and never
# looks a name up (LocalAccounts' MakePrincipal). Building the SecurityIdentifier also refuses a malformed value.
_MEMBER_BY_SID = (
    "    $sid = [Security.Principal.SecurityIdentifier]::new($env:JIT_MEMBER_SID)\n"
    "    $principal = New-Object Microsoft.PowerShell.Commands.LocalPrincipal\n"
    "    $principal.SID = $sid\n"
)
# A group's members by ADSI (the WinNT provider: `$group.psbase.Invoke('Members')`), which reads the SIDs the
# group holds. Windows PowerShell 5.1's Get-LocalGroupMember cannot list a group that holds an orphaned SID
# (an account deleted from its domain, an Azure AD SID): "Failed to compare two elements in the array",
# PowerShell/PowerShell issues 2996 and 21617. The checks
# (is $sid listed?) need only SIDs: Get-JitSids reads them by ADSI alone (and is short: the revoke script is
# near cmd.exe's line limit). The reconciler's listing wants names and classes for people: Get-JitMembers
# asks the cmdlet and falls back to ADSI, where a member no name resolves is listed under its SID. A missing
# group or a denied access is the cmdlet's answer as it is. Never Get-LocalGroupMember -Member, which matches
# names and writes PrincipalNotFound for a non-member.
ADSI_FALLBACK = ".psbase.Invoke('Members')"
_ADSI_MEMBERS = "@(([ADSI]\"WinNT://$env:COMPUTERNAME/$($g.Name),group\")" + ADSI_FALLBACK + ")"
_ADSI_SID = ("[Security.Principal.SecurityIdentifier]::new([byte[]]$_.GetType().InvokeMember('objectSid',"
             " 'GetProperty', $null, $_, $null), 0).Value")
_SIDS_FN = "function Get-JitSids($g) {\n" + _ADSI_MEMBERS + " | % { " + _ADSI_SID + " }\n}\n"
_MEMBERS_FN = (
    "function Get-JitMembers($g) {\n"
    "try { return @(Get-LocalGroupMember -Group $g | ForEach-Object {"
    " [ordered]@{ sid = $_.SID.Value; name = [string]$_.Name; class = [string]$_.ObjectClass } }) }\n"
    "catch { if ([string]$_.FullyQualifiedErrorId -match '^(GroupNotFound|AccessDenied),') { throw } }\n"
    + _ADSI_MEMBERS + " | ForEach-Object {\n"
    "$path = [string]$_.GetType().InvokeMember('ADsPath', 'GetProperty', $null, $_, $null)\n"
    "[ordered]@{ sid = " + _ADSI_SID + "; name = (@($path.Substring(8) -split '/') | Select-Object -Last 2)"
    " -join '\\'; class = [string]$_.GetType().InvokeMember('Class', 'GetProperty', $null, $_, $null) }\n"
    "}\n}\n"
)
# Whether the group lists $sid, compared by SID (-contains: case-insensitive, as SIDs are).
_LISTED = "    $listed = @(Get-JitSids $group) -contains $sid.Value\n"


# Add the principal; "already a member" (MemberExists) is an answer, not an error.
_ADD = (
    "    $status = 'added'\n"
    "    try { Add-LocalGroupMember -Group $group -Member $principal }\n"
    "    catch {\n"
    "        if (-not ([string]$_.FullyQualifiedErrorId -like 'MemberExists,*')) { throw }\n"
    "        $status = 'already_member'\n"
    "    }\n"
)
# Remove the principal; "not a member" (MemberNotFound) is an answer, not an error.
_REMOVE = (
    "    $status = 'removed'\n"
    "    try { Remove-LocalGroupMember -Group $group -Member $principal }\n"
    "    catch {\n"
    "        if (-not ([string]$_.FullyQualifiedErrorId -like 'MemberNotFound,*')) { throw }\n"
    "        $status = 'not_member'\n"
    "    }\n"
)


def _catch(mapping: tuple[tuple[str, str], ...]) -> str:
    branches = "".join(
        f"    {'if' if i == 0 else 'elseif'} ($id -like '{fq}') {{ $code = '{status}' }}\n"
        for i, (fq, status) in enumerate(mapping)
    )
    return (
        "} catch {\n"
        "    $id = [string]$_.FullyQualifiedErrorId\n"
        "    $code = 'error'\n"
        f"{branches}"
        "    ConvertTo-Json -Compress -InputObject ([ordered]@{ status = $code; error_id = $id;"
        " message = [string]$_.Exception.Message })\n"
        "    if ($code -eq 'error') { exit 1 }\n"
        "}\n"
    )


_COMMON_ERRORS = (
    ("GroupNotFound,*", "group_not_found"),
    ("PrincipalNotFound,*", "principal_not_found"),
    ("AccessDenied,*", "access_denied"),
)

# The account name -> SID (NTAccount.Translate; IdentityNotMappedException when it does not resolve), the
# account's current name (the SID translated back), its class (ADSI WinNT SchemaClassName: User or Group;
# a well-known principal has none), the group's SID, and whether the group lists the account's SID.
RESOLVE = (
    _PREAMBLE
    + _SIDS_FN
    + "try {\n"
    + _RESOLVE_GROUP
    + "    $account = [System.Security.Principal.NTAccount]::new($env:JIT_MEMBER)\n"
    + "    $sid = $account.Translate([System.Security.Principal.SecurityIdentifier])\n"
    + "    $name = $sid.Translate([System.Security.Principal.NTAccount]).Value\n"
    + "    $class = ''\n"
    + "    $parts = @($name -split '\\\\', 2)\n"
    + "    if ($parts.Count -eq 2) {\n"
    + "        try { $class = [string]([ADSI]('WinNT://' + $parts[0] + '/' + $parts[1])).SchemaClassName }\n"
    + "        catch { $class = '' }\n"
    + "    }\n"
    + _LISTED
    + "    ConvertTo-Json -Compress -InputObject ([ordered]@{ status = 'ok'; sid = $sid.Value; name = $name;"
    " class = $class; group_sid = $group.SID.Value; member = $listed })\n"
    + _catch((("IdentityNotMapped*", "principal_not_found"), *_COMMON_ERRORS))
)

# Add by SID, then list the group in the same run: one PowerShell run is the add and its verification.
ADD_MEMBER_SID = (
    _PREAMBLE
    + _SIDS_FN
    + "try {\n"
    + _GROUP_BY_SID
    + _MEMBER_BY_SID
    + _ADD
    + _LISTED
    + "    ConvertTo-Json -Compress -InputObject ([ordered]@{ status = $status; member = $listed })\n"
    + _catch(_COMMON_ERRORS)
)

# Remove by SID, then list. MemberNotFound is "not a member"; PrincipalNotFound (the SID is no account the
# host knows) is not success and reaches the caller as principal_not_found.
REMOVE_MEMBER_SID = (
    _PREAMBLE
    + _SIDS_FN
    + "try {\n"
    + _GROUP_BY_SID
    + _MEMBER_BY_SID
    + _REMOVE
    + _LISTED
    + "    ConvertTo-Json -Compress -InputObject ([ordered]@{ status = $status; member = $listed })\n"
    + _catch(_COMMON_ERRORS)
)

LIST_MEMBERS = (
    _PREAMBLE
    + _MEMBERS_FN
    + "try {\n"
    + _GROUP_BY_SID
    + "    $rows = @(Get-JitMembers $group)\n"
    + "    ConvertTo-Json -Compress -Depth 3 -InputObject ([ordered]@{ status = 'ok'; members = @($rows) })\n"
    + _catch(_COMMON_ERRORS)
)

# quser prints only the bare user name, so sessions are matched on the account part of JIT_MEMBER.
# quser writes "No User exists for *" to stderr and exits 1 when nobody is logged on: not an error here.
_SESSIONS = (
    "    $want = ($env:JIT_MEMBER -split '\\\\')[-1]\n"
    "    $ErrorActionPreference = 'Continue'\n"
    "    $lines = @(quser.exe 2>$null)\n"
    "    $ErrorActionPreference = 'Stop'\n"
    "    $rows = @()\n"
    "    foreach ($line in ($lines | Select-Object -Skip 1)) {\n"
    "        $t = @($line.Substring(1).Trim() -split '\\s{2,}')\n"
    "        if ($t.Count -eq 5) { $t = @($t[0], '', $t[1], $t[2], $t[3], $t[4]) }\n"
    "        if ($t.Count -ge 6 -and $t[0] -eq $want) {\n"
    "            $rows += [ordered]@{ id = $t[2]; user = $t[0]; state = $t[3]; logon_time = $t[5] }\n"
    "        }\n"
    "    }\n"
)
LIST_SESSIONS = (
    _PREAMBLE
    + "try {\n"
    + _SESSIONS
    + "    ConvertTo-Json -Compress -Depth 3 -InputObject ([ordered]@{ status = 'ok'; sessions = @($rows) })\n"
    + _catch(())
)

# logoff.exe exits non-zero when the session does not exist (any more): that is the wanted end state.
LOGOFF = (
    _PREAMBLE
    + "try {\n"
    + "    $sid = [int]$env:JIT_SESSION_ID\n"
    + "    $ErrorActionPreference = 'Continue'\n"
    + "    logoff.exe $sid 2>$null\n"
    + "    $rc = $LASTEXITCODE\n"
    + "    $ErrorActionPreference = 'Stop'\n"
    + "    if ($rc -eq 0) { '{\"status\":\"logged_off\"}' } else { '{\"status\":\"no_session\"}' }\n"
    + _catch(())
)

# One run of an elevation whose account SID is already known (a grant of the same account on this host
# before): the name must still translate to that SID, else nothing is changed ("sid_changed"); then the
# membership before (was_member), the add by SID, and the listing after, in one JSON answer.
ELEVATE_KNOWN = (
    _PREAMBLE
    + _SIDS_FN
    + "try {\n"
    + _GROUP_BY_SID
    + "    $sid = [System.Security.Principal.NTAccount]::new($env:JIT_MEMBER)"
    ".Translate([System.Security.Principal.SecurityIdentifier])\n"
    + "    if ($sid.Value -ne $env:JIT_MEMBER_SID) {\n"
    + "        ConvertTo-Json -Compress -InputObject ([ordered]@{ status = 'sid_changed'; sid = $sid.Value })\n"
    + "        exit 0\n"
    + "    }\n"
    + "    $principal = New-Object Microsoft.PowerShell.Commands.LocalPrincipal\n"
    + "    $principal.SID = $sid\n"
    + _LISTED.replace("$listed", "$was")
    + _ADD
    + _LISTED
    + "    ConvertTo-Json -Compress -InputObject ([ordered]@{ status = $status; was_member = $was;"
    " member = $listed })\n"
    + _catch((("IdentityNotMapped*", "principal_not_found"), *_COMMON_ERRORS))
)

# One run of a revocation: remove by SID, list the group (verify), and once the SID is out, the account's
# logon sessions, logged off when JIT_LOGOFF is 1. A failure in the sessions part is reported in
# sessions_error and never hides the removal's answer.
REVOKE = (
    _PREAMBLE
    + _SIDS_FN
    + "try {\n"
    + _GROUP_BY_SID
    + _MEMBER_BY_SID
    + _REMOVE
    + _LISTED
    + "    $rows = @(); $sesErr = ''\n"
    + "    if (-not $listed) {\n"
    + "        try {\n"
    + _SESSIONS
    + "    if ($env:JIT_LOGOFF -eq '1') {\n"
    + "        foreach ($r in $rows) {\n"
    + "            $ErrorActionPreference = 'Continue'; logoff.exe ([int]$r.id) 2>$null\n"
    + "            $ErrorActionPreference = 'Stop'; $r.action = 'logged_off'\n"
    + "        }\n"
    + "    }\n"
    + "        } catch { $sesErr = [string]$_.Exception.Message }\n"
    + "    }\n"
    + "    ConvertTo-Json -Compress -Depth 3 -InputObject ([ordered]@{ status = $status; member = $listed;"
    " sessions = @($rows); sessions_error = $sesErr })\n"
    + _catch(_COMMON_ERRORS)
)

ALL_SCRIPTS: dict[str, str] = {
    "resolve": RESOLVE,
    "add_member": ADD_MEMBER_SID,
    "remove_member": REMOVE_MEMBER_SID,
    "list_members": LIST_MEMBERS,
    "list_sessions": LIST_SESSIONS,
    "logoff": LOGOFF,
    "elevate_known": ELEVATE_KNOWN,
    "revoke": REVOKE,
}


def _compact(script: str) -> str:
    """Without indentation (PowerShell ignores it): every character costs 2.7 on the command line, which
    cmd.exe caps at 8191."""
    return "\n".join(line.strip() for line in script.splitlines()) + "\n"


ALL_SCRIPTS = {name: _compact(text) for name, text in ALL_SCRIPTS.items()}
RESOLVE, ADD_MEMBER_SID = ALL_SCRIPTS["resolve"], ALL_SCRIPTS["add_member"]
REMOVE_MEMBER_SID = ALL_SCRIPTS["remove_member"]
LIST_MEMBERS, LIST_SESSIONS, LOGOFF = ALL_SCRIPTS["list_members"], ALL_SCRIPTS["list_sessions"], ALL_SCRIPTS["logoff"]
ELEVATE_KNOWN, REVOKE = ALL_SCRIPTS["elevate_known"], ALL_SCRIPTS["revoke"]
_SPLIT = {name: tuple(text.split(DATA_PLACEHOLDER)) for name, text in ALL_SCRIPTS.items()}
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def render(script: str, data: dict[str, str]) -> str:
    """The script with ``data`` (validated values only) as base64 of its UTF-8 JSON in the one literal."""
    encoded = base64.b64encode(json.dumps(data, ensure_ascii=False).encode("utf-8")).decode("ascii")
    return script.replace(DATA_PLACEHOLDER, encoded, 1)


def parse_rendered(text: str) -> tuple[str, dict[str, str]] | None:
    """Which template ``text`` is and the data it carries; None unless it is exactly a template whose data
    literal holds valid base64 of a JSON object of strings (jit-winrm-sim's reading of a script)."""
    for name, parts in _SPLIT.items():
        if len(parts) != 2:
            continue
        prefix, suffix = parts
        if len(text) < len(prefix) + len(suffix) or not (text.startswith(prefix) and text.endswith(suffix)):
            continue
        literal = text[len(prefix):len(text) - len(suffix)]
        if not _BASE64.fullmatch(literal):
            return None
        try:
            data = json.loads(base64.b64decode(literal, validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            return None
        return name, data
    return None


def encode_command(script: str) -> str:
    """``-EncodedCommand`` form: base64 of the UTF-16LE script text."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def powershell_arguments(script: str) -> list[str]:
    return [*POWERSHELL_FLAGS, encode_command(script)]


def parse_result(stdout: bytes) -> dict[str, Any]:
    """Read the last JSON object line the script printed; raise ValueError if there is none."""
    for line in reversed(stdout.decode("utf-8", errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict) and isinstance(value.get("status"), str):
                return value
    raise ValueError("no JSON result line on stdout")
