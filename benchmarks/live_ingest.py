"""Live ingest, end to end: a simulated feed published at full speed to a private mosquitto,
through ``streamproc run`` (all detectors, alert log, snapshots, alerts to MQTT), QoS 1 and 0;
and, for comparison, the same stream to a bare gmqtt subscriber that only counts.

    python benchmarks/live_ingest.py [--channels 500] [--duration 1d] [--interval-s S]
                                     [--qos 1 0] [--raw] [--batch N] [--config FILE]
                                     [--inflight 20]

Reports messages per second from the first publish to the last message processed (daemon) or
received (bare subscriber: same protocol, filters and QoS as the daemon, in its own process).
The publisher is streamproc's own (gmqtt over MQTT 5: at QoS 1 it waits for the broker's window
of 20 unacknowledged messages, which limits the stream), or with ``--raw`` the raw-socket one
of ``mqtt_clients.py`` (MQTT 3.1.1, no window: the subscriber sets the pace).
With ``--batch N`` the feed's messages are regrouped, in order, into gateway batches
(``{"readings": [entry, ...]}``, each entry naming its device, kind and group) of about N
readings each. ``--config`` is passed to the daemon (``[checkpoint] journal = false`` to
acknowledge QoS 1 on arrival); ``--inflight`` sets mosquitto's ``max_inflight_messages``, the
QoS 1 messages that may wait for a subscriber's acknowledgement (the daemon acknowledges only
after its journal's fsync). The feed covers a whole simulated day in seconds, so it also writes one
snapshot interval (three Parquet files) every few milliseconds: far more snapshot work than
live traffic causes. ``--interval-s`` sets every sensor's report interval (5 s or more): a
shorter one puts more readings in each snapshot interval, as a faster live stream would, and
more readings per channel after its first. To measure another checkout, point ``PYTHONPATH``
at it and run from a directory that holds no ``streamproc/`` (the daemon starts as
``python -m streamproc.cli``, which puts the current directory first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gmqtt
import pyarrow.parquet as pq
from gmqtt.mqtt.constants import MQTTv50

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import mqtt_clients
from streamproc.config import load
from streamproc.daemon import subscriptions
from streamproc.sources import simulate as sim
from tests.live import DaemonProcess, publish_all
from tests.mosquitto import Broker

Messages = list[tuple[str, bytes]]


def gateway_batches(rows: Messages, readings: int) -> Messages:
    """The messages regrouped into gateway batches of about ``readings`` readings each."""
    out: Messages = []
    entries: list[dict[str, object]] = []
    n = 0
    for topic, payload in rows:
        _, group, kind, device = topic.split("/")[:4]
        entry = json.loads(payload)
        entries.append({**entry, "device": device, "kind": kind, "group": group})
        n += len(entry) - 1  # every key but ts is a metric
        if n >= readings:
            out.append((topic, json.dumps({"readings": entries}).encode()))
            entries, n = [], 0
    if entries:
        out.append((rows[-1][0], json.dumps({"readings": entries}).encode()))
    return out


def send(broker: Broker, rows: Messages, qos: int, packets: list[bytes] | None) -> None:
    """Publish the rows: as the raw ``packets`` of them if given, else with streamproc's own
    publisher."""
    if packets is None:
        publish_all(broker.url, rows, qos=qos)
    else:
        mqtt_clients.publish(broker.port, packets, qos)


async def _count(port: int, qos: int, expected: int) -> None:
    """Subscribe like the daemon, print READY, count; print the time of the last message."""
    done = asyncio.Event()
    subscribed = asyncio.Event()
    seen = 0
    last = 0.0

    def on_message(
        client: gmqtt.Client, topic: str, payload: bytes, qos: int, props: object
    ) -> int:
        nonlocal seen, last
        seen += 1
        last = time.monotonic()
        if seen >= expected:
            done.set()
        return 0

    client = gmqtt.Client("bench-bare")
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    await client.connect("127.0.0.1", port, version=MQTTv50)
    topics = subscriptions(load(None))
    client.subscribe([gmqtt.Subscription(t, qos=qos) for t in topics])
    await subscribed.wait()
    print("READY", flush=True)
    await asyncio.wait_for(done.wait(), 600)
    print(json.dumps({"count": seen, "last": last}), flush=True)
    await client.disconnect()


def bare(broker: Broker, rows: Messages, qos: int, packets: list[bytes] | None) -> float:
    """Seconds from the first publish to the last message at a bare gmqtt subscriber."""
    args = [sys.executable, __file__, "--bare-port", str(broker.port), "--qos", str(qos)]
    with subprocess.Popen([*args, "--expect", str(len(rows))], stdout=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            raise RuntimeError("the bare subscriber did not start")
        start = time.monotonic()
        send(broker, rows, qos, packets)
        report = json.loads(proc.stdout.readline())
    return float(report["last"]) - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--channels", type=int, default=500)
    ap.add_argument("--duration", default="1d")
    ap.add_argument("--qos", type=int, nargs="+", choices=(0, 1), default=[1, 0])
    ap.add_argument("--raw", action="store_true", help="publish with the raw-socket publisher")
    ap.add_argument("--batch", type=int, help="regroup into gateway batches of N readings")
    ap.add_argument("--interval-s", type=float, help="every sensor's report interval "
                    "(default: the simulator's, 120-300 s)")  # fmt: skip
    ap.add_argument("--config", help="the daemon's configuration file")
    ap.add_argument("--inflight", type=int, default=20, help="mosquitto max_inflight_messages")
    ap.add_argument("--bare-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_port:
        asyncio.run(_count(args.bare_port, args.qos[0], args.expect))
        return
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cfg = sim.SimConfig(args.channels, sim.parse_duration(args.duration), seed=3)
        if args.interval_s:
            cfg.interval_s = dict.fromkeys(cfg.interval_s, args.interval_s)
        feed, _ = sim.write(cfg, work / "feed")
        rows = [(topic, payload) for _, topic, payload in sim.iter_messages(pq.read_table(feed))]
        if args.batch:
            rows = gateway_batches(rows, args.batch)
        for qos in args.qos:
            run = work / f"qos{qos}"
            packets = mqtt_clients.encode(rows, qos) if args.raw else None
            with Broker(run / "mq", max_inflight_messages=args.inflight) as broker:
                seconds = bare(broker, rows, qos, packets)
                print(f"QoS {qos}: bare gmqtt subscriber: {len(rows) / seconds:,.0f} msg/s")
                base = len(rows) / seconds
                args_ = [
                    "run",
                    "--broker",
                    broker.url,
                    "--out",
                    str(run / "out"),
                    "--qos",
                    str(qos),
                    *(["-c", str(Path(args.config).resolve())] if args.config else []),
                ]
                d = DaemonProcess(run / "d", args_).start()
                try:
                    d.wait_ready()
                    start = time.monotonic()
                    send(broker, rows, qos, packets)
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
                          f"batches {batch_s:.2f} s, snapshot writes {snap_s:.2f} s; "
                          f"{len(rows) / done / base:.0%} of the bare subscriber")  # fmt: skip
                    d.stop()
                finally:
                    d.kill()
            shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
