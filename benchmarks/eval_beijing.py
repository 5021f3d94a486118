"""Beijing multi-site air quality through streamproc's pipeline, with injected sensor faults.

    python benchmarks/eval_beijing.py [--datasets PATH] [--config FILE] [--seed 0]
        [--per-kind 50] [--tolerance-h 6]

12 stations, hourly, 2013-03-01 to 2017-02-28 (the CSV's local hours, taken as UTC labels).
Channels: station x pollutant (``pm25 pm10 so2 no2 co o3``), kind ``air``, group ``beijing``.
``NA`` cells are real dropouts: no reading is sent for them. All 72 channels go through one
pipeline, hour by hour.

Faults (``plan_faults``, seeded) go into single channels, ``--per-kind`` of each kind, never
within 7 days of another fault on the same channel and not in the first 30 days:
- stuck: the reading at the fault's start repeats for 12-72 h (hours without a reading stay
  without one); placed where at least half of the span's real readings differ from it;
- spike: one reading x5..x10 or +300 (one form or the other, at random);
- drift: an additive ramp from 0 to +50..150 % of the channel's median over 3-10 days, then
  back to the real values;
- dropout: no readings for 12-72 h, placed where the channel reported.
Stuck, drift and dropout spans need real readings in at least 75 % of their hours.

Scoring (``sensor_alerts``: every rule but ``threshold``: a limit breached in a real pollution
episode is an air-quality alert, not a sensor fault):
- recall per kind: share of faults with a sensor alert opened on their channel between the
  fault's first hour and ``--tolerance-h`` (6 h) after its last. The dropout rule can only
  fire once the silence exceeds max(factor x usual interval, min_gap): 5 h on hourly data with
  the defaults, well inside every 12-72 h gap.
- false alerts: sensor alerts opened outside every fault window of their channel, by rule,
  per station-week, within and outside city-wide pollution episodes (``episode_hours``).
  Dropout alerts during a real gap of the data (no reading in the original record in the hour
  before the alert) are correct detections of real dropouts and are counted apart.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.streaming import Channel, datasets_dir, make_settings, run_frame

POLLUTANTS = (
    ("PM2.5", "pm25"),
    ("PM10", "pm10"),
    ("SO2", "so2"),
    ("NO2", "no2"),
    ("CO", "co"),
    ("O3", "o3"),
)
NP = len(POLLUTANTS)
HOUR_MS = 3_600_000
WEEK_H = 168
FAULT_KINDS = ("stuck", "spike", "drift", "dropout")
KIND, GROUP = "air", "beijing"


# -- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AirData:
    ts_ms: np.ndarray  # int64 (hours,)
    stations: list[str]
    values: np.ndarray  # float64 (hours, stations * NP); column = station * NP + pollutant

    @property
    def channels(self) -> list[Channel]:
        return [Channel(s, m, KIND, GROUP) for s in self.stations for _, m in POLLUTANTS]

    def name(self, column: int) -> str:
        return f"{self.stations[column // NP]}/{POLLUTANTS[column % NP][1]}"


def station_files(root: Path) -> list[tuple[str, Path]]:
    """(station, path) of every ``PRSA_Data_<Station>_*.csv.gz``, by station name."""
    files = sorted(root.glob("PRSA_Data_*.csv.gz"))
    return [(p.name.split("_")[2], p) for p in files]


def read_station(path: Path, max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hour times (ms) and the pollutant columns (NaN for ``NA``) of one station's file."""
    cols = ["year", "month", "day", "hour", *(c for c, _ in POLLUTANTS)]
    table = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            include_columns=cols,
            null_values=["NA"],
            column_types={c: "float64" for c, _ in POLLUTANTS},
        ),
    )
    if max_rows is not None:
        table = table.slice(0, max_rows)
    y, mo, d, h = (table.column(c).to_numpy().astype(np.int64) for c in cols[:4])
    months = ((y - 1970) * 12 + mo - 1).astype("datetime64[M]")
    hours = months.astype("datetime64[D]").astype("datetime64[h]") + (d - 1) * 24 + h
    ts = hours.astype("datetime64[ms]").astype(np.int64)
    values = np.column_stack(
        [table.column(c).to_numpy(zero_copy_only=False) for c, _ in POLLUTANTS]
    )
    return ts, values.astype(np.float64)


def load(root: Path, max_rows: int | None = None) -> AirData:
    """Every station side by side on one hourly grid (the files share it)."""
    stations, blocks = [], []
    ts0: np.ndarray | None = None
    for station, path in station_files(root):
        ts, values = read_station(path, max_rows)
        if ts0 is None:
            ts0 = ts
        elif not np.array_equal(ts, ts0):
            raise ValueError(f"{path.name}: hours differ from the other stations")
        stations.append(station)
        blocks.append(values)
    if ts0 is None:
        raise FileNotFoundError(f"no PRSA_Data_*.csv.gz in {root}")
    if np.any(np.diff(ts0) != HOUR_MS):
        raise ValueError("the hourly grid has gaps or repeats")
    return AirData(ts0, stations, np.hstack(blocks))


# -- faults ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    column: int
    kind: str  # stuck | spike | drift | dropout
    start: int  # first faulty hour (row)
    end: int  # last faulty hour (row), inclusive
    amount: float = 0.0  # spike: factor (form "x") or addend (form "+"); drift: final offset
    form: str = ""


def plan_faults(
    values: np.ndarray,
    per_kind: int,
    seed: int,
    guard_h: int = WEEK_H,
    skip_h: int = 30 * 24,
) -> list[Fault]:
    """``per_kind`` faults of each kind at random channels and hours; see the module doc."""
    rng = np.random.default_rng(seed)
    hours, columns = values.shape
    ok = np.isfinite(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(values, axis=0)
    taken: list[list[tuple[int, int]]] = [[] for _ in range(columns)]
    faults: list[Fault] = []
    for _ in range(per_kind):
        for kind in FAULT_KINDS:
            for _attempt in range(100_000):
                c = int(rng.integers(columns))
                dur = {"stuck": (12, 72), "spike": (1, 1), "drift": (72, 240), "dropout": (12, 72)}
                lo, hi = dur[kind]
                n = int(rng.integers(lo, hi + 1))
                start = int(rng.integers(skip_h, hours - guard_h - n))
                end = start + n - 1
                if any(start - guard_h <= e and s <= end + guard_h for s, e in taken[c]):
                    continue
                x = values[start, c]
                if not ok[start, c] or (n > 1 and ok[start : end + 1, c].mean() < 0.75):
                    continue
                if kind == "stuck":
                    span = values[start : end + 1, c]
                    real = span[np.isfinite(span)]
                    if (real != x).mean() < 0.5:
                        continue
                    fault = Fault(c, kind, start, end)
                elif kind == "spike":
                    if x <= 0:
                        continue
                    if rng.random() < 0.5:
                        fault = Fault(c, kind, start, end, float(rng.uniform(5, 10)), "x")
                    else:
                        fault = Fault(c, kind, start, end, 300.0, "+")
                elif kind == "drift":
                    offset = float(rng.uniform(0.5, 1.5) * medians[c])
                    fault = Fault(c, kind, start, end, offset)
                else:
                    if not ok[start - 1, c]:
                        continue
                    fault = Fault(c, kind, start, end)
                taken[c].append((start, end))
                faults.append(fault)
                break
            else:
                raise RuntimeError(f"no room for another {kind} fault")
    return faults


def control_spans(
    faults: Sequence[Fault],
    hours: int,
    seed: int,
    guard_h: int = WEEK_H,
    skip_h: int = 30 * 24,
) -> list[Fault]:
    """For each fault, a span of the same channel, kind and length that no fault comes within
    ``guard_h`` of. Nothing is injected there: the share of these spans that a sensor alert
    falls into is the recall that chance alone gives."""
    rng = np.random.default_rng([seed, 1])
    spans = {}
    for f in faults:
        spans.setdefault(f.column, []).append((f.start, f.end))
    out = []
    for f in faults:
        n = f.end - f.start + 1
        for _attempt in range(100_000):
            start = int(rng.integers(skip_h, hours - guard_h - n))
            end = start + n - 1
            if not any(s - guard_h <= end and start <= e + guard_h for s, e in spans[f.column]):
                out.append(Fault(f.column, f.kind, start, end))
                break
        else:
            raise RuntimeError("no fault-free span for a control")
    return out


def inject(values: np.ndarray, faults: Sequence[Fault]) -> np.ndarray:
    """A copy of ``values`` with the faults applied."""
    out = values.copy()
    for f in faults:
        span = slice(f.start, f.end + 1)
        col = out[span, f.column]  # a view: writes go to ``out``
        if f.kind == "stuck":
            col[np.isfinite(col)] = values[f.start, f.column]
        elif f.kind == "spike":
            col[:] = col * f.amount if f.form == "x" else col + f.amount
        elif f.kind == "drift":
            n = f.end - f.start + 1
            col += f.amount * np.arange(1, n + 1) / n
        elif f.kind == "dropout":
            col[:] = np.nan
        else:
            raise ValueError(f"unknown fault kind {f.kind!r}")
    return out


# -- episodes ----------------------------------------------------------------------------


def episode_hours(
    pm25: np.ndarray,
    ratio: float = 2.0,
    level: float = 150.0,
    share: float = 0.75,
    days: int = 30,
) -> np.ndarray:
    """City-wide pollution episodes: hours when at least ``share`` of the stations reporting
    PM2.5 (and at least half of all stations) read above ``ratio`` x their own median of the
    previous ``days`` days (the days before the current one; fewer at the record's start), or
    above ``level`` ug/m3. ``pm25``: (hours, stations), NaN for no reading."""
    hours, stations = pm25.shape
    n_days = -(-hours // 24)
    med = np.full((n_days, stations), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows stay NaN
        for d in range(1, n_days):
            med[d] = np.nanmedian(pm25[max(0, d - days) * 24 : d * 24], axis=0)
    med_h = np.repeat(med, 24, axis=0)[:hours]
    with np.errstate(invalid="ignore"):
        high = (pm25 > ratio * med_h) | (pm25 > level)
    reporting = np.isfinite(pm25).sum(axis=1)
    return (reporting * 2 >= stations) & (high.sum(axis=1) >= share * reporting)


# -- scoring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """An alert opening, by frame column."""

    column: int
    rule: str
    ts_ms: int


def sensor_alerts(opens: Sequence[Opened]) -> list[Opened]:
    return [o for o in opens if o.rule != "threshold"]


def fault_window(f: Fault, ts_ms: np.ndarray, tol_ms: int) -> tuple[int, int]:
    """Event times in which an alert counts for ``f``: its first hour to its last + tolerance."""
    return int(ts_ms[f.start]), int(ts_ms[f.end]) + tol_ms


@dataclass(frozen=True)
class Recall:
    kind: str
    faults: int
    detected: int  # a sensor alert opened in [start, end + tolerance]
    before_end: int  # ... opened no later than the fault's last hour
    delays_h: list[float]  # first detection after the fault's start, hours
    by_rule: Counter[str]  # faults detected by each rule (a fault may count under several)

    @property
    def recall(self) -> float:
        return self.detected / self.faults if self.faults else float("nan")


def recall_by_kind(
    faults: Sequence[Fault], opens: Sequence[Opened], ts_ms: np.ndarray, tol_ms: int
) -> dict[str, Recall]:
    """Recall of each fault kind by sensor alerts (see module doc)."""
    by_col: dict[int, list[Opened]] = {}
    for o in sensor_alerts(opens):
        by_col.setdefault(o.column, []).append(o)
    out = {}
    for kind in FAULT_KINDS:
        mine = [f for f in faults if f.kind == kind]
        detected = before = 0
        delays: list[float] = []
        rules: Counter[str] = Counter()
        for f in mine:
            lo, hi = fault_window(f, ts_ms, tol_ms)
            hits = [o for o in by_col.get(f.column, []) if lo <= o.ts_ms <= hi]
            if hits:
                detected += 1
                first = min(o.ts_ms for o in hits)
                before += first <= ts_ms[f.end]
                delays.append((first - lo) / HOUR_MS)
                rules.update({o.rule for o in hits})
        out[kind] = Recall(kind, len(mine), detected, before, delays, rules)
    return out


def classify(
    opens: Sequence[Opened],
    faults: Sequence[Fault],
    ts_ms: np.ndarray,
    tol_ms: int,
    original: np.ndarray,
) -> list[str]:
    """Each opening as ``threshold``, ``fault`` (in a fault window of its channel),
    ``real gap`` (a dropout alert while the original record has no reading for the channel
    in the hour before) or ``false``."""
    windows: dict[int, list[tuple[int, int]]] = {}
    for f in faults:
        windows.setdefault(f.column, []).append(fault_window(f, ts_ms, tol_ms))
    out = []
    for o in opens:
        if o.rule == "threshold":
            out.append("threshold")
        elif any(lo <= o.ts_ms <= hi for lo, hi in windows.get(o.column, [])):
            out.append("fault")
        else:
            h = int(np.searchsorted(ts_ms, o.ts_ms, "left"))
            gap = o.rule == "dropout" and h > 0 and not np.isfinite(original[h - 1, o.column])
            out.append("real gap" if gap else "false")
    return out


@dataclass(frozen=True)
class FalseAlerts:
    """False sensor alerts by rule, inside and outside episodes, per station-week."""

    inside: Counter[str]
    outside: Counter[str]
    weeks_inside: float  # station-weeks of episode hours
    weeks_outside: float

    def rate(self, rule: str | None = None, where: str = "all") -> float:
        def count(c: Counter[str]) -> int:
            return c[rule] if rule else sum(c.values())

        if where == "inside":
            return count(self.inside) / self.weeks_inside if self.weeks_inside else float("nan")
        if where == "outside":
            return count(self.outside) / self.weeks_outside
        return (count(self.inside) + count(self.outside)) / (self.weeks_inside + self.weeks_outside)


def false_alerts(
    opens: Sequence[Opened],
    labels: Sequence[str],
    ts_ms: np.ndarray,
    episode: np.ndarray,
    stations: int,
) -> FalseAlerts:
    """Count the ``false`` openings by rule; an opening is in an episode by its hour."""
    inside: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    for o, label in zip(opens, labels, strict=True):
        if label != "false":
            continue
        h = min(int(np.searchsorted(ts_ms, o.ts_ms, "right")) - 1, len(ts_ms) - 1)
        (inside if episode[max(h, 0)] else outside)[o.rule] += 1
    n_in = int(episode.sum())
    return FalseAlerts(
        inside, outside, n_in * stations / WEEK_H, (len(episode) - n_in) * stations / WEEK_H
    )


def flat_runs(values: np.ndarray, min_len: int) -> np.ndarray:
    """Per column: runs of at least ``min_len`` equal consecutive readings (NaN cells skipped)."""
    out = np.zeros(values.shape[1], np.int64)
    for c in range(values.shape[1]):
        v = values[:, c]
        v = v[np.isfinite(v)]
        if len(v) == 0:
            continue
        starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
        lengths = np.diff(np.r_[starts, len(v)])
        out[c] = int((lengths >= min_len).sum())
    return out


# -- report ------------------------------------------------------------------------------


def report(
    faults: Sequence[Fault],
    opens: Sequence[Opened],
    labels: Sequence[str],
    recalls: dict[str, Recall],
    chance: dict[str, Recall],
    fa: FalseAlerts,
    ts_ms: np.ndarray,
    tol_h: float,
) -> str:
    """The recall and false-alert tables (markdown) and a summary of every alert opened."""
    lines = [
        f"| fault | injected | detected (<= end + {tol_h:g} h) | recall | before the fault ends "
        "| median delay from start | detected by rule | chance (fault-free spans) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in recalls.values():
        delay = f"{np.median(r.delays_h):.1f} h" if r.delays_h else "-"
        rules = ", ".join(f"{k} {v}" for k, v in r.by_rule.most_common())
        lines.append(
            f"| {r.kind} | {r.faults} | {r.detected} | {r.recall:.2f} | {r.before_end} "
            f"| {delay} | {rules} | {chance[r.kind].recall:.2f} |"
        )
    tol_ms = round(tol_h * HOUR_MS)
    forms = []
    for form, name in (("x", "x5..x10"), ("+", "+300")):
        some = [f for f in faults if f.kind == "spike" and f.form == form]
        hit = recall_by_kind(some, opens, ts_ms, tol_ms)["spike"]
        forms.append(f"{name} {hit.detected}/{hit.faults}")
    lines += ["", f"spikes detected by form: {', '.join(forms)}"]
    lines += [
        "",
        "| rule | false alerts | per station-week | in episodes | per station-week in episodes "
        "| outside episodes | per station-week outside |",
        "|---|---|---|---|---|---|---|",
    ]
    rules = sorted(set(fa.inside) | set(fa.outside))
    for rule in [*rules, None]:
        n_in = fa.inside[rule] if rule else sum(fa.inside.values())
        n_out = fa.outside[rule] if rule else sum(fa.outside.values())
        lines.append(
            f"| {rule or 'all sensor rules'} | {n_in + n_out} | {fa.rate(rule):.3f} | {n_in} "
            f"| {fa.rate(rule, 'inside'):.3f} | {n_out} | {fa.rate(rule, 'outside'):.3f} |"
        )
    lines.append("")
    per_metric: dict[str, Counter[str]] = {}
    for o, label in zip(opens, labels, strict=True):
        if label == "false":
            per_metric.setdefault(o.rule, Counter())[POLLUTANTS[o.column % NP][1]] += 1
    for rule, c in sorted(per_metric.items()):
        parts = ", ".join(f"{m} {c[m]}" for _, m in POLLUTANTS)
        lines.append(f"false {rule} alerts by pollutant: {parts}")
    kinds = Counter(labels)
    by_rule = Counter(o.rule for o in opens)
    lines += [
        f"alerts opened: {len(opens)} ({', '.join(f'{k} {v}' for k, v in sorted(by_rule.items()))})"
        f"; on injected faults {kinds['fault']}, threshold {kinds['threshold']} (not counted), "
        f"dropout on real gaps {kinds['real gap']} (not counted), false {kinds['false']}",
        f"station-weeks: {fa.weeks_inside + fa.weeks_outside:.1f} "
        f"({fa.weeks_inside:.1f} in episode hours)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--datasets",
        help="datasets folder (default: $STREAMPROC_DATASETS, else "
        "../shared/datasets from the repository root)",
    )
    ap.add_argument("--config", help="TOML file with detector settings on top of the defaults")
    ap.add_argument("--seed", type=int, default=0, help="fault placement seed")
    ap.add_argument("--per-kind", type=int, default=50, help="faults of each kind")
    ap.add_argument("--tolerance-h", type=float, default=6.0, help="detection after a fault ends")
    ap.add_argument("--faults-csv", help="write the injected faults to this CSV")
    args = ap.parse_args(argv)
    root = datasets_dir(args.datasets) / "beijing-air"
    if not root.is_dir():
        sys.exit(f"no Beijing data at {root} (--datasets PATH or STREAMPROC_DATASETS)")
    wall = time.perf_counter()
    data = load(root)
    loaded = time.perf_counter() - wall
    faults = plan_faults(data.values, args.per_kind, args.seed)
    values = inject(data.values, faults)
    settings = make_settings([KIND], args.config)
    run = run_frame(data.ts_ms, values, data.channels, settings)
    opens = [Opened(run.column_of[a.channel], a.rule, a.ts_ms) for a in run.opens()]
    tol_ms = round(args.tolerance_h * HOUR_MS)
    labels = classify(opens, faults, data.ts_ms, tol_ms, data.values)
    episode = episode_hours(data.values[:, 0::NP])
    recalls = recall_by_kind(faults, opens, data.ts_ms, tol_ms)
    fa = false_alerts(opens, labels, data.ts_ms, episode, len(data.stations))
    chance = recall_by_kind(
        control_spans(faults, len(data.ts_ms), args.seed), opens, data.ts_ms, tol_ms
    )
    print(report(faults, opens, labels, recalls, chance, fa, data.ts_ms, args.tolerance_h))

    if args.faults_csv:
        with open(args.faults_csv, "w") as f:
            f.write("channel,kind,start,end,amount,form\n")
            for x in faults:
                start = np.datetime64(int(data.ts_ms[x.start]), "ms")
                end = np.datetime64(int(data.ts_ms[x.end]), "ms")
                f.write(f"{data.name(x.column)},{x.kind},{start},{end},{x.amount:.6g},{x.form}\n")
    na = (~np.isfinite(data.values)).mean() * 100
    runs = flat_runs(data.values, 12).reshape(len(data.stations), NP).sum(axis=0)
    runs_text = ", ".join(f"{m} {n}" for (_, m), n in zip(POLLUTANTS, runs, strict=True))
    shape = f"{len(data.stations)} stations x {NP} pollutants, {len(data.ts_ms):,} hours"
    print(
        f"\ndata: {shape}; NA cells {na:.1f}%; episode hours {int(episode.sum()):,} "
        f"({episode.mean() * 100:.1f}%); raw runs of >= 12 equal readings: {runs_text}"
    )
    cost = run.seconds / run.readings * 1e6
    print(
        f"{run.readings:,} readings through the pipeline in {run.seconds:.2f} s "
        f"({cost:.2f} us/reading); dropped {run.summary['dropped']}; loading {loaded:.2f} s; "
        f"wall {time.perf_counter() - wall:.1f} s"
    )


if __name__ == "__main__":
    main()
