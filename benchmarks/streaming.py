"""Run recorded series and frames through streamproc's real pipeline, one pass, in time order.

Every reading goes through ``Pipeline.process`` exactly as a replay would send it: the same
kernels, the same event-time timers and alert lifecycle, chunks of ``chunk`` rows (results do
not depend on where the chunks are cut). The per-reading anomaly score is the one the kernels
return (the largest score of the rules that saw the reading, in [0, 1]); a reading the
pipeline drops scores 0 (or NaN where asked).

Timestamps are made strictly increasing per channel, 1 ms at a time: the kernels drop a
reading that is not newer than its channel's last one (``out_of_order``), and recorded files
repeat timestamps (a daylight-saving hour folded onto 03:00, a repeated hour).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamproc.alerts import Alert
from streamproc.batch import Batch
from streamproc.config import Settings, load
from streamproc.detect import warm_up
from streamproc.pipeline import Pipeline
from streamproc.topics import sanitise_segment, valid_id

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 10_000

ChannelName = tuple[str, str, str, str]  # device, metric, kind, group


def datasets_dir(arg: str | None = None) -> Path:
    """``arg``, else ``$STREAMPROC_DATASETS``, else ``../shared/datasets`` beside the repo."""
    return Path(arg or os.environ.get("STREAMPROC_DATASETS") or ROOT.parent / "shared/datasets")


def metric_name(column: str) -> str:
    """A column name as a valid metric id (``Volume Flow RateRMS`` -> ``Volume_Flow_RateRMS``)."""
    return sanitise_segment(column.strip())


def eval_settings(kind: str | Sequence[str] = "nab", base: Settings | None = None) -> Settings:
    """``base`` (default: the built-in defaults) for offline evaluation: only the given
    kind(s) configured, snapshots off."""
    s = base if base is not None else load(None)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    return dataclasses.replace(
        s,
        channels=dataclasses.replace(s.channels, kinds=kinds),
        snapshots=dataclasses.replace(s.snapshots, enabled=False),
    )


def make_settings(kinds: Sequence[str], config: str | Path | None = None) -> Settings:
    """Evaluation settings for ``kinds`` from a TOML file (or the defaults)."""
    return eval_settings(kinds, load(config))


def strictly_increasing(ts_ms: np.ndarray, channel: np.ndarray | None = None) -> np.ndarray:
    """Timestamps moved forward by the least whole milliseconds that make each channel's
    times strictly increasing in row order: ``t'[i] = max(t[i], t'[previous] + 1)``."""
    ts = np.asarray(ts_ms, np.int64)
    if channel is None:
        k = np.arange(len(ts), dtype=np.int64)
        return np.maximum.accumulate(ts - k) + k if len(ts) else ts.copy()
    out = np.empty_like(ts)
    order = np.argsort(channel, kind="stable")
    ch = np.asarray(channel)[order]
    bounds = np.flatnonzero(np.diff(ch)) + 1
    for rows in np.split(order, bounds):
        out[rows] = strictly_increasing(ts[rows])
    return out


@dataclass
class Run:
    """What came out of one run: per-reading scores, alert events, cost."""

    scores: np.ndarray  # float32 per reading; NaN where the pipeline dropped it
    alerts: list[Alert]  # every event (open, update, resolve) in the order emitted
    codes: np.ndarray  # int32 registry channel of each name
    seconds: float  # time in Pipeline.process and close
    summary: dict[str, object]


def _run(ts_ms: np.ndarray, names: Sequence[ChannelName], channel: np.ndarray,
         values: np.ndarray, settings: Settings, chunk: int) -> Run:  # fmt: skip
    channel = np.asarray(channel)
    values = np.asarray(values, np.float64)
    if not (len(ts_ms) == len(channel) == len(values)):
        raise ValueError("ts_ms, channel and values must have the same length")
    if len(channel) and not 0 <= int(channel.min()) <= int(channel.max()) < len(names):
        raise ValueError("channel holds an index outside names")
    ts = strictly_increasing(ts_ms, channel)
    alerts: list[Alert] = []
    scores = np.empty(len(ts), np.float32)
    with tempfile.TemporaryDirectory(prefix="streamproc-eval-") as out:
        pipeline = Pipeline(settings, out_dir=Path(out))
        pipeline.listeners.append(alerts.extend)
        try:
            codes = np.empty(len(names), np.int32)
            for j, (device, metric, kind, group) in enumerate(names):
                if not all(map(valid_id, (device, metric, kind, group))):
                    raise ValueError(f"invalid id in channel {names[j]}")
                codes[j] = pipeline.registry.channel(device, metric, kind, group)
                if codes[j] < 0:
                    raise ValueError(f"channel {names[j]} refused (code {codes[j]})")
            idx = codes[channel]
            start = time.perf_counter()
            for a in range(0, len(ts), chunk):
                b = min(a + chunk, len(ts))
                scores[a:b] = pipeline.process(Batch(idx[a:b], ts[a:b], values[a:b]))
        finally:
            pipeline.close()
        seconds = time.perf_counter() - start
    return Run(scores, alerts, codes, seconds, pipeline.summary())


def run_channels(
    ts_ms: np.ndarray,
    names: Sequence[ChannelName],
    channel: np.ndarray,
    values: np.ndarray,
    settings: Settings,
    chunk: int = CHUNK,
    nan_to_zero: bool = True,
) -> tuple[np.ndarray, list[Alert]]:
    """Run a multi-channel frame (rows in time order) through a fresh pipeline.

    ``names[j]`` is (device, metric, kind, group) of channel ``j``; ``channel[i]`` says which
    one row ``i`` belongs to. Every kind must be in ``settings.channels.kinds``. Returns the
    per-row scores (float32; dropped rows 0, or NaN with ``nan_to_zero=False``) and the
    alerts in the order the pipeline raised them.
    """
    run = _run(ts_ms, names, channel, values, settings, chunk)
    if nan_to_zero:
        np.nan_to_num(run.scores, copy=False, nan=0.0)
    return run.scores, run.alerts


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
    """Feed ``values[row, column]`` at ``ts_ms[row]`` (NaN: no reading) through a fresh
    pipeline, rows in time order and the cells of a row in column order."""
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
    names = [(c.device, c.metric, c.kind, c.group) for c in channels]
    run = _run(ts_ms[rows], names, cols, values[rows, cols], settings, chunk)
    scores = np.full(values.shape, np.nan, np.float32)
    scores[rows, cols] = run.scores
    return FrameRun(
        scores=scores,
        alerts=run.alerts,
        column_of={int(c): j for j, c in enumerate(run.codes)},
        readings=len(rows),
        seconds=run.seconds,
        summary=run.summary,
    )


def run_series(
    ts_ms: np.ndarray,
    values: np.ndarray,
    settings: Settings,
    kind: str,
    metric: str,
    device: str = "series",
    group: str = "default",
    chunk: int = CHUNK,
) -> tuple[np.ndarray, list[Alert]]:
    """One univariate series as one channel: per-reading scores (float32, dropped 0) and
    the alerts raised."""
    channel = np.zeros(len(ts_ms), np.int32)
    names = [(device, metric, kind, group)]
    return run_channels(ts_ms, names, channel, values, settings, chunk)


def score_series(
    ts_ms: np.ndarray, values: np.ndarray, settings: Settings, kind: str, metric: str
) -> np.ndarray:
    """Per-reading anomaly scores in [0, 1] (float32) of one series; see ``run_series``."""
    return run_series(ts_ms, values, settings, kind, metric)[0]
