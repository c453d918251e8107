"""What the expiry benchmarks share: simulated hosts as `jit-winrm-sim` processes, ELEVATED grants written
straight to the database with their ledger holds (each account already in the group on its host, as the
elevator leaves it), `jit-reaper` processes, and the timings read back from the database and the hosts.

A grant written here is what `tests/factories.make_grant` leaves, without running the elevator for each
of thousands of rows: the request ELEVATED with its SIDs, a membership of ours (baseline "no") and the
grant's hold on it, so the reaper's removal is one real `revoke` run on the host.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import transaction
from shared.db.models import Hold, Membership, Request
from shared.settings import Settings
from shared.winrm import scripts
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, seed_config
from tests.private_servers import PostgresInstance

USER, PASSWORD = "svc-jit", "Bench-Pa55word!"
BIN = Path(sys.executable).parent


@dataclass
class Sims:
    """`jit-winrm-sim` processes; `hosts` are (address, port, control_url, host id) in address order."""

    procs: list[subprocess.Popen[str]]
    hosts: list[tuple[str, int, str, int]]
    _local: threading.local = field(default_factory=threading.local)
    _opened: list[http.client.HTTPConnection] = field(default_factory=list)

    def control(self, host: int, verb: str, body: dict[str, Any] | None = None) -> Any:
        """One call of a host's control endpoint, on a kept-alive connection of this thread's."""
        _, _, url, ref = self.hosts[host]
        parts = urllib.parse.urlsplit(url)
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(parts.netloc)
        if conn is None:
            conn = conns[parts.netloc] = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
            self._opened.append(conn)
        data = None if body is None else json.dumps(body).encode()
        conn.request("GET" if body is None else "POST", f"{parts.path}/hosts/{ref}/{verb}", body=data,
                     headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        payload = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"control {verb}: {answer.status} {payload[:200]!r}")
        return json.loads(payload)

    def revoke_runs(self, host: int) -> dict[str, float]:
        """Account SID -> time.time() the host received the first `revoke` run for it."""
        first: dict[str, float] = {}
        for record in self.control(host, "log"):
            parsed = scripts.parse_rendered(record.get("script") or "")
            if parsed is not None and parsed[0] == "revoke":
                sid = parsed[1].get("JIT_MEMBER_SID", "")
                first.setdefault(sid, record["at"])
        return first

    def members(self, host: int) -> int:
        return len(self.control(host, f"groups/{ADMINISTRATORS}/members"))


@contextmanager
def sims(addresses: list[str], *, processes: int, ps_startup_ms: float) -> Iterator[Sims]:
    """Start the hosts spread over `processes` simulator processes (NTLM or basic, svc-jit)."""
    chunks = [addresses[i::processes] for i in range(processes) if addresses[i::processes]]
    procs: list[subprocess.Popen[str]] = []
    hosts: list[tuple[str, int, str, int]] = []
    world: Sims | None = None
    try:
        for chunk in chunks:
            args = [str(BIN / "jit-winrm-sim"), "--user", f"{USER}:{PASSWORD}", "--ps-startup-ms", str(ps_startup_ms)]
            for address in chunk:
                args += ["--host", f"{address}:0"]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(proc)
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            hosts += [(h["address"], h["port"], ready["control_url"], h["id"]) for h in ready["hosts"]]
        hosts.sort(key=lambda h: addresses.index(h[0]))
        world = Sims(procs, hosts)
        yield world
    finally:
        for conn in world._opened if world else []:
            conn.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()


def seed_hosts(factory: sessionmaker[Session], world: Sims, per_host: int) -> None:
    """The configuration: one host row per simulated host, `per_host` secrets (accounts acct-H-I) each."""
    seed_config(factory, [HostSpec(a, p, transport="ntlm") for a, p, _, _ in world.hosts], username=f"CORP\\{USER}",
                secrets_per_host=per_host)


def seed_grants(factory: sessionmaker[Session], world: Sims, slots: list[tuple[int, int]],
                expires_at: Callable[[int], datetime], now: datetime) -> list[str]:
    """One ELEVATED grant per (host, secret index) in `slots`, ending at `expires_at(n)` (asked once the
    hosts are ready); the account is made a member of Administrators on its host. Returns the request
    ids in slot order."""
    def member(slot: tuple[int, int]) -> str:
        h, i = slot
        sid = str(world.control(h, "accounts/resolve", {"name": f"acct-{h}-{i}"})["sid"])
        world.control(h, "members", {"group": ADMINISTRATORS, "member": f"acct-{h}-{i}"})
        return sid

    with ThreadPoolExecutor(max(len(world.procs), 1) * 2) as pool:
        sids = list(pool.map(member, slots))
    ids, requests, memberships = [], [], []
    for n, ((h, i), sid) in enumerate(zip(slots, sids, strict=True)):
        account = f"acct-{h}-{i}"
        rid = f"req-{uuid.uuid4().hex[:16]}"
        ids.append(rid)
        ends = expires_at(n)
        requests.append({
            "id": rid, "checkout_id": f"co-{rid}", "secret_id": f"sec-{h}-{i}", "requester_id": "alice",
            "host": world.hosts[h][0], "justification": "bench", "state": "ELEVATED", "task_id": "task",
            "account": account, "group": ADMINISTRATORS, "approver_id": "bob", "requested_at": now,
            "checkout_expires_at": ends + timedelta(hours=1), "decided_at": now, "expires_at": ends,
            "elevated_at": now, "pre_existing": False, "failed": False, "attempts": 0, "updated_at": now,
            "account_sid": sid, "group_sid": ADMINISTRATORS})
        memberships.append({"host": world.hosts[h][0], "group_sid": ADMINISTRATORS, "account_sid": sid,
                            "account": account, "baseline": "no", "ours": True, "created_at": now, "updated_at": now})
    with transaction(factory) as session:
        session.execute(sa.insert(Membership), memberships)
        by_key = {(str(m.host), str(m.account_sid)): m.id for m in session.scalars(sa.select(Membership))}
        session.execute(sa.insert(Request), requests)
        session.execute(sa.insert(Hold), [
            {"request_id": r["id"], "membership_id": by_key[(str(r["host"]), str(r["account_sid"]))], "held": True,
             "add_until": None, "decides_baseline": False, "created_at": now} for r in requests])
    return ids


def environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    env.update({f"JIT_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None})
    env.update({"JIT_LOG_FORMAT": "json", "JIT_LOG_LEVEL": "warning", PASSWORD_ENV: PASSWORD})
    return env


@contextmanager
def reapers(settings: Settings, replicas: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`replicas` jit-reaper processes (logs in a temporary file, kept and named on failure)."""
    log = tempfile.NamedTemporaryFile(prefix="jit-bench-reaper-", suffix=".log", delete=False)  # noqa: SIM115
    procs = [subprocess.Popen([str(BIN / "jit-reaper")], env=environment(settings), stdout=log,
                              stderr=subprocess.STDOUT) for _ in range(replicas)]
    failed = True
    try:
        yield procs
        failed = False
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        log.close()
        if failed:
            print(f"jit-reaper logs kept in {log.name}", file=sys.stderr)
        else:
            os.unlink(log.name)


def wait_revoked(factory: sessionmaker[Session], ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with factory() as session:
            done = session.scalar(sa.select(sa.func.count()).where(Request.id.in_(ids), Request.state == "REVOKED"))
        if done == len(ids):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done}/{len(ids)} revoked after {timeout:.0f} s")
        time.sleep(0.25)


def rows(factory: sessionmaker[Session], ids: list[str]) -> list[dict[str, Any]]:
    """expires_at, revoking_since, ended_at, host, account_sid of each request."""
    with factory() as session:
        found = session.execute(sa.select(Request.id, Request.host, Request.account_sid, Request.expires_at,
                                          Request.revoking_since, Request.ended_at).where(Request.id.in_(ids)))
        return [r._asdict() for r in found]


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    n = len(ordered)
    return {"p50_ms": round(1000 * ordered[n // 2], 1), "p99_ms": round(1000 * ordered[min(n - 1, int(0.99 * n))], 1),
            "max_ms": round(1000 * ordered[-1], 1), "min_ms": round(1000 * ordered[0], 1)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def postgres_server(server: str) -> Iterator[str]:
    """The admin URL to create the benchmark's database on: `server`, or with "private" a PostgreSQL instance
    of the benchmark's own (tests/private_servers.py, fsync off): several reapers' connection pools are not
    to be taken from a shared server's `max_connections`."""
    if server != "private":
        yield server
        return
    directory = Path(tempfile.mkdtemp(prefix="jit-bench-pg-"))
    instance = PostgresInstance(directory, options=["-c", "max_connections=300"]).start()
    try:
        yield instance.url()
    finally:
        instance.stop()
        shutil.rmtree(directory, ignore_errors=True)
