"""Every Prometheus metric of the daemon, read from the pipeline at scrape time, and a small
HTTP endpoint for ``/metrics`` and ``/healthz`` served from the event loop.

Serving from the event loop means a scrape sees the counters between two batches, never in
the middle of one, and needs no locks. No metric has a channel id as a label value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from streamproc import __version__
from streamproc.alerts import Alert
from streamproc.batch import Batch
from streamproc.counters import Histogram
from streamproc.kernels.rules import R_DROPOUT, ST_OPEN
from streamproc.pipeline import SECONDS, Pipeline
from streamproc.sources.mqtt import MqttConnection

log = logging.getLogger("streamproc")
LAG_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# name, type, help: the README's metric table is checked against this list
METRICS = (
    ("streamproc_readings_total", "counter", "Readings that reached the detectors"),
    ("streamproc_messages_total", "counter", "MQTT messages by result"),
    ("streamproc_dropped_total", "counter", "Decoded readings dropped, by reason"),
    ("streamproc_gateway_scanned_total", "counter", "Gateway messages the compiled scan decoded"),
    ("streamproc_coalesced_total", "counter", "Small messages the compiled scan decoded together"),
    ("streamproc_alerts_total", "counter", "Alerts opened, by sensor kind, rule and severity"),
    ("streamproc_alerts_open", "gauge", "Alerts open now"),
    ("streamproc_channels", "gauge", "Channels by sensor kind and state (active, stale)"),
    ("streamproc_batch_seconds", "histogram", "Time to run one batch through the pipeline"),
    ("streamproc_event_lag_seconds", "histogram", "Event time of a reading to its processing"),
    ("streamproc_mqtt_connected", "gauge", "1 while connected to the broker"),
    ("streamproc_mqtt_reconnects_total", "counter", "Connections made after the first"),
    ("streamproc_mqtt_duplicates_total", "counter", "Redelivered QoS 1 messages already taken"),
    ("streamproc_alerts_published_total", "counter", "Alert messages handed to the broker"),
    ("streamproc_publish_errors_total", "counter", "Alert messages that could not be sent"),
    ("streamproc_snapshot_seconds", "histogram", "Time to write a batch's interval files"),
    ("streamproc_sink_errors_total", "counter", "Failed writes by sink"),
    ("streamproc_checkpoint_seconds", "histogram", "Time to write one checkpoint"),
    ("streamproc_checkpoint_age_seconds", "gauge", "Seconds since the last checkpoint"),
    ("streamproc_journal_commit_seconds", "histogram", "Time to write and fsync one commit"),
    ("streamproc_journal_bytes_total", "counter", "Bytes written to the journal"),
    ("streamproc_journal_replayed_total", "counter", "Messages read back from the journal"),
    ("streamproc_reloads_total", "counter", "SIGHUP reloads by result (applied, refused)"),
    ("streamproc_watermark_seconds", "gauge", "Event-time watermark (Unix seconds)"),
    ("streamproc_ready", "gauge", "1 once connected, subscribed and warmed up"),
    ("streamproc_build_info", "gauge", "Version of the running streamproc"),
)
HELP = {name: text for name, _, text in METRICS}


class Metrics:
    """Collects the daemon's metrics; ``render()`` gives the Prometheus text format."""

    def __init__(self, pipeline: Pipeline, connection: MqttConnection | None = None):
        self.pipeline = pipeline
        self.connection = connection
        self.alerts_opened: Counter[tuple[str, str, str]] = Counter()
        self.event_lag = Histogram(LAG_SECONDS)
        self.checkpoint_seconds = Histogram(SECONDS)
        self.checkpoint_at: float | None = None  # time.monotonic() of the last checkpoint
        self.journal_commit_seconds = Histogram(SECONDS)
        self.journal_bytes = 0
        self.journal_replayed = 0
        self.reloads: Counter[str] = Counter()
        self.health: Callable[[], str] = lambda: "starting"  # "" once ready, else the reason
        pipeline.listeners.append(self._on_alerts)
        pipeline.batch_observers.append(self._on_batch)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def _on_alerts(self, alerts: list[Alert]) -> None:
        for a in alerts:
            if a.event == "open":
                self.alerts_opened[(a.kind, a.rule, a.severity)] += 1

    def _on_batch(self, batch: Batch) -> None:
        self.event_lag.observe_many(time.time() - batch.ts_ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        p = self.pipeline
        c = p.counters
        yield _counter("streamproc_readings_total", c.readings)
        yield _counter("streamproc_messages_total", c.messages, ["result"])
        yield _counter("streamproc_dropped_total", c.dropped, ["reason"])
        yield _counter("streamproc_gateway_scanned_total", p.decoder.gateway.decided)
        yield _counter("streamproc_coalesced_total", p.coalescer.coalesced)
        yield _counter("streamproc_alerts_total", self.alerts_opened, ["kind", "rule", "severity"])
        yield _gauge("streamproc_alerts_open", len(p.book.open))
        yield self._channels()
        yield _histogram("streamproc_batch_seconds", p.batch_seconds)
        yield _histogram("streamproc_event_lag_seconds", self.event_lag)
        conn = self.connection
        yield _gauge("streamproc_mqtt_connected", int(conn is not None and conn.connected))
        yield _counter("streamproc_mqtt_reconnects_total", conn.reconnects if conn else 0)
        yield _counter("streamproc_mqtt_duplicates_total", conn.duplicates if conn else 0)
        yield _counter("streamproc_alerts_published_total", conn.published if conn else 0)
        yield _counter("streamproc_publish_errors_total", conn.publish_errors if conn else 0)
        yield _histogram("streamproc_snapshot_seconds", p.snapshot_seconds)
        yield _counter("streamproc_sink_errors_total", p.sink_errors, ["sink"])
        yield _histogram("streamproc_checkpoint_seconds", self.checkpoint_seconds)
        if self.checkpoint_at is not None:
            age = time.monotonic() - self.checkpoint_at
            yield _gauge("streamproc_checkpoint_age_seconds", age)
        yield _histogram("streamproc_journal_commit_seconds", self.journal_commit_seconds)
        yield _counter("streamproc_journal_bytes_total", self.journal_bytes)
        yield _counter("streamproc_journal_replayed_total", self.journal_replayed)
        yield _counter("streamproc_reloads_total", self.reloads, ["result"])
        if p.detector.open_k is not None:
            yield _gauge("streamproc_watermark_seconds", p.detector.wm / 1000.0)
        yield _gauge("streamproc_ready", int(not self.health()))
        info = GaugeMetricFamily("streamproc_build_info", HELP["streamproc_build_info"],
                                 labels=["version"])  # fmt: skip
        info.add_metric([__version__], 1)
        yield info

    def _channels(self) -> Metric:
        """Stale: the dropout alert is open; active: every other channel seen so far
        (channels registered since the last batch have no detector state yet: active)."""
        reg = self.pipeline.registry
        n = reg.n
        kinds = reg.ch_kind[:n]
        stale = np.zeros(n, bool)
        known = self.pipeline.detector.state["st"][:n, R_DROPOUT]
        stale[: len(known)] = known == ST_OPEN
        n_kinds = len(reg.kinds)
        per_state = {
            "active": np.bincount(kinds[~stale], minlength=n_kinds),
            "stale": np.bincount(kinds[stale], minlength=n_kinds),
        }
        g = GaugeMetricFamily("streamproc_channels", HELP["streamproc_channels"],
                              labels=["kind", "state"])  # fmt: skip
        for state, counts in per_state.items():
            for k, kind in enumerate(reg.kinds.names):
                g.add_metric([kind, state], float(counts[k]))
        return g


def _counter(name: str, value: object, labels: list[str] | None = None) -> Metric:
    base = name.removesuffix("_total")
    if labels is None:
        return CounterMetricFamily(base, HELP[name], value=float(value))  # type: ignore[arg-type]
    m = CounterMetricFamily(base, HELP[name], labels=labels)
    for key, v in sorted(value.items()):  # type: ignore[attr-defined]
        m.add_metric(list(key) if isinstance(key, tuple) else [key], float(v))
    return m


def _gauge(name: str, value: float) -> Metric:
    return GaugeMetricFamily(name, HELP[name], value=float(value))


def _histogram(name: str, h: Histogram) -> Metric:
    return HistogramMetricFamily(name, HELP[name], buckets=h.buckets(), sum_value=h.sum)


async def serve(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """Serve ``GET /metrics`` and ``GET /healthz`` (200 "ready", or 503 and the reason)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = [*head.split(b"\r\n", 1)[0].decode("latin-1").split(" "), "", ""]
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                try:
                    status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, metrics.render()
                except Exception:  # a bug: the scrape fails visibly, the daemon goes on
                    log.exception("rendering /metrics failed")
                    status, ctype, body = "500 Internal Server Error", "text/plain", b"error\n"
            elif path == "/healthz":
                reason = metrics.health()
                status = "503 Service Unavailable" if reason else "200 OK"
                ctype, body = "text/plain", f"{reason or 'ready'}\n".encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + (body if method == "GET" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):  # fmt: skip
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=16_384)
