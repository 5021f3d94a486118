"""The reading kernel alone, checkout against checkout, side by side in one run.

    python benchmarks/kernel_ab.py BEFORE AFTER [--channels 1000000] [--rounds 2] [--repeat 3]

BEFORE and AFTER are checkouts of this repository (``git worktree add /tmp/before REV``).
Each round runs one fresh process per checkout, alternating, that imports that checkout's
streamproc and ``benchmarks/kernels.py``: it registers the channels, warms every channel's
window (window + 2 readings each, in batches of 100k in random channel order, as kernels.py
does), then times the kernel alone (``kernels.time_kernel``) on 10 batches ``--repeat`` times.
Prints CPU ns per reading of each timing and the detector state bytes per channel.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

BATCH = 100_000
TIMED_BATCHES = 10


def measure(root: str, channels: int, repeat: int) -> None:
    """One checkout, in this process."""
    sys.path.insert(0, root)
    import numpy as np

    import benchmarks.kernels as K
    import streamproc
    from streamproc import counters as C
    from streamproc.registry import Registry

    for module in (K, streamproc):
        assert str(module.__file__).startswith(root), f"{module.__file__} is not from {root}"
    settings = K.bench_settings(64, channels)
    reg = Registry(settings.channels)
    det = K.TimedDetector(settings, reg, C.Counters())
    gen = K.batches(K.Stream(K.register(reg, channels), 0, np.arange(10)), BATCH)
    for _ in range(math.ceil(66 * channels / BATCH)):
        det.process(next(gen))
    timed = [next(gen) for _ in range(TIMED_BATCHES)]
    ns = [K.time_kernel(det, timed, det.prm).cpu / (TIMED_BATCHES * BATCH) * 1e9
          for _ in range(repeat)]  # fmt: skip
    cpu = " / ".join(f"{x:,.0f}" for x in ns)
    print(f"{root}: kernel alone {cpu} CPU ns/reading; state {K.state_bytes(det)[0]} B/channel")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkouts", nargs="+")
    ap.add_argument("--channels", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        measure(args.checkouts[0], args.channels, args.repeat)
        return
    for r in range(args.rounds):
        for root in args.checkouts:
            print(f"round {r + 1}: ", end="", flush=True)
            cmd = [sys.executable, __file__, str(Path(root).resolve()), "--one",
                   "--channels", str(args.channels), "--repeat", str(args.repeat)]  # fmt: skip
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
