"""Run a multi-channel frame of readings through streamproc's real ``Pipeline``.

A frame is a table with one event time per row and one channel per column; NaN marks a cell
without a reading. Rows go in time order (the cells of a row in column order) in chunks of
about ``chunk`` readings; every reading's anomaly score comes back in the frame's shape and
every alert event is collected. Used by the dataset evaluations in ``benchmarks/``.
"""

from __future__ import annotations

import os
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.alerts import Alert
from streamproc.batch import Batch
from streamproc.config import Settings, from_dict
from streamproc.detect import warm_up
from streamproc.pipeline import Pipeline
from streamproc.topics import sanitise_segment

ROOT = Path(__file__).resolve().parents[1]
DAY_S = 86_400.0

# What every evaluation run needs: no Parquet output, no daemon parts, and event time that
# may jump ahead by far more than the live default of 5 minutes (hourly series, test gaps).
BASE: dict[str, Any] = {
    "snapshots": {"enabled": False},
    "checkpoint": {"enabled": False},
    "metrics": {"listen": ""},
    "input": {"max_future_s": 30 * DAY_S},
}


def datasets_dir(arg: str | None = None) -> Path:
    """``arg``, else ``$STREAMPROC_DATASETS``, else ``../shared/datasets`` from the repo root."""
    if arg:
        return Path(arg)
    env = os.environ.get("STREAMPROC_DATASETS")
    if env:
        return Path(env)
    return (ROOT / ".." / "shared" / "datasets").resolve()


def metric_name(column: str) -> str:
    """A column name as a valid metric id (``Volume Flow RateRMS`` -> ``Volume_Flow_RateRMS``)."""
    return sanitise_segment(column.strip())


def _merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_settings(kinds: Sequence[str], config: str | Path | None = None) -> Settings:
    """Evaluation settings: ``BASE``, the given kinds, then a TOML file's sections on top."""
    doc = _merge(BASE, {"channels": {"kinds": list(kinds)}})
    if config is not None:
        with open(config, "rb") as f:
            doc = _merge(doc, tomllib.load(f))
    return from_dict(doc)


@dataclass(frozen=True)
class Channel:
    device: str
    metric: str
    kind: str
    group: str


@dataclass
class FrameRun:
    """What came out of one frame: per-cell scores, alert events, cost."""

    scores: np.ndarray  # float32 (rows, columns); NaN: no reading, or the pipeline dropped it
    alerts: list[Alert]  # every event (open, update, resolve) in the order emitted
    column_of: dict[int, int]  # registry channel index -> frame column
    readings: int
    seconds: float  # time in Pipeline.process and close, not loading
    summary: dict[str, object]

    def opens(self) -> list[Alert]:
        return [a for a in self.alerts if a.event == "open"]


_warmed: list[bool] = []  # one warm-up per process: the kernels compile once


def run_frame(
    ts_ms: np.ndarray,
    values: np.ndarray,
    channels: Sequence[Channel],
    settings: Settings,
    chunk: int = 200_000,
) -> FrameRun:
    """Feed ``values[row, column]`` at ``ts_ms[row]`` through a fresh pipeline; see module doc."""
    ts_ms = np.asarray(ts_ms, np.int64)
    values = np.asarray(values, np.float64)
    if values.shape != (len(ts_ms), len(channels)):
        raise ValueError(f"values {values.shape} do not match {len(ts_ms)} x {len(channels)}")
    if np.any(np.diff(ts_ms) <= 0):
        raise ValueError("row times must increase")
    if not _warmed:  # compile (or load) the kernels outside the timed part
        warm_up(settings)
        _warmed.append(True)
    rows, cols = np.nonzero(np.isfinite(values))  # row-major: time order, then column
    alerts: list[Alert] = []
    with tempfile.TemporaryDirectory(prefix="streamproc-eval-") as out:
        pipe = Pipeline(settings, Path(out))
        pipe.listeners.append(alerts.extend)
        index = np.array(
            [pipe.registry.channel(c.device, c.metric, c.kind, c.group) for c in channels],
            np.int32,
        )
        if len(index) and index.min() < 0:
            raise ValueError("a channel was refused by the registry (kind not configured?)")
        idx, ts, val = index[cols], ts_ms[rows], values[rows, cols]
        flat = np.empty(len(rows), np.float32)
        start = time.perf_counter()
        for a in range(0, len(rows), chunk):
            b = min(a + chunk, len(rows))
            flat[a:b] = pipe.process(Batch(idx[a:b], ts[a:b], val[a:b]))
        pipe.close()
        seconds = time.perf_counter() - start
        summary = pipe.summary()
    scores = np.full(values.shape, np.nan, np.float32)
    scores[rows, cols] = flat
    return FrameRun(
        scores=scores,
        alerts=alerts,
        column_of={int(c): j for j, c in enumerate(index)},
        readings=len(rows),
        seconds=seconds,
        summary=summary,
    )
