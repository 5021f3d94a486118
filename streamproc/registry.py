"""Channels: (device, metric) series <-> dense int32 indices, with kind, group and profile.

Kernels see only indices. Per-channel metadata lives in int arrays (codes into small name
tables) grown by doubling, so 1M channels cost a few MB here. A *profile* is a
(kind, metric) pair: detector parameters are looked up per profile, not per channel.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamproc.config import ChannelSettings
from streamproc.topics import valid_id

UNKNOWN_KIND = -1
CAPACITY = -2
UNKNOWN_DEVICE = -3
# per-channel arrays, indexed by channel
CHANNEL_ARRAYS = ("ch_device", "ch_metric", "ch_kind", "ch_group", "ch_profile", "ch_sibling")


@dataclass
class Device:
    kind: int
    group: int
    lat: float = float("nan")
    lon: float = float("nan")
    neighbours: tuple[str, ...] = ()
    first: int = -1  # its first channel, -1 before it has one


class Names:
    """An append-only table of names with their codes."""

    def __init__(self, names: tuple[str, ...] = ()):
        self.names: list[str] = []
        self.codes: dict[str, int] = {}
        for n in names:
            self.code(n)

    def code(self, name: str) -> int:
        c = self.codes.get(name)
        if c is None:
            c = self.codes[name] = len(self.names)
            self.names.append(name)
        return c

    def __len__(self) -> int:
        return len(self.names)


class Registry:
    def __init__(self, settings: ChannelSettings):
        self.max_channels = settings.max_channels
        self.register_unknown = settings.register_unknown
        self.kinds = Names(settings.kinds)
        self.groups = Names()
        self.metrics = Names()
        self.device_names = Names()
        self.devices: dict[str, Device] = {}
        self.profiles = Names()  # "kind.metric"
        # the decoder reads this dict directly on its hot path: never rebind it
        self.index: dict[tuple[str, str], int] = {}
        self.n = 0
        cap = 1024
        self.ch_device = np.zeros(cap, np.int32)
        self.ch_metric = np.zeros(cap, np.int32)
        self.ch_kind = np.zeros(cap, np.int16)
        self.ch_group = np.zeros(cap, np.int32)
        self.ch_profile = np.zeros(cap, np.int16)
        self.ch_sibling = np.zeros(cap, np.int32)  # the next channel of the same device, circular
        if settings.sensors:
            self.load_sensors(settings.sensors)

    def channel(self, device: str, metric: str, kind: str, group: str) -> int:
        """Index of (device, metric), registering it on first sight; negative codes on refusal.

        Returns UNKNOWN_KIND, UNKNOWN_DEVICE (not listed and register_unknown is off) or
        CAPACITY (max_channels reached). For a listed device, its listed kind and group win.
        Ids must already be checked with ``topics.valid_id``.
        """
        c = self.index.get((device, metric))
        if c is not None:
            return c
        dev = self.devices.get(device)
        if dev is None:
            if not self.register_unknown:
                return UNKNOWN_DEVICE
            k = self.kinds.codes.get(kind)
            if k is None:
                return UNKNOWN_KIND
            if self.n >= self.max_channels:
                return CAPACITY
            dev = self.devices[device] = Device(k, self.groups.code(group))
        elif self.n >= self.max_channels:
            return CAPACITY
        return self._add(device, metric, dev)

    def _add(self, device: str, metric: str, dev: Device) -> int:
        c = self.n
        if c == len(self.ch_device):
            for name in CHANNEL_ARRAYS:
                old = getattr(self, name)
                new = np.zeros(2 * len(old), old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
        self.ch_device[c] = self.device_names.code(device)
        self.ch_metric[c] = self.metrics.code(metric)
        self.ch_kind[c] = dev.kind
        self.ch_group[c] = dev.group
        self.ch_profile[c] = self.profiles.code(f"{self.kinds.names[dev.kind]}.{metric}")
        if dev.first < 0:
            dev.first = self.ch_sibling[c] = c
        else:  # into the device's circle, after its first channel
            self.ch_sibling[c] = self.ch_sibling[dev.first]
            self.ch_sibling[dev.first] = c
        self.index[(device, metric)] = c
        self.n = c + 1
        return c

    def describe(self, c: int) -> dict[str, str]:
        """Names of channel ``c``: device, metric, kind, group."""
        return {
            "device": self.device_names.names[self.ch_device[c]],
            "metric": self.metrics.names[self.ch_metric[c]],
            "kind": self.kinds.names[self.ch_kind[c]],
            "group": self.groups.names[self.ch_group[c]],
        }

    def profile_kind_metric(self, p: int) -> tuple[str, str]:
        kind, metric = self.profiles.names[p].split(".", 1)
        return kind, metric

    def load_sensors(self, path: str | Path) -> int:
        """Read a sensor list (CSV or Parquet: device, kind, group, lat, lon, neighbours).

        ``neighbours`` is optional: device ids separated by ``;``. Raises ValueError naming
        the row and column of the first bad entry. Returns the number of devices read.
        """
        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        for i, row in enumerate(rows, start=2 if path.suffix != ".parquet" else 1):
            for col in ("device", "kind", "group"):
                if not row.get(col) or not valid_id(str(row[col])):
                    raise ValueError(f"{path}: row {i}: missing or invalid {col!r}")
            kind = self.kinds.codes.get(str(row["kind"]))
            if kind is None:
                raise ValueError(f"{path}: row {i}: kind {row['kind']!r} is not configured")
            neighbours = tuple(n for n in str(row.get("neighbours") or "").split(";") if n)
            self.devices[str(row["device"])] = Device(
                kind,
                self.groups.code(str(row["group"])),
                _float(row.get("lat")),
                _float(row.get("lon")),
                neighbours,
            )
        return len(rows)


def _float(x: object) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
