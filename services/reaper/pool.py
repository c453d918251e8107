"""The revocation pool: threads that run claimed revocations off the consumer's workers.

A message handler commits REVOKING, claimed for this process, and returns (the message is acked), then
the pool performs the removal; in-process retries sleep here, not on a consumer thread. Everything
submitted is already claimed (leased) by its submitter. The pool remembers what it holds so it never
runs one request twice at once, and tells the sweeper how much room it has, so a replica never claims
more than it can start at once. Once the pool has been full (there may be more due than it had room
for: a mass expiry), a thread that finishes with nothing queued claims the next due revocations itself
(`claim_due`) until a claim finds fewer than it asked for, so a backlog keeps every thread busy instead
of waiting for the next sweep; a pool that is never full adds no query.

The threads are daemon threads and `shutdown` waits a bounded time: a WinRM call still in flight at
exit is abandoned, which is safe (the row stays REVOKING and is re-driven when its lease ends), and
keeps SIGTERM's exit within the contract's 30 seconds.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from shared import logs

log = logs.get_logger()


class RevocationPool:
    def __init__(self, size: int, work: Callable[[str, bool], None],
                 claim_due: Callable[[int], list[str]] | None = None) -> None:
        self.size = size
        self._work = work
        self._claim_due = claim_due
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._claiming = threading.Lock()
        self._closing = threading.Event()
        self._backlog = threading.Event()
        self._queue: queue.Queue[tuple[str, bool] | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._run, name=f"revoke-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def room(self) -> int:
        with self._lock:
            return max(self.size - len(self._held), 0)

    def submit(self, request_id: str, *, in_process: bool) -> bool:
        """Run one claimed revocation; `in_process`: retry in this process before going durable."""
        with self._lock:
            if request_id in self._held:
                return False
            self._held.add(request_id)
            if len(self._held) >= self.size:
                self._backlog.set()
        self._queue.put((request_id, in_process))
        return True

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            request_id, in_process = item
            try:
                self._work(request_id, in_process)
            except Exception as exc:  # the row stays REVOKING and due after its lease: nothing is lost
                log.error("revocation.crashed", request_id=request_id, error=str(exc), exc_info=True)
            finally:
                with self._lock:
                    self._held.discard(request_id)
            self._take_due()

    def _take_due(self) -> None:
        """Claim due revocations for the free threads (one thread at a time), as the sweeper's re-drive would."""
        if (self._claim_due is None or not self._backlog.is_set() or self._closing.is_set()
                or not self._queue.empty()):
            return
        if not self._claiming.acquire(blocking=False):
            return
        try:
            room = self.room()
            claimed = self._claim_due(room) if room else []
            if room and len(claimed) < room:
                self._backlog.clear()
            for request_id in claimed:
                self.submit(request_id, in_process=False)
        except Exception as exc:  # the database may be down: the sweeper tries again
            log.warning("revocation.claim_failed", error=str(exc))
        finally:
            self._claiming.release()

    def shutdown(self, grace: float) -> None:
        """Start nothing new; give running attempts up to `grace` seconds (their backoff sleeps end on
        the daemon's stopping event), then leave the rest to lease expiry."""
        self._closing.set()
        while True:
            try:
                request_id, _ = self._queue.get_nowait() or ("", False)
            except queue.Empty:
                break
            with self._lock:
                self._held.discard(request_id)
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            if self._held:
                log.warning("revocation.abandoned_at_shutdown", requests=sorted(self._held))
