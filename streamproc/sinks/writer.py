"""File writes on one background thread, in the order they are handed over.

The caller (the event loop, or replay's loop over the feed) hands a write over and goes on
while the thread runs the writes one at a time, first in, first out, so interval files land
in order and a write handed over after others runs after them. At most ``max_pending`` writes
wait or run: handing over one more blocks until the oldest is done (backpressure: nothing is
dropped, and memory held by waiting writes stays bounded).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

MAX_PENDING = 16

P = ParamSpec("P")
T = TypeVar("T")


class FileWriter:
    """One writer thread (started on the first write) and its bounded, ordered queue."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="streamproc-writer")
        self._slots = threading.Semaphore(max_pending)

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` after the writes already queued; blocks while
        ``max_pending`` are queued. The future holds its result or exception."""
        self._slots.acquire()
        future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self) -> None:
        """Wait for the queued writes and stop the thread."""
        self._pool.shutdown(wait=True)
