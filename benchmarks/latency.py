"""Latency from publishing a reading to its alert on MQTT, under a steady stream of 10k msg/s.

    python benchmarks/latency.py [--rate 10000] [--seconds 62] [--delays 100 10] [--qos 1 0]
        [--tcp-nodelay]

For each ``batch.max_delay_ms`` in --delays and each QoS in --qos: a private mosquitto and
``streamproc run`` (default settings but the batch delay; subscribed with that QoS). A publisher
process sends --rate messages per second at that QoS, paced every millisecond, one reading per
message (``{"ts": <now ms>, "value": ...}`` on ``city/g<i>/air/st<i>/pm25``, --channels
channels in turn over --connections connections, values near 20: no alert). Every --probe-ms,
from the second second on, one of those messages is a probe instead, on a connection of its
own: pipe pressure 0.8 on a device never seen before, which opens a threshold alert on that
very reading (pipe.pressure below 1.0 has no minimum duration by default; a new channel has no
previous reading for the rate rule). A subscriber to ``streamproc/alerts/#`` (QoS 1) in this
process takes the time each probe's open alert arrives. Latency = that time - the time just
before the probe was handed to the publishing client (CLOCK_MONOTONIC, the same clock in both
processes): the broker both ways, decoding, the wait for the batch timer, the batch and the
alert publishing. A second subscriber takes the probes themselves, to split that time into
publish -> any subscriber and subscriber -> alert. The daemon's CPU is measured from the
subscriptions to 2 s after the last publish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gmqtt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamproc.config import MqttSettings
from streamproc.sources.mqtt import MqttConnection
from tests.live import DaemonProcess
from tests.mosquitto import Broker

FIRST_PROBE_S = 1.0


async def _connect(port: int) -> MqttConnection:
    m = MqttSettings(broker=f"mqtt://127.0.0.1:{port}", client_id="", clean_session=True)
    conn = MqttConnection(m, (), lambda topic, payload: None, subscribe=False)
    if not await conn.connect(asyncio.Event()):
        raise RuntimeError("publisher: cannot connect")
    return conn


async def publish(port: int, rate: float, seconds: float, channels: int, probe_ms: float,
                  qos: int, connections: int) -> dict[str, object]:  # fmt: skip
    """The publisher process: the background stream over ``connections`` connections, the
    probes over one more; the probes' send times."""
    conns = [await _connect(port) for _ in range(connections)]
    probe_conn = await _connect(port)
    topics = [f"city/g{c % 50}/air/st{c}/pm25" for c in range(channels)]
    rng = random.Random(0)
    probes: dict[str, float] = {}
    max_backlog = 0
    start = time.monotonic()
    cpu = time.process_time()
    next_probe = start + FIRST_PROBE_S
    n = 0
    while (now := time.monotonic()) - start < seconds:
        ts = time.time_ns() // 1_000_000
        for _ in range(int((now - start) * rate) - n):
            if time.monotonic() >= next_probe:
                name = f"probe{len(probes)}"
                body = b'{"ts":%d,"value":0.8}' % (time.time_ns() // 1_000_000)
                probes[name] = time.monotonic()
                probe_conn.publish(f"city/lat/pipe/{name}/pressure", body, qos=qos)
                next_probe += probe_ms / 1000
            else:
                body = b'{"ts":%d,"value":%.2f}' % (ts, rng.gauss(20.0, 2.0))
                conns[n % connections].publish(topics[n % channels], body, qos=qos)
            n += 1
        max_backlog = max(max_backlog, sum(c.backlog for c in conns))
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu
    for conn in [*conns, probe_conn]:
        await conn.drain(30.0)
        await conn.close()
    return {
        "sent": n,
        "seconds": elapsed,
        "cpu": cpu / elapsed,
        "max_backlog": max_backlog,
        "probes": probes,
    }


async def _subscribe(port: int, topic: str, qos: int,
                     on_message: Callable[[str, bytes, float], None]) -> gmqtt.Client:  # fmt: skip
    """A client of its own, subscribed; ``on_message(topic, payload, arrival)``."""
    subscribed = asyncio.Event()
    client = gmqtt.Client(None)
    client.on_message = lambda c, t, p, q, props: on_message(t, p, time.monotonic()) or 0
    client.on_subscribe = lambda *a: subscribed.set()
    await client.connect("127.0.0.1", port)
    client.subscribe(gmqtt.Subscription(topic, qos=qos))
    await subscribed.wait()
    return client


async def _measure(broker: Broker, args: argparse.Namespace, qos: int) -> dict[str, object]:
    """Subscribe to the alerts and to the probes, run the publisher process, collect what
    arrived: latencies to the open alert, and to the probe itself at a bare subscriber.
    The two subscribers have a connection each: on a shared one, a QoS 0 probe that the
    client does not answer leaves its TCP segment to a delayed ACK, and mosquitto (Nagle's
    algorithm on by default) holds the alert behind it for up to 40 ms."""
    opened: dict[str, float] = {}  # probe device -> arrival of its open alert
    delivered: dict[str, float] = {}  # probe device -> arrival of the probe itself

    def on_alert(topic: str, payload: bytes, now: float) -> None:
        alert = json.loads(payload)
        if alert["event"] == "open" and alert["rule"] == "threshold":
            opened.setdefault(alert["device"], now)

    def on_probe(topic: str, payload: bytes, now: float) -> None:
        delivered.setdefault(topic.split("/")[3], now)

    clients = [
        await _subscribe(broker.port, "streamproc/alerts/#", 1, on_alert),
        await _subscribe(broker.port, "city/lat/#", qos, on_probe),
    ]
    cmd = [sys.executable, __file__, "--publisher", str(broker.port), "--rate", str(args.rate),
           "--seconds", str(args.seconds), "--channels", str(args.channels),
           "--probe-ms", str(args.probe_ms), "--qos", str(qos),
           "--connections", str(args.connections)]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"publisher failed ({proc.returncode})")
    await asyncio.sleep(2.0)  # the last alerts
    for client in clients:
        await client.disconnect()
    pub = json.loads(out)
    sent: dict[str, float] = pub.pop("probes")
    pub["latency_ms"] = [(opened[p] - t) * 1000 for p, t in sent.items() if p in opened]
    pub["delivery_ms"] = [(delivered[p] - t) * 1000 for p, t in sent.items() if p in delivered]
    pub["daemon_ms"] = [(opened[p] - delivered[p]) * 1000 for p in sent
                        if p in opened and p in delivered]  # fmt: skip
    pub["missing"] = sum(p not in opened for p in sent)
    return pub


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(work: Path, args: argparse.Namespace, delay_ms: int, qos: int) -> dict[str, object]:
    work.mkdir()
    config = work / "config.toml"
    config.write_text(f"[batch]\nmax_delay_ms = {delay_ms}\n")
    with Broker(work / "mq", tcp_nodelay=args.tcp_nodelay) as broker:
        cmd = ["run", "-c", str(config), "--broker", broker.url, "--out", str(work / "out"),
               "--qos", str(qos)]  # fmt: skip
        d = DaemonProcess(work / "daemon", cmd).start()
        try:
            d.wait_ready()
            assert d.proc is not None
            cpu, start = cpu_seconds(d.proc.pid), time.monotonic()
            result = asyncio.run(_measure(broker, args, qos))
            result["daemon_cpu"] = (cpu_seconds(d.proc.pid) - cpu) / (time.monotonic() - start)
            result["readings"] = d.value("streamproc_readings_total")
            result["dropped"] = d.value("streamproc_dropped_total")
            batches = d.value("streamproc_batch_seconds_count")
            result["batches"] = batches
            result["batch_ms"] = d.value("streamproc_batch_seconds_sum") / max(batches, 1) * 1000
            d.stop(timeout=60)
        finally:
            d.kill()
    return result


def _dist(ms: list[float]) -> str:
    """p50 | p99 | max, in ms."""
    if not ms:
        return "- | - | -"
    p50, p99 = np.percentile(ms, [50, 99])
    return f"{p50:.1f} | {p99:.1f} | {max(ms):.1f}"


def table(rows: list[tuple[int, int, dict[str, object]]], target_ms: float) -> str:
    out = ["| batch.max_delay_ms | QoS | samples | missing | p50 (ms) | p99 (ms) | max (ms) | "
           f"p99 <= {target_ms:g} ms |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for delay, qos, r in rows:
        lat = r["latency_ms"]
        met = bool(lat) and np.percentile(lat, 99) <= target_ms
        out.append(f"| {delay} | {qos} | {len(lat)} | {r['missing']} | {_dist(lat)} | "
                   f"{'met' if met else 'missed'} |")  # fmt: skip
    out += ["", "Where the time goes, per probe: publish -> the probe at a bare subscriber "
            "(publisher, broker, delivery: what any subscriber waits), and the probe at the bare "
            "subscriber -> its alert (decode, batch timer, batch, alert publishing, broker). "
            "CPU is in % of one core over the run.", "",
            "| batch.max_delay_ms | QoS | to the probe p50 / p99 / max (ms) | probe to alert "
            "p50 / p99 / max (ms) | msg/s sent | publisher backlog max | publisher CPU | "
            "daemon CPU | readings | dropped | batches | mean batch (ms) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for delay, qos, r in rows:
        to_probe = _dist(r["delivery_ms"]).replace(" | ", " / ")
        to_alert = _dist(r["daemon_ms"]).replace(" | ", " / ")
        out.append(f"| {delay} | {qos} | {to_probe} | {to_alert} | "
                   f"{r['sent'] / r['seconds']:,.0f} | {r['max_backlog']:,} | {r['cpu']:.0%} | "
                   f"{r['daemon_cpu']:.0%} | {r['readings']:,.0f} | {r['dropped']:,.0f} | "
                   f"{r['batches']:,.0f} | {r['batch_ms']:.2f} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=10_000.0, help="messages per second")
    ap.add_argument("--seconds", type=float, default=62.0, help="publishing time per run")
    ap.add_argument("--channels", type=int, default=10_000, help="background channels")
    ap.add_argument("--connections", type=int, default=8,
                    help="publisher connections for the background stream")  # fmt: skip
    ap.add_argument("--probe-ms", type=float, default=100.0, help="time between probes")
    ap.add_argument("--delays", type=int, nargs="+", default=[100, 10],
                    help="batch.max_delay_ms values to run")  # fmt: skip
    ap.add_argument("--qos", type=int, nargs="+", choices=(0, 1), default=[1, 0])
    ap.add_argument("--target-ms", type=float, default=20.0, help="p99 target")
    ap.add_argument("--tcp-nodelay", action="store_true",
                    help="mosquitto's set_tcp_nodelay true (Nagle's algorithm off)")  # fmt: skip
    ap.add_argument("--publisher", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publisher:
        pub = publish(args.publisher, args.rate, args.seconds, args.channels, args.probe_ms,
                      args.qos[0], args.connections)  # fmt: skip
        print(json.dumps(asyncio.run(pub)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for delay in args.delays:
            for qos in args.qos:
                work = Path(folder) / f"d{delay}-q{qos}"
                r = run(work, args, delay, qos)
                rows.append((delay, qos, r))
                lat = r["latency_ms"]
                median = statistics.median(lat) if lat else float("nan")
                print(f"max_delay_ms {delay}, QoS {qos}: {len(lat)} samples, median "
                      f"{median:.1f} ms, {r['missing']} missing", file=sys.stderr)  # fmt: skip
    print(f"## Latency: publish -> open alert on MQTT at {args.rate:,.0f} msg/s\n")
    print(table(rows, args.target_ms))


if __name__ == "__main__":
    main()
