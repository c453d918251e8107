"""`jit-winrm-sim` as a process: two hosts, the ready line, the adapter against it, the control endpoint,
and a quick exit 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.winrm import Credentials, HostEndpoint, MembershipClient, RetryableWinRMError
from tests.integration.winrm_fixtures import ADMINS, WARNING_FILTERS

pytestmark = [pytest.mark.filterwarnings(f) for f in WARNING_FILTERS]

CLI = Path(sys.executable).parent / "jit-winrm-sim"
CLIENT = MembershipClient(operation_timeout_sec=1, read_timeout_sec=2, deadline_sec=10)


def _ready_line(proc: subprocess.Popen[str], timeout: float = 15) -> dict[str, Any]:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    assert sel.select(timeout), "no ready line from jit-winrm-sim"
    return dict(json.loads(proc.stdout.readline()))


def _control(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    answer = requests.post(url + path, json=body or {}, timeout=5) if body is not None else \
        requests.get(url + path, timeout=5)
    answer.raise_for_status()
    return answer.json()


def test_help_explains_the_controls() -> None:
    out = subprocess.run([str(CLI), "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    for word in ("--host", "--https", "--user", "--control-port", "/control/hosts/{id}/fault", "down", "ready"):
        assert word in out


@pytest.mark.parametrize("https", [False, True])
def test_two_hosts_as_a_process(https: bool) -> None:
    env = {**os.environ, "JIT_WINRM_SIM_PASSWORD": "Cli-Pa55word"}
    args = [str(CLI), "--host", "127.0.0.2:0", "--host", "127.0.0.3", "--user", "CORP\\svc-jit",
            "--seed", f"{ADMINS}=CORP\\standing"] + (["--https"] if https else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = _ready_line(proc)
        assert ready["ready"] is True and len(ready["hosts"]) == 2
        control = ready["control_url"]
        creds = Credentials("CORP\\svc-jit", "Cli-Pa55word")
        first, second = ready["hosts"]
        assert (first["address"], second["address"]) == ("127.0.0.2", "127.0.0.3")
        eps = [HostEndpoint(h["address"], scheme="https" if https else "http", port=h["port"], transport="ntlm",
                            ca_file=h["ca_file"]) for h in (first, second)]
        alice = CLIENT.resolve(eps[1], creds, ADMINS, "CORP\\alice").account_sid
        assert CLIENT.add_member(eps[1], creds, ADMINS, alice) is True
        standing = CLIENT.resolve(eps[0], creds, ADMINS, "CORP\\standing")
        assert standing.member is True
        assert CLIENT.add_member(eps[0], creds, ADMINS, standing.account_sid) is False
        state = _control(control, "/hosts/1")
        assert state["groups"][ADMINS]["members"] == ["CORP\\alice", "CORP\\standing"]
        assert _control(control, "/hosts/0")["groups"][ADMINS]["members"] == ["CORP\\standing"]
        log = _control(control, f"/hosts/127.0.0.3:{second['port']}/log")
        assert [r["script_name"] for r in log] == ["resolve", "add_member"]
        assert log[0]["env"]["JIT_MEMBER"] == "CORP\\alice" and log[1]["env"]["JIT_MEMBER_SID"] == alice

        # accounts and SIDs through the control API: a domain account has one SID on both hosts
        assert _control(control, "/hosts/1/accounts/resolve", {"name": "CORP\\standing"}) == {
            "sid": standing.account_sid}
        local = _control(control, "/hosts/0/members", {"group": ADMINS, "member": "app"})["member"]
        assert local.endswith("\\app")
        app_sid = _control(control, "/hosts/0/accounts/resolve", {"name": "app"})["sid"]
        renamed = _control(control, "/hosts/0/accounts/rename", {"old": "app", "new": "app-renamed"})
        assert renamed["sid"] == app_sid
        listed = _control(control, f"/hosts/0/groups/{ADMINS}/members")
        assert {"sid": app_sid, "name": local.replace("app", "app-renamed"), "class": "User"} in listed
        assert CLIENT.remove_member(eps[0], creds, ADMINS, app_sid) is True
        assert app_sid not in {m["sid"] for m in _control(control, f"/hosts/0/groups/{ADMINS}/members")}

        # Shells are pooled, so the next call sends a Command on a shell it already has: fail that.
        _control(control, "/hosts/0/fault", {"kind": "http500", "action": "Command", "count": 1})
        with pytest.raises(RetryableWinRMError):
            CLIENT.is_member(eps[0], creds, ADMINS, standing.account_sid)
        session = _control(control, "/hosts/0/sessions", {"account": "CORP\\standing"})["session_id"]
        assert [s.session_id for s in CLIENT.list_sessions(eps[0], creds, "CORP\\standing")] == [session]
        _control(control, "/hosts/0/down", {"seconds": 0.5})
        with pytest.raises(RetryableWinRMError):
            CLIENT.is_member(eps[0], creds, ADMINS, standing.account_sid)
        time.sleep(0.8)
        assert CLIENT.is_member(eps[0], creds, ADMINS, standing.account_sid) is True

        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
