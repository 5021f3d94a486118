"""MQTT subscriber clients side by side: gmqtt, paho-mqtt, aiomqtt and mosquitto_sub.

One run starts its own mosquitto (tests.mosquitto.Broker) and, for each client and QoS, a
subscriber in its own process on ``city/+/air/#``; then a raw-socket MQTT 3.1.1 publisher in
this process writes N pre-encoded PUBLISH packets in large chunks. The subscriber counts what
it receives and reports its rate from first to last message and the CPU it used meanwhile.

    python benchmarks/mqtt_clients.py [--messages N] [--qos 0 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.mosquitto import Broker, find_binary  # noqa: E402

FILTER = "city/+/air/#"
CLIENTS = ("gmqtt", "paho", "aiomqtt", "mosquitto_sub")
FIRST_WAIT = 30.0  # s a subscriber waits for its first message
IDLE_WAIT = 5.0  # s without a message after which a subscriber gives up
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## MQTT subscriber clients, side by side"


# --- raw MQTT 3.1.1 publisher -------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _string(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def encode(messages: Iterable[tuple[str, bytes]], qos: int) -> list[bytes]:
    """PUBLISH packets of (topic, payload) pairs."""
    packets = []
    for i, (topic, payload) in enumerate(messages):
        pid = struct.pack("!H", i % 65535 + 1) if qos else b""
        packets.append(_packet(0x30 | qos << 1, _string(topic) + pid + payload))
    return packets


def encode_messages(n: int, qos: int) -> list[bytes]:
    """N PUBLISH packets of a small JSON reading to city/g1/air/dev{i % 1000}/pm25."""
    return encode(
        (
            (
                f"city/g1/air/dev{i % 1000}/pm25",
                b'{"ts": %d, "value": 12.5}' % (1_700_000_000_000 + i),
            )
            for i in range(n)
        ),
        qos,
    )


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def publish(port: int, packets: list[bytes], qos: int, chunk: int = 256 * 1024) -> float:
    """Send the packets; for QoS 1 wait for every PUBACK. Seconds taken."""
    header = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60)  # 3.1.1, clean session
    connect = _packet(0x10, header + _string(f"bench-pub-{os.getpid()}"))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(connect)
        if _read_exact(sock, 4) != b"\x20\x02\x00\x00":
            raise ConnectionError("publisher refused")
        acks = 0

        def read_acks() -> None:  # each PUBACK is 4 bytes: 0x40 0x02 id id
            nonlocal acks
            left = 4 * len(packets)
            while left:
                data = sock.recv(min(left, 1 << 20))
                if not data:
                    return
                left -= len(data)
                acks = (4 * len(packets) - left) // 4

        reader = threading.Thread(target=read_acks, daemon=True)
        if qos:
            reader.start()
        start = time.monotonic()
        buf: list[bytes] = []
        size = 0
        for p in packets:
            buf.append(p)
            size += len(p)
            if size >= chunk:
                sock.sendall(b"".join(buf))
                buf, size = [], 0
        sock.sendall(b"".join(buf))
        if qos:
            reader.join(120)
            if acks != len(packets):
                raise RuntimeError(f"only {acks} of {len(packets)} PUBACKs")
        elapsed = time.monotonic() - start
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return elapsed


# --- subscribers (each runs in a child process) -------------------------------------------------


class Counter:
    """Counts messages and notes the times of the first and the last."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.started = self.cpu = 0.0
        self.first = 0.0
        self.last = 0.0

    def hit(self) -> bool:
        """Count one message; True when all have arrived."""
        now = time.monotonic()
        if not self.count:
            self.first = now
        self.last = now
        self.count += 1
        return self.count >= self.expected

    def waited_too_long(self) -> bool:
        limit = IDLE_WAIT if self.count else FIRST_WAIT
        return time.monotonic() - (self.last or self.started) > limit

    def start(self) -> None:
        self.started = time.monotonic()
        self.cpu = _cpu()
        print("READY", flush=True)

    def report(self) -> None:
        cpu = _cpu() - self.cpu
        print(json.dumps({"count": self.count, "first": self.first, "last": self.last, "cpu": cpu}))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sub_gmqtt(port: int, qos: int, counter: Counter) -> None:
    from gmqtt import Client
    from gmqtt.mqtt.constants import MQTTv311

    done = asyncio.Event()
    subscribed = asyncio.Event()

    def on_message(client: Client, topic: str, payload: bytes, qos: int, props: object) -> int:
        if counter.hit():
            done.set()
        return 0

    client = Client(f"bench-gmqtt-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    await client.connect("127.0.0.1", port, version=MQTTv311)
    client.subscribe(FILTER, qos=qos)
    await subscribed.wait()
    counter.start()
    while not done.is_set() and not counter.waited_too_long():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.5)
    await client.disconnect()


def sub_paho(port: int, qos: int, counter: Counter) -> None:
    import paho.mqtt.client as mqtt

    done = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-paho-{os.getpid()}",
        protocol=mqtt.MQTTv311,
    )

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if counter.hit():
            done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe(FILTER, qos=qos)
    client.loop_start()
    subscribed.wait(10)
    counter.start()
    while not done.wait(0.5) and not counter.waited_too_long():
        pass
    client.disconnect()
    client.loop_stop()


async def sub_aiomqtt(port: int, qos: int, counter: Counter) -> None:
    import aiomqtt

    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=f"bench-aiomqtt-{os.getpid()}",
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        await client.subscribe(FILTER, qos=qos)
        counter.start()
        messages = client.messages
        while not counter.waited_too_long():
            try:
                await asyncio.wait_for(anext(messages), 0.5)
            except TimeoutError:
                continue
            if counter.hit():
                break


def run_subscriber(client: str, port: int, qos: int, expected: int) -> None:
    """Child process: subscribe, print READY, count messages, print a JSON result."""
    counter = Counter(expected)
    if client == "gmqtt":
        asyncio.run(sub_gmqtt(port, qos, counter))
    elif client == "paho":
        sub_paho(port, qos, counter)
    elif client == "aiomqtt":
        asyncio.run(sub_aiomqtt(port, qos, counter))
    else:
        raise SystemExit(f"unknown client {client}")
    counter.report()


# --- driver -------------------------------------------------------------------------------------


@dataclass
class Result:
    client: str
    qos: int
    sent: int
    received: int
    seconds: float  # first to last message at the subscriber
    cpu: float  # subscriber CPU seconds while receiving
    publish_seconds: float

    @property
    def rate(self) -> float:
        return (self.received - 1) / self.seconds if self.seconds > 0 else float("nan")


def _wait4(proc: subprocess.Popen[str], timeout: float) -> float:
    """Reap `proc` (killing it after `timeout`); its CPU seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # not proc.poll(): it would reap the process first
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return float("nan")


def bench_python(client: str, port: int, qos: int, packets: list[bytes]) -> Result:
    args = [sys.executable, __file__, "--subscriber", client]
    args += ["--port", str(port), "--qos", str(qos), "--messages", str(len(packets))]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            raise RuntimeError(f"{client} subscriber did not start")
        publish_seconds = publish(port, packets, qos)
        report = json.loads(proc.stdout.readline())
        proc.wait(30)
    return Result(
        client,
        qos,
        len(packets),
        report["count"],
        report["last"] - report["first"],
        report["cpu"],
        publish_seconds,
    )


def bench_mosquitto_sub(port: int, qos: int, packets: list[bytes], workdir: Path) -> Result:
    binary = find_binary("mosquitto_sub")
    if binary is None:
        raise FileNotFoundError("mosquitto_sub")
    out_path = workdir / f"mosquitto_sub-q{qos}.txt"
    args = [binary, "-h", "127.0.0.1", "-p", str(port), "-t", FILTER, "-q", str(qos)]
    args += ["-C", str(len(packets)), "-F", "%U", "-i", f"bench-c-{os.getpid()}"]
    with out_path.open("w") as out, subprocess.Popen(args, stdout=out, text=True) as proc:
        time.sleep(1.0)  # no readiness signal: connect + subscribe take a few ms
        publish_seconds = publish(port, packets, qos)
        cpu = _wait4(proc, 60 + len(packets) / 10_000)
    lines = out_path.read_text().split()
    seconds = float(lines[-1]) - float(lines[0]) if lines else 0.0
    return Result("mosquitto_sub", qos, len(packets), len(lines), seconds, cpu, publish_seconds)


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def versions() -> str:
    mosq = subprocess.run(
        [find_binary("mosquitto") or "mosquitto", "-h"], capture_output=True, text=True
    ).stdout.split("\n", 1)[0]
    libs = ", ".join(f"{name} {version(name)}" for name in ("gmqtt", "paho-mqtt", "aiomqtt"))
    return f"{mosq.strip().replace(' version', '')}; {libs}"


def table(results: list[Result]) -> str:
    rows = [
        "| client | QoS | sent | received | msg/s received | CPU µs/msg | publisher msg/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.client} | {r.qos} | {r.sent:,} | {r.received:,} | {r.rate:,.0f} "
            f"| {1e6 * r.cpu / max(r.received, 1):.1f} | {r.sent / r.publish_seconds:,.0f} |"
        )
    return "\n".join(rows)


def summary(results: list[Result]) -> str:
    """One sentence per QoS: each client's CPU per message relative to gmqtt's."""
    lines = []
    for qos in sorted({r.qos for r in results}):
        cost = {r.client: r.cpu / max(r.received, 1) for r in results if r.qos == qos}
        if "gmqtt" not in cost:
            continue
        others = ", ".join(
            f"{name} {c / cost['gmqtt']:.1f}x" for name, c in cost.items() if name != "gmqtt"
        )
        lines.append(f"QoS {qos}: CPU per message relative to gmqtt: {others}.")
    return "\n".join(lines)


def record(results: list[Result], command: str) -> None:
    """Append a dated section to benchmarks/RESULTS.md."""
    text = f"""
{SECTION}

Measured {dt.date.today().isoformat()} on {machine()}.
{versions()}.

```sh
{command}
```

{table(results)}

{summary(results)}

Each subscriber runs in its own process, MQTT 3.1.1, clean session, on `{FILTER}`, and only
counts messages (no decoding). The publisher is a raw socket in the driver process writing
pre-encoded PUBLISH packets (`{{"ts": ..., "value": 12.5}}` to 1,000 topics) in 256 KiB chunks;
"publisher msg/s" runs to the last byte written (QoS 0) or the last PUBACK (QoS 1). "msg/s
received" runs from the subscriber's first to its last message; CPU is the subscriber's user +
system time from its SUBACK to its last message (for mosquitto_sub, the whole process, which
also writes a line per message). Where a client's rate is close to the publisher's, the broker
was the limit, not the client: CPU per message is then the figure to compare. The broker is
the test harness's mosquitto (unlimited queues, so it buffers for a slow subscriber instead of
dropping QoS 0; QoS 1 deliveries are limited by its default of 20 in flight per client).
Broker, publisher and subscriber share the cores, so absolute rates are noisy; compare within
one run.

These figures matter because the daemon's ingest is one asyncio process: the MQTT client's
per-message cost comes out of the same core that decodes and runs the kernels.
"""
    with RESULTS.open("a") as f:
        f.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages", type=int, help="messages per run (default 200k QoS 0, 100k QoS 1)"
    )
    parser.add_argument("--qos", type=int, nargs="+", choices=(0, 1), default=[0, 1])
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"append the table to {RESULTS.relative_to(ROOT)}",
    )
    parser.add_argument("--subscriber", choices=CLIENTS[:3], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        run_subscriber(args.subscriber, args.port, args.qos[0], args.messages)
        return

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="mqtt-bench-") as tmp, Broker(Path(tmp)) as broker:
        for qos in args.qos:
            n = args.messages or (200_000 if qos == 0 else 100_000)
            packets = encode_messages(n, qos)
            for client in args.clients:
                if client == "mosquitto_sub":
                    result = bench_mosquitto_sub(broker.port, qos, packets, Path(tmp))
                else:
                    result = bench_python(client, broker.port, qos, packets)
                results.append(result)
                print(table([result]).splitlines()[-1], flush=True)
    print()
    print(table(results))
    if args.record:
        command = "python benchmarks/mqtt_clients.py " + shlex.join(sys.argv[1:])
        record(results, command.strip())
        print(f"\nappended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
