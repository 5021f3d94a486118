"""Simulated city: MQTT messages from air, traffic and pipe sensors, with labelled anomalies.

Values are built on (slot, device) grids with numpy: daily and weekly patterns, per-device
baselines and AR(1) noise with a district-shared part. Sensor faults, pipe bursts and
district-wide pollution episodes are injected (seeded) and written as labels. Payload JSON is
assembled with pyarrow compute kernels, so there is no Python loop per reading.
Same config -> identical feed and labels.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamproc.times import format_ms

START_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z, a Monday
DAY_S = 86_400.0
HOUR_S = 3_600.0
WARMUP_S = 6 * HOUR_S  # no anomaly starts before this (detector warm-up)
DEVICES_PER_DISTRICT = 50
JITTER_S = 1.5  # reporting jitter, uniform +-
LATENCY_MS = (20, 500)  # broker arrival latency, uniform inclusive
FEED_SCHEMA = pa.schema(
    [("ts", pa.timestamp("ms", tz="UTC")), ("topic", pa.string()), ("payload", pa.binary())]
)
LABEL_COLUMNS = ("device", "metric", "kind", "anomaly", "start", "end")
ANOMALIES = ("spike", "dip", "level_shift", "drift", "stuck", "dropout", "pipe_burst", "episode")


@dataclass(frozen=True)
class KindSpec:
    kind: str
    prefix: str
    metrics: tuple[str, ...]
    decimals: tuple[int, ...]
    share: float  # of all channels


KINDS = (
    KindSpec("air", "air", ("pm25", "pm10", "no2", "o3"), (1, 1, 1, 1), 0.40),
    KindSpec("traffic", "trf", ("flow", "occupancy", "speed"), (1, 2, 1), 0.35),
    KindSpec("pipe", "pipe", ("pressure", "flow"), (3, 2), 0.25),
)
# metrics whose level is many noise stds above zero, so a dip stays visible
DIP_METRICS = {("traffic", "speed"), ("pipe", "pressure")}


def _default_intervals() -> dict[str, float]:
    return {"air": 300.0, "traffic": 300.0, "pipe": 120.0}


@dataclass
class SimConfig:
    """What to simulate; ``anomaly_rate`` is the fraction of channels per fault type per day."""

    channels: int = 10_000
    duration_s: float = 86_400
    seed: int = 0
    start_ms: int = START_MS
    interval_s: dict[str, float] = field(default_factory=_default_intervals)
    anomaly_rate: float = 0.005

    def validate(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if not 0 <= self.anomaly_rate <= 0.1:
            raise ValueError(f"anomaly_rate must be between 0 and 0.1, got {self.anomaly_rate}")
        for spec in KINDS:
            iv = self.interval_s.get(spec.kind)
            if iv is None:
                raise ValueError(f"interval_s has no entry for kind {spec.kind!r}")
            if not iv >= 5:
                raise ValueError(f"interval_s[{spec.kind!r}] must be >= 5 s, got {iv}")


@dataclass
class _Label:
    device: str
    metric: str
    kind: str
    anomaly: str
    start_ms: int
    end_ms: int


@dataclass
class _KindSim:
    """One kind's devices and their readings on a (slot, device) grid."""

    spec: KindSpec
    interval_s: float
    devices: list[str]
    district: np.ndarray  # (D,) district index
    first_gdev: int  # global index of device 0
    t_ms: np.ndarray  # (S, D) int64 event times
    keep: np.ndarray  # (S, D) bool: a message is sent
    values: np.ndarray  # (M, S, D) float64
    sigma: np.ndarray  # (M, D) noise std per channel
    base: dict[str, np.ndarray]  # model parameters; "sigma_t{m}": (S, D) noise std
    n_valid: int  # slots valid for every device

    @property
    def n_dev(self) -> int:
        return len(self.devices)

    def sigma_at(self, m: int, j: int, d: int) -> float:
        """Noise std of channel (m, d) at slot j."""
        varying = self.base.get(f"sigma_t{m}")
        return float(self.sigma[m, d] if varying is None else varying[j, d])


# --------------------------------------------------------------------------- patterns


def _bump(h: np.ndarray, mu: float, width: float) -> np.ndarray:
    """Gaussian bump around hour ``mu`` on the 24 h circle."""
    d = (h - mu + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _plateau(h: np.ndarray, a: float, b: float) -> np.ndarray:
    """About 1 between hours a and b, smooth edges."""
    return 1.0 / (1.0 + np.exp(-(h - a) / 0.7)) / (1.0 + np.exp((h - b) / 0.9))


def _traffic_demand(h: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """Road demand, about 0.15 at night to 1 at the weekday rush hours."""
    rush = 0.9 * _bump(h, 8.0, 1.1) + 0.85 * _bump(h, 17.75, 1.4)
    wd = 0.22 + rush + 0.4 * _plateau(h, 6.5, 20.5)
    we = 0.22 + 0.55 * _bump(h, 13.5, 3.5) + 0.15 * _bump(h, 20.0, 2.0)
    return np.where(weekend, we, wd) / 1.45


def _water_demand(h: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """Water demand, about 0.2 at night to 1 at the morning peak."""
    wd = 0.28 + 0.9 * _bump(h, 7.25, 1.2) + 0.6 * _bump(h, 19.5, 1.8) + 0.3 * _plateau(h, 6, 22)
    we = 0.28 + 0.7 * _bump(h, 9.5, 1.6) + 0.55 * _bump(h, 19.5, 2.0) + 0.3 * _plateau(h, 7, 22)
    return np.where(weekend, we, wd) / 1.45


def _ar_noise(rng: np.random.Generator, n_slots: int, n_cols: int, phi: float) -> np.ndarray:
    """Unit-variance AR(1) series down axis 0 (a loop over slots, vectorised over columns)."""
    x = rng.standard_normal((n_slots, n_cols))
    x[1:] *= math.sqrt(1.0 - phi * phi)
    for j in range(1, n_slots):
        x[j] += phi * x[j - 1]
    return x


_WEEK_H = (np.arange(7 * 1440) % 1440) / 60.0  # hour of day, per minute of the week
_WEEKEND = np.arange(7 * 1440) >= 5 * 1440


def _levels(
    spec: KindSpec, mow: np.ndarray, rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Noise-free levels per metric (S, D), noise std (M, D) and per-device parameters.

    Daily and weekly profiles are tabulated per minute of the week and looked up by ``mow``.
    """
    n = mow.shape[1]

    def u(lo: float, hi: float) -> np.ndarray:
        return np.asarray(rng.uniform(lo, hi, n))

    def bump(mu: float, width: float) -> np.ndarray:
        return _bump(_WEEK_H, mu, width)[mow]

    if spec.kind == "air":
        tr = _traffic_demand(_WEEK_H, _WEEKEND)[mow]
        expo = u(0.5, 1.3)
        traffic_no2 = 40.0 * expo * tr
        no2 = u(15, 30) + traffic_no2
        o3 = u(32, 45) + u(30, 55) * bump(15.0, 3.2) - 0.25 * traffic_no2
        pm25 = u(10, 18) + 5.0 * expo * bump(8.0, 1.5) + 7.0 * bump(20.5, 2.5)
        pm10 = u(1.5, 1.9) * pm25 + u(2, 6)
        sigma = np.stack([u(1.2, 2.0), u(2.5, 3.5), u(2.5, 4.0), u(3.0, 4.0)])
        return [pm25, pm10, no2, o3], sigma, {}
    if spec.kind == "traffic":
        d = _traffic_demand(_WEEK_H, _WEEKEND)[mow]
        cap = u(500, 1500)
        flow = cap * d
        occ = 3.0 + u(20, 35) * d**1.5
        speed = u(45, 85) * (1.0 - 0.5 * d**2)
        # counting noise grows with the flow (like Poisson counts)
        flow_sigma = np.sqrt(4.0 * flow + 25.0)
        sigma = np.stack([flow_sigma.mean(axis=0), u(0.4, 0.8), u(1.5, 2.5)])
        return [flow, occ, speed], sigma, {"sigma_t0": flow_sigma}
    w = _water_demand(_WEEK_H, _WEEKEND)[mow]
    q = u(5, 60)
    flow = q * w
    pressure = u(3.8, 5.0) - u(0.6, 1.2) * w
    sigma = np.stack([u(0.02, 0.04), 0.025 * q + 0.08])
    return [pressure, flow], sigma, {"q": q}


def _build_kind(
    cfg: SimConfig,
    spec: KindSpec,
    devices: list[str],
    district: np.ndarray,
    n_districts: int,
    first_gdev: int,
    rng: np.random.Generator,
) -> _KindSim:
    iv = float(cfg.interval_s[spec.kind])
    n_dev = len(devices)
    n_slots = math.ceil(cfg.duration_s / iv) + 1
    phase = rng.uniform(JITTER_S + 0.5, iv - JITTER_S - 0.5, n_dev)
    jitter = rng.uniform(-JITTER_S, JITTER_S, (n_slots, n_dev))
    t_s = np.arange(n_slots)[:, None] * iv + phase[None, :] + jitter
    valid = t_s < cfg.duration_s
    t_ms = cfg.start_ms + np.rint(t_s * 1000.0).astype(np.int64)
    n_valid = int(valid.sum(axis=0).min())

    day_ms = 86_400_000
    # minute of the week (Monday 00:00 = 0); 1970-01-01 was a Thursday
    mow = ((t_ms // day_ms + 3) % 7 * 1440 + t_ms % day_ms // 60_000).astype(np.int32)
    levels, sigma, base = _levels(spec, mow, rng)

    n_m = len(spec.metrics)
    own = _ar_noise(rng, n_slots, n_m * n_dev, 0.6).reshape(n_slots, n_m, n_dev)
    shared = _ar_noise(rng, n_slots, n_m * n_districts, 0.9).reshape(n_slots, n_m, n_districts)
    z = 0.8 * own + 0.6 * shared[:, :, district]  # unit variance, neighbours correlated
    if spec.kind == "air":  # pm10 moves with pm25
        z[:, 1] = 0.6 * z[:, 0] + 0.8 * z[:, 1]
    values = np.empty((n_m, n_slots, n_dev))
    for m in range(n_m):
        scale = base.get(f"sigma_t{m}", sigma[m][None, :])
        values[m] = levels[m] + scale * z[:, m]
    return _KindSim(
        spec, iv, devices, district, first_gdev, t_ms, valid, values, sigma, base, n_valid
    )


# --------------------------------------------------------------------------- anomalies


class _Injector:
    """Places and applies anomalies; each channel (and device-level fault) used at most once."""

    def __init__(self, cfg: SimConfig, sims: list[_KindSim], rng: np.random.Generator):
        self.cfg = cfg
        self.sims = sims
        self.rng = rng
        self.labels: list[_Label] = []
        self.used = [np.zeros(s.n_dev, bool) for s in sims]  # device taken whole
        self.n_channels = sum(len(s.spec.metrics) * s.n_dev for s in sims)
        rest = cfg.duration_s - WARMUP_S
        self.tail_s = min(HOUR_S, max(0.0, rest / 4))  # quiet time after the last anomaly

    def count(self, per_day: float) -> int:
        n = round(per_day * self.cfg.duration_s / DAY_S)
        return max(n, 1) if self.n_channels >= 200 else n

    def window(self, sim: _KindSim, dur_s: float) -> tuple[int, int] | None:
        """(first slot, number of slots) after the warm-up, ending before the tail."""
        lo = math.ceil((WARMUP_S + JITTER_S) / sim.interval_s)
        hi = sim.n_valid - 1 - math.ceil(self.tail_s / sim.interval_s)
        if hi < lo:
            return None
        n = min(max(1, round(dur_s / sim.interval_s)), hi - lo + 1)
        return int(self.rng.integers(lo, hi - n + 2)), n

    def label(self, sim: _KindSim, d: int, m: int, anomaly: str, j0: int, j1: int) -> None:
        self.labels.append(
            _Label(
                sim.devices[d],
                sim.spec.metrics[m],
                sim.spec.kind,
                anomaly,
                int(sim.t_ms[j0, d]),
                int(sim.t_ms[j1, d]),
            )
        )

    def episodes(self, n_districts: int) -> None:
        """District-wide PM episodes: rise 2-3 h, hold 4-10 h, decay about 3 h."""
        air, rng, cfg = self.sims[0], self.rng, self.cfg
        if n_districts < 4 or cfg.duration_s < 12 * HOUR_S or air.n_dev == 0:
            return
        candidates = np.unique(air.district)
        n_ep = min(max(1, int(cfg.duration_s // DAY_S)), len(candidates))
        chosen = rng.choice(candidates, n_ep, replace=False)
        seg = (cfg.duration_s - WARMUP_S - self.tail_s) / n_ep
        max_lag = 1200.0
        for i, dist in enumerate(chosen):
            rise, hold, decay = (
                rng.uniform(2, 3) * HOUR_S,
                rng.uniform(4, 10) * HOUR_S,
                rng.uniform(2.5, 3.5) * HOUR_S,
            )
            lag_max = max_lag
            total = rise + hold + decay + lag_max
            if total > 0.95 * seg:
                f = 0.95 * seg / total
                rise, hold, decay, lag_max = rise * f, hold * f, decay * f, lag_max * f
                total = 0.95 * seg
            onset = WARMUP_S + i * seg + rng.uniform(0, seg - total)
            amp = rng.uniform(60, 150)
            cols = np.flatnonzero(air.district == dist)
            k = len(cols)
            lag = rng.uniform(0, lag_max, k)
            a25 = amp * rng.uniform(0.85, 1.15, k)
            a10 = 1.6 * a25 * rng.uniform(0.9, 1.1, k)
            wiggle_phase = rng.uniform(0, 2 * np.pi, k)
            tau = (air.t_ms[:, cols] - cfg.start_ms) / 1000.0 - onset - lag
            shape = np.zeros_like(tau)
            r = (tau >= 0) & (tau < rise)
            shape[r] = 0.5 - 0.5 * np.cos(np.pi * tau[r] / rise)
            hh = (tau >= rise) & (tau < rise + hold)
            u = (tau - rise) / hold
            wig = 1.0 + 0.08 * np.sin(np.pi * u) * np.sin(2 * np.pi * tau / 9000.0 + wiggle_phase)
            shape[hh] = wig[hh]
            dd = (tau >= rise + hold) & (tau < rise + hold + decay)
            shape[dd] = 0.5 + 0.5 * np.cos(np.pi * (tau[dd] - rise - hold) / decay)
            air.values[0][:, cols] += a25 * shape
            air.values[1][:, cols] += a10 * shape
            on = (shape > 0) & air.keep[:, cols]
            j0 = on.argmax(axis=0)
            j1 = on.shape[0] - 1 - on[::-1].argmax(axis=0)
            for c, d in enumerate(cols):
                if on[:, c].any():
                    self.label(air, int(d), 0, "episode", int(j0[c]), int(j1[c]))
                    self.label(air, int(d), 1, "episode", int(j0[c]), int(j1[c]))
            self.used[0][cols] = True

    def free_devices(self, k: int) -> np.ndarray:
        return np.flatnonzero(~self.used[k])

    def pipe_bursts(self) -> None:
        """Pressure drops 1-2 bar in one sample and recovers exponentially; flow jumps."""
        k = next(i for i, s in enumerate(self.sims) if s.spec.kind == "pipe")
        pipe, rng = self.sims[k], self.rng
        free = self.free_devices(k)
        n = min(self.count(self.cfg.anomaly_rate * pipe.n_dev * 2), len(free))
        for d in rng.choice(free, n, replace=False):
            drop, tau = rng.uniform(1, 2), rng.uniform(20, 60) * 60.0
            sig = pipe.sigma[0, d]
            w = self.window(pipe, tau * math.log(drop / (0.5 * sig)))
            if w is None:
                continue
            j0, n_slots = w
            j1 = j0 + n_slots - 1
            dt = (pipe.t_ms[j0 : j1 + 1, d] - pipe.t_ms[j0, d]) / 1000.0
            e = np.exp(-dt / tau)
            pipe.values[0, j0 : j1 + 1, d] -= drop * e
            pipe.values[1, j0 : j1 + 1, d] += rng.uniform(0.4, 0.8) * pipe.base["q"][d] * e
            self.used[k][d] = True
            self.label(pipe, int(d), 0, "pipe_burst", j0, j1)
            self.label(pipe, int(d), 1, "pipe_burst", j0, j1)

    def dropouts(self) -> None:
        """Whole devices silent for 1-6 h."""
        rng = self.rng
        pool = [(k, d) for k in range(len(self.sims)) for d in self.free_devices(k).tolist()]
        n_dev = sum(s.n_dev for s in self.sims)
        n = min(self.count(self.cfg.anomaly_rate * n_dev), len(pool))
        for i in sorted(rng.choice(len(pool), n, replace=False).tolist()):
            k, d = pool[i]
            sim = self.sims[k]
            w = self.window(sim, rng.uniform(1, 6) * HOUR_S)
            if w is None:
                continue
            j0, n_slots = w
            sim.keep[j0 : j0 + n_slots, d] = False
            self.used[k][d] = True
            for m in range(len(sim.spec.metrics)):
                self.label(sim, d, m, "dropout", j0, j0 + n_slots - 1)

    def channel_faults(self) -> None:
        """spike, dip, level_shift, drift, stuck on distinct channels of untouched devices."""
        ks, ms, ds, dip_ok = [], [], [], []
        for k, sim in enumerate(self.sims):
            free = self.free_devices(k)
            for m, metric in enumerate(sim.spec.metrics):
                ks.append(np.full(len(free), k))
                ms.append(np.full(len(free), m))
                ds.append(free)
                dip_ok.append(np.full(len(free), (sim.spec.kind, metric) in DIP_METRICS))
        order = self.rng.permutation(sum(len(d) for d in ds))
        kk, mm, dd = (np.concatenate(a)[order] for a in (ks, ms, ds))
        eligible = np.concatenate(dip_ok)[order]
        n_each = self.count(self.cfg.anomaly_rate * self.n_channels)
        dips = np.flatnonzero(eligible)[:n_each]
        rest = np.setdiff1d(np.arange(len(kk)), dips)  # keeps the shuffled order
        plan = [("dip", dips)] + [
            (a, rest[i * n_each : (i + 1) * n_each])
            for i, a in enumerate(("spike", "level_shift", "drift", "stuck"))
        ]
        for anomaly, idx in plan:
            for i in idx.tolist():
                self._fault(anomaly, self.sims[kk[i]], int(mm[i]), int(dd[i]))

    def _fault(self, anomaly: str, sim: _KindSim, m: int, d: int) -> None:
        rng = self.rng
        dur = {
            "spike": 0.0,
            "dip": 0.0,
            "level_shift": rng.uniform(2, 8) * HOUR_S,
            "drift": rng.uniform(6, 12) * HOUR_S,
            "stuck": rng.uniform(2, 6) * HOUR_S,
        }[anomaly]
        w = self.window(sim, dur)
        if w is None:
            return
        j0, n = w
        v = sim.values[m, :, d]  # view
        sig = sim.sigma_at(m, j0, d)
        seg = slice(j0, j0 + n)
        if anomaly == "spike":
            v[j0] += rng.uniform(8, 20) * sig
        elif anomaly == "dip":
            v[j0] = max(0.0, v[j0] - rng.uniform(8, 20) * sig)
        elif anomaly in ("level_shift", "drift"):
            size = rng.uniform(6, 12) if anomaly == "level_shift" else rng.uniform(8, 15)
            step = size * sig
            sign = 1.0 if rng.random() < 0.5 else -1.0
            if v[seg].min() - step < sig:  # not enough room below: go up
                sign = 1.0
            if anomaly == "level_shift":
                v[seg] += sign * step
            else:
                v[seg] += sign * step * np.arange(1, n + 1) / n
        else:  # stuck
            v[seg] = v[j0 - 1]
        self.label(sim, d, m, anomaly, j0, j0 + n - 1)


# --------------------------------------------------------------------------- messages

CHUNK_ROWS = 4_000_000  # rows per output chunk (keeps binary offsets well below 2 GiB)


def _fixed(values: np.ndarray, decimals: int) -> list[pa.Array | pa.Scalar]:
    """String pieces of non-negative numbers with a fixed number (>= 1) of decimals."""
    scale = 10**decimals
    whole, frac = np.divmod(np.rint(values * scale).astype(np.int64), scale)
    # "1" + zero-padded fraction; the leading "1" then becomes the decimal point
    frac_s = pc.utf8_replace_slice(
        pc.cast(pa.array(frac + scale), pa.string()), start=0, stop=1, replacement="."
    )
    return [pc.cast(pa.array(whole), pa.string()), frac_s]


def _payloads(spec: KindSpec, ts_ms: np.ndarray, values: list[np.ndarray]) -> pa.Array:
    """JSON payloads ``{"ts":...,"metric":value,...}`` as a binary array."""
    pieces: list[pa.Array | pa.Scalar] = [
        pa.scalar('{"ts":'),
        pc.cast(pa.array(ts_ms), pa.string()),
    ]
    for name, dec, v in zip(spec.metrics, spec.decimals, values, strict=True):
        pieces.append(pa.scalar(f',"{name}":'))
        pieces.extend(_fixed(v, dec))
    pieces.append(pa.scalar("}"))
    return pc.binary_join_element_wise(*pieces, "").cast(pa.binary())


def _feed(sims: list[_KindSim], district_names: list[str], rng: np.random.Generator) -> pa.Table:
    """All messages sorted by arrival time (stable, so per device event order is kept)."""
    arrival, gdev, payloads = [], [], []
    for sim in sims:
        np.maximum(sim.values, 0.0, out=sim.values)
        pos = np.flatnonzero(sim.keep.ravel())
        ev = sim.t_ms.ravel()[pos]
        arr = ev + rng.integers(LATENCY_MS[0], LATENCY_MS[1] + 1, len(pos))
        srt = np.argsort(arr, kind="stable")  # per kind first: the take below reads in order
        pos, ev = pos[srt], ev[srt]
        arrival.append(arr[srt])
        gdev.append((pos % sim.n_dev + sim.first_gdev).astype(np.int32))
        vals = [sim.values[m].ravel()[pos] for m in range(len(sim.spec.metrics))]
        payloads.append(_payloads(sim.spec, ev, vals))
    all_arrival = np.concatenate(arrival)
    order = np.argsort(all_arrival, kind="stable")
    all_gdev = np.concatenate(gdev)[order]
    if sum(p.nbytes for p in payloads) > 2**31 - 2**24:
        payloads = [p.cast(pa.large_binary()) for p in payloads]
    merged = pa.concat_arrays(payloads)
    del payloads
    topics = pa.array(
        [
            f"city/{district_names[sim.district[d]]}/{sim.spec.kind}/{name}"
            for sim in sims
            for d, name in enumerate(sim.devices)
        ],
        pa.string(),
    )
    topic_chunks, payload_chunks = [], []
    for lo in range(0, len(order), CHUNK_ROWS):
        sl = slice(lo, lo + CHUNK_ROWS)
        topic_chunks.append(topics.take(pa.array(all_gdev[sl])))
        payload_chunks.append(merged.take(pa.array(order[sl])).cast(pa.binary()))
    return pa.table(
        {
            "ts": pa.array(all_arrival[order], FEED_SCHEMA.field("ts").type),
            "topic": pa.chunked_array(topic_chunks, pa.string()),
            "payload": pa.chunked_array(payload_chunks, pa.binary()),
        },
        schema=FEED_SCHEMA,
    )


# --------------------------------------------------------------------------- public API


def _layout(
    cfg: SimConfig, rng: np.random.Generator
) -> tuple[list[list[str]], list[np.ndarray], list[str]]:
    """Device ids per kind, district index per device and district names."""
    counts = [max(1, round(s.share * cfg.channels / len(s.metrics))) for s in KINDS]
    total = sum(counts)
    n_districts = min(total, max(4, round(total / DEVICES_PER_DISTRICT)))
    dw = max(2, len(str(n_districts)))
    names = [f"d{i + 1:0{dw}d}" for i in range(n_districts)]
    devices, districts = [], []
    for spec, n in zip(KINDS, counts, strict=True):
        w = max(4, len(str(n)))
        devices.append([f"{spec.prefix}-{i + 1:0{w}d}" for i in range(n)])
        districts.append(rng.permutation(n) % n_districts)  # balanced, shuffled
    return devices, districts, names


def simulate(cfg: SimConfig) -> tuple[pa.Table, pa.Table]:
    """(feed, labels): the feed sorted by arrival time, labels sorted by start."""
    cfg.validate()
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(6)]
    devices, districts, dnames = _layout(cfg, rngs[0])
    sims, first = [], 0
    for i, spec in enumerate(KINDS):
        sims.append(
            _build_kind(cfg, spec, devices[i], districts[i], len(dnames), first, rngs[1 + i])
        )
        first += len(devices[i])

    inj = _Injector(cfg, sims, rngs[4])
    inj.episodes(len(dnames))
    inj.pipe_bursts()
    inj.dropouts()
    inj.channel_faults()

    feed = _feed(sims, dnames, rngs[5])
    return feed, _label_table(inj.labels)


def _label_table(labels: list[_Label]) -> pa.Table:
    labels = sorted(labels, key=lambda x: (x.start_ms, x.device, x.metric, x.anomaly))
    return pa.table(
        {
            "device": [x.device for x in labels],
            "metric": [x.metric for x in labels],
            "kind": [x.kind for x in labels],
            "anomaly": [x.anomaly for x in labels],
            "start": [format_ms(x.start_ms) for x in labels],
            "end": [format_ms(x.end_ms) for x in labels],
        },
        schema=pa.schema([(c, pa.string()) for c in LABEL_COLUMNS]),
    )


def write(cfg: SimConfig, out_dir: Path) -> tuple[Path, Path]:
    """Simulate and write ``out_dir/feed.parquet`` (zstd) and ``out_dir/labels.csv``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    feed, labels = simulate(cfg)
    feed_path, labels_path = out_dir / "feed.parquet", out_dir / "labels.csv"
    pq.write_table(feed, feed_path, compression="zstd", row_group_size=1_000_000)
    with open(labels_path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LABEL_COLUMNS)
        w.writerows(zip(*(labels.column(c).to_pylist() for c in LABEL_COLUMNS), strict=True))
    return feed_path, labels_path


def iter_messages(feed: pa.Table) -> Iterator[tuple[int, str, bytes]]:
    """(arrival ms, topic, payload) per message, in feed order."""
    for batch in feed.select(["ts", "topic", "payload"]).to_batches(max_chunksize=65_536):
        ts = batch.column(0).cast(pa.int64()).to_numpy(zero_copy_only=False).tolist()
        yield from zip(ts, batch.column(1).to_pylist(), batch.column(2).to_pylist(), strict=True)


_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([dhms]?)\s*", re.IGNORECASE)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": HOUR_S, "d": DAY_S}


def parse_duration(text: str) -> float:
    """``"1d"``, ``"6h"``, ``"30m"``, ``"90s"``, ``"3600"`` -> seconds (> 0)."""
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: use a number with an optional unit d, h, m or s "
            "(e.g. 1d, 6h, 30m, 90s, 3600)"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be > 0")
    return seconds
