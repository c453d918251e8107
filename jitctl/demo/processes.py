"""The demo's child processes: the simulator and the three daemons, started and always stopped.

Children run in their own sessions, so a Ctrl-C reaches only the demo, which then stops each of
them with SIGTERM (SIGKILL after a grace period). `Children.stop_all` runs from a `finally`, so no
process is left behind whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any


def script(name: str) -> str:
    """The console script next to the running interpreter (the venv's), else on PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


class Children:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], *, stdout: int | None = None
              ) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop_all
        self._files.append(log)
        proc = subprocess.Popen(argv, env=env, stdout=stdout if stdout is not None else log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited early with code {proc.returncode}; see {self.folder / name}.log")

    def stop_all(self, grace: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for f in self._files:
            f.close()
        for proc in self.procs.values():
            if proc.stdout is not None:  # the simulator's ready-line pipe
                proc.stdout.close()


def start_simulator(children: Children, addresses: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Start `jit-winrm-sim` with one host per address and return its ready line."""
    argv = [script("jit-winrm-sim"), "--user", "CORP\\svc-jit", "--password-env", "JIT_DEMO_PASSWORD"]
    for address in addresses:
        argv += ["--host", f"{address}:0"]
    proc = children.start("winrm-sim", argv, env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        children.check_alive()
        raise RuntimeError("jit-winrm-sim printed nothing")
    ready: dict[str, Any] = json.loads(line)
    return ready
