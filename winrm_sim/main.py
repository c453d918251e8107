"""``jit-winrm-sim``: run simulated Windows hosts (WinRM over HTTP/HTTPS) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from typing import Any

from shared.cli import FAILED, USAGE, OneLineParser, add_version, fail

from .control import ControlServer
from .server import SimulatedHost
from .tls import make_certificates

DEFAULT_PASSWORD_ENV = "JIT_WINRM_SIM_PASSWORD"  # noqa: S105 - a variable name, not a password
DEFAULT_PASSWORD = "Passw0rd!"  # noqa: S105 - the documented password of a test double

EPILOG = f"""
Accounts: --user DOMAIN\\USER:PASSWORD (or USER:PASSWORD); --user DOMAIN\\USER without a password
reads it from the environment variable named by --password-env (default {DEFAULT_PASSWORD_ENV}).
Default account: svc-jit, password from ${DEFAULT_PASSWORD_ENV} or "{DEFAULT_PASSWORD}".
Basic auth takes USER or DOMAIN\\USER; NTLM takes DOMAIN\\USER (DOMAIN = the account's domain or the
computer name). NTLM over http uses WinRM message encryption, as on Windows.

When every host listens, ONE JSON line is printed on stdout:
  {{"ready": true, "hosts": [{{"id": 0, "address", "port", "url", "https", "ca_file", ...}}],
   "control_url": "http://127.0.0.1:PORT/control", "pid": N}}
With --https, "ca_file" is the PEM of the CA that signed the hosts' certificate: pin it on clients.

Control endpoint (JSON, loopback only, no auth), {{id}} = host index or ADDRESS:PORT:
  GET  /control/hosts                       list hosts
  GET  /control/hosts/{{id}}                  groups/members/sessions/open shells/faults
  GET  /control/hosts/{{id}}/log              command log (decoded scripts and their env)
  POST /control/hosts/{{id}}/fault            {{"kind": "delay|http500|wsman|auth|drop", "action": "*|Create|Command|
                                            Receive|Signal|Delete", "count": N or null (until cleared),
                                            "fault": "TimedOut|Quota|InternalError|AccessDenied|InvalidSelectors",
                                            "seconds": S, "status": 500}}
  POST /control/hosts/{{id}}/clear            clear faults, command delay, credential rejection
  POST /control/hosts/{{id}}/stop | /start    refuse connections / listen again (same port)
  POST /control/hosts/{{id}}/down             {{"seconds": S}} down, then back on the same port
  POST /control/hosts/{{id}}/reject-credentials {{"on": true}}   every request answered 401
  POST /control/hosts/{{id}}/command-delay    {{"seconds": S}} slow command: Receive times out until done
  POST /control/hosts/{{id}}/cost             {{"ps_startup_ms": N, "latency_ms": N}} the cost model
  POST /control/hosts/{{id}}/max-shells       {{"n": N}} MaxShellsPerUser (default 30; beyond: quota fault)
  POST /control/hosts/{{id}}/access-denied    {{"on": true}} the service account is not an administrator
  POST /control/hosts/{{id}}/unknown-principals {{"names": [...]}} names that do not resolve
  POST /control/hosts/{{id}}/members[/remove] {{"group": SID, "member": NAME}} seed / unseed a membership
  GET  /control/hosts/{{id}}/groups/{{sid}}/members   the members with SIDs [{{"sid", "name", "class"}}]
  POST /control/hosts/{{id}}/accounts/rename  {{"old": NAME, "new": NAME}} Rename-LocalUser (same SID)
  POST /control/hosts/{{id}}/accounts/resolve {{"name": NAME}} -> {{"sid"}}
  POST /control/hosts/{{id}}/sessions         {{"account": NAME, "state": "Active|Disc"}} -> {{"session_id"}}
  POST /control/hosts/{{id}}/sessions/remove  {{"session_id": ID}}

Only the adapter's fixed PowerShell scripts (shared/winrm/scripts.py), whoami and
net localgroup G M /add|/delete are understood; other commands get a Windows-style error.
"""


EXIT_CODES = """
exit codes: 0 stopped by SIGTERM/SIGINT; 1 cannot listen (port in use, address not local);
2 a bad option (named).
"""


def _host_spec(text: str) -> tuple[str, int]:
    address, sep, port = text.rpartition(":")
    if not sep or address.endswith(":") or (address.count(":") and not address.startswith("[")):
        address, port = text, "0"
    if not address.strip("[]") or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: write ADDRESS or ADDRESS:PORT with PORT 0-65535 "
                                         "(e.g. 127.0.0.2:5985)")
    return address.strip("[]"), int(port)


def _pair(what: str) -> Any:
    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: write {what}")
        return key.strip(), value.strip()

    return parse


def _parse_users(values: list[str], password_env: str) -> tuple[dict[str, str], str | None]:
    users: dict[str, str] = {}
    domain = None
    for value in values or ["svc-jit"]:
        name, sep, password = value.partition(":")
        if not sep:
            password = os.environ.get(password_env, DEFAULT_PASSWORD if not values else "")
            if not password:
                fail("jit-winrm-sim", f"no password for {name}: set ${password_env} or use USER:PASSWORD", USAGE)
        if "\\" in name:
            domain, _, name = name.partition("\\")
        users[name] = password
    return users, domain


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="jit-winrm-sim", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG + EXIT_CODES,
        description="Simulated Windows hosts speaking WS-Management (WinRM cmd shell) to pywinrm, for tests "
                    "and demos. Runs until SIGTERM or SIGINT, then exits 0.")
    add_version(parser)
    parser.add_argument("--host", action="append", default=[], metavar="ADDRESS[:PORT]", type=_host_spec,
                        help="a host to simulate; repeat for several (127.0.0.2, 127.0.0.3 ... are loopback "
                             "too). Port 0 or none: an ephemeral port. Default: 127.0.0.1:0")
    parser.add_argument("--https", action="store_true", help="serve HTTPS with a generated CA and certificate")
    parser.add_argument("--user", action="append", default=[], metavar="[DOMAIN\\]USER[:PASSWORD]",
                        help="an account the hosts accept (repeatable)")
    parser.add_argument("--password-env", default=DEFAULT_PASSWORD_ENV, metavar="VAR",
                        help="environment variable holding the password of --user entries given without one")
    parser.add_argument("--domain", default="CORP", help="NetBIOS domain of the accounts (default CORP)")
    parser.add_argument("--computer-name", default="WIN-SIM{n:02d}",
                        help="computer name; {n} is the host number from 1 (default WIN-SIM{n:02d})")
    parser.add_argument("--auth", default="basic,ntlm", help="accepted auth schemes (default basic,ntlm)")
    parser.add_argument("--max-shells-per-user", type=int, default=30, help="MaxShellsPerUser (default 30)")
    parser.add_argument("--command-delay", type=float, default=0.0, metavar="S",
                        help="every command finishes S seconds after it starts (default 0)")
    parser.add_argument("--ps-startup-ms", type=float, default=0.0, metavar="N",
                        help="cost model: each PowerShell run's output is ready N ms after its Command, as a real "
                             "host starts powershell.exe (default 0)")
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="N",
                        help="cost model: every HTTP answer leaves N ms after its request (default 0)")
    parser.add_argument("--group-name", action="append", default=[], metavar="SID=NAME", type=_pair("SID=NAME"),
                        help="localised group name, e.g. S-1-5-32-544=Administratoren")
    parser.add_argument("--unknown-principal", action="append", default=[], metavar="NAME",
                        help="a name that does not resolve (PrincipalNotFound); repeatable")
    parser.add_argument("--seed", action="append", default=[], metavar="SID=MEMBER", type=_pair("SID=MEMBER"),
                        help="a standing membership present at start; repeatable")
    parser.add_argument("--control-port", type=int, default=0,
                        help="port of the control endpoint on 127.0.0.1 (default 0: ephemeral; -1: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    users, user_domain = _parse_users(args.user, args.password_env)
    specs = args.host or [("127.0.0.1", 0)]
    group_names = dict(args.group_name)
    tmp = tempfile.TemporaryDirectory(prefix="jit-winrm-sim-")
    cert = make_certificates(tuple(a for a, _ in specs), tmp.name) if args.https else None
    hosts = []
    try:
        for n, (address, port) in enumerate(specs, start=1):
            host = SimulatedHost(
                address, port, https=args.https, users=users, domain=user_domain or args.domain,
                computer_name=args.computer_name.format(n=n), auth=tuple(args.auth.split(",")),
                max_shells_per_user=args.max_shells_per_user, group_names=group_names,
                unknown_principals=set(args.unknown_principal), cert=cert)
            host.set_command_delay(args.command_delay)
            host.set_cost(ps_startup_ms=args.ps_startup_ms, latency_ms=args.latency_ms)
            for sid, member in args.seed:
                try:
                    host.seed_member(sid, member)
                except KeyError:
                    fail("jit-winrm-sim", f"--seed {sid}={member}: no group {sid} on a simulated host (give a "
                                          "built-in group's SID, e.g. S-1-5-32-544)", USAGE)
                except ValueError as exc:
                    fail("jit-winrm-sim", f"--seed {sid}={member}: {exc}", USAGE)
            try:
                hosts.append(host.start())
            except OSError as exc:
                fail("jit-winrm-sim", f"cannot listen on {address}:{port}: {exc.strerror or exc}; choose another "
                                      "--host ADDRESS:PORT (port 0: any free one)", FAILED)
        control = ControlServer(hosts, "127.0.0.1", args.control_port).start() if args.control_port >= 0 else None
    except OSError as exc:
        fail("jit-winrm-sim", f"cannot listen on 127.0.0.1:{args.control_port} for --control-port: "
                              f"{exc.strerror or exc}", FAILED)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ready: dict[str, Any] = {
        "ready": True,
        "hosts": [{"id": i, **h.describe()} for i, h in enumerate(hosts)],
        "control_url": control.url if control else None,
        "pid": os.getpid(),
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    if control:
        control.stop()
    for host in hosts:
        host.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
