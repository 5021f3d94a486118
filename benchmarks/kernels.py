"""Kernels: the whole detector bank over 10k to 1M channels on one core, against River's
per-event anomaly scorers and vectorised numpy and pandas rolling z-scores, in one run.

    python benchmarks/kernels.py --channels 10000,100000,1000000 [--batches 50] [--breakdown]

Channels are the simulated city's nine profiles (air pm25..o3, traffic flow..speed, pipe
pressure and flow), ~8 channels per group (district, kind, metric). Every channel reports
once per 60 s of event time at a random phase, so each batch of 100k readings visits channels
in random order with advancing timestamps. Values: a per-channel level plus a slow AR(1)
walk and noise, spikes (1 in 5,000 readings), stuck stretches (1 channel in 997, 90 min at a
time) and silences (another 1 in 997, 30 min at a time), so alerts open and resolve.

Every rule is on: threshold and rate limits for every profile, and every rule that has an
``enabled`` switch (zscore, flatline, dropout, hampel, neighbour, ...). Dropout runs on the
event-time tick and neighbour when a snapshot interval closes, both inside
``Detector.process``; the others in the reading kernel. Each channel's window is filled first
(window + 2 readings per channel, not timed). Then the same timed batches run twice from the
same state: the reading kernel alone (``Detector._run`` over each whole batch, that is
``bank.process_readings`` and the event drain, no timers) and ``Detector.process`` (what the
daemon runs per batch: watermark, dropout ticks, interval closes with the neighbour rule and
the aggregates, events copied out). ``--breakdown`` times the kernel with rules switched off
in the parameter table. Times are wall clock and this thread's CPU time (the machine may be
shared).

Baselines, in the same run on the same data:
- River: one scorer per channel (``learn_one`` + ``score_one`` per reading) for a sample of
  channels, each warmed with its channel's first ``window`` readings, then timed on the next
  ones (the same generator's values of those channels);
- numpy: a rolling z-score of the value over the last ``window`` values (float32 ring and
  running sums per channel), vectorised across each batch in waves of distinct channels;
- pandas: ``groupby(channel).rolling(window)`` mean and std per batch, each channel's last
  ``window - 1`` values carried over from batch to batch.
The process is pinned to one core (``os.sched_setaffinity``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from river import anomaly

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamproc import counters as C
from streamproc.alerts import Events
from streamproc.batch import Batch
from streamproc.config import RULE_PARAMS, Settings, from_dict
from streamproc.detect import Detector, IntervalClosed, Output, row_bytes, warm_up
from streamproc.kernels import bank
from streamproc.kernels.rules import EV_OPEN, N_RULES, RULES
from streamproc.registry import CHANNEL_ARRAYS, Registry

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
ROUND_MS = 60_000  # every channel reports once per round, at a random phase
GROUP_DEVICES = 8  # devices per district: ~8 channels per (district, kind, metric)
PHI = 0.99  # AR(1) coefficient of the slow walk
SPIKE_RATE = 2e-4
SPECIAL = 997  # channel c % SPECIAL == 3 falls silent, == 5 gets stuck, now and then
SILENT_ROUNDS = 30
STUCK_ROUNDS = 90

# kind, metric, typical level, noise std of one reading, std of one walk step
PROFILES = (
    ("air", "pm25", 25.0, 2.0, 0.5),
    ("air", "pm10", 40.0, 3.0, 0.8),
    ("air", "no2", 35.0, 3.0, 0.6),
    ("air", "o3", 60.0, 4.0, 1.0),
    ("traffic", "flow", 300.0, 25.0, 8.0),
    ("traffic", "occupancy", 15.0, 2.0, 0.5),
    ("traffic", "speed", 50.0, 4.0, 1.0),
    ("pipe", "pressure", 4.0, 0.03, 0.01),
    ("pipe", "flow", 120.0, 5.0, 2.0),
)

# P_<code>_ON columns of the rules the reading kernel runs (dropout and neighbour run on timers)
KERNEL_RULES = {"Z": "zscore", "FL": "flatline", "HP": "hampel", "CU": "cusum", "SE": "seasonal"}


def rule_switches() -> dict[str, dict[int, float]]:
    """Rule -> the parameter columns, and values, that switch it off in the reading kernel."""
    out = {
        "threshold": {bank.P_TH_ABOVE: math.nan, bank.P_TH_BELOW: math.nan},
        "rate": {bank.P_RT_RISE: math.nan, bank.P_RT_FALL: math.nan},
    }
    for name in dir(bank):
        code = name[2:-3]
        if name.startswith("P_") and name.endswith("_ON") and code not in ("DO", "NB"):
            out[KERNEL_RULES.get(code, code.lower())] = {getattr(bank, name): 0.0}
    return out


def bench_settings(window: int, n_channels: int) -> Settings:
    """Defaults with every rule on: threshold and rate limits for every profile, and every
    rule that has an ``enabled`` switch enabled."""
    rules: dict[str, Any] = {
        name: {"enabled": True}
        for name, cls in RULE_PARAMS.items()
        if "enabled" in {f.name for f in dataclasses.fields(cls)}
    }
    rules["rate"] = {
        "overrides": {
            f"{kind}.{metric}": {"max_rise_per_s": 8 * noise / 60, "max_fall_per_s": 8 * noise / 60}
            for kind, metric, _, noise, _ in PROFILES
        }
    }
    thresholds = {
        f"{kind}.{metric}": {
            "above": 1.5 * level,
            "clear_below": 1.4 * level,
            "critical_above": 2.0 * level,
            "below": 0.4 * level,
            "clear_above": 0.5 * level,
            "min_duration_s": 600,
        }
        for kind, metric, level, _, _ in PROFILES
    }
    return from_dict(
        {
            "detect": {"window": window},
            "channels": {"max_channels": max(n_channels, 1_000_000)},
            "rules": rules,
            "thresholds": thresholds,
        }
    )


def register(reg: Registry, n: int) -> np.ndarray:
    """Register ``n`` channels, devices of each kind in turn; returns each channel's row of
    ``PROFILES``."""
    kinds: dict[str, list[int]] = {}
    for i, (kind, *_) in enumerate(PROFILES):
        kinds.setdefault(kind, []).append(i)
    rows = np.empty(n, np.int16)
    d = 0
    while reg.n < n:
        kind = list(kinds)[d % len(kinds)]
        for i in kinds[kind]:
            if reg.n == n:
                break
            rows[reg.channel(f"d{d}", PROFILES[i][1], kind, f"g{d // GROUP_DEVICES}")] = i
        d += 1
    return rows


class Stream:
    """The readings of ``n`` channels, one round (60 s of event time) at a time."""

    def __init__(self, rows: np.ndarray, seed: int, sample: np.ndarray):
        n = len(rows)
        self.rng = np.random.default_rng(seed)
        table = np.array([p[2:] for p in PROFILES])
        self.level = table[rows, 0] * self.rng.uniform(0.6, 1.3, n)
        self.noise = table[rows, 1]
        self.step = table[rows, 2]
        self.walk = np.zeros(n)
        self.held = np.zeros(n)
        c = np.arange(n)
        self.silent = np.flatnonzero(c % SPECIAL == 3)
        self.stuck = np.flatnonzero(c % SPECIAL == 5)
        self.sample = sample
        self.sample_values: list[np.ndarray] = []  # one row per round
        self.rounds = 0

    def next_round(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(channel, ts_ms, value) of the next round, in time order."""
        r, rng, n = self.rounds, self.rng, len(self.walk)
        self.walk = PHI * self.walk + self.step * rng.standard_normal(n)
        x = self.level + self.walk + self.noise * rng.standard_normal(n)
        spikes = np.flatnonzero(rng.random(n) < SPIKE_RATE)
        size = rng.uniform(10, 30, len(spikes)) * rng.choice([-1.0, 1.0], len(spikes))
        x[spikes] += size * self.noise[spikes]
        stuck = self.stuck[(r + self.stuck) // STUCK_ROUNDS % 2 == 1]
        free = self.stuck[(r + self.stuck) // STUCK_ROUNDS % 2 == 0]
        x[stuck] = self.held[stuck]
        self.held[free] = x[free]
        present = np.ones(n, bool)
        present[self.silent[(r + self.silent) // SILENT_ROUNDS % 2 == 1]] = False
        phase = rng.integers(0, ROUND_MS, n)
        ch = np.flatnonzero(present)
        ch = ch[np.argsort(phase[ch], kind="stable")].astype(np.int32)
        self.sample_values.append(x[self.sample])
        self.rounds += 1
        return ch, T0 + r * ROUND_MS + phase[ch], x[ch]


def batches(stream: Stream, size: int) -> Iterator[Batch]:
    """The stream cut into batches of ``size`` readings."""
    idx, ts, val = np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0)
    while True:
        while len(idx) < size:
            i, t, v = stream.next_round()
            idx, ts, val = np.r_[idx, i], np.r_[ts, t], np.r_[val, v]
        yield Batch(idx[:size], ts[:size], val[:size])
        idx, ts, val = idx[size:], ts[size:], val[size:]


class Clock:
    """Wall and CPU (this thread's) seconds of a ``with`` block; the machine is shared, so
    both are kept."""

    wall = cpu = 0.0

    def __enter__(self) -> Clock:
        self._start = (time.perf_counter(), time.thread_time())
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.thread_time() - self._start[1]


class TimedDetector(Detector):
    """A Detector that adds up the time of its timer work: dropout sweeps, the neighbour rule
    and the aggregates at interval closes."""

    def __init__(self, settings: Settings, registry: Registry, counters: C.Counters):
        super().__init__(settings, registry, counters)
        self.spent = {"dropout sweeps": Clock(), "neighbour rule": Clock(), "aggregates": Clock()}

    def _sweep(self, now_ms: int, outputs: list[Output]) -> None:
        with self.spent["dropout sweeps"]:
            super()._sweep(now_ms, outputs)

    def _neighbours(self, k: int, outputs: list[Output]) -> None:
        with self.spent["neighbour rule"]:
            super()._neighbours(k, outputs)

    def _aggregates(self, k: int, reset: bool = False) -> IntervalClosed:
        with self.spent["aggregates"]:
            return super()._aggregates(k, reset)


def _arrays(det: Detector) -> list[np.ndarray]:
    """Every array the detector holds, directly or in a dict (state, tables, scratch)."""
    out = []
    for v in vars(det).values():
        if isinstance(v, np.ndarray):
            out.append(v)
        elif isinstance(v, dict):
            out += [a for a in v.values() if isinstance(a, np.ndarray)]
    return out


def time_kernel(det: Detector, timed: list[Batch], prm: np.ndarray) -> Clock:
    """The reading kernel alone over ``timed`` (``Detector._run`` over each whole batch: no
    watermark, no timers) with parameters ``prm``; the detector is put back after."""
    held = _arrays(det)
    saved = [a.copy() for a in held]
    readings, keep = det.counters.readings, det.prm
    det.prm = prm
    with Clock() as clock:
        for batch in timed:
            det._run(batch, 0, len(batch), np.empty(len(batch), np.float32), [])
    for a, b in zip(held, saved, strict=True):
        np.copyto(a, b)
    det.counters.readings, det.prm = readings, keep
    return clock


class RingZScore:
    """numpy baseline: z-score of each value against the last ``window`` values of its channel
    (float32 ring, float64 running sums), vectorised across a batch: readings are taken in
    waves, the k-th reading of every channel in the batch in wave k."""

    def __init__(self, n: int, window: int):
        self.window = window
        self.ring = np.zeros((n, window), np.float32)
        self.pos = np.zeros(n, np.int64)
        self.cnt = np.zeros(n, np.int64)
        self.s1 = np.zeros(n)
        self.s2 = np.zeros(n)

    def process(self, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
        n = len(idx)
        order = np.argsort(idx, kind="stable")
        srt = idx[order]
        first = np.r_[True, srt[1:] != srt[:-1]]
        run_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n) - run_start
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(rank.max() + 2))
        z = np.empty(n)
        for w in range(len(bounds) - 1):
            rows = by_rank[bounds[w] : bounds[w + 1]]
            c, x = idx[rows], val[rows].astype(np.float32).astype(np.float64)
            m = np.maximum(self.cnt[c], 1)
            mean = self.s1[c] / m
            sd = np.sqrt(np.maximum(self.s2[c] / m - mean * mean, 1e-12))
            z[rows] = (x - mean) / sd
            p = self.pos[c]
            old = np.where(self.cnt[c] == self.window, self.ring[c, p], 0.0).astype(np.float64)
            self.s1[c] += x - old
            self.s2[c] += x * x - old * old
            self.ring[c, p] = x
            self.pos[c] = (p + 1) % self.window
            self.cnt[c] = np.minimum(self.cnt[c] + 1, self.window)
        return z

    def ordered(self) -> np.ndarray:
        """Each channel's window, oldest first (NaN where not filled yet)."""
        k = (self.pos[:, None] + np.arange(self.window)) % self.window
        out = np.take_along_axis(self.ring, k, axis=1).astype(np.float64)
        out[np.arange(self.window)[None, :] < self.window - self.cnt[:, None]] = np.nan
        return out


class PandasRolling:
    """pandas baseline: per batch, ``groupby(channel).rolling(window)`` mean and std over each
    channel's last ``window - 1`` values followed by its readings in the batch."""

    def __init__(self, tail: np.ndarray):
        self.tail = tail  # [channel, window] values, oldest first
        self.window = tail.shape[1]

    def process(self, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
        w = self.window
        u = np.unique(idx)
        hist = len(u) * (w - 1)
        frame = pd.DataFrame(
            {"ch": np.r_[np.repeat(u, w - 1), idx], "v": np.r_[self.tail[u, 1:].ravel(), val]}
        )
        stats = frame.groupby("ch", sort=False)["v"].rolling(w, min_periods=2).agg(["mean", "std"])
        row = stats.index.get_level_values(1).to_numpy()
        ch = stats.index.get_level_values(0).to_numpy()
        v = frame["v"].to_numpy()[row]
        mean, std = stats["mean"].to_numpy(), stats["std"].to_numpy()
        new = row >= hist
        z = np.empty(len(idx))
        with np.errstate(invalid="ignore", divide="ignore"):  # std 0 or NaN: z NaN
            z[row[new] - hist] = (v[new] - mean[new]) / std[new]
        # rows come grouped, in time order within a group: each group's last w are its tail
        ends = np.flatnonzero(np.r_[ch[1:] != ch[:-1], True]) + 1
        take = (ends[:, None] - w + np.arange(w)).ravel()
        self.tail[ch[ends - 1]] = v[take].reshape(-1, w)
        return z


@dataclasses.dataclass(frozen=True)
class RiverScorer:
    name: str
    make: Callable[[list[float]], Any]  # a channel's warm-up values -> a fresh scorer
    features: bool  # takes {"x": value} (unsupervised) instead of (None, value)


def river_scorers(window: int) -> list[RiverScorer]:
    def hst(warm: list[float]) -> Any:
        span = max(warm) - min(warm) or 1.0
        limits: dict[Hashable, tuple[float, float]] = {"x": (min(warm) - span, max(warm) + span)}
        return anomaly.HalfSpaceTrees(window_size=window, limits=limits, seed=1)

    return [
        RiverScorer(
            f"River GaussianScorer(window_size={window})",
            lambda _: anomaly.GaussianScorer(window_size=window, grace_period=16),
            False,
        ),
        RiverScorer(
            "River StandardAbsoluteDeviation", lambda _: anomaly.StandardAbsoluteDeviation(), False
        ),
        RiverScorer(f"River HalfSpaceTrees(window_size={window})", hst, True),
    ]


def river_models(scorer: RiverScorer, warm: list[list[float]]) -> list[Any]:
    """One scorer per channel, each taught its channel's warm-up values with ``learn_one``."""
    models = []
    for values in warm:
        m = scorer.make(values)
        for y in values:
            if scorer.features:
                m.learn_one({"x": y})
            else:
                m.learn_one(None, y)
        models.append(m)
    return models


def river_pass(scorer: RiverScorer, models: list[Any], readings: list[tuple[int, float]]) -> None:
    """``score_one`` then ``learn_one`` for each (channel's model, value), in order."""
    if scorer.features:
        for j, y in readings:
            m, x = models[j], {"x": y}
            m.score_one(x)
            m.learn_one(x)
    else:
        for j, y in readings:
            m = models[j]
            m.score_one(None, y)
            m.learn_one(None, y)


@dataclasses.dataclass
class Row:
    channels: int
    what: str
    readings: int
    clock: Clock

    @property
    def rate(self) -> float:
        """Readings per second of wall time."""
        return self.readings / self.clock.wall

    @property
    def cpu_ns(self) -> float:
        return self.clock.cpu / self.readings * 1e9


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _row_bytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(row_bytes(arrays).values())


def state_bytes(det: Detector) -> tuple[int, int, int]:
    """Bytes per channel: the per-channel state arrays, the seasonal tables (rows only for
    channels that enable the rule, spread over all channels) and the registry codes."""
    season: dict[str, np.ndarray] = getattr(det, "season", {})
    rows = getattr(det, "season_rows", 0)
    reg = det.registry
    return (
        _row_bytes(det.state),
        round(_row_bytes(season) * rows / max(reg.n, 1)),
        sum(getattr(reg, name).itemsize for name in CHANNEL_ARRAYS),
    )


def bench(n: int, args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Every measurement at ``n`` channels."""
    window, size = args.window, args.batch
    settings = bench_settings(window, n)
    progress(f"[{n:,}] registering channels")
    reg = Registry(settings.channels)
    det = TimedDetector(settings, reg, C.Counters())  # before the channels, as in the daemon
    rows = register(reg, n)
    rng = np.random.default_rng(args.seed + 1)
    normal = np.flatnonzero(np.arange(n) % SPECIAL > 5)
    sample = np.sort(rng.choice(normal, min(args.river_channels, len(normal)), replace=False))
    stream = Stream(rows, args.seed, sample)
    gen = batches(stream, size)
    ring = RingZScore(n, window)
    n_warm = math.ceil((window + 2) * n / size)
    progress(f"[{n:,}] warm-up: {n_warm} batches of {size:,} (not timed)")
    for i in range(n_warm):
        batch = next(gen)
        det.process(batch)
        ring.process(batch.idx, batch.value)
        if (i + 1) % 100 == 0:
            progress(f"[{n:,}]   {i + 1}/{n_warm}")
    det.counters.readings = 0
    for clock in det.spent.values():
        clock.wall = clock.cpu = 0.0
    timed = [next(gen) for _ in range(args.batches)]
    total = sum(len(b) for b in timed)
    out: list[Row] = []

    progress(f"[{n:,}] kernel alone: {args.batches} batches")
    out.append(Row(n, "streamproc kernel alone", total, time_kernel(det, timed, det.prm)))
    rule_ns = breakdown(det, timed) if args.breakdown else []

    progress(f"[{n:,}] Detector.process: {args.batches} batches")
    opened = np.zeros(N_RULES, np.int64)
    closes = 0
    with Clock() as clock:
        for batch in timed:
            outputs, _ = det.process(batch)
            for o in outputs:
                if isinstance(o, Events):
                    opened += np.bincount(o.rule[o.kind == EV_OPEN], minlength=N_RULES)
                else:
                    closes += 1
    out.append(Row(n, "streamproc Detector.process", total, clock))
    assert det.counters.readings == total, "readings were dropped"

    progress(f"[{n:,}] numpy ring z-score")
    pandas = PandasRolling(ring.ordered())
    with Clock() as clock:
        for batch in timed:
            ring.process(batch.idx, batch.value)
    out.append(Row(n, "numpy ring z-score", total, clock))

    progress(f"[{n:,}] pandas groupby-rolling: {args.pandas_batches} batches")
    some = timed[: args.pandas_batches]
    with Clock() as clock:
        for batch in some:
            pandas.process(batch.idx, batch.value)
    out.append(Row(n, "pandas groupby-rolling z-score", sum(map(len, some)), clock))

    per_channel = math.ceil(args.river_sample / len(sample))
    while stream.rounds < window + per_channel:
        stream.next_round()
    values = np.array(stream.sample_values[: window + per_channel]).T  # [channel, round]
    warm = [list(map(float, v[:window])) for v in values]
    readings = [
        (j, float(values[j, k]))
        for k in range(window, window + per_channel)
        for j in range(len(sample))
    ]
    for scorer in river_scorers(window):
        progress(f"[{n:,}] {scorer.name}: {len(sample):,} channels x {per_channel} readings")
        models = river_models(scorer, warm)
        with Clock() as clock:
            river_pass(scorer, models, readings)
        out.append(Row(n, scorer.name, len(readings), clock))

    info: dict[str, Any] = {
        "opened": {RULES[r]: int(k) for r, k in enumerate(opened) if k},
        "closes": closes,
        "timers": {k: v.cpu for k, v in det.spent.items()},
        "detector_cpu": out[1].clock.cpu,
        "state": state_bytes(det),
        "river_channels": len(sample),
        "breakdown": rule_ns,
    }
    return out, info


def breakdown(det: Detector, timed: list[Batch]) -> list[tuple[str, float]]:
    """CPU ns per reading of the kernel alone: all rules, none, both without the state
    prefetch, each rule alone; then all rules and none on the same batches sorted by channel
    (each channel's readings keep their order), which turns random state access into a
    sweep."""
    total = sum(len(b) for b in timed)
    progress(f"[{det.registry.n:,}] kernel alone, rule by rule")

    def ns(prm: np.ndarray, batches: list[Batch]) -> float:
        return time_kernel(det, batches, prm).cpu / total * 1e9

    none = det.prm.copy()
    switches = rule_switches()
    for cols in switches.values():
        for col, v in cols.items():
            none[:, col] = v
    out = [
        ("all rules", ns(det.prm, timed)),
        ("no rule (window, sums, aggregates)", ns(none, timed)),
    ]
    ahead, det.prefetch_ahead = det.prefetch_ahead, 0
    out.append(("all rules, no prefetch", ns(det.prm, timed)))
    out.append(("no rule, no prefetch", ns(none, timed)))
    det.prefetch_ahead = ahead
    for rule, cols in switches.items():
        prm = none.copy()
        for col in cols:
            prm[:, col] = det.prm[:, col]
        out.append((f"{rule} alone", ns(prm, timed)))
    by_channel = []
    for b in timed:
        o = np.argsort(b.idx, kind="stable")
        by_channel.append(Batch(b.idx[o], b.ts_ms[o], b.value[o]))
    out.append(("all rules, batch sorted by channel", ns(det.prm, by_channel)))
    out.append(("no rule, batch sorted by channel", ns(none, by_channel)))
    return out


def report(rows: list[Row], infos: dict[int, dict[str, Any]]) -> None:
    head = ("channels", "implementation", "readings", "wall s", "readings/s", "wall ns/reading")
    print("| " + " | ".join(head) + " | CPU ns/reading |")
    print("|---" * (len(head) + 1) + "|")
    for r in rows:
        print(
            f"| {r.channels:,} | {r.what} | {r.readings:,} | {r.clock.wall:.3f} | "
            f"{r.rate:,.0f} | {1e9 / r.rate:,.1f} | {r.cpu_ns:,.1f} |"
        )
    print()
    names = list(dict.fromkeys(r.what for r in rows if not r.what.startswith("streamproc")))
    print("Detector.process readings/s over each baseline's, by wall time / by CPU time:")
    print()
    print("| channels | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for n in infos:
        mine = {r.what: r for r in rows if r.channels == n}
        det = mine["streamproc Detector.process"]
        cells = [
            f"{det.rate / mine[w].rate:,.1f} / {mine[w].cpu_ns / det.cpu_ns:,.1f}" for w in names
        ]
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    print()
    for n, info in infos.items():
        mine = {r.what: r for r in rows if r.channels == n}
        det = mine["streamproc Detector.process"]
        fastest = min(
            (r for r in mine.values() if r.what.startswith("River")), key=lambda r: r.cpu_ns
        )
        per, season, reg = info["state"]
        timers = ", ".join(
            f"{k} {v:.3f} s ({100 * v / info['detector_cpu']:.0f} %)"
            for k, v in info["timers"].items()
        )
        print(
            f"- {n:,} channels: Detector.process {det.rate / 1e6:.2f} M readings/s by wall time, "
            f"{1e3 / det.cpu_ns:.2f} M by CPU time (target >= 10 M: "
            f"{'met' if det.rate >= 10e6 else 'missed'}); {fastest.cpu_ns / det.cpu_ns:,.2f} x "
            f"the fastest River scorer by CPU time (target >= 30 x: "
            f"{'met' if fastest.cpu_ns >= 30 * det.cpu_ns else 'missed'}). State per channel: "
            f"{per} B in the detector's arrays + {season} B of seasonal tables + {reg} B of "
            f"registry codes. Alerts opened in the timed "
            f"batches: {info['opened']}; intervals closed: {info['closes']}; timer work in "
            f"Detector.process (CPU): {timers}."
        )
    for n, info in infos.items():
        if info["breakdown"]:
            print()
            print(f"Kernel alone at {n:,} channels, CPU ns/reading:")
            print()
            print("| configuration | ns/reading |")
            print("|---|---|")
            for what, ns in info["breakdown"]:
                print(f"| {what} | {ns:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", default="10000,100000,1000000", help="comma-separated")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--batch", type=int, default=100_000, help="readings per batch")
    ap.add_argument("--batches", type=int, default=50, help="timed batches per scale")
    ap.add_argument("--pandas-batches", type=int, default=5, help="of those, timed for pandas")
    ap.add_argument("--river-sample", type=int, default=50_000, help="readings timed per scorer")
    ap.add_argument("--river-channels", type=int, default=1000, help="channels in River's sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)), help="core to pin")
    ap.add_argument("--breakdown", action="store_true", help="time the kernel rule by rule")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    progress(f"pinned to CPU {args.cpu}; compiling the kernels")
    warm_up(bench_settings(args.window, 1))
    rows: list[Row] = []
    infos: dict[int, dict[str, Any]] = {}
    for n in (int(x) for x in args.channels.split(",")):
        r, infos[n] = bench(n, args)
        rows += r
    print(
        f"pinned to CPU {args.cpu} of {os.cpu_count()}; window {args.window}, batches of "
        f"{args.batch:,}, {args.batches} timed batches per scale, seed {args.seed}"
    )
    print()
    report(rows, infos)


if __name__ == "__main__":
    main()
