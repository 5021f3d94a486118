"""Memory at 100k and 1M channels: resident set size through the real pipeline, detector state
bytes per channel by array, and RSS over a steady run (it should not grow).

    python benchmarks/memory.py [--channels 100000 1000000] [--warmup 10] [--steady 50]
                                [--every 5]

Each size runs in a fresh process with the default settings (window 64): the kernels are
warmed, the channels registered through the registry (air stations with pm25, pm10, no2 and
o3, 50 groups), then every pass sends one reading per channel (values near 20: hardly any
alert), 60 s of event time after the last, through ``Pipeline.process`` in Batches of
``batch.max_readings``: all detectors, the alert log and the Parquet snapshots (one interval
closes every 5 passes), as in replay. RSS is VmRSS of /proc/self/status, read after the
writer thread has finished the files handed to it; peak is VmHWM. Growth is RSS at the end of
the steady run against RSS after the warm-up.

State bytes per channel are the bytes of one row of each ``Detector.state`` array plus, per
channel, the rows in use of the tables with rows of their own: the alert history (a row while
a channel has a rule not idle or a recent opening) and the seasonal profiles (channels whose
profile enables the rule; off by default). Arrays grow by doubling, so the bytes held are
capacity x row bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streamproc.batch import Batch
from streamproc.config import load
from streamproc.detect import Detector, row_bytes, warm_up
from streamproc.pipeline import Pipeline

METRICS = ("pm25", "pm10", "no2", "o3")
T0_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z
STEP_MS = 60_000


def proc_status(field: str) -> int:
    """A memory field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def tables(det: Detector) -> dict[str, tuple[dict[str, np.ndarray], int]]:
    """The detector's tables of rows of their own: arrays and rows in use."""
    history = det.alert_rows
    return {
        "alert history": (history, len(history["a_sev"]) - int(det.a_free[0])),
        "seasonal": (det.season, det.season_rows),
    }


def measure(n: int, warmup: int, steady: int, every: int) -> dict[str, object]:
    """One size, in this process; what ``report`` prints."""
    settings = load(None)
    warm_up(settings)
    rss: dict[str, int] = {"after imports and kernel warm-up": proc_status("VmRSS")}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        p = Pipeline(settings, Path(folder))
        start = time.perf_counter()
        for c in range(n):
            device = f"st{c // len(METRICS)}"
            group = f"g{c // len(METRICS) % 50}"
            p.registry.channel(device, METRICS[c % len(METRICS)], "air", group)
        register_s = time.perf_counter() - start
        rss["after registering the channels"] = proc_status("VmRSS")
        idx = np.arange(n, dtype=np.int32)
        chunk = settings.batch.max_readings

        def one_pass(k: int) -> None:
            ts = np.full(n, T0_MS + k * STEP_MS, np.int64)
            value = rng.normal(20.0, 2.0, n)
            for a in range(0, n, chunk):
                p.process(Batch(idx[a : a + chunk], ts[a : a + chunk], value[a : a + chunk]))
            p.drain()

        start = time.perf_counter()
        for k in range(warmup):
            one_pass(k)
        warm_s = time.perf_counter() - start
        rss[f"after {warmup} warm-up passes"] = proc_status("VmRSS")
        timeline = [(0, proc_status("VmRSS"))]
        start = time.perf_counter()
        for k in range(1, steady + 1):
            one_pass(warmup + k)
            if k % every == 0 or k == steady:
                timeline.append((k, proc_status("VmRSS")))
                print(f"{n:,} channels: steady pass {k}/{steady}, RSS "
                      f"{timeline[-1][1] / 2**20:,.0f} MiB", file=sys.stderr)  # fmt: skip
        steady_s = time.perf_counter() - start
        det = p.detector
        p.close()
        summary = p.summary()
    return {
        "channels": n,
        "capacity": det.capacity,
        "state_row": row_bytes(det.state),
        "tables": {
            name: {
                "row": row_bytes(arrays),
                "rows": rows,
                "held": sum(a.nbytes for a in arrays.values()),
            }
            for name, (arrays, rows) in tables(det).items()
        },
        "rss": rss,
        "timeline": timeline,
        "peak": proc_status("VmHWM"),
        "readings": summary["readings"],
        "alerts_opened": sum(summary["alerts_opened"].values()),
        "seconds": {"register": register_s, "warm-up": warm_s, "steady": steady_s},
    }


def report(results: list[dict[str, object]], target: int, tolerance: float) -> str:
    mib = 2**20
    out = ["## Memory at 100k and 1M channels (window 64, default settings)", ""]
    out += ["| channels | state B/channel | state held (MiB) | RSS after warm-up (MiB) | "
            "RSS of the pipeline per channel (B) | peak RSS (MiB) | steady-run growth (range) | "
            f"state <= {target} B/channel | no growth (<= {tolerance:g}%) |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        n, row = r["channels"], r["state_row"]
        per = sum(row.values())
        per += sum(t["rows"] * sum(t["row"].values()) for t in r["tables"].values()) / n
        held = r["capacity"] * sum(row.values()) + sum(t["held"] for t in r["tables"].values())
        rss = list(r["rss"].values())
        first, last = r["timeline"][0][1], r["timeline"][-1][1]
        growth = (last - first) / first
        values = [v for _, v in r["timeline"]]
        lo, hi = (min(values) - first) / first, (max(values) - first) / first
        out.append(f"| {n:,} | {per:.0f} | {held / mib:,.0f} (capacity {r['capacity']:,}) | "
                   f"{rss[-1] / mib:,.0f} | {(rss[-1] - rss[0]) / n:,.0f} | "
                   f"{r['peak'] / mib:,.0f} | {growth:+.1%} ({lo:+.1%} to {hi:+.1%}) | "
                   f"{'met' if per <= target else 'missed'} | "
                   f"{'met' if growth * 100 <= tolerance else 'missed'} |")  # fmt: skip
    out += ["", "RSS of the pipeline per channel: RSS after warm-up less RSS after imports and "
            "kernel warm-up, over the channels: state arrays (with the capacity's slack), the "
            "registry's dicts and names, the decoder and the batch buffers.", ""]  # fmt: skip
    for r in results:
        n = r["channels"]
        s = r["seconds"]
        out += [f"### {n:,} channels", ""]
        out += ["| point | RSS (MiB) |", "|---|---|"]
        out += [f"| {name} | {v / mib:,.1f} |" for name, v in r["rss"].items()]
        out += [f"| steady pass {k} | {v / mib:,.1f} |" for k, v in r["timeline"][1:]]
        out += ["", f"{r['readings']:,} readings, {r['alerts_opened']} alerts opened; register "
                f"{s['register']:.1f} s, warm-up {s['warm-up']:.1f} s, steady run "
                f"{s['steady']:.1f} s.", ""]  # fmt: skip
    row = results[0]["state_row"]
    total = sum(row.values())
    out += ["### State bytes per channel, by array", "", "| array | B/channel | share |",
            "|---|---|---|"]  # fmt: skip
    for name, b in sorted(row.items(), key=lambda kv: -kv[1]):
        out.append(f"| {name} | {b} | {b / total:.1%} |")
    out.append(f"| **all** | **{total}** | |")
    for name, t in results[0]["tables"].items():
        used = ", ".join(f"{r['tables'][name]['rows']:,} at {r['channels']:,} channels"
                         for r in results)  # fmt: skip
        out += ["", f"Table {name} ({', '.join(t['row'])}): {sum(t['row'].values())} B per "
                f"row; rows in use at the end: {used}."]  # fmt: skip
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--channels", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--warmup", type=int, default=10, help="passes before the steady run")
    ap.add_argument("--steady", type=int, default=50, help="passes of the steady run")
    ap.add_argument("--every", type=int, default=5, help="RSS every this many passes")
    ap.add_argument("--target", type=int, default=600, help="state bytes per channel")
    ap.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        help="largest RSS growth over the steady run that counts as none, in %%",
    )
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.channels[0], args.warmup, args.steady, args.every)))
        return
    results = []
    for n in args.channels:
        print(f"{n:,} channels ...", file=sys.stderr)
        steps = ["--warmup", str(args.warmup), "--steady", str(args.steady)]
        cmd = [sys.executable, __file__, "--one", "--channels", str(n), *steps]
        cmd += ["--every", str(args.every)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(done.stdout))
    print(report(results, args.target, args.tolerance))


if __name__ == "__main__":
    main()
