"""Columnar micro-batches of readings: channel index, event time, value."""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    """Readings in arrival order. ``idx`` int32 channel, ``ts_ms`` int64, ``value`` float64."""

    idx: np.ndarray
    ts_ms: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(self.idx[start:stop], self.ts_ms[start:stop], self.value[start:stop])

    @staticmethod
    def empty() -> Batch:
        return Batch(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64))


class BatchBuilder:
    """Appends one reading at a time without numpy scalar overhead; ``take`` hands out a Batch."""

    def __init__(self) -> None:
        self.idx = array("i")
        self.ts = array("q")
        self.val = array("d")

    def add(self, idx: int, ts_ms: int, value: float) -> None:
        self.idx.append(idx)
        self.ts.append(ts_ms)
        self.val.append(value)

    def extend(self, idx: np.ndarray, ts_ms: np.ndarray, value: np.ndarray) -> None:
        """Append readings from contiguous int32, int64 and float64 arrays."""
        self.idx.frombytes(idx.tobytes())
        self.ts.frombytes(ts_ms.tobytes())
        self.val.frombytes(value.tobytes())

    def __len__(self) -> int:
        return len(self.idx)

    def take(self) -> Batch:
        # the arrays are replaced, not reused, so the numpy views keep their buffers alone
        batch = Batch(
            np.frombuffer(self.idx, np.int32),
            np.frombuffer(self.ts, np.int64),
            np.frombuffer(self.val, np.float64),
        )
        self.idx = array("i")
        self.ts = array("q")
        self.val = array("d")
        return batch
