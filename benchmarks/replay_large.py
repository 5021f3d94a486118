"""Replay of a large tidy Parquet feed, end to end, snapshots included: readings per second.

    python benchmarks/replay_large.py [--readings 50_000_000] [--channels 100_000]
                                      [--interval-s 30] [--work DIR]

Writes a feed of ``--readings`` rows (``ts, device, metric, kind, group, value``: air-quality
PM2.5 stations, one reading per channel every ``--interval-s`` seconds, a random walk with
noise and a few spikes), then runs ``streamproc replay FEED -o OUT`` on it in a process of
its own (default configuration: every default rule, 5-minute Parquet snapshots and alert
files, the writer thread) and reports wall time, readings per second, the process's CPU time
and peak RSS. The feed is written in row groups of 1M readings in time order, so a row group
covers about ``1M / channels * interval`` seconds.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_GROUP = 1_000_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def write_feed(path: Path, readings: int, channels: int, interval_s: float, seed: int) -> None:
    """The feed, one row group at a time (memory stays at one group)."""
    rng = np.random.default_rng(seed)
    devices = pa.array([f"aq-{i:07d}" for i in range(channels)])
    level = rng.uniform(5, 60, channels)
    schema = pa.schema([("ts", pa.int64()), ("device", pa.dictionary(pa.int32(), pa.string())),
                        ("metric", pa.string()), ("kind", pa.string()), ("group", pa.string()),
                        ("value", pa.float64())])  # fmt: skip
    step_ms = interval_s * 1000 / channels  # readings spread evenly over each round
    with pq.ParquetWriter(path, schema) as w:
        for a in range(0, readings, ROWS_PER_GROUP):
            n = min(ROWS_PER_GROUP, readings - a)
            k = np.arange(a, a + n)
            ch = (k % channels).astype(np.int32)
            ts = START_MS + (k * step_ms).astype(np.int64)
            level += rng.normal(0, 0.2, channels)  # the walk moves once per row group
            value = level[ch] + rng.normal(0, 1.5, n)
            spikes = rng.random(n) < 1e-5
            value[spikes] += rng.uniform(50, 200, int(spikes.sum()))
            table = pa.table(
                {
                    "ts": ts,
                    "device": pa.DictionaryArray.from_arrays(pa.array(ch), devices),
                    "metric": pa.array(["pm25"] * n),
                    "kind": pa.array(["air"] * n),
                    "group": pa.array(["d01"] * n),
                    "value": value,
                },
                schema=schema,
            )
            w.write_table(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readings", type=int, default=50_000_000)
    ap.add_argument("--channels", type=int, default=100_000)
    ap.add_argument("--interval-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep the feed and output here")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="replay-large-"))
    work.mkdir(parents=True, exist_ok=True)
    feed = work / "feed.parquet"
    try:
        if not feed.exists():
            t0 = time.perf_counter()
            write_feed(feed, args.readings, args.channels, args.interval_s, args.seed)
            print(f"feed: {args.readings:,} readings, {args.channels:,} channels, "
                  f"{feed.stat().st_size / 2**20:,.0f} MiB, written in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        cmd = [sys.executable, "-m", "streamproc.cli", "replay", str(feed), "-o", str(work / "out"),
               "--force"]  # fmt: skip
        shutil.rmtree(work / "out", ignore_errors=True)  # a former run's output: not timed
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        files = sum(1 for _ in (work / "out").rglob("*.parquet"))
        print(f"replay: {args.readings:,} readings in {wall:.1f} s = "
              f"{args.readings / wall:,.0f} readings/s; CPU {cpu:.1f} s ({cpu / wall:.2f} cores); "
              f"peak RSS {after.ru_maxrss / 1024:,.0f} MiB; {files:,} Parquet files")  # fmt: skip
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
