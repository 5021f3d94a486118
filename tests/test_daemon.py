"""The daemon's batch schedule, without a broker: the message callback and the timer."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamproc import daemon as daemon_mod
from streamproc.config import from_dict
from streamproc.daemon import Daemon

MESSAGE = b'{"ts": %d, "value": 20.0}'


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(from_dict({"output": {"dir": str(tmp_path)}, "checkpoint": {"enabled": False}}))
    yield d
    d.pipeline.close()


def test_a_late_batch_timer_does_not_hold_readings(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the event loop is busy with message callbacks the timer cannot run; the callback
    itself then runs the batch once ``batch.max_delay_ms`` has passed since the last one."""
    now = time.monotonic()
    monkeypatch.setattr(daemon_mod.time, "monotonic", lambda: now)
    daemon._tick()  # a batch; the next is due max_delay_ms from now
    ts = time.time_ns() // 1_000_000
    daemon._on_message("city/g1/air/st1/pm25", MESSAGE % ts)
    assert len(daemon.pipeline.builder) == 1  # within max_delay_ms: waits for the batch
    now += (daemon.settings.batch.max_delay_ms - 1) / 1000
    daemon._on_message("city/g1/air/st2/pm25", MESSAGE % ts)
    assert len(daemon.pipeline.builder) == 2
    now += 0.001  # the timer is late
    daemon._on_message("city/g1/air/st3/pm25", MESSAGE % ts)
    assert len(daemon.pipeline.builder) == 0
    assert daemon.pipeline.counters.readings == 3


def test_the_batch_timer_runs_every_max_delay_and_takes_a_reload(daemon: Daemon) -> None:
    """Batches come every ``batch.max_delay_ms``, not sooner, and a new delay (SIGHUP) is
    taken from the next batch on."""
    runs: list[float] = []
    tick = daemon._tick

    def counted() -> None:
        runs.append(time.monotonic())
        tick()
        if len(runs) == 3:
            batch = dataclasses.replace(daemon.settings.batch, max_delay_ms=60)
            daemon.settings = dataclasses.replace(daemon.settings, batch=batch)

    daemon._tick = counted  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.create_task(daemon._batches())
        while len(runs) < 6:
            await asyncio.sleep(0.005)
        task.cancel()

    asyncio.run(main())
    # on a fixed grid from the first batch: one late batch makes the next gap shorter
    assert 0.030 <= runs[3] - runs[0] < 0.090, runs  # three of the default 10 ms
    assert runs[5] - runs[0] >= 0.030 + 2 * 0.060, runs  # then two of the new 60 ms


def test_the_objects_of_the_start_are_frozen_while_the_daemon_runs(tmp_path: Path) -> None:
    """Restore, ingest and shutdown run with the start's objects frozen (``gc.freeze``), so
    the collector's full passes skip them; they are unfrozen when ``run`` returns."""
    d = Daemon(from_dict({"output": {"dir": str(tmp_path)}, "checkpoint": {"enabled": False},
                          "metrics": {"listen": ""}}))  # fmt: skip
    frozen: list[int] = []

    async def ingest(stop: asyncio.Event) -> None:
        frozen.append(gc.get_freeze_count())

    d._run_frozen = ingest  # type: ignore[method-assign]
    try:
        assert asyncio.run(asyncio.wait_for(d.run(), 60)) == 0
    finally:
        d.pipeline.close()
    assert frozen and frozen[0] > 1000  # the modules at least
    assert gc.get_freeze_count() == 0
