"""Metrics of the dataset evaluations (benchmarks/eval_skab.py, benchmarks/eval_beijing.py)
on hand-made examples, and a smoke test through the real pipeline when the datasets exist."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks import eval_beijing as bj
from benchmarks import eval_skab as sk
from benchmarks.streaming import Channel, datasets_dir, make_settings, run_frame

H = bj.HOUR_MS

# ------------------------------------------------------------------ SKAB outlier metrics


def test_confusion_and_skab_definitions() -> None:
    true = np.array([0, 0, 0, 1, 1, 1, 0, 0], bool)
    pred = np.array([0, 1, 0, 1, 1, 0, 0, 0], bool)
    c = sk.confusion(true, pred)
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 1, 4, 1)
    assert c.f1 == pytest.approx(2 / (2 + (1 + 1) / 2))
    assert c.far == pytest.approx(100 * 1 / 5)
    assert c.mar == pytest.approx(100 * 1 / 3)


def test_files_are_pooled_by_summing_counts() -> None:
    a = sk.confusion(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    b = sk.confusion(np.array([0, 0, 0, 1], bool), np.array([1, 1, 0, 1], bool))
    pooled = a + b
    assert (pooled.tp, pooled.fp, pooled.tn, pooled.fn) == (2, 2, 2, 1)
    assert pooled.f1 == pytest.approx(2 / (2 + 3 / 2))  # not the mean of the files' F1


def test_empty_counts_do_not_divide_by_zero() -> None:
    c = sk.Counts()
    assert (c.f1, c.far, c.mar) == (0.0, 0.0, 0.0)


def test_best_f1_threshold_and_far_limit() -> None:
    score = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.3])
    true = np.array([0, 1, 1, 0, 0, 1], bool)
    best = sk.best_f1(score, true)
    assert best is not None
    assert best[0] == pytest.approx(0.3)  # all three positives, one false alarm: F1 6/7
    assert (best[1].tp, best[1].fp, best[1].fn) == (3, 1, 0)
    best = sk.best_f1(score, true, max_far=0.0)
    assert best is not None
    assert best[0] == pytest.approx(0.8)
    assert (best[1].tp, best[1].fp, best[1].fn) == (2, 0, 1)
    assert sk.best_f1(np.array([0.5, 0.5]), np.array([0, 1], bool), max_far=10.0) is None


# ------------------------------------------------------------------ changepoints (NAB)


def test_scaled_sigmoid() -> None:
    assert sk.scaled_sigmoid(0.0) == 0.0
    assert sk.scaled_sigmoid(-1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert sk.scaled_sigmoid(3.5) == -1.0


def test_nab_windows_are_row_ranges_merged_when_overlapping() -> None:
    ts = np.arange(12, dtype=np.int64) * 1000
    cp = np.zeros(12, bool)
    cp[[2, 3, 9]] = True
    assert sk.nab_windows(ts, cp, 2000) == [(2, 5), (9, 11)]


def test_nab_score_hand_example() -> None:
    s = sk.scaled_sigmoid
    win = [(2, 5)]  # 4 rows, right edge 5
    # earliest possible detection: full tp weight
    assert sk.nab_score(win, np.array([2])) == pytest.approx(1.0)
    # only the first detection of a window counts; later ones are free
    assert sk.nab_score(win, np.array([2, 3, 5])) == pytest.approx(1.0)
    # at the right edge: y = -1/4
    assert sk.nab_score(win, np.array([5])) == pytest.approx(s(-0.25) / s(-1.0))
    # missed window
    assert sk.nab_score(win, np.array([], np.int64)) == -1.0
    # false positive before any window costs the full fp weight, after one less
    after = 0.11 * s((7 - 5) / (5 - 2))
    assert sk.nab_score(win, np.array([0, 3, 7])) == pytest.approx(
        -0.11 + s(-(5 - 3 + 1) / 4) / s(-1.0) + after
    )
    assert -0.11 < after < 0
    assert sk.normalised(1.0, 1) == 100.0
    assert sk.normalised(-1.0, 1) == 0.0
    assert sk.normalised(0.0, 2) == 50.0


def test_rising_edges() -> None:
    pred = np.array([1, 1, 0, 1, 0, 0, 1], bool)
    assert sk.rising(pred).nonzero()[0].tolist() == [0, 3, 6]


def test_skab_tool_score_hand_example() -> None:
    ts = np.arange(200, dtype=np.int64) * 1000
    cp = np.zeros(200, bool)
    cp[10] = True  # window [10 s, 70 s]
    pred = np.zeros(200, bool)
    pred[10:100] = True  # on at 10 s (start of the window: full tp), off at 100 s (a false one)
    raw, n = sk.skab_nab_score(ts, cp, pred)
    assert n == 1
    assert raw == pytest.approx(1.0 - 0.11)
    assert sk.skab_normalised(raw, n) == pytest.approx(100 * (0.89 + 1) / 2)
    # a detection at the window's end is worth about -0.11; no detection -1
    late = np.zeros(200, bool)
    late[70:] = True
    assert sk.skab_nab_score(ts, cp, late)[0] == pytest.approx(-0.11, abs=1e-3)
    assert sk.skab_nab_score(ts, cp, np.zeros(200, bool))[0] == -1.0


def test_alert_rows_cover_open_to_resolve() -> None:
    from streamproc.alerts import Alert

    def alert(id_: str, event: str, ts: int) -> Alert:
        return Alert(id_, event, 0, "d", "m", "rig", "g", "zscore", "warning",
                     "open", ts, ts, None, 0.0, 0.0, "")  # fmt: skip

    ts = np.arange(10, dtype=np.int64) * 1000
    alerts = [alert("a", "open", 2000), alert("a", "resolve", 5000), alert("b", "open", 7500)]
    covered, opened = sk.alert_rows(ts, alerts)
    assert covered.nonzero()[0].tolist() == [2, 3, 4, 8, 9]
    assert opened.nonzero()[0].tolist() == [2, 8]


# ------------------------------------------------------------------ SKAB cross-validation


def test_cv_choice_highest_f1_within_far_then_changepoint_floor() -> None:
    def fit(tp: int, fp: int, cp: float) -> sk.Fit:  # 10 positive and 100 negative rows
        return sk.Fit(sk.Counts(tp, fp, 100 - fp, 10 - tp), cp)

    fits = [fit(9, 30, 40.0), fit(7, 10, 20.0), fit(5, 5, 35.0), fit(7, 10, 25.0)]
    assert sk.choose(fits, 20.0) == 1  # the best F1 has FAR 30 %; a tie goes to the earlier
    assert sk.choose(fits, 20.0, min_changepoints=30.0) == 2
    assert sk.choose(fits, 20.0, min_changepoints=50.0) == 1  # nobody meets it: floor dropped
    assert sk.choose(fits, 1.0) == 2  # nobody within the FAR limit: the lowest FAR


def test_cv_grid_is_every_combination_merged_over_base(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text(
        "[base.rules.level]\nenabled = true\n"
        "[[axes.a]]\nname = 'z5'\nrules.level = { z_open = 5.0, z_close = 3.75 }\n"
        "[[axes.a]]\nrules.level = { z_open = 6.0 }\n"
        "[[axes.b]]\nrules.zscore = { enabled = false }\n"
        "[[axes.b]]\nrules.level = { alpha = 0.001 }\n"
    )
    points = sk.load_grid(grid)
    assert [n for n, _ in points] == [
        "z5, zscore.enabled=false",
        "z5, level.alpha=0.001",
        "level.z_open=6.0, zscore.enabled=false",
        "level.z_open=6.0, level.alpha=0.001",
    ]
    assert points[1][1] == {
        "rules": {"level": {"enabled": True, "z_open": 5.0, "z_close": 3.75, "alpha": 0.001}}
    }
    assert points[2][1]["rules"]["zscore"] == {"enabled": False}


def test_cv_pools_held_out_files_each_at_its_own_threshold() -> None:
    def scored(name: str, score: list[float], anomaly: list[int]) -> sk.Scored:
        n = len(score)
        ts = np.arange(n, dtype=np.int64) * 1000
        no = np.zeros(n, bool)
        return sk.Scored(name, ts, np.array(score), no, no, (0.0, False),
                         np.array(anomaly, bool), no)  # fmt: skip

    a = scored("valve1/0", [0.1, 0.5, 0.5, 0.1], [0, 1, 1, 0])
    b = scored("other/1", [0.2, 0.3, 0.3, 0.2], [0, 1, 1, 0])
    row = sk.evaluate_at([(a, "score", 0.4), (b, "score", 0.25)], "chosen", "")
    assert (row.counts.tp, row.counts.fp, row.counts.fn) == (4, 0, 0)
    assert sk.evaluate([a, b], "score", 0.4, "").counts.fn == 2


# ------------------------------------------------------------------ Beijing faults


def test_inject_each_fault_kind() -> None:
    v = np.arange(1.0, 21.0).reshape(10, 2)
    v[4, 0] = np.nan
    faults = [
        bj.Fault(0, "stuck", 2, 5),
        bj.Fault(1, "spike", 1, 1, 5.0, "x"),
        bj.Fault(1, "spike", 3, 3, 300.0, "+"),
        bj.Fault(1, "drift", 5, 8, 8.0),
        bj.Fault(0, "dropout", 7, 8),
    ]
    out = bj.inject(v, faults)
    assert out[2:6, 0].tolist()[:2] == [5.0, 5.0] and np.isnan(out[4, 0]) and out[5, 0] == 5.0
    assert out[1, 1] == 4.0 * 5 and out[3, 1] == 8.0 + 300
    assert (out[5:9, 1] - v[5:9, 1]).tolist() == [2.0, 4.0, 6.0, 8.0]
    assert np.isnan(out[7:9, 0]).all()
    assert np.array_equal(out[9], v[9]) and np.isnan(v).sum() == 1  # input untouched


def test_plan_faults_is_seeded_and_keeps_faults_apart() -> None:
    rng = np.random.default_rng(5)
    v = rng.gamma(4.0, 10.0, size=(3000, 4))
    a = bj.plan_faults(v, 3, seed=1, guard_h=48, skip_h=24)
    assert a == bj.plan_faults(v, 3, seed=1, guard_h=48, skip_h=24)
    assert Counter(f.kind for f in a) == dict.fromkeys(bj.FAULT_KINDS, 3)
    for f in a:
        n = f.end - f.start + 1
        lo, hi = {"stuck": (12, 72), "spike": (1, 1), "drift": (72, 240), "dropout": (12, 72)}[
            f.kind
        ]
        assert lo <= n <= hi and f.start >= 24
        for g in a:
            if g is not f and g.column == f.column:
                assert g.start > f.end + 48 or f.start > g.end + 48
    for c in bj.control_spans(a, len(v), seed=1, guard_h=48, skip_h=24):
        assert all(c.start > f.end + 48 or f.start > c.end + 48 for f in a if f.column == c.column)


def test_recall_classify_and_false_alerts() -> None:
    ts = np.arange(200, dtype=np.int64) * H
    original = np.ones((200, 4))
    original[45:50, 2] = np.nan  # a real gap on column 2
    faults = [bj.Fault(0, "stuck", 10, 20), bj.Fault(1, "dropout", 30, 40),
              bj.Fault(3, "spike", 60, 60, 5.0, "x")]  # fmt: skip
    tol = 6 * H
    opens = [
        bj.Opened(0, "flatline", 21 * H),  # stuck, after its end but within tolerance
        bj.Opened(0, "zscore", 100 * H),  # false, in an episode
        bj.Opened(1, "dropout", 35 * H),  # the dropout
        bj.Opened(1, "zscore", 47 * H),  # false: 7 h after the dropout's end
        bj.Opened(2, "dropout", 50 * H),  # a real gap
        bj.Opened(3, "threshold", 60 * H),  # not a sensor alert: the spike stays missed
        bj.Opened(2, "flatline", 150 * H),  # false, outside episodes
    ]
    rec = bj.recall_by_kind(faults, opens, ts, tol)
    assert (rec["stuck"].detected, rec["stuck"].before_end) == (1, 0)
    assert rec["stuck"].delays_h == [11.0]
    assert (rec["dropout"].detected, rec["dropout"].by_rule) == (1, Counter(dropout=1))
    assert (rec["spike"].faults, rec["spike"].detected) == (1, 0)
    assert math.isnan(rec["drift"].recall)

    labels = bj.classify(opens, faults, ts, tol, original)
    assert labels == ["fault", "false", "fault", "false", "real gap", "threshold", "false"]
    episode = np.zeros(200, bool)
    episode[90:111] = True
    fa = bj.false_alerts(opens, labels, ts, episode, stations=2)
    assert fa.inside == Counter(zscore=1)
    assert fa.outside == Counter(zscore=1, flatline=1)
    assert fa.weeks_inside == pytest.approx(21 * 2 / 168)
    assert fa.rate(where="inside") == pytest.approx(1 / (21 * 2 / 168))
    assert fa.rate("flatline", "outside") == pytest.approx(1 / (179 * 2 / 168))
    assert fa.rate() == pytest.approx(3 / (200 * 2 / 168))


def test_episode_hours() -> None:
    pm = np.full((24 * 3, 4), 10.0)
    pm[50] = [30, 30, 30, 10]  # 3 of 4 above twice their median: an episode
    pm[51] = [30, 30, 10, 10]  # half: not
    pm[52] = [200, 160, 151, np.nan]  # all reporting stations above 150
    pm[53] = [200, np.nan, np.nan, np.nan]  # fewer than half the stations report
    pm[10] = [200, 200, 200, 200]  # the first day has no median yet; 150 still counts
    ep = bj.episode_hours(pm)
    assert ep.nonzero()[0].tolist() == [10, 50, 52]


def test_flat_runs_skip_missing_cells() -> None:
    v = np.array([[1, 1], [1, 2], [np.nan, 3], [1, 3], [2, 3]], float)
    assert bj.flat_runs(v, 3).tolist() == [1, 1]


# ------------------------------------------------------------------ real data, real pipeline

DATA = datasets_dir()


@pytest.mark.datasets
@pytest.mark.skipif(
    not (DATA / "skab").is_dir() or not (DATA / "beijing-air").is_dir(),
    reason=f"datasets not found at {DATA} (set STREAMPROC_DATASETS)",
)
def test_smoke_real_files_through_the_pipeline() -> None:
    f = sk.read_file(DATA / "skab/data/valve1/0.csv", "valve1/0")
    assert f.values.shape == (len(f.ts_ms), 8) and f.anomaly.any() and f.changepoint.any()
    r = sk.run_file(f, make_settings(["rig"]))
    assert r.readings == f.values.size
    assert ((r.score >= 0) & (r.score < 1)).all()

    station, path = bj.station_files(DATA / "beijing-air")[0]
    ts, values = bj.read_station(path, max_rows=2000)
    assert values.shape == (2000, 6) and np.all(np.diff(ts) == H)
    channels = [Channel(station, m, "air", "beijing") for _, m in bj.POLLUTANTS]
    run = run_frame(ts, values, channels, make_settings(["air"]))
    assert run.readings == int(np.isfinite(values).sum())
    assert run.summary["dropped"] == {}
    assert np.array_equal(np.isnan(run.scores), np.isnan(values))
