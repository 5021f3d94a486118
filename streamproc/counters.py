"""What happened to every message and reading, counted; and logging at a bounded rate.

Counters are plain integers owned by the pipeline; ``metrics.py`` exports them. Every message
ends in exactly one ``messages`` result; every reading that was decoded but not processed is
counted once in ``dropped`` under its reason.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np

# message results
OK = "ok"
MALFORMED = "malformed"  # not JSON / not a number / wrong shape
UNKNOWN = "unknown"  # topic matches no pattern, or unknown kind
REJECTED = "rejected"  # larger than input.max_payload_bytes
EMPTY = "empty"  # well formed but carries no reading
ERROR = "error"  # an internal error while processing it (a bug; logged with its traceback)

# reasons a decoded reading is dropped
INVALID_VALUE = "invalid_value"  # null, bool, string, NaN or infinite
INVALID_ID = "invalid_id"  # device or metric id with characters outside topics.ID_RE
UNKNOWN_DEVICE = "unknown_device"  # not in the sensor list and register_unknown is off
CAPACITY = "capacity"  # channels.max_channels reached
TOO_OLD = "too_old"  # before input.min_ts
FAR_FUTURE = "far_future"  # more than input.max_future_s ahead of its message's receive time
OUT_OF_ORDER = "out_of_order"  # not newer than the channel's last reading
LATE = "late"  # its snapshot interval was already written

log = logging.getLogger("streamproc")


class Counters:
    def __init__(self) -> None:
        self.messages: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.readings = 0  # readings that reached the detectors
        self._limiter = RateLimitedLog(log)

    def message(self, result: str, detail: str = "") -> None:
        self.messages[result] += 1
        if result != OK and result != EMPTY:
            self._limiter.warn(result, detail)

    def warn(self, key: str, detail: str) -> None:
        self._limiter.warn(key, detail)

    def drop(self, reason: str, n: int = 1, detail: str = "") -> None:
        if n:
            self.dropped[reason] += n
            self._limiter.warn(reason, detail or f"{n} reading(s)")


class RateLimitedLog:
    """At most ``burst`` warnings per key per ``period_s``, then one line with how many more."""

    def __init__(self, logger: logging.Logger, burst: int = 5, period_s: float = 60.0):
        self.logger = logger
        self.burst = burst
        self.period_s = period_s
        self._window: dict[str, tuple[float, int]] = {}

    def warn(self, key: str, detail: str) -> None:
        now = time.monotonic()
        start, n = self._window.get(key, (now, 0))
        if now - start >= self.period_s:
            if n > self.burst:
                self.logger.warning("%s: %d more not logged", key, n - self.burst)
            start, n = now, 0
        n += 1
        self._window[key] = (start, n)
        if n <= self.burst:
            self.logger.warning("%s: %s", key, detail[:200])


class Histogram:
    """Cumulative histogram of seconds, filled one value or one array at a time."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = np.asarray(bounds, np.float64)
        self.counts = np.zeros(len(bounds) + 1, np.int64)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[int(np.searchsorted(self.bounds, value, side="left"))] += 1
        self.sum += value

    def observe_many(self, values: np.ndarray) -> None:
        if len(values):
            where = np.searchsorted(self.bounds, values, side="left")
            self.counts += np.bincount(where, minlength=len(self.counts))
            self.sum += float(values.sum())

    def buckets(self) -> list[tuple[str, float]]:
        """(upper bound, cumulative count) pairs, ending with +Inf, as Prometheus wants them."""
        cum = np.cumsum(self.counts).tolist()
        return [*((repr(float(b)), c) for b, c in zip(self.bounds, cum, strict=False)),
                ("+Inf", cum[-1])]  # fmt: skip
