"""The daemon as a real process, for integration tests: start, wait until ready, scrape, stop."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import gmqtt
import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families

from streamproc.config import MqttSettings, SnapshotSettings, load
from streamproc.pipeline import Pipeline
from streamproc.publisher import publish
from streamproc.sources import simulate as sim
from tests.mosquitto import HOST, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class DaemonProcess:
    """``streamproc run`` (or any streamproc command) in a subprocess, logging to a file."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str] | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_port = free_port()
        self.args = [*args, "--metrics", f"127.0.0.1:{self.metrics_port}"]
        self.env = {**os.environ, **(env or {})}
        self.log_path = workdir / f"daemon-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamproc.cli", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def health(self) -> tuple[int, str] | None:
        try:
            return self.get("/healthz")
        except OSError:
            return None

    def wait_until(self, what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_until("/healthz ready", lambda: (self.health() or (0, ""))[0] == 200, timeout)

    def samples(self) -> Samples:
        status, text = self.get("/metrics")
        assert status == 200
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples().items() if n == name and want <= set(ls))

    def wait_messages(self, n: int, timeout: float = 60.0) -> None:
        self.wait_until(
            f"{n} messages", lambda: self.value("streamproc_messages_total") >= n, timeout
        )

    def wait_readings(self, n: int, timeout: float = 60.0) -> None:
        """Until ``n`` readings went through the detectors (a batch waits up to max_delay_ms)."""
        self.wait_until(
            f"{n} readings", lambda: self.value("streamproc_readings_total") >= n, timeout
        )

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM; the exit code (raises if the daemon takes longer than ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def rss(self) -> int:
        """Resident memory of the process in bytes (Linux /proc)."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kb) * 1024


@dataclass(frozen=True)
class Feed:
    messages: list[tuple[str, bytes]]
    path: Path
    readings: int  # what a replay of the whole feed processes
    alert_lines: list[str]  # and the alerts.jsonl it writes
    replay_dir: Path  # and its output folder
    arrival_ms: list[int]  # each message's receive time in the feed

    def readings_of(self, k: int) -> int:
        """What a replay of the first ``k`` messages processes (nothing written)."""
        return self._prefix(k).counters.readings

    def watermark_of(self, k: int) -> int:
        """The event-time watermark (ms) after a replay of the first ``k`` messages."""
        return self._prefix(k).detector.wm

    def _prefix(self, k: int) -> Pipeline:
        settings = dataclasses.replace(load(None), snapshots=SnapshotSettings(enabled=False))
        pipeline = Pipeline(settings, self.replay_dir / "prefix")
        for ts, (topic, payload) in zip(self.arrival_ms[:k], self.messages[:k], strict=True):
            pipeline.message(topic, payload, ts)
        pipeline.flush()
        pipeline.writer.close()
        pipeline.alert_log.close()
        return pipeline


def make_feed(folder: Path, channels: int = 300, duration_s: int = 43_200, seed: int = 3) -> Feed:
    """A simulated feed as MQTT messages, and what a replay of it gives (the defaults: half a
    day of 300 channels, about 23k messages and 40 alert events)."""
    path, _ = sim.write(sim.SimConfig(channels=channels, duration_s=duration_s, seed=seed), folder)
    rows = list(sim.iter_messages(pq.read_table(path)))
    replay_dir = folder / "replay"
    pipeline = Pipeline(load(None), replay_dir)
    for ts, topic, payload in rows:
        pipeline.message(topic, payload, ts)
    pipeline.close()
    lines = (replay_dir / "alerts.jsonl").read_text().splitlines()
    messages = [(topic, payload) for _, topic, payload in rows]
    arrivals = [ts for ts, _, _ in rows]
    return Feed(messages, path, pipeline.counters.readings, lines, replay_dir, arrivals)


def snapshot_counts(out: Path) -> Counter[int]:
    """Sum of the snapshot ``count`` column per interval start (epoch ms) under ``out``."""
    counts: Counter[int] = Counter()
    for f in (out / "snapshots").rglob("*.parquet"):
        t = pq.read_table(f, columns=["interval_start", "count"], partitioning=None)
        for start, n in zip(
            t.column(0).cast("int64").to_pylist(), t.column(1).to_pylist(), strict=True
        ):
            counts[start] += n
    return counts


def _packet(kind: int, body: bytes) -> bytes:
    size, head = len(body), bytearray([kind])
    while True:
        size, digit = divmod(size, 128)
        head.append(digit | 0x80 if size else digit)
        if not size:
            return bytes(head) + body


def _str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def raw_publish_qos0(port: int, messages: list[tuple[str, bytes]]) -> int:
    """Write MQTT 3.1.1 QoS 0 PUBLISH packets to the broker as fast as the socket takes them
    (no flow control, no acknowledgements); the number written."""
    connect = _packet(0x10, _str(b"MQTT") + bytes([4, 2]) + (60).to_bytes(2, "big") + _str(b""))
    blob = b"".join(_packet(0x30, _str(t.encode()) + p) for t, p in messages)
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(connect)
        connack = sock.recv(4)
        assert connack[:2] == b"\x20\x02" and connack[3] == 0, connack
        sock.sendall(blob)
        sock.sendall(b"\xe0\x00")  # DISCONNECT: the broker reads everything before it
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the broker closes once it has read the DISCONNECT
    return len(messages)


def publish_all(
    url: str, messages: Iterable[tuple[str, bytes]], qos: int = 1, **mqtt: object
) -> int:
    """Publish with the project's own publisher (a clean session); the count acknowledged."""
    m = MqttSettings(broker=url, client_id="", clean_session=True, **mqtt)  # type: ignore[arg-type]
    return asyncio.run(publish(m, messages, None, qos))


async def _collect(
    port: int, client_id: str, topics: list[str], quiet_s: float, protocol: str
) -> list[tuple[str, bytes, bool]]:
    got: list[tuple[str, bytes, bool]] = []
    last = asyncio.Event()

    def on_message(client: object, topic: str, payload: bytes, qos: int, props: dict) -> int:
        got.append((topic, payload, bool(props.get("retain"))))
        last.set()
        return 0

    client = gmqtt.Client(client_id, clean_session=False, session_expiry_interval=600)
    client.on_message = on_message
    version = gmqtt.constants.MQTTv50 if protocol == "5" else gmqtt.constants.MQTTv311
    await client.connect("127.0.0.1", port, version=version)
    client.subscribe([gmqtt.Subscription(t, qos=1) for t in topics])
    while True:  # until nothing more arrives for quiet_s
        last.clear()
        try:
            await asyncio.wait_for(last.wait(), quiet_s)
        except TimeoutError:
            break
    await client.disconnect()
    return got


def collect(
    port: int, client_id: str, topics: list[str], quiet_s: float = 1.0, protocol: str = "5"
) -> list[tuple[str, bytes, bool]]:
    """Connect with a persistent session, take what is queued or retained, disconnect.
    Calling it once before a scenario creates the session the broker then queues for."""
    return asyncio.run(_collect(port, client_id, topics, quiet_s, protocol))
