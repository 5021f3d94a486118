"""The NAB scorer (benchmarks/nab_score.py), its harness and the streaming adapter.

Hand-computed cases need no data; the corpus checks (null scores 0, a perfect oracle 100)
read ``nab/`` from the datasets folder and skip when it is absent.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.eval_nab import WindowedGaussian, read_results, result_path, write_result
from benchmarks.nab_score import (
    NO_DETECTION,
    PROFILES,
    Corpus,
    DataFile,
    Profile,
    file_score,
    load_corpus,
    normalise,
    probation_rows,
    score_corpus,
    threshold_curve,
)
from benchmarks.streaming import datasets_dir, eval_settings, run_channels, strictly_increasing

ROOT = Path(__file__).resolve().parents[1]
STD = PROFILES["standard"]
LOW_FP = PROFILES["reward_low_FP_rate"]
LOW_FN = PROFILES["reward_low_FN_rate"]

# one file of 1,000 rows (probation: the first 150), one window of 100 rows: 500..599
N = 1000
WINDOWS = [(500, 599)]
S_LEFT = math.tanh(2.5)  # s(-1): s(y) = 2 / (1 + exp(5y)) - 1 = -tanh(2.5 y)


def _detect_at(*rows: int, n: int = N) -> np.ndarray:
    s = np.zeros(n)
    s[list(rows)] = 1.0
    return s


def test_probation_length() -> None:
    assert probation_rows(1000) == 150
    assert probation_rows(4032) == 604  # floor(604.8)
    assert probation_rows(22695) == 750  # capped


@pytest.mark.parametrize("profile", PROFILES.values(), ids=list(PROFILES))
def test_detection_at_left_edge_is_worth_tp(profile: Profile) -> None:
    assert file_score(_detect_at(500), WINDOWS, profile, 0.5) == pytest.approx(1.0, abs=1e-12)


def test_later_detections_in_a_window_are_worth_less() -> None:
    middle = math.tanh(1.25) / S_LEFT  # y = -(599 - 550 + 1) / 100 = -0.5
    right = math.tanh(0.025) / S_LEFT  # y = -1 / 100 at the right edge
    assert file_score(_detect_at(550), WINDOWS, STD, 0.5) == pytest.approx(0.859792, abs=1e-6)
    assert file_score(_detect_at(550), WINDOWS, STD, 0.5) == pytest.approx(middle, rel=1e-12)
    assert file_score(_detect_at(599), WINDOWS, STD, 0.5) == pytest.approx(0.0253339, abs=1e-7)
    assert file_score(_detect_at(599), WINDOWS, STD, 0.5) == pytest.approx(right, rel=1e-12)


def test_only_the_earliest_detection_of_a_window_counts() -> None:
    assert file_score(_detect_at(500, 550), WINDOWS, STD, 0.5) == pytest.approx(1.0, abs=1e-12)
    assert file_score(_detect_at(550, 580), WINDOWS, STD, 0.5) == pytest.approx(0.859792, abs=1e-6)


def test_missed_window_costs_fn() -> None:
    assert file_score(np.zeros(N), WINDOWS, STD, 0.5) == -1.0
    assert file_score(np.zeros(N), WINDOWS, LOW_FN, 0.5) == -2.0


def test_false_positive_right_after_a_window_is_nearly_free() -> None:
    # y = (600 - 599) / (100 - 1): s = -tanh(2.5 / 99) = -0.025247; times fp 0.11
    got = file_score(_detect_at(600), WINDOWS, STD, 0.5)
    assert got == pytest.approx(-1.0 - 0.11 * math.tanh(2.5 / 99), rel=1e-12)
    assert got == pytest.approx(-1.0027772, abs=1e-7)
    low_fp = file_score(_detect_at(600), WINDOWS, LOW_FP, 0.5)
    assert low_fp == pytest.approx(-1.0 - 0.22 * math.tanh(2.5 / 99), rel=1e-12)


def test_false_positive_far_after_or_before_any_window_costs_fp() -> None:
    # 999 is (999 - 599) / 99 > 3 window widths after the window; 200 precedes every window
    for row in (999, 200):
        assert file_score(_detect_at(row), WINDOWS, STD, 0.5) == pytest.approx(-1.11, abs=1e-12)
        assert file_score(_detect_at(row), WINDOWS, LOW_FP, 0.5) == pytest.approx(-1.22, abs=1e-12)
        assert file_score(_detect_at(row), WINDOWS, LOW_FN, 0.5) == pytest.approx(-2.11, abs=1e-12)


def test_probation_rows_are_ignored() -> None:
    assert file_score(_detect_at(10, 149), WINDOWS, STD, 0.5) == -1.0
    assert file_score(_detect_at(150), WINDOWS, STD, 0.5) == pytest.approx(-1.11, abs=1e-12)


def test_a_score_equal_to_the_threshold_is_a_detection() -> None:
    s = np.zeros(N)
    s[500] = 0.7
    assert file_score(s, WINDOWS, STD, 0.7) == pytest.approx(1.0, abs=1e-12)
    assert file_score(s, WINDOWS, STD, np.nextafter(0.7, 1.0)) == -1.0


def test_threshold_curve_by_hand() -> None:
    s = np.zeros(N)
    s[500], s[900], s[300] = 0.9, 0.95, 0.3  # a hit at the left edge, two far false alarms
    curve = threshold_curve([(s, WINDOWS)], STD)
    assert curve.thresholds[:4].tolist() == [NO_DETECTION, 0.95, 0.9, 0.3]
    assert curve.raw[:4] == pytest.approx([-1.0, -1.11, 0.89, 0.78], abs=1e-12)
    assert curve.best() == pytest.approx((0.9, 0.89), abs=1e-12)
    # with false alarms only, detecting nothing is best
    curve = threshold_curve([(_detect_at(900), WINDOWS)], STD)
    assert curve.best() == (NO_DETECTION, -1.0)


def test_threshold_curve_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    files = []
    for n, windows in [(800, [(300, 379), (600, 679)]), (1200, [(900, 1019)]), (500, [])]:
        scores = np.round(rng.random(n) ** 6, 2)  # few distinct values: many ties
        for a, _ in windows:
            scores[a + 10] = 0.97
        files.append((scores, windows))
    for profile in PROFILES.values():
        curve = threshold_curve(files, profile)
        brute = [sum(file_score(s, w, profile, t) for s, w in files) for t in curve.thresholds]
        assert curve.raw == pytest.approx(brute, abs=1e-9)
        assert len(set(curve.thresholds[1:].tolist())) == len(
            np.unique(np.concatenate([s[probation_rows(len(s)) :] for s, _ in files]))
        )
        best_t, best_raw = curve.best()
        assert best_raw == pytest.approx(max(brute), abs=1e-12)
        assert best_t == max(
            t for t, r in zip(curve.thresholds, curve.raw, strict=True) if r == best_raw
        )


def test_normalise() -> None:
    assert normalise(-116.0, 116, STD) == 0.0
    assert normalise(116.0, 116, STD) == 100.0
    assert normalise(-232.0, 116, LOW_FN) == 0.0
    assert normalise(0.0, 116, LOW_FN) == pytest.approx(100 * 232 / 348)
    assert math.isnan(normalise(0.0, 0, STD))


def _tiny_corpus() -> Corpus:
    ts = 1_400_000_000_000 + np.arange(N, dtype=np.int64) * 300_000
    texts = [str(t) for t in ts.astype("datetime64[ms]").astype("datetime64[s]")]
    values = np.sin(np.arange(N) / 10.0)
    return Corpus(
        Path("."),
        [
            DataFile("catA/a.csv", texts, ts, values, ((500, 599),)),
            DataFile("catB/b.csv", texts, ts, values, ((300, 349), (700, 749))),
        ],
    )


def test_score_corpus_categories_and_oracle() -> None:
    corpus = _tiny_corpus()
    oracle = {f.key: _detect_at(*(a for a, _ in f.windows)) for f in corpus.files}
    for r in score_corpus(corpus, oracle).values():
        assert (r.threshold, r.raw, r.score) == (1.0, 3.0, 100.0)
        assert r.categories == {"catA": 100.0, "catB": 100.0}
    half = {"catA/a.csv": oracle["catA/a.csv"], "catB/b.csv": np.zeros(N)}
    r = score_corpus(corpus, half)["standard"]
    assert r.categories == {"catA": 100.0, "catB": 0.0}
    assert r.score == pytest.approx(100 * (1 - 2 + 3) / 6)
    assert sum(r.per_file.values()) == pytest.approx(r.raw)


def test_result_files_round_trip(tmp_path: Path) -> None:
    corpus = _tiny_corpus()
    rng = np.random.default_rng(1)
    written = {}
    for f in corpus.files:
        scores = rng.random(len(f)).astype(np.float32)
        back = write_result(result_path(tmp_path / "det", "det", f), f, scores)
        assert np.array_equal(back.astype(np.float32), scores)  # no value lost
        written[f.key] = back
    read = read_results(tmp_path / "det", corpus)
    assert all(np.array_equal(read[k], written[k]) for k in written)


def test_windowed_gaussian_follows_nab() -> None:
    """Against a literal list-based version of NAB's detector (window 10, step 3)."""
    x = np.random.default_rng(3).normal(size=60)
    x[40] = 8.0
    window, step = 10, 3
    data: list[float] = []
    buf: list[float] = []
    mean, std = 0.0, 1.0
    want = []
    for v in x.tolist():
        want.append(1 - 0.5 * math.erfc(abs(v - mean) / std / math.sqrt(2)) if data else 0.0)
        if len(data) < window:
            data.append(v)
        else:
            buf.append(v)
            if len(buf) < step:
                continue
            data = data[step:] + buf
            buf = []
        mean, std = float(np.mean(data)), float(np.std(data)) or 1e-6
    det = WindowedGaussian(window, step)
    got = [det.update(v) for v in x.tolist()]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got[40] > 0.999


# -- the streaming adapter --------------------------------------------------------------------


def test_strictly_increasing() -> None:
    ts = np.array([10, 20, 20, 20, 15, 40], np.int64)
    assert strictly_increasing(ts).tolist() == [10, 20, 21, 22, 23, 40]
    ch = np.array([0, 0, 1, 0, 1, 1])
    assert strictly_increasing(ts, ch).tolist() == [10, 20, 20, 21, 21, 40]


def test_every_reading_is_scored_despite_repeats_and_gaps() -> None:
    """Repeated times and gaps of hours (beyond input.max_future_s) lose no reading."""
    rng = np.random.default_rng(5)
    ts = 1_400_000_000_000 + np.arange(400, dtype=np.int64) * 300_000
    ts[101:104] = ts[100]  # a repeated timestamp
    ts[200:] += 3 * 86_400_000  # a three-day gap
    x = rng.normal(size=400)
    x[300] = 40.0
    names = [("series", "value", "nab", "default")]
    scores, alerts = run_channels(
        ts, names, np.zeros(400, np.int32), x, eval_settings("nab"), chunk=64, nan_to_zero=False
    )
    assert scores.dtype == np.float32 and not np.isnan(scores).any()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[300] > 0.9 and np.median(scores) < 0.1
    assert any(a.rule == "zscore" and a.event == "open" for a in alerts)


# -- the corpus ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    nab = datasets_dir() / "nab"
    if not (nab / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB corpus not found in {nab} (set STREAMPROC_DATASETS)")
    return load_corpus(nab)


@pytest.mark.datasets
def test_corpus_shape(corpus: Corpus) -> None:
    assert len(corpus.files) == 58
    assert corpus.n_windows == 116
    assert sum(len(f) for f in corpus.files) == 365_558
    assert sum(len(f.windows) for f in corpus.files if f.category == "realTraffic") == 14
    # every window lies past its file's probation
    assert all(a >= probation_rows(len(f)) for f in corpus.files for a, _ in f.windows)


@pytest.mark.datasets
def test_null_detector_scores_zero(corpus: Corpus) -> None:
    results = score_corpus(corpus, {f.key: np.zeros(len(f)) for f in corpus.files})
    assert set(results) == set(PROFILES)
    for name, r in results.items():
        assert r.threshold == NO_DETECTION
        assert r.raw == -116 * PROFILES[name].fn
        assert r.score == 0.0
        assert r.categories["realTraffic"] == 0.0


@pytest.mark.datasets
def test_perfect_oracle_scores_hundred(corpus: Corpus) -> None:
    oracle = {f.key: _detect_at(*(a for a, _ in f.windows), n=len(f)) for f in corpus.files}
    for r in score_corpus(corpus, oracle).values():
        assert r.threshold == 1.0
        assert r.raw == pytest.approx(116.0, abs=1e-9)
        assert r.score == pytest.approx(100.0, abs=1e-9)
        for cat, score in r.categories.items():
            assert (
                math.isnan(score) if cat == "artificialNoAnomaly" else score == pytest.approx(100)
            )
