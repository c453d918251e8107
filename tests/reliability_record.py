"""What a reliability test tried and how it went, as one JSON file that `tools/reliability.py` turns into
`docs/reliability.md`.

Where: the folder in env `JIT_RELIABILITY_DIR`, default `.reliability/` at the repository root (gitignored),
so a normal test run writes nothing into the tracked tree. One file per test case:
`<suite>--<case>.json` (a rerun of the same case overwrites its file; several cases of one suite add up).

Use (any test, any level):

    from tests.reliability_record import Record
    record = Record("dead-letters", "poison", command="pytest tests/integration/test_dead_letters.py")
    record.tried("body that is not JSON", kind="bad input", count=1, outcome="dead-lettered at once, reason logged")
    record.tried("RabbitMQ node stopped", kind="fault", at=[time.time()], outcome="daemons failed over")
    record.checked("no message lost", ok=True, detail="300 published, 300 processed")
    record.write()            # at the end of the test, after its assertions passed (or with ok=False rows)

The format ("jit-reliability/1"), every key always present:

    {
      "format": "jit-reliability/1",
      "suite": "chaos",                      # one row group in the report; e.g. chaos, cluster, dead-letters
      "case": "full",                         # the test case within the suite
      "date": "2026-11-30T21:00:00Z",        # UTC, when the file was written
      "nproc": 2,                             # os.cpu_count() of the machine that ran it
      "duration_seconds": 123.4,              # from Record() to write()
      "command": "pytest -m chaos ...",       # how to reproduce it
      "size": {"lifecycles": 300},            # free-form parameters of this run (ints/strings)
      "tried": [                              # every fault or bad input, one row per distinct thing
        {"what": "SIGKILL jit-reaper", "kind": "fault", "count": 12,
         "at": [1764536400.1, ...],           # unix times of each occurrence (may be empty)
         "outcome": "restarted, consumed again", "ok": true}
      ],
      "checked": [                            # every invariant asserted, with its result
        {"what": "every request final", "ok": true, "detail": "300/300"}
      ],
      "extra": {}                             # anything else the suite wants to keep (per-story counts...)
    }

`kind` is one of KINDS. `tried` rows of the same `what` add up (counts summed, times appended).
A soak run writes `soak.json` in its own format beside these (see tools/reliability.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMAT = "jit-reliability/1"
KINDS = ("fault", "bad input", "scan")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".reliability"


def results_dir() -> Path:
    return Path(os.environ.get("JIT_RELIABILITY_DIR") or DEFAULT_DIR)


class Record:
    """The rows of one test case; `write()` saves them as `<suite>--<case>.json` in `results_dir()`."""

    def __init__(self, suite: str, case: str, *, command: str, size: dict[str, Any] | None = None) -> None:
        self.suite, self.case, self.command = suite, case, command
        self.size = dict(size or {})
        self.started = time.monotonic()
        self.rows: dict[str, dict[str, Any]] = {}
        self.checks: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self._lock = threading.Lock()  # faults may be recorded from several threads

    def tried(self, what: str, *, kind: str, outcome: str, count: int = 1, ok: bool = True,
              at: list[float] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        with self._lock:
            row = self.rows.setdefault(what, {"what": what, "kind": kind, "count": 0, "at": [], "outcome": outcome,
                                              "ok": True})
            row["count"] += count
            row["at"].extend(round(t, 3) for t in at or [])
            row["outcome"] = outcome
            row["ok"] = row["ok"] and ok

    def checked(self, what: str, *, ok: bool, detail: str = "") -> None:
        self.checks.append({"what": what, "ok": ok, "detail": detail})

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "suite": self.suite, "case": self.case,
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "nproc": os.cpu_count() or 0,
                "duration_seconds": round(time.monotonic() - self.started, 1), "command": self.command,
                "size": self.size, "tried": list(self.rows.values()), "checked": self.checks, "extra": self.extra}

    def write(self, folder: Path | None = None) -> Path:
        folder = folder or results_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.suite}--{self.case}.json"
        path.write_text(json.dumps(self.as_dict(), indent=2, sort_keys=False) + "\n")
        return path


def database_kind(url: str) -> str:
    """`sqlite` or `postgresql`: the case-name suffix of a test that runs on both databases."""
    return url.split(":", 1)[0].split("+", 1)[0]

