"""The revocation pool takes the next due revocations itself once it has been full (a backlog), and a
pool that was never full adds no claim."""

from __future__ import annotations

import threading
from collections import deque

from services.reaper.pool import RevocationPool
from tests.support import poll


class Due:
    """A stand-in for `Revoker.claim_due`: hands out what is due, up to the limit asked."""

    def __init__(self, ids: list[str]) -> None:
        self.due = deque(ids)
        self.asked: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, limit: int) -> list[str]:
        with self.lock:
            self.asked.append(limit)
            return [self.due.popleft() for _ in range(min(limit, len(self.due)))]


def test_a_full_pool_takes_the_backlog_without_waiting_for_a_sweep() -> None:
    done: list[str] = []
    gate = threading.Event()
    lock = threading.Lock()

    def work(request_id: str, in_process: bool) -> None:
        gate.wait()
        with lock:
            done.append(request_id)

    due = Due([f"due-{i}" for i in range(7)])
    pool = RevocationPool(2, work, due)
    try:
        assert pool.submit("a", in_process=True) and pool.submit("b", in_process=True)  # full: a backlog may wait
        gate.set()
        poll(lambda: len(done) == 9, what="the backlog taken by the pool's own threads")
        assert sorted(done) == sorted(["a", "b", *(f"due-{i}" for i in range(7))])
        poll(lambda: not pool.room() < 2, what="the pool idle")
        assert due.asked[-1] > 0 and not due.due  # it stopped when a claim found fewer than it asked for
        asked = len(due.asked)
        assert pool.submit("c", in_process=True)
        poll(lambda: "c" in done, what="one more revocation")
        assert len(due.asked) == asked  # not full since: no claim
    finally:
        pool.shutdown(1.0)


def test_a_pool_that_was_never_full_adds_no_claim() -> None:
    done: list[str] = []
    due = Due(["due-0"])
    pool = RevocationPool(4, lambda rid, _: done.append(rid), due)
    try:
        for rid in ("a", "b", "c"):
            pool.submit(rid, in_process=True)
        poll(lambda: len(done) == 3, what="three revocations")
        assert due.asked == [] and list(due.due) == ["due-0"]  # left to the sweeper
    finally:
        pool.shutdown(1.0)
