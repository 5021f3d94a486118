"""The compiled gateway scan (streamproc/kernels/gateway.py) against the general decoder: the
same messages through both give the same readings, bit for bit, and the same counts; what the
scan reads itself it reads exactly, and it does read the plain gateway form."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.config import ChannelSettings, Settings, load
from streamproc.gateway import MAX_MISSES
from streamproc.kernels import gateway as gk
from streamproc.metrics import Metrics
from streamproc.pipeline import Pipeline
from tests.fuzzing import (
    DOCUMENTS,
    PAYLOADS,
    RECV,
    RECV_TIMES,
    SEEDS,
    SETTINGS,
    TOPICS,
    Harness,
)

T0 = 1_767_571_200
GW = "city/north/air/gw1"  # a topic with a device: the entries' default
ROOMY = replace(
    SETTINGS,
    input=replace(SETTINGS.input, max_payload_bytes=1 << 20),
    channels=ChannelSettings(max_channels=100_000),
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


class Pair:
    """Two decoders fed the same messages: the general way only, and the scan first."""

    def __init__(self, s: Settings = SETTINGS) -> None:
        self.general, self.compiled = Harness(s), Harness(s)
        self.general.decoder.gateway_min_bytes = 1 << 62
        self.compiled.decoder.gateway_min_bytes = 0
        self.scanned = 0  # messages the scan decided alone

    def send(self, topic: str, payload: bytes, recv_ms: int = RECV) -> str:
        results = [self.general.check(topic, payload, recv_ms)]
        n0 = len(self.compiled.builder)
        scans = self.compiled.decoder.gateway.decided
        results.append(self.compiled.check(topic, payload, recv_ms))
        self.scanned += self.compiled.decoder.gateway.decided - scans
        assert results[0] == results[1]
        g, c = self.general, self.compiled
        assert g.counters.dropped == c.counters.dropped
        assert g.registry.index == c.registry.index
        assert len(g.builder) == len(c.builder)
        new = slice(n0, len(c.builder))
        assert g.builder.idx[new] == c.builder.idx[new]
        assert g.builder.ts[new] == c.builder.ts[new]
        assert g.builder.val[new].tobytes() == c.builder.val[new].tobytes()  # -0.0 too
        return results[0]


# ---------------------------------------------------------------- gateway messages as text
# Each part of a message has a good and a bad form. A clean message takes only good ones (the
# scan should decide it); another takes a bad one one time in eight.

WS = st.sampled_from(["", "", " ", "\n", "\t ", "\r\n  "])
NUMBERS = (
    st.one_of(
        st.integers(-(10**6), 10**6).map(str),
        st.builds(lambda x, p: f"{x:.{p}f}", st.floats(-1e4, 1e4), st.integers(0, 6)),
        st.builds(lambda x, p: f"{x:.{p}e}", st.floats(-1e6, 1e6), st.integers(0, 8)),
        st.sampled_from(["-0", "-0.0", "0e5", "1E+22", "2.5E-3", "900719925474099.2"]),
    ),
    st.one_of(
        st.integers(-(10**20), 10**20).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["1e23", "9007199254740993.0", "4.9e-324", "123456789012345678.5"]),
        st.sampled_from(["01", "1.", ".5", "+1", "1e", "--1", "0x1", "1e99999", "NaN"]),
        st.sampled_from(['"1"', "null", "true", "[1]", "{}"]),
    ),
)
TIMES = (
    st.sampled_from([str(T0), str(T0 * 1000), str(T0 - 7)]),
    st.sampled_from(["-0", f"{T0}.5", '"2026-01-05T00:00:00Z"', "-1", "1e9", "null"]),
)
BAD_STRINGS = st.sampled_from(['"a b"', '"st\\u0031"', '"\u00e9"', '"\x01"', "1", "null", '""'])
FIELDS = {
    "ts": TIMES,
    "device": (st.sampled_from(['"st1"', '"st2"', '"gw"']), BAD_STRINGS | st.just('"air"')),
    "kind": (st.sampled_from(['"air"', '"traffic"']), BAD_STRINGS | st.just('"st1"')),
    "group": (st.sampled_from(['"north"', '"south"']), BAD_STRINGS),
}
ODD_KEYS = st.sampled_from(['"pm25"', '"value"', '"metric"', '"readings"', '"ts"', '""', '"a\\"b"'])
ODD_PARTS = st.lists(st.tuples(ODD_KEYS, NUMBERS[0] | FIELDS["device"][0]), min_size=1, max_size=2)
TOPICS_ = (
    st.sampled_from([GW, "city/north/air/gw1/pm25"]),
    st.sampled_from(["gw/air/gw7", "city/x/ufo/g"]),
)


def pick(draw: Any, forms: tuple[st.SearchStrategy, st.SearchStrategy], clean: bool) -> Any:
    bad = not clean and draw(st.integers(0, 7)) == 0
    return draw(forms[bad])


@st.composite
def entry_text(draw: Any, clean: bool) -> str:
    """Metrics with distinct names and the reserved keys in any order; odd keys if unclean."""
    metrics = draw(st.lists(st.sampled_from(["pm25", "no2", "o3", "pm10", "so2"]), unique=True))
    parts = [f'"{m}":{pick(draw, NUMBERS, clean)}' for m in metrics]
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True)):
        parts.append(f'"{key}":{pick(draw, FIELDS[key], clean)}')
    if not clean and draw(st.integers(0, 7)) == 0:
        parts += [f"{k}:{v}" for k, v in draw(ODD_PARTS)]
    parts = draw(st.permutations(parts))
    return "{" + draw(WS) + ("," + draw(WS)).join(parts) + draw(WS) + "}"


@st.composite
def gateway_message(draw: Any) -> tuple[str, bytes]:
    """(topic, payload): an array of entries, or an object with ``readings``."""
    clean = draw(st.booleans())
    n = draw(st.integers(0 if not clean else 1, 4))
    entries = "[" + ",".join(draw(WS) + draw(entry_text(clean)) for _ in range(n))
    entries += draw(WS) + "]"
    if draw(st.booleans()):
        text = entries
    else:
        head = [f'"ts":{pick(draw, TIMES, clean)}'] if draw(st.booleans()) else []
        if draw(st.booleans()):
            head.append(f'"device":{pick(draw, FIELDS["device"], clean)}')
        if not clean and draw(st.integers(0, 7)) == 0:
            head += [f"{k}:{v}" for k, v in draw(ODD_PARTS)]
        body = [*head, f'"readings":{entries}']
        if not clean and draw(st.integers(0, 7)) == 0:
            body.reverse()
        text = "{" + ",".join(body) + "}"
    return pick(draw, TOPICS_, clean), (draw(WS) + text + draw(WS)).encode()


@FUZZ
@given(st.lists(gateway_message(), max_size=6))
def test_gateway_text_decodes_alike(messages: list[tuple[str, bytes]]) -> None:
    """Each message twice: the second time its channels are known, so the scan may decide."""
    pair = Pair(ROOMY)
    for topic, payload in messages:
        pair.send(topic, payload)
        pair.send(topic, payload)


@FUZZ
@given(st.lists(st.tuples(TOPICS, DOCUMENTS, RECV_TIMES), max_size=6))
def test_documents_decode_alike(messages: list[tuple[str, Any, int]]) -> None:
    pair = Pair()
    for topic, doc, recv_ms in messages:
        pair.send(topic, json.dumps(doc).encode(), recv_ms)


@FUZZ
@given(st.lists(st.tuples(TOPICS | st.sampled_from([t for t, _ in SEEDS]), PAYLOADS), max_size=6))
def test_any_bytes_decode_alike(messages: list[tuple[str, bytes]]) -> None:
    pair = Pair()
    for topic, payload in messages:
        pair.send(topic, payload)


# ---------------------------------------------------------------- what the scan reads itself


def test_the_scan_decides_plain_gateway_messages_once_it_knows_the_channels() -> None:
    pair = Pair(ROOMY)
    entries = [
        {"ts": T0 + i, "pm25": round(i * 1.7, 1), "no2": -i, "device": f"st{i % 7}", "kind": "air"}
        for i in range(40)
    ]
    forms = [
        json.dumps({"readings": entries}),
        json.dumps({"ts": T0 * 1000, "group": "g", "readings": entries}, indent=2),
        json.dumps(entries),
        json.dumps([{"pm25": 1.25, "o3": 3e-3}] * 3),  # the topic's device
        json.dumps({"device": "st9", "readings": [{"pm25": 4}, {"no2": 5, "ts": T0}]}),
    ]
    for text in forms:
        assert pair.send(GW, text.encode()) == "ok"  # new channels go the general way
        before = pair.scanned
        assert pair.send(GW, text.encode()) == "ok"
        assert pair.scanned == before + 1
    assert pair.compiled.decoder.gateway.table.n == pair.compiled.registry.n


@pytest.mark.parametrize(
    "payload",
    [
        b'[{"device": "st\\u0031", "pm25": 1}]',  # an escape
        b'[{"device": "st1", "pm25": 0.30000000000000004}]',  # 17 digits
        b'[{"device": "st1", "pm25": 1, "ts": 1767571200.5}]',  # a float time
        b'[{"device": "st1", "pm25": 1, "ts": "2026-01-05T00:00:00Z"}]',
        b'[{"device": "st1", "pm25": 1, "pm25": 2}]',  # a repeated key
        b'[{"device": "st1", "value": 1, "metric": "pm25"}]',  # form 1
        b'[{"device": "st1", "pm25": null}]',  # dropped by the general decoder
        b'[{"device": "st1", "pm25": 1}, 7]',
        b'{"readings": [{"device": "st1", "pm25": 1}], "ts": 1767571200}',  # ts after
        b'{"readings": [{"device": "st1", "pm25": 1}], "note": 1}',
        b'[{"device": "st1", "pm25": 1},]',  # not JSON
        b'[{"device": "st1", "pm25": 1}] x',
        b'[{"device": "st1", "pm25": 01}]',
        b'[{"device": "st1", "pm25": 1, "ts": 99999999999999}]',  # far in the future
    ],
)
def test_the_scan_leaves_the_rest_to_the_general_decoder(payload: bytes) -> None:
    pair = Pair(ROOMY)
    known = b'[{"device": "st1", "pm25": 1, "ts": 1767571200}]'
    pair.send(GW, known)
    assert pair.send(GW, known) == "ok" and pair.scanned == 1
    pair.send(GW, payload)
    assert pair.scanned == 1


def test_the_channel_table_grows_with_the_registry() -> None:
    pair = Pair(ROOMY)
    for gw in range(30):
        text = json.dumps([{"device": f"g{gw}d{i}", "pm25": i, "no2": i} for i in range(200)])
        pair.send(GW, text.encode())
        pair.send(GW, text.encode())
    table = pair.compiled.decoder.gateway.table
    assert pair.scanned == 30
    assert table.n == pair.compiled.registry.n == 12_000
    assert len(table.slots) >= 2 * table.n
    # more new pairs in one message than a scan notes: learnt over two messages
    text = json.dumps([{"device": f"big{i}", "pm25": i} for i in range(MAX_MISSES + 10)])
    for scanned in (30, 30, 31):
        pair.send(GW, text.encode())
        assert pair.scanned == scanned


def test_a_refused_channel_is_never_in_the_table() -> None:
    """A device beyond max_channels is dropped every time, the general way."""
    pair = Pair()
    text = json.dumps([{"device": f"d{i}", "pm25": 1} for i in range(20)]).encode()
    for _ in range(3):
        assert pair.send(GW, text) == "ok"
    assert pair.scanned == 0
    assert pair.compiled.decoder.gateway.table.n == pair.compiled.registry.n == 8  # max_channels


def _double(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


@settings(max_examples=2000, deadline=None)
@given(
    st.integers(0, 2**64 - 1).map(_double).filter(math.isfinite) | st.floats(-1e9, 1e9),
    st.sampled_from(["r", ".0f", ".1f", ".3f", ".6g", ".15g", ".17g", ".5e", ".16e"]),
)
def test_numbers_the_scan_reads_are_read_exactly(x: float, fmt: str) -> None:
    text = repr(x) if fmt == "r" else format(x, fmt)
    end, _, _, v = gk._number(np.frombuffer(text.encode(), np.uint8), 0)
    if end >= 0:
        assert end == len(text)
        assert struct.pack("<d", v) == struct.pack("<d", float(json.loads(text)))


@settings(max_examples=1000, deadline=None)
@given(st.integers(-(10**25), 10**25) | st.integers(-(2**63), 2**63))
def test_integers_the_scan_reads_are_read_exactly(x: int) -> None:
    text = str(x)
    end, integer, value, v = gk._number(np.frombuffer(text.encode(), np.uint8), 0)
    if end >= 0:
        assert end == len(text) and integer and value == x
        assert struct.pack("<d", v) == struct.pack("<d", float(x))


def test_the_warm_up_compiles_the_scan_the_decoder_calls() -> None:
    gk.warm_up()
    pair = Pair(ROOMY)
    text = json.dumps({"readings": [{"device": "st1", "pm25": 2.5}] * 30}).encode()
    pair.send(GW, text)
    pair.send(GW, text)
    assert pair.scanned == 1
    assert len(gk.scan.signatures) == 1
    assert len(gk.table_insert.signatures) == len(gk.hash_keys.signatures) == 1


def test_messages_the_scan_decided_are_a_metric(tmp_path: Path) -> None:
    p = Pipeline(load(None), tmp_path)
    text = json.dumps([{"device": f"st{i}", "pm25": 1.5, "ts": T0} for i in range(40)]).encode()
    for _ in range(3):
        p.message(GW, text, RECV)
    assert "streamproc_gateway_scanned_total 2.0" in Metrics(p).render().decode()
    assert p.counters.messages["ok"] == 3
    p.close()
