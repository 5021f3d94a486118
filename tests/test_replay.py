"""End to end through the CLI: simulate -> replay -> alerts.jsonl and Parquet snapshots."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamproc import runner
from streamproc.cli import main
from streamproc.config import Settings
from streamproc.counters import MALFORMED
from streamproc.pipeline import Pipeline
from streamproc.sources import simulate as sim

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("city")
    sim.write(sim.SimConfig(channels=400, duration_s=12 * 3600, seed=7), out)
    return out


def replay(feed: Path, out: Path, *extra: str) -> list[dict]:
    assert main(["replay", str(feed), "-o", str(out), *extra]) == 0
    return [orjson.loads(line) for line in (out / "alerts.jsonl").read_bytes().splitlines()]


def test_alerts_identical_whatever_the_batch_size(city: Path, tmp_path: Path) -> None:
    sizes = ("1", "97", "10000", None)  # None: replay's default
    runs = [
        replay(
            city / "feed.parquet", tmp_path / f"b{size}", *(("--batch-size", size) if size else ())
        )
        for size in sizes
    ]
    assert len(runs[0]) > 10  # the feed has injected anomalies: alerts must come out
    assert {a["rule"] for a in runs[0]} >= {"zscore", "flatline", "dropout"}
    assert all(run == runs[0] for run in runs)
    files = [
        sorted(p.relative_to(tmp_path / f"b{s}") for p in (tmp_path / f"b{s}").rglob("*.parquet"))
        for s in sizes
    ]
    assert all(f == files[0] for f in files)


def test_every_open_is_resolved_once_and_ids_are_unique(city: Path, tmp_path: Path) -> None:
    alerts = replay(city / "feed.parquet", tmp_path / "out")
    opens = [a["id"] for a in alerts if a["event"] == "open"]
    resolves = [a["id"] for a in alerts if a["event"] == "resolve"]
    assert len(opens) == len(set(opens))
    assert len(resolves) == len(set(resolves))
    assert set(resolves) <= set(opens)
    for a in alerts:
        assert 0 <= a["score"] <= 1
        assert a["severity"] in ("info", "warning", "critical")


def tidy_feed(path: Path, channels: int, minutes: int) -> int:
    """Every channel reports once a minute; returns the number of readings."""
    n = channels * minutes
    ts = np.repeat(T0 + np.arange(minutes, dtype=np.int64) * 60_000, channels) + np.tile(
        np.arange(channels, dtype=np.int64) * 10, minutes
    )
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "device": [f"dev{i % channels:03d}" for i in range(n)],
            "metric": ["flow"] * n,
            "value": rng.normal(100, 5, n),
            "kind": ["traffic"] * n,
            "group": [f"d{i % 3}" for i in range(n)],
        }
    )
    pq.write_table(table, path)
    return n


def test_duckdb_reads_the_snapshots_as_one_table(tmp_path: Path) -> None:
    channels, minutes = 50, 60  # 12 snapshot intervals of 5 minutes
    n = tidy_feed(tmp_path / "feed.parquet", channels, minutes)
    replay(tmp_path / "feed.parquet", tmp_path / "out")
    con = duckdb.connect()
    glob = f"{tmp_path}/out/snapshots/**/*.parquet"
    rows, total, intervals, kinds = con.execute(
        "SELECT count(*), sum(count), count(DISTINCT interval_start), string_agg(DISTINCT kind) "
        f"FROM read_parquet('{glob}', hive_partitioning=true)"
    ).fetchone()
    assert (rows, total, intervals, kinds) == (channels * 12, n, 12, "traffic")
    per_channel = con.execute(
        f"SELECT device, count(*) FROM read_parquet('{glob}', hive_partitioning=true) GROUP BY 1"
    ).fetchall()
    assert len(per_channel) == channels and {c for _, c in per_channel} == {12}


def test_malformed_lines_are_counted_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log = tmp_path / "feed.log"
    lines = [f"{(T0 + i * 60_000) / 1000:.3f} city/d1/air/st1 {{\"pm25\": {20 + i % 3}}}"
             for i in range(30)]  # fmt: skip
    lines[5] = "not a line at all"
    lines[9] = f"{T0 / 1000 + 540:.3f} city/d1/air/st1 {{broken json"
    lines[12] = f'{T0 / 1000 + 720:.3f} no/pattern/here {{"pm25": 1}}'
    log.write_text("\n".join(lines) + "\n")
    replay(log, tmp_path / "out")
    out = capsys.readouterr().out
    assert "malformed 2" in out and "unknown 1" in out and "ok 27" in out
    assert "readings processed  27" in out


def test_replay_refuses_to_mix_outputs(city: Path, tmp_path: Path) -> None:
    replay(city / "feed.parquet", tmp_path / "out", "--batch-size", "5000")
    with pytest.raises(SystemExit, match="already holds output"):
        main(["replay", str(city / "feed.parquet"), "-o", str(tmp_path / "out")])
    replay(city / "feed.parquet", tmp_path / "out", "--force")


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    example = Path(__file__).parent.parent / "configs" / "city.example.toml"
    assert main(["check-config", str(example)]) == 0
    assert capsys.readouterr().out == "ok\n"
    bad = tmp_path / "bad.toml"
    bad.write_text("[snapshots]\ninterval_s = 60\ngrace_s = 90\n")
    assert main(["check-config", str(bad)]) == 2
    assert "snapshots.grace_s" in capsys.readouterr().err


def test_demo_runs_bounded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--seconds", "4", "--channels", "300", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "readings processed" in text and "read_parquet" in text
    assert (out / "alerts.jsonl").exists() and (out / "labels.csv").exists()


def test_a_long_silence_loses_no_reading(tmp_path: Path) -> None:
    """Hours without traffic, then traffic again: nothing after the gap is dropped (a gap
    longer than input.max_future_s once made every later reading far_future)."""
    from streamproc.config import load
    from streamproc.pipeline import Pipeline

    p = Pipeline(load(None), tmp_path)
    t0 = 1_767_571_200_000
    times = [t0 + i * 60_000 for i in range(30)] + [
        t0 + 6 * 3_600_000 + i * 60_000 for i in range(30)
    ]
    for t in times:
        p.message("city/d1/air/st1/pm25", b'{"ts": %d, "value": 5}' % t, t + 100)
    p.close()
    assert p.counters.readings == 60
    assert not p.counters.dropped


def test_a_paced_replay_waits_within_a_large_chunk(tmp_path: Path) -> None:
    """Feeds are read in chunks of up to 1M readings; paced, each part of PACED_ROWS
    readings still waits for its own time."""
    import time

    from streamproc.config import load
    from streamproc.pipeline import Pipeline
    from streamproc.runner import PACED_ROWS, TIDY_CHUNK_ROWS
    from streamproc.runner import replay as run_replay

    feed = tmp_path / "feed.parquet"
    n = tidy_feed(feed, 1000, 200)  # one chunk, 200 minutes of event time
    assert PACED_ROWS * 3 < n < TIDY_CHUNK_ROWS
    last_part_s = (PACED_ROWS * 3 // 1000) * 60  # event time of the last part's first reading
    p = Pipeline(load(None), tmp_path / "out")
    t = time.monotonic()
    assert run_replay(p, feed, speed=6000.0)
    wall = time.monotonic() - t
    assert wall >= last_part_s / 6000.0 - 0.05
    assert p.counters.readings == n


def test_the_next_chunk_is_read_while_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read_ahead``: chunk i + 1 is read on another thread while the consumer still holds
    chunk i; the rows the reading thread finds malformed are counted once each, in the
    consumer's counters, by the time the chunk holding them is taken."""
    feed = tmp_path / "feed.csv"
    rows = [f"{T0 + i * 60_000},st1,pm25,{i}" for i in range(50)]
    for i in (3, 27, 44):
        rows[i] = f"not a time,st1,pm25,{i}"
    feed.write_text("ts,device,metric,value\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(runner, "TIDY_CHUNK_ROWS", 10)
    reads: list[str] = []  # the thread that read each chunk
    read = [threading.Event() for _ in range(5)]
    real = runner.read_feed

    def recording(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for chunk in real(*args, **kwargs):
            read[len(reads)].set()
            reads.append(threading.current_thread().name)
            yield chunk

    monkeypatch.setattr(runner, "read_feed", recording)
    pipeline = Pipeline(Settings(), tmp_path / "out")
    malformed, codes = [], []
    for i, (chunk, known) in enumerate(runner.read_ahead(pipeline, feed)):
        malformed.append(pipeline.counters.messages[MALFORMED])
        if i == 0:
            assert read[1].wait(5), "the second chunk was not read while the first was held"
        assert len(chunk.ts_ms) == 10 - (i == 0) - (i == 2) - (i == 4)
        assert known is not None
        codes.append(known.codes.tolist())
        assert runner.tidy_batch(pipeline, chunk, known).idx.tolist() == [0] * len(chunk.ts_ms)
    pipeline.close()
    assert len(reads) == 5
    assert threading.main_thread().name not in reads
    assert malformed == [1, 1, 2, 2, 3]
    # st1 is registered by the first chunk's tidy_batch, which may run before or after the
    # second chunk's look-up: NEW there resolves to the same channel
    assert codes[0] == [runner.NEW] and codes[1] in ([runner.NEW], [0])
    assert codes[2:] == [[0]] * 3


def test_objects_older_than_a_replay_are_frozen_while_it_runs(city: Path, tmp_path: Path) -> None:
    """The cyclic collector's full passes skip what existed when the replay began, and
    everything is collectable again after it (``gc.freeze`` / ``gc.unfreeze``)."""
    assert gc.get_freeze_count() == 0
    pipeline = Pipeline(Settings(), tmp_path / "out")
    frozen: list[int] = []
    pipeline.listeners.append(lambda _alerts: frozen.append(gc.get_freeze_count()))
    runner.replay(pipeline, city / "feed.parquet")
    assert frozen and frozen[0] > 1000  # the modules at least
    assert gc.get_freeze_count() == 0
