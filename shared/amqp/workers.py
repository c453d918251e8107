"""A bounded pool of worker threads that never holds the process open.

concurrent.futures.ThreadPoolExecutor joins its threads at interpreter exit, so one handler stuck
past the shutdown grace period (a hung WinRM call) would keep a stopped daemon alive past the
contract's 30 s. These threads are daemons: once the consumer has requeued what did not finish,
the process may exit and the broker redelivers that work elsewhere.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Work = tuple["Future[Any]", Callable[[], Any]]


class WorkerPool:
    """`size` daemon threads taking work in submission order; Futures report results and allow cancel."""

    def __init__(self, size: int, *, name: str = "amqp-worker") -> None:
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, fn))
        return future

    def shutdown(self) -> None:
        """Ask every thread to exit after its current work; does not wait for them."""
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued: the consumer already requeued its message
            try:
                result = fn()
            except BaseException as exc:  # the Future carries it to whoever waits
                future.set_exception(exc)
            else:
                future.set_result(result)
