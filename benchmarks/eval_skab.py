"""SKAB (Skoltech Anomaly Benchmark) through streamproc's pipeline: outlier and changepoint scores.

    python benchmarks/eval_skab.py [--datasets PATH] [--config FILE] [--normal-quantile 0.99]
    python benchmarks/eval_skab.py --cv GRID [--max-far 20] [--min-changepoints 30]

Each file of ``skab/data/{valve1,valve2,other}`` is one device (kind ``rig``, group = folder)
and each numeric column one of its channels. A fresh pipeline runs each file; the first 400
rows are warm-up (SKAB's protocol lets them be used for fitting) and are not scored.

Per-row predictions:
- ``score``: the largest per-reading anomaly score of the row's channels >= a threshold;
- ``alert``: an alert of any rule is open on the device at the row's time;
- ``score or alert``: either.

Outlier metrics, SKAB's definitions, over all test rows of all files pooled (SKAB's own
evaluation code sums TP, TN, FP, FN over the files before dividing):
F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN) * 100, MAR = FN / (FN + TP) * 100.

Thresholds: *fixed* is the ``--normal-quantile`` quantile of the row scores of the
anomaly-free file after its own 400 warm-up rows (no label is looked at); *best* maximises
the metric over the test labels (F1 among thresholds with FAR <= ``--max-far``; NAB over 401
score quantiles) and is an upper bound, not a result. More than half of the test rows are
labelled anomalous, so predicting every row gives F1 0.70 at FAR 100 %: the table shows it.

Changepoints: NAB scoring, standard profile (``nab_score``), windows of 60 s starting at each
labelled changepoint of the test rows, overlapping windows merged. A detection is a row where
the prediction turns on (the score crosses the threshold upward, an alert opens), not every
row above the threshold as in NAB proper: SKAB rows are 1 s apart and a condition lasts.
``skab_nab_score`` scores the same prediction under the conventions of SKAB's evaluation
tool, which produced the published figures. "Changepoints" below is that score for ``score``
at the fixed threshold.

Cross-validation (``--cv GRID``, a TOML grid of settings: see ``load_grid`` and
``benchmarks/configs/skab-cv-grid.toml``): settings chosen on SKAB and scored on SKAB are an
upper estimate, so each grid point is run once over every file, and then each of the three
folders is held out in turn: a candidate (grid point and prediction) is chosen on the other two
folders' pooled rows and scores the held-out folder. Selections: the highest F1 with FAR <=
``--max-far`` of ``alert``, of ``score or alert``, of either prediction; the same among the
candidates whose changepoints are >= ``--min-changepoints`` (when none is, the floor is
dropped); the highest changepoints alone. Each is reported per fold (the choice, its training
figures, its held-out ones) and pooled over the three held-out folds (TP/FP/FN/TN and NAB
scores summed, each folder with its own choice). The fixed thresholds use no label, so they
are computed per grid point as without ``--cv``. The grid table shows every point on all
files, in-sample.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.streaming import (
    Channel,
    datasets_dir,
    eval_settings,
    make_settings,
    metric_name,
    run_frame,
)
from streamproc.alerts import Alert
from streamproc.config import Settings, from_dict

WARMUP_ROWS = 400
CP_WINDOW_MS = 60_000
FOLDERS = ("valve1", "valve2", "other")
LABELS = ("anomaly", "changepoint")

# NAB standard profile: (tpWeight, fpWeight, fnWeight)
STANDARD = (1.0, 0.11, 1.0)


# -- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkabFile:
    name: str  # "valve1/0"
    ts_ms: np.ndarray  # int64 (rows,)
    values: np.ndarray  # float64 (rows, columns)
    columns: list[str]
    anomaly: np.ndarray  # bool (rows,); all False without labels
    changepoint: np.ndarray  # bool (rows,)


def read_file(path: Path, name: str) -> SkabFile:
    """One SKAB CSV (``;``-separated; times are taken as UTC)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    header = [h.strip() for h in rows[0]]
    body = np.array(rows[1:], dtype=object)
    ts = np.array([datetime.fromisoformat(t).replace(tzinfo=UTC).timestamp() for t in body[:, 0]])
    table = body[:, 1:].astype(np.float64)
    names = header[1:]
    data = [j for j, h in enumerate(names) if h not in LABELS]
    label = {h: table[:, j] > 0.5 for j, h in enumerate(names) if h in LABELS}
    none = np.zeros(len(table), bool)
    return SkabFile(
        name=name,
        ts_ms=np.round(ts * 1000).astype(np.int64),
        values=table[:, data],
        columns=[names[j] for j in data],
        anomaly=label.get("anomaly", none),
        changepoint=label.get("changepoint", none),
    )


def labelled_paths(root: Path) -> list[tuple[str, Path]]:
    """(name, path) of every labelled file, folder by folder, in numeric order."""
    out = []
    for folder in FOLDERS:
        for p in sorted((root / "data" / folder).glob("*.csv"), key=lambda p: int(p.stem)):
            out.append((f"{folder}/{p.stem}", p))
    return out


# -- running -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileResult:
    file: SkabFile
    score: np.ndarray  # float64 (rows,): largest channel score of the row (0: none)
    alert_open: np.ndarray  # bool (rows,): an alert is open on the device at the row's time
    alert_opens: np.ndarray  # bool (rows,): an alert opened at the row (or just before it)
    readings: int
    seconds: float


def alert_rows(ts_ms: np.ndarray, alerts: Sequence[Alert]) -> tuple[np.ndarray, np.ndarray]:
    """Rows covered by an open alert (``open <= t < resolve``) and rows where one opened."""
    n = len(ts_ms)
    covered = np.zeros(n + 1, np.int32)
    opened = np.zeros(n, bool)
    start: dict[str, int] = {}
    spans = []
    for a in alerts:
        if a.event == "open":
            start[a.id] = a.ts_ms
        elif a.event == "resolve" and a.id in start:
            spans.append((start.pop(a.id), a.ts_ms))
    spans += [(t, np.iinfo(np.int64).max) for t in start.values()]
    for t0, t1 in spans:
        i = int(np.searchsorted(ts_ms, t0, "left"))
        j = int(np.searchsorted(ts_ms, t1, "left"))
        covered[i] += 1
        covered[j] -= 1
        if i < n:
            opened[i] = True
    return np.cumsum(covered[:n]) > 0, opened


def run_file(f: SkabFile, settings: Settings) -> FileResult:
    device = "skab-" + f.name.replace("/", "-")
    group = f.name.split("/")[0]
    channels = [Channel(device, metric_name(c), "rig", group) for c in f.columns]
    run = run_frame(f.ts_ms, f.values, channels, settings)
    score = np.fmax.reduce(run.scores.astype(np.float64), axis=1)  # NaN-skipping max
    covered, opened = alert_rows(f.ts_ms, run.alerts)
    return FileResult(f, np.nan_to_num(score, nan=0.0), covered, opened, run.readings, run.seconds)


# -- outlier metrics ---------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def __add__(self, o: Counts) -> Counts:
        return Counts(self.tp + o.tp, self.fp + o.fp, self.tn + o.tn, self.fn + o.fn)

    @property
    def f1(self) -> float:
        d = self.tp + (self.fp + self.fn) / 2
        return self.tp / d if d else 0.0

    @property
    def far(self) -> float:
        d = self.fp + self.tn
        return 100.0 * self.fp / d if d else 0.0

    @property
    def mar(self) -> float:
        d = self.fn + self.tp
        return 100.0 * self.fn / d if d else 0.0


def confusion(true: np.ndarray, pred: np.ndarray) -> Counts:
    t, p = np.asarray(true, bool), np.asarray(pred, bool)
    return Counts(
        int((t & p).sum()), int((~t & p).sum()), int((~t & ~p).sum()), int((t & ~p).sum())
    )


def best_f1(
    score: np.ndarray, true: np.ndarray, max_far: float = 100.0
) -> tuple[float, Counts] | None:
    """The threshold (predict ``score >= threshold``) with the highest F1 among those with
    FAR <= ``max_far`` percent, and its counts; None when no threshold keeps FAR that low."""
    order = np.argsort(-score, kind="stable")
    s, t = score[order], np.asarray(true, bool)[order]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last row of each distinct score
    tp = np.cumsum(t)[last]
    fp = np.cumsum(~t)[last]
    ths = s[last]
    pos, neg = int(t.sum()), int((~t).sum())
    f1 = tp / np.maximum(tp + (fp + pos - tp) / 2, 1e-12)
    ok = 100.0 * fp / max(neg, 1) <= max_far
    if not ok.any():
        return None
    k = int(np.flatnonzero(ok)[np.argmax(f1[ok])])
    return float(ths[k]), Counts(int(tp[k]), int(fp[k]), neg - int(fp[k]), pos - int(tp[k]))


# -- changepoint metrics -----------------------------------------------------------------


def scaled_sigmoid(y: float) -> float:
    """NAB's ``2 / (1 + exp(5 y)) - 1``, and -1 beyond y = 3."""
    return -1.0 if y > 3 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def nab_windows(ts_ms: np.ndarray, cp: np.ndarray, width_ms: int) -> list[tuple[int, int]]:
    """Windows as row ranges ``(first, last)``: the rows with ``t_cp <= t <= t_cp + width``.

    Overlapping windows are merged into one, as NAB's combined label windows are.
    """
    out: list[tuple[int, int]] = []
    for i in np.flatnonzero(cp):
        last = int(np.searchsorted(ts_ms, ts_ms[i] + width_ms, "right")) - 1
        if out and i <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((int(i), last))
    return out


def nab_score(
    windows: Sequence[tuple[int, int]],
    detections: np.ndarray,
    weights: tuple[float, float, float] = STANDARD,
) -> float:
    """Raw NAB score of one series (detections: sorted row indices).

    In a window of W rows whose last row is r, the first detection, at row i, earns
    ``tp * s(-(r - i + 1) / W) / s(-1)``; later ones in the window count nothing; a window
    without detection costs ``fn``. A detection outside every window costs
    ``fp * s((i - r') / (W' - 1))`` after a window ending at r' of W' rows, the full ``fp``
    before the first window. ``s`` is ``scaled_sigmoid``.
    """
    tp_w, fp_w, fn_w = weights
    score = 0.0
    claimed = np.zeros(len(detections), bool)
    for first, last in windows:
        inside = (detections >= first) & (detections <= last)
        claimed |= inside
        if inside.any():
            i = int(detections[inside][0])
            width = last - first + 1
            score += tp_w * scaled_sigmoid(-(last - i + 1) / width) / scaled_sigmoid(-1.0)
        else:
            score -= fn_w
    for i in detections[~claimed]:
        before = [(f, la) for f, la in windows if la < i]
        if before:
            f, la = before[-1]
            score += fp_w * scaled_sigmoid((i - la) / max(la - f, 1))
        else:
            score -= fp_w
    return score


def normalised(raw: float, n_windows: int, weights: tuple[float, float, float] = STANDARD) -> float:
    """``100 (S - S_null) / (S_perfect - S_null)`` with S_null = -fn n and S_perfect = tp n."""
    tp_w, _, fn_w = weights
    null, perfect = -fn_w * n_windows, tp_w * n_windows
    return 100.0 * (raw - null) / (perfect - null) if n_windows else float("nan")


def rising(pred: np.ndarray) -> np.ndarray:
    """Rows where a boolean prediction turns on (row 0 counts when it is on)."""
    p = np.asarray(pred, bool)
    return p & ~np.r_[False, p[:-1]]


def skab_nab_score(
    ts_ms: np.ndarray, cp: np.ndarray, pred: np.ndarray, width_ms: int = CP_WINDOW_MS
) -> tuple[float, int]:
    """Raw standard-profile score and window count under SKAB's evaluation tool.

    Differences from ``nab_score``: a detection is any change of the prediction (on or off;
    the first row counts when on); windows ``[t_cp, t_cp + width]`` are in time and an overlap
    moves the later window's start to the earlier one's end; the first detection in a window
    earns ``(1 + 0.11) / 2 * (1 - tanh(x) / tanh(pi / 2)) - 0.11``, x running linearly from
    -pi/2 at the window's start to pi/2 at its end (1000 steps); every detection outside the
    windows costs 0.11, wherever it is; a missed window costs 1.
    """
    a_tp, a_fp, a_fn = 1.0, -0.11, -1.0
    p = np.asarray(pred, bool)
    change = np.r_[p[:1], p[1:] != p[:-1]]
    det = ts_ms[change]
    wins = [[int(t), int(t) + width_ms] for t in ts_ms[np.asarray(cp, bool)]]
    for k in range(len(wins) - 1):
        if wins[k][1] >= wins[k + 1][0]:
            wins[k + 1][0] = wins[k][1]
    x = np.linspace(-np.pi / 2, np.pi / 2, 1000)
    scale = (a_tp - a_fp) / 2 * -np.tanh(x) / np.tanh(np.pi / 2) + (a_tp - a_fp) / 2 + a_fp
    score = 0.0
    outside = np.ones(len(det), bool)
    for lo, hi in wins:
        inside = (det >= lo) & (det <= hi)
        outside &= ~inside
        if inside.any():
            event = int((det[inside][0] - lo) / (hi - lo) * 1000) if hi > lo else 0
            score += float(scale[min(event, 999)])
        else:
            score += a_fn
    # between windows, only strictly outside every [lo, hi] counts as a false positive
    score += a_fp * int(outside.sum())
    return score, len(wins)


def skab_normalised(raw: float, n_windows: int) -> float:
    return 100.0 * (raw + n_windows) / (2 * n_windows) if n_windows else float("nan")


# -- evaluation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """The scored part of one file (rows from WARMUP_ROWS on)."""

    name: str
    ts_ms: np.ndarray
    score: np.ndarray
    alert_open: np.ndarray
    onsets: np.ndarray  # bool: an alert opened at the row
    before: tuple[float, bool]  # score and alert state of the last warm-up row
    anomaly: np.ndarray
    changepoint: np.ndarray


def scored_part(r: FileResult) -> Scored:
    k = WARMUP_ROWS
    f = r.file
    return Scored(
        f.name,
        f.ts_ms[k:],
        r.score[k:],
        r.alert_open[k:],
        r.alert_opens[k:],
        (float(r.score[k - 1]), bool(r.alert_open[k - 1])),
        f.anomaly[k:],
        f.changepoint[k:],
    )


def _pred(t: Scored, mode: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Prediction over the test rows and its onsets (using the last warm-up row)."""
    s_prev, a_prev = t.before
    if mode == "alert":
        return t.alert_open, t.onsets
    if threshold == -math.inf:  # every row predicted anomalous
        on = np.ones(len(t.score), bool)
        return on, np.r_[True, np.zeros(len(on) - 1, bool)]
    on = t.score >= threshold
    prev = s_prev >= threshold
    if mode == "score or alert":
        on = on | t.alert_open
        prev = prev or a_prev
    onsets = on & ~np.r_[prev, on[:-1]]
    if mode == "score or alert":
        onsets |= t.onsets
    return on, onsets


@dataclass(frozen=True)
class Row:
    mode: str
    threshold: str
    counts: Counts
    nab: float
    skab_nab: float
    detected: int  # windows with a detection (NAB windows)
    windows: int
    false_detections: int


def evaluate(tests: Sequence[Scored], mode: str, threshold: float, label: str) -> Row:
    return evaluate_at([(t, mode, threshold) for t in tests], mode, label)


def evaluate_at(parts: Sequence[tuple[Scored, str, float]], mode: str, label: str) -> Row:
    """``evaluate`` with a prediction and threshold per file (``mode`` only names the row):
    held-out folds are pooled, each with its own choice."""
    counts = Counts()
    raw = skab_raw = 0.0
    n_win = skab_win = detected = false = 0
    for t, pred, threshold in parts:
        on, onsets = _pred(t, pred, threshold)
        counts += confusion(t.anomaly, on)
        wins = nab_windows(t.ts_ms, t.changepoint, CP_WINDOW_MS)
        det = np.flatnonzero(onsets)
        raw += nab_score(wins, det)
        n_win += len(wins)
        hit = np.zeros(len(det), bool)
        for lo, hi in wins:
            inside = (det >= lo) & (det <= hi)
            hit |= inside
            detected += bool(inside.any())
        false += int((~hit).sum())
        s, w = skab_nab_score(t.ts_ms, t.changepoint, on)
        skab_raw += s
        skab_win += w
    return Row(
        mode,
        label,
        counts,
        normalised(raw, n_win),
        skab_normalised(skab_raw, skab_win),
        detected,
        n_win,
        false,
    )


def sweep(tests: Sequence[Scored], mode: str, max_far: float) -> tuple[Row, Row, Row]:
    """Best-threshold rows (upper bounds): by F1 with FAR <= max_far, by NAB, by the
    SKAB-tool NAB."""
    score = np.concatenate([t.score for t in tests])
    if mode == "score or alert":
        # alert rows rank above every score (scores are < 1): predicted at any threshold <= 2
        score = np.where(np.concatenate([t.alert_open for t in tests]), 2.0, score)
    best = best_f1(score, np.concatenate([t.anomaly for t in tests]), max_far)
    if best is None:  # show the threshold that predicts the fewest rows
        top = 2.0 if mode == "score or alert" else math.inf
        by_f1 = evaluate(tests, mode, top, f"none keeps FAR <= {max_far:g}%; {top:g}")
    else:
        th = best[0]
        by_f1 = evaluate(tests, mode, th, f"{th:.3f} (best F1 at FAR <= {max_far:g}%)")
    grid = np.unique(np.quantile(np.concatenate([t.score for t in tests]), np.linspace(0, 1, 401)))
    rows = [evaluate(tests, mode, float(g), f"{g:.3f}") for g in grid]
    by_nab = max(rows, key=lambda r: r.nab)
    by_skab = max(rows, key=lambda r: r.skab_nab)
    return (
        by_f1,
        replace(by_nab, threshold=f"{by_nab.threshold} (best NAB)"),
        replace(by_skab, threshold=f"{by_skab.threshold} (best SKAB-tool NAB)"),
    )


def table(rows: Sequence[Row]) -> str:
    out = [
        "| prediction | threshold | F1 | FAR % | MAR % | NAB standard | SKAB-tool NAB "
        "| changepoints detected | false detections |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r.counts
        out.append(
            f"| {r.mode} | {r.threshold} | {c.f1:.3f} | {c.far:.2f} | {c.mar:.2f} | {r.nab:.2f} "
            f"| {r.skab_nab:.2f} | {r.detected}/{r.windows} | {r.false_detections} |"
        )
    return "\n".join(out)


# -- cross-validation --------------------------------------------------------------------

CV_MODES = ("alert", "score or alert")
Candidate = tuple[int, str]  # (grid point, prediction)


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; tables are merged key by key."""
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        out[k] = merge(old, v) if isinstance(v, dict) and isinstance(old, dict) else v
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flat(v, key + ".")
        else:
            value = str(v).lower() if isinstance(v, bool) else v
            out.append(f"{key.removeprefix('rules.')}={value}")
    return out


def load_grid(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, settings document) of each point of a grid file.

    The file has ``[base]``, a settings document as ``--config`` takes, and ``[[axes.NAME]]``:
    per axis, a list of settings fragments, each with an optional ``name``. The points are the
    combinations of one fragment per axis (the last axis varying fastest), each merged over
    ``base`` in axis order.
    """
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    unknown = set(doc) - {"base", "axes"}
    if unknown:
        raise ValueError(f"{path}: unknown tables {sorted(unknown)} (known: base, axes)")
    points = []
    for combo in itertools.product(*doc.get("axes", {}).values()):
        settings, names = doc.get("base", {}), []
        for fragment in combo:
            fragment = dict(fragment)
            name = fragment.pop("name", None)
            names.append(" ".join(_flat(fragment)) if name is None else str(name))
            settings = merge(settings, fragment)
        points.append((", ".join(names), settings))
    return points


@dataclass(frozen=True)
class Fit:
    """A candidate on the training rows: outlier counts and changepoint score."""

    counts: Counts
    changepoints: float


def choose(fits: Sequence[Fit], max_far: float, min_changepoints: float = -math.inf) -> int:
    """Index of the candidate chosen on the training rows: the highest F1 among those with
    FAR <= ``max_far`` and a changepoint score >= ``min_changepoints``; when none meets both,
    among those within the FAR limit; when none is, the lowest FAR. Ties: the earlier one."""
    within = [i for i, f in enumerate(fits) if f.counts.far <= max_far]
    pool = [i for i in within if fits[i].changepoints >= min_changepoints] or within
    if not pool:
        return min(range(len(fits)), key=lambda i: (fits[i].counts.far, i))
    return max(pool, key=lambda i: (fits[i].counts.f1, -i))


@dataclass(frozen=True)
class Point:
    """One grid point run over every labelled file."""

    name: str
    fixed: float  # the score threshold: a quantile of the anomaly-free file's row scores
    tests: list[Scored]


def run_point(
    name: str, doc: dict[str, Any], free: SkabFile, files: Sequence[SkabFile], quantile: float
) -> Point:
    settings = eval_settings(["rig"], from_dict(doc))
    normal = run_file(free, settings).score[WARMUP_ROWS:]
    tests = [scored_part(run_file(f, settings)) for f in files]
    return Point(name, float(np.quantile(normal, quantile)), tests)


@dataclass(frozen=True)
class Selection:
    title: str
    # per fold: held-out folder, choice, training fit, held-out row, held-out changepoints
    folds: list[tuple[str, str, Fit, Row, float]]
    outlier: Row  # the held-out folds pooled, each with its fold's choice
    changepoints: Row  # the same, ``score`` at the chosen points' fixed thresholds


def folder_of(t: Scored) -> str:
    return t.name.split("/")[0]


def cross_validate(
    points: Sequence[Point], max_far: float, min_changepoints: float
) -> list[Selection]:
    """Leave one folder out. For each held-out folder, a candidate (grid point, prediction)
    is chosen on the other folders' pooled rows, by ``choose`` (the F1 of a prediction, or of
    either, with or without the changepoint floor) or by the changepoint score alone (of
    ``score`` at the fixed threshold), and scores the held-out folder."""
    modes = (*CV_MODES, "score")

    def rows(folder: str, held_out: bool) -> dict[Candidate, Row]:
        out = {}
        for i, p in enumerate(points):
            tests = [t for t in p.tests if (folder_of(t) == folder) == held_out]
            out.update({(i, m): evaluate(tests, m, p.fixed, p.name) for m in modes})
        return out

    train = {f: rows(f, False) for f in FOLDERS}
    test = {f: rows(f, True) for f in FOLDERS}

    def fit(f: str, c: Candidate) -> Fit:
        return Fit(train[f][c].counts, train[f][(c[0], "score")].skab_nab)

    def select(title: str, pick: Callable[[str], Candidate]) -> Selection:
        folds, outlier, changes = [], [], []
        for f in FOLDERS:
            i, m = pick(f)
            p = points[i]
            cp = test[f][(i, "score")].skab_nab
            folds.append((f, f"{p.name} [{m}]", fit(f, (i, m)), test[f][(i, m)], cp))
            part = [t for t in p.tests if folder_of(t) == f]
            outlier += [(t, m, p.fixed) for t in part]
            changes += [(t, "score", p.fixed) for t in part]
        return Selection(
            title,
            folds,
            evaluate_at(outlier, title, "chosen per fold"),
            evaluate_at(changes, "score", "chosen per fold"),
        )

    def by_f1(sel_modes: tuple[str, ...], floor: float) -> Callable[[str], Candidate]:
        cands = [(i, m) for i in range(len(points)) for m in sel_modes]
        return lambda f: cands[choose([fit(f, c) for c in cands], max_far, floor)]

    def by_changepoints(f: str) -> Candidate:
        i = max(range(len(points)), key=lambda i: (fit(f, (i, "score")).changepoints, -i))
        return i, "score"

    floor = f"changepoints >= {min_changepoints:g}"
    out = []
    for cp_floor in (-math.inf, min_changepoints):
        suffix = "" if cp_floor == -math.inf else f", {floor}"
        for m in CV_MODES:
            out.append(select(m + suffix, by_f1((m,), cp_floor)))
        out.append(select("either prediction" + suffix, by_f1(CV_MODES, cp_floor)))
    out.append(select("changepoint score", by_changepoints))
    return out


def cv_report(points: Sequence[Point], selections: Sequence[Selection], max_far: float) -> str:
    """Every grid point on all files (in-sample), then each selection fold by fold."""
    lines = [
        "grid points, all files (in-sample: what the folds choose from)",
        "",
        "| point | alert F1 / FAR / MAR | score or alert F1 / FAR / MAR | changepoints |",
        "|---|---|---|---|",
    ]
    for p in points:
        a, b = (evaluate(p.tests, m, p.fixed, "").counts for m in CV_MODES)
        cp = evaluate(p.tests, "score", p.fixed, "").skab_nab
        lines.append(
            f"| {p.name} | {a.f1:.3f} / {a.far:.2f} / {a.mar:.2f} "
            f"| {b.f1:.3f} / {b.far:.2f} / {b.mar:.2f} | {cp:.2f} |"
        )
    lines += [
        "",
        f"leave one folder out: chosen on the other two folders (max F1 at FAR <= {max_far:g} %"
        ", or the changepoint score), scored on the held-out one",
        "",
        "| selection | held out | chosen [prediction] | training F1 / FAR / changepoints "
        "| held-out F1 / FAR / MAR | held-out changepoints |",
        "|---|---|---|---|---|---|",
    ]
    for s in selections:
        for f, choice, tr, row, cp in s.folds:
            c = row.counts
            lines.append(
                f"| {s.title} | {f} | {choice} | {tr.counts.f1:.3f} / {tr.counts.far:.2f} / "
                f"{tr.changepoints:.2f} | {c.f1:.3f} / {c.far:.2f} / {c.mar:.2f} | {cp:.2f} |"
            )
        c = s.outlier.counts
        lines.append(
            f"| **{s.title}** | **pooled** | | | **{c.f1:.3f} / {c.far:.2f} / {c.mar:.2f}** "
            f"| **{s.changepoints.skab_nab:.2f}** |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--datasets",
        help="datasets folder (default: $STREAMPROC_DATASETS, else "
        "../shared/datasets from the repository root)",
    )
    ap.add_argument("--config", help="TOML file with detector settings on top of the defaults")
    ap.add_argument(
        "--normal-quantile",
        type=float,
        default=0.99,
        help="fixed threshold: this quantile of the anomaly-free row scores",
    )
    ap.add_argument(
        "--max-far",
        type=float,
        default=20.0,
        help="FAR limit (%%) for the best-F1 upper bound and the --cv choice",
    )
    ap.add_argument(
        "--cv",
        metavar="GRID",
        help="TOML grid of settings (instead of --config): leave-one-folder-out choice",
    )
    ap.add_argument(
        "--min-changepoints",
        type=float,
        default=30.0,
        help="--cv: changepoint floor of the selections that have one",
    )
    args = ap.parse_args(argv)
    root = datasets_dir(args.datasets) / "skab"
    if not root.is_dir():
        sys.exit(f"no SKAB data at {root} (--datasets PATH or STREAMPROC_DATASETS)")
    if args.cv and args.config:
        sys.exit("--cv takes its settings from the grid file's [base]; drop --config")
    wall = time.perf_counter()
    free_file = read_file(root / "data/anomaly-free/anomaly-free.csv", "anomaly-free/0")
    files = [read_file(p, name) for name, p in labelled_paths(root)]
    if args.cv:
        grid = load_grid(args.cv)
        points = [run_point(n, d, free_file, files, args.normal_quantile) for n, d in grid]
        selections = cross_validate(points, args.max_far, args.min_changepoints)
        print(cv_report(points, selections, args.max_far))
        print(f"\n{len(points)} grid points; wall {time.perf_counter() - wall:.1f} s")
        return
    settings = make_settings(["rig"], args.config)
    free = run_file(free_file, settings)
    normal = free.score[WARMUP_ROWS:]
    fixed = float(np.quantile(normal, args.normal_quantile))
    results = [run_file(f, settings) for f in files]
    tests = [scored_part(r) for r in results]

    label = f"{fixed:.3f} (q{args.normal_quantile:g} of anomaly-free)"
    rows = [
        evaluate(tests, "score", fixed, label),
        *sweep(tests, "score", args.max_far),
        evaluate(tests, "alert", math.inf, "-"),
        evaluate(tests, "score or alert", fixed, label),
        *sweep(tests, "score or alert", args.max_far),
        evaluate(tests, "every row (trivial)", -math.inf, "-"),
    ]
    print(table(rows))

    print("\nscore >= fixed threshold, by folder:")
    for folder in FOLDERS:
        part = [t for t in tests if t.name.startswith(folder + "/")]
        r = evaluate(part, "score", fixed, label)
        c = r.counts
        line = f"F1 {c.f1:.3f}  FAR {c.far:6.2f}%  MAR {c.mar:6.2f}%  NAB {r.nab:7.2f}"
        print(f"  {folder:7s} files {len(part):2d}  {line}")
    q = np.quantile(normal, [0.5, 0.9, 0.99])
    under = free.alert_open[WARMUP_ROWS:].mean() * 100
    print(
        f"\nanomaly-free file: {under:.2f}% of rows under an open alert; "
        f"row score quantiles 0.5/0.9/0.99: {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}"
    )
    everything = [free, *results]
    readings = sum(r.readings for r in everything)
    seconds = sum(r.seconds for r in everything)
    test_rows = sum(len(t.score) for t in tests)
    cost = seconds / readings * 1e6
    print(
        f"files: {len(results)} labelled + anomaly-free; test rows {test_rows:,}; "
        f"{readings:,} readings through the pipeline in {seconds:.2f} s ({cost:.2f} us/reading); "
        f"wall {time.perf_counter() - wall:.1f} s"
    )


if __name__ == "__main__":
    main()
