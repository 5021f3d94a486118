"""Checkpoint size and save/restore time at 100k and 1M channels (window 64, defaults).

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
            start = time.perf_counter()
            size = checkpoint.save(p, out / "c.npz")
            save_s = time.perf_counter() - start
            q = Pipeline(settings, out)
            start = time.perf_counter()
            checkpoint.restore(q, out / "c.npz")
            restore_s = time.perf_counter() - start
            print(f"{n:>9,} channels: {size / 1e6:.0f} MB ({size / n:.0f} B/channel), "
                  f"save {save_s:.2f} s, restore {restore_s:.2f} s")  # fmt: skip
            p.close()
            q.close()


if __name__ == "__main__":
    main()
