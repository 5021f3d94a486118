"""The detector as the replay benchmark drives it: CPU ns per reading of ``Detector.process``.

    python benchmarks/kernel_round_robin.py [--channels 10000 100000] [--config FILE]
                                            [--prefetch-ahead N]
                                            [--checkouts DIR ... [--rounds 4]]

Channels report in a fixed round-robin order, one reading each every 30 s of event time, as
in ``replay_large.py``'s feed (PM2.5 stations, a level per channel plus noise), in batches of
``batch.max_readings`` (10,000 by default). The configuration's rules are used (default: the
built-in ones), so the figure is the kernel's share of a replay, timers included (dropout
sweeps every 60 s of event time, interval closes). Each channel's window is filled first;
then 3 x 100 batches are timed and the best of the three is printed.

With ``--checkouts`` (``git worktree add /tmp/before REV``), each round runs one process per
checkout, alternating, that imports that checkout's streamproc; the figures of each checkout
are then printed sorted, since on a shared host one round can be much slower than the next.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

START_MS = 1_767_225_600_000
INTERVAL_MS = 30_000
TIMED = 100  # batches per timing


def measure(channels: int, config: Path | None, ahead: int | None) -> float:
    from streamproc import counters as C
    from streamproc.batch import Batch
    from streamproc.config import load
    from streamproc.detect import Detector, warm_up
    from streamproc.registry import Registry

    settings = load(config)
    warm_up(settings)
    reg = Registry(settings.channels)
    for i in range(channels):
        reg.channel(f"aq-{i:07d}", "pm25", "air", "d01")
    det = Detector(settings, reg, C.Counters())
    if ahead is not None:
        det.prefetch_ahead = ahead
    rng = np.random.default_rng(0)
    level = rng.uniform(5, 60, channels)
    size = settings.batch.max_readings
    k0 = 0

    def batch() -> Batch:
        nonlocal k0
        k = np.arange(k0, k0 + size)
        k0 += size
        ch = (k % channels).astype(np.int32)
        ts = START_MS + (k * INTERVAL_MS / channels).astype(np.int64)
        return Batch(ch, ts, level[ch] + rng.normal(0, 1.5, size))

    for _ in range(-(-(settings.detect.window + 6) * channels // size)):
        det.process(batch())
    timed = [batch() for _ in range(3 * TIMED)]
    best = float("inf")
    for r in range(3):
        t0 = time.process_time()
        for b in timed[r * TIMED : (r + 1) * TIMED]:
            det.process(b)
        best = min(best, time.process_time() - t0)
    return best / (TIMED * size) * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--channels", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--config", type=Path, help="TOML configuration (default: built-in)")
    ap.add_argument("--prefetch-ahead", type=int, help="readings between prefetch and use")
    ap.add_argument("--checkouts", nargs="+", help="checkouts to compare, alternated")
    ap.add_argument("--rounds", type=int, default=4, help="with --checkouts")
    args = ap.parse_args()
    if args.checkouts:
        compare(args)
        return
    for n in args.channels:
        ns = measure(n, args.config, args.prefetch_ahead)
        print(f"{n:,} channels: {ns:,.0f} CPU ns per reading", flush=True)


def compare(args: argparse.Namespace) -> None:
    """Run this script once per checkout and round, alternating; print each one's figures."""
    opts = ["--channels", *map(str, args.channels)]
    if args.config:
        opts += ["--config", str(args.config.resolve())]
    if args.prefetch_ahead is not None:
        opts += ["--prefetch-ahead", str(args.prefetch_ahead)]
    seen: dict[tuple[str, str], list[int]] = {}
    for r in range(args.rounds):
        for root in args.checkouts:
            root = str(Path(root).resolve())
            env = os.environ | {"PYTHONPATH": root}
            out = subprocess.run([sys.executable, __file__, *opts], env=env, cwd="/",
                                 check=True, capture_output=True, text=True).stdout  # fmt: skip
            for line in out.splitlines():
                where, figure = line.split(": ")
                ns = int(figure.split()[0].replace(",", ""))
                seen.setdefault((root, where), []).append(ns)
                print(f"round {r + 1}: {root}: {line}", flush=True)
    for (root, where), all_ns in seen.items():
        print(f"{root}, {where}: {' / '.join(map(str, sorted(all_ns)))} CPU ns per reading, sorted")


if __name__ == "__main__":
    main()
