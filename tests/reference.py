"""Slow, obviously correct reference of the detector: plain Python, one reading at a time,
each rule written out from its definition. ``test_kernels`` checks the numba bank against it.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamproc.config import Settings
from streamproc.kernels.rules import (
    EV_OPEN,
    EV_RESOLVE,
    EV_UPDATE,
    R_CUSUM,
    R_DROPOUT,
    R_FLATLINE,
    R_HAMPEL,
    R_LEVEL,
    R_NEIGHBOUR,
    R_RATE,
    R_SEASONAL,
    R_THRESHOLD,
    R_ZSCORE,
    RULES,
    SEV_CRITICAL,
    SEV_WARNING,
)


def f32(x: float) -> float:
    return float(np.float32(x))


def level_step(base: float, dev: float, n: int, e: float, sd: float, p: Any) -> tuple[float, float]:
    """The EWMA level and mean absolute deviation after a deviation ``e`` (clipped at
    ``p.clip`` spreads), as the CUSUM and neighbour rules learn them."""
    if sd > 0:
        e = min(max(e, -p.clip * sd), p.clip * sd)
    a = max(p.alpha, 1.0 / (n + 1))
    return base + a * e, dev + a * (abs(e) - dev)


def change_spread(w: list[float], min_std: float) -> tuple[float, float]:
    """Median of the changes in ``w`` and their robust spread, as the hampel rule takes them."""
    changes = [b - a for a, b in itertools.pairwise(w)]
    nd = len(changes)
    med = sorted(changes)[nd // 2]
    dev = [abs(d - med) for d in changes]
    return med, max(1.4826 * sorted(dev)[nd // 2], 1.2533 * sum(dev) / nd, min_std)


def ratio_score(q: float) -> float:
    return q * q / (1 + q * q)


@dataclass
class Alert:
    state: str = "idle"  # idle | pending | open
    since: int | None = None
    opened: int | None = None
    last_open: int | None = None
    flap: int = 0
    peak: float = math.nan
    score: float = 0.0
    sev: int = 0


@dataclass
class Chan:
    window: deque[float]
    times: deque[int]  # the window's timestamps
    last_ts: int | None = None
    ival: float = 0.0
    flat_n: int = 0
    flat_t0: int | None = None
    flat_p: float = 0.0  # share of repeated values off the floor
    flat_pf: float = 0.0  # ... at the floor
    flat_floor: float = math.nan  # a leaky minimum
    flat_floor_value: float = math.nan  # its value, once a reading sat on it and left it
    alerts: dict[int, Alert] = field(
        default_factory=lambda: {r: Alert() for r in range(len(RULES))}
    )
    nb_n: int = 0
    nb_level: float = math.nan
    nb_base: float = 0.0
    nb_dev: float = 0.0
    nb_sm: float = 0.0
    nb_spread: float = 0.0
    cu_n: int = 0
    cu_base: float = 0.0
    cu_dev: float = 0.0
    cu_pos: float = 0.0
    cu_neg: float = 0.0
    lv_n: int = 0  # level: readings learnt, EWMA mean and variance
    lv_mean: float = 0.0
    lv_var: float = 0.0
    # seasonal: bin -> [mean, dev, weight] (stored as float32), smoothed z (float32)
    season: dict[int, list[float]] = field(default_factory=dict)
    se_z: float = 0.0
    agg: dict[int, list[float]] = field(default_factory=dict)  # interval -> values
    agg_last_ts: dict[int, int] = field(default_factory=dict)
    agg_score: dict[int, float] = field(default_factory=dict)


class Reference:
    """Same contract as detect.Detector, on lists: ``run(readings)`` with (channel, ts, value)."""

    def __init__(
        self,
        settings: Settings,
        kind_metric: dict[int, tuple[str, str]],
        device: dict[int, str] | None = None,
    ):
        self.s = settings
        self.km = kind_metric
        self.device = device or {}  # channel -> device id; by default one device per channel
        self.W = settings.detect.window
        self.ch: dict[int, Chan] = {}
        self.wm: int | None = None
        self.events: list[tuple] = []
        self.closed: list[tuple[int, dict[int, tuple]]] = []
        self.scores: list[float] = []
        self.interval = round(settings.snapshots.interval_s * 1000)
        self.grace = round(settings.snapshots.grace_s * 1000)
        self.tick = round(settings.detect.tick_s * 1000)
        self.open_k: int | None = None
        self.next_tick: int | None = None
        a = settings.alerts
        self.hold, self.flap_win = a.hold_s * 1000, a.flap_window_s * 1000
        self.flap_max, self.flap_hold = a.flap_max, a.flap_hold_s * 1000

    def chan(self, c: int) -> Chan:
        if c not in self.ch:
            self.ch[c] = Chan(deque(maxlen=self.W), deque(maxlen=self.W))
        return self.ch[c]

    def sibling_jump(self, c: int, t1: int, sign: float, min_n: int) -> float:
        """The largest z (in the direction ``sign``) of another channel of c's device changing
        into its latest reading or the one before, if that reading is at ``t1``."""
        best = -math.inf
        dev = self.device.get(c, str(c))
        for s, other in self.ch.items():
            if s == c or self.device.get(s, str(s)) != dev or len(other.window) < min_n:
                continue
            w, times = list(other.window), list(other.times)
            for back in (1, 2):
                if len(w) > back and times[-back] == t1:
                    kind, metric = self.km[s]
                    min_std = self.s.rules["hampel"].for_channel(kind, metric).min_std
                    med, sd = change_spread(w, min_std)
                    if sd > 0:
                        best = max(best, sign * (w[-back] - w[-back - 1] - med) / sd)
                    break
        return best

    # -- alert lifecycle ------------------------------------------------------------------
    def step(self, c, r, t, trig, hold, sev, score, value, min_ms):
        a = self.ch[c].alerts[r]
        if a.state == "idle":
            if not trig:
                return
            a.state, a.since = "pending", t
        if a.state == "pending":
            if not trig:
                a.state = "idle"
                return
            if t - a.since < min_ms:
                return
            flapping = a.last_open is not None and t - a.last_open <= self.flap_win
            a.flap = min(a.flap + 1, 100) if flapping else 1
            a.last_open = t
            a.state, a.opened, a.since = "open", t, None
            # the kernel keeps the score as float32: ties against a later score follow that
            a.peak, a.score, a.sev = value, f32(score), sev
            self.events.append((c, r, EV_OPEN, t, t, value, score, sev))
            return
        if hold:
            a.since = None
            if score > a.score:
                a.score, a.peak = f32(score), value
            if sev > a.sev:
                a.sev = sev
                self.events.append((c, r, EV_UPDATE, t, a.opened, a.peak, a.score, sev))
            return
        if a.since is None:
            a.since = t
        hold_ms = self.flap_hold if a.flap >= self.flap_max else self.hold
        if t - a.since >= hold_ms:
            a.state, a.since = "idle", None
            self.events.append((c, r, EV_RESOLVE, t, a.opened, a.peak, a.score, a.sev))

    # -- timers -----------------------------------------------------------------------------
    def fire(self, wm: int) -> None:
        tick = None
        if self.next_tick <= wm:
            tick = self.next_tick + (wm - self.next_tick) // self.tick * self.tick
            self.next_tick = tick + self.tick
        while (self.open_k + 1) * self.interval + self.grace <= wm:
            if tick is not None and tick < (self.open_k + 1) * self.interval + self.grace:
                self.sweep(tick)
                tick = None
            self.close(self.open_k)
            self.open_k += 1
        if tick is not None:
            self.sweep(tick)
        self.open_k = max(self.open_k, (wm - self.grace) // self.interval)

    def sweep(self, now: int) -> None:
        for c in sorted(self.ch):
            ch = self.ch[c]
            kind, metric = self.km[c]
            p = self.s.rules["dropout"].for_channel(kind, metric)
            a = ch.alerts[R_DROPOUT]
            if not p.enabled or a.state != "idle" or ch.last_ts is None or ch.ival <= 0:
                continue
            gap = now - ch.last_ts
            if gap > p.factor * ch.ival and gap >= p.min_gap_s * 1000:
                a.state, a.opened, a.sev, a.score, a.peak = (
                    "open",
                    now,
                    SEV_WARNING,
                    0.75,
                    gap / 1e3,
                )
                self.events.append((c, R_DROPOUT, EV_OPEN, now, now, gap / 1e3, 0.75, SEV_WARNING))

    def neighbours(self, k: int) -> None:
        """Each channel's mean in interval k against its group's median (all channels are in
        one group here, so a group is a (kind, metric); the median of the known channels with
        an idle neighbour alert, else of the known ones), less the median deviation of its
        device's channels whose neighbour alert is idle, when the device has three or more
        channels in the rule and two or more of them are idle."""

        def median(xs: list[float]) -> float:
            xs = sorted(xs)
            return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2

        means = {c: sum(ch.agg[k]) / len(ch.agg[k]) for c, ch in self.ch.items() if ch.agg.get(k)}
        params = {c: self.s.rules["neighbour"].for_channel(*self.km[c]) for c in means}
        value = {}
        for c, mean in means.items():
            p, ch = params[c], self.ch[c]
            level = max(mean if math.isnan(ch.nb_level) else ch.nb_level, p.min_level)
            value[c] = math.log(max(mean, 0.0) + level) if p.log else mean
        members: dict[tuple[str, str], list[int]] = {}
        for c in means:
            members.setdefault(self.km[c], []).append(c)
        common = {}
        for g, cs in members.items():
            known = [c for c in cs if self.ch[c].nb_n > 0]
            idle = [c for c in known if self.ch[c].alerts[R_NEIGHBOUR].state == "idle"]
            if known:
                common[g] = median([value[c] - self.ch[c].nb_base for c in idle or known])
            else:
                common[g] = median([value[c] for c in cs])
        dev = {c: value[c] - self.ch[c].nb_base - common[self.km[c]] for c in means}
        by_device: dict[str, list[int]] = {}
        for c in means:
            if params[c].enabled:
                by_device.setdefault(self.device.get(c, str(c)), []).append(c)
        resid = dict(dev)
        for cs in by_device.values():
            idle = [c for c in cs if self.ch[c].alerts[R_NEIGHBOUR].state == "idle"]
            if len(cs) >= 3 and len(idle) >= 2:
                centre = median([dev[c] for c in idle])
                for c in cs:
                    resid[c] = dev[c] - centre
        t = (k + 1) * self.interval
        for c in sorted(means):
            p = params[c]
            if not p.enabled or len(members[self.km[c]]) < p.min_neighbours:
                continue
            ch = self.ch[c]
            e = resid[c]
            lim = p.clip * 1.2533 * ch.nb_dev
            if lim > 0:
                e = min(max(e, -lim), lim)
            ch.nb_sm += p.smooth * (e - ch.nb_sm)
            sd = 1.2533 * ch.nb_spread
            if ch.nb_n >= p.min_intervals and sd > 0:
                z = abs(ch.nb_sm) / sd
                sev = SEV_CRITICAL if z >= p.z_critical else SEV_WARNING
                score = ratio_score(z / p.z_open)
                self.step(c, R_NEIGHBOUR, t, z >= p.z_open, z >= p.z_close, sev, score, means[c],
                          p.min_duration_s * 1000)  # fmt: skip
            first = 1.0 / (ch.nb_n + 1)
            slow = max(p.slow_alpha, first)
            ch.nb_base += max(p.alpha, first) * dev[c]
            ch.nb_dev += slow * (abs(resid[c]) - ch.nb_dev)
            ch.nb_spread += slow * (abs(ch.nb_sm) - ch.nb_spread)
            if math.isnan(ch.nb_level):
                ch.nb_level = means[c]
            else:
                ch.nb_level += slow * (means[c] - ch.nb_level)
            ch.nb_n += 1

    def close(self, k: int) -> None:
        self.neighbours(k)
        rows = {}
        for c in sorted(self.ch):
            ch = self.ch[c]
            vals = ch.agg.pop(k, None)
            if vals:
                n_open = sum(a.state == "open" for a in ch.alerts.values())
                rows[c] = (len(vals), min(vals), max(vals), sum(vals) / len(vals), vals[-1],
                           ch.agg_last_ts.pop(k), ch.agg_score.pop(k), n_open)  # fmt: skip
        self.closed.append((k, rows))

    # -- readings ---------------------------------------------------------------------------
    def run(self, readings: list[tuple[int, int, float]]) -> None:
        for c, t, x in readings:
            self.wm = t if self.wm is None else max(self.wm, t)
            if self.open_k is None:
                self.open_k = t // self.interval
                self.next_tick = (t // self.tick + 1) * self.tick
            if (
                self.next_tick <= self.wm
                or (self.open_k + 1) * self.interval + self.grace <= self.wm
            ):
                self.fire(self.wm)
            self.scores.append(self.reading(c, t, x))

    def reading(self, c: int, t: int, x: float) -> float:
        ch = self.chan(c)
        if t < self.open_k * self.interval:
            return math.nan
        if ch.last_ts is not None and t <= ch.last_ts:
            return math.nan
        kind, metric = self.km[c]
        prev_ts = ch.last_ts
        if ch.last_ts is not None:
            dt = float(t - ch.last_ts)
            a = ch.alerts[R_DROPOUT]
            if a.state == "open":
                a.state = "idle"
                self.events.append(
                    (c, R_DROPOUT, EV_RESOLVE, t, a.opened, dt / 1e3, a.score, a.sev)
                )
            ch.ival = dt if ch.ival <= 0 else ch.ival + 0.1 * (min(dt, 3 * ch.ival) - ch.ival)
        ch.last_ts = t
        if math.isnan(x):
            return math.nan
        xv = f32(x)
        score = 0.0

        th = self.s.threshold_for(kind, metric)
        if not (math.isnan(th.above) and math.isnan(th.below)):
            hi = not math.isnan(th.above) and x >= th.above
            lo = not math.isnan(th.below) and x <= th.below
            clear_below = th.above if math.isnan(th.clear_below) else th.clear_below
            clear_above = th.below if math.isnan(th.clear_above) else th.clear_above
            hold = (
                (hi or lo)
                or (not math.isnan(th.above) and x >= clear_below)
                or (not math.isnan(th.below) and x <= clear_above)
            )
            crit = (x >= th.critical_above) or (x <= th.critical_below)  # NaN compares False
            sc = 0.0
            if hi:
                sc = ratio_score(x / th.above) if th.above > 0 else 1.0
            elif lo:
                sc = ratio_score(th.below / x) if x > 0 else 1.0
            score = max(score, sc)
            sev = SEV_CRITICAL if crit else SEV_WARNING
            self.step(c, R_THRESHOLD, t, hi or lo, hold, sev, sc, x, th.min_duration_s * 1000)

        z = self.s.rules["zscore"].for_channel(kind, metric)
        w = list(ch.window)
        if z.enabled and len(w) >= z.min_readings:
            changes = [b - a for a, b in itertools.pairwise(w)]
            n = len(changes)
            mean = sum(changes) / n
            var = sum(v * v for v in changes) / n - mean * mean
            sd = max(math.sqrt(var) if var > 0 else 0.0, z.min_std)
            zz = (xv - w[-1] - mean) / sd if sd > 0 else 0.0
            sc = ratio_score(abs(zz) / z.z_open)
            score = max(score, sc)
            sev = SEV_CRITICAL if abs(zz) >= z.z_critical else SEV_WARNING
            self.step(c, R_ZSCORE, t, abs(zz) >= z.z_open, abs(zz) >= z.z_close, sev, sc, x, 0)

        fl = self.s.rules["flatline"].for_channel(kind, metric)
        if fl.enabled:
            same = bool(w) and abs(xv - w[-1]) <= fl.tolerance
            if same:
                ch.flat_n += 1
            else:
                ch.flat_n, ch.flat_t0 = 1, t
            if math.isnan(ch.flat_floor) or xv <= ch.flat_floor:
                ch.flat_floor = xv
            else:
                if w and abs(w[-1] - ch.flat_floor) <= fl.tolerance:
                    ch.flat_floor_value = ch.flat_floor
                ch.flat_floor += 0.001 * (xv - ch.flat_floor)
            at_floor = abs(xv - ch.flat_floor_value) <= fl.tolerance
            p = ch.flat_pf if at_floor else ch.flat_p
            if w and ch.flat_n < fl.min_readings:
                p += 0.01 * ((1.0 if same else 0.0) - p)
                if at_floor:
                    ch.flat_pf = p
                else:
                    ch.flat_p = p
            trig = ch.flat_n >= fl.min_readings and t - ch.flat_t0 >= fl.min_duration_s * 1000
            if trig and fl.max_chance > 0 and p > 0:
                trig = ch.flat_n * math.log(p) <= math.log(fl.max_chance)
            sc = 0.75 if trig else 0.0
            score = max(score, sc)
            self.step(c, R_FLATLINE, t, trig, trig, SEV_WARNING, sc, x, 0)

        hp = self.s.rules["hampel"].for_channel(kind, metric)
        if hp.enabled and len(w) >= hp.min_readings:
            jump = w[-1] - w[-2]
            z = 0.0
            if jump != 0 and (xv - w[-1]) * jump < 0 and abs(xv - w[-2]) <= hp.back * abs(jump):
                med, sd = change_spread(list(w), hp.min_std)
                z = abs(jump - med) / sd if sd > 0 else 0.0
                if hp.siblings > 0 and z >= hp.z_open:
                    sign = 1.0 if jump > 0 else -1.0
                    zs = self.sibling_jump(c, ch.times[-1], sign, hp.min_readings)
                    if zs >= hp.siblings * z:
                        z = 0.0
            sc = ratio_score(z / hp.z_open)
            score = max(score, sc)
            sev = SEV_CRITICAL if z >= hp.z_critical else SEV_WARNING
            self.step(c, R_HAMPEL, t, z >= hp.z_open, z >= hp.z_open, sev, sc, w[-1], 0)

        rt = self.s.rules["rate"].for_channel(kind, metric)
        if w and not (math.isnan(rt.max_rise_per_s) and math.isnan(rt.max_fall_per_s)):
            assert prev_ts is not None
            rate = (xv - w[-1]) / (max(float(t - prev_ts), rt.min_dt_s * 1000) / 1000.0)
            q = 0.0
            if rate > 0 and not math.isnan(rt.max_rise_per_s):
                q = rate / rt.max_rise_per_s
            elif rate < 0 and not math.isnan(rt.max_fall_per_s):
                q = -rate / rt.max_fall_per_s
            sc = ratio_score(q)
            score = max(score, sc)
            sev = SEV_CRITICAL if q >= rt.critical_factor else SEV_WARNING
            self.step(c, R_RATE, t, q >= 1.0, q >= 1.0, sev, sc, x, 0)

        cu = self.s.rules["cusum"].for_channel(kind, metric)
        if cu.enabled:
            if ch.cu_n == 0:
                ch.cu_base, ch.cu_dev = xv, 0.0
            else:
                e = xv - ch.cu_base
                sd = max(1.2533 * ch.cu_dev, cu.min_std)
                if ch.cu_n >= cu.min_readings and sd > 0:
                    u = min(max(e / sd, -cu.clip), cu.clip)
                    ch.cu_pos = max(0.0, ch.cu_pos + u - cu.k)
                    ch.cu_neg = max(0.0, ch.cu_neg - u - cu.k)
                    stat = max(ch.cu_pos, ch.cu_neg)
                    sc = ratio_score(stat / cu.h)
                    score = max(score, sc)
                    sev = SEV_CRITICAL if stat >= cu.h_critical else SEV_WARNING
                    self.step(c, R_CUSUM, t, stat >= cu.h, stat >= cu.h_close, sev, sc, x, 0)
                ch.cu_base, ch.cu_dev = level_step(ch.cu_base, ch.cu_dev, ch.cu_n, e, sd, cu)
            ch.cu_n += 1

        se = self.s.rules["seasonal"].for_channel(kind, metric)
        if se.enabled:
            local = t + round(se.utc_offset_h * 3_600_000)
            weekend = (local // 86_400_000 + 3) % 7 >= 5  # 1970-01-01 was a Thursday
            b = local % 86_400_000 // 3_600_000 + (24 if weekend else 0)
            mean, dev, w = ch.season.get(b, (0.0, 0.0, 0.0))
            sd = max(1.2533 * dev, se.min_std)
            e = xv - mean
            if w >= se.min_hours and sd > 0:
                zc = min(max(e / sd, -se.clip), se.clip)
                ch.se_z = f32(ch.se_z + se.smooth * (zc - ch.se_z))
                az = abs(ch.se_z)
                sc = ratio_score(az / se.z_open)
                score = max(score, sc)
                sev = SEV_CRITICAL if az >= se.z_critical else SEV_WARNING
                self.step(c, R_SEASONAL, t, az >= se.z_open, az >= se.z_close, sev, sc, x, 0)
            f = min(ch.ival / 3_600_000, 1.0)  # the reading's share of the hour
            if f > 0:
                if w > 0 and sd > 0:
                    e = min(max(e, -se.clip * sd), se.clip * sd)
                a = max(se.alpha * f, f / (w + f))
                ch.season[b] = [f32(mean + a * e), f32(dev + a * (abs(e) - dev)), f32(w + f)]

        lv = self.s.rules["level"].for_channel(kind, metric)
        if lv.enabled:
            if ch.lv_n == 0:
                ch.lv_mean, ch.lv_var = xv, 0.0
            else:
                e = xv - ch.lv_mean
                sd = max(math.sqrt(ch.lv_var), lv.min_std)
                if ch.lv_n >= lv.min_readings and sd > 0:
                    az = abs(e) / sd
                    sc = ratio_score(az / lv.z_open)
                    score = max(score, sc)
                    sev = SEV_CRITICAL if az >= lv.z_critical else SEV_WARNING
                    self.step(c, R_LEVEL, t, az >= lv.z_open, az >= lv.z_close, sev, sc, x, 0)
                a = max(lv.alpha, 1.0 / (ch.lv_n + 1))
                ch.lv_mean += a * e
                ch.lv_var += a * (e * e - ch.lv_var)
            ch.lv_n += 1

        ch.window.append(xv)
        ch.times.append(t)
        k = t // self.interval
        ch.agg.setdefault(k, []).append(x)
        ch.agg_last_ts[k] = t
        ch.agg_score[k] = max(ch.agg_score.get(k, 0.0), score)
        return score

    def finish(self) -> None:
        if self.open_k is None:
            return
        for k in range(self.open_k, self.wm // self.interval + 1):
            self.close(k)
        self.closed = [(k, rows) for k, rows in self.closed if rows]
