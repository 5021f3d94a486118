"""The Numenta Anomaly Benchmark (NAB v1.1) scorer as a small library.

The rules are those of the benchmark (restated in the datasets README) and of its reference
code (``nab/sweeper.py``):

* the first ``min(floor(0.15 N), 750)`` rows of a file (probation) are not scored at all;
* a row is a detection when its anomaly score is >= the threshold;
* scaled sigmoid ``s(y) = 2 / (1 + exp(5 y)) - 1``, and -1 for ``y >= 3``;
* a detection at row i inside a window of W rows ending at row r is worth
  ``tp * s(-(r - i + 1) / W) / s(-1)``; only the best (earliest) one of a window counts;
  a window without a detection costs ``-fn``;
* a detection outside every window costs ``fp * s((i - r') / (W' - 1))``, r' and W' the end
  and width of the previous window, or ``-fp`` when no window precedes it;
* a window counts only when at least one of its rows is past the probation;
* one threshold per profile maximises the raw score summed over all files;
* normalised score ``100 (S - S_null) / (S_perfect - S_null)`` with ``S_null = -fn n_w`` and
  ``S_perfect = tp n_w`` for the n_w windows of the files scored (the corpus or a category).

Threshold search: exact. Every distinct anomaly score in the corpus is a candidate (plus
"no detection", +inf), as in the benchmark's own sweep. Rows are sorted by score, highest
first; each row adds its false-positive cost, or the rise of its window's best detection,
and a cumulative sum gives the corpus score at every candidate at once (O(n log n)). Among
equal best scores the highest threshold wins (as in the reference code).

Window edges are the rows whose timestamps equal the labels' (first occurrence).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

NO_DETECTION = math.inf  # the threshold at which nothing is detected


@dataclass(frozen=True)
class Profile:
    name: str
    tp: float
    fp: float
    fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}


@dataclass(frozen=True)
class DataFile:
    """One corpus file: ``key`` is ``category/name.csv``; windows are inclusive row ranges."""

    key: str
    timestamps: list[str]
    ts_ms: np.ndarray  # int64, as written in the file (not necessarily increasing)
    values: np.ndarray  # float64
    windows: tuple[tuple[int, int], ...]

    @property
    def category(self) -> str:
        return self.key.split("/")[0]

    @property
    def name(self) -> str:
        return self.key.split("/")[-1].removesuffix(".csv")

    def __len__(self) -> int:
        return len(self.ts_ms)


@dataclass(frozen=True)
class Corpus:
    root: Path
    files: list[DataFile]
    profiles: dict[str, Profile] = field(default_factory=lambda: dict(PROFILES))

    @property
    def n_windows(self) -> int:
        return sum(len(f.windows) for f in self.files)

    @property
    def categories(self) -> list[str]:
        return sorted({f.category for f in self.files})


def read_series(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A ``timestamp,value`` CSV: timestamp texts, epoch ms (UTC), values."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != ["timestamp", "value"]:
        raise ValueError(f"{path}: expected a 'timestamp,value' header")
    texts = [r[0] for r in rows[1:]]
    ts = np.array(texts, dtype="datetime64[ms]").astype(np.int64)
    values = np.array([float(r[1]) for r in rows[1:]], np.float64)
    return texts, ts, values


def load_profiles(path: Path) -> dict[str, Profile]:
    doc = json.loads(Path(path).read_text())
    return {
        name: Profile(name, m["tpWeight"], m["fpWeight"], m["fnWeight"])
        for name, p in doc.items()
        for m in [p["CostMatrix"]]
    }


def window_rows(
    ts_ms: np.ndarray, windows: Iterable[Sequence[str]], key: str
) -> list[tuple[int, int]]:
    """Label windows (timestamp texts) -> inclusive row ranges (first row with each time)."""
    first: dict[int, int] = {}
    for i, t in enumerate(ts_ms.tolist()):
        first.setdefault(t, i)
    out = []
    for start, end in windows:
        edges = np.array([start, end], dtype="datetime64[ms]").astype(np.int64).tolist()
        if edges[0] not in first or edges[1] not in first:
            raise ValueError(f"{key}: window {start} .. {end} does not start and end on rows")
        out.append((first[edges[0]], first[edges[1]]))
    if any(b < a for a, b in out) or any(c <= b for (_, b), (c, _) in pairwise(out)):
        raise ValueError(f"{key}: windows must be ordered and disjoint")
    return out


def load_corpus(nab_dir: str | Path) -> Corpus:
    """``data/*/*.csv``, ``labels/combined_windows.json`` and ``config/profiles.json``."""
    root = Path(nab_dir)
    labels = json.loads((root / "labels" / "combined_windows.json").read_text())
    files = []
    for key in sorted(labels):
        texts, ts, values = read_series(root / "data" / key)
        files.append(DataFile(key, texts, ts, values, tuple(window_rows(ts, labels[key], key))))
    profiles_path = root / "config" / "profiles.json"
    profiles = load_profiles(profiles_path) if profiles_path.exists() else dict(PROFILES)
    return Corpus(root, files, profiles)


# -- scoring -------------------------------------------------------------------------------


def probation_rows(n: int) -> int:
    return int(min(math.floor(0.15 * n), 0.15 * 5000))


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """``2 / (1 + exp(5 y)) - 1``, and -1 from y = 3 on (element-wise)."""
    y = np.asarray(y, np.float64)
    return np.where(y >= 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 3.0))) - 1.0)


@dataclass(frozen=True)
class Sweep:
    """Per-row scoring terms of one file under one profile (probation rows already cut).

    ``row``: the scorable rows; ``window``: their window (-1 outside); ``weight``: what a
    detection there is worth (tp share inside a window, signed fp cost outside).
    """

    row: np.ndarray
    window: np.ndarray
    weight: np.ndarray
    n_windows: int


def sweep(n: int, windows: Sequence[tuple[int, int]], profile: Profile) -> Sweep:
    """The scoring terms of a file of ``n`` rows with ``windows`` (inclusive row ranges)."""
    i = np.arange(n)
    window = np.full(n, -1, np.int64)
    weight = np.empty(n, np.float64)
    prev_end, prev_width = -1, 0
    cursor = 0
    for w, (a, b) in enumerate(windows):
        width = b - a + 1
        _outside(weight, i, cursor, a, prev_end, prev_width, profile)
        window[a : b + 1] = w
        weight[a : b + 1] = (
            profile.tp * scaled_sigmoid(-(b - i[a : b + 1] + 1) / width) / scaled_sigmoid(-1.0)
        )
        prev_end, prev_width, cursor = b, width, b + 1
    _outside(weight, i, cursor, n, prev_end, prev_width, profile)
    p = probation_rows(n)
    kept = [w for w, (_, b) in enumerate(windows) if b >= p]
    return Sweep(i[p:], window[p:], weight[p:], len(kept))


def _outside(
    weight: np.ndarray,
    i: np.ndarray,
    a: int,
    b: int,
    prev_end: int,
    prev_width: int,
    profile: Profile,
) -> None:
    if prev_end < 0:
        weight[a:b] = -profile.fp
    else:
        weight[a:b] = profile.fp * scaled_sigmoid((i[a:b] - prev_end) / (prev_width - 1))


def file_score(
    scores: np.ndarray, windows: Sequence[tuple[int, int]], profile: Profile, threshold: float
) -> float:
    """Raw NAB score of one file at ``threshold``."""
    sw = sweep(len(scores), windows, profile)
    hit = np.asarray(scores, np.float64)[sw.row] >= threshold
    total = float(sw.weight[hit & (sw.window < 0)].sum())
    for w in np.unique(sw.window[sw.window >= 0]):
        detected = hit & (sw.window == w)
        total += float(sw.weight[detected].max()) if detected.any() else -profile.fn
    return total


@dataclass(frozen=True)
class ThresholdCurve:
    thresholds: np.ndarray  # descending, NO_DETECTION first
    raw: np.ndarray  # corpus raw score at each threshold

    def best(self) -> tuple[float, float]:
        """(threshold, raw score): the highest threshold among the best scores."""
        k = int(np.argmax(self.raw))  # first maximum = highest threshold
        return float(self.thresholds[k]), float(self.raw[k])


def threshold_curve(
    items: Iterable[tuple[np.ndarray, Sequence[tuple[int, int]]]], profile: Profile
) -> ThresholdCurve:
    """Raw corpus score at every distinct anomaly score, for (scores, windows) per file."""
    all_scores, all_gain = [], []
    n_windows = 0
    for scores, windows in items:
        sw = sweep(len(scores), windows, profile)
        s = np.asarray(scores, np.float64)[sw.row]
        gain = np.where(sw.window < 0, sw.weight, 0.0)
        for w in np.unique(sw.window[sw.window >= 0]):
            rows = np.flatnonzero(sw.window == w)
            order = rows[np.argsort(-s[rows], kind="stable")]
            best = np.maximum.accumulate(sw.weight[order])
            gain[order] = best - np.concatenate(([-profile.fn], best[:-1]))
            n_windows += 1
        all_scores.append(s)
        all_gain.append(gain)
    s = np.concatenate(all_scores) if all_scores else np.empty(0)
    gain = np.concatenate(all_gain) if all_gain else np.empty(0)
    if np.isnan(s).any():
        raise ValueError("anomaly scores must not be NaN")
    order = np.argsort(-s, kind="stable")
    s, total = s[order], np.cumsum(gain[order])
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if len(s) else np.empty(0, int)
    null = -profile.fn * n_windows
    return ThresholdCurve(
        np.concatenate(([NO_DETECTION], s[last])), null + np.concatenate(([0.0], total[last]))
    )


def normalise(raw: float, n_windows: int, profile: Profile) -> float:
    """100 (raw - null) / (perfect - null) for ``n_windows`` windows (NaN without windows)."""
    null, perfect = -profile.fn * n_windows, profile.tp * n_windows
    return 100.0 * (raw - null) / (perfect - null) if n_windows else math.nan


@dataclass(frozen=True)
class ProfileResult:
    profile: Profile
    threshold: float
    raw: float  # corpus raw score at the threshold
    score: float  # normalised corpus score
    per_file: dict[str, float]  # raw score per file key at the threshold
    categories: dict[str, float]  # normalised score per category at the corpus threshold


def score_corpus(corpus: Corpus, scores: Mapping[str, np.ndarray]) -> dict[str, ProfileResult]:
    """Optimise one threshold per profile over the whole corpus and score it."""
    missing = [f.key for f in corpus.files if f.key not in scores]
    if missing:
        raise ValueError(f"no scores for {len(missing)} files, e.g. {missing[0]}")
    for f in corpus.files:
        if len(scores[f.key]) != len(f):
            raise ValueError(f"{f.key}: {len(scores[f.key])} scores for {len(f)} rows")
    out = {}
    for name, profile in corpus.profiles.items():
        curve = threshold_curve(((scores[f.key], f.windows) for f in corpus.files), profile)
        threshold, raw = curve.best()
        per_file = {
            f.key: file_score(scores[f.key], f.windows, profile, threshold) for f in corpus.files
        }
        categories = {}
        for cat in corpus.categories:
            files = [f for f in corpus.files if f.category == cat]
            n_w = sum(sweep(len(f), f.windows, profile).n_windows for f in files)
            categories[cat] = normalise(sum(per_file[f.key] for f in files), n_w, profile)
        n_w = sum(sweep(len(f), f.windows, profile).n_windows for f in corpus.files)
        out[name] = ProfileResult(
            profile, threshold, raw, normalise(raw, n_w, profile), per_file, categories
        )
    return out
