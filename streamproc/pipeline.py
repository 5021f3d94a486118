"""decode -> detect -> alerts -> sinks: one path for replay, the demo and the live daemon.

Sources push MQTT messages (``message``) or tidy readings (``readings``); the pipeline cuts
them into batches of ``batch.max_readings``, runs the detector, turns its events into alerts
and hands them, with the snapshots of every closed interval, to the sinks and listeners.

The Parquet files of the intervals a batch closes are handed to a writer thread
(``sinks.writer``) as one write and written while the next batches run. The caller's thread
keeps every counter: what a write took and which sinks failed is taken back from the writer
at the next ``flush`` (or ``drain``, which waits).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import NamedTuple

import numpy as np

from streamproc.alerts import Alert, AlertBook, Events
from streamproc.batch import Batch, BatchBuilder
from streamproc.coalesce import Coalescer
from streamproc.config import Settings
from streamproc.counters import Counters, Histogram
from streamproc.decode import Decoder
from streamproc.detect import ChannelRows, Detector, IntervalClosed, Output
from streamproc.registry import Registry
from streamproc.sinks.jsonl import AlertLog
from streamproc.sinks.parquet import AlertParquetWriter, File, SnapshotWriter, write_files
from streamproc.sinks.writer import FileWriter

log = logging.getLogger("streamproc")

AlertListener = Callable[[list[Alert]], None]
BatchObserver = Callable[[Batch], None]
# what a write to the writer thread took, and the sinks that failed
Written = tuple[float, list[tuple[str, OSError]]]
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IntervalFiles(NamedTuple):
    """What one interval writes: its snapshot rows (None: only alerts) and its alerts."""

    start_ms: int
    end_ms: int
    rows: ChannelRows | None
    alerts: list[Alert]


class Pipeline:
    def __init__(self, settings: Settings, out_dir: Path | None = None):
        self.settings = settings
        self.out_dir = Path(out_dir or settings.output.dir)
        self.registry = Registry(settings.channels)
        self.counters = Counters()
        self.builder = BatchBuilder()
        self.decoder = Decoder(settings, self.registry, self.counters, self.builder)
        self.coalescer = Coalescer(self.decoder)
        self.detector = Detector(settings, self.registry, self.counters)
        self.book = AlertBook(self.registry, settings.alerts)
        self.alert_log = AlertLog(self.out_dir / "alerts.jsonl")
        self.snapshots = SnapshotWriter(self.out_dir, self.registry)
        self.alert_files = AlertParquetWriter(self.out_dir)
        self.writer = FileWriter()
        self._writes: deque[Future[Written]] = deque()  # handed to the writer, not yet counted
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
        self.book.configure(settings.alerts)
        self.settings = settings
        self.max_readings = settings.batch.max_readings

    # -- input --------------------------------------------------------------------------
    def message(self, topic: str, payload: bytes, recv_ms: int) -> None:
        """One MQTT message; runs a batch when it is full."""
        self.coalescer.add(topic, payload, recv_ms)
        if len(self.builder.idx) >= self.max_readings:  # no Python-level __len__ per message
            self.flush()

    def readings(self, batch: Batch) -> None:
        """Readings already resolved to channels (tidy feeds), in arrival order."""
        self.flush()
        for a in range(0, len(batch), self.max_readings):
            self.process(batch.slice(a, a + self.max_readings))

    def flush(self) -> None:
        """Run whatever the decoder has collected; count the file writes done meanwhile."""
        self.coalescer.flush()
        if len(self.builder):
            self.process(self.builder.take())
        self._count_writes()

    def drain(self) -> None:
        """Wait until every file handed to the writer is written (or failed, counted)."""
        self._count_writes(wait=True)

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
            step = self.detector.interval_ms
            start = self.unwritten_alerts[-1].ts_ms // step * step
            alerts = self._take_alerts(start + step)
            self._write([IntervalFiles(start, start + step, None, alerts)])
        self.drain()
        self.writer.close()
        self.alert_log.close()

    def suspend(self) -> None:
        """Stop without ending the input (the daemon's shutdown; a checkpoint follows): run
        the last batch and write the open intervals as they stand. They stay open in the
        state, so after a restart their complete snapshots replace these files."""
        self.flush()
        self._write([self._interval(closed, keep=True) for closed in self.detector.peek()])
        self.drain()
        self.alert_log.close()

    # -- output -------------------------------------------------------------------------
    def _route(self, outputs: list[Output]) -> None:
        intervals = []
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
                intervals.append(self._interval(out))
                self.intervals_written += 1
        self._write(intervals)
        self._safely("alerts.jsonl", self.alert_log.flush)

    def _interval(self, closed: IntervalClosed, keep: bool = False) -> IntervalFiles:
        """A closed interval with its alerts, taken off the unwritten ones unless ``keep``."""
        if keep:  # a peek: the alerts stay for the interval's real close
            start, end = closed.start_ms, closed.end_ms
            alerts = [a for a in self.unwritten_alerts if start <= a.ts_ms < end]
        else:  # with any earlier ones left
            alerts = self._take_alerts(closed.end_ms)
        return IntervalFiles(closed.start_ms, closed.end_ms, closed.rows, alerts)

    def _take_alerts(self, end_ms: int) -> list[Alert]:
        mine = [a for a in self.unwritten_alerts if a.ts_ms < end_ms]
        self.unwritten_alerts = [a for a in self.unwritten_alerts if a.ts_ms >= end_ms]
        return mine

    def _write(self, intervals: list[IntervalFiles]) -> None:
        """Hand the intervals' snapshot and alert files to the writer thread, as one write."""
        if intervals and self.settings.snapshots.enabled:
            self._count_writes()
            self._writes.append(self.writer.submit(self._write_files, intervals))

    def _write_files(self, intervals: list[IntervalFiles]) -> Written:
        """On the writer thread: all the files at once (``write_files``); a sink counts one
        failure per interval whose files it could not all write. The rows and alerts are the
        writer's own; of the registry, which the loop keeps growing meanwhile, it reads only
        channels already registered, which never change."""
        start = time.perf_counter()
        files: list[File] = []
        owners: list[tuple[int, str]] = []  # (interval, sink) of each file
        for i, iv in enumerate(intervals):
            rows = iv.rows
            snapshots = [] if rows is None else self.snapshots.files(iv.start_ms, iv.end_ms, rows)
            alerts = self.alert_files.files(iv.start_ms, iv.alerts)
            files += snapshots + alerts
            owners += [(i, "snapshots")] * len(snapshots) + [(i, "alert_snapshots")] * len(alerts)
        failed: dict[tuple[int, str], OSError] = {}
        for owner, exc in zip(owners, write_files(files), strict=True):
            if exc is not None:
                failed.setdefault(owner, exc)
        return time.perf_counter() - start, [(sink, exc) for (_, sink), exc in failed.items()]

    def _count_writes(self, wait: bool = False) -> None:
        """Count the writes done (all of them, waiting, if ``wait``), in the order handed over."""
        while self._writes and (wait or self._writes[0].done()):
            seconds, failed = self._writes.popleft().result()
            self.snapshot_seconds.observe(seconds)
            for sink, exc in failed:
                self._failed(sink, exc)

    def _safely(self, sink: str, fn: Callable[..., object], *args: object) -> None:
        """A sink that fails is counted and logged; the pipeline and the other sinks go on."""
        try:
            fn(*args)
        except OSError as exc:
            self._failed(sink, exc)

    def _failed(self, sink: str, exc: OSError) -> None:
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
