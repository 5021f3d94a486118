"""Simulated city: feed shape, realism limits, injected anomalies; and the score script."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamproc.sources.simulate import (
    ANOMALIES,
    KINDS,
    SimConfig,
    iter_messages,
    parse_duration,
    simulate,
    write,
)
from streamproc.times import parse_rfc3339_ms

ROOT = Path(__file__).resolve().parents[1]
DAY_MS = 86_400_000
LIMITS = {
    ("air", "pm25"): (0, 60),
    ("air", "pm10"): (0, 120),
    ("air", "no2"): (0, 160),
    ("air", "o3"): (0, 150),
    ("pipe", "pressure"): (2, 7),
}


@dataclass
class Readings:
    """The feed decoded into one row per reading, sorted by channel then event time."""

    channel: np.ndarray  # index into names
    names: list[tuple[str, str, str]]  # (device, metric, kind)
    ts: np.ndarray
    value: np.ndarray
    text: list[str]  # the number exactly as in the payload

    def rows(self, device: str, metric: str) -> slice:
        c = self.names.index((device, metric, _kind(device)))
        lo, hi = np.searchsorted(self.channel, [c, c + 1])
        return slice(int(lo), int(hi))


def _kind(device: str) -> str:
    return {"air": "air", "trf": "traffic", "pipe": "pipe"}[device.split("-")[0]]


@pytest.fixture(scope="module")
def city() -> tuple[pa.Table, pa.Table, Readings]:
    feed, labels = simulate(SimConfig(channels=2000, seed=7))
    codes: dict[tuple[str, str, str], int] = {}
    ch, ts, val, text = [], [], [], []
    for topic, payload in zip(feed["topic"].to_pylist(), feed["payload"].to_pylist(), strict=True):
        _, _, kind, device = topic.split("/")
        doc = orjson.loads(payload)
        raw = payload.decode()
        for metric, v in doc.items():
            if metric == "ts":
                continue
            ch.append(codes.setdefault((device, metric, kind), len(codes)))
            ts.append(doc["ts"])
            val.append(v)
            # the literal number in the payload, for exact-repeat checks
            start = raw.index(f'"{metric}":') + len(metric) + 3
            end = raw.find(",", start)
            text.append(raw[start : end if end >= 0 else -1])
    ch_a, ts_a = np.array(ch), np.array(ts, np.int64)
    order = np.lexsort((ts_a, ch_a))
    readings = Readings(
        ch_a[order], list(codes), ts_a[order], np.array(val)[order], [text[i] for i in order]
    )
    return feed, labels, readings


def _labels(labels: pa.Table) -> list[dict[str, str]]:
    return labels.to_pylist()


def test_deterministic_for_a_seed() -> None:
    cfg = SimConfig(channels=300, duration_s=12 * 3600, seed=3)
    a, b = simulate(cfg), simulate(SimConfig(channels=300, duration_s=12 * 3600, seed=3))
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    c = simulate(SimConfig(channels=300, duration_s=12 * 3600, seed=4))
    assert not a[0].equals(c[0])


def test_feed_schema_order_and_latency(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    feed, _, _ = city
    assert feed.schema.names == ["ts", "topic", "payload"]
    assert feed.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    arrival = feed["ts"].cast(pa.int64()).to_numpy()
    assert (np.diff(arrival) >= 0).all()
    events = np.array([orjson.loads(p)["ts"] for p in feed["payload"].to_pylist()], np.int64)
    lat = arrival - events
    assert lat.min() >= 20 and lat.max() <= 500
    start = SimConfig().start_ms
    assert events.min() >= start and events.max() < start + DAY_MS
    # per device (so per channel) arrival order equals event-time order
    topics = np.array(feed["topic"].to_pylist())
    order = np.lexsort((np.arange(len(topics)), topics))  # by topic, then feed position
    same = topics[order][1:] == topics[order][:-1]
    assert (np.diff(events[order])[same] > 0).all()


def test_topics_payloads_kinds_and_metrics(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    feed, _, readings = city
    kinds_seen: dict[str, set[str]] = defaultdict(set)
    for _device, metric, kind in readings.names:
        kinds_seen[kind].add(metric)
    assert kinds_seen == {k.kind: set(k.metrics) for k in KINDS}
    n_channels = len(readings.names)
    assert abs(n_channels - 2000) <= 10
    by_kind: dict[str, int] = defaultdict(int)
    for _, _, kind in readings.names:
        by_kind[kind] += 1
    assert by_kind["air"] / n_channels == pytest.approx(0.40, abs=0.02)
    assert by_kind["pipe"] / n_channels == pytest.approx(0.25, abs=0.02)
    groups = defaultdict(set)
    for topic in set(feed["topic"].to_pylist()):
        city_, group, kind, device = topic.split("/")
        assert city_ == "city" and device.split("-")[0] in ("air", "trf", "pipe")
        groups[group].add(kind)
    assert len(groups) >= 4 and all(g == {"air", "traffic", "pipe"} for g in groups.values())
    first = feed["payload"][0].as_py()
    assert first.startswith(b'{"ts":1767') and b"e-" not in first
    # fixed decimals per metric
    decimals = {(k.kind, m): d for k in KINDS for m, d in zip(k.metrics, k.decimals, strict=True)}
    for i in range(0, len(readings.text), 997):
        device, metric, kind = readings.names[readings.channel[i]]
        whole, frac = readings.text[i].split(".")
        assert whole.isdigit() and len(frac) == decimals[(kind, metric)]


def test_iter_messages(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    feed, _, _ = city
    head = feed.slice(0, 100_000)
    msgs = list(iter_messages(head))
    assert len(msgs) == head.num_rows
    ts, topic, payload = msgs[-1]
    assert ts == head["ts"].cast(pa.int64())[-1].as_py()
    assert topic == head["topic"][-1].as_py() and payload == head["payload"][-1].as_py()
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(msgs))


def test_every_anomaly_type_is_labelled(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    _, labels, _ = city
    assert labels.schema.names == ["device", "metric", "kind", "anomaly", "start", "end"]
    rows = _labels(labels)
    assert {r["anomaly"] for r in rows} == set(ANOMALIES)
    start = SimConfig().start_ms
    channels = [(r["device"], r["metric"]) for r in rows]
    assert len(channels) == len(set(channels)), "a channel got two anomalies"
    for r in rows:
        s, e = parse_rfc3339_ms(r["start"]), parse_rfc3339_ms(r["end"])
        assert r["start"].endswith("Z") and len(r["start"]) == 24
        assert start + 6 * 3_600_000 <= s <= e < start + DAY_MS
        if r["anomaly"] in ("spike", "dip"):
            assert s == e


def test_stuck_channels_repeat_exactly(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    _, labels, rd = city
    stuck = [r for r in _labels(labels) if r["anomaly"] == "stuck"]
    assert stuck
    for r in stuck:
        sl = rd.rows(r["device"], r["metric"])
        ts = rd.ts[sl]
        inside = (ts >= parse_rfc3339_ms(r["start"])) & (ts <= parse_rfc3339_ms(r["end"]))
        texts = {t for t, keep in zip(rd.text[sl], inside, strict=True) if keep}
        assert inside.sum() >= 12 and len(texts) == 1


def test_no_natural_flatlines(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    """Outside stuck labels no channel repeats one value 12 times in a row."""
    _, labels, rd = city
    stuck = {(r["device"], r["metric"]) for r in _labels(labels) if r["anomaly"] == "stuck"}
    v = rd.value
    same = (v[1:] == v[:-1]) & (rd.channel[1:] == rd.channel[:-1])
    # length of the current run of equal neighbours, vectorised via cumulative sums
    csum = np.cumsum(same)
    reset = np.maximum.accumulate(np.where(~same, csum, 0))
    run = csum - reset
    for i in np.flatnonzero(run >= 11):
        device, metric, _ = rd.names[rd.channel[i]]
        assert (device, metric) in stuck


def test_dropout_devices_are_silent(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    feed, labels, _ = city
    drops = [r for r in _labels(labels) if r["anomaly"] == "dropout"]
    assert drops
    events_by_device = defaultdict(list)
    for topic, payload in zip(feed["topic"].to_pylist(), feed["payload"].to_pylist(), strict=True):
        events_by_device[topic.rsplit("/", 1)[1]].append(orjson.loads(payload)["ts"])
    for r in drops:
        ts = np.array(events_by_device[r["device"]])
        s, e = parse_rfc3339_ms(r["start"]), parse_rfc3339_ms(r["end"])
        assert not ((ts >= s) & (ts <= e)).any()
        assert (ts < s).any() and (ts > e).any()


def test_episode_raises_pm_in_its_district(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    feed, labels, rd = city
    episodes = [r for r in _labels(labels) if r["anomaly"] == "episode"]
    assert {r["metric"] for r in episodes} == {"pm25", "pm10"}
    district_of = {t.rsplit("/", 1)[1]: t.split("/")[1] for t in set(feed["topic"].to_pylist())}
    districts = {district_of[r["device"]] for r in episodes}
    assert len(districts) == 1
    stations = {d for d, g in district_of.items() if g in districts and d.startswith("air-")}
    assert {r["device"] for r in episodes if r["metric"] == "pm25"} == stations
    for r in episodes:
        if r["metric"] != "pm25":
            continue
        sl = rd.rows(r["device"], "pm25")
        ts, v = rd.ts[sl], rd.value[sl]
        s, e = parse_rfc3339_ms(r["start"]), parse_rfc3339_ms(r["end"])
        assert 4 * 3_600_000 <= e - s <= 17 * 3_600_000
        assert v[(ts >= s) & (ts <= e)].max() - np.median(v[ts < s]) > 40


def test_normal_data_within_limits(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    _, labels, rd = city
    anomalous = np.zeros(len(rd.ts), bool)
    for r in _labels(labels):
        sl = rd.rows(r["device"], r["metric"])
        ts = rd.ts[sl]
        s, e = parse_rfc3339_ms(r["start"]), parse_rfc3339_ms(r["end"])
        anomalous[sl] |= (ts >= s) & (ts <= e)
    assert rd.value.min() >= 0
    for (kind, metric), (lo, hi) in LIMITS.items():
        codes = [i for i, n in enumerate(rd.names) if (n[2], n[1]) == (kind, metric)]
        sel = np.isin(rd.channel, codes) & ~anomalous
        assert sel.sum() > 1000
        assert lo < rd.value[sel].min() and rd.value[sel].max() < hi, (kind, metric)


def test_spikes_stand_out(city: tuple[pa.Table, pa.Table, Readings]) -> None:
    _, labels, rd = city
    for r in _labels(labels):
        if r["anomaly"] not in ("spike", "dip"):
            continue
        sl = rd.rows(r["device"], r["metric"])
        v, ts = rd.value[sl], rd.ts[sl]
        i = int(np.searchsorted(ts, parse_rfc3339_ms(r["start"])))
        typical = np.median(np.abs(np.diff(v)))
        jump = abs(v[i] - v[i - 1])
        assert jump > 4 * typical, r


def test_write(tmp_path: Path) -> None:
    cfg = SimConfig(channels=300, duration_s=12 * 3600, seed=1)
    feed_path, labels_path = write(cfg, tmp_path / "sim")
    feed, labels = simulate(cfg)
    assert pq.read_table(feed_path).equals(feed)
    assert pq.ParquetFile(feed_path).metadata.row_group(0).column(0).compression == "ZSTD"
    with open(labels_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == labels.to_pylist()
    assert {r["anomaly"] for r in rows} >= {"spike", "stuck", "dropout", "episode"}


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="channels"):
        simulate(SimConfig(channels=0))
    with pytest.raises(ValueError, match="interval_s"):
        simulate(SimConfig(channels=100, interval_s={"air": 300, "traffic": 300}))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1d", 86400), ("6h", 21600), ("30m", 1800), ("90s", 90), ("3600", 3600), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1w", "-1h", "0", "1 d 2h", "abc"])
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# ------------------------------------------------------------------ benchmarks/score_sim.py


def _score_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("score_sim", ROOT / "benchmarks/score_sim.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _alert(id_: str, event: str, ts: str, opened: str, resolved: str | None = None) -> str:
    device, metric, rule, _ = id_.split("/")
    return json.dumps(
        {
            "id": id_,
            "event": event,
            "channel": f"{device}/{metric}",
            "device": device,
            "metric": metric,
            "kind": "air",
            "group": "d01",
            "rule": rule,
            "severity": "warning",
            "state": "resolved" if event == "resolve" else "open",
            "ts": ts,
            "opened_at": opened,
            "resolved_at": resolved,
            "peak_value": 1.0,
            "score": 7.0,
            "message": "",
        }
    )


def test_score(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "device,metric,kind,anomaly,start,end\n"
        "air-0001,pm25,air,spike,2026-01-05T08:00:00.000Z,2026-01-05T08:00:00.000Z\n"
        "air-0002,pm25,air,spike,2026-01-05T09:00:00.000Z,2026-01-05T09:00:00.000Z\n"
        "air-0003,no2,air,stuck,2026-01-05T10:00:00.000Z,2026-01-05T12:00:00.000Z\n"
        "air-0004,o3,air,drift,2026-01-05T10:00:00.000Z,2026-01-05T16:00:00.000Z\n"
    )
    t = "2026-01-05T"
    lines = [
        # on time: detects air-0001 spike
        _alert("air-0001/pm25/zscore/1", "open", t + "08:00:00.000Z", t + "08:00:00.000Z"),
        _alert(
            "air-0001/pm25/zscore/1",
            "resolve",
            t + "08:10:00.000Z",
            t + "08:00:00.000Z",
            t + "08:10:00.000Z",
        ),
        # wrong channel: a false alert, air-0002 missed
        _alert("air-0009/pm25/zscore/2", "open", t + "09:00:00.000Z", t + "09:00:00.000Z"),
        _alert(
            "air-0009/pm25/zscore/2",
            "resolve",
            t + "09:05:00.000Z",
            t + "09:00:00.000Z",
            t + "09:05:00.000Z",
        ),
        # opens 10 min after the stuck window ends: within the 15 min tolerance
        _alert("air-0003/no2/flatline/3", "open", t + "12:10:00.000Z", t + "12:10:00.000Z"),
        # never resolved: lasts to the last event time (17:00), overlaps the drift
        _alert("air-0004/o3/zscore/4", "open", t + "09:00:00.000Z", t + "09:00:00.000Z"),
        _alert("air-0004/o3/threshold/5", "open", t + "17:00:00.000Z", t + "17:00:00.000Z"),
    ]
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("\n".join(lines) + "\n")
    mod = _score_module()
    res = mod.score(labels, alerts, 900)
    spike = res["anomalies"]["spike"]
    assert (spike["labels"], spike["detected"], spike["recall"]) == (2, 1, 0.5)
    assert spike["rules"] == {"zscore": 1} and spike["matched_alerts"] == 1
    assert res["anomalies"]["stuck"]["rules"] == {"flatline": 1}
    assert res["anomalies"]["drift"]["detected"] == 1
    assert res["total"] == {"labels": 4, "detected": 3, "recall": 0.75}
    p = res["precision"]
    assert (p["alerts"], p["matched"]) == (5, 3)
    assert p["rules"]["zscore"] == {"alerts": 3, "matched": 2, "precision": 2 / 3}
    assert p["rules"]["threshold"]["matched"] == 0
    # with no tolerance the late flatline alert misses
    assert mod.score(labels, alerts, 0)["anomalies"]["stuck"]["detected"] == 0
    text = mod.render(res)
    assert "spike" in text and "50.0%" in text
    md = mod.render(res, markdown=True)
    assert md.startswith("## Recall") and "| anomaly |" in md
    assert mod.main(["--labels", str(labels), "--alerts", str(alerts), "--markdown"]) == 0
