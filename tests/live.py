"""The daemon as a real process, for integration tests: start, wait until ready, scrape, stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import gmqtt
from prometheus_client.parser import text_string_to_metric_families

from streamproc.config import MqttSettings
from streamproc.publisher import publish
from tests.mosquitto import free_port

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


def publish_all(
    url: str, messages: Iterable[tuple[str, bytes]], qos: int = 1, **mqtt: object
) -> int:
    """Publish with the project's own publisher (a clean session); the count acknowledged."""
    m = MqttSettings(broker=url, client_id="", clean_session=True, **mqtt)  # type: ignore[arg-type]
    return asyncio.run(publish(m, messages, None, qos))


async def _collect(
    port: int, client_id: str, topics: list[str], quiet_s: float
) -> list[tuple[str, bytes, bool]]:
    got: list[tuple[str, bytes, bool]] = []
    last = asyncio.Event()

    def on_message(client: object, topic: str, payload: bytes, qos: int, props: dict) -> int:
        got.append((topic, payload, bool(props.get("retain"))))
        last.set()
        return 0

    client = gmqtt.Client(client_id, clean_session=False, session_expiry_interval=600)
    client.on_message = on_message
    await client.connect("127.0.0.1", port)
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
    port: int, client_id: str, topics: list[str], quiet_s: float = 1.0
) -> list[tuple[str, bytes, bool]]:
    """Connect with a persistent session, take what is queued or retained, disconnect.
    Calling it once before a scenario creates the session the broker then queues for."""
    return asyncio.run(_collect(port, client_id, topics, quiet_s))
