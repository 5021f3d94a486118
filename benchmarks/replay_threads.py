"""Where a replay's main thread spends its time: wall seconds inside each part.

    python benchmarks/replay_threads.py FEED [replay options, e.g. --batch-size 10000]

Runs ``streamproc replay FEED -o /tmp/replay_threads --force`` in this process with timers
around the parts of the main thread (the kernels, the timers of the event-time clock, new
channels, routing the outputs, registering a chunk's new pairs) and around every wait on a
future, by thread: the main thread waiting for the reading thread, the writer for the file
threads. The import of streamproc is timed apart. Then each thread's CPU seconds (from
``/proc/self/task``, read every 50 ms while it runs; Arrow's own threads have no Python
name) and the cyclic garbage collector's time, from ``gc.callbacks``. Make the numba cache
warm first (one replay). Timing adds a few microseconds per call, so the figures are a little
above an untimed run's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import gc
import os
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


def collector_time() -> list[float]:
    """A one-item list that sums the cyclic collector's passes from now on."""
    total, began = [0.0], [0.0]

    def callback(phase: str, _info: dict) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            total[0] += time.perf_counter() - began[0]

    gc.callbacks.append(callback)
    return total


def thread_cpu(stop: threading.Event) -> dict[str, tuple[str, float]]:
    """Each thread's name and CPU seconds, by native id, updated every 50 ms until ``stop``."""
    seen: dict[str, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")

    def poll() -> None:
        while not stop.wait(0.05):
            names = {str(t.native_id): t.name for t in threading.enumerate()}
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{tid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:  # the thread ended
                    continue
                name = names.get(tid) or seen.get(tid, ("(Arrow or other native)", 0))[0]
                seen[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)

    threading.Thread(target=poll, name="cpu-poll", daemon=True).start()
    return seen


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
    stop = threading.Event()
    cpu = thread_cpu(stop)
    collected = collector_time()
    t0 = time.perf_counter()
    cli.main(["replay", sys.argv[1], *out, *sys.argv[2:]])
    t1 = time.perf_counter()
    stop.set()
    print(f"\nimport {t0 - t_start:.2f} s; replay command {t1 - t0:.2f} s")
    for label, seconds in spent.items():  # in order of first use
        print(f"{seconds:8.2f} s  {label}")
    print(f"{collected[0]:8.2f} s  cyclic garbage collector, all threads")
    by_name: collections.Counter[str] = collections.Counter()
    for name, seconds in cpu.values():
        by_name[name.split("_")[0].rstrip("0123456789")] += seconds
    print("CPU by thread (including the import):")
    for name, seconds in by_name.most_common():
        print(f"{seconds:8.2f} s  {name}")


if __name__ == "__main__":
    main()
