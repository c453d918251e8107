"""What the simulated host runs: ``whoami``, ``net localgroup``, and the adapter's fixed PowerShell scripts.

PowerShell is not interpreted. ``powershell ... -EncodedCommand <b64>`` is decoded and must be exactly
one of the templates in :mod:`shared.winrm.scripts` with base64 of a JSON object of strings in its one data
literal (``scripts.parse_rendered``); a match runs the Python model of that script, with the shell
environment overlaid by that data, anything else gets a PowerShell error (CLIXML on stderr, exit code 1).
``net localgroup`` answers with net.exe's messages and exit code 2.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from xml.sax.saxutils import escape

from shared.winrm import scripts

from .host import Account, Group, PSError, WindowsHost, is_sid


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    rc: int


def _ps_error(message: str, error_id: str) -> Result:
    """stderr as powershell.exe writes it for a terminating error when run non-interactively."""
    text = escape(f"{message}\r\n    + CategoryInfo          : NotSpecified: (:) [], Exception\r\n"
                  f"    + FullyQualifiedErrorId : {error_id}\r\n \r\n").replace("\r\n", "_x000D__x000A_")
    clixml = (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        f'<S S="Error">{text}</S></Objs>'
    )
    return Result("", clixml, 1)


def _json_line(obj: dict[str, object]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\r\n"


def _caught(err: PSError, known: dict[str, str]) -> Result:
    prefix = err.error_id.split(",", 1)[0]
    status = known.get(prefix, "error")
    line = _json_line({"status": status, "error_id": err.error_id, "message": err.message})
    return Result(line, "", 1 if status == "error" else 0)


_COMMON = {"GroupNotFound": "group_not_found", "PrincipalNotFound": "principal_not_found",
           "AccessDenied": "access_denied"}


def _security_identifier(value: str | None) -> str:
    """[System.Security.Principal.SecurityIdentifier]::new(value), as the scripts build it."""
    if value is None:
        raise PSError("MethodInvocationException", 'Exception calling ".ctor" with "1" argument(s): '
                      '"Value cannot be null.\r\nParameter name: sddlForm"')
    if not is_sid(value):
        raise PSError("ArgumentException", 'Exception calling ".ctor" with "1" argument(s): '
                      '"Value was invalid.\r\nParameter name: sddlForm"')
    return value.upper()


def _members(host: WindowsHost, group: Group) -> list[Account]:
    """The listing script's Get-JitMembers: Get-LocalGroupMember, or ADSI when the cmdlet fails on the group
    (an orphaned SID); a missing group or a denied access stays the cmdlet's error."""
    try:
        return host.list_members(group)
    except PSError as err:
        if err.error_id.split(",", 1)[0] in ("GroupNotFound", "AccessDenied"):
            raise
        return host.members_of(group)


def _listed(host: WindowsHost, group: Group, sid: str) -> bool:
    """The scripts' checks (Get-JitSids): the SIDs the group holds, read by ADSI."""
    return any(a.sid == sid for a in host.members_of(group))


def _resolve(host: WindowsHost, env: dict[str, str]) -> Result:
    try:
        group = host.find_group(env.get(scripts.ENV_GROUP_KIND), env.get(scripts.ENV_GROUP))
        account = host.lookup(env.get(scripts.ENV_MEMBER))
        if account is None:
            raise PSError("IdentityNotMappedException", 'Exception calling "Translate" with "1" argument(s): '
                          '"Some or all identity references could not be translated."')
    except PSError as err:
        return _caught(err, {"IdentityNotMappedException": "principal_not_found", **_COMMON})
    # The class comes from ADSI WinNT://DOMAIN/NAME, which a name without a domain part never reaches.
    cls = account.object_class if "\\" in account.full_name else ""
    return Result(_json_line({"status": "ok", "sid": account.sid, "name": account.full_name, "class": cls,
                              "group_sid": group.sid, "member": _listed(host, group, account.sid)}), "", 0)


def _change_by_sid(adding: bool) -> Callable[[WindowsHost, dict[str, str]], Result]:
    def run(host: WindowsHost, env: dict[str, str]) -> Result:
        try:
            group = host.find_group("SID", env.get(scripts.ENV_GROUP_SID))
            sid = _security_identifier(env.get(scripts.ENV_MEMBER_SID))
            try:
                if adding:
                    host.add_member_sid(group, sid)
                else:
                    host.remove_member_sid(group, sid)
                status = "added" if adding else "removed"
            except PSError as err:
                if not err.error_id.startswith("MemberExists," if adding else "MemberNotFound,"):
                    raise
                status = "already_member" if adding else "not_member"
            return Result(_json_line({"status": status, "member": _listed(host, group, sid)}), "", 0)
        except PSError as err:
            return _caught(err, _COMMON)

    return run


def _list_members(host: WindowsHost, env: dict[str, str]) -> Result:
    try:
        group = host.find_group("SID", env.get(scripts.ENV_GROUP_SID))
        rows = [{"sid": a.sid, "name": a.full_name, "class": a.object_class} for a in _members(host, group)]
    except PSError as err:
        return _caught(err, _COMMON)
    return Result(_json_line({"status": "ok", "members": rows}), "", 0)


def _sessions(host: WindowsHost, env: dict[str, str]) -> list[dict[str, str]]:
    # Same parsing as the script applies to quser.exe output.
    want = env.get(scripts.ENV_MEMBER, "").split("\\")[-1].lower()
    rows = []
    for line in host.quser().splitlines()[1:]:
        t = re.split(r"\s{2,}", line[1:].strip())
        if len(t) == 5:
            t = [t[0], "", *t[1:]]
        if len(t) >= 6 and t[0].lower() == want:
            rows.append({"id": t[2], "user": t[0], "state": t[3], "logon_time": t[5]})
    return rows


def _list_sessions(host: WindowsHost, env: dict[str, str]) -> Result:
    return Result(_json_line({"status": "ok", "sessions": _sessions(host, env)}), "", 0)


def _elevate_known(host: WindowsHost, env: dict[str, str]) -> Result:
    try:
        group = host.find_group("SID", env.get(scripts.ENV_GROUP_SID))
        account = host.lookup(env.get(scripts.ENV_MEMBER))
        if account is None:
            raise PSError("IdentityNotMappedException", 'Exception calling "Translate" with "1" argument(s): '
                          '"Some or all identity references could not be translated."')
        if account.sid != (env.get(scripts.ENV_MEMBER_SID) or "").upper():
            return Result(_json_line({"status": "sid_changed", "sid": account.sid}), "", 0)
        was = _listed(host, group, account.sid)
        try:
            host.add_member_sid(group, account.sid)
            status = "added"
        except PSError as err:
            if not err.error_id.startswith("MemberExists,"):
                raise
            status = "already_member"
        return Result(_json_line({"status": status, "was_member": was,
                                  "member": _listed(host, group, account.sid)}), "", 0)
    except PSError as err:
        return _caught(err, {"IdentityNotMappedException": "principal_not_found", **_COMMON})


def _revoke(host: WindowsHost, env: dict[str, str]) -> Result:
    removed = _change_by_sid(adding=False)(host, env)
    answer = json.loads(removed.stdout)
    if answer.get("status") not in ("removed", "not_member"):
        return removed
    rows: list[dict[str, str]] = []
    if not answer["member"]:
        rows = _sessions(host, env)
        if env.get(scripts.ENV_LOGOFF) == "1":
            for row in rows:
                host.logoff(int(row["id"]))
                row["action"] = "logged_off"
    answer.update({"sessions": rows, "sessions_error": ""})
    return Result(_json_line(answer), "", 0)


def _logoff(host: WindowsHost, env: dict[str, str]) -> Result:
    raw = env.get(scripts.ENV_SESSION_ID, "")
    if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", raw or ""):
        err = PSError("InvalidCastFromStringToInteger",
                      f'Cannot convert value "{raw}" to type "System.Int32". Error: "Input string was not '
                      'in a correct format."')
        return _caught(err, {})
    done = host.logoff(int(raw))
    return Result(_json_line({"status": "logged_off" if done else "no_session"}), "", 0)


SCRIPT_HANDLERS: dict[str, Callable[[WindowsHost, dict[str, str]], Result]] = {
    "resolve": _resolve,
    "add_member": _change_by_sid(adding=True),
    "remove_member": _change_by_sid(adding=False),
    "list_members": _list_members,
    "list_sessions": _list_sessions,
    "logoff": _logoff,
    "elevate_known": _elevate_known,
    "revoke": _revoke,
}


def split_command_line(line: str) -> list[str]:
    """cmd.exe-style word split: whitespace separates, double quotes group (and are dropped)."""
    return [m.group(1) if m.group(1) is not None else m.group(2)
            for m in re.finditer(r'"([^"]*)"|(\S+)', line)]


def decode_encoded_command(words: list[str]) -> str | None:
    """The script of ``powershell ... -EncodedCommand <b64>``, or None if there is none or it is not valid."""
    for i, word in enumerate(words[:-1]):
        if word.lower() in ("-encodedcommand", "-enc", "-ec", "-e"):
            try:
                return base64.b64decode(words[i + 1], validate=True).decode("utf-16-le")
            except (binascii.Error, UnicodeDecodeError):
                return None
    return None


def _net_localgroup(host: WindowsHost, words: list[str]) -> Result:
    ok = Result("The command completed successfully.\r\n\r\n", "", 0)
    if len(words) != 5 or words[1].lower() != "localgroup" or words[4].lower() not in ("/add", "/delete"):
        return Result("", "The syntax of this command is:\r\n\r\nNET LOCALGROUP\r\n[groupname [/COMMENT:\"text\"]"
                      " [/DOMAIN]]\r\n              groupname name [...] {/ADD | /DELETE} [/DOMAIN]\r\n\r\n", 1)
    try:
        group = host.find_group("Name", words[2])
    except PSError:
        return Result("", "The group name could not be found.\r\n\r\nMore help is available by typing "
                      "NET HELPMSG 2220.\r\n\r\n", 2)
    if not host.service_is_admin:
        return Result("", "System error 5 has occurred.\r\n\r\nAccess is denied.\r\n\r\n", 2)
    try:
        (host.add_member if words[4].lower() == "/add" else host.remove_member)(group, words[3])
    except PSError as err:
        if err.error_id.startswith("MemberExists"):
            return Result("", "System error 1378 has occurred.\r\n\r\nThe specified account name is already "
                          "a member of the group.\r\n\r\n", 2)
        if err.error_id.startswith("MemberNotFound"):
            return Result("", "System error 1377 has occurred.\r\n\r\nThe specified account name is not a "
                          "member of the group.\r\n\r\n", 2)
        return Result("", f"There is no such global user or group: {words[3]}.\r\n\r\nMore help is available "
                      "by typing NET HELPMSG 3783.\r\n\r\n", 2)
    return ok


@dataclass(frozen=True)
class Execution:
    result: Result
    script: str | None  # the decoded PowerShell script, if any
    script_name: str | None  # which adapter template it matched, if any
    env: dict[str, str] | None = None  # what the script read: the shell environment overlaid by its data


def execute(host: WindowsHost, user: str, command: str, arguments: str, env: dict[str, str]) -> Execution:
    """Run one WinRS command line (``command`` + space + ``arguments``) against ``host``."""
    words = split_command_line(f"{command} {arguments}".strip())
    program = words[0].lower().removesuffix(".exe") if words else ""
    if program == "whoami" and len(words) == 1:
        return Execution(Result(f"{user.lower()}\r\n", "", 0), None, None)
    if program == "net" and len(words) >= 2:
        return Execution(_net_localgroup(host, words), None, None)
    if program == "powershell":
        script = decode_encoded_command(words)
        if script is None:
            return Execution(_ps_error("jit-winrm-sim runs only -EncodedCommand scripts.",
                                       "NotSupported"), None, None)
        parsed = scripts.parse_rendered(script)
        if parsed is None:
            return Execution(_ps_error("The script is not one this simulated host recognises "
                                       "(jit-winrm-sim runs only the adapter's fixed scripts).",
                                       "CommandNotFoundException"), script, None)
        name, data = parsed
        merged = {**env, **data}
        try:
            result = SCRIPT_HANDLERS[name](host, merged)
        except PSError as err:  # every script's body is in one try: its catch answers what the model did not
            result = _caught(err, _COMMON)
        return Execution(result, script, name, merged)
    name = words[0] if words else ""
    return Execution(Result("", f"'{name}' is not recognized as an internal or external command,\r\n"
                            "operable program or batch file.\r\n", 1), None, None)
