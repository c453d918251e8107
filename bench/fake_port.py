"""`python -m bench.fake_port elevator|reaper`: that daemon, built as its console script builds it, but with the
in-memory WinRM port (shared/winrm/fake.py) in place of the adapter: what the pipeline costs with WinRM at zero.

Each process has its own fake host. Both create the stack's accounts (`acct-0-0` .. `acct-0-<N-1>`, N from
$BENCH_FAKE_ACCOUNTS, on host $BENCH_FAKE_HOST) in the same order at start, so an account has the same SID
in both; the reaper's removals then find "not a member" (a confirmed removal) in its own fake.
"""

from __future__ import annotations

import os
import sys

from services.elevator.handler import ROUTING_KEYS, Elevator
from services.reaper.main import build as build_reaper
from shared.daemon import Runtime, daemon_main
from shared.winrm import FakeWinRM


def fake_host() -> FakeWinRM:
    fake = FakeWinRM()
    for i in range(int(os.environ.get("BENCH_FAKE_ACCOUNTS", "0"))):
        fake.sid_of(os.environ.get("BENCH_FAKE_HOST", "127.0.0.1"), f"acct-0-{i}")
    return fake


def _elevator(runtime: Runtime) -> int:
    elevator = Elevator(runtime.factory, fake_host(), runtime.settings, runtime.clock)
    return runtime.serve(ROUTING_KEYS, elevator.process)


def main() -> None:
    name = sys.argv.pop(1) if len(sys.argv) > 1 else ""
    if name == "elevator":
        daemon_main("elevator", "jit-elevator with the in-memory WinRM port (benchmarks only).", _elevator)
    elif name == "reaper":
        daemon_main("reaper", "jit-reaper with the in-memory WinRM port (benchmarks only).",
                    lambda runtime: build_reaper(runtime, fake_host()))
    else:
        sys.exit("usage: python -m bench.fake_port elevator|reaper")


if __name__ == "__main__":
    main()
