"""MQTT topic + payload bytes -> readings appended to a ``BatchBuilder``; shared by every source.

Payload forms (the topic supplies kind, and group / device / metric where its pattern has them):

1. ``{metric}`` topic: ``{"ts": t, "value": 12.5}`` or a bare JSON number (time = receive time).
2. Multi-metric object: ``{"ts": t, "pm25": 35.2, "no2": 41}``; every key except ``ts``,
   ``device``, ``kind`` and ``group`` is a metric. An object with ``"value"`` is form 1
   (its metric from ``"metric"`` or the topic).
3. Gateway batch: ``{"readings": [entry, ...]}`` (its ``ts``, ``device``, ``kind``, ``group`` are
   defaults for the entries) or a top-level array of objects; each entry is form 1 or 2 and may
   carry its own ``device``, ``kind``, ``group`` and ``ts``.
4. SenML JSON (RFC 8428): a top-level array whose first record has ``bn``, ``bt``, ``n``, ``v``,
   ``bu`` or ``bver``. Times are seconds; a time below 2**28 is relative to the receive time.

``ts`` is epoch seconds or milliseconds (told apart by size) or an RFC 3339 string. Every message
ends in exactly one ``counters.message`` result; every reading that cannot be used is counted
once in ``counters.drop`` (checks in order: value, time, ids and channel). ``decode`` never
raises.

A payload of ``gateway_min_bytes`` or more goes first to the compiled gateway scan
(``streamproc.gateway``), which appends the readings of a plain gateway batch itself and
leaves any message it cannot decide exactly to the code here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import orjson

from streamproc import registry as reg
from streamproc.batch import BatchBuilder
from streamproc.config import Settings
from streamproc.counters import (
    CAPACITY,
    EMPTY,
    ERROR,
    FAR_FUTURE,
    INVALID_ID,
    INVALID_VALUE,
    MALFORMED,
    OK,
    REJECTED,
    TOO_OLD,
    UNKNOWN,
    UNKNOWN_DEVICE,
    Counters,
)
from streamproc.gateway import MIN_BYTES, GatewayScan
from streamproc.registry import Registry
from streamproc.times import number_to_ms, parse_rfc3339_ms
from streamproc.topics import TopicPattern, valid_id

DEFAULT_GROUP = "default"
TOPIC_CACHE_MAX = 1_000_000  # parsed topics kept; the cache is cleared when it is full
TOPIC_CACHE_MAX_LEN = 512  # longer topics are parsed every time, never cached
# Event times outside years 1..9999 are refused: times.format_ms could not print them.
MIN_TS_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_MAX_S = MAX_TS_MS // 1000
SENML_RELATIVE_S = 2**28  # RFC 8428: smaller SenML times are seconds relative to "now"
_MAX_FLOAT = int(sys.float_info.max)  # a larger int + a float raises OverflowError

RESERVED = frozenset(("ts", "device", "kind", "group"))
SENML_KEYS = frozenset(("bn", "bt", "n", "v", "bu", "bver"))
_SENML_OTHER_VALUES = frozenset(("vs", "vb", "vd", "s"))
_NOT_AN_ID = -100  # like the registry's negative codes: an id fails topics.valid_id
_CHANNEL_DROPS = {
    reg.UNKNOWN_KIND: INVALID_ID,
    reg.CAPACITY: CAPACITY,
    reg.UNKNOWN_DEVICE: UNKNOWN_DEVICE,
    _NOT_AN_ID: INVALID_ID,
}
_OK = (OK, "")
_EMPTY = (EMPTY, "")
_BAD_JSON = object()

# (kind, group, device or None, metric or None) from the topic; a str is why it is unknown
TopicFields = tuple[str, str, str | None, str | None]


class Decoder:
    """Decodes MQTT messages into readings appended to ``builder``; counts every outcome."""

    def __init__(
        self, settings: Settings, registry: Registry, counters: Counters, builder: BatchBuilder
    ):
        self.patterns = [TopicPattern(p) for p in settings.input.patterns]
        self.max_payload_bytes = settings.input.max_payload_bytes
        self.min_ts_ms = parse_rfc3339_ms(settings.input.min_ts)
        self.max_future_ms = round(settings.input.max_future_s * 1000)
        self.recv_ms = 0  # the receive time of the message being decoded
        self.registry = registry
        self.counters = counters
        self.builder = builder
        self.gateway = GatewayScan(
            registry, max(self.min_ts_ms, MIN_TS_MS), MAX_TS_MS, self.max_future_ms
        )
        self.gateway_min_bytes = MIN_BYTES  # smaller payloads skip the compiled path
        self.internal_errors = 0  # exceptions caught by the last-resort guard (a bug if > 0)
        self._topics: dict[str, TopicFields | str] = {}

    def decode(self, topic: str, payload: bytes, recv_ms: int) -> None:
        """Decode one MQTT message; append its readings to the builder; count its result."""
        self.recv_ms = recv_ms
        try:
            result, detail = self._decode(topic, payload, recv_ms)
        except Exception as exc:  # the contract: nothing escapes, whatever the input
            self.internal_errors += 1  # a bug, counted as such, not as bad input
            result, detail = ERROR, f"{_short(topic)}: internal error {type(exc).__name__}: {exc}"
        self.counters.message(result, detail)

    def topic_fields(self, topic: str) -> TopicFields | str:
        """Parsed topic fields (cached), or the reason the topic is UNKNOWN."""
        fields = self._topics.get(topic)
        if fields is None:
            fields = self._parse_topic(topic)
            if len(topic) <= TOPIC_CACHE_MAX_LEN:
                if len(self._topics) >= TOPIC_CACHE_MAX:
                    self._topics.clear()
                self._topics[topic] = fields
        return fields

    def _parse_topic(self, topic: str) -> TopicFields | str:
        segments = topic.split("/")
        for pattern in self.patterns:
            f = pattern.match(segments)
            if f is not None:
                break
        else:
            return "no topic pattern matches"
        kind = f["kind"]
        if kind not in self.registry.kinds.codes:
            return f"unknown kind {kind[:40]!r}"
        return kind, f.get("group", DEFAULT_GROUP), f.get("device"), f.get("metric")

    def _decode(self, topic: str, payload: bytes, recv_ms: int) -> tuple[str, str]:
        if len(payload) > self.max_payload_bytes:
            return REJECTED, f"{_short(topic)}: {len(payload)} bytes"
        fields = self.topic_fields(topic)
        if isinstance(fields, str):
            return UNKNOWN, f"{_short(topic)}: {fields}"
        if not payload:  # e.g. clearing a retained message: not an error
            return _EMPTY
        if len(payload) >= self.gateway_min_bytes:
            if self.gateway.scan(payload, fields[2], recv_ms, self.builder):
                return _OK
            result = self._decode_json(topic, payload, fields, recv_ms)
            self.gateway.learn()
            return result
        return self._decode_json(topic, payload, fields, recv_ms)

    def _decode_json(
        self, topic: str, payload: bytes, fields: TopicFields, recv_ms: int
    ) -> tuple[str, str]:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            doc = _loads_lenient(payload)
            if doc is _BAD_JSON:
                return MALFORMED, f"{_short(topic)}: not JSON"
        kind, group, device, metric = fields
        n0 = len(self.builder.idx)  # no Python-level __len__ per message
        t = type(doc)
        if t is dict:
            bad = self._object(doc, topic, kind, group, device, metric, recv_ms)
            if bad:
                return MALFORMED, f"{_short(topic)}: {bad}"
        elif t is list:
            if not doc:
                return _EMPTY
            first = doc[0]
            if type(first) is not dict:
                return MALFORMED, f"{_short(topic)}: array of {type(first).__name__}"
            if SENML_KEYS.isdisjoint(first):
                self._entries(doc, topic, kind, group, device, metric, recv_ms)
            else:
                self._senml(doc, topic, kind, group, device, recv_ms)
        elif (t is int or t is float) and metric is not None:
            self._reading(topic, device, metric, kind, group, recv_ms, doc)
        else:
            return MALFORMED, f"{_short(topic)}: unexpected {t.__name__}"
        return _OK if len(self.builder.idx) > n0 else _EMPTY

    def _object(
        self,
        doc: dict[str, Any],
        topic: str,
        kind: str,
        group: str,
        device: str | None,
        metric: str | None,
        recv_ms: int,
    ) -> str:
        """A top-level object (forms 1, 2 or a gateway batch); returns why it is malformed."""
        f = _fields(doc, device, kind, group, recv_ms)
        if isinstance(f, str):
            return f"bad top-level {f!r}"
        if "readings" in doc:
            entries = doc["readings"]
            if type(entries) is not list:
                return "'readings' is not an array"
            self._entries(entries, topic, f[1], f[2], f[0], metric, f[3])
        else:
            self._record(doc, topic, *f, metric)
        return ""

    def _entries(
        self,
        entries: list[Any],
        topic: str,
        kind: str,
        group: str,
        device: str | None,
        metric: str | None,
        ts: int,
    ) -> None:
        """Gateway entries; the arguments are their defaults."""
        for e in entries:
            if type(e) is not dict:
                self._drop(INVALID_VALUE, topic, f"entry is a {type(e).__name__}")
                continue
            f = _fields(e, device, kind, group, ts)
            if isinstance(f, str):
                n = 1 if "value" in e else sum(1 for k in e if k not in RESERVED)
                reason = INVALID_VALUE if f == "ts" else INVALID_ID
                self._drop(reason, topic, f"entry with bad {f!r}", n)
                continue
            self._record(e, topic, *f, metric)

    def _record(
        self,
        rec: dict[str, Any],
        topic: str,
        device: str | None,
        kind: str,
        group: str,
        ts: int,
        metric: str | None,
    ) -> None:
        """One object: a ``value`` (form 1) or one reading per non-reserved key (form 2)."""
        if "value" in rec:
            m = rec.get("metric", metric)
            if type(m) is str:
                self._reading(topic, device, m, kind, group, ts, rec["value"])
            else:
                self._drop(INVALID_ID, topic, "no metric name for 'value'")
        else:
            for key, v in rec.items():
                if key not in RESERVED:
                    self._reading(topic, device, key, kind, group, ts, v)

    def _senml(
        self,
        records: list[Any],
        topic: str,
        kind: str,
        group: str,
        device: str | None,
        recv_ms: int,
    ) -> None:
        """A SenML pack. A bad base field spoils the records that use it, not the message."""
        bn: str | None = ""
        bt: int | float | None = 0
        bv: int | float | None = 0
        for rec in records:
            if type(rec) is not dict:
                self._drop(INVALID_VALUE, topic, f"SenML record is a {type(rec).__name__}")
                continue
            if "bn" in rec:
                bn = rec["bn"] if type(rec["bn"]) is str else None
            if "bt" in rec:
                bt = _number(rec["bt"])
            if "bv" in rec:
                bv = _number(rec["bv"])
            if "v" in rec:
                v = rec["v"]
            elif _SENML_OTHER_VALUES.isdisjoint(rec):
                continue  # only base fields: no reading
            else:
                self._drop(INVALID_VALUE, topic, "SenML string, bool, data or sum value")
                continue
            n = rec.get("n", "")
            if bn is None or type(n) is not str:
                self._drop(INVALID_ID, topic, "SenML name is not a string")
                continue
            if bn and n:
                dev: str | None = bn.rstrip(":/")
                m = n
            else:
                dev, slash, m = (bn + n).rpartition("/")
                if not slash:
                    dev = device
            t = _number(rec.get("t", 0))
            if bt is None or t is None or bv is None:
                what = "value" if bv is None else "time"
                self._drop(INVALID_VALUE, topic, f"SenML base or record {what} is bad")
                continue
            s = bt + t
            if not -_MAX_S <= s <= _MAX_S:
                self._drop(INVALID_VALUE, topic, "SenML time out of range")
                continue
            ts = round(s * 1000)
            if s < SENML_RELATIVE_S:
                ts += recv_ms
            if bv and _number(v) is not None:
                v = v + bv
            self._reading(topic, dev, m, kind, group, ts, v)

    def _reading(
        self,
        topic: str,
        device: str | None,
        metric: str,
        kind: str,
        group: str,
        ts: int,
        v: Any,
    ) -> None:
        """Check one reading and append it, or count why it is dropped."""
        t = type(v)
        if t is float:
            if v - v != 0.0:  # NaN or infinite
                return self._drop(INVALID_VALUE, topic, f"{metric[:40]!r}: {v}")
        elif t is int:
            try:
                v = float(v)
            except OverflowError:
                return self._drop(INVALID_VALUE, topic, f"{metric[:40]!r}: int out of range")
        else:
            return self._drop(INVALID_VALUE, topic, f"{metric[:40]!r}: {t.__name__}")
        if not self.min_ts_ms <= ts <= MAX_TS_MS:
            reason = TOO_OLD if ts < self.min_ts_ms else INVALID_VALUE
            return self._drop(reason, topic, f"{metric[:40]!r}: time {ts}")
        if ts > self.recv_ms + self.max_future_ms:
            return self._drop(FAR_FUTURE, topic, f"{metric[:40]!r}: time {ts}")
        c = None if device is None else self.registry.index.get((device, metric))
        if c is None:
            c = self._channel(device, metric, kind, group)
            if c < 0:
                return self._drop(_CHANNEL_DROPS[c], topic, f"{device!r:.60}/{metric!r:.60}")
        self.builder.add(c, ts, v)

    def _channel(self, device: str | None, metric: str, kind: str, group: str) -> int:
        """Registry channel for a (device, metric) seen for the first time; checks the ids."""
        if device is None or not (valid_id(device) and valid_id(metric) and valid_id(group)):
            return _NOT_AN_ID
        return self.registry.channel(device, metric, kind, group)

    def _drop(self, reason: str, topic: str, what: str, n: int = 1) -> None:
        self.counters.drop(reason, n, f"{_short(topic)}: {what}")


def _fields(
    rec: dict[str, Any], device: str | None, kind: str, group: str, ts: int
) -> tuple[str | None, str, str, int] | str:
    """(device, kind, group, ts) of an object, from its own keys or the defaults given;
    or the name of the first key that has a bad value."""
    if "ts" in rec:
        x = _ts_ms(rec["ts"])
        if x is None:
            return "ts"
        ts = x
    if "device" in rec:
        device = rec["device"]
        if type(device) is not str:
            return "device"
    if "kind" in rec:
        kind = rec["kind"]
        if type(kind) is not str:
            return "kind"
    if "group" in rec:
        group = rec["group"]
        if type(group) is not str:
            return "group"
    return device, kind, group, ts


def _ts_ms(x: Any) -> int | None:
    """A ``ts`` value (epoch s or ms, or RFC 3339) -> epoch ms; None if unusable."""
    t = type(x)
    try:
        if t is int or t is float:
            ms = number_to_ms(x)
        elif t is str:
            ms = parse_rfc3339_ms(x)
        else:
            return None
    except (ValueError, OverflowError):  # NaN, infinity, not a time
        return None
    return ms if MIN_TS_MS <= ms <= MAX_TS_MS else None


def _number(x: Any) -> int | float | None:
    """x if it is a finite JSON number (not a bool) within float range, else None; so sums
    with floats cannot overflow."""
    t = type(x)
    if (t is int and -_MAX_FLOAT <= x <= _MAX_FLOAT) or (t is float and x - x == 0.0):
        return x
    return None


def _loads_lenient(payload: bytes) -> Any:
    """Standard-library parse of what orjson refuses: NaN/Infinity literals and numbers beyond
    float64, so those count as invalid readings rather than a malformed message."""
    try:
        return json.loads(str(payload, "utf-8"))
    except (ValueError, RecursionError, TypeError):  # bad UTF-8 or JSON, too deep, not bytes
        return _BAD_JSON


def _short(topic: str) -> str:
    """The topic for a log line: truncated, escaped."""
    return repr(topic[:80])
