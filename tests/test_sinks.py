"""Alert log and Parquet sinks: content, layout, schema, permissions, atomicity."""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from streamproc.alerts import Alert
from streamproc.config import ChannelSettings
from streamproc.detect import ChannelRows
from streamproc.registry import Registry
from streamproc.sinks import parquet as sink_parquet
from streamproc.sinks.jsonl import AlertLog
from streamproc.sinks.parquet import (
    ALERT_SCHEMA,
    SNAPSHOT_SCHEMA,
    AlertParquetWriter,
    SnapshotWriter,
)

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
INTERVAL = 300_000


@pytest.fixture(autouse=True)
def _umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def alert(i: int, kind: str = "air", resolved: bool = False, peak: float = 1.5) -> Alert:
    return Alert(
        id=f"d{i}/pm25/zscore/{T0 + i}",
        event="resolve" if resolved else "open",
        channel=i,
        device=f"d{i}",
        metric="pm25",
        kind=kind,
        group="north",
        rule="zscore",
        severity="warning",
        state="resolved" if resolved else "open",
        ts_ms=T0 + 1000 * i,
        opened_at_ms=T0 + i,
        resolved_at_ms=T0 + 1000 * i if resolved else None,
        peak_value=peak,
        score=3.25,
        message=f"alert {i}",
    )


def registry() -> Registry:
    reg = Registry(ChannelSettings())
    reg.channel("a1", "pm25", "air", "north")
    reg.channel("a1", "no2", "air", "north")
    reg.channel("t1", "count", "traffic", "south")
    reg.channel("a2", "pm25", "air", "south")
    return reg


def rows(channels: list[int], base: float = 0.0) -> ChannelRows:
    n = len(channels)
    return ChannelRows(
        channel=np.array(channels, np.int32),
        count=np.arange(1, n + 1, dtype=np.int32),
        min=np.full(n, base),
        max=np.full(n, base + 2),
        mean=np.full(n, base + 1),
        last=np.full(n, base + 1.5),
        last_ts_ms=np.full(n, T0 + 299_000, np.int64),
        max_score=np.full(n, 0.5, np.float32),
        open_alerts=np.zeros(n, np.int16),
    )


def no_tmp(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# --- AlertLog ---------------------------------------------------------------------------


def test_alert_log_lines_append_and_modes(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "alerts.jsonl"
    alerts = [alert(1), alert(2, resolved=True, peak=math.nan)]
    log = AlertLog(path)
    log.add(alerts[:1])
    log.add([])
    log.flush()
    assert path.read_bytes().count(b"\n") == 1
    log.close()
    log.close()
    with AlertLog(path) as log2:  # appends
        log2.add(alerts[1:])
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(x) for x in lines] == [a.to_dict() for a in alerts]
    assert orjson.loads(lines[1])["peak_value"] is None
    assert mode(path) == 0o640
    assert mode(tmp_path / "a") == 0o750
    assert mode(tmp_path / "a" / "b") == 0o750


# --- snapshots -------------------------------------------------------------------------


def test_snapshot_partitions_schema_and_values(tmp_path: Path) -> None:
    reg = registry()
    paths = SnapshotWriter(tmp_path, reg).write_interval(T0, T0 + INTERVAL, rows([0, 1, 2, 3]))
    snap = tmp_path / "snapshots"
    assert sorted(paths) == [
        snap / "kind=air" / "date=2026-01-05" / "20260105T000000Z.parquet",
        snap / "kind=traffic" / "date=2026-01-05" / "20260105T000000Z.parquet",
    ]
    assert no_tmp(tmp_path)
    for p in paths:
        assert mode(p) == 0o640
        assert mode(p.parent) == 0o750
        assert pq.read_schema(p).remove_metadata() == SNAPSHOT_SCHEMA
        assert pq.ParquetFile(p).metadata.row_group(0).column(0).compression == "ZSTD"
    air = pq.read_table(paths[0] if "air" in str(paths[0]) else paths[1])
    assert air.column("device").to_pylist() == ["a1", "a1", "a2"]
    assert air.column("metric").to_pylist() == ["pm25", "no2", "pm25"]
    assert air.column("group").to_pylist() == ["north", "north", "south"]
    assert air.column("count").to_pylist() == [1, 2, 4]
    assert air.column("device").chunk(0).dictionary.to_pylist() == ["a1", "a2"]  # only used
    start = air.column("interval_start").cast("int64").to_pylist()
    assert start == [T0] * 3
    assert air.column("interval_end").cast("int64").to_pylist() == [T0 + INTERVAL] * 3
    assert air.column("last_ts").cast("int64").to_pylist() == [T0 + 299_000] * 3


def test_snapshot_dictionary_encodes_only_names_that_repeat(tmp_path: Path) -> None:
    """Parquet dictionaries for metric and group only: a snapshot's devices and numbers are
    mostly distinct, where a dictionary costs a hash per value for nothing."""
    (p,) = SnapshotWriter(tmp_path, registry()).write_interval(T0, T0 + INTERVAL, rows([0, 1]))
    meta = pq.ParquetFile(p).metadata.row_group(0)
    dictionary = {meta.column(i).path_in_schema for i in range(meta.num_columns)
                  if "RLE_DICTIONARY" in meta.column(i).encodings}  # fmt: skip
    assert dictionary == {"metric", "group"}
    assert pq.read_table(p).column("device").to_pylist() == ["a1", "a1"]


def test_snapshot_empty_kind_and_interval_write_nothing(tmp_path: Path) -> None:
    w = SnapshotWriter(tmp_path, registry())
    assert w.write_interval(T0, T0 + INTERVAL, rows([])) == []
    assert w.write_interval(T0, T0 + INTERVAL, rows([2])) == [
        tmp_path / "snapshots" / "kind=traffic" / "date=2026-01-05" / "20260105T000000Z.parquet"
    ]
    assert not (tmp_path / "snapshots" / "kind=air").exists()


def test_snapshot_new_channels_after_first_write(tmp_path: Path) -> None:
    reg = registry()
    w = SnapshotWriter(tmp_path, reg)
    w.write_interval(T0, T0 + INTERVAL, rows([0]))
    c = reg.channel("a9", "pm10", "air", "west")
    (p,) = w.write_interval(T0 + INTERVAL, T0 + 2 * INTERVAL, rows([0, c]))
    t = pq.read_table(p)
    assert t.column("device").to_pylist() == ["a1", "a9"]
    assert t.column("group").to_pylist() == ["north", "west"]


def test_failed_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink_parquet.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        SnapshotWriter(tmp_path, registry()).write_interval(T0, T0 + INTERVAL, rows([0]))
    with pytest.raises(OSError):
        AlertParquetWriter(tmp_path).write_interval(T0, T0 + INTERVAL, [alert(1)])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(table: object, where: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink_parquet.pq, "write_table", fail)
    with pytest.raises(OSError):
        SnapshotWriter(tmp_path, registry()).write_interval(T0, T0 + INTERVAL, rows([0]))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_duckdb_reads_snapshots_as_one_table(tmp_path: Path) -> None:
    reg = registry()
    w = SnapshotWriter(tmp_path, reg)
    n_intervals = 3
    for k in range(n_intervals):
        start = T0 + k * INTERVAL
        w.write_interval(start, start + INTERVAL, rows(list(range(reg.n)), base=k))
    w.write_interval(T0 + 86_400_000, T0 + 86_400_000 + INTERVAL, rows([1]))  # next day
    glob = str(tmp_path / "snapshots" / "**" / "*.parquet")
    con = duckdb.connect()
    rel = con.sql(f"select * from read_parquet('{glob}', hive_partitioning=true)")
    assert {"kind", "date", "device", "metric", "group", "interval_start"} <= set(rel.columns)
    total = con.sql(f"select count(*) from read_parquet('{glob}', hive_partitioning=true)")
    assert total.fetchall() == [(reg.n * n_intervals + 1,)]
    by_kind = con.sql(
        f"select kind, cast(date as varchar), count(*) from read_parquet('{glob}', "
        "hive_partitioning=true) group by all order by all"
    ).fetchall()
    assert by_kind == [
        ("air", "2026-01-05", 9),
        ("air", "2026-01-06", 1),
        ("traffic", "2026-01-05", 3),
    ]
    ((epoch_ms,),) = con.sql(
        f"select epoch_ms(min(interval_start)) from read_parquet('{glob}', hive_partitioning=true)"
    ).fetchall()
    assert epoch_ms == T0


# --- alert Parquet ---------------------------------------------------------------------


def test_alert_parquet(tmp_path: Path) -> None:
    w = AlertParquetWriter(tmp_path)
    assert w.write_interval(T0, T0 + INTERVAL, []) == []
    alerts = [alert(1), alert(2, kind="pipe", resolved=True, peak=math.nan), alert(3)]
    paths = w.write_interval(T0, T0 + INTERVAL, alerts)
    root = tmp_path / "alerts"
    assert paths == [
        root / "kind=air" / "date=2026-01-05" / "20260105T000000Z.parquet",
        root / "kind=pipe" / "date=2026-01-05" / "20260105T000000Z.parquet",
    ]
    assert no_tmp(tmp_path)
    assert all(mode(p) == 0o640 for p in paths)
    assert pq.read_schema(paths[0]).remove_metadata() == ALERT_SCHEMA
    air = pq.read_table(paths[0]).to_pylist()
    assert [r["id"] for r in air] == [alerts[0].id, alerts[2].id]
    assert air[0]["resolved_at"] is None
    assert air[0]["peak_value"] == 1.5
    assert air[0]["score"] == 3.25
    pipe = pq.read_table(paths[1])
    assert pipe.column("peak_value").to_pylist() == [None]
    assert pipe.column("resolved_at").cast("int64").to_pylist() == [T0 + 2000]
    assert pipe.column("state").to_pylist() == ["resolved"]
