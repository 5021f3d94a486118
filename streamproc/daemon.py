"""The live daemon (``streamproc run``): MQTT in -> the pipeline -> alerts on MQTT, the alert
log and snapshots; metrics and health; checkpoints; signals.

One asyncio event loop does everything, in this order of events::

    message -> decode into the batch   (the gmqtt callback; runs a batch when it is full,
                                       or when the timer below is late)
    every batch.max_delay_ms           run whatever the batch holds
    every checkpoint.interval_s        save the state
    SIGHUP                             reload rules, thresholds, alerts and batch settings
    SIGTERM / SIGINT                   stop: last batch, disconnect, write the open
                                       intervals, save the state, exit 0

While a batch runs the loop reads nothing, so a slow batch holds messages back in the socket
and the broker (backpressure) instead of piling them up in memory. Snapshot files and the
periodic checkpoints are written by the pipeline's writer thread, in the order handed over.

With ``checkpoint.journal`` every message is appended to the journal as it arrives and a QoS 1
message is acknowledged only once the journal commit holding it is fsynced (commits run one
after another on the journal's thread; each takes everything that arrived during the one
before). A checkpoint starts a new journal segment and deletes the older ones once written;
a start restores the checkpoint and runs the newer segments through the pipeline again before
it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamproc import checkpoint, journal
from streamproc import counters as C
from streamproc.config import ConfigError, Settings, parse_host_port
from streamproc.detect import warm_up
from streamproc.metrics import Metrics, serve
from streamproc.pipeline import Pipeline
from streamproc.sinks.mqtt import AlertPublisher
from streamproc.sources.mqtt import MqttConnection
from streamproc.topics import TopicPattern

log = logging.getLogger("streamproc")
# what SIGHUP can change; anything else needs a restart
RELOADABLE = ("rules", "thresholds", "alerts", "batch")


def subscriptions(settings: Settings) -> tuple[str, ...]:
    """``mqtt.topics``, or the filters that cover ``input.patterns``."""
    if settings.mqtt.topics:
        return settings.mqtt.topics
    return tuple(dict.fromkeys(TopicPattern(p).subscription() for p in settings.input.patterns))


def checkpoint_path(settings: Settings, out_dir: Path) -> Path:
    return Path(settings.checkpoint.path or out_dir / "state" / "checkpoint.npz")


def journal_path(checkpoint_file: Path) -> Path:
    """The journal's folder: ``journal`` beside the checkpoint file."""
    return checkpoint_file.parent / "journal"


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about readiness or shutdown; no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(state.encode())


class Daemon:
    def __init__(self, settings: Settings, reload_settings: Callable[[], Settings] | None = None):
        """``reload_settings`` reads the configuration again for SIGHUP."""
        self.settings = settings
        self.reload_settings = reload_settings or (lambda: settings)
        self.out_dir = Path(settings.output.dir)
        self.checkpoint_path = checkpoint_path(settings, self.out_dir)
        self.pipeline = Pipeline(settings, self.out_dir)
        self.journal: journal.Journal | None = None
        if settings.checkpoint.enabled and settings.checkpoint.journal:
            self.journal = journal.Journal(journal_path(self.checkpoint_path))
        self.connection = MqttConnection(settings.mqtt, subscriptions(settings), self._on_message,
                                         hold_acks=self.journal is not None)  # fmt: skip
        self.connection.on_unacked = self._commit_soon
        self._committing = False
        self.metrics = Metrics(self.pipeline, self.connection)
        self.metrics.health = self.health
        if settings.mqtt.publish_alerts:
            publisher = AlertPublisher(self.connection, settings.mqtt.alert_prefix)
            self.pipeline.listeners.append(publisher)
        self.checkpointer = checkpoint.Checkpointer(self.pipeline, self.checkpoint_path)
        self._writing: asyncio.Future[int] | None = None
        self.warmed = False
        self.replaying = False
        self.stopping = False
        self.ready_sent = False
        self.batch_due = 0.0  # time.monotonic() by which the next batch runs

    def health(self) -> str:
        """Empty when ready, else why not."""
        if self.stopping:
            return "stopping"
        if not self.warmed:
            return "warming up the kernels"
        if self.replaying:
            return "replaying the journal"
        if not self.connection.connected:
            return f"not connected to {self.connection.describe()}"
        if not self.connection.subscribed:
            return "waiting for the broker to confirm the subscription"
        return ""

    def _on_message(self, topic: str, payload: bytes) -> None:
        recv_ms = time.time_ns() // 1_000_000
        if self.journal is not None:
            self.journal.append(topic, payload, recv_ms)
        self._process(topic, payload, recv_ms)
        if time.monotonic() >= self.batch_due:  # the loop is too busy with messages for the timer
            self._tick()

    def _process(self, topic: str, payload: bytes, recv_ms: int) -> None:
        try:
            self.pipeline.message(topic, payload, recv_ms)
        except Exception:  # a bug, not bad input: log it, count it, keep the daemon up
            log.exception("internal error while processing a message on %r", topic[:200])
            self.pipeline.counters.message(C.ERROR)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        server = None
        if self.settings.metrics.listen:
            host, port = parse_host_port(self.settings.metrics.listen)
            server = await serve(self.metrics, host, port)
            log.info("metrics and health on http://%s/metrics and /healthz",
                     self.settings.metrics.listen)  # fmt: skip
        await asyncio.to_thread(warm_up, self.settings)
        self.warmed = True
        gc.freeze()  # see _run_frozen
        try:
            await self._run_frozen(stop)
        finally:
            gc.unfreeze()
        if server is not None:
            server.close()
        return 0

    async def _run_frozen(self, stop: asyncio.Event) -> None:
        """Restore, connect, ingest until ``stop``, shut down: with the objects of the start
        (modules, compiled kernels) frozen (``gc.freeze``), so the cyclic collector's full
        passes walk only the objects made since, such as a new sensor's, and stay short (a
        pass over the start's objects took 48-93 ms while 50,000 sensors first reported)."""
        if self.settings.checkpoint.enabled:
            restored = checkpoint.restore(self.pipeline, self.checkpoint_path)
            if self.journal is not None:
                await self._replay_journal(restored)
        tasks = []
        if await self.connection.connect(stop):
            tasks = [asyncio.create_task(self._batches())]
            if self.settings.checkpoint.enabled:
                tasks.append(asyncio.create_task(self._checkpoints()))
            await stop.wait()
        await self._shutdown(tasks)

    async def _batches(self) -> None:
        """Run the batch when it is due, every ``batch.max_delay_ms`` (read again each time,
        for SIGHUP). The message callback runs it itself when this timer is late."""
        while True:
            wait = self.batch_due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                self._tick()

    async def _replay_journal(self, restored: dict[str, Any] | None) -> None:
        """Run the journal written since the checkpoint through the pipeline, giving the loop
        a turn every 10,000 messages (metrics and health answer meanwhile)."""
        assert self.journal is not None
        start = restored.get("journal_from", self.journal.segment) if restored else 0
        if restored and not checkpoint.rewind_alert_log(self.pipeline, restored):
            log.warning("alerts.jsonl changed since the checkpoint: alerts raised again by the "
                        "journal replay are appended a second time")  # fmt: skip
        self.replaying = True
        began = time.perf_counter()
        n = 0
        for topic, payload, recv_ms in journal.read(self.journal.folder, start):
            self._process(topic, payload, recv_ms)
            self.connection.remember(topic, payload)
            n += 1
            if n % 10_000 == 0:
                self.metrics.journal_replayed = n
                await asyncio.sleep(0)
        self.pipeline.flush()
        self.metrics.journal_replayed = n
        self.replaying = False
        if n:
            log.info("journal: %d messages since the checkpoint replayed in %.1f s", n,
                     time.perf_counter() - began)  # fmt: skip

    def _commit_soon(self) -> None:
        """Start a journal commit at the loop's next turn, unless one is running: its end
        starts the next one."""
        if self.journal is not None and not self._committing:
            self._committing = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        assert self.journal is not None
        connection, ids = self.connection.take_unacked()
        started = time.perf_counter()

        def committed(done: asyncio.Future[int]) -> None:
            self._committing = False
            self._journal_done(done, started)
            self.connection.ack(connection, ids)
            if self.connection.unacked:
                self._commit_soon()

        asyncio.wrap_future(self.journal.commit()).add_done_callback(committed)

    def _journal_done(self, done: asyncio.Future[int], started: float) -> None:
        """Count a journal write. One that failed is logged and counted, and its messages are
        acknowledged all the same: ingest and alerts go on, without the crash guarantee."""
        exc = done.exception()
        if exc is not None:
            self.pipeline.sink_errors["journal"] += 1
            self.pipeline.counters.warn("sink journal", f"write failed, acknowledging "
                                        f"without it: {exc}")  # fmt: skip
            return
        self.metrics.journal_commit_seconds.observe(time.perf_counter() - started)
        self.metrics.journal_bytes += done.result()

    def _rotate_journal(self) -> int | None:
        """A new journal segment for what comes after the checkpoint being taken; its number."""
        if self.journal is None:
            return None
        started = time.perf_counter()
        done = asyncio.wrap_future(self.journal.rotate())
        done.add_done_callback(lambda f: self._journal_done(f, started))
        return self.journal.segment

    async def _checkpoints(self) -> None:
        """Every checkpoint.interval_s: copy the state between batches; the writer thread
        writes the copy while ingest goes on, after the interval files handed to it before,
        so the files of every interval the checkpoint counts as written exist first."""
        while True:
            await asyncio.sleep(self.settings.checkpoint.interval_s)
            self.pipeline.flush()
            start = time.perf_counter()
            journal_from = self._rotate_journal()
            arrays = self.checkpointer.take(journal_from)
            self._writing = asyncio.wrap_future(
                self.pipeline.writer.submit(self.checkpointer.write, arrays)
            )
            try:
                size = await asyncio.shield(self._writing)
            except OSError as exc:
                self._checkpoint_failed(exc)
                continue
            self._checkpoint_done(start, size, journal_from)

    def _tick(self) -> None:
        now, delay = time.monotonic(), self.settings.batch.max_delay_ms / 1000
        due = self.batch_due + delay  # a fixed grid; after a stall it starts again from now
        self.batch_due = due if due > now else now + delay
        self.pipeline.flush()
        if self.journal is not None and self.journal.pending:  # QoS 0 messages ask for none
            self._commit_soon()
        if not self.ready_sent and not self.health():
            self.ready_sent = True
            sd_notify("READY=1")
            log.info("ready")

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        log.info("stopping")
        self.stopping = True
        sd_notify("STOPPING=1")
        for t in tasks:
            t.cancel()
        if self._writing is not None:  # a checkpoint being written: let it finish
            await asyncio.wait([self._writing])
            if not self._writing.cancelled() and self._writing.exception() is not None:
                log.error("checkpoint failed: %s", self._writing.exception())
        self.connection.refuse_qos1 = True  # not acknowledged now: the broker keeps them
        self.pipeline.flush()  # its alerts still go out on MQTT
        if self.journal is not None:  # the last commit, and its acknowledgements
            connection, ids = self.connection.take_unacked()
            started = time.perf_counter()
            done = asyncio.wrap_future(self.journal.commit())
            await asyncio.wait([done])
            self._journal_done(done, started)
            self.connection.ack(connection, ids)
        await self.connection.drain(2.0)
        await self.connection.close()
        self.pipeline.suspend()  # what arrived meanwhile, and the open intervals
        if self.settings.checkpoint.enabled:
            self.save_checkpoint()
        if self.journal is not None:
            self.journal.close()
        summary = self.pipeline.summary()
        log.info("stopped: %d readings, %d alerts open, messages %s", summary["readings"],
                 summary["alerts_open_now"], summary["messages"])  # fmt: skip

    def save_checkpoint(self) -> None:
        """Save now, on the event loop (at shutdown), once the interval files are written."""
        self.pipeline.flush()
        self.pipeline.drain()
        start = time.perf_counter()
        journal_from = self._rotate_journal()
        try:
            size = self.checkpointer.write(self.checkpointer.take(journal_from))
        except OSError as exc:
            self._checkpoint_failed(exc)
            return
        self._checkpoint_done(start, size, journal_from)

    def _checkpoint_failed(self, exc: OSError) -> None:
        self.pipeline.sink_errors["checkpoint"] += 1
        log.error("checkpoint %s failed: %s", self.checkpoint_path, exc)

    def _checkpoint_done(self, start: float, size: int, journal_from: int | None) -> None:
        if self.journal is not None and journal_from is not None:
            self.journal.prune(journal_from)
        seconds = time.perf_counter() - start
        self.metrics.checkpoint_seconds.observe(seconds)
        self.metrics.checkpoint_at = time.monotonic()
        log.debug("checkpoint: %d bytes in %.3f s", size, seconds)

    def reload(self) -> None:
        """SIGHUP: take new rules, thresholds, alert and batch settings from the config file;
        window state and open alerts stay."""
        try:
            new = self.reload_settings()
        except ConfigError as exc:
            log.error("reload refused, keeping the running settings: %s", exc)
            self.metrics.reloads["refused"] += 1
            return
        ignored = [
            f.name
            for f in dataclasses.fields(Settings)
            if f.name not in RELOADABLE and getattr(new, f.name) != getattr(self.settings, f.name)
        ]
        if ignored:
            log.warning("reload: changes to [%s] need a restart; not applied", ", ".join(ignored))
        changes = {name: getattr(new, name) for name in RELOADABLE}
        self.settings = dataclasses.replace(self.settings, **changes)
        self.pipeline.reload(self.settings)
        self.metrics.reloads["applied"] += 1
        log.info("reloaded [%s]", ", ".join(RELOADABLE))
