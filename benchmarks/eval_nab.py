"""Score streamproc (or a baseline) on the Numenta Anomaly Benchmark (NAB v1.1).

    python benchmarks/eval_nab.py [--datasets PATH] [-c CONFIG] [--out DIR]
                                  [--detector streamproc|streamproc_alerts|windowed_gaussian]
    python benchmarks/eval_nab.py --detector streamproc_alerts -c configs/nab.toml
    python benchmarks/eval_nab.py --results DIR     # re-score existing result files only
    python benchmarks/eval_nab.py --detector windowed_gaussian --digits 12 --out /tmp/nab12

Runs the detector over the 58 series, one pass each, in file order, and writes
``OUT/<detector>/<category>/<detector>_<name>.csv`` (``timestamp,value,anomaly_score,label``,
the layout of NAB's ``results/`` folder; default OUT is benchmarks/results/nab). Then it
optimises one threshold per profile over the corpus, scores it (``nab_score``) and prints
a Markdown table: per profile the threshold, the raw and normalised corpus score, the
normalised realTraffic score; then every category; then the cost per reading.

Scores are written exactly. ``--digits 12`` writes 12 significant digits instead, as NAB's
published result files have them (Python 2's ``str(float)``): that rounds every score within
5e-13 of 1 up to 1.0, which matters for detectors whose best threshold sits at 1.0.

Detectors:
* ``streamproc``: the real pipeline (``streaming.score_series``), default settings (or
  ``-c CONFIG``) with one generic kind ``nab`` and metric ``value``; a reading's score is the
  per-reading anomaly score of the kernels;
* ``streamproc_alerts``: the same run, scored by the alerts it raises, as an operator sees
  them: a reading's score is the opening score of the alerts that opened at it (the largest,
  if several did), 0 elsewhere. A dropout alert opens between readings, at a sweep of the
  event-time clock; it counts at the first reading from then on;
* ``windowed_gaussian``: NAB's classic baseline, re-implemented: the score of a reading is
  ``1 - Q(|x - mean| / std)`` (Q the normal tail) against the mean and std of the window
  *before* it; the window grows to 6,400 readings and then moves 100 readings at a time.

The datasets folder comes from ``--datasets``, else ``$STREAMPROC_DATASETS``, else
``../shared/datasets`` next to the repository. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.nab_score import Corpus, DataFile, ProfileResult, load_corpus, score_corpus
from benchmarks.streaming import (
    datasets_dir,
    eval_settings,
    run_series,
    score_series,
    strictly_increasing,
)
from streamproc.config import Settings, load
from streamproc.detect import warm_up

ROOT = Path(__file__).resolve().parents[1]
Detector = Callable[[DataFile, Settings], np.ndarray]
TRAFFIC = "realTraffic"


class WindowedGaussian:
    """NAB's ``windowedGaussian`` detector, streaming: ``update(x)`` returns x's score."""

    def __init__(self, window: int = 6400, step: int = 100):
        self.window = window
        self.step = step
        self.data = np.empty(window, np.float64)
        self.n = 0
        self.pending: list[float] = []
        self.mean = 0.0
        self.std = 1.0

    def update(self, x: float) -> float:
        score = 0.0
        if self.n:
            z = abs(x - self.mean) / self.std
            score = 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))
        if self.n < self.window:
            self.data[self.n] = x
            self.n += 1
            self._refit()
        else:
            self.pending.append(x)
            if len(self.pending) == self.step:
                self.data[: -self.step] = self.data[self.step :]
                self.data[-self.step :] = self.pending
                self.pending = []
                self._refit()
        return score

    def _refit(self) -> None:
        view = self.data[: self.n]
        self.mean = float(view.mean())
        self.std = float(view.std()) or 0.000001


def windowed_gaussian(values: np.ndarray, window: int = 6400, step: int = 100) -> np.ndarray:
    det = WindowedGaussian(window, step)
    return np.array([det.update(x) for x in np.asarray(values, np.float64).tolist()])


def _streamproc(f: DataFile, settings: Settings) -> np.ndarray:
    return score_series(f.ts_ms, f.values, settings, settings.channels.kinds[0], "value")


def _streamproc_alerts(f: DataFile, settings: Settings) -> np.ndarray:
    _, alerts = run_series(f.ts_ms, f.values, settings, settings.channels.kinds[0], "value")
    ts = strictly_increasing(f.ts_ms)  # the times the pipeline saw
    scores = np.zeros(len(f))
    for a in alerts:
        if a.event == "open":
            i = min(int(np.searchsorted(ts, a.opened_at_ms)), len(f) - 1)
            scores[i] = max(scores[i], a.score)
    return scores


def _gaussian(f: DataFile, settings: Settings) -> np.ndarray:
    return windowed_gaussian(f.values)


DETECTORS: dict[str, Detector] = {
    "streamproc": _streamproc,
    "streamproc_alerts": _streamproc_alerts,
    "windowed_gaussian": _gaussian,
}


# -- result files ----------------------------------------------------------------------------


def result_path(folder: Path, detector: str, f: DataFile) -> Path:
    return folder / f.category / f"{detector}_{f.name}.csv"


def write_result(
    path: Path, f: DataFile, scores: np.ndarray, digits: int | None = None
) -> np.ndarray:
    """Write one result file, scores exact (numpy's shortest text that reads back to the same
    value) or with ``digits`` significant digits; returns the scores as read back."""
    label = np.zeros(len(f), np.int8)
    for a, b in f.windows:
        label[a : b + 1] = 1
    texts = [str(s) for s in scores] if digits is None else [f"{s:.{digits}g}" for s in scores]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as out:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        w.writerows(zip(f.timestamps, f.values.tolist(), texts, label.tolist(), strict=True))
    return np.array(texts, np.float64)


def read_results(folder: Path, corpus: Corpus) -> dict[str, np.ndarray]:
    """The anomaly scores of every corpus file from a detector's result folder."""
    detector = folder.name
    scores = {}
    for f in corpus.files:
        path = result_path(folder, detector, f)
        with open(path, newline="") as src:
            rows = list(csv.DictReader(src))
        if [r["timestamp"] for r in rows] != f.timestamps:
            raise ValueError(f"{path}: timestamps differ from the data file")
        scores[f.key] = np.array([float(r["anomaly_score"]) for r in rows], np.float64)
    return scores


def run(
    corpus: Corpus, detector: str, folder: Path, settings: Settings, digits: int | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """Run ``detector`` over the corpus, write its result files; (scores, detector seconds)."""
    fn = DETECTORS[detector]
    scores = {}
    total = 0.0
    for k, f in enumerate(corpus.files, 1):
        start = time.perf_counter()
        raw = np.asarray(fn(f, settings))
        took = time.perf_counter() - start
        total += took
        if raw.shape != (len(f),) or not ((raw >= 0) & (raw <= 1)).all():
            raise ValueError(f"{detector} gave scores outside [0, 1] or of the wrong length")
        scores[f.key] = write_result(result_path(folder, detector, f), f, raw, digits)
        print(
            f"[{k:2d}/{len(corpus.files)}] {f.key:<58} {len(f):>7,} rows {took:7.2f} s",
            file=sys.stderr,
        )
    return scores, total


# -- report ----------------------------------------------------------------------------------


def report(results: dict[str, ProfileResult], corpus: Corpus) -> str:
    lines = [
        "| profile | threshold | raw score | NAB score (corpus) | realTraffic |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r.threshold!r} | {r.raw:.2f} | {r.score:.1f} "
            f"| {r.categories.get(TRAFFIC, math.nan):.1f} |"
        )
    lines += ["", "| category | files | windows | " + " | ".join(results) + " |"]
    lines.append("|---|---|---|" + "---|" * len(results))
    for cat in corpus.categories:
        files = [f for f in corpus.files if f.category == cat]
        cells = [
            f"{r.categories[cat]:.1f}"
            if r.categories[cat] == r.categories[cat]
            else f"raw {sum(r.per_file[f.key] for f in files):.2f}"
            for r in results.values()
        ]
        n_w = sum(len(f.windows) for f in files)
        lines.append(f"| {cat} | {len(files)} | {n_w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--datasets", help="datasets folder (holds nab/)")
    ap.add_argument("--detector", choices=sorted(DETECTORS), default="streamproc")
    ap.add_argument("-c", "--config", help="streamproc TOML config (default: built-in defaults)")
    ap.add_argument("--kind", default="nab", help="the kind the series are registered as")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/nab")
    ap.add_argument("--results", type=Path, help="only re-score this detector result folder")
    ap.add_argument(
        "--digits",
        type=int,
        help="write scores with N significant digits (12: "
        "as NAB's published results files; default: exact)",
    )
    args = ap.parse_args(argv)
    nab = datasets_dir(args.datasets) / "nab"
    if not (nab / "labels" / "combined_windows.json").is_file():
        print(
            f"NAB corpus not found in {nab} (use --datasets or STREAMPROC_DATASETS)",
            file=sys.stderr,
        )
        return 2
    corpus = load_corpus(nab)
    rows = sum(len(f) for f in corpus.files)
    if args.results:
        scores = read_results(args.results, corpus)
        cost = ""
    else:
        settings = eval_settings(args.kind, load(args.config))
        if args.detector.startswith("streamproc"):
            warm_up(settings)  # compile (or load) the kernels before the clock starts
        scores, seconds = run(
            corpus, args.detector, args.out / args.detector, settings, args.digits
        )
        cost = (
            f"\n{args.detector}: {len(corpus.files)} files, {rows:,} readings in {seconds:.2f} s "
            f"of detector time: {seconds / rows * 1e6:.1f} µs per reading"
        )
    start = time.perf_counter()
    results = score_corpus(corpus, scores)
    took = time.perf_counter() - start
    print(report(results, corpus) + cost)
    print(f"scoring (threshold search, 3 profiles): {took:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
