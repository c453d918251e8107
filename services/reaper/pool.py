"""The revocation pool: threads that run claimed revocations off the consumer's workers.

A message handler commits REVOKING and returns (the message is acked), then the pool performs the
removal; in-process retries sleep here, not on a consumer thread. The pool remembers what it is
running so the sweeper never hands it the same request twice, and tells the sweeper how much room
it has, so a replica never claims (leases) more than it can start at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from shared import logs

log = logs.get_logger()


class RevocationPool:
    def __init__(self, size: int, work: Callable[[str, bool], None]) -> None:
        self.size = size
        self._work = work
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="revoke")

    def room(self) -> int:
        with self._lock:
            return max(self.size - len(self._running), 0)

    def submit(self, request_id: str, *, claimed: bool) -> bool:
        """Run one revocation; `claimed` says whether the caller already holds its lease."""
        with self._lock:
            if request_id in self._running:
                return False
            self._running.add(request_id)
        self._executor.submit(self._run, request_id, claimed)
        return True

    def _run(self, request_id: str, claimed: bool) -> None:
        try:
            self._work(request_id, claimed)
        except Exception as exc:  # the row stays REVOKING and due after its lease: nothing is lost
            log.error("revocation.crashed", request_id=request_id, error=str(exc), exc_info=True)
        finally:
            with self._lock:
                self._running.discard(request_id)

    def shutdown(self) -> None:
        """Start nothing new; let running attempts finish (their backoff sleeps end on `stopping`)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
