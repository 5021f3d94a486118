"""``streamproc simulate --publish``: send a feed's messages to a broker at a set rate."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from streamproc.config import MqttSettings
from streamproc.sources.mqtt import MqttConnection

log = logging.getLogger("streamproc")
MAX_BACKLOG = 10_000  # messages queued or unacknowledged before the publisher waits


async def publish(m: MqttSettings, messages: Iterable[tuple[str, bytes]], rate: float | None,
                  qos: int) -> int:  # fmt: skip
    """Publish ``(topic, payload)`` pairs at ``rate`` messages per second (None: as fast as
    the broker takes them); returns how many were sent once the broker acknowledged them."""
    stop = asyncio.Event()
    conn = MqttConnection(m, (), lambda topic, payload: None, subscribe=False)
    if not await conn.connect(stop):
        return 0
    start = time.monotonic()
    n = 0
    try:
        for topic, payload in messages:
            conn.publish(topic, payload, qos=qos)
            n += 1
            if n % 256 == 0:
                while conn.backlog > MAX_BACKLOG:
                    await asyncio.sleep(0.001)
                ahead = start + n / rate - time.monotonic() if rate else 0.0
                await asyncio.sleep(max(ahead, 0.0))
        if not await conn.drain(60.0):
            log.warning("%d messages not acknowledged by the broker", conn.backlog)
    finally:
        await conn.close()
    elapsed = time.monotonic() - start
    sent = conn.published - conn.resent - conn.backlog
    log.info("published %d messages in %.1f s (%.0f/s)", sent, elapsed, sent / max(elapsed, 1e-9))
    return sent
