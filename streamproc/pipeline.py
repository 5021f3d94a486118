"""decode -> detect -> alerts -> sinks: one path for replay, the demo and the live daemon.

Sources push MQTT messages (``message``) or tidy readings (``readings``); the pipeline cuts
them into batches of ``batch.max_readings``, runs the detector, turns its events into alerts
and hands them, with the snapshots of every closed interval, to the sinks and listeners.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from streamproc.alerts import Alert, AlertBook, Events
from streamproc.batch import Batch, BatchBuilder
from streamproc.config import Settings
from streamproc.counters import Counters, Histogram
from streamproc.decode import Decoder
from streamproc.detect import Detector, IntervalClosed, Output
from streamproc.registry import Registry
from streamproc.sinks.jsonl import AlertLog
from streamproc.sinks.parquet import AlertParquetWriter, SnapshotWriter

log = logging.getLogger("streamproc")

AlertListener = Callable[[list[Alert]], None]
BatchObserver = Callable[[Batch], None]
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Pipeline:
    def __init__(self, settings: Settings, out_dir: Path | None = None):
        self.settings = settings
        self.out_dir = Path(out_dir or settings.output.dir)
        self.registry = Registry(settings.channels)
        self.counters = Counters()
        self.builder = BatchBuilder()
        self.decoder = Decoder(settings, self.registry, self.counters, self.builder)
        self.detector = Detector(settings, self.registry, self.counters)
        self.book = AlertBook(self.registry)
        self.alert_log = AlertLog(self.out_dir / "alerts.jsonl")
        self.snapshots = SnapshotWriter(self.out_dir, self.registry)
        self.alert_files = AlertParquetWriter(self.out_dir)
        self.listeners: list[AlertListener] = []
        self.batch_observers: list[BatchObserver] = []
        self.batch_seconds = Histogram(SECONDS)
        self.snapshot_seconds = Histogram(SECONDS)
        self.alerts_by_rule: Counter[str] = Counter()
        self.sink_errors: Counter[str] = Counter()
        self.intervals_written = 0
        self.unwritten_alerts: list[Alert] = []
        self.max_readings = settings.batch.max_readings

    def reload(self, settings: Settings) -> None:
        """New rule, threshold, alert and batch settings; state and open alerts are kept."""
        self.detector.reload(settings)
        self.settings = settings
        self.max_readings = settings.batch.max_readings

    # -- input --------------------------------------------------------------------------
    def message(self, topic: str, payload: bytes, recv_ms: int) -> None:
        """One MQTT message; runs a batch when it is full."""
        self.decoder.decode(topic, payload, recv_ms)
        if len(self.builder) >= self.max_readings:
            self.flush()

    def readings(self, batch: Batch) -> None:
        """Readings already resolved to channels (tidy feeds), in arrival order."""
        self.flush()
        for a in range(0, len(batch), self.max_readings):
            self.process(batch.slice(a, a + self.max_readings))

    def flush(self) -> None:
        """Run whatever the decoder has collected."""
        if len(self.builder):
            self.process(self.builder.take())

    def process(self, batch: Batch) -> np.ndarray:
        start = time.perf_counter()
        outputs, scores = self.detector.process(batch)
        self._route(outputs)
        self.batch_seconds.observe(time.perf_counter() - start)
        for observe in self.batch_observers:
            observe(batch)
        return scores

    def close(self) -> None:
        """End of input: run the last batch, write the open intervals, close the files."""
        self.flush()
        self._route(self.detector.finish())
        if self.unwritten_alerts:  # alerts after the last reading's interval
            last = self.unwritten_alerts[-1].ts_ms
            step = self.detector.interval_ms
            self._write_alerts(last // step * step, last // step * step + step)
        self.alert_log.close()

    def suspend(self) -> None:
        """Stop without ending the input (the daemon's shutdown; a checkpoint follows): run
        the last batch and write the open intervals as they stand. They stay open in the
        state, so after a restart their complete snapshots replace these files."""
        self.flush()
        for closed in self.detector.peek():
            self._write_interval(closed, keep=True)
        self.alert_log.close()

    # -- output -------------------------------------------------------------------------
    def _route(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Events):
                alerts = self.book.apply(out)
                for a in alerts:
                    if a.event == "open":
                        self.alerts_by_rule[a.rule] += 1
                self.unwritten_alerts += alerts
                self._safely("alerts.jsonl", self.alert_log.add, alerts)
                for listener in self.listeners:
                    listener(alerts)
            elif isinstance(out, IntervalClosed):
                self._write_interval(out)
        self._safely("alerts.jsonl", self.alert_log.flush)

    def _write_interval(self, closed: IntervalClosed, keep: bool = False) -> None:
        start = time.perf_counter()
        if self.settings.snapshots.enabled:
            self._safely("snapshots", self.snapshots.write_interval,
                         closed.start_ms, closed.end_ms, closed.rows)  # fmt: skip
        self._write_alerts(closed.start_ms, closed.end_ms, keep)
        self.snapshot_seconds.observe(time.perf_counter() - start)
        self.intervals_written += not keep

    def _write_alerts(self, start_ms: int, end_ms: int, keep: bool = False) -> None:
        if keep:  # a peek: the alerts stay for the interval's real close
            mine = [a for a in self.unwritten_alerts if start_ms <= a.ts_ms < end_ms]
        else:
            mine = [a for a in self.unwritten_alerts if a.ts_ms < end_ms]
            self.unwritten_alerts = [a for a in self.unwritten_alerts if a.ts_ms >= end_ms]
        if mine and self.settings.snapshots.enabled:
            self._safely("alert_snapshots", self.alert_files.write_interval, start_ms, end_ms, mine)

    def _safely(self, sink: str, fn: Callable[..., object], *args: object) -> None:
        """A sink that fails is counted and logged; the pipeline and the other sinks go on."""
        try:
            fn(*args)
        except OSError as exc:
            self.sink_errors[sink] += 1
            self.counters.warn(f"sink {sink}", f"write failed: {exc}")

    def summary(self) -> dict[str, object]:
        return {
            "readings": self.counters.readings,
            "channels": self.registry.n,
            "alerts_opened": dict(sorted(self.alerts_by_rule.items())),
            "alerts_open_now": len(self.book.open),
            "messages": dict(sorted(self.counters.messages.items())),
            "dropped": dict(sorted(self.counters.dropped.items())),
            "intervals_written": self.intervals_written,
            "sink_errors": dict(self.sink_errors),
        }
