"""Feed readers: every format, both table shapes, ts variants, malformed rows, chunking."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.counters import MALFORMED, Counters
from streamproc.kernels.feed import extend_key
from streamproc.sources import replay
from streamproc.sources.replay import (
    MessageChunk,
    TidyChunk,
    feed_size,
    feed_unit,
    read_feed,
)
from streamproc.times import MS_CUTOFF

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
TOPICS = ["city/n/air/a1/pm25", "city/s/traffic/t1", "city/n/air/a2/no2"]
MESSAGES = [
    (T0 + 250 * i, TOPICS[i % 3], orjson.dumps({"v": i, "note": "a, b"})) for i in range(23)
]
# device, metric, kind, group, value
TIDY = [
    (T0 + 1000 * i, f"d{i % 4}", ["pm25", "no2"][i % 2], "air", ["n", "s"][i % 4 // 2], i * 0.5)
    for i in range(21)
]


def messages(chunks: list[MessageChunk | TidyChunk]) -> list[tuple[int, str, bytes]]:
    out = []
    for c in chunks:
        assert isinstance(c, MessageChunk)
        assert c.ts_ms.dtype == np.int64
        out += list(zip(c.ts_ms.tolist(), c.topic, c.payload, strict=True))
    return out


def readings(chunks: list[MessageChunk | TidyChunk]) -> list[tuple]:
    out = []
    for c in chunks:
        assert isinstance(c, TidyChunk)
        assert c.ts_ms.dtype == np.int64 and c.value.dtype == np.float64
        assert c.pair_code.dtype == np.int32
        assert len(set(c.pairs.to_list())) == len(c.pairs)
        kind = c.kind or [None] * len(c)
        group = c.group or [None] * len(c)
        cols = (c.ts_ms.tolist(), c.device, c.metric, kind, group, c.value.tolist())
        out += list(zip(*cols, strict=True))
    return out


def read(path: Path, chunk_rows: int = 65536) -> tuple[list, Counters]:
    counters = Counters()
    return list(read_feed(path, counters, chunk_rows)), counters


# --- writers ---------------------------------------------------------------------------


def write_messages(path: Path, rows: list[tuple[int, str, bytes]]) -> None:
    if path.suffix == ".parquet":
        ts, topic, payload = zip(*rows, strict=True)
        pq.write_table(pa.table({"ts": list(ts), "topic": topic, "payload": payload}), path)
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ts", "topic", "payload"])
            w.writerows((t / 1000, top, p.decode()) for t, top, p in rows)
    elif path.suffix == ".jsonl":
        path.write_bytes(
            b"".join(
                orjson.dumps({"ts": t, "topic": top, "payload": p.decode()}) + b"\n"
                for t, top, p in rows
            )
        )
    else:
        path.write_bytes(
            b"".join(
                f"{t // 1000}.{t % 1000:03d}456789 {top} ".encode() + p + b"\n"
                for t, top, p in rows
            )
        )


def write_tidy(path: Path, rows: list[tuple]) -> None:
    names = ["ts", "device", "metric", "kind", "group", "value"]
    if path.suffix == ".parquet":
        pq.write_table(
            pa.table(dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))), path
        )
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(names)
            w.writerows(rows)
    else:
        path.write_bytes(
            b"".join(orjson.dumps(dict(zip(names, r, strict=True))) + b"\n" for r in rows)
        )


# --- every format and shape --------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".log"])
@pytest.mark.parametrize("chunk_rows", [65536, 5, 1])
def test_messages_every_format(tmp_path: Path, suffix: str, chunk_rows: int) -> None:
    path = tmp_path / f"feed{suffix}"
    write_messages(path, MESSAGES)
    chunks, counters = read(path, chunk_rows)
    assert messages(chunks) == MESSAGES
    assert all(1 <= len(c) <= chunk_rows for c in chunks)
    assert counters.messages[MALFORMED] == 0
    positions = [c.position for c in chunks]
    assert positions == sorted(positions)
    assert positions[-1] == feed_size(path)
    assert feed_unit(path) == ("rows" if suffix == ".parquet" else "bytes")


@pytest.mark.parametrize(("group_rows", "chunk_rows", "sizes"), [
    (1000, 1024, [1000, 1000, 500]),  # a chunk per row group, not 1024 + 976 + ...
    (1000, 400, [334, 334, 332, 334, 334, 332, 250, 250]),  # not 400, 400, 200 (or 2, 4)
])  # fmt: skip
def test_parquet_chunks_split_row_groups_evenly(
    tmp_path: Path, group_rows: int, chunk_rows: int, sizes: list[int]
) -> None:
    """Chunks are cut from each row group in as few parts of about equal size as ``chunk_rows``
    allows, not as full chunks and a small remainder where a row group ends."""
    path = tmp_path / "feed.parquet"
    n = 2500
    table = pa.table({"ts": T0 + np.arange(n), "device": [f"d{i % 7}" for i in range(n)],
                      "metric": ["pm25"] * n, "value": np.arange(n, dtype=float)})  # fmt: skip
    pq.write_table(table, path, row_group_size=group_rows)
    chunks, _ = read(path, chunk_rows)
    assert [len(c) for c in chunks] == sizes
    assert [c.position for c in chunks] == np.cumsum(sizes).tolist()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".ndjson"])
@pytest.mark.parametrize("chunk_rows", [65536, 4])
def test_tidy_every_format(tmp_path: Path, suffix: str, chunk_rows: int) -> None:
    path = tmp_path / f"feed{suffix}"
    write_tidy(path, TIDY)
    chunks, counters = read(path, chunk_rows)
    assert readings(chunks) == [(t, d, m, k, g, v) for t, d, m, k, g, v in TIDY]
    assert counters.messages[MALFORMED] == 0
    assert chunks[-1].position == feed_size(path)
    first = chunks[0].pairs.to_list()
    assert first[0] == ("d0", "pm25", "air", "n")  # first appearance order
    assert (
        first[: min(4, len(first))]
        == [
            ("d0", "pm25", "air", "n"),
            ("d1", "no2", "air", "n"),
            ("d2", "pm25", "air", "s"),
            ("d3", "no2", "air", "s"),
        ][: min(4, len(first))]
    )


def test_tidy_without_kind_group_and_dictionary_columns(tmp_path: Path) -> None:
    path = tmp_path / "feed.parquet"
    table = pa.table(
        {
            "ts": pa.array([T0, T0 + 1, T0 + 2], pa.timestamp("ms", tz="UTC")),
            "device": pa.array(["x", "y", "x"]).dictionary_encode(),
            "metric": pa.array(["m", "m", "m"]),
            "value": pa.array([1, None, 3], pa.int64()),
            "extra": [1, 2, 3],
        }
    )
    pq.write_table(table, path)
    (chunk,), _ = read(path)
    assert isinstance(chunk, TidyChunk)
    assert chunk.kind is None and chunk.group is None
    assert chunk.pairs.to_list() == [("x", "m", None, None), ("y", "m", None, None)]
    assert chunk.pair_code.tolist() == [0, 1, 0]
    assert chunk.device == ["x", "y", "x"]
    assert chunk.value[0] == 1 and math.isnan(chunk.value[1]) and chunk.value[2] == 3


def test_tidy_non_numeric_values_are_nan(tmp_path: Path) -> None:
    csv_path = tmp_path / "feed.csv"
    csv_path.write_text(
        "ts,device,metric,value,kind\n1767571200,d,m,1.5,air\n1767571201,d,m,abc,\n"
        "1767571202,d,m, 2 ,air\n1767571203,d,m,,air\n"
    )
    (chunk,), _ = read(csv_path)
    values = chunk.value.tolist()
    assert values[0] == 1.5 and math.isnan(values[1]) and values[2] == 2 and math.isnan(values[3])
    assert chunk.kind == ["air", None, "air", "air"]
    assert chunk.group is None
    json_path = tmp_path / "feed.jsonl"
    json_path.write_bytes(
        b'{"ts":1767571200,"device":"d","metric":"m","value":"1.5"}\n'
        b'{"ts":1767571201,"device":"d","metric":"m","value":true}\n'
        b'{"ts":1767571202,"device":"d","metric":"m","value":7}\n'
        b'{"ts":1767571203,"device":"d","metric":"m"}\n'
    )
    (chunk,), _ = read(json_path)
    values = chunk.value.tolist()
    assert math.isnan(values[0]) and math.isnan(values[1]) and values[2] == 7
    assert math.isnan(values[3])
    assert chunk.kind is None


# --- ts variants ---------------------------------------------------------------------------

TS_VARIANTS: list[tuple[str, pa.Array]] = [
    ("timestamp_ns", pa.array([T0 * 10**6 + 123_456_789], pa.timestamp("ns"))),
    ("timestamp_s_tz", pa.array([T0 // 1000], pa.timestamp("s", tz="Europe/Paris"))),
    ("int_s", pa.array([T0 // 1000], pa.int64())),
    ("int_ms", pa.array([T0 + 123], pa.int64())),
    ("float_s", pa.array([T0 / 1000 + 0.123], pa.float64())),
    ("rfc3339_z", pa.array(["2026-01-05T00:00:00.123Z"])),
    ("rfc3339_offset", pa.array(["2026-01-05T01:00:00.123+01:00"])),
    ("rfc3339_naive", pa.array(["2026-01-05T00:00:00.123"])),
    ("rfc3339_us", pa.array(["2026-01-05T00:00:00.123456Z"])),
    ("numeric_text", pa.array(["1767571200.123"])),
    ("date", pa.array([T0 // 86_400_000], pa.date32())),
]


@pytest.mark.parametrize(("name", "ts"), TS_VARIANTS, ids=[n for n, _ in TS_VARIANTS])
def test_parquet_ts_variants(tmp_path: Path, name: str, ts: pa.Array) -> None:
    path = tmp_path / "feed.parquet"
    pq.write_table(pa.table({"ts": ts, "topic": ["t"], "payload": [b"1"]}), path)
    (chunk,), counters = read(path)
    expect = T0 if name in ("timestamp_s_tz", "int_s", "date") else T0 + 123
    assert chunk.ts_ms.tolist() == [expect]
    assert counters.messages[MALFORMED] == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**63 - 1),
            st.integers(-(10**15), 10**15),  # seconds and ms near the cut-off and the limit
            st.sampled_from(
                [MS_CUTOFF - 1, MS_CUTOFF, -MS_CUTOFF, 2**62 // 1000, 2**62 // 1000 - 1]
            ),
        ),
        max_size=50,
    )
)
def test_integer_ts_as_the_scalar_rule_reads_them(raw: list[int | None]) -> None:
    """The compiled pass over an integer ts column reads each value as ``number_to_ms`` reads
    it (seconds below the cut-off, else milliseconds), and as a float ts column would; nulls
    and times 2**62 ms or more from the epoch are not ok."""
    ms, ok = replay._ts_ms(pa.array(raw, pa.int64()))

    def rule(v: int | None) -> int | None:
        if v is None:
            return None
        m = v if abs(v) >= MS_CUTOFF else v * 1000
        if abs(v) < 2**53:  # exact as a float: the scalar rule must agree
            assert replay._number_ms(float(v)) == (m if abs(m) < 2**62 else None)
        return m if abs(m) < 2**62 else None

    expect = [rule(v) for v in raw]
    assert ok.tolist() == [e is not None for e in expect]
    assert ms.tolist() == [0 if e is None else e for e in expect]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=200), st.booleans())
def test_dense_codes_follow_first_appearance(keys: list[int], hashed: bool) -> None:
    """Both ways of ``_dense`` (a table of the key range, or hashing when the range is large)
    number keys by first appearance and give each code's first row."""
    card = 2**40 if hashed else 41
    code, first, count = replay._dense(np.array(keys, np.int64), card)
    order: dict[int, int] = {}
    for k in keys:
        order.setdefault(k, len(order))
    assert code.tolist() == [order[k] for k in keys]
    assert first.tolist() == [keys.index(k) for k in order]
    assert count == len(order)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**40), st.integers(-1, 2**20)), max_size=100),
    st.integers(1, 2**20 + 2),
    st.booleans(),
)
def test_a_key_extends_by_a_column_as_the_integers_do(
    rows: list[tuple[int, int]], size: int, wide: bool
) -> None:
    """``extend_key``: key * size + code + 1 per row, for int32 and int64 codes (-1: null)."""
    key = np.array([k for k, _ in rows], np.int64)
    codes = np.array([c for _, c in rows], np.int64 if wide else np.int32)
    extend_key(key, codes, size)
    assert key.tolist() == [k * size + c + 1 for k, c in rows]


def test_mixed_text_ts(tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_text(
        "ts,topic,payload\n"
        "2026-01-05T00:00:00Z,t,1\n"
        "1767571200.5,t,2\n"
        f"{T0 + 7},t,3\n"
        "2026-01-05T00:00:01,t,4\n"
        "yesterday,t,5\n"
        ",t,6\n"
    )
    (chunk,), counters = read(path)
    assert chunk.ts_ms.tolist() == [T0, T0 + 500, T0 + 7, T0 + 1000]
    assert chunk.payload == [b"1", b"2", b"3", b"4"]
    assert counters.messages[MALFORMED] == 2


# --- malformed input -------------------------------------------------------------------


def test_log_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "feed.log"
    path.write_bytes(
        b'\xef\xbb\xbf1767571200.001 city/a {"v": 1}\n'
        b"\n"
        b"1767571200.002 city/b\n"  # two fields
        b"notatime city/c 1\n"
        b"1767571200.003 city/\xff 1\n"  # non-UTF-8 topic
        b"1767571200.004 city/d \xff\xfe\r\n"  # payload bytes kept, CR stripped
        b"1767571200.005 city/e \n"  # empty payload
        b"2026-01-05T00:00:00.006Z city/f x y z"  # no final newline
    )
    chunks, counters = read(path, chunk_rows=2)
    assert messages(chunks) == [
        (T0 + 1, "city/a", b'{"v": 1}'),
        (T0 + 4, "city/d", b"\xff\xfe"),
        (T0 + 5, "city/e", b""),
        (T0 + 6, "city/f", b"x y z"),
    ]
    assert counters.messages[MALFORMED] == 3
    assert chunks[-1].position == path.stat().st_size


def test_jsonl_malformed_and_payload_kinds(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_bytes(
        b'{"ts": 1767571200, "topic": "a", "payload": {"v": 1.5, "u": "C"}}\n'
        b"{not json\n"
        b"[1, 2]\n"
        b'{"ts": 1767571200, "payload": "x"}\n'  # no topic
        b'{"ts": "soon", "topic": "a", "payload": "x"}\n'
        b'{"ts": true, "topic": "a", "payload": "x"}\n'
        b'{"ts": 1767571200, "topic": "a"}\n'  # no payload
        b'{"ts": 1767571200001, "topic": "b", "payload": 42}\n'
        b'{"ts": "2026-01-05T00:00:00.002Z", "topic": "c", "payload": "{\\"v\\": 2}"}\n'
        b'{"ts": 1767571200.003, "topic": "d", "payload": null}\n'
        b"\xff\n"
    )
    chunks, counters = read(path)
    assert messages(chunks) == [
        (T0, "a", b'{"v":1.5,"u":"C"}'),
        (T0 + 1, "b", b"42"),
        (T0 + 2, "c", b'{"v": 2}'),
        (T0 + 3, "d", b"null"),
    ]
    assert counters.messages[MALFORMED] == 7


def test_csv_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_bytes(
        b"ts,topic,payload,extra\n"
        b"1767571200,a,1,x\n"
        b"1767571200,b\n"  # too few fields
        b"1767571200,,2,x\n"  # empty topic
        b"1767571200,\xff,3,x\n"  # non-UTF-8 topic
        b'1767571201,c,"{""v"": 1,\n""w"": 2}",x\n'  # quoted newline
    )
    chunks, counters = read(path)
    assert messages(chunks) == [(T0, "a", b"1"), (T0 + 1000, "c", b'{"v": 1,\n"w": 2}')]
    assert counters.messages[MALFORMED] == 3


def test_tidy_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "feed.parquet"
    table = pa.table(
        {
            "ts": pa.array([T0, None, T0 + 2, T0 + 3, T0 + 4], pa.int64()),
            "device": ["a", "a", None, "", "b"],
            "metric": ["m", "m", "m", "m", None],
            "value": [1.0, 2.0, 3.0, 4.0, 5.0],
            "group": ["g", "g", "g", "g", ""],
        }
    )
    pq.write_table(table, path)
    (chunk,), counters = read(path)
    assert readings([chunk]) == [(T0, "a", "m", None, "g", 1.0)]
    assert counters.messages[MALFORMED] == 4
    bad_json = tmp_path / "feed.jsonl"
    bad_json.write_bytes(
        b'{"ts": 1767571200, "device": "a", "metric": "m", "value": 1, "kind": "air"}\n'
        b'{"ts": 1767571200, "device": "", "metric": "m", "value": 1}\n'
        b'{"ts": 1767571200, "device": "a", "value": 1}\n'
        b'{"ts": 1767571200, "device": "a", "metric": "m", "value": 1, "kind": 3}\n'
        b'{"ts": 1767571201, "device": "a", "metric": "m", "value": 2, "group": ""}\n'
    )
    (chunk,), counters = read(bad_json)
    assert readings([chunk]) == [
        (T0, "a", "m", "air", None, 1.0),
        (T0 + 1000, "a", "m", None, None, 2.0),
    ]
    assert chunk.pairs.to_list() == [("a", "m", "air", None), ("a", "m", None, None)]
    assert counters.messages[MALFORMED] == 3


def test_all_rows_malformed_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / "feed.parquet"
    pq.write_table(
        pa.table({"ts": pa.array([None], pa.int64()), "topic": ["t"], "payload": ["p"]}), path
    )
    chunks, counters = read(path)
    assert chunks == [] and counters.messages[MALFORMED] == 1


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        lambda p: pq.write_table(
            pa.table({"time": [1], "sensor": ["a"]}), p.with_suffix(".parquet")
        ),
        lambda p: p.with_suffix(".csv").write_text("time,sensor\n1,a\n"),
    ],
    ids=["parquet", "csv"],
)
def test_unknown_columns(tmp_path: Path, write: Callable[[Path], None]) -> None:
    write(tmp_path / "feed")
    (path,) = tmp_path.iterdir()
    with pytest.raises(ValueError, match=r"found columns \['sensor', 'time'\].*expected"):
        read_feed(path, Counters())


def test_unknown_jsonl_record(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_text('{"time": 1, "sensor": "a"}\n')
    with pytest.raises(ValueError, match=r"keys \['sensor', 'time'\]"):
        list(read_feed(path, Counters()))


def test_missing_file_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_feed(tmp_path / "nope.parquet", Counters())
    with pytest.raises(FileNotFoundError):
        read_feed(tmp_path / "nope.log", Counters())
    for name in ("e.csv", "e.jsonl", "e.log"):
        (tmp_path / name).write_bytes(b"")
        assert read(tmp_path / name)[0] == []
    (tmp_path / "h.csv").write_text("ts,topic,payload\n")
    assert read(tmp_path / "h.csv")[0] == []


def test_parquet_chunks_match_for_large_feed(tmp_path: Path) -> None:
    n = 50_000
    rng = np.random.default_rng(1)
    dev = rng.integers(0, 3000, n)
    path = tmp_path / "feed.parquet"
    pq.write_table(
        pa.table(
            {
                "ts": T0 + np.arange(n),
                "device": [f"d{i}" for i in dev],
                "metric": ["m"] * n,
                "value": rng.normal(size=n),
                "kind": ["air"] * n,
            }
        ),
        path,
        row_group_size=7000,
    )
    one = readings(read(path)[0])
    small = read(path, 999)[0]
    assert readings(small) == one
    assert max(len(c) for c in small) <= 999
    assert [r[1] for r in one] == [f"d{i}" for i in dev]
