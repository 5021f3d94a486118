"""Run recorded series through streamproc's real pipeline, one pass, in time order.

Every reading goes through ``Pipeline.process`` exactly as a replay would send it: the same
kernels, the same event-time timers and alert lifecycle, chunks of ``chunk`` rows (results do
not depend on where the chunks are cut). The per-reading anomaly score is the one the kernels
return (the largest score of the rules that saw the reading, in [0, 1]); a reading the
pipeline drops scores 0.

Two adjustments make a recorded file fit the pipeline's event-time rules:

* timestamps are made strictly increasing per channel, 1 ms at a time: the kernels drop a
  reading that is not newer than its channel's last one (``out_of_order``), and recorded
  files repeat timestamps (a daylight-saving hour folded onto 03:00, a repeated hour);
* ``input.max_future_s`` is lifted (``eval_settings``): it guards a live feed against a
  clock far ahead of the other channels, but a single recorded series with a gap longer
  than it would have every later reading dropped, since a dropped reading never moves the
  watermark.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamproc.alerts import Alert
from streamproc.batch import Batch
from streamproc.config import Settings, load
from streamproc.pipeline import Pipeline
from streamproc.topics import valid_id

CHUNK = 10_000
NO_FUTURE_LIMIT_S = 100 * 365 * 86_400.0  # recorded data: any gap is real, not a bad clock

ChannelName = tuple[str, str, str, str]  # device, metric, kind, group


def eval_settings(kind: str | Sequence[str] = "nab", base: Settings | None = None) -> Settings:
    """``base`` (default: the built-in defaults) for offline evaluation: only the given
    kind(s) configured, snapshots off, no far-future limit on event time."""
    s = base if base is not None else load(None)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    return dataclasses.replace(
        s,
        channels=dataclasses.replace(s.channels, kinds=kinds),
        snapshots=dataclasses.replace(s.snapshots, enabled=False),
        input=dataclasses.replace(s.input, max_future_s=NO_FUTURE_LIMIT_S),
    )


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
            for a in range(0, len(ts), chunk):
                b = min(a + chunk, len(ts))
                scores[a:b] = pipeline.process(Batch(idx[a:b], ts[a:b], values[a:b]))
        finally:
            pipeline.close()
    if nan_to_zero:
        np.nan_to_num(scores, copy=False, nan=0.0)
    return scores, alerts


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
