"""Feeds a recorded or simulated feed through a Pipeline, as fast as possible or paced."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamproc import counters as C
from streamproc import registry as R
from streamproc.batch import Batch
from streamproc.channel_table import ChannelTable
from streamproc.pipeline import Pipeline
from streamproc.sources.replay import Chunk, MessageChunk, Pairs, TidyChunk, read_feed
from streamproc.topics import valid_id

BAD_ID = -100  # a pair whose ids fail topics.valid_id
NEW = -101  # a pair not registered when its chunk was read
# Rows per chunk of a columnar feed of readings: channels are resolved once per chunk, so a
# large chunk spreads that over more readings (100k channels: 1M rows 3x faster than 64k,
# about 100 MB more memory). A paced replay waits before every PACED_ROWS readings.
TIDY_CHUNK_ROWS = 1 << 20
PACED_ROWS = 1 << 16
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


def read_ahead(pipeline: Pipeline, path: Path) -> Iterator[tuple[Chunk, np.ndarray | None]]:
    """The feed's chunks (``read_feed``), each read on a thread of its own while the one before
    runs through the kernels, which release the GIL (one chunk more in memory); with a tidy
    chunk, its pairs' ``known_channels``, from a channel table that this thread keeps. The
    reading thread counts malformed rows in counters of its own; a chunk's are added to the
    pipeline's when it is taken, so that only one thread ever writes them."""
    mine = C.Counters()
    chunks = read_feed(path, mine, tidy_rows=TIDY_CHUNK_ROWS)
    table = ChannelTable()

    def take() -> tuple[Chunk | None, np.ndarray | None, Counter[str]]:
        chunk = next(chunks, None)
        codes = None
        if isinstance(chunk, TidyChunk):
            codes = known_channels(pipeline, table, chunk.pairs)
        return chunk, codes, mine.messages.copy()

    added: Counter[str] = Counter()
    with ThreadPoolExecutor(1, thread_name_prefix="streamproc-read") as pool:
        ahead = pool.submit(take)
        while True:
            chunk, codes, seen = ahead.result()
            pipeline.counters.messages.update(seen - added)
            added = seen
            if chunk is None:
                return
            ahead = pool.submit(take)
            yield chunk, codes


def known_channels(pipeline: Pipeline, table: ChannelTable, pairs: Pairs) -> np.ndarray:
    """Each (device, metric, kind, group) pair's channel if it is registered, BAD_ID if its kind
    or group is not a valid id, else NEW. ``table`` first takes the channels registered since
    the last call; then the pairs are looked up in one compiled loop, and the ids of the few
    distinct kinds and groups are checked. It only reads the registry, which only grows, so
    the read-ahead thread can run it."""
    table.follow(pipeline.registry)
    codes = table.find_pairs(pairs.device, pairs.metric)
    codes[codes < 0] = NEW
    kind_ok = _valid_ids(pairs.kind, pipeline.settings.channels.kinds[0])
    codes[~(kind_ok & _valid_ids(pairs.group, "default"))] = BAD_ID
    return codes


def _valid_ids(names: pa.Array, default: str) -> np.ndarray:
    """Per entry: whether it (``default`` where null) is a valid id."""
    enc = pc.dictionary_encode(names)
    ok = np.array([valid_id(v or default) for v in [*enc.dictionary.to_pylist(), None]])
    return ok[pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)]


def tidy_batch(pipeline: Pipeline, chunk: TidyChunk, codes: np.ndarray) -> Batch:
    """Map a tidy chunk's rows to channels with numpy: ``codes`` are its pairs'
    ``known_channels``; the NEW ones are registered here, in order of first appearance.

    Rows without a usable channel or value are counted as dropped, by reason. A registered
    (device, metric) needs no id check (the registry holds valid ids only).
    """
    reg = pipeline.registry
    default_kind = pipeline.settings.channels.kinds[0]
    new = np.flatnonzero(codes == NEW)
    for i, (device, metric, kind, group) in zip(new.tolist(), chunk.pairs.take(new), strict=True):
        c = reg.index.get((device, metric))  # registered after the chunk was read
        if c is None and valid_id(device) and valid_id(metric):
            c = reg.channel(device, metric, kind or default_kind, group or "default")
        codes[i] = BAD_ID if c is None else c
    idx = codes[chunk.pair_code]
    finite = np.isfinite(chunk.value)
    if idx.min(initial=0) >= 0 and finite.all():
        return Batch(idx, chunk.ts_ms, chunk.value)
    for code, reason in _REFUSALS.items():
        pipeline.counters.drop(reason, int(np.count_nonzero(idx == code)), "in a tidy feed")
    pipeline.counters.drop(C.INVALID_VALUE, int(np.count_nonzero(~finite & (idx >= 0))))
    keep = (idx >= 0) & finite
    return Batch(idx[keep], chunk.ts_ms[keep], chunk.value[keep])


def _paced(pipeline: Pipeline, batch: Batch, pacer: Pacer, deadline: float | None) -> bool:
    """Run ``batch`` in parts of PACED_ROWS readings, each at its first reading's time;
    False if stopped at the deadline."""
    for a in range(0, len(batch), PACED_ROWS):
        part = batch.slice(a, a + PACED_ROWS)
        pacer.wait(int(part.ts_ms[0]))
        pipeline.readings(part)
        if deadline is not None and time.monotonic() >= deadline:
            return False
    return True


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
        for chunk, codes in read_ahead(pipeline, path):
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
                assert codes is not None  # read_ahead looks up every tidy chunk's pairs
                batch = tidy_batch(pipeline, chunk, codes)
                if pacer is None:
                    pipeline.readings(batch)
                else:
                    complete = _paced(pipeline, batch, pacer, deadline)
            if not complete:
                break
            if on_progress is not None:
                on_progress(chunk.position)
    finally:
        pipeline.close()
    return complete
