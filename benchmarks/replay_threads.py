"""Where a replay's main thread spends its time: wall seconds inside each part.

    python benchmarks/replay_threads.py FEED [replay options, e.g. --batch-size 10000]

Runs ``streamproc replay FEED -o /tmp/replay_threads --force`` in this process with timers
around the parts of the main thread (the kernels, the timers of the event-time clock, new
channels, routing the outputs, registering a chunk's new pairs) and around every wait on a
future, by thread: the main thread waiting for the reading thread, the writer for the file
threads. The import of streamproc is timed apart. Make the numba cache warm first (one replay).
Timing adds a few microseconds per call, so the figures are a little above an untimed run's.
"""

from __future__ import annotations

import concurrent.futures
import functools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

t_start = time.perf_counter()
from streamproc import cli, detect, pipeline, runner  # noqa: E402

spent: dict[str, float] = {}


def timed(owner: Any, name: str, label: str | Callable[[], str]) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            key = label() if callable(label) else label
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t

    setattr(owner, name, wrapper)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    timed(detect.Detector, "process", "Detector.process (all below it)")
    timed(detect.Detector, "_run", "  kernels (Detector._run)")
    timed(detect.Detector, "_fire_timers", "  timers: interval closes, dropout sweeps")
    timed(detect.Detector, "_sync", "  new channels' state (Detector._sync)")
    timed(pipeline.Pipeline, "_route", "outputs routed (Pipeline._route)")
    timed(runner, "tidy_batch", "new pairs registered (tidy_batch)")
    timed(pipeline.Pipeline, "close", "close: last intervals, files drained")

    def waiting() -> str:
        return f"waiting on a future: {threading.current_thread().name.split('_')[0]}"

    timed(concurrent.futures.Future, "result", waiting)
    out = ["-o", "/tmp/replay_threads", "--force"]
    t0 = time.perf_counter()
    cli.main(["replay", sys.argv[1], *out, *sys.argv[2:]])
    t1 = time.perf_counter()
    print(f"\nimport {t0 - t_start:.2f} s; replay command {t1 - t0:.2f} s")
    for label, seconds in spent.items():  # in order of first use
        print(f"{seconds:8.2f} s  {label}")


if __name__ == "__main__":
    main()
