"""Feeds a recorded or simulated feed through a Pipeline, as fast as possible or paced."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from streamproc import counters as C
from streamproc import registry as R
from streamproc.batch import Batch
from streamproc.pipeline import Pipeline
from streamproc.sources.replay import MessageChunk, TidyChunk, read_feed
from streamproc.topics import valid_id

BAD_ID = -100  # a pair whose ids fail topics.valid_id
# an unconfigured kind in a feed row counts like one in a payload (as the decoder does)
_REFUSALS = {
    BAD_ID: C.INVALID_ID,
    R.UNKNOWN_KIND: C.INVALID_ID,
    R.CAPACITY: C.CAPACITY,
    R.UNKNOWN_DEVICE: C.UNKNOWN_DEVICE,
}


class Pacer:
    """Sleeps so that event time runs ``speed`` times faster than the wall clock."""

    def __init__(self, speed: float, before_sleep: Callable[[], None]):
        self.speed = speed
        self.before_sleep = before_sleep
        self.t0_ms: int | None = None
        self.wall0 = 0.0

    def wait(self, ts_ms: int) -> None:
        if self.t0_ms is None:
            self.t0_ms, self.wall0 = ts_ms, time.monotonic()
            return
        delay = self.wall0 + (ts_ms - self.t0_ms) / 1000 / self.speed - time.monotonic()
        if delay > 0.02:
            self.before_sleep()
            time.sleep(delay)


def tidy_batch(pipeline: Pipeline, chunk: TidyChunk) -> Batch:
    """Resolve a tidy chunk's (device, metric) pairs to channels once, then map rows with numpy.

    Rows without a usable channel or value are counted as dropped, by reason.
    """
    reg = pipeline.registry
    default_kind = pipeline.settings.channels.kinds[0]
    codes = np.empty(len(chunk.pairs), np.int32)
    for i, (device, metric, kind, group) in enumerate(chunk.pairs):
        kind, group = kind or default_kind, group or "default"
        if not (valid_id(device) and valid_id(metric) and valid_id(kind) and valid_id(group)):
            codes[i] = BAD_ID
            continue
        codes[i] = reg.channel(device, metric, kind, group)
    idx = codes[chunk.pair_code]
    for code, reason in _REFUSALS.items():
        pipeline.counters.drop(reason, int(np.count_nonzero(idx == code)), "in a tidy feed")
    finite = np.isfinite(chunk.value)
    pipeline.counters.drop(C.INVALID_VALUE, int(np.count_nonzero(~finite & (idx >= 0))))
    keep = (idx >= 0) & finite
    return Batch(idx[keep], chunk.ts_ms[keep], chunk.value[keep])


def replay(
    pipeline: Pipeline,
    path: Path,
    speed: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    deadline: float | None = None,
) -> bool:
    """Run a feed file through the pipeline and close it. ``speed``: event-time seconds per
    wall second (None: as fast as possible). ``deadline``: a ``time.monotonic()`` at which to
    stop early. Returns True if the whole feed was read."""
    pacer = Pacer(speed, pipeline.flush) if speed else None
    complete = True
    try:
        for chunk in read_feed(path, pipeline.counters):
            if deadline is not None and time.monotonic() >= deadline:
                complete = False
                break
            if isinstance(chunk, MessageChunk):
                message = pipeline.message
                for ts, topic, payload in zip(
                    chunk.ts_ms.tolist(), chunk.topic, chunk.payload, strict=True
                ):
                    if pacer is not None:
                        pacer.wait(ts)
                        if deadline is not None and time.monotonic() >= deadline:
                            complete = False
                            break
                    message(topic, payload, ts)
            else:
                batch = tidy_batch(pipeline, chunk)
                if pacer is not None and len(batch):
                    pacer.wait(int(batch.ts_ms[0]))
                pipeline.readings(batch)
            if not complete:
                break
            if on_progress is not None:
                on_progress(chunk.position)
    finally:
        pipeline.close()
    return complete
