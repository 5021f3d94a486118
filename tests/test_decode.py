"""streamproc.decode: payload forms, message results, drop reasons. The properties over
fuzzed input (decode never raises, one result per message, every reading appended or dropped
once) are in tests/test_bad_input.py, with the strategies in tests/fuzzing.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from streamproc import counters as cn
from streamproc import decode as decode_mod
from streamproc.batch import BatchBuilder
from streamproc.config import ChannelSettings, Settings, from_dict
from streamproc.counters import Counters
from streamproc.decode import Decoder
from streamproc.registry import Registry
from streamproc.times import parse_rfc3339_ms

RECV = 1_800_000_000_000  # receive time, epoch ms (2027: after every payload time used)
T0 = 1_690_000_000  # an event time, epoch s


class Rig:
    """A decoder with its registry, counters and builder; ``send`` returns the readings added."""

    def __init__(self, s: Settings | None = None):
        self.settings = s or Settings()
        self.registry = Registry(self.settings.channels)
        self.counters = Counters()
        self.builder = BatchBuilder()
        self.decoder = Decoder(self.settings, self.registry, self.counters, self.builder)

    def send(
        self, topic: str, payload: Any, recv_ms: int = RECV
    ) -> list[tuple[dict[str, str], int, float]]:
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
        self.decoder.decode(topic, payload, recv_ms)
        assert self.decoder.internal_errors == 0
        b = self.builder.take()
        return [
            (self.registry.describe(int(c)), int(t), float(v))
            for c, t, v in zip(b.idx, b.ts_ms, b.value, strict=True)
        ]

    def results(self) -> dict[str, int]:
        return dict(self.counters.messages)

    def drops(self) -> dict[str, int]:
        return dict(self.counters.dropped)


def ch(device: str, metric: str, kind: str = "air", group: str = "north") -> dict[str, str]:
    return {"device": device, "metric": metric, "kind": kind, "group": group}


@pytest.fixture(params=["general", "compiled"])
def rig(request: pytest.FixtureRequest) -> Rig:
    """Every payload decoded the general way, and again with the compiled gateway scan tried
    first whatever the payload's size (a gateway message it cannot decide falls back)."""
    r = Rig()
    if request.param == "compiled":
        r.decoder.gateway_min_bytes = 0
    return r


# ---------------------------------------------------------------- form 1: one metric per topic


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (T0, T0 * 1000),  # epoch seconds
        (T0 + 0.25, T0 * 1000 + 250),
        (T0 * 1000 + 7, T0 * 1000 + 7),  # epoch milliseconds
        ("2024-03-01T12:00:00Z", parse_rfc3339_ms("2024-03-01T12:00:00Z")),
        ("2024-03-01T12:00:00.5+01:00", parse_rfc3339_ms("2024-03-01T11:00:00.5Z")),
    ],
)
def test_value_object_ts_forms(rig: Rig, ts: Any, expected: int) -> None:
    out = rig.send("city/north/air/st1/pm25", {"ts": ts, "value": 12.5})
    assert out == [(ch("st1", "pm25"), expected, 12.5)]
    assert rig.results() == {cn.OK: 1}


def test_value_object_without_ts_uses_receive_time(rig: Rig) -> None:
    assert rig.send("city/north/air/st1/pm25", {"value": 3}) == [(ch("st1", "pm25"), RECV, 3.0)]


@pytest.mark.parametrize("payload", [b"12.5", b" 12.5\n", b"-3", b"0"])
def test_bare_number(rig: Rig, payload: bytes) -> None:
    out = rig.send("city/north/air/st1/pm25", payload)
    assert out == [(ch("st1", "pm25"), RECV, float(payload))]
    assert rig.results() == {cn.OK: 1}


def test_bare_number_needs_metric_topic(rig: Rig) -> None:
    assert rig.send("city/north/air/st1", b"12.5") == []
    assert rig.results() == {cn.MALFORMED: 1}


def test_value_metric_from_payload_or_missing(rig: Rig) -> None:
    out = rig.send("city/north/air/st1", {"metric": "no2", "value": 4})
    assert out == [(ch("st1", "no2"), RECV, 4.0)]
    assert rig.send("city/north/air/st1", {"value": 4}) == []
    assert rig.results() == {cn.OK: 1, cn.EMPTY: 1}
    assert rig.drops() == {cn.INVALID_ID: 1}


# ---------------------------------------------------------------- form 2: multi-metric object


def test_multi_metric_object(rig: Rig) -> None:
    out = rig.send("city/north/air/st1", {"ts": T0, "pm25": 35.2, "no2": 41})
    assert out == [(ch("st1", "pm25"), T0 * 1000, 35.2), (ch("st1", "no2"), T0 * 1000, 41.0)]
    assert rig.results() == {cn.OK: 1}


def test_multi_metric_reserved_keys_override_topic(rig: Rig) -> None:
    msg = {"ts": T0, "device": "st9", "group": "south", "kind": "traffic", "flow": 3}
    out = rig.send("city/north/air/st1", msg)
    assert out == [(ch("st9", "flow", "traffic", "south"), T0 * 1000, 3.0)]


def test_group_defaults_when_topic_has_none() -> None:
    r = Rig(from_dict({"input": {"patterns": ["dev/{kind}/{device}"]}}))
    assert r.send("dev/air/st1", {"pm25": 1}) == [(ch("st1", "pm25", group="default"), RECV, 1.0)]


@pytest.mark.parametrize("payload", [{"ts": T0}, {}, {"device": "st2", "kind": "air"}])
def test_object_without_readings_is_empty(rig: Rig, payload: dict[str, Any]) -> None:
    assert rig.send("city/north/air/st1", payload) == []
    assert rig.results() == {cn.EMPTY: 1}
    assert rig.drops() == {}


def test_partially_dropped_object_is_ok(rig: Rig) -> None:
    out = rig.send("city/north/air/st1", {"pm25": 1, "no2": None, "o3": "7"})
    assert [o[0]["metric"] for o in out] == ["pm25"]
    assert rig.results() == {cn.OK: 1}
    assert rig.drops() == {cn.INVALID_VALUE: 2}


def test_all_readings_dropped_is_empty(rig: Rig) -> None:
    assert rig.send("city/north/air/st1", {"pm25": None, "no2": True}) == []
    assert rig.results() == {cn.EMPTY: 1}
    assert rig.drops() == {cn.INVALID_VALUE: 2}


# ---------------------------------------------------------------- form 3: gateway batches


def test_gateway_object_defaults_and_overrides(rig: Rig) -> None:
    msg = {
        "ts": T0,
        "readings": [
            {"pm25": 1, "no2": 2},  # topic device, top-level ts
            {"device": "st2", "ts": T0 + 5, "pm25": 3},
            {"device": "st3", "metric": "o3", "value": 4},
            {"device": "x1", "kind": "traffic", "group": "south", "flow": 5},
        ],
    }
    out = rig.send("city/north/air/gw1", msg)
    t = T0 * 1000
    assert out == [
        (ch("gw1", "pm25"), t, 1.0),
        (ch("gw1", "no2"), t, 2.0),
        (ch("st2", "pm25"), t + 5000, 3.0),
        (ch("st3", "o3"), t, 4.0),
        (ch("x1", "flow", "traffic", "south"), t, 5.0),
    ]
    assert rig.results() == {cn.OK: 1}


def test_gateway_top_level_array(rig: Rig) -> None:
    out = rig.send("city/north/air/gw1", [{"device": "a", "pm25": 1}, {"no2": 2, "ts": T0}])
    assert out == [(ch("a", "pm25"), RECV, 1.0), (ch("gw1", "no2"), T0 * 1000, 2.0)]


def test_gateway_topic_without_device() -> None:
    r = Rig(from_dict({"input": {"patterns": ["city/{group}/{kind}/gateway/+"]}}))
    msg = {"readings": [{"device": "a", "pm25": 1}, {"pm25": 2, "no2": 3}]}
    assert r.send("city/north/air/gateway/gw7", msg) == [(ch("a", "pm25"), RECV, 1.0)]
    assert r.drops() == {cn.INVALID_ID: 2}  # one per reading of the entry without a device
    assert r.send("city/north/air/gateway/gw7", b"12") == []
    assert r.results() == {cn.OK: 1, cn.MALFORMED: 1}


def test_gateway_bad_entries_are_dropped(rig: Rig) -> None:
    msg = {
        "readings": [
            {"ts": "yesterday", "pm25": 1, "no2": 2},  # bad entry ts: its readings dropped
            {"device": 7, "pm25": 1},  # device not a string
            {"kind": ["air"], "metric": "no2", "value": 1},
            5,  # not an object
            {"device": "ok1", "pm25": 1},
        ]
    }
    out = rig.send("city/north/air/gw1", msg)
    assert out == [(ch("ok1", "pm25"), RECV, 1.0)]
    assert rig.results() == {cn.OK: 1}
    assert rig.drops() == {cn.INVALID_VALUE: 3, cn.INVALID_ID: 2}


def test_gateway_entry_unknown_kind_is_invalid_id(rig: Rig) -> None:
    assert rig.send("city/north/air/gw1", [{"device": "a", "kind": "ufo", "x": 1}]) == []
    assert rig.results() == {cn.EMPTY: 1}
    assert rig.drops() == {cn.INVALID_ID: 1}


@pytest.mark.parametrize(
    "payload",
    [
        {"readings": {"pm25": 1}},
        {"readings": [], "ts": "not a time"},
        [1, 2],
        ["a"],
        [[{"pm25": 1}]],
    ],
)
def test_gateway_wrong_shape_is_malformed(rig: Rig, payload: Any) -> None:
    assert rig.send("city/north/air/gw1", payload) == []
    assert rig.results() == {cn.MALFORMED: 1}


@pytest.mark.parametrize("payload", [[], {"readings": []}, [{}]])
def test_gateway_without_entries_is_empty(rig: Rig, payload: Any) -> None:
    assert rig.send("city/north/air/gw1", payload) == []
    assert rig.results() == {cn.EMPTY: 1}


# ---------------------------------------------------------------- form 4: SenML


def test_senml_base_fields(rig: Rig) -> None:
    pack = [
        {
            "bn": "urn:dev:ow:10e2073a01080063:",
            "bt": T0,
            "bu": "Cel",
            "bver": 10,
            "n": "temp",
            "v": 23.1,
        },
        {"n": "hum", "u": "%RH", "v": 40, "t": 60},
        {"bn": "st5/", "bv": 100, "n": "pressure", "v": 1.5, "t": 0.25},
        {"n": "pressure", "v": -2},
    ]
    out = rig.send("city/north/air/st1", pack)
    t = T0 * 1000
    urn = "urn:dev:ow:10e2073a01080063"
    assert out == [
        (ch(urn, "temp"), t, 23.1),
        (ch(urn, "hum"), t + 60_000, 40.0),
        (ch("st5", "pressure"), t + 250, 101.5),
        (ch("st5", "pressure"), t, 98.0),
    ]
    assert rig.results() == {cn.OK: 1}


def test_senml_relative_time_and_names(rig: Rig) -> None:
    pack = [
        {"n": "st2/pm25", "v": 1},  # no time: "now"
        {"n": "no2", "v": 2, "t": -30},  # no device in the name: the topic's
        {"bt": 100, "n": "o3", "v": 3, "t": 5},  # small base time: still relative
    ]
    out = rig.send("city/north/air/st1", pack)
    assert out == [
        (ch("st2", "pm25"), RECV, 1.0),
        (ch("st1", "no2"), RECV - 30_000, 2.0),
        (ch("st1", "o3"), RECV + 105_000, 3.0),
    ]


def test_senml_base_only_record_and_other_values(rig: Rig) -> None:
    pack = [
        {"bn": "st3/", "bt": T0},  # base fields only: no reading, no drop
        {"n": "label", "vs": "hello"},
        {"n": "door", "vb": True},
        {"n": "blob", "vd": "aGk="},
        {"n": "energy", "s": 12},
        {"n": "pm25", "v": None},
        {"n": "pm10", "v": 9},
    ]
    assert rig.send("city/north/air/st1", pack) == [(ch("st3", "pm10"), T0 * 1000, 9.0)]
    assert rig.drops() == {cn.INVALID_VALUE: 5}


def test_senml_bad_base_spoils_later_records(rig: Rig) -> None:
    pack = [
        {"bn": 5, "n": "a", "v": 1},
        {"n": "b", "v": 1},
        {"bn": "st4/", "bt": "soon", "n": "c", "v": 1},
        {"bt": T0, "bv": "x", "n": "d", "v": 1},
        {"bv": 0, "n": "e", "v": 1},
        "junk",
    ]
    assert rig.send("city/north/air/st1", pack) == [(ch("st4", "e"), T0 * 1000, 1.0)]
    assert rig.drops() == {cn.INVALID_ID: 2, cn.INVALID_VALUE: 3}


def test_senml_without_any_device(rig: Rig) -> None:
    r = Rig(from_dict({"input": {"patterns": ["city/{group}/{kind}/gateway/+"]}}))
    assert r.send("city/north/air/gateway/g", [{"n": "pm25", "v": 1}]) == []
    assert r.drops() == {cn.INVALID_ID: 1}
    assert r.results() == {cn.EMPTY: 1}


# ---------------------------------------------------------------- message results


def test_oversized_payload_rejected_before_parsing(rig: Rig) -> None:
    limit = rig.settings.input.max_payload_bytes
    assert rig.send("city/north/air/st1/pm25", b" " * (limit - 1) + b"1") != []
    assert rig.send("city/north/air/st1/pm25", b"{" * (limit + 1)) == []
    assert rig.send("no/such/topic", b"x" * (limit + 1)) == []
    assert rig.results() == {cn.OK: 1, cn.REJECTED: 2}


@pytest.mark.parametrize(
    "topic",
    [
        "city/north/ufo/st1/pm25",  # kind not configured
        "city/north/a+b/st1",
        "town/north/air/st1",
        "city/north/air/st1/pm25/extra",
        "",
        "/",
    ],
)
def test_unknown_topic(rig: Rig, topic: str) -> None:
    assert rig.send(topic, b"1") == []
    assert rig.results() == {cn.UNKNOWN: 1}


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b"not json",
        b"\xff\xfe\x00",  # invalid UTF-8
        b'"12.5"',
        b"null",
        b"true",
        b'{"ts": "2024-99-99", "pm25": 1}',  # bad top-level ts
        b'{"ts": NaN, "pm25": 1}',
        b'{"ts": 1e400, "pm25": 1}',
        b'{"ts": true, "pm25": 1}',
        b'{"ts": 1e20, "pm25": 1}',  # beyond year 9999
        b'{"device": 3, "pm25": 1}',
        b'{"pm25": 1} {"no2": 2}',
        b'{"bad": "\xc3\x28"}',
    ],
)
def test_malformed(rig: Rig, payload: bytes) -> None:
    assert rig.send("city/north/air/st1", payload) == []
    assert rig.results() == {cn.MALFORMED: 1}
    assert rig.drops() == {}


def test_empty_payload_is_empty(rig: Rig) -> None:
    assert rig.send("city/north/air/st1/pm25", b"") == []
    assert rig.results() == {cn.EMPTY: 1}


def test_deeply_nested_json_is_malformed() -> None:
    r = Rig(from_dict({"input": {"max_payload_bytes": 1_000_000}}))
    deep = 100_000
    assert r.send("city/north/air/st1", b"[" * deep + b"]" * deep) == []
    assert r.send("city/north/air/st1", b'{"a":' * deep + b"1" + b"}" * deep) == []
    assert r.results() == {cn.MALFORMED: 2}


# ---------------------------------------------------------------- drop reasons


@pytest.mark.parametrize(
    "raw",
    [b"null", b"true", b'"7"', b"[1]", b'{"v": 1}', b"NaN", b"Infinity", b"-Infinity", b"1e400"],
)
def test_invalid_values(rig: Rig, raw: bytes) -> None:
    payload = b'{"pm25": ' + raw + b', "no2": 1}'
    assert rig.send("city/north/air/st1", payload) == [(ch("st1", "no2"), RECV, 1.0)]
    assert rig.drops() == {cn.INVALID_VALUE: 1}


@pytest.mark.parametrize("payload", [b"NaN", b"Infinity", b"1" + b"0" * 400, b"-1e999"])
def test_non_finite_bare_value(rig: Rig, payload: bytes) -> None:
    assert rig.send("city/north/air/st1/pm25", payload) == []
    assert rig.results() == {cn.EMPTY: 1}
    assert rig.drops() == {cn.INVALID_VALUE: 1}


def test_huge_ints(rig: Rig) -> None:
    big = 10**400
    assert rig.send("city/north/air/st1", f'{{"pm25": {big}, "no2": 1}}'.encode()) != []
    assert rig.send("city/north/air/st1", {"value": 2**64, "metric": "x"}) != []  # fits a float
    assert rig.drops() == {cn.INVALID_VALUE: 1}


@pytest.mark.parametrize(
    "bad", ["a+b", "a#", "a/b", "a b", "tab\t", "nul\x00", "é", "", "x" * 129, "\u2028"]
)
def test_invalid_ids(rig: Rig, bad: str) -> None:
    # as a metric key, as a gateway entry's device, as a SenML name, and as a topic device
    rig.send("city/north/air/st1", {bad: 1})
    rig.send("city/north/air/gw1", [{"device": bad, "pm25": 1}])
    rig.send("city/north/air/st1", [{"bn": bad + ":", "n": "pm25", "v": 1}])
    if "/" not in bad:
        rig.send(f"city/north/air/{bad}/pm25", b"1")
        rig.send(f"city/north/air/st1/{bad}", b"1")
        rig.send(f"city/{bad}/air/st1/pm25", b"1")  # group
    n = rig.counters.messages[cn.EMPTY]
    assert rig.results() == {cn.EMPTY: n}
    assert rig.drops() == {cn.INVALID_ID: n}
    assert rig.registry.n == 0


def test_too_old(rig: Rig) -> None:
    assert rig.send("city/north/air/st1", {"ts": "1999-12-31T23:59:59Z", "pm25": 1}) == []
    assert rig.send("city/north/air/st1", [{"ts": 946684799, "pm25": 1}, {"pm25": 2}]) != []
    assert rig.send("city/north/air/st1/pm25", b"5", recv_ms=0) == []
    assert rig.drops() == {cn.TOO_OLD: 3}
    assert rig.results() == {cn.EMPTY: 2, cn.OK: 1}
    assert rig.registry.n == 1  # too-old readings register no channel


def test_far_times_are_invalid_for_entries_and_senml(rig: Rig) -> None:
    rig.send("city/north/air/st1", [{"ts": 10**30, "pm25": 1}, {"ts": -(10**30), "pm25": 1}])
    rig.send(
        "city/north/air/st1", [{"bt": 1e300, "n": "pm25", "v": 1}, {"bt": 1e12, "n": "x", "v": 1}]
    )
    assert rig.drops() == {cn.INVALID_VALUE: 4}
    assert rig.results() == {cn.EMPTY: 2}


def test_capacity() -> None:
    r = Rig(Settings(channels=ChannelSettings(max_channels=3)))
    out = r.send("city/north/air/st1", {"a": 1, "b": 2, "c": 3, "d": 4})
    assert len(out) == 3
    assert r.drops() == {cn.CAPACITY: 1}
    assert r.send("city/north/air/st1/a", b"5") != []  # existing channels still work
    assert r.send("city/north/air/st2/a", b"5") == []
    assert r.drops() == {cn.CAPACITY: 2}
    assert r.results() == {cn.OK: 2, cn.EMPTY: 1}


def test_sensor_list_without_registering_unknown(tmp_path: Path) -> None:
    sensors = tmp_path / "sensors.csv"
    sensors.write_text(
        "device,kind,group,lat,lon,neighbours\n"
        "st1,air,centre,52.5,13.4,st2\n"
        "p1,pipe,west,52.6,13.3,\n"
    )
    r = Rig(from_dict({"channels": {"sensors": str(sensors), "register_unknown": False}}))
    out = r.send("city/north/air/st1", {"pm25": 1})
    assert out == [(ch("st1", "pm25", "air", "centre"), RECV, 1.0)]  # listed group wins
    out = r.send("city/north/air/gw", [{"device": "p1", "pressure": 2}, {"device": "zz", "x": 1}])
    assert out == [(ch("p1", "pressure", "pipe", "west"), RECV, 2.0)]
    assert r.send("city/north/air/st9/pm25", b"1") == []
    assert r.drops() == {cn.UNKNOWN_DEVICE: 2}
    assert r.results() == {cn.OK: 2, cn.EMPTY: 1}


# ---------------------------------------------------------------- topics, logging


def test_topic_cache_is_bounded(monkeypatch: pytest.MonkeyPatch, rig: Rig) -> None:
    monkeypatch.setattr(decode_mod, "TOPIC_CACHE_MAX", 10)
    for i in range(25):
        rig.send(f"city/north/air/st{i}/pm25", b"1")
        assert len(rig.decoder._topics) <= 10
    long_topic = "city/north/air/st1/" + "m" * 1000
    rig.send(long_topic, b"1")
    assert long_topic not in rig.decoder._topics
    assert rig.results() == {cn.OK: 25, cn.EMPTY: 1}


def test_first_matching_pattern_wins() -> None:
    r = Rig(
        from_dict(
            {
                "input": {
                    "patterns": [
                        "city/{group}/{kind}/gw/+",
                        "city/{group}/{kind}/{device}/{metric}",
                    ]
                }
            }
        )
    )
    assert r.decoder.topic_fields("city/n/air/gw/x") == ("air", "n", None, None)
    assert r.decoder.topic_fields("city/n/air/d1/m") == ("air", "n", "d1", "m")
    assert r.decoder.topic_fields("city/n/bike/d1/m") == "unknown kind 'bike'"


def test_log_detail_is_short(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Z" * 5000
    with caplog.at_level(logging.WARNING, logger="streamproc"):
        rig.send("city/north/air/st1", ('{"pm25": "' + secret + '"').encode())
        rig.send("city/north/air/st1", {"pm25": secret})
        rig.send("city/north/air/" + "t" * 5000, b"1")
    assert len(caplog.records) == 3
    assert "city/north/air/st1" in caplog.text
    assert all(len(r.getMessage()) < 300 for r in caplog.records)


def test_far_future_is_judged_against_the_receive_time(rig: Rig) -> None:
    ahead = RECV + 300_000  # input.max_future_s = 300: the limit itself is accepted
    assert rig.send("city/north/air/st1/pm25", {"ts": ahead, "value": 1}) != []
    assert rig.send("city/north/air/st1/pm25", {"ts": ahead + 1, "value": 2}) == []
    assert rig.drops() == {cn.FAR_FUTURE: 1}
    # a reading long after the previous one is not "future" when it arrives on time
    later = RECV + 86_400_000
    out = rig.send("city/north/air/st1/pm25", {"ts": later, "value": 3}, recv_ms=later)
    assert out == [(ch("st1", "pm25"), later, 3.0)]
