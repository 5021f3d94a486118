"""Feed files -> chunks of MQTT messages or tidy readings.

Formats, chosen by suffix:

- ``.parquet``, ``.csv`` (header row), ``.jsonl`` / ``.ndjson``: a table of MQTT messages
  (``ts, topic, payload``) or of readings (``ts, device, metric, value`` [, ``kind``, ``group``]).
- anything else: a ``mosquitto_sub -F '%U %t %p'`` log, ``<unix time> <topic> <payload>``
  per line.

``ts`` may be a timestamp, epoch seconds or milliseconds (``times.number_to_ms``) or an
RFC 3339 string. Malformed rows are counted (``counters.MALFORMED``) and skipped. Chunks hold
at most ``chunk_rows`` rows; empty chunks are not yielded. ``chunk.position`` is the progress
so far and ``feed_size(path)`` the total, both in ``feed_unit(path)`` (rows for Parquet,
bytes otherwise).
"""

from __future__ import annotations

import csv
import errno
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from streamproc.counters import MALFORMED, Counters
from streamproc.kernels.feed import epoch_ms, extend_key, first_appearance
from streamproc.times import MS_CUTOFF, MS_PER_S, number_to_ms, parse_rfc3339_ms

MESSAGE_COLUMNS = ("ts", "topic", "payload")
TIDY_COLUMNS = ("ts", "device", "metric", "value")
TIDY_OPTIONAL = ("kind", "group")
MESSAGES, TIDY = "messages", "tidy"
EXPECTED = (
    "expected columns ts, topic, payload (MQTT messages) "
    "or ts, device, metric, value [, kind, group] (readings)"
)
MAX_ABS_MS = 2**62
_TS_MS_UTC = pa.timestamp("ms", tz="UTC")
_TS_MS = pa.timestamp("ms")
_UNIT_DIV = {"ms": 1, "us": 1_000, "ns": 1_000_000}

Pair = tuple[str, str, str | None, str | None]  # device, metric, kind, group


@dataclass
class MessageChunk:
    """MQTT messages in arrival order."""

    ts_ms: np.ndarray  # int64, receive time
    topic: list[str]
    payload: list[bytes]
    position: int = 0  # progress after this chunk, in feed_unit()

    def __len__(self) -> int:
        return len(self.ts_ms)


@dataclass
class Pairs:
    """Each (device, metric, kind, group) of a chunk once, in order of first appearance, as
    Arrow columns (no Python string per pair until one is asked for): device and metric as
    strings; kind and group as strings or dictionary-encoded strings, null where missing or
    empty."""

    device: pa.Array
    metric: pa.Array
    kind: pa.Array
    group: pa.Array

    @staticmethod
    def of(pairs: list[Pair]) -> Pairs:
        columns = zip(*pairs, strict=True) if pairs else ((), (), (), ())
        return Pairs(*(pa.array(list(c), pa.string()) for c in columns))

    def __len__(self) -> int:
        return len(self.device)

    def take(self, rows: np.ndarray) -> list[Pair]:
        """Pairs ``rows``, as tuples."""
        at = pa.array(rows)
        # a dictionary array's to_pylist is ~30x slower than a plain one's
        cols = (
            _plain(c.take(at)).to_pylist()
            for c in (self.device, self.metric, self.kind, self.group)
        )
        return list(zip(*cols, strict=True))

    def to_list(self) -> list[Pair]:
        return self.take(np.arange(len(self)))


@dataclass
class TidyChunk:
    """Readings; row ``i`` belongs to pair ``pair_code[i]`` of ``pairs``."""

    ts_ms: np.ndarray  # int64, event time
    value: np.ndarray  # float64, NaN where not numeric
    pair_code: np.ndarray  # int32, index into pairs
    pairs: Pairs
    has_kind: bool  # the feed has a kind column / key
    has_group: bool
    position: int = 0

    def __len__(self) -> int:
        return len(self.ts_ms)

    def _column(self, j: int) -> list:
        names = [p[j] for p in self.pairs.to_list()]
        return [names[c] for c in self.pair_code.tolist()]

    @property
    def device(self) -> list[str]:
        return self._column(0)

    @property
    def metric(self) -> list[str]:
        return self._column(1)

    @property
    def kind(self) -> list[str | None] | None:
        return self._column(2) if self.has_kind else None

    @property
    def group(self) -> list[str | None] | None:
        return self._column(3) if self.has_group else None


Chunk = MessageChunk | TidyChunk


def feed_format(path: Path) -> str:
    """``parquet``, ``csv``, ``jsonl`` or ``log``, from the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "log"


def feed_unit(path: Path) -> str:
    """Unit of ``feed_size`` and ``chunk.position``: ``rows`` or ``bytes``."""
    return "rows" if feed_format(path) == "parquet" else "bytes"


def feed_size(path: Path) -> int | None:
    """Total progress units of the feed (rows for Parquet, bytes otherwise); None if unknown."""
    path = Path(path)
    if feed_format(path) == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    size = path.stat().st_size
    return size if path.is_file() else None


def read_feed(
    path: Path, counters: Counters, chunk_rows: int = 65536, tidy_rows: int | None = None
) -> Iterator[Chunk]:
    """Chunks of a feed file (see the module docstring); ``tidy_rows`` (default
    ``chunk_rows``) for the readings of a Parquet or CSV feed, which stay columnar.

    Raises FileNotFoundError for a missing file and ValueError for a Parquet or CSV file
    with unknown columns (at call time) or a JSON Lines file whose first record has
    neither shape (when reached).
    """
    path = Path(path)
    for name, rows in (("chunk_rows", chunk_rows), ("tidy_rows", tidy_rows)):
        if rows is not None and rows < 1:
            raise ValueError(f"{name} must be >= 1, got {rows}")
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    fmt = feed_format(path)
    if fmt == "parquet":
        pf = pq.ParquetFile(path)
        shape, cols = _shape(pf.schema_arrow.names, path)
        if shape == TIDY:  # names as read from the file's dictionaries: no re-hashing
            schema = pf.schema_arrow
            names = [c for c in cols[1:] if c != "value" and _is_text(schema.field(c).type)]
            pf = pq.ParquetFile(path, read_dictionary=names)
            chunk_rows = tidy_rows or chunk_rows
        return _parquet_chunks(pf, shape, cols, counters, chunk_rows, path.name)
    if fmt == "csv":
        header = _csv_header(path)
        if header is None:
            return iter(())
        shape, cols = _shape(header, path)
        if shape == TIDY:
            chunk_rows = tidy_rows or chunk_rows
        return _csv_chunks(path, shape, cols, counters, chunk_rows)
    if fmt == "jsonl":
        return _jsonl_chunks(path, counters, chunk_rows)
    return _log_chunks(path, counters, chunk_rows)


def _shape(names: Iterable[str], path: Path) -> tuple[str, list[str]]:
    have = set(names)
    if set(MESSAGE_COLUMNS) <= have:
        return MESSAGES, list(MESSAGE_COLUMNS)
    if set(TIDY_COLUMNS) <= have:
        return TIDY, [*TIDY_COLUMNS, *(c for c in TIDY_OPTIONAL if c in have)]
    raise ValueError(f"{path}: unknown feed: found columns {sorted(have)}; {EXPECTED}")


# --- Parquet and CSV: columnar ------------------------------------------------------------


def _parquet_chunks(
    pf: pq.ParquetFile, shape: str, cols: list[str], counters: Counters, chunk_rows: int, name: str
) -> Iterator[Chunk]:
    done = 0
    for batch in _row_group_batches(pf, chunk_rows, cols):
        chunk = _arrow_chunk(batch, shape, counters, name, done)
        done += batch.num_rows
        if chunk is not None:
            chunk.position = done
            yield chunk


def _row_group_batches(
    pf: pq.ParquetFile, chunk_rows: int, cols: list[str]
) -> Iterator[pa.RecordBatch]:
    """Each row group in as few batches of about equal size as ``chunk_rows`` allows. Over a
    whole file, pyarrow cuts batches at multiples of the batch size and, with columns read as
    dictionaries (a tidy feed's names), again where a row group ends: groups of 1M read in
    batches of 2**20 would come as 1M, 48,576, 951,424, 97,152, ... rows, half of them small."""
    for i in range(pf.num_row_groups):
        rows = pf.metadata.row_group(i).num_rows
        if rows:
            size = -(-rows // -(-rows // chunk_rows))
            yield from pf.iter_batches(batch_size=size, row_groups=[i], columns=cols)


def _csv_header(path: Path) -> list[str] | None:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return next(csv.reader(f), None)


def _csv_chunks(
    path: Path, shape: str, cols: list[str], counters: Counters, chunk_rows: int
) -> Iterator[Chunk]:
    def invalid_row(row: pacsv.InvalidRow) -> str:
        where = f"{path.name}: line {row.number}" if row.number is not None else path.name
        counters.message(
            MALFORMED,
            f"{where}: {row.actual_columns} fields, expected {row.expected_columns}: "
            f"{row.text[:80]!r}",
        )
        return "skip"

    size = path.stat().st_size
    done = 0
    with pa.OSFile(str(path)) as src:
        reader = pacsv.open_csv(
            src,
            read_options=pacsv.ReadOptions(block_size=4 << 20),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.binary() for c in cols}, include_columns=cols
            ),
        )
        for batch in reader:
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                chunk = _arrow_chunk(part, shape, counters, path.name, done)
                done += part.num_rows
                if chunk is not None:
                    chunk.position = min(src.tell(), size)
                    yield chunk


def _arrow_chunk(
    batch: pa.RecordBatch, shape: str, counters: Counters, name: str, first_row: int
) -> Chunk | None:
    n = batch.num_rows
    if n == 0:
        return None
    ts, ts_ok = _ts_ms(batch.column("ts"))
    checks: list[tuple[np.ndarray, str]] = [(ts_ok, "missing or unparseable ts")]
    if shape == MESSAGES:
        topic, topic_ok = _strings(batch.column("topic"))
        payload, payload_ok = _payloads(batch.column("payload"))
        checks += [(topic_ok, "missing, empty or non-UTF-8 topic"), (payload_ok, "no payload")]
        keep = _count_bad(counters, checks, name, first_row)
        topics, payloads = cast(list[str], topic), cast(list[bytes], payload)  # None rows: bad
        if keep is None:
            return MessageChunk(ts, topics, payloads)
        if not len(keep):
            return None
        il = keep.tolist()
        return MessageChunk(ts[keep], [topics[i] for i in il], [payloads[i] for i in il])

    names = {
        c: _codes(batch.column(c), optional=c in TIDY_OPTIONAL)
        for c in (*TIDY_COLUMNS[1:3], *TIDY_OPTIONAL)
        if c in batch.schema.names
    }
    for c, (codes, _, bad) in names.items():
        if bad[:-1].any() or (bad[-1] and len(codes) and codes.min() < 0):  # else: all good
            what = "non-UTF-8" if c in TIDY_OPTIONAL else "missing, empty or non-UTF-8"
            checks.append((~bad[codes], f"{what} {c}"))
    keep = _count_bad(counters, checks, name, first_row)
    value = _values(batch.column("value"))
    if keep is not None:
        if not len(keep):
            return None
        ts, value = ts[keep], value[keep]
        names = {c: (codes[keep], d, bad) for c, (codes, d, bad) in names.items()}
    pair_code, pairs = _pairs(names)
    return TidyChunk(ts, value, pair_code, pairs, "kind" in names, "group" in names)


def _count_bad(
    counters: Counters, checks: list[tuple[np.ndarray, str]], name: str, first_row: int
) -> np.ndarray | None:
    """Count rows failing a check (once, first reason); None if all pass, else rows kept."""
    ok = np.logical_and.reduce([c for c, _ in checks])
    if ok.all():
        return None
    counted = np.zeros(len(ok), bool)
    for check, reason in checks:
        for i in np.flatnonzero(~check & ~counted).tolist():
            counters.message(MALFORMED, f"{name}: row {first_row + i + 1}: {reason}")
        counted |= ~check
    return np.flatnonzero(ok)


def _plain(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _is_text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _valid(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)


def _ts_ms(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A ts column -> (int64 epoch ms, ok mask)."""
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_date(t):
        arr, t = arr.cast(_TS_MS), _TS_MS
    if pa.types.is_timestamp(t):
        raw = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy()
        ms = raw * MS_PER_S if t.unit == "s" else raw // _UNIT_DIV[t.unit]
        return ms.astype(np.int64), _valid(arr)
    if pa.types.is_integer(t):
        raw = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy()
        ms, ok = np.empty(len(raw), np.int64), np.empty(len(raw), bool)
        epoch_ms(raw, _valid(arr), MAX_ABS_MS, ms, ok)
        return ms, ok
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return _numbers_to_ms(_floats(arr))
    if _is_text(t):
        return _text_ts_ms(arr)
    raise ValueError(f"column 'ts' has unsupported type {t}")


def _floats(arr: pa.Array) -> np.ndarray:
    return np.asarray(
        pc.fill_null(arr.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False), np.float64
    )


def _numbers_to_ms(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``times.number_to_ms``; non-finite numbers are not ok."""
    ok = np.isfinite(x)
    x = np.where(ok, x, 0.0)
    ms = np.where(np.abs(x) >= MS_CUTOFF, np.trunc(x), np.round(x * MS_PER_S))
    ok &= np.abs(ms) < MAX_ABS_MS
    return np.where(ok, ms, 0.0).astype(np.int64), ok


def _text_ts_ms(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    try:  # all numbers
        return _numbers_to_ms(_floats(arr))
    except pa.ArrowException:
        pass
    for target in (_TS_MS_UTC, _TS_MS):  # all RFC 3339 at ms precision, with / without offset
        try:
            raw = pc.fill_null(arr.cast(target).cast(pa.int64()), 0).to_numpy()
            return raw.astype(np.int64), _valid(arr)
        except pa.ArrowException:
            pass
    parsed = [_text_ts(v) for v in arr.to_pylist()]
    ok = np.array([v is not None for v in parsed], bool)
    return np.array([0 if v is None else v for v in parsed], np.int64), ok


def _text_ts(v: str | bytes | None) -> int | None:
    """Epoch seconds / ms or RFC 3339 text -> epoch ms; None if unparseable."""
    if v is None:
        return None
    try:
        s = v.decode() if isinstance(v, bytes) else v
        x = float(s)
    except UnicodeDecodeError:
        return None
    except ValueError:
        try:
            ms = parse_rfc3339_ms(s.strip())
        except (ValueError, OverflowError):
            return None
        return ms if abs(ms) < MAX_ABS_MS else None
    return _number_ms(x)


def _number_ms(x: float) -> int | None:
    if not math.isfinite(x):
        return None
    ms = number_to_ms(x)
    return ms if abs(ms) < MAX_ABS_MS else None


def _values(arr: pa.Array) -> np.ndarray:
    """A value column -> float64, NaN where null or not a number."""
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return _floats(arr)
    if _is_text(t):
        try:
            return _floats(arr)
        except pa.ArrowException:
            return np.array([_text_float(v) for v in arr.to_pylist()], np.float64)
    return np.full(len(arr), math.nan)


def _text_float(v: str | bytes | None) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except ValueError:
        return math.nan


def _strings(arr: pa.Array) -> tuple[list[str | None], np.ndarray]:
    """A text column -> (values, ok mask: present, non-empty, valid UTF-8)."""
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        try:
            arr = arr.cast(pa.large_string() if pa.types.is_large_binary(t) else pa.string())
        except pa.ArrowInvalid:
            values = [_decode(v) for v in arr.to_pylist()]
            return values, np.array([bool(v) for v in values], bool)
    elif not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        arr = arr.cast(pa.string())
    ok = pc.fill_null(pc.greater(pc.binary_length(arr), 0), False).to_numpy(zero_copy_only=False)
    return arr.to_pylist(), np.asarray(ok, bool)


def _decode(v: bytes | None) -> str | None:
    if v is None:
        return None
    try:
        return v.decode()
    except UnicodeDecodeError:
        return None


def _payloads(arr: pa.Array) -> tuple[list[bytes | None], np.ndarray]:
    """A payload column -> (bytes, ok mask: not null); non-text values as JSON."""
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_string(t):
        arr = arr.cast(pa.binary())
    elif pa.types.is_large_string(t):
        arr = arr.cast(pa.large_binary())
    elif not _is_text(t):
        values = [None if v is None else orjson.dumps(v) for v in arr.to_pylist()]
        return values, _valid(arr)
    return arr.to_pylist(), _valid(arr)


_Names = tuple[np.ndarray, pa.Array, np.ndarray]


def _codes(arr: pa.Array | pa.ChunkedArray, optional: bool) -> _Names:
    """Dictionary-encode a name column -> (codes, -1 where null; dictionary as strings;
    bad: per code, plus a last entry for null, whether the row is malformed).

    Required names are bad when null, empty or not UTF-8; optional ones only when not UTF-8,
    and empty ones become null (None) in the dictionary.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_dictionary(arr.type):
        if not _is_text(arr.type):
            arr = arr.cast(pa.string())
        arr = pc.dictionary_encode(arr)
    codes = pc.fill_null(arr.indices, -1).to_numpy(zero_copy_only=False)
    codes = codes.astype(np.result_type(codes.dtype, np.int32), copy=False)  # room for codes + 1
    d = arr.dictionary
    invalid = np.zeros(len(d), bool)
    if not (pa.types.is_string(d.type) or pa.types.is_large_string(d.type)):
        try:
            d = d.cast(pa.string())
        except pa.ArrowInvalid:
            values = [_decode(v) for v in d.to_pylist()]
            invalid = np.array([v is None for v in values], bool) & _valid(d)
            d = pa.array(values, pa.string())
    empty = np.asarray(
        pc.fill_null(pc.equal(pc.binary_length(d), 0), False).to_numpy(zero_copy_only=False), bool
    )
    if optional:
        if empty.any():
            d = pc.if_else(pa.array(empty), pa.scalar(None, d.type), d)
        bad = np.append(invalid, False)
    else:
        bad = np.append(invalid | empty | ~_valid(d), True)
    return codes, d, bad


def _pairs(names: dict[str, _Names]) -> tuple[np.ndarray, Pairs]:
    """Unique (device, metric, kind, group) per row -> (int32 codes, pairs by first appearance)."""
    cols = [names[c] for c in (*TIDY_COLUMNS[1:3], *TIDY_OPTIONAL) if c in names]
    n = len(cols[0][0])
    key = np.zeros(n, np.int64)
    card = 1
    for codes, d, _ in cols:
        size = len(d) + 1
        if card * size >= MAX_ABS_MS:
            key, _, card = _dense(key, card)
        extend_key(key, codes, size)
        card *= size
    code, rows, _ = _dense(key, card)

    def column(c: str) -> pa.Array:
        if c not in names:
            return pa.nulls(len(rows), pa.string())
        codes, d, _ = names[c]
        at = codes[rows]
        idx = pa.array(at, mask=at < 0)
        # kind and group keep their few values as a dictionary: checked once per value
        return pa.DictionaryArray.from_arrays(idx, d) if c in TIDY_OPTIONAL else d.take(idx)

    pairs = Pairs(*(column(c) for c in (*TIDY_COLUMNS[1:3], *TIDY_OPTIONAL)))
    return code.astype(np.int32), pairs


def _dense(key: np.ndarray, card: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense codes 0.. for ``key`` (0 <= key < card) in order of first appearance, the row of
    each code's first appearance, and their count: through a table of ``card`` entries when
    that is small against the keys, else hash based."""
    if card <= 4 * len(key) + 1024:
        out, first = np.empty(len(key), np.int64), np.empty(len(key), np.int64)
        count = first_appearance(key, np.full(card, -1, np.int64), out, first)
        return out, first[:count], count
    enc = pc.dictionary_encode(pa.array(key))
    code = enc.indices.to_numpy().astype(np.int64)
    top = np.maximum.accumulate(code)
    first = np.flatnonzero(np.concatenate(([True], top[1:] > top[:-1]))) if len(code) else code
    return code, first, len(enc.dictionary)


# --- text formats: one record per line ------------------------------------------------------


def _lines(f: BinaryIO, block: int = 4 << 20) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line without its newline, byte offset after it); skips a UTF-8 BOM."""
    rest = b""
    lineno = 0
    offset = 0
    first = True
    while data := f.read(block):
        if first:
            first = False
            if data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
                offset = 3
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            lineno += 1
            offset += len(line) + 1
            yield lineno, line, offset
    if rest:
        yield lineno + 1, rest, offset + len(rest)


def _line_reporter(path: Path, counters: Counters) -> Callable[[int, str], None]:
    """Counts a malformed line of a text feed, naming the file and line."""

    def bad(lineno: int, reason: str) -> None:
        counters.message(MALFORMED, f"{path.name}:{lineno}: {reason}")

    return bad


def _log_chunks(path: Path, counters: Counters, chunk_rows: int) -> Iterator[Chunk]:
    raw: list[float] = []  # epoch s or ms as written
    exact: list[tuple[int, int]] = []  # (row, ms) for RFC 3339 times
    topics: list[str] = []
    payloads: list[bytes] = []

    def chunk(position: int) -> MessageChunk:
        ms, _ = _numbers_to_ms(np.array(raw, np.float64))
        for row, t in exact:
            ms[row] = t
        out = MessageChunk(ms, topics.copy(), payloads.copy(), position)
        for x in (raw, exact, topics, payloads):
            x.clear()
        return out

    bad = _line_reporter(path, counters)

    position = 0
    with open(path, "rb") as f:
        for lineno, line, position in _lines(f):
            parts = line.split(b" ", 2)
            if len(parts) < 3:
                if line and not line.isspace():
                    bad(lineno, "expected '<unix time> <topic> <payload>'")
                continue
            tok, topic_bytes, payload = parts
            try:
                x = float(tok)
            except ValueError:
                t = _text_ts(tok)
                if t is None:
                    bad(lineno, f"unparseable time {tok[:40]!r}")
                    continue
                exact.append((len(raw), t))
                x = 0.0
            if not abs(x) < MAX_ABS_MS:  # also NaN
                bad(lineno, f"unparseable time {tok[:40]!r}")
                continue
            try:
                topic = topic_bytes.decode()
            except UnicodeDecodeError:
                topic = ""
            if not topic:
                bad(lineno, "empty or non-UTF-8 topic")
                continue
            raw.append(x)
            topics.append(topic)
            payloads.append(payload[:-1] if payload.endswith(b"\r") else payload)
            if len(raw) >= chunk_rows:
                yield chunk(position)
    if raw:
        yield chunk(position)


def _jsonl_chunks(path: Path, counters: Counters, chunk_rows: int) -> Iterator[Chunk]:
    shape = ""  # decided by the first JSON object
    ts: list[int] = []
    topics: list[str] = []
    payloads: list[bytes] = []
    values: list[float] = []
    codes: list[int] = []
    pair_index: dict[Pair, int] = {}
    seen = {"kind": False, "group": False}

    def chunk(position: int) -> Chunk:
        out: Chunk
        if shape == MESSAGES:
            out = MessageChunk(np.array(ts, np.int64), topics.copy(), payloads.copy(), position)
        else:
            out = TidyChunk(
                np.array(ts, np.int64),
                np.array(values, np.float64),
                np.array(codes, np.int32),
                Pairs.of(list(pair_index)),
                seen["kind"],
                seen["group"],
                position,
            )
        for x in (ts, topics, payloads, values, codes, pair_index):
            x.clear()
        seen.update(kind=False, group=False)
        return out

    bad = _line_reporter(path, counters)

    position = 0
    with open(path, "rb") as f:
        for lineno, line, position in _lines(f):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                if line and not line.isspace():
                    bad(lineno, "invalid JSON")
                continue
            if not isinstance(obj, dict):
                bad(lineno, "not a JSON object")
                continue
            if not shape:
                shape = _json_shape(obj, path)
            t = _json_ts(obj.get("ts"))
            if t is None:
                bad(lineno, "missing or unparseable ts")
                continue
            if shape == MESSAGES:
                topic = obj.get("topic")
                if not isinstance(topic, str) or not topic:
                    bad(lineno, "missing or empty topic")
                    continue
                if "payload" not in obj:
                    bad(lineno, "missing payload")
                    continue
                p = obj["payload"]
                payloads.append(
                    p.encode("utf-8", "surrogatepass") if isinstance(p, str) else orjson.dumps(p)
                )
                topics.append(topic)
            else:
                key = _json_pair(obj, seen)
                if isinstance(key, str):
                    bad(lineno, key)
                    continue
                values.append(_json_value(obj.get("value")))
                codes.append(pair_index.setdefault(key, len(pair_index)))
            ts.append(t)
            if len(ts) >= chunk_rows:
                yield chunk(position)
    if ts:
        yield chunk(position)


def _json_pair(obj: dict, seen: dict[str, bool]) -> Pair | str:
    """(device, metric, kind, group) of a reading, or why it is malformed."""
    device, metric = obj.get("device"), obj.get("metric")
    if not isinstance(device, str) or not device:
        return "missing or empty device"
    if not isinstance(metric, str) or not metric:
        return "missing or empty metric"
    kind, group = obj.get("kind"), obj.get("group")
    if kind is not None and not isinstance(kind, str):
        return "kind is not a string"
    if group is not None and not isinstance(group, str):
        return "group is not a string"
    seen["kind"] = seen["kind"] or "kind" in obj
    seen["group"] = seen["group"] or "group" in obj
    return (device, metric, kind or None, group or None)


def _json_shape(obj: dict, path: Path) -> str:
    if "topic" in obj or "payload" in obj:
        return MESSAGES
    if "device" in obj or "metric" in obj:
        return TIDY
    raise ValueError(f"{path}: unknown feed: first record has keys {sorted(obj)}; {EXPECTED}")


def _json_ts(v: object) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        try:
            return _number_ms(float(v))
        except OverflowError:
            return None
    if isinstance(v, str):
        return _text_ts(v)
    return None


def _json_value(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return math.nan
    try:
        return float(v)
    except OverflowError:
        return math.nan
