"""The decoder's compiled path for gateway batches: the scan's buffers and its channel table.

``GatewayScan.scan`` hands a payload to ``kernels.gateway.scan``; on OK the readings go to the
builder in one copy. On MISS or FALLBACK it returns False and the decoder decodes the message
the general way; after a MISS, ``learn`` adds the pairs the registry now knows, so the next
message from the same gateway is scanned whole. The table only grows, like the registry.
``scan_messages`` scans the array of small messages that ``streamproc.coalesce`` puts together;
``know`` adds the channels of a device's first message to the table.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from streamproc.batch import BatchBuilder
from streamproc.channel_table import ChannelTable
from streamproc.kernels import gateway as gk
from streamproc.registry import Registry

MIN_BYTES = 512  # smaller payloads go the general way: the call costs more than it saves
MAX_MISSES = 4096  # unknown pairs learnt per message; more are learnt from later messages
_NO_DEVICE = np.frombuffer(b"", np.uint8)


class GatewayScan:
    def __init__(self, registry: Registry, lo_ms: int, hi_ms: int, future_ms: int):
        """Event times accepted: from ``lo_ms`` to ``hi_ms`` and to ``future_ms`` after the
        receive time."""
        self.registry = registry
        self.lo_ms = lo_ms
        self.hi_ms = hi_ms
        self.future_ms = future_ms
        self.out_idx = np.empty(0, np.int32)  # grown to the largest payload's needs
        self.out_ts = np.empty(0, np.int64)
        self.out_val = np.empty(0, np.float64)
        self.miss = np.empty((MAX_MISSES, 4), np.int64)
        self.met = np.empty((gk.MAX_METRICS, 2), np.int64)
        self.table = ChannelTable()
        self.decided = 0  # messages the scan decoded
        self._dev: dict[str | None, np.ndarray] = {}
        self.missed: tuple[bytes, np.ndarray, int] | None = None  # of the last scan
        self.fell_back_at = -1  # the last scan's entry that made it fall back (-1: none)

    def scan(self, payload: bytes, device: str | None, recv_ms: int, out: BatchBuilder) -> bool:
        """Append the payload's readings to ``out`` and return True, or return False (nothing
        appended) if the message must be decoded the general way."""
        dev = self._dev.get(device)
        if dev is None:
            if len(self._dev) >= 4096:
                self._dev.clear()
            dev = self._dev[device] = np.frombuffer((device or "").encode(), np.uint8)
        if self._scan(payload, dev, device is not None, 0, recv_ms, out):
            self.decided += 1
            return True
        return False

    def scan_messages(self, entries: bytes, messages: int, recv_ms: int, out: BatchBuilder) -> bool:
        """``scan`` for a JSON array of ``messages`` coalesced messages, one entry each, naming
        its device and its time; ``recv_ms`` is the earliest receive time among them."""
        return self._scan(entries, _NO_DEVICE, False, messages, recv_ms, out)

    def _scan(self, payload: bytes, dev: np.ndarray, has_dev: bool, messages: int,
              recv_ms: int, out: BatchBuilder) -> bool:  # fmt: skip
        buf = np.frombuffer(payload, np.uint8)
        if len(buf) // 5 + 1 > len(self.out_idx):  # a reading takes 5 bytes or more: "m":1,
            cap = len(buf) // 5 + 1
            self.out_idx, self.out_ts = np.empty(cap, np.int32), np.empty(cap, np.int64)
            self.out_val = np.empty(cap, np.float64)
        hi = min(self.hi_ms, recv_ms + self.future_ms)
        status, n, misses = gk.scan(
            buf, dev, has_dev, messages, recv_ms, self.lo_ms, hi,
            self.table.n, *self.table.arrays(), self.met,
            self.out_idx, self.out_ts, self.out_val, self.miss,
        )  # fmt: skip
        self.fell_back_at = n if status == gk.FALLBACK else -1
        if status == gk.OK:
            out.extend(self.out_idx[:n], self.out_ts[:n], self.out_val[:n])
            return True
        self.missed = (payload, dev, misses) if status == gk.MISS else None
        return False

    def learn(self) -> None:
        """After a MISS and the general decode of the same message: add to the table the
        missed pairs that the registry has channels for by now."""
        if self.missed is None:
            return
        payload, dev, misses = self.missed
        self.missed = None
        added: dict[bytes, int] = {}  # key -> channel, each key once, added at once
        for ds, de, ms, me in self.miss[:misses].tolist():
            device = bytes(dev) if ds == gk.TOPIC_DEVICE else payload[ds:de]
            metric = payload[ms:me]
            key = device + b"\0" + metric
            if key not in added:
                c = self.registry.index.get((device.decode(), metric.decode()))
                if c is not None:
                    added[key] = c
        self.table.add_dict(added)

    def know(self, channels: Iterable[int]) -> None:
        """Add registered channels to the table (a device's first message, decoded the general
        way), unless they are in it."""
        added: dict[bytes, int] = {}
        for c in channels:
            names = self.registry.describe(c)
            device, metric = names["device"].encode(), names["metric"].encode()
            if self.table.find(device, metric) < 0:
                added[device + b"\0" + metric] = c
        self.table.add_dict(added)
