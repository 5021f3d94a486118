"""Feeds a recorded or simulated feed through a Pipeline, as fast as possible or paced."""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamproc import counters as C
from streamproc import registry as R
from streamproc.batch import Batch
from streamproc.channel_table import ChannelTable
from streamproc.pipeline import Pipeline
from streamproc.sources.replay import Chunk, MessageChunk, TidyChunk, read_feed
from streamproc.topics import ID_PATTERN, valid_id

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


@dataclass
class Lookup:
    """A tidy chunk's channels as the reading thread found them (``known_channels``)."""

    codes: np.ndarray  # per pair: its channel, NEW or BAD_ID
    idx: np.ndarray  # per row: its pair's code
    ready: bool  # every row has a channel and a finite value: the chunk is a batch as it is


def read_ahead(pipeline: Pipeline, path: Path) -> Iterator[tuple[Chunk, Lookup | None]]:
    """The feed's chunks (``read_feed``), each read on a thread of its own while the one before
    runs through the kernels, which release the GIL (one chunk more in memory); with a tidy
    chunk, its ``known_channels``, from a channel table that this thread keeps. The reading
    thread counts malformed rows in counters of its own; a chunk's are added to the
    pipeline's when it is taken, so that only one thread ever writes them."""
    mine = C.Counters()
    chunks = read_feed(path, mine, tidy_rows=TIDY_CHUNK_ROWS)
    table = ChannelTable()

    def take() -> tuple[Chunk | None, Lookup | None, Counter[str]]:
        chunk = next(chunks, None)
        lookup = None
        if isinstance(chunk, TidyChunk):
            lookup = known_channels(pipeline, table, chunk)
        return chunk, lookup, mine.messages.copy()

    added: Counter[str] = Counter()
    with ThreadPoolExecutor(1, thread_name_prefix="streamproc-read") as pool:
        ahead = pool.submit(take)
        while True:
            chunk, lookup, seen = ahead.result()
            pipeline.counters.messages.update(seen - added)
            added = seen
            if chunk is None:
                return
            ahead = pool.submit(take)
            yield chunk, lookup


def known_channels(pipeline: Pipeline, table: ChannelTable, chunk: TidyChunk) -> Lookup:
    """Each (device, metric, kind, group) pair's channel if it is registered, BAD_ID if its kind
    or group is not a valid id, or it is not registered and its device or metric is not,
    else NEW; and each row's. ``table`` first takes the channels registered since the last
    call; then the pairs are looked up in one compiled loop, and the ids checked (the
    distinct kinds and groups, and the device and metric of the pairs not found). It only
    reads the registry, which only grows, so the reading thread can run it."""
    pairs = chunk.pairs
    table.follow(pipeline.registry)
    codes = table.find_pairs(pairs.device, pairs.metric)
    ok = _valid_ids(pairs.kind, pipeline.settings.channels.kinds[0])
    ok &= _valid_ids(pairs.group, "default")
    new = codes < 0
    if new.any():  # to be registered: the ids of a registered pair were checked then
        at = pa.array(np.flatnonzero(new))
        ok[new] &= _valid_names(pairs.device.take(at)) & _valid_names(pairs.metric.take(at))
    codes[new] = NEW
    codes[~ok] = BAD_ID
    idx = codes[chunk.pair_code]
    return Lookup(codes, idx, bool(idx.min(initial=0) >= 0 and np.isfinite(chunk.value).all()))


def _valid_ids(names: pa.Array, default: str) -> np.ndarray:
    """Per entry: whether it (``default`` where null) is a valid id; checked once per value."""
    enc = pc.dictionary_encode(names)
    ok = np.append(_valid_names(pc.fill_null(enc.dictionary, default)), valid_id(default))
    return ok[pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)]


def _valid_names(names: pa.Array) -> np.ndarray:
    """``valid_id`` of each entry of a string array without nulls, in one compiled pass."""
    ok = pc.match_substring_regex(names, f"^{ID_PATTERN}$")
    return ok.to_numpy(zero_copy_only=False)


def tidy_batch(pipeline: Pipeline, chunk: TidyChunk, lookup: Lookup) -> Batch:
    """A tidy chunk's rows as a batch: ``lookup`` is its ``known_channels``; its NEW pairs are
    registered here, in order of first appearance.

    Rows without a usable channel or value are counted as dropped, by reason.
    """
    codes = lookup.codes
    new = np.flatnonzero(codes == NEW)
    if len(new) == 0 and lookup.ready:
        return Batch(lookup.idx, chunk.ts_ms, chunk.value)
    idx = lookup.idx
    if len(new):
        reg = pipeline.registry
        default_kind = pipeline.settings.channels.kinds[0]
        pairs = chunk.pairs.take(new)
        for i, (device, metric, kind, group) in zip(new.tolist(), pairs, strict=True):
            c = reg.index.get((device, metric))  # registered after the chunk was read
            if c is None:
                c = reg.channel(device, metric, kind or default_kind, group or "default")
            codes[i] = c
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
    stop early. Returns True if the whole feed was read.

    While it runs, the objects that exist when it starts (modules, compiled kernels: most of a
    fresh process's) are frozen (``gc.freeze``): the cyclic collector's full passes then walk
    only the replay's own, which spares ~0.2-0.3 s of them while 100k new channels register."""
    pacer = Pacer(speed, pipeline.flush) if speed else None
    complete = True
    gc.freeze()
    try:
        for chunk, lookup in read_ahead(pipeline, path):
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
                assert lookup is not None  # read_ahead looks up every tidy chunk's pairs
                batch = tidy_batch(pipeline, chunk, lookup)
                if pacer is None:
                    pipeline.readings(batch)
                else:
                    complete = _paced(pipeline, batch, pacer, deadline)
            if not complete:
                break
            if on_progress is not None:
                on_progress(chunk.position)
    finally:
        gc.unfreeze()
        pipeline.close()
    return complete
