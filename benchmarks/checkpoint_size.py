"""Checkpoint size, the pause on the event loop (copying the state), the write (in a thread in
the daemon) and restore time, at 100k and 1M channels (window 64, defaults).

python benchmarks/checkpoint_size.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from streamproc import checkpoint
from streamproc.batch import Batch
from streamproc.config import load
from streamproc.pipeline import Pipeline


def main() -> None:
    settings = load(None)
    rng = np.random.default_rng(0)
    for n in (100_000, 1_000_000):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder)
            p = Pipeline(settings, out)
            for c in range(n):
                p.registry.channel(f"dev{c // 4}", f"m{c % 4}", "air", f"g{c % 50}")
            idx = np.arange(n, dtype=np.int32)
            for k in range(3):
                ts = np.full(n, 1_767_571_200_000 + k * 60_000, np.int64)
                p.process(Batch(idx, ts, rng.random(n)))
            ck = checkpoint.Checkpointer(p, out / "c.npz")
            ck.take()  # the first take also encodes every channel's names
            start = time.perf_counter()
            arrays = ck.take()
            take_s = time.perf_counter() - start
            size = ck.write(arrays)
            write_s = time.perf_counter() - start - take_s
            q = Pipeline(settings, out)
            start = time.perf_counter()
            checkpoint.restore(q, out / "c.npz")
            restore_s = time.perf_counter() - start
            print(
                f"{n:>9,} channels: {size / 1e6:.0f} MB ({size / n:.0f} B/channel), copy on the "
                f"loop {take_s:.2f} s, write {write_s:.2f} s, restore {restore_s:.2f} s"
            )
            p.close()
            q.close()


if __name__ == "__main__":
    main()
