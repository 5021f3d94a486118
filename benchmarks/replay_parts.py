"""Parts of a replay timed alone, checkout against checkout, side by side in one run.

    python benchmarks/replay_parts.py FEED CHECKOUT [CHECKOUT ...] [--rounds 2]

FEED is a tidy Parquet feed (``replay_large.py --work DIR`` leaves one in DIR/feed.parquet).
Each round runs one process per checkout (``git worktree add /tmp/before REV``), alternating,
that imports that checkout's streamproc and prints:

- reading thread: the feed's chunks read (``read_feed``) and looked up (``known_channels``)
  on one thread, the new pairs registered in between (``tidy_batch``, not timed): wall seconds
  for each;
- pairs: ``_pairs`` alone (a chunk's distinct name tuples) on the name columns of the feed's
  first 3 row groups, 1M rows each, best of 5 x 12 calls, ms per chunk;
- follow: a channel table taking 100,000 newly registered channels (``ChannelTable.follow``);
- sweep: the dropout sweep over 100,000 channels that all reported lately (``_sweep``, best of
  5 x 20 sweeps), CPU ns per channel, after 20 rounds of readings (a level per channel and
  noise, as in ``replay_large.py``);
- snapshot: the open interval of those rounds, 100,000 rows, written to Parquet (best of 7,
  ms) with dictionary encoding tried on every column and on ``DICTIONARY_COLUMNS`` only, with
  the size of each (only where the checkout has ``DICTIONARY_COLUMNS``).
"""

from __future__ import annotations

import argparse
import inspect
import io
import subprocess
import sys
import time
from pathlib import Path

CHANNELS = 100_000


def measure(root: str, feed: Path) -> None:
    sys.path.insert(0, root)
    import numpy as np
    import pyarrow.parquet as pq

    import streamproc
    from streamproc import counters as C
    from streamproc import runner
    from streamproc.batch import Batch
    from streamproc.channel_table import ChannelTable
    from streamproc.config import ChannelSettings, Settings
    from streamproc.detect import Detector, warm_up
    from streamproc.pipeline import Pipeline
    from streamproc.registry import Registry
    from streamproc.sinks import parquet as sink
    from streamproc.sources import replay

    assert str(streamproc.__file__).startswith(root), f"{streamproc.__file__} is not from {root}"
    settings = Settings()
    warm_up(settings)
    out = []

    # the reading thread's work, on this thread
    pipeline = Pipeline(settings, Path(f"/tmp/replay-parts-{Path(root).name}"))
    table = ChannelTable()
    takes_chunk = "chunk" in inspect.signature(runner.known_channels).parameters
    chunks = runner.read_feed(feed, C.Counters(), tidy_rows=runner.TIDY_CHUNK_ROWS)
    read = look = 0.0
    while True:
        t0 = time.perf_counter()
        chunk = next(chunks, None)
        t1 = time.perf_counter()
        if chunk is None:
            break
        known = runner.known_channels(pipeline, table, chunk if takes_chunk else chunk.pairs)
        t2 = time.perf_counter()
        runner.tidy_batch(pipeline, chunk, known)
        read, look = read + t1 - t0, look + t2 - t1
    out.append(f"reading thread: read {read:.2f} s, look-up {look:.2f} s")

    # _pairs alone
    names = [c for c in ("device", "metric", "kind", "group") if c in pq.read_schema(feed).names]
    pf = pq.ParquetFile(feed, read_dictionary=names)
    groups = []
    for i in range(min(3, pf.num_row_groups)):
        b = next(pf.iter_batches(batch_size=1 << 20, row_groups=[i], columns=names))
        groups.append({c: replay._codes(b.column(c), c in replay.TIDY_OPTIONAL) for c in names})
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(4):
            for g in groups:
                replay._pairs(g)
        best = min(best, (time.perf_counter() - t0) / (4 * len(groups)))
    out.append(f"pairs: {best * 1000:.1f} ms per chunk")

    # a channel table following the registry
    reg = Registry(ChannelSettings(max_channels=2 * CHANNELS))
    for i in range(CHANNELS):
        reg.channel(f"aq-{i:07d}", "pm25", "air", "d01")
    t0 = time.perf_counter()
    ChannelTable().follow(reg)
    out.append(f"follow {CHANNELS:,} channels: {(time.perf_counter() - t0) * 1000:.0f} ms")

    # the dropout sweep, every channel reporting every 30 s
    det = Detector(settings, reg, C.Counters())
    ch = np.arange(CHANNELS, dtype=np.int32)
    rng = np.random.default_rng(0)
    level = rng.uniform(5, 60, CHANNELS)
    for r in range(20):
        ts = 1_767_225_600_000 + r * 30_000 + ch.astype(np.int64) * 30_000 // CHANNELS
        det.process(Batch(ch, ts, level + rng.normal(0, 1.5, CHANNELS)))
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(20):
            det._sweep(det.wm, [])
        best = min(best, (time.process_time() - t0) / 20)
    out.append(f"sweep: {best / CHANNELS * 1e9:.1f} CPU ns per channel")

    # a snapshot file, both encodings
    if hasattr(sink, "DICTIONARY_COLUMNS"):
        rows = det.peek()[0].rows
        snapshot = sink.SnapshotWriter(Path("/tmp"), reg).table(0, 300_000, rows)
        names = [c for c in sink.DICTIONARY_COLUMNS if c in snapshot.column_names]
        for what, dictionary in (("every column", True), ("DICTIONARY_COLUMNS", names)):
            best = float("inf")
            for _ in range(7):
                buf = io.BytesIO()
                t0 = time.perf_counter()
                pq.write_table(snapshot, buf, compression=sink.COMPRESSION,
                               use_dictionary=dictionary)  # fmt: skip
                best = min(best, time.perf_counter() - t0)
            out.append(f"snapshot of {len(rows):,} rows, dictionaries on {what}: "
                       f"{best * 1000:.0f} ms, {len(buf.getvalue()) / 2**20:.1f} MiB")  # fmt: skip
    print(f"{root}:\n  " + "\n  ".join(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("feed", type=Path)
    ap.add_argument("checkouts", nargs="+")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        measure(args.checkouts[0], args.feed)
        return
    for r in range(args.rounds):
        for root in args.checkouts:
            print(f"round {r + 1}: ", end="", flush=True)
            cmd = [sys.executable, __file__, str(args.feed.resolve()),
                   str(Path(root).resolve()), "--one"]  # fmt: skip
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
