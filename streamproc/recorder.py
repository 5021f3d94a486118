"""``streamproc record``: live MQTT traffic -> a Parquet feed in the replay format.

Each message is stored with its receive time, topic and payload (``simulate.FEED_SCHEMA``),
in row groups of up to ``FLUSH_ROWS`` messages or ``FLUSH_S`` seconds. The file is written as
``FEED.partial`` and renamed to ``FEED`` when the recording stops (SIGTERM or SIGINT), so a
file with the final name is always complete. Replaying it gives the alerts that a live run
raised on the same traffic, provided payloads carry their own timestamps (a payload without
one takes its receive time, which differs between processes by a few milliseconds).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from streamproc.config import Settings
from streamproc.daemon import subscriptions
from streamproc.sinks.jsonl import make_dirs
from streamproc.sources.mqtt import MqttConnection
from streamproc.sources.simulate import FEED_SCHEMA

log = logging.getLogger("streamproc")
FLUSH_ROWS = 50_000
FLUSH_S = 5.0


class FeedRecorder:
    def __init__(self, path: Path):
        self.path = Path(path)
        make_dirs(self.path.parent)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.writer = pq.ParquetWriter(self.partial, FEED_SCHEMA, compression="zstd")
        self.ts: list[int] = []
        self.topic: list[str] = []
        self.payload: list[bytes] = []
        self.messages = 0

    def add(self, ts_ms: int, topic: str, payload: bytes) -> None:
        self.ts.append(ts_ms)
        self.topic.append(topic)
        self.payload.append(payload)
        self.messages += 1
        if len(self.ts) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.ts:
            data = (self.ts, self.topic, self.payload)
            columns = [pa.array(c, f.type) for c, f in zip(data, FEED_SCHEMA, strict=True)]
            self.writer.write_table(pa.Table.from_arrays(columns, schema=FEED_SCHEMA))
            self.ts, self.topic, self.payload = [], [], []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.partial, self.path)


async def record(settings: Settings, path: Path) -> int:
    """Record until SIGTERM or SIGINT; returns the number of messages written."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    recorder = FeedRecorder(path)

    def on_message(topic: str, payload: bytes) -> None:
        recorder.add(time.time_ns() // 1_000_000, topic, payload)

    m = settings.mqtt
    connection = MqttConnection(m, subscriptions(settings), on_message)
    try:
        if await connection.connect(stop):
            log.info("recording to %s", path)
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), FLUSH_S)
                except TimeoutError:
                    recorder.flush()
        await connection.close()
    finally:
        recorder.close()
    log.info("recorded %d messages to %s", recorder.messages, path)
    return recorder.messages


def record_settings(settings: Settings, client_id: str | None) -> Settings:
    """A recorder must not share the daemon's session: its own client id by default."""
    cid = client_id or f"{settings.mqtt.client_id}-record"
    return dataclasses.replace(settings, mqtt=dataclasses.replace(settings.mqtt, client_id=cid))
