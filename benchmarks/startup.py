"""Startup time of ``streamproc run``: from process start to the first processed batch, with a
warm and with a cold numba cache.

    python benchmarks/startup.py [--repeat 5] [--timeout 600]

Measured from outside the daemon, which runs with the defaults against a private mosquitto.
t0 is taken just before the daemon's process is spawned. From t0 a client publishes one reading
every 10 ms (QoS 0, a new event time each); readings published before the daemon's
subscription is granted are lost, since its session is new. /metrics is scraped in a loop
(every 10 ms plus the scrape); each mark is the end of the first scrape that shows it:

- metrics up: the endpoint answers (interpreter, imports, configuration, pipeline built);
- ready: ``streamproc_ready`` is 1 (kernels compiled or loaded, broker connected,
  subscription granted);
- first batch: ``streamproc_readings_total`` >= 1, so a reading went through the detectors.
  The batch timer runs every ``batch.max_delay_ms`` (100 ms by default) once connected, so
  first batch - ready is at most that plus 10 ms plus one scrape.

``NUMBA_CACHE_DIR`` points at a folder of the benchmark's own; numba's cache then looks only
there, never in the package's ``__pycache__``. Cold: an empty folder for each run. Warm: a
folder filled by an untimed daemon run first. Python's bytecode caches and the OS file cache
are warm in both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gmqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live import DaemonProcess, Samples
from tests.mosquitto import Broker

TOPIC = "city/startup/air/probe/pm25"
MARKS = ("metrics up", "ready", "first batch")
POLL_S = 0.01


def _scrape(d: DaemonProcess) -> Samples | None:
    try:
        return d.samples()
    except OSError:  # not listening yet
        return None


async def _measure(d: DaemonProcess, port: int, timeout: float) -> dict[str, float]:
    """Seconds from spawning the daemon to each mark."""
    client = gmqtt.Client(None)
    await client.connect("127.0.0.1", port)

    async def feed() -> None:
        while True:
            payload = json.dumps({"ts": time.time_ns() // 1_000_000, "value": 10.0})
            client.publish(TOPIC, payload.encode(), qos=0)
            await asyncio.sleep(POLL_S)

    marks: dict[str, float] = {}
    t0 = time.monotonic()
    d.start()
    task = asyncio.create_task(feed())
    try:
        while "first batch" not in marks:
            assert d.proc is not None
            if d.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({d.proc.returncode}):\n{d.log()[-3000:]}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"no batch after {timeout} s:\n{d.log()[-3000:]}")
            samples = await asyncio.to_thread(_scrape, d)
            now = time.monotonic() - t0
            if samples is not None:
                marks.setdefault("metrics up", now)
                if samples.get(("streamproc_ready", ()), 0) >= 1:
                    marks.setdefault("ready", now)
                if samples.get(("streamproc_readings_total", ()), 0) >= 1:
                    marks.setdefault("first batch", now)
            await asyncio.sleep(POLL_S)
    finally:
        task.cancel()
        await client.disconnect()
    return marks


def run_once(
    broker: Broker, work: Path, name: str, cache: Path, timeout: float
) -> dict[str, float]:
    """One daemon start with ``cache`` as NUMBA_CACHE_DIR; stopped (SIGTERM) once measured."""
    args = ["run", "--broker", broker.url, "--out", str(work / name), "--client-id", name]
    d = DaemonProcess(work / name, args, env={"NUMBA_CACHE_DIR": str(cache)})
    try:
        marks = asyncio.run(_measure(d, broker.port, timeout))
        d.stop(timeout=60)
    finally:
        d.kill()
    return marks


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "| cache | runs | " + " | ".join(f"{m} median / max (s)" for m in MARKS) + " |",
        "|---|---|" + "---|" * len(MARKS),
    ]
    for mode, runs in results.items():
        cells = []
        for m in MARKS:
            values = [r[m] for r in runs]
            cells.append(f"{statistics.median(values):.2f} / {max(values):.2f}")
        lines.append(f"| {mode} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "Each run, first batch (s):", ""]
    for mode, runs in results.items():
        lines.append(f"- {mode}: " + ", ".join(f"{r['first batch']:.2f}" for r in runs))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="runs per cache state")
    ap.add_argument("--target", type=float, default=3.0, help="seconds, warm cache")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run")
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}
    with tempfile.TemporaryDirectory() as folder, Broker(Path(folder) / "mq") as broker:
        work = Path(folder)
        warm = work / "numba-warm"
        print("filling the warm cache (untimed run)", file=sys.stderr)
        run_once(broker, work, "fill", warm, args.timeout)
        for i in range(args.repeat):  # alternate, so that load from other jobs hits both
            for mode in ("cold", "warm"):
                cache = work / f"numba-cold-{i}" if mode == "cold" else warm
                marks = run_once(broker, work, f"{mode}{i}", cache, args.timeout)
                results[mode].append(marks)
                shown = ", ".join(f"{m} {marks[m]:.2f} s" for m in MARKS)
                print(f"{mode} {i + 1}/{args.repeat}: {shown}", file=sys.stderr)
    worst = max(r["first batch"] for r in results["warm"])
    verdict = "met" if worst <= args.target else "missed"
    print("## Startup: `streamproc run` to the first processed batch\n")
    print(table(results))
    print(
        f"\nTarget: first batch <= {args.target:g} s with a warm cache, in every run: {verdict} "
        f"(slowest warm run {worst:.2f} s)."
    )


if __name__ == "__main__":
    main()
