"""Live ingest, end to end: a simulated feed published at full speed to a private mosquitto,
through ``streamproc run`` (all detectors, alert log, snapshots, alerts to MQTT), QoS 1 and 0.

    python benchmarks/live_ingest.py [--channels 500] [--duration 1d]

Reports messages per second from the first publish to the last message processed. The feed
covers a whole simulated day in seconds, so it also writes one snapshot interval (three
Parquet files) every few milliseconds: far more snapshot work than live traffic causes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamproc.sources import simulate as sim
from tests.live import DaemonProcess, publish_all
from tests.mosquitto import Broker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--channels", type=int, default=500)
    ap.add_argument("--duration", default="1d")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cfg = sim.SimConfig(args.channels, sim.parse_duration(args.duration), seed=3)
        feed, _ = sim.write(cfg, work / "feed")
        rows = [(topic, payload) for _, topic, payload in sim.iter_messages(pq.read_table(feed))]
        for qos in (1, 0):
            run = work / f"qos{qos}"
            with Broker(run / "mq") as broker:
                args_ = [
                    "run",
                    "--broker",
                    broker.url,
                    "--out",
                    str(run / "out"),
                    "--qos",
                    str(qos),
                ]
                d = DaemonProcess(run / "d", args_).start()
                try:
                    d.wait_ready()
                    start = time.monotonic()
                    publish_all(broker.url, rows, qos=qos)
                    published = time.monotonic() - start
                    d.wait_messages(len(rows), timeout=600)
                    done = time.monotonic() - start
                    time.sleep(0.5)  # the last batch runs within batch.max_delay_ms
                    readings = d.value("streamproc_readings_total")
                    batch_s = d.value("streamproc_batch_seconds_sum")
                    snap_s = d.value("streamproc_snapshot_seconds_sum")
                    print(f"QoS {qos}: {len(rows):,} messages ({readings:,.0f} readings); "
                          f"published in {published:.2f} s, processed in {done:.2f} s: "
                          f"{len(rows) / done:,.0f} msg/s, {readings / done:,.0f} readings/s; "
                          f"batches {batch_s:.2f} s of which snapshots {snap_s:.2f} s")  # fmt: skip
                    d.stop()
                finally:
                    d.kill()
            shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
