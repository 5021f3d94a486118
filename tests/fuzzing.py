"""What the decoder fuzzers share: Hypothesis strategies for odd topics and payloads, seed
payloads, and the check that every message is accounted for.

``Harness.check`` decodes one message and raises ``AssertionError`` unless: nothing escaped to
the decoder's last-resort guard; the message got exactly one result; it added readings iff the
result is ``ok``; every reading the payload carries (by the forms in ``streamproc.decode``) was
either appended or counted once as a drop; and every appended reading is usable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from streamproc import counters as cn
from streamproc import decode as dec
from streamproc.batch import BatchBuilder
from streamproc.config import ChannelSettings, InputSettings, Settings
from streamproc.counters import Counters
from streamproc.registry import Registry
from streamproc.topics import valid_id

RECV = 1_800_000_000_000  # a receive time, epoch ms
T0 = 1_767_571_200  # an event time, epoch s
SETTINGS = Settings(
    input=InputSettings(
        patterns=(
            "city/{group}/{kind}/{device}/{metric}",
            "city/{group}/{kind}/{device}",
            "gw/{kind}/+",
        ),
        max_payload_bytes=4096,
    ),
    channels=ChannelSettings(max_channels=8),
)

# ---------------------------------------------------------------- valid messages: the seeds

SEEDS: list[tuple[str, bytes]] = [
    ("city/north/air/st1/pm25", b"12.5"),
    ("city/north/air/st1/pm25", b'{"ts": %d, "value": 12.5}' % T0),
    ("city/north/air/st1/pm25", b'{"ts": "2026-01-05T12:00:00Z", "value": 3}'),
    ("city/north/air/st1", b'{"ts": %d, "pm25": 35.2, "no2": 41}' % (T0 * 1000)),
    ("city/north/air/st1", b'{"metric": "no2", "value": 4}'),
    (
        "city/north/air/gw1",
        b'{"ts": %d, "readings": [{"pm25": 1}, {"device": "st2", "no2": 2}]}' % T0,
    ),
    ("city/north/air/gw1", b'[{"device": "a", "pm25": 1}, {"no2": 2, "ts": %d}]' % T0),
    (
        "city/south/traffic/gw2",
        b'{"readings": [{"device": "x1", "kind": "pipe", "group": "w", "pressure": 2.5}]}',
    ),
    (
        "city/north/air/st1",
        b'[{"bn": "urn:dev:1:", "bt": %d, "n": "temp", "v": 23.1},'
        b' {"n": "hum", "v": 40, "t": 60}, {"bn": "st5/", "bv": 100, "n": "p", "v": 1.5}]' % T0,
    ),
    ("city/north/air/st1", b'[{"n": "st2/pm25", "v": 1}, {"n": "no2", "v": 2, "t": -30}]'),
    ("gw/air/gw7", b'{"readings": [{"device": "a", "pm25": 1}]}'),
    ("city/north/pipe/p1", b""),
]

# ---------------------------------------------------------------- strategies


def _each_alike(*strategies: st.SearchStrategy) -> st.SearchStrategy:
    """One of the strategies, each as likely (``|`` weighs the branches of each operand)."""
    return st.sampled_from(strategies).flatmap(lambda s: s)


ODD_SEGMENTS = (
    "+",
    "#",
    "a+b",
    "a#",
    "",
    " ",
    "a b",
    "\x00",
    "\t",
    "\x7f",
    "\u2028",
    "é",
    "x" * 129,
    "st1/pm25",
    "ufo",
    "..",
)
SEGMENTS = st.sampled_from(("north", "st1", "st2", "pm25", "no2", "gw1", *ODD_SEGMENTS)) | st.text(
    max_size=6
)
KINDS = st.sampled_from(("air", "traffic", "pipe", "ufo", "AIR", "+", "#", "")) | st.text(
    max_size=4
)
TOPICS = (
    st.sampled_from([t for t, _ in SEEDS])
    | st.builds("city/{}/{}/{}".format, SEGMENTS, KINDS, SEGMENTS)
    | st.builds("city/{}/{}/{}/{}".format, SEGMENTS, KINDS, SEGMENTS, SEGMENTS)
    | st.builds("gw/{}/{}".format, KINDS, SEGMENTS)
    | st.lists(SEGMENTS, max_size=7).map("/".join)
    | st.text(max_size=60)
)
NUMBERS = (
    st.integers()
    | st.floats()
    | st.sampled_from([T0, T0 * 1000, T0 + 0.5, 2**28, -1, -5, 0, 2**53 + 1, 2**63, 2**64])
    | st.sampled_from([1e20, 1e300, -1e300, 1.7e308, 5e-324, 10**400, -(10**400), 10**308])
    | st.sampled_from([math.nan, math.inf, -math.inf])
)
TIMES = NUMBERS | st.sampled_from(
    [
        "2026-01-05T12:00:00Z",
        "2026-01-05T12:00:00.5+01:00",
        "1999-12-31",
        "2026-99-99",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-23:59",
        "",
        "soon",
        "1e9",
        "\x00",
    ]
)
IDS = (
    SEGMENTS
    | st.sampled_from(["air", "traffic", "pipe", "urn:d:x:", "st5/", "a/b/"])
    | st.integers(-2, 2)
    | st.none()
    | st.booleans()
)
VALUES: st.SearchStrategy[Any] = (
    NUMBERS | st.none() | st.booleans() | st.text(max_size=4) | st.just([1]) | st.just({})
)
NOT_METRICS = dec.RESERVED | dec.SENML_KEYS | {"value", "metric", "readings"}
METRICS = (st.sampled_from(["pm25", "no2", "o3", "flow", "pressure"]) | SEGMENTS).filter(
    lambda k: k not in NOT_METRICS
)
FIELDS = {"ts": TIMES, "device": IDS, "kind": IDS, "group": IDS}
RECORDS = st.builds(
    lambda fields, metrics: {**fields, **metrics},
    st.fixed_dictionaries({}, optional=FIELDS),
    st.dictionaries(METRICS, VALUES, max_size=3)
    | st.fixed_dictionaries({"value": VALUES}, optional={"metric": IDS}),
)
SENML_RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "bn": IDS,
        "n": IDS,
        "bt": TIMES,
        "t": TIMES,
        **{k: VALUES for k in ("bv", "v", "vs", "vb", "vd", "s")},
        "bu": st.just("Cel"),
        "bver": st.just(10),
    },
)
KEYS = st.sampled_from(sorted(NOT_METRICS | {"n", "v", "t", "vs", "s", "pm25", "no2", "a/b", ""}))
SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=20,
)
DOCUMENTS = _each_alike(
    RECORDS,
    st.builds(
        lambda f, entries: {**f, "readings": entries},
        st.fixed_dictionaries({}, optional=FIELDS),
        st.lists(RECORDS | VALUES, max_size=4) | VALUES,
    ),
    st.lists(RECORDS | VALUES, max_size=4),
    st.lists(SENML_RECORDS | VALUES, min_size=1, max_size=5),
    VALUES,
    JSON,
)


def _mangle(payload: bytes, at: int, junk: bytes) -> bytes:
    """A seed payload with junk written over it at one place."""
    i = at % (len(payload) + 1)
    return payload[:i] + junk + payload[i + len(junk) :]


PAYLOADS = _each_alike(  # JSON documents twice: a third of the payloads
    DOCUMENTS.map(lambda d: json.dumps(d).encode()),
    DOCUMENTS.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    st.builds(
        _mangle, st.sampled_from([p for _, p in SEEDS]), st.integers(0, 200), st.binary(max_size=4)
    ),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
    | st.integers(4090, 4100).map(lambda n: b" " * (n - 1) + b"1"),
)
RECV_TIMES = st.sampled_from([RECV, 0, -(10**15), 10**15, 2**62]) | st.integers(0, 2**45)

# ---------------------------------------------------------------- the check


class _Counters(Counters):
    """Counters that keep the last message's detail (it names an escaped exception)."""

    detail = ""

    def message(self, result: str, detail: str = "") -> None:
        self.detail = detail
        super().message(result, detail)


class Harness:
    """A decoder with its registry, counters and builder, and the accounting check."""

    def __init__(self, settings: Settings = SETTINGS):
        self.settings = settings
        self.registry = Registry(settings.channels)
        self.counters = _Counters()
        self.builder = BatchBuilder()
        self.decoder = dec.Decoder(settings, self.registry, self.counters, self.builder)

    def check(self, topic: str, payload: bytes, recv_ms: int = RECV) -> str:
        """Decode one message, assert that it is accounted for; returns its result."""
        d, c, b = self.decoder, self.counters, self.builder
        errors, messages = d.internal_errors, c.messages.copy()
        n0, dropped0 = len(b), c.dropped.total()
        d.decode(topic, payload, recv_ms)
        assert d.internal_errors == errors, f"an exception escaped: {c.detail}"
        new = c.messages - messages
        assert new.total() == 1, f"results {dict(new)} for one message"
        (result,) = new
        added, dropped = len(b) - n0, c.dropped.total() - dropped0
        assert (added > 0) == (result == cn.OK), f"{result} with {added} readings"
        expected = carried(d, topic, payload)
        if expected is None:
            assert result in (cn.MALFORMED, cn.UNKNOWN, cn.REJECTED, cn.EMPTY), result
            assert added == dropped == 0, f"{result}: {added} appended, {dropped} dropped"
        elif result == cn.MALFORMED:  # a bad top-level ts, device, kind or group
            assert added == dropped == 0, f"malformed: {added} appended, {dropped} dropped"
            assert isinstance(_parse(payload), dict)
        else:
            assert added + dropped == expected, f"{expected} readings: {added} + {dropped} drops"
        lo, hi = d.min_ts_ms, min(dec.MAX_TS_MS, recv_ms + d.max_future_ms)
        for i in range(n0, len(b)):
            assert 0 <= b.idx[i] < self.registry.n
            assert lo <= b.ts[i] <= hi, b.ts[i]
            assert math.isfinite(b.val[i])
        assert self.registry.n <= self.settings.channels.max_channels
        for ch in range(self.registry.n):
            assert all(valid_id(name) for name in self.registry.describe(ch).values())
        return result


def carried(decoder: dec.Decoder, topic: str, payload: bytes) -> int | None:
    """Readings a message carries by the documented forms; None when it is refused whole
    (too large, unknown topic, empty, not JSON, wrong shape)."""
    if len(payload) > decoder.max_payload_bytes or not payload:
        return None
    fields = decoder.topic_fields(topic)
    doc = _parse(payload)
    if isinstance(fields, str) or doc is None:
        return None
    if isinstance(doc, dict):
        if "readings" in doc:
            entries = doc["readings"]
            return sum(map(_entry, entries)) if isinstance(entries, list) else None
        return _entry(doc)
    if isinstance(doc, list):
        if not doc:
            return 0
        if not isinstance(doc[0], dict):
            return None
        if dec.SENML_KEYS.isdisjoint(doc[0]):
            return sum(map(_entry, doc))
        return sum(map(_senml_record, doc))
    is_number = type(doc) is int or type(doc) is float
    return 1 if is_number and fields[3] is not None else None


def _parse(payload: bytes) -> Any:
    """The payload as JSON (NaN, Infinity and big numbers allowed), or None."""
    try:
        return json.loads(str(payload, "utf-8"))
    except (ValueError, RecursionError):
        return None


def _entry(e: Any) -> int:
    """A gateway entry or top-level object: one reading for ``value``, else one per metric."""
    if not isinstance(e, dict):
        return 1
    return 1 if "value" in e else sum(1 for k in e if k not in dec.RESERVED)


def _senml_record(rec: Any) -> int:
    """A SenML record carries a reading if it has a value of any type."""
    if not isinstance(rec, dict):
        return 1
    return int("v" in rec or not {"vs", "vb", "vd", "s"}.isdisjoint(rec))


# ---------------------------------------------------------------- fuzz targets

GOOD_TOPICS = st.sampled_from([t for t, _ in SEEDS])


def decode_document(topic: str, doc: Any, recv_ms: int) -> int:
    """A JSON document on a topic, twice (the second time its channels exist); returns the
    number of messages decoded."""
    h = Harness()
    payload = json.dumps(doc).encode()
    h.check(topic, payload, recv_ms)
    h.check(topic, payload, recv_ms)
    return 2


def decode_senml(records: list[Any], recv_ms: int) -> int:
    """A SenML pack on a device topic, a gateway topic and a metric topic."""
    h = Harness()
    for topic in ("city/north/air/st1", "gw/air/g1", "city/north/air/st1/pm25"):
        h.check(topic, json.dumps(records).encode(), recv_ms)
    return 3


def decode_raw(topic: str, payload: bytes) -> int:
    """Any topic, any bytes."""
    Harness().check(topic, payload)
    return 1


def decode_stream(messages: list[tuple[str, bytes, int]]) -> int:
    """Messages through one decoder in order (8 channels: a long stream reaches capacity)."""
    h = Harness()
    for topic, payload, recv_ms in messages:
        h.check(topic, payload, recv_ms)
    return len(messages)


# name: (target, the strategies of its arguments)
TARGETS: dict[str, tuple[Callable[..., int], tuple[st.SearchStrategy[Any], ...]]] = {
    "documents": (decode_document, (_each_alike(GOOD_TOPICS, TOPICS), DOCUMENTS, RECV_TIMES)),
    "senml": (decode_senml, (st.lists(SENML_RECORDS | VALUES, min_size=1, max_size=6), RECV_TIMES)),
    "raw": (decode_raw, (st.text(max_size=80), st.binary(max_size=300))),
    "streams": (decode_stream, (st.lists(st.tuples(TOPICS, PAYLOADS, RECV_TIMES), max_size=12),)),
}
