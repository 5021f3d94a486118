"""A compiled (device, metric) -> channel table, for look-ups without a Python string per pair.

Open addressing over ``slots`` (entry number or -1); entry ``e`` holds the FNV-1a hash of its
key ``device + b"\\0" + metric``, its channel and the key bytes ``keys[off[e]:off[e + 1]]``
(``kernels.gateway``: ``find``, ``find_pairs``). The gateway scan reads it for every reading of
a batch; a replay looks up each chunk's pairs in it. It only grows, like the registry.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streamproc.kernels import gateway as gk
from streamproc.registry import Registry

_NO_DEVICE = np.frombuffer(b"", np.uint8)


class ChannelTable:
    def __init__(self) -> None:
        self.slots = np.full(1024, -1, np.int32)
        self.ent_hash = np.empty(512, np.uint64)
        self.ent_ch = np.empty(512, np.int32)
        self.off = np.zeros(513, np.int64)
        self.keys = np.empty(8192, np.uint8)
        self.n = 0  # entries
        self.followed = 0  # registry channels added by ``follow``

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What the compiled look-ups take: slots, ent_hash, ent_ch, off, keys (replaced as
        the table grows: take them again after an ``add``)."""
        return self.slots, self.ent_hash, self.ent_ch, self.off, self.keys

    def find(self, device: bytes, metric: bytes) -> int:
        """The channel of (device, metric), or -1."""
        k = np.frombuffer(device + b"\0" + metric, np.uint8)
        d = len(device)
        return int(gk.find(k, 0, d, _NO_DEVICE, d + 1, len(k), *self.arrays()))

    def find_pairs(self, device: pa.Array, metric: pa.Array) -> np.ndarray:
        """The channel of each (device[i], metric[i]) of two string arrays without nulls, or
        -1 (int32), in one compiled loop."""
        out = np.empty(len(device), np.int32)
        gk.find_pairs(*_strings(device), *_strings(metric), self.n, *self.arrays(), out)
        return out

    def add_keys(self, keys: list[bytes], channels: np.ndarray) -> None:
        """Add each key (``device + b"\\0" + metric``) -> its channel at once: the hashing
        and the slots in compiled loops. The caller knows that none is in the table."""
        e0, e1 = self.n, self.n + len(keys)
        if e1 == e0:
            return
        if e1 > len(self.ent_ch):
            cap = max(2 * len(self.ent_ch), e1)
            self.ent_hash = _grown(self.ent_hash, cap)
            self.ent_ch = _grown(self.ent_ch, cap)
            self.off = _grown(self.off, cap + 1)
        blob = np.frombuffer(b"".join(keys), np.uint8)
        o = self.off[e0]
        if o + len(blob) > len(self.keys):
            self.keys = _grown(self.keys, 2 * (o + len(blob)))
        self.keys[o : o + len(blob)] = blob
        self.off[e0 + 1 : e1 + 1] = o + np.cumsum([len(k) for k in keys])
        gk.hash_keys(self.keys, self.off, e0, e1, self.ent_hash)
        self.ent_ch[e0:e1] = channels
        self.n = e1
        if 2 * e1 > len(self.slots):  # keep the table under half full (a power of two)
            self.slots = np.full(1 << (2 * e1 - 1).bit_length(), -1, np.int32)
            gk.table_insert(self.slots, self.ent_hash, 0, e1 - 1)
        else:
            gk.table_insert(self.slots, self.ent_hash, e0, e1 - 1)

    def add_dict(self, channels: dict[bytes, int]) -> None:
        """``add_keys`` for a dict of key -> channel."""
        self.add_keys(list(channels), np.fromiter(channels.values(), np.int32, len(channels)))

    def follow(self, registry: Registry) -> None:
        """Add the channels registered since the last call: the table then holds exactly the
        registry's channels. Only reads the registry, which only grows (a channel keeps its
        index and names), so another thread than the registering one may call it."""
        a, n = self.followed, registry.n
        devices, metrics = registry.device_names.names, registry.metrics.names
        pairs = zip(registry.ch_device[a:n].tolist(), registry.ch_metric[a:n].tolist(), strict=True)
        keys = [f"{devices[d]}\0{metrics[m]}".encode() for d, m in pairs]
        self.add_keys(keys, np.arange(a, n, dtype=np.int32))
        self.followed = n


def _strings(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's offsets (int64, one more than its length) and UTF-8 bytes."""
    width: np.dtype
    if pa.types.is_large_string(arr.type):
        width = np.dtype(np.int64)
    elif pa.types.is_string(arr.type):
        width = np.dtype(np.int32)
    else:
        raise TypeError(f"expected strings, got {arr.type}")
    _, offsets, data = arr.buffers()
    off = np.frombuffer(offsets, width, len(arr) + 1, arr.offset * width.itemsize)
    return off.astype(np.int64), np.frombuffer(data, np.uint8) if data else _NO_DEVICE


def _grown(a: np.ndarray, size: int) -> np.ndarray:
    new = np.empty(size, a.dtype)
    new[: len(a)] = a
    return new
