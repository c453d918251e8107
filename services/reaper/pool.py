"""The revocation pool: threads that run claimed revocations off the consumer's workers.

A message handler commits REVOKING, claimed for this process, and returns (the message is acked), then
the pool performs the removal; in-process retries sleep here, not on a consumer thread. Everything
submitted is already claimed (leased) by its submitter. The pool remembers what it holds so it never
runs one request twice at once, and tells the sweeper how much room it has, so a replica never claims
more than it can start at once.

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
    def __init__(self, size: int, work: Callable[[str, bool], None]) -> None:
        self.size = size
        self._work = work
        self._held: set[str] = set()
        self._lock = threading.Lock()
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

    def shutdown(self, grace: float) -> None:
        """Start nothing new; give running attempts up to `grace` seconds (their backoff sleeps end on
        the daemon's stopping event), then leave the rest to lease expiry."""
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
