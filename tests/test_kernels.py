"""The numba detector bank against the slow reference, and invariance to batch boundaries."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from streamproc.alerts import Events
from streamproc.batch import Batch
from streamproc.config import Settings, from_dict, load
from streamproc.counters import Counters
from streamproc.detect import Detector, IntervalClosed
from streamproc.kernels.rules import EV_OPEN, R_NEIGHBOUR, RULES
from streamproc.registry import Registry
from tests.reference import Reference

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z

SETTINGS_DICT = {
    "detect": {"window": 8, "tick_s": 30},
    "input": {"max_future_s": 600},
    "snapshots": {"interval_s": 60, "grace_s": 10},
    "alerts": {"hold_s": 20, "flap_window_s": 300, "flap_max": 2, "flap_hold_s": 120},
    "rules": {
        "zscore": {
            "z_open": 3,
            "z_close": 1.5,
            "z_critical": 6,
            "min_readings": 4,
            "overrides": {"traffic.flow": {"z_open": 3}},
        },
        "flatline": {"min_readings": 3, "min_duration_s": 15},
        "dropout": {"factor": 3, "min_gap_s": 40},
        "hampel": {"enabled": True, "z_open": 4, "z_critical": 8, "min_readings": 4},
        "rate": {"overrides": {"pipe.pressure": {"max_fall_per_s": 0.005, "max_rise_per_s": 0.01}}},
        "cusum": {
            "enabled": True,
            "alpha": 0.3,
            "k": 0.25,
            "h": 2,
            "h_close": 0.5,
            "h_critical": 4,
            "clip": 3,
            "min_readings": 4,
            "overrides": {"traffic.flow": {"enabled": False}},
        },
        "level": {
            "enabled": True,
            "alpha": 0.2,
            "z_open": 2,
            "z_close": 1,
            "z_critical": 3,
            "min_readings": 4,
            "overrides": {"pipe.pressure": {"min_std": 5.0}, "air.pm25": {"enabled": False}},
        },
        "seasonal": {
            "enabled": True,
            "utc_offset_h": -1,  # T0 is a Monday 00:00 UTC: a Sunday at first, locally
            "alpha": 0.5,
            "min_hours": 0.005,
            "smooth": 0.6,
            "z_open": 1.5,
            "z_close": 0.75,
            "z_critical": 3,
            "clip": 4,
            "overrides": {"air.pm25": {"enabled": False}},
        },
        "neighbour": {
            "enabled": True,
            "min_neighbours": 3,
            "min_intervals": 2,
            "alpha": 0.3,
            "smooth": 0.5,
            "slow_alpha": 0.2,
            "clip": 3,
            "z_open": 1.5,
            "z_close": 0.75,
            "z_critical": 3,
            "min_duration_s": 90,
            "overrides": {"air.no2": {"log": False}, "air.o3": {"min_level": 20.0}},
        },
    },
    "thresholds": {
        "air.pm25": {
            "above": 40,
            "clear_below": 30,
            "critical_above": 80,
            "min_duration_s": 10,
        },
        "pipe.pressure": {"below": -40, "clear_above": -30, "critical_below": -80},
    },
}
SETTINGS = from_dict(SETTINGS_DICT)
PROFILES = [("air", "pm25"), ("pipe", "pressure"), ("traffic", "flow")]

# Values are multiples of 1/8 so that window sums are exact in float64 and float32: the
# kernel's running sums and the reference's fresh sums then agree to the last bit, and
# threshold decisions compare exactly.
values = st.one_of(
    st.integers(-800, 800).map(lambda k: k / 8),
    st.just(math.nan),
    st.sampled_from([0.0, 100.0, -100.0]),
)
steps = st.one_of(
    st.integers(1, 12_000),  # normal spacing
    st.integers(40_000, 200_000),  # gaps: dropouts, interval closes
    st.integers(-30_000, 0),  # out of order / duplicate
    st.just(2_000_000),  # far future
)
readings_st = st.lists(st.tuples(st.integers(0, 9), steps, values), min_size=1, max_size=300)


def make(n_channels: int = 10) -> tuple[Detector, Registry, dict[int, tuple[str, str]]]:
    reg = Registry(SETTINGS.channels)
    km = {}
    for i in range(n_channels):
        kind, metric = PROFILES[i % len(PROFILES)]
        km[reg.channel(f"dev{i}", metric, kind, "g")] = (kind, metric)
    return Detector(SETTINGS, reg, Counters()), reg, km


def to_batch(raw: list[tuple[int, int, float]]) -> Batch:
    t = T0
    idx, ts, val = [], [], []
    for c, step, v in raw:
        t += step
        idx.append(c)
        ts.append(t)
        val.append(v)
    return Batch(np.array(idx, np.int32), np.array(ts, np.int64), np.array(val, np.float64))


def run(det: Detector, batch: Batch, cuts: list[int]) -> tuple[list, list, np.ndarray]:
    events, closes, scores = [], [], []
    bounds = [0, *sorted(set(cuts)), len(batch)]
    outputs = []
    for a, b in itertools.pairwise(bounds):
        out, sc = det.process(batch.slice(a, b))
        outputs += out
        scores.append(sc)
    outputs += det.finish()
    for o in outputs:
        if isinstance(o, Events):
            events += list(
                zip(
                    o.channel.tolist(), o.rule.tolist(), o.kind.tolist(), o.ts_ms.tolist(),
                    o.opened_ms.tolist(), o.peak.tolist(), o.score.tolist(), o.severity.tolist(),
                    strict=True,
                )
            )  # fmt: skip
        else:
            assert isinstance(o, IntervalClosed)
            closes.append(o)
    return events, closes, np.concatenate(scores) if scores else np.empty(0)


def assert_events_equal(got: list, want: list) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert g[:5] == w[:5] and g[7] == w[7], (g, w)
        assert_allclose(g[5], w[5], rtol=1e-6, equal_nan=True)
        assert_allclose(g[6], w[6], rtol=1e-5, atol=1e-6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings_st)
def test_bank_matches_reference(raw):
    det, _, km = make()
    batch = to_batch(raw)
    events, closes, scores = run(det, batch, [])
    ref = Reference(SETTINGS, km)
    ref.run(list(zip(batch.idx.tolist(), batch.ts_ms.tolist(), batch.value.tolist(), strict=True)))
    ref.finish()
    assert_events_equal(events, ref.events)
    assert_allclose(scores, np.array(ref.scores), rtol=1e-5, atol=1e-6, equal_nan=True)
    assert [c.start_ms // 60_000 for c in closes] == [k for k, _ in ref.closed]
    for got, (_, want) in zip(closes, ref.closed, strict=True):
        rows = got.rows
        assert rows.channel.tolist() == sorted(want)
        for i, c in enumerate(rows.channel.tolist()):
            n, lo, hi, mean, last, last_ts, score, n_open = want[c]
            assert (rows.count[i], rows.last_ts_ms[i], rows.open_alerts[i]) == (n, last_ts, n_open)
            assert_allclose([rows.min[i], rows.max[i], rows.mean[i], rows.last[i]],
                            [lo, hi, mean, last], rtol=1e-12)  # fmt: skip
            assert_allclose(rows.max_score[i], score, rtol=1e-5, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(readings_st, st.lists(st.integers(0, 300), max_size=20))
def test_outputs_do_not_depend_on_batch_boundaries(raw, cuts):
    batch = to_batch(raw)
    cuts = [c for c in cuts if c < len(batch)]
    whole = run(make()[0], batch, [])
    split = run(make()[0], batch, cuts)
    assert whole[0] == split[0]
    assert [(c.start_ms, c.rows.channel.tolist(), c.rows.count.tolist()) for c in whole[1]] == [
        (c.start_ms, c.rows.channel.tolist(), c.rows.count.tolist()) for c in split[1]
    ]
    assert_allclose(whole[2], split[2], equal_nan=True)


def test_scores_are_within_unit_interval_on_random_floats():
    det, _, _ = make()
    rng = np.random.default_rng(1)
    n = 20_000
    ts = T0 + np.cumsum(rng.integers(1, 5_000, n))
    batch = Batch(rng.integers(0, 4, n).astype(np.int32), ts, rng.standard_cauchy(n) * 10)
    _, scores = det.process(batch)
    ok = scores[~np.isnan(scores)]
    assert len(ok) > n * 0.9 and ok.min() >= 0 and ok.max() <= 1


def test_spike_opens_and_resolves_one_alert():
    det = make(1)[0]
    n = 60
    ts = T0 + np.arange(n, dtype=np.int64) * 5_000
    v = np.tile([10.0, 11.0, 9.0, 10.5], n // 4)
    v[30] = 30.0  # below the pm25 limit of 40: the threshold does not see it
    events = run(det, Batch(np.zeros(n, np.int32), ts, v), [])[0]
    kinds = [(e[1], e[2], e[3]) for e in events if e[1] == 1]
    # zscore opens at the spike; the fall back is still a jump (held open); clear from
    # reading 32 on, it resolves after hold_s = 20 s, at reading 36
    assert kinds == [(1, 1, ts[30]), (1, 3, ts[36])]
    # hampel opens when reading 31 takes the jump back, with the spike's value as its peak
    hampel = [(e[2], e[3], e[5]) for e in events if e[1] == 6]
    assert hampel == [(1, ts[31], 30.0), (3, ts[36], 30.0)]


def test_flapping_threshold_becomes_one_long_alert():
    """pm25 alternates 60 s above the limit, 30 s clear (longer than hold_s = 20 s)."""
    det = make(1)[0]
    ts = T0 + np.arange(0, 3_600_000, 5_000, dtype=np.int64)
    phase = (ts - T0) % 90_000
    v = np.where(phase < 60_000, 50.0, 20.0)
    events = run(det, Batch(np.zeros(len(ts), np.int32), ts, v), [])[0]
    opens = [e for e in events if e[1] == 0 and e[2] == 1]
    resolves = [e for e in events if e[1] == 0 and e[2] == 3]
    # without flapping suppression: 40 opens; with flap_max = 2 within flap_window_s,
    # the second alert needs flap_hold_s = 120 s of clear readings and never gets them
    assert len(opens) == 2 and len(resolves) == 1


def test_threshold_hysteresis_and_minimum_duration():
    det = make(1)[0]
    ts = T0 + np.arange(12, dtype=np.int64) * 5_000
    #            breach for 5 s only (< 10 s)   breach 10 s   between clear and limit  clear
    v = np.array([50, 20, 20, 50, 50, 50, 35, 35, 35, 35, 25, 25], float)
    events = run(det, Batch(np.zeros(len(ts), np.int32), ts, v), [])[0]
    th = [(e[2], e[3]) for e in events if e[1] == 0]
    # opens once the breach has lasted 10 s (reading 5); 35 is below the limit but above
    # clear_below = 30, so it stays open; clear from reading 10, resolves 20 s later... after
    # the data ends, so only the open is seen
    assert th == [(1, ts[5])]


METRICS = ("pm25", "no2", "o3")


def _stations(settings: Settings, n: int, metrics: int = 3) -> tuple[Registry, dict, dict]:
    """``n`` stations of the first ``metrics`` METRICS each; the registry, and each channel's
    (kind, metric) and device."""
    reg = Registry(settings.channels)
    km, device = {}, {}
    for i in range(n):
        for m in METRICS[:metrics]:
            c = reg.channel(f"st{i}", m, "air", "g")
            km[c], device[c] = ("air", m), f"st{i}"
    return reg, km, device


def _group_feed(
    offsets: list[int], noise: list[list[int]], drift: int, metrics: int = 1
) -> tuple[Batch, Registry, dict, dict]:
    """Stations reporting ``metrics`` metrics (one group and profile per metric) every 10 s:
    a shared signal, an offset per station, noise, and the first channel (station 0's pm25)
    drifting by ``drift``/8 per reading (values in 1/8 steps). Returns the batch, the
    registry, and each channel's (kind, metric) and device."""
    reg, km, device = _stations(SETTINGS, len(offsets), metrics)
    idx, ts, val = [], [], []
    for j, row in enumerate(noise):
        shared = 8 * (j % 17)
        for c in range(reg.n):
            idx.append(c)
            ts.append(T0 + j * 10_000 + c)
            off = offsets[c // metrics]
            val.append((shared + off + row[c % len(row)] + (drift * j if c == 0 else 0)) / 8)
    b = Batch(np.array(idx, np.int32), np.array(ts, np.int64), np.array(val, np.float64))
    return b, reg, km, device


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(-40, 40), min_size=3, max_size=7),
    st.lists(st.lists(st.integers(-4, 4), min_size=7, max_size=7), min_size=30, max_size=150),
    st.integers(0, 3),
    st.sampled_from([1, 3]),
    st.lists(st.integers(0, 600), max_size=8),
)
def test_neighbour_rule_matches_reference(offsets, noise, drift, metrics, cuts):
    """Log and plain scales, a level floor, and stations of one or three metrics (three:
    the device's median deviation is taken off)."""
    batch, reg, km, device = _group_feed(offsets, noise, drift, metrics)
    events, _, _ = run(
        Detector(SETTINGS, reg, Counters()), batch, [c for c in cuts if c < len(batch)]
    )
    ref = Reference(SETTINGS, km, device)
    ref.run(list(zip(batch.idx.tolist(), batch.ts_ms.tolist(), batch.value.tolist(), strict=True)))
    ref.finish()
    assert_events_equal(events, ref.events)


def _neighbour_opens(metrics: int, drifting: bool, weather: bool) -> list[tuple[int, int]]:
    """(channel, time) of the neighbour alerts opened under the default neighbour settings
    with hourly intervals: nine stations of ``metrics`` metrics share a signal over 60 days
    of hourly readings; ``drifting``: station 0's pm25 drifts up over the last 7 days by
    its typical level; ``weather``: station 0's metrics all read 1.8 times higher over the
    last 5 days (a local source that moves every pollutant of one station)."""
    hourly = {"interval_s": 3600, "grace_s": 10}
    s = from_dict({"snapshots": hourly, "rules": {"neighbour": {"enabled": True}}})
    rng = np.random.default_rng(5)
    hours = 60 * 24
    shared = 40 + 30 * np.sin(np.arange(hours) * 2 * np.pi / 24) + rng.gamma(2, 10, hours)
    reg = Registry(s.channels)
    idx, ts, val = [], [], []
    for i in range(9):
        for m in METRICS[:metrics]:
            c = reg.channel(f"st{i}", m, "air", "g")
            x = shared * (1 + 0.1 * i) * rng.lognormal(0, 0.1, hours)
            if weather and i == 0:
                x = x * np.where(np.arange(hours) >= hours - 5 * 24, 1.8, 1.0)
            if drifting and c == 0:
                x = x + 60 * np.clip(np.arange(hours) - (hours - 7 * 24), 0, None) / (7 * 24)
            idx.append(np.full(hours, c, np.int32))
            ts.append(T0 + np.arange(hours, dtype=np.int64) * 3_600_000 + 60_000)
            val.append(x)
    order = np.argsort(np.concatenate(ts), kind="stable")
    batch = Batch(np.concatenate(idx)[order], np.concatenate(ts)[order], np.concatenate(val)[order])
    events, _, _ = run(Detector(s, reg, Counters()), batch, [])
    return [(e[0], e[3]) for e in events if e[1] == R_NEIGHBOUR and e[2] == EV_OPEN]


def test_neighbour_rule_fires_on_the_drifting_channel_only():
    opened = _neighbour_opens(metrics=1, drifting=True, weather=False)
    assert [c for c, _ in opened] == [0]
    assert opened[0][1] > T0 + (60 - 7) * 86_400_000  # after the drift began
    assert _neighbour_opens(metrics=1, drifting=False, weather=False) == []


def test_neighbour_rule_takes_off_what_moves_a_whole_station():
    """A station whose pollutants all rise together for days: with one metric per
    station that is a disagreement; with three, the device's median deviation takes it off,
    and the drift of one of its metrics is still found."""
    assert _neighbour_opens(metrics=1, drifting=False, weather=True) != []
    assert _neighbour_opens(metrics=3, drifting=False, weather=True) == []
    assert [c for c, _ in _neighbour_opens(metrics=3, drifting=True, weather=True)] == [0]


def _channel_events(s: Settings, kind: str, metric: str, ts: np.ndarray, x: np.ndarray) -> list:
    """Every alert event of one channel fed ``x`` at ``ts`` under settings ``s``."""
    reg = Registry(s.channels)
    reg.channel("d", metric, kind, "g")
    det = Detector(s, reg, Counters())
    return run(det, Batch(np.zeros(len(x), np.int32), ts, x), [])[0]


def test_flatline_needs_a_run_longer_than_the_channel_repeats_by_chance():
    """A coarse sensor repeats its value half of the time: a run of 15 is chance there (an
    alert needs log(1e-6) / log(0.5) = 20), while a fine sensor's run of 15 is stuck."""
    s = from_dict({"rules": {"flatline": {"min_duration_s": 0}}})
    rng = np.random.default_rng(2)
    coarse = np.cumsum(rng.integers(0, 2, 400) * rng.choice([-1, 1], 400)).astype(float)
    fine = rng.normal(50, 1, 400)
    for series in (coarse, fine):
        series[300:314] = series[299]
    coarse_long = coarse.copy()
    coarse_long[300:340] = coarse_long[299]

    def flat_opens(x: np.ndarray) -> list[int]:
        ts = T0 + np.arange(len(x), dtype=np.int64) * 60_000
        events = _channel_events(s, "air", "pm25", ts, x)
        return [int(np.searchsorted(ts, e[3])) for e in events if e[1] == 2 and e[2] == 1]

    assert [i for i in flat_opens(coarse) if i >= 300] == []
    assert flat_opens(fine) == [310]  # the 12th reading of the run from 299 (min_readings)
    assert [i for i in flat_opens(coarse_long) if i >= 300] != []


def test_flatline_learns_apart_how_often_a_channel_repeats_at_its_floor():
    """A coarse sensor sits on its detection limit (2.0) every night: a night of 60 equal
    readings there is its habit, while 15 equal readings by day, or a failure to 0 (below all
    it has read), are stuck. The kernel matches the slow reference on the whole series."""
    s = from_dict({"rules": {"flatline": {"min_duration_s": 0}}})
    rng = np.random.default_rng(3)
    parts = []
    for _ in range(40):
        parts += [np.maximum(3.0, np.round(rng.normal(20, 5, 30))), np.full(30, 2.0)]
    day = np.maximum(3.0, np.round(rng.normal(20, 5, 30)))
    stuck = len(np.concatenate(parts)) + 30
    parts += [day, np.full(15, 17.0), day, np.full(60, 2.0), day]
    failed = len(np.concatenate(parts))
    parts.append(np.zeros(20))
    x = np.concatenate(parts)
    ts = T0 + np.arange(len(x), dtype=np.int64) * 60_000
    events = _channel_events(s, "air", "so2", ts, x)
    ref = Reference(s, {0: ("air", "so2")})
    ref.run([(0, t, v) for t, v in zip(ts.tolist(), x.tolist(), strict=True)])
    ref.finish()
    assert_events_equal(events, ref.events)
    opened = [int(np.searchsorted(ts, e[3])) for e in events if e[1] == 2 and e[2] == 1]
    assert [i for i in opened if i >= 600] == [stuck + 11, failed + 11]


def test_air_hourly_profile_reports_a_spike_but_not_a_step_that_stays():
    """configs/air-hourly.toml: on hourly air readings a step that stays is a real change of
    the air, not a sensor fault, and a spike is reported by hampel one reading late. With the
    defaults zscore reports both."""
    rng = np.random.default_rng(4)
    x = rng.normal(40, 3, 200)
    x[100:] += 30  # a step that stays
    x[150] *= 6  # a spike
    ts = T0 + np.arange(len(x), dtype=np.int64) * 3_600_000

    def opened(s: Settings) -> list[tuple[str, int]]:
        events = _channel_events(s, "air", "pm10", ts, x)
        return [(RULES[e[1]], int(np.searchsorted(ts, e[3]))) for e in events if e[2] == EV_OPEN]

    assert opened(from_dict({})) == [("zscore", 100), ("zscore", 150)]
    hourly = load(Path(__file__).parents[1] / "configs" / "air-hourly.toml")
    assert opened(hourly) == [("hampel", 151)]


SIBLINGS = from_dict(
    {
        **SETTINGS_DICT,
        "rules": {
            **SETTINGS_DICT["rules"],
            "hampel": {**SETTINGS_DICT["rules"]["hampel"], "siblings": 0.5},
        },
    }
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 12_000),
            st.sampled_from([0.0, 0.0, 0.0, 40.0, -40.0]),
            st.integers(0, 511),  # the channels that take the shock
            st.lists(st.one_of(st.none(), st.integers(-8, 8)), min_size=9, max_size=9),
        ),
        min_size=10,
        max_size=60,
    ),
    st.lists(st.integers(0, 600), max_size=8),
)
def test_hampel_siblings_match_reference(rounds, cuts):
    """Three stations of three metrics; in each round the channels that report do so at one
    timestamp, some with a shock, so that a channel's jump meets its siblings' changes at
    their latest reading or the one before."""
    reg, km, device = _stations(SIBLINGS, 3)
    raw, t = [], T0
    for step, shock, mask, noise in rounds:
        t += step
        raw += [(c, t, 20 + k / 8 + (shock if mask >> c & 1 else 0.0))
                for c, k in enumerate(noise) if k is not None]  # fmt: skip
    batch = Batch(np.array([r[0] for r in raw], np.int32), np.array([r[1] for r in raw], np.int64),
                  np.array([r[2] for r in raw], np.float64))  # fmt: skip
    events, _, scores = run(
        Detector(SIBLINGS, reg, Counters()), batch, [c for c in cuts if c < len(batch)]
    )
    ref = Reference(SIBLINGS, km, device)
    ref.run(raw)
    ref.finish()
    assert_events_equal(events, ref.events)
    assert_allclose(scores, np.array(ref.scores), rtol=1e-5, atol=1e-6, equal_nan=True)


def test_hampel_siblings_tell_a_sensor_spike_from_a_station_wide_one():
    """A spike on one channel is reported; the same spike while another pollutant of the
    station jumps with it is not (``siblings``), nor is it when that pollutant reports its
    next reading before the spiking channel does; a sibling that falls instead does not
    count."""
    rng = np.random.default_rng(7)
    n = 60
    base = rng.integers(-8, 9, size=(n, 3)) / 8 + 20

    def hampel_opens(moves: dict[int, float], next_first: bool) -> list[int]:
        """Station st0's pm25 spikes at reading 40; ``moves``: sibling metric -> its change
        at that reading."""
        x = base.copy()
        x[40, 0] += 30
        for m, d in moves.items():
            x[40, m] += d
        reg, _, _ = _stations(SIBLINGS, 1)
        idx, ts, val = [], [], []
        for j in range(n):
            order = [1, 2, 0] if next_first and j == 41 else [0, 1, 2]
            for m in order:
                idx.append(m)
                ts.append(T0 + j * 10_000)
                val.append(x[j, m])
        batch = Batch(np.array(idx, np.int32), np.array(ts, np.int64), np.array(val))
        events, _, _ = run(Detector(SIBLINGS, reg, Counters()), batch, [])
        return [(e[3] - T0) // 10_000 for e in events
                if e[0] == 0 and RULES[e[1]] == "hampel" and e[2] == EV_OPEN]  # fmt: skip

    assert hampel_opens({}, False) == [41]
    assert hampel_opens({2: 20}, False) == []  # o3 jumps up with it
    assert hampel_opens({2: 20}, True) == []  # ... and has its next reading already
    assert hampel_opens({2: -20}, False) == [41]  # o3 falls: no common cause
    assert hampel_opens({2: 0.5}, False) == [41]  # a small move is no explanation


def _default_rules(series: np.ndarray, step_ms: int, metric: str) -> list[tuple[int, int, int]]:
    """(rule, event kind, reading index) of the alerts that default settings raise on one
    pipe channel's series."""
    ts = T0 + np.arange(len(series), dtype=np.int64) * step_ms
    events = _channel_events(from_dict({}), "pipe", metric, ts, series)
    return [(e[1], e[2], int(np.searchsorted(ts, e[3]))) for e in events]


def test_rate_rule_sees_a_burst_not_a_fast_loggers_noise():
    rng = np.random.default_rng(4)
    minute = 4.0 + rng.normal(0, 0.02, 200)  # one reading a minute
    minute[120:] -= 1.5  # a burst main: 1.5 bar down in one minute
    second = 4.0 + rng.normal(0, 0.01, 3000)  # one reading a second, 0.01 bar noise

    def rate_events(x: np.ndarray, step_ms: int) -> list[tuple[int, int, int]]:
        return [e for e in _default_rules(x, step_ms, "pressure") if e[0] == 5]

    assert rate_events(minute, 60_000)[0] == (5, 1, 120)
    assert rate_events(second, 1_000) == []


def _rule_events(
    overrides: dict, kind: str, metric: str, ts: np.ndarray, x: np.ndarray, rule: str
) -> list[tuple[int, int]]:
    """(event kind, reading index) of ``rule``'s alerts on one channel under default settings
    with ``overrides``."""
    events = _channel_events(from_dict(overrides), kind, metric, ts, x)
    r = RULES.index(rule)
    return [(e[2], int(np.searchsorted(ts, e[3]))) for e in events if e[1] == r]


def test_cusum_finds_a_level_shift_and_a_slow_drift_but_not_noise():
    rng = np.random.default_rng(5)
    n = 4000
    ts = T0 + np.arange(n, dtype=np.int64) * 60_000
    ar = np.zeros(n)  # autocorrelated noise (AR(1), phi 0.5), unit spread
    e = rng.normal(0, np.sqrt(1 - 0.25), n)
    for i in range(1, n):
        ar[i] = 0.5 * ar[i - 1] + e[i]
    on = {"rules": {"cusum": {"enabled": True}}}
    assert _rule_events(on, "pipe", "pressure", ts, 10 + ar, "cusum") == []
    shift = 10 + ar
    shift[2000:] += 3.0
    opens = [i for kind, i in _rule_events(on, "pipe", "pressure", ts, shift, "cusum")
             if kind == EV_OPEN]  # fmt: skip
    assert len(opens) == 1 and 2000 <= opens[0] < 2020
    drift = 10 + ar + np.maximum(0, np.arange(n) - 2000) * 0.01  # 1 std in 100 readings
    events = _rule_events(on, "pipe", "pressure", ts, drift, "cusum")
    assert events and events[0][0] == EV_OPEN and 2000 < events[0][1] < 2400
    off = _rule_events({}, "pipe", "pressure", ts, shift, "cusum")
    assert off == []  # off by default


def test_level_rule_reports_a_value_outside_the_long_run_range_once():
    rng = np.random.default_rng(7)
    n = 6000
    ts = T0 + np.arange(n, dtype=np.int64) * 300_000  # one reading every five minutes
    x = 50 + rng.normal(0, 1, n)
    on = {"rules": {"level": {"enabled": True}}, "alerts": {"hold_s": 14400}}
    assert _rule_events(on, "pipe", "flow", ts, x, "level") == []  # noise: nothing
    jumped = x.copy()
    jumped[1500] -= 12  # a single runaway value
    jumped[3000:3200] += 10  # a new regime for 200 readings, then back
    events = _rule_events(on, "pipe", "flow", ts, jumped, "level")
    opens = [i for kind, i in events if kind == EV_OPEN]
    assert opens == [1500, 3000]  # at the first reading outside the range, once each
    assert _rule_events({}, "pipe", "flow", ts, jumped, "level") == []  # off by default


def test_seasonal_rule_knows_rush_hour_from_congestion_at_night():
    rng = np.random.default_rng(6)
    step = 300_000  # five minutes, five weeks from a Monday 00:00
    ts = T0 + np.arange(35 * 288, dtype=np.int64) * step
    hour = (ts - T0) % 86_400_000 / 3_600_000
    weekend = ((ts - T0) // 86_400_000) % 7 >= 5
    weekday_flow = 50 + 400 * np.exp(-((hour - 8) ** 2) / 2) + 300 * np.exp(-((hour - 17.5) ** 2))
    weekend_flow = 50 + 150 * np.exp(-((hour - 13) ** 2) / 8)
    mean = np.where(weekend, weekend_flow, weekday_flow)
    flow = mean + rng.normal(0, 1, len(ts)) * np.sqrt(mean)
    week5 = 28 * 288
    night = week5 + 2 * 288 + 3 * 12  # Wednesday 03:00: an hour of rush-hour flow
    saturday = week5 + 5 * 288 + 8 * 12  # Saturday 08:00: a weekday's rush-hour flow
    flow[night : night + 12] = 400
    flow[saturday : saturday + 12] = 450
    on = {"rules": {"seasonal": {"overrides": {"traffic.flow": {"enabled": True}}}}}
    opens = [i for kind, i in _rule_events(on, "traffic", "flow", ts, flow, "seasonal")
             if kind == EV_OPEN and i >= 14 * 288]  # fmt: skip
    assert len(opens) == 2  # nothing else after two weeks of learning
    assert night <= opens[0] <= night + 3 and saturday <= opens[1] <= saturday + 3
    assert _rule_events({}, "traffic", "flow", ts, flow, "seasonal") == []  # off by default


def test_alert_rows_grow_with_alerting_channels_and_come_back_after_the_flap_window():
    """300 channels spike at once: the alert tables grow past their first 64 rows, results
    still match the reference, and once every alert is idle and the flap window has passed,
    the dropout sweep gives every row back."""
    s = from_dict({k: SETTINGS_DICT[k] for k in ("detect", "snapshots", "alerts")}
                  | {"rules": {"zscore": SETTINGS_DICT["rules"]["zscore"],
                               "hampel": {"enabled": False, "min_readings": 4}}})  # fmt: skip
    n = 300
    reg = Registry(s.channels)
    km = {reg.channel(f"dev{c}", "pm25", "air", "g"): ("air", "pm25") for c in range(n)}
    det = Detector(s, reg, Counters())
    raw = []
    for step in range(40):  # 40 rounds of every channel, 1 s apart; a spike in round 20
        v = 100.0 if step == 20 else (step % 4) / 8
        raw += [(c, 1_000 if c == 0 else 1, v) for c in range(n)]
    for step in range(30):  # then quiet readings every 20 s, past the flap window
        raw += [(c, 20_000 if c == 0 else 1, 0.5 + (step % 2) / 8) for c in range(n)]
    batch = to_batch(raw)
    events, _, _ = run(det, batch, [])
    ref = Reference(s, km)
    ref.run(list(zip(batch.idx.tolist(), batch.ts_ms.tolist(), batch.value.tolist(), strict=True)))
    ref.finish()
    assert len(events) >= 2 * n
    assert_events_equal(events, ref.events)
    assert len(det.alert_rows["a_sev"]) > 64
    assert det.a_free[0] == len(det.alert_rows["a_sev"])  # every row free again
    assert (det.state["a_row"][:n] == -1).all()


def test_a_detector_over_a_registry_with_many_channels_gives_each_its_seasonal_row():
    s = from_dict({"rules": {"seasonal": {"enabled": True}}})
    reg = Registry(s.channels)
    for c in range(3000):  # more than the detector's first capacity
        reg.channel(f"d{c}", "flow", "traffic", "g")
    det = Detector(s, reg, Counters())
    assert det.state["se_row"][:3000].tolist() == list(range(3000))


def test_a_channels_scalars_lie_in_one_record_that_keeps_them_as_it_grows():
    """Every state array but the ring is a field of one record per channel, records start on
    a cache line with the sweep's fields in its first 64 bytes, and growing keeps the values."""
    from streamproc.detect import _HEAD, row_bytes

    reg = Registry(Settings().channels)
    det = Detector(Settings(), reg, Counters())
    c = reg.channel("d0", "pm25", "air", "g")
    det.process(Batch(np.array([c], np.int32), np.array([1_700_000_000_000]), np.array([7.5])))
    before = {k: v[c].copy() for k, v in det.state.items()}
    for i in range(1, 3000):  # past the first capacity
        reg.channel(f"d{i}", "pm25", "air", "g")
    det._sync()
    packed = {k: a for k, a in det.state.items() if k != "ring"}
    size = det.state["pos"].strides[0]
    start = min(a.ctypes.data for a in packed.values())
    assert start % 64 == 0 and all(a.strides[0] == size for a in packed.values())
    ends = sorted((a.ctypes.data - start, a[0].nbytes) for a in packed.values())
    assert all(o + n <= nxt for (o, n), (nxt, _) in itertools.pairwise(ends))
    assert max(o + n for o, n in ends) <= size
    assert all(packed[k].ctypes.data - start + packed[k][0].nbytes <= 64 for k in _HEAD)
    for k, v in before.items():
        np.testing.assert_array_equal(det.state[k][c], v)
    assert det.state["agg_n"][c].sum() == 1 and det.state["last_ts"][1] == det.spec["last_ts"][2]
    rb = row_bytes(det.state)
    assert sum(rb.values()) == size + det.state["ring"][0].nbytes
    assert 0 < rb["record padding"] < 8


def test_prefetch_compiles_to_a_prefetch_instruction_and_changes_nothing():
    from numba import njit

    from streamproc.kernels.prefetch import prefetch, prefetch2

    @njit
    def touch(a, b, c):
        prefetch(a, c)
        prefetch2(b, c, 3)
        return a[c] + b[c, 3]

    a = np.arange(10.0)
    b = np.arange(40.0).reshape(10, 4)
    assert touch(a, b, 7) == 7.0 + 31.0
    asm = next(iter(touch.inspect_asm().values()))
    emitted = asm.count("prefetch") + asm.count("prfm")  # x86, arm64
    assert emitted >= 2, "no prefetch instruction emitted"


def test_prefetch_record_compiles_to_a_prefetch_and_changes_nothing():
    from numba import njit

    from streamproc.kernels.prefetch import prefetch_record

    @njit
    def touch(a, c):
        prefetch_record(a, c)
        return a[c]

    rec = np.zeros(10, np.dtype([("t", np.int64), ("pad", np.uint8, 312)], align=True))
    rec["t"] = np.arange(10)
    assert touch(rec["t"], 7) == 7 and touch(rec["t"], 9) == 9
    asm = next(iter(touch.inspect_asm().values()))
    assert asm.count("prefetch") + asm.count("prfm") >= 1, "no prefetch instruction emitted"


# windows for the selections: many ties, and values far apart
SELECTION_VALUES = st.lists(
    st.one_of(st.integers(-3, 3).map(float), st.floats(-1e6, 1e6, allow_nan=False)),
    min_size=1,
    max_size=70,
)


@settings(max_examples=300, deadline=None)
@given(SELECTION_VALUES)
def test_selection_finds_every_order_statistic(values):
    """The hampel rule's selection (many ties, sorted and reversed runs included)."""
    from streamproc.kernels.bank import _kth

    data = np.array(values)
    want = np.sort(data)
    for arr in (data, want, want[::-1]):
        for k in range(len(data)):
            buf = np.array(arr, copy=True)
            assert _kth(buf, len(buf), k) == want[k]
            assert sorted(buf) == list(want)  # a permutation of the input


@settings(max_examples=300, deadline=None)
@given(
    SELECTION_VALUES,
    st.one_of(st.integers(-4, 4).map(float), st.floats(-1e7, 1e7, allow_nan=False)),
)
def test_selection_from_a_guess_finds_every_order_statistic(values, guess):
    """The selection that walks from a guess: every rank, from guesses near and far (those
    more than SELECT_STEPS distinct values away fall back on ``_kth``), the values left as
    they were."""
    from streamproc.kernels.bank import _kth_from

    data = np.array(values)
    want = np.sort(data)
    for k in range(len(data)):
        work = np.full(len(data) + 1, np.nan)
        assert _kth_from(data, len(data), k, guess, work) == want[k]  # -0.0 == 0.0 as well
        assert list(data) == values


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3, allow_nan=False, width=32)),
        min_size=3,
        max_size=64,
    ),
    st.sampled_from([0.0, 0.5, 2.0]),
    st.integers(0, 63),
)
def test_change_spread_is_the_reference_exactly(values, min_std, pos):
    """The hampel rule's median and spread of a window's changes, with the MAD's selection
    skipped where it cannot matter, equal the reference's bit for bit (ring at any position)."""
    from streamproc.kernels.bank import _change_spread
    from tests.reference import change_spread

    window = 64
    w = np.array(values, np.float32)
    ring = np.zeros((1, window), np.float32)
    for i, v in enumerate(w):  # the oldest at pos - len(w), the next write at pos
        ring[0, (pos - len(w) + i) % window] = v
    buf = np.empty(2 * window)
    got = _change_spread(ring, 0, pos, len(w), window, buf, min_std)
    assert got == change_spread([float(v) for v in w], min_std)
