"""Bad input: every kind has its documented outcome and the metric that counts it, read from
``/metrics`` as Prometheus scrapes it; a short fuzz of the decoder closes the file (the long
one is ``benchmarks/fuzz_decoders.py``). docs/RELIABILITY.md lists the outcomes."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families

from streamproc import counters as cn
from streamproc import decode as decode_mod
from streamproc.cli import main
from streamproc.config import ConfigError, Settings, from_dict, load
from streamproc.daemon import Daemon
from streamproc.metrics import Metrics
from streamproc.pipeline import Pipeline
from tests.fuzzing import (
    SEEDS,
    TARGETS,
    Harness,
    decode_document,
    decode_raw,
    decode_senml,
    decode_stream,
)

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z, on a snapshot interval boundary
RECV = T0 + 3_600_000  # receive time of the messages, epoch ms
TOPIC = "city/d1/air/st1/pm25"
DEVICE_TOPIC = "city/d1/air/st1"
BIG = b"1" + b"0" * 400  # 10**400: beyond float64


def short(value: object) -> str | None:
    """Test ids: payloads with BIG in them, shortened."""
    return repr(value.replace(BIG, b"BIG"))[2:-1] if isinstance(value, bytes) else None


class City:
    """A pipeline and its ``/metrics`` view."""

    def __init__(self, out: Path, s: Settings | None = None):
        self.pipeline = Pipeline(s or Settings(), out)
        self.metrics = Metrics(self.pipeline)
        self.canaries = 0

    def send(self, topic: str, payload: bytes, recv_ms: int = RECV) -> None:
        errors = self.pipeline.decoder.internal_errors
        self.pipeline.message(topic, payload, recv_ms)
        assert self.pipeline.decoder.internal_errors == errors, "an exception in the decoder"

    def scrape(self) -> dict[str, dict[str, float]]:
        """Runs the pending batch, then: sample name -> {label values joined by '/': value}."""
        self.pipeline.flush()
        text = self.metrics.render().decode()
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name]["/".join(s.labels.values())] = s.value
        return out

    def counts(self) -> tuple[float, dict[str, float], dict[str, float]]:
        """streamproc_readings_total, messages_total by result, dropped_total by reason."""
        m = self.scrape()
        return (
            m["streamproc_readings_total"][""],
            m["streamproc_messages_total"],
            m["streamproc_dropped_total"],
        )

    def still_works(self) -> None:
        """A good message after the bad ones is processed as usual."""
        readings, messages, _ = self.counts()
        self.canaries += 1
        self.send(f"city/d1/air/canary{self.canaries}/pm25", b"7")
        after, messages_after, _ = self.counts()
        assert after == readings + 1
        assert messages_after[cn.OK] == messages.get(cn.OK, 0) + 1


@pytest.fixture
def make_city(tmp_path: Path) -> Iterator[Callable[[dict], City]]:
    """City(settings from a config document), closed after the test."""
    cities: list[City] = []

    def make(doc: dict) -> City:
        cities.append(City(tmp_path / str(len(cities)), from_dict(doc)))
        return cities[-1]

    yield make
    for c in cities:
        c.pipeline.close()


@pytest.fixture
def city(make_city: Callable[[dict], City]) -> City:
    return make_city({})


# ---------------------------------------------------------------- refused whole: message results


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b"not json",
        b'{"pm25": 1,}',
        b"{'pm25': 1}",
        b"[1, 2",
        b'{"pm25": 1} {"no2": 2}',
        b"\xff\xfe\x00",
        b'{"bad": "\xc3\x28"}',
        b"\x00",
        b"1 2",
    ],
)
def test_malformed_json(city: City, payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streamproc"):
        city.send(DEVICE_TOPIC, payload)
    assert city.counts() == (0, {cn.MALFORMED: 1}, {})
    assert "malformed: 'city/d1/air/st1': not JSON" in caplog.text
    city.still_works()


@pytest.mark.parametrize(
    ("topic", "payload", "messages", "dropped"),
    [
        (TOPIC, b'"12.5"', {cn.MALFORMED: 1}, {}),  # a string, not a number
        (TOPIC, b"null", {cn.MALFORMED: 1}, {}),
        (TOPIC, b"true", {cn.MALFORMED: 1}, {}),
        (DEVICE_TOPIC, b"12.5", {cn.MALFORMED: 1}, {}),  # a bare number needs {metric}
        (DEVICE_TOPIC, b"[1, 2]", {cn.MALFORMED: 1}, {}),
        (DEVICE_TOPIC, b'{"readings": {"pm25": 1}}', {cn.MALFORMED: 1}, {}),
        (DEVICE_TOPIC, b'{"device": 3, "pm25": 1}', {cn.MALFORMED: 1}, {}),
        (DEVICE_TOPIC, b'{"ts": true, "pm25": 1}', {cn.MALFORMED: 1}, {}),
        (DEVICE_TOPIC, b'{"ts": "yesterday", "pm25": 1}', {cn.MALFORMED: 1}, {}),
        (DEVICE_TOPIC, b'{"pm25": "7", "no2": 1}', {cn.OK: 1}, {cn.INVALID_VALUE: 1}),
        (DEVICE_TOPIC, b'{"pm25": true, "no2": null}', {cn.EMPTY: 1}, {cn.INVALID_VALUE: 2}),
        (DEVICE_TOPIC, b'{"pm25": [1], "no2": {}}', {cn.EMPTY: 1}, {cn.INVALID_VALUE: 2}),
        (DEVICE_TOPIC, b'{"metric": 5, "value": 1}', {cn.EMPTY: 1}, {cn.INVALID_ID: 1}),
        (
            DEVICE_TOPIC,
            b'[{"device": 7, "pm25": 1}, 5]',
            {cn.EMPTY: 1},
            {cn.INVALID_ID: 1, cn.INVALID_VALUE: 1},
        ),
        (
            DEVICE_TOPIC,
            b'[{"n": "a", "vs": "x"}, {"n": "b", "vb": true}, {"n": 3, "v": 1}]',
            {cn.EMPTY: 1},
            {cn.INVALID_VALUE: 2, cn.INVALID_ID: 1},
        ),
    ],
)
def test_wrong_types(city: City, topic: str, payload: bytes, messages: dict, dropped: dict) -> None:
    city.send(topic, payload)
    assert city.counts() == (messages.get(cn.OK, 0), messages, dropped)
    city.still_works()


@pytest.mark.parametrize("payload", [b"", b"{}", b"[]", b'{"ts": 1767571200}', b'{"readings": []}'])
def test_empty_payload(city: City, payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streamproc"):
        city.send(TOPIC, payload)
    assert city.counts() == (0, {cn.EMPTY: 1}, {})
    assert caplog.text == ""  # clearing a retained message is not an error
    city.still_works()


@pytest.mark.parametrize("limit", [100, 65536])
def test_payload_over_max_payload_bytes(make_city: Callable[[dict], City], limit: int) -> None:
    c = make_city({"input": {"max_payload_bytes": limit}})
    c.send(TOPIC, b" " * (limit - 1) + b"1")  # at the limit: decoded
    c.send(TOPIC, b" " * limit + b"1")  # one byte over: refused before parsing
    c.send("no/such/topic", b"{" * (limit + 1))
    assert c.counts() == (1, {cn.OK: 1, cn.REJECTED: 2}, {})
    c.still_works()


@pytest.mark.parametrize("depth", [1_000, 10_000])
def test_deeply_nested_json(city: City, depth: int) -> None:
    city.send(DEVICE_TOPIC, b"[" * depth + b"]" * depth)
    city.send(DEVICE_TOPIC, b'{"a":' * depth + b"1" + b"}" * depth)
    city.send(DEVICE_TOPIC, b'{"pm25": ' + b"[" * depth + b"]" * depth + b', "no2": 1}')
    readings, messages, dropped = city.counts()
    if depth < 1024:  # parsed: an array of arrays; values that are not numbers
        assert (readings, messages, dropped) == (
            1,
            {cn.MALFORMED: 1, cn.EMPTY: 1, cn.OK: 1},
            {cn.INVALID_VALUE: 2},
        )
    else:  # deeper than the parsers go
        assert (readings, messages, dropped) == (0, {cn.MALFORMED: 3}, {})
    city.still_works()


@pytest.mark.parametrize(
    ("topic", "messages"),
    [
        ("city/d1/ufo/st1/pm25", {cn.UNKNOWN: 1}),  # kind not in channels.kinds
        ("city/d1/AIR/st1/pm25", {cn.UNKNOWN: 1}),  # kinds are case-sensitive
        ("town/d1/air/st1/pm25", {cn.UNKNOWN: 1}),  # no pattern matches
        ("city/d1/air/st1/pm25/x", {cn.UNKNOWN: 1}),
    ],
)
def test_unknown_kind_in_topic(city: City, topic: str, messages: dict) -> None:
    city.send(topic, b"1")
    assert city.counts() == (0, messages, {})
    city.still_works()


@pytest.mark.parametrize(
    "payload",
    [
        b'{"kind": "ufo", "pm25": 1}',
        b'[{"device": "a", "kind": "ufo", "pm25": 1}]',
        b'{"readings": [{"kind": "UFO", "metric": "x", "value": 1}]}',
    ],
)
def test_unknown_kind_in_payload(city: City, payload: bytes) -> None:
    city.send(DEVICE_TOPIC, payload)
    assert city.counts() == (0, {cn.EMPTY: 1}, {cn.INVALID_ID: 1})
    assert city.pipeline.registry.n == 0
    city.still_works()


# ---------------------------------------------------------------- readings dropped, by reason


@pytest.mark.parametrize(
    ("topic", "payload", "drops"),
    [
        (TOPIC, b"NaN", 1),
        (TOPIC, b"Infinity", 1),
        (TOPIC, b"-Infinity", 1),
        (DEVICE_TOPIC, b'{"pm25": NaN, "no2": Infinity, "o3": -Infinity}', 3),
        (TOPIC, b'{"value": NaN}', 1),
        (DEVICE_TOPIC, b'[{"n": "pm25", "v": NaN}, {"n": "no2", "v": Infinity}]', 2),
        (DEVICE_TOPIC, b'[{"ts": NaN, "pm25": 1}, {"ts": Infinity, "no2": 1}]', 2),
        (
            DEVICE_TOPIC,
            b'[{"bt": NaN, "n": "pm25", "v": 1}, {"bt": 0, "bv": -Infinity, "n": "no2", "v": 1}]',
            2,
        ),
    ],
)
def test_nan_and_infinity(city: City, topic: str, payload: bytes, drops: int) -> None:
    city.send(topic, payload)
    assert city.counts() == (0, {cn.EMPTY: 1}, {cn.INVALID_VALUE: drops})
    city.still_works()


@pytest.mark.parametrize("ts", [b"NaN", b"Infinity", b"1e400", BIG], ids=short)
def test_nan_and_infinity_as_message_time(city: City, ts: bytes) -> None:
    city.send(DEVICE_TOPIC, b'{"ts": ' + ts + b', "pm25": 1}')
    assert city.counts() == (0, {cn.MALFORMED: 1}, {})
    city.still_works()


@pytest.mark.parametrize(
    ("payload", "readings", "dropped"),
    [
        (b"1e400", 0, 1),  # beyond float64: infinite
        (b"-1e999", 0, 1),
        (BIG, 0, 1),  # an integer beyond float64
        (b"-" + BIG, 0, 1),
        (b"18446744073709551616", 1, 0),  # 2**64 fits a float64
        (b"1.7976931348623157e308", 1, 0),  # the largest float64
        (b"5e-324", 1, 0),
        (b'{"value": ' + BIG + b"}", 0, 1),
        (b'[{"n": "pm25", "v": ' + BIG + b"}]", 0, 1),
        # a huge integer next to a float: once an OverflowError inside the decoder
        (b'[{"bv": 1.5, "n": "pm25", "v": ' + BIG + b"}]", 0, 1),
        (b'[{"bt": 1.5, "n": "pm25", "v": 1, "t": ' + BIG + b"}]", 0, 1),
        (b'[{"bt": ' + BIG + b', "n": "pm25", "v": 1, "t": 0.5}]', 0, 1),
        (b'[{"bt": -' + BIG + b', "n": "pm25", "v": 1, "t": 0.5}]', 0, 1),
        (b'[{"bt": 1.5e308, "n": "pm25", "v": 1, "t": 1.5e308}]', 0, 1),  # sum overflows
        (b'[{"bv": 1.5e308, "n": "pm25", "v": 1.5e308}]', 0, 1),
    ],
    ids=short,
)
def test_huge_numbers(city: City, payload: bytes, readings: int, dropped: int) -> None:
    city.send(TOPIC, payload)
    result = cn.OK if readings else cn.EMPTY
    assert city.counts() == (readings, {result: 1}, {cn.INVALID_VALUE: dropped} if dropped else {})
    assert city.pipeline.decoder.internal_errors == 0
    city.still_works()


def test_numbers_longer_than_python_parses_are_malformed(city: City) -> None:
    city.send(TOPIC, b"1" * 5000)  # over the 4300-digit limit of int(); orjson: infinite
    assert city.counts() == (0, {cn.MALFORMED: 1}, {})
    city.still_works()


@pytest.mark.parametrize(
    ("payload", "recv_ms", "reason"),
    [
        (b'{"ts": %d, "value": 1}' % (RECV + 300_001), RECV, cn.FAR_FUTURE),
        (b'{"ts": "2030-01-01T00:00:00Z", "value": 1}', RECV, cn.FAR_FUTURE),
        (b'[{"n": "pm25", "v": 1, "t": 301}]', RECV, cn.FAR_FUTURE),  # SenML, relative
        (b'{"ts": -1, "value": 1}', RECV, cn.TOO_OLD),  # 1969
        (b'{"ts": -1767571200000, "value": 1}', RECV, cn.TOO_OLD),
        (b'{"ts": "1969-12-31T23:59:59Z", "value": 1}', RECV, cn.TOO_OLD),
        (b'{"ts": 0, "value": 1}', RECV, cn.TOO_OLD),
        (b"1", -1_000, cn.TOO_OLD),  # no time in the payload, a negative receive time
        (b'[{"bt": -1e9, "n": "pm25", "v": 1}]', RECV, cn.TOO_OLD),  # SenML, relative
        (b'[{"ts": -1e20, "value": 1}]', RECV, cn.INVALID_VALUE),  # before year 1
    ],
)
def test_far_future_and_negative_timestamps(
    city: City, payload: bytes, recv_ms: int, reason: str
) -> None:
    city.send(TOPIC, payload, recv_ms)
    assert city.counts() == (0, {cn.EMPTY: 1}, {reason: 1})
    city.still_works()


def test_timestamps_at_the_limits_are_kept(city: City) -> None:
    city.send("city/d1/air/st2/pm25", b'{"ts": "2000-01-01T00:00:00Z", "value": 1}')  # min_ts
    city.send(TOPIC, b'[{"n": "no2", "v": 1, "t": -30}]')  # SenML: 30 s before receipt
    city.send(TOPIC, b'{"ts": %d, "value": 1}' % (RECV + 300_000))  # input.max_future_s
    assert city.counts() == (3, {cn.OK: 3}, {})


@pytest.mark.parametrize("flush_each", [False, True], ids=["one-batch", "batch-per-message"])
def test_duplicate_and_out_of_order_timestamps(city: City, flush_each: bool) -> None:
    times = [T0, T0, T0 + 60_000, T0 + 30_000, T0 + 60_000, T0 + 120_000]
    for i, ts in enumerate(times):
        city.send(TOPIC, b'{"ts": %d, "value": %d}' % (ts, i), T0 + 130_000)
        if flush_each:
            city.pipeline.flush()
    # decoded fine (ok); the detector keeps only readings newer than the channel's last
    assert city.counts() == (3, {cn.OK: 6}, {cn.OUT_OF_ORDER: 3})


def test_readings_for_a_written_interval_are_late(city: City) -> None:
    recv = T0 + 400_000
    city.send(TOPIC, b'{"ts": %d, "value": 1}' % T0, recv)
    # 400 s: past the first 300 s snapshot interval plus its 60 s grace, which is written
    city.send("city/d1/air/st2/pm25", b'{"ts": %d, "value": 1}' % (T0 + 400_000), recv)
    city.send("city/d1/air/st3/pm25", b'{"ts": %d, "value": 1}' % (T0 + 10_000), recv)
    city.send(TOPIC, b'{"ts": %d, "value": 2}' % (T0 + 100_000), recv)  # newer, still late
    assert city.counts() == (2, {cn.OK: 4}, {cn.LATE: 2})


# ---------------------------------------------------------------- ids from topics and payloads

ODD = [
    "+",
    "#",
    "a+b",
    "a#b",
    "a b",
    "\x00",
    "\t",
    "\x7f",
    "\x1b[31m",
    "\u2028",
    "é",
    "",
    "x" * 129,
]


@pytest.mark.parametrize("seg", ODD, ids=repr)
@pytest.mark.parametrize(
    ("template", "result"),
    [
        ("city/{}/air/st1/pm25", cn.EMPTY),  # group
        ("city/d1/air/{}/pm25", cn.EMPTY),  # device
        ("city/d1/air/st1/{}", cn.EMPTY),  # metric
        ("city/d1/{}/st1/pm25", cn.UNKNOWN),  # kind
    ],
    ids=["group", "device", "metric", "kind"],
)
def test_topic_segments_with_odd_characters(
    city: City, template: str, result: str, seg: str
) -> None:
    city.send(template.format(seg), b"1")
    dropped = {cn.INVALID_ID: 1} if result == cn.EMPTY else {}
    assert city.counts() == (0, {result: 1}, dropped)
    assert city.scrape()["streamproc_channels"]["air/active"] == 0
    city.still_works()


@pytest.mark.parametrize(
    "topic", ["city/d1/air/st/1/pm25", "city/d1/air/st1/pm25/", "/city/d1/air/st1", "city", ""]
)
def test_topic_with_extra_slashes(city: City, topic: str) -> None:
    city.send(topic, b"1")
    assert city.counts() == (0, {cn.UNKNOWN: 1}, {})
    city.still_works()


def test_slash_at_a_segment_boundary_reads_as_an_empty_id(city: City) -> None:
    city.send("city/d1/air/st1/", b"1")  # five segments, the metric empty
    city.send("city//air/st1/pm25", b"1")
    assert city.counts() == (0, {cn.EMPTY: 2}, {cn.INVALID_ID: 2})


@pytest.mark.parametrize("bad", ["a+b", "a#", "a/b", "\x00", "x" * 129])
def test_odd_ids_in_payloads(city: City, bad: str) -> None:
    city.send(DEVICE_TOPIC, json.dumps({bad: 1}).encode())
    city.send(DEVICE_TOPIC, json.dumps([{"device": bad, "pm25": 1}]).encode())
    city.send(DEVICE_TOPIC, json.dumps([{"bn": bad + ":", "n": "pm25", "v": 1}]).encode())
    assert city.counts() == (0, {cn.EMPTY: 3}, {cn.INVALID_ID: 3})
    assert city.pipeline.registry.n == 0


# ---------------------------------------------------------------- floods


def test_flood_of_new_device_ids_beyond_max_channels(
    make_city: Callable[[dict], City], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decode_mod, "TOPIC_CACHE_MAX", 1000)
    small_city = make_city({"channels": {"max_channels": 50}})
    for i in range(5000):
        small_city.send(f"city/d1/air/dev{i}/pm25", b"1")
    assert small_city.counts() == (50, {cn.OK: 50, cn.EMPTY: 4950}, {cn.CAPACITY: 4950})
    reg = small_city.pipeline.registry
    assert reg.n == len(reg.devices) == 50  # refused devices leave nothing behind
    assert len(small_city.pipeline.decoder._topics) <= 1000
    assert small_city.scrape()["streamproc_channels"]["air/active"] == 50
    small_city.send("city/d1/air/dev7/pm25", b'{"ts": %d, "value": 2}' % (RECV + 1000))
    assert small_city.counts()[0] == 51


def test_flood_of_unlisted_devices(tmp_path: Path, make_city: Callable[[dict], City]) -> None:
    sensors = tmp_path / "sensors.csv"
    sensors.write_text("device,kind,group,lat,lon\nst1,air,d1,52.5,13.4\n")
    c = make_city({"channels": {"sensors": str(sensors), "register_unknown": False}})
    for i in range(1000):
        c.send(f"city/d1/air/dev{i}/pm25", b"1")
    assert c.counts() == (0, {cn.EMPTY: 1000}, {cn.UNKNOWN_DEVICE: 1000})
    assert c.pipeline.registry.n == 0 and list(c.pipeline.registry.devices) == ["st1"]
    c.send(TOPIC, b"1")  # the listed device still gets through
    assert c.counts()[0] == 1


# ---------------------------------------------------------------- the configuration file

BAD_CONFIGS = [
    ("[detect\n", "not valid TOML"),
    ("[nosection]\n", "nosection"),
    ("[input]\nmax_payload_bytes = 0\n", "input.max_payload_bytes"),
    ("[input]\nmax_payload_bytes = '64k'\n", "input.max_payload_bytes"),
    ("[input]\nmax_future_s = -1\n", "input.max_future_s"),
    ("[input]\npatterns = ['city/{group}/{device}']\n", "input.patterns[0]"),
    ("[channels]\nmax_channels = -5\n", "channels.max_channels"),
    ("[channels]\nkinds = []\n", "channels.kinds"),
    ("[rules.zscore]\nz_open = nan\n", "rules.zscore"),
    # accepted once, then a crash at start or a setting that silently never applies
    ("[input]\nmax_future_s = nan\n", "input.max_future_s"),
    ("[detect]\ntick_s = inf\n", "detect.tick_s"),
    ("[snapshots]\ninterval_s = inf\n", "snapshots.interval_s"),
    ("[alerts]\nhold_s = nan\n", "alerts.hold_s"),
    ("[rules.rate]\ncritical_factor = nan\n", "rules.rate.critical_factor"),
    ("[rules.hampel]\nz_critical = nan\n", "rules.hampel.z_critical"),
    ("[mqtt]\nreconnect_max_s = nan\n", "mqtt.reconnect_max_s"),
    ("[mqtt]\nkeepalive_s = 65536\n", "mqtt.keepalive_s"),  # the broker connection failed
    ("[mqtt]\nsession_expiry_s = 4294967296\n", "mqtt.session_expiry_s"),
]


@pytest.mark.parametrize(("text", "named"), BAD_CONFIGS, ids=[n for _, n in BAD_CONFIGS])
def test_invalid_config_file(
    tmp_path: Path, text: str, named: str, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "city.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        load(path)
    assert main(["check-config", str(path)]) == 2
    assert main(["run", "-c", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count(named) == 2 and err.startswith("error: ")
    assert not (tmp_path / "out").exists()  # refused before anything started


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_invalid_config_file_on_reload_keeps_the_running_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "city.toml"
    path.write_text(f"[output]\ndir = '{tmp_path / 'out'}'\n[rules.zscore]\nz_open = 6.0\n")
    d = Daemon(load(path), lambda: load(path))
    try:
        running = d.settings
        path.write_text("[rules.zscore]\nz_open = -1\n")
        with caplog.at_level(logging.ERROR, logger="streamproc"):
            d.reload()  # what SIGHUP runs
        assert d.settings is running
        assert "reload refused, keeping the running settings" in caplog.text
        assert "rules.zscore" in caplog.text
        assert 'streamproc_reloads_total{result="refused"} 1.0' in d.metrics.render().decode()
        path.write_text(f"[output]\ndir = '{tmp_path / 'out'}'\n[rules.zscore]\nz_open = 7.0\n")
        d.reload()
        assert d.settings.rules["zscore"].base.z_open == 7.0
        assert 'streamproc_reloads_total{result="applied"} 1.0' in d.metrics.render().decode()
    finally:
        d.pipeline.close()


# ---------------------------------------------------------------- a bug is not bad input


def test_an_exception_inside_the_decoder_is_counted_as_error(
    city: City, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(city.pipeline.decoder, "_senml", broken)
    with caplog.at_level(logging.WARNING, logger="streamproc"):
        city.pipeline.message(DEVICE_TOPIC, b'[{"n": "pm25", "v": 1}]', RECV)
    assert city.pipeline.decoder.internal_errors == 1
    assert city.counts() == (0, {cn.ERROR: 1}, {})
    assert "internal error OverflowError: int too large" in caplog.text
    city.still_works()


# ---------------------------------------------------------------- a short fuzz of the decoder

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(*TARGETS["documents"][1])
def test_fuzz_structured_json(topic: str, doc: object, recv_ms: int) -> None:
    decode_document(topic, doc, recv_ms)


@FUZZ
@given(*TARGETS["senml"][1])
def test_fuzz_senml(records: list, recv_ms: int) -> None:
    decode_senml(records, recv_ms)


@FUZZ
@given(*TARGETS["raw"][1])
def test_fuzz_raw_bytes_and_topics(topic: str, payload: bytes) -> None:
    decode_raw(topic, payload)


@FUZZ
@given(*TARGETS["streams"][1])
def test_fuzz_message_streams(messages: list[tuple[str, bytes, int]]) -> None:
    decode_stream(messages)


@pytest.mark.parametrize(("topic", "payload"), SEEDS)
def test_fuzz_seeds_are_valid(topic: str, payload: bytes) -> None:
    assert Harness().check(topic, payload) == (cn.OK if payload else cn.EMPTY)


def test_tidy_rows_of_a_known_channel_still_need_a_valid_kind_and_group(tmp_path: Path) -> None:
    """Channels are looked up before the ids are checked; a registered (device, metric) in a
    row with a bad kind or group is refused all the same, and a bad device is never registered."""
    import numpy as np

    from streamproc.channel_table import ChannelTable
    from streamproc.runner import known_channels, tidy_batch
    from streamproc.sources.replay import Pairs, TidyChunk

    p = Pipeline(Settings(), tmp_path)
    table = ChannelTable()

    def run(pairs: list[tuple[str, str, str | None, str | None]]) -> list[int]:
        n = len(pairs)
        ts = np.arange(n, dtype=np.int64) + 1_700_000_000_000
        chunk = TidyChunk(ts, np.ones(n), np.arange(n, dtype=np.int32), Pairs.of(pairs), True, True)
        return tidy_batch(p, chunk, known_channels(p, table, chunk)).idx.tolist()

    assert run([("st1", "pm25", "air", "north")]) == [0]
    before = p.counters.dropped.get(cn.INVALID_ID, 0)
    got = run(
        [
            ("st1", "pm25", "air", "no rth"),  # bad group
            ("st1", "pm25", "a/r", "north"),  # bad kind
            ("st1", "pm25", None, None),  # defaults: fine
            ("st 2", "pm25", "air", "north"),  # bad device
        ]
    )
    assert got == [0]
    assert p.counters.dropped[cn.INVALID_ID] - before == 3
    assert p.registry.n == 1
    p.close()


def test_tidy_pairs_ids_are_checked_in_one_pass_as_valid_id_checks_them() -> None:
    """The reading thread checks the ids of a chunk's new pairs on the Arrow column at once;
    it must agree with ``topics.valid_id`` (a full match: no trailing newline, 1 to 128)."""
    import pyarrow as pa

    from streamproc.runner import _valid_names
    from streamproc.topics import valid_id

    names = ["st1", "a" * 128, "a" * 129, "", "st1\n", "\nst1", "st 1", "st/1", "é", "a.b:c@d-e_f",
             "st1\x00", "+", "#", "st\u00a01"]  # fmt: skip
    assert _valid_names(pa.array(names)).tolist() == [valid_id(n) for n in names]
    assert _valid_names(pa.array(names).slice(3)).tolist() == [valid_id(n) for n in names[3:]]


def test_tidy_rows_without_a_finite_value_are_dropped_and_counted(tmp_path: Path) -> None:
    import numpy as np

    from streamproc.channel_table import ChannelTable
    from streamproc.runner import known_channels, tidy_batch
    from streamproc.sources.replay import Pairs, TidyChunk

    p = Pipeline(Settings(), tmp_path)
    value = np.array([1.0, np.nan, np.inf, 2.0, -np.inf])
    ts = np.arange(5, dtype=np.int64) + 1_700_000_000_000
    pairs = Pairs.of([("st1", "pm25", "air", None), ("st2", "pm25", "air", None)])
    chunk = TidyChunk(ts, value, np.array([0, 1, 0, 1, 1], np.int32), pairs, True, True)
    batch = tidy_batch(p, chunk, known_channels(p, ChannelTable(), chunk))
    assert (batch.idx.tolist(), batch.value.tolist()) == ([0, 1], [1.0, 2.0])
    assert batch.ts_ms.tolist() == [ts[0], ts[3]]
    assert p.counters.dropped == {cn.INVALID_VALUE: 3}
    p.close()
