"""The hampel rule's median and spread of a window's changes (``bank._change_spread``) alone,
checkout against checkout, side by side in one run.

    python benchmarks/change_spread.py CHECKOUT [CHECKOUT ...] [--rounds 2]

Each round runs one process per checkout (``git worktree add /tmp/before REV``), alternating,
that imports that checkout's streamproc and times ``_change_spread`` over 1,000 full windows
of 64 float32 values, 200,000 calls, best of 3, on three kinds of window: noisy (a random walk
plus noise), the same rounded to integers, and spiky (2 % of the values +30). Prints ns per
call and the sum of the results, which must agree between checkouts.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

CALLS = 200_000


def measure(root: str) -> None:
    sys.path.insert(0, root)
    import numpy as np
    from numba import njit

    import streamproc
    from streamproc.kernels import OPTIONS
    from streamproc.kernels.bank import _change_spread

    assert str(streamproc.__file__).startswith(root), f"{streamproc.__file__} is not from {root}"

    @njit(**(OPTIONS | {"cache": False}))
    def run(ring: np.ndarray, calls: int, buf: np.ndarray) -> float:
        acc = 0.0
        for r in range(calls):
            med, sd = _change_spread(ring, r % ring.shape[0], r % 64, 64, 64, buf, 0.0)
            acc += med + sd
        return acc

    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(0, 0.5, (1000, 64)), axis=1) + rng.normal(0, 2, (1000, 64)) + 25
    spiky = walk + (rng.random((1000, 64)) < 0.02) * 30
    buf = np.empty(128)
    out = []
    for name, ring in (("noisy", walk), ("rounded", np.round(walk)), ("spiky", spiky)):
        ring32 = ring.astype(np.float32)
        run(ring32, 10, buf)
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            acc = run(ring32, CALLS, buf)
            best = min(best, time.process_time() - t0)
        out.append(f"{name} {best / CALLS * 1e9:,.0f} ns (sum {acc:.6f})")
    print(f"{root}: " + "; ".join(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkouts", nargs="+")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        measure(args.checkouts[0])
        return
    for r in range(args.rounds):
        for root in args.checkouts:
            print(f"round {r + 1}: ", end="", flush=True)
            cmd = [sys.executable, __file__, str(Path(root).resolve()), "--one"]
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
