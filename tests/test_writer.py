"""Parquet files are written off the caller's thread: in order, with backpressure, counted, and
all of them on disk before a checkpoint that counts them as written."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest

from streamproc import checkpoint
from streamproc import pipeline as pipeline_module
from streamproc.config import load
from streamproc.pipeline import Pipeline
from streamproc.sinks import parquet as sink_parquet
from streamproc.sinks.parquet import File
from streamproc.sinks.writer import FileWriter

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
MINUTES = 40  # one reading a minute: 8 snapshot intervals of 5 minutes


def feed(p: Pipeline, minutes: int = MINUTES) -> None:
    """One air channel, a reading a minute, PM2.5 over the threshold from minute 10 to 25;
    a batch after every message, so that the intervals close one at a time."""
    for i in range(minutes):
        value = 100.0 if 10 <= i < 25 else 10.0
        payload = orjson.dumps({"ts": T0 + i * 60_000, "value": value})
        p.message("city/g1/air/dev1/pm25", payload, T0 + i * 60_000)
        p.flush()


def parquet_files(out: Path, table: str) -> list[str]:
    return sorted(f.name for f in (out / table).rglob("*.parquet"))


def test_a_slow_disk_does_not_hold_up_the_readings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    written: list[list[str]] = []

    def slow(files: list[File]) -> list[OSError | None]:
        release.wait(10)
        written.append([str(path.relative_to(tmp_path)) for _, path in files])
        return sink_parquet.write_files(files)

    monkeypatch.setattr(pipeline_module, "write_files", slow)
    p = Pipeline(load(None), tmp_path)
    start = time.monotonic()
    feed(p)
    assert time.monotonic() - start < 5  # not stuck behind the first write
    assert p.counters.readings == MINUTES
    assert p.intervals_written == 7
    assert parquet_files(tmp_path, "snapshots") == []
    release.set()
    p.close()
    snapshots = [path for write in written for path in write if path.startswith("snapshots")]
    assert len(snapshots) == len(parquet_files(tmp_path, "snapshots")) == 8
    assert snapshots == sorted(snapshots, key=lambda path: Path(path).name)  # in order
    assert parquet_files(tmp_path, "alerts")
    assert p.sink_errors == {}
    assert p.snapshot_seconds.counts.sum() == len(written)


def test_the_writer_keeps_order_and_makes_the_caller_wait_when_full() -> None:
    writer = FileWriter(max_pending=2)
    gate = threading.Event()
    done: list[int] = []

    def first() -> None:
        gate.wait(10)
        done.append(1)

    writer.submit(first)
    writer.submit(done.append, 2)
    third = threading.Thread(target=writer.submit, args=(done.append, 3))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # two writes pending: the third is not taken yet
    gate.set()
    third.join(5)
    assert not third.is_alive()
    writer.close()
    assert done == [1, 2, 3]


def test_a_checkpoint_comes_after_the_files_it_counts_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow(files: list[File]) -> list[OSError | None]:
        time.sleep(0.2)
        return sink_parquet.write_files(files)

    monkeypatch.setattr(pipeline_module, "write_files", slow)
    p = Pipeline(load(None), tmp_path)
    feed(p)
    checkpoint.save(p, tmp_path / "checkpoint.npz")
    assert len(parquet_files(tmp_path, "snapshots")) == p.intervals_written == 7
    p.close()


def test_failed_files_are_counted_once_per_interval_and_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replace = sink_parquet.os.replace

    def no_snapshots(src: Path, dst: Path) -> None:
        if "snapshots" in Path(dst).parts:
            raise OSError(28, "No space left on device")
        replace(src, dst)

    monkeypatch.setattr(sink_parquet.os, "replace", no_snapshots)
    p = Pipeline(load(None), tmp_path)
    feed(p)
    p.close()
    assert p.sink_errors == {"snapshots": 8}
    assert parquet_files(tmp_path, "alerts")  # the other sink went on
    assert list(tmp_path.rglob("*.tmp")) == []
