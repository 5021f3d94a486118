"""The detector: owns the per-channel state arrays, the event-time timers and the kernel bank.

``process(batch)`` runs a batch and returns what came out of it, in event-time order of the
timers: alert ``Events`` and ``IntervalClosed`` snapshots. Timers fire between readings::

    readings   r0   r1   r2 | r3   r4 ...        (r3 moves the watermark past a timer)
    timers                 ^ dropout tick / snapshot close, then r3 is processed

so results depend only on the order of readings, not on batch boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamproc import counters as C
from streamproc.alerts import Events
from streamproc.batch import Batch
from streamproc.config import ChannelSettings, Settings
from streamproc.kernels import bank, gateway
from streamproc.kernels.bank import NEVER
from streamproc.kernels.rules import N_RULES, R_NEIGHBOUR, ST_IDLE
from streamproc.registry import Registry

EVENT_CAPACITY = 65_536
PREFETCH_AHEAD = 4  # readings between a channel's state prefetch and its use (0: none)


@dataclass(frozen=True)
class ChannelRows:
    """Per-channel aggregates of one snapshot interval (channels that had readings)."""

    channel: np.ndarray  # int32
    count: np.ndarray  # int32
    min: np.ndarray  # float64
    max: np.ndarray  # float64
    mean: np.ndarray  # float64
    last: np.ndarray  # float64
    last_ts_ms: np.ndarray  # int64
    max_score: np.ndarray  # float32
    open_alerts: np.ndarray  # int16

    def __len__(self) -> int:
        return len(self.channel)


@dataclass(frozen=True)
class IntervalClosed:
    start_ms: int
    end_ms: int
    rows: ChannelRows


Output = Events | IntervalClosed


# name -> (dtype, trailing shape, fill); every array's first axis is the channel
# (the two-slot aggregates are stored [channel, 2] for locality)
def _state_spec(window: int) -> dict[str, tuple[type, tuple[int, ...], object]]:
    return {
        "ring": (np.float32, (window,), np.nan),
        "pos": (np.int32, (), 0),
        "cnt": (np.int32, (), 0),
        "s1": (np.float64, (), 0.0),
        "s2": (np.float64, (), 0.0),
        "last_ts": (np.int64, (), NEVER),
        "ival": (np.float64, (), 0.0),
        "fin_ts": (np.int64, (), NEVER),  # time of the newest value in the ring
        "fin_prev_ts": (np.int64, (), NEVER),  # ... and of the one before
        "flat_n": (np.int32, (), 0),
        "flat_t0": (np.int64, (), NEVER),
        "flat_learnt": (np.float64, (4,), (0.0, 0.0, np.nan, np.nan)),  # bank.FL_* slots
        "nb_n": (np.int32, (), 0),
        "nb_level": (np.float64, (), np.nan),
        "nb_base": (np.float64, (), 0.0),
        "nb_dev": (np.float64, (), 0.0),
        "nb_sm": (np.float64, (), 0.0),
        "nb_spread": (np.float64, (), 0.0),
        "cu_n": (np.int32, (), 0),
        "cu_base": (np.float64, (), 0.0),
        "cu_dev": (np.float64, (), 0.0),
        "cu_pos": (np.float64, (), 0.0),
        "cu_neg": (np.float64, (), 0.0),
        "lv_n": (np.int32, (), 0),
        "lv_mean": (np.float64, (), 0.0),
        "lv_var": (np.float64, (), 0.0),
        "se_row": (np.int32, (), -1),
        "st": (np.int8, (N_RULES,), 0),
        "a_row": (np.int32, (), -1),
        "agg_n": (np.int32, (2,), 0),
        "agg_sum": (np.float64, (2,), 0.0),
        "agg_min": (np.float64, (2,), np.nan),
        "agg_max": (np.float64, (2,), np.nan),
        "agg_last": (np.float64, (2,), np.nan),
        "agg_last_ts": (np.int64, (2,), NEVER),
        "agg_score": (np.float32, (2,), 0.0),
    }


# alert history, one row per channel with a rule not idle or an opening recent enough to
# count for flapping (``a_row``; rows are taken and given back by the kernels)
ALERT_SPEC: dict[str, tuple[type, tuple[int, ...], object]] = {
    "a_sev": (np.int8, (N_RULES,), 0),
    "a_flap": (np.int8, (N_RULES,), 0),
    "a_since": (np.int64, (N_RULES,), NEVER),
    "a_last_open": (np.int64, (N_RULES,), NEVER),
    "a_peak": (np.float64, (N_RULES,), np.nan),
    "a_score": (np.float32, (N_RULES,), 0.0),
}

# the seasonal profiles: one row per channel that enables the rule (``se_row``)
SEASON_SPEC: dict[str, tuple[type, tuple[int, ...], object]] = {
    "se_mean": (np.float32, (bank.SEASON_BINS,), 0.0),
    "se_dev": (np.float32, (bank.SEASON_BINS,), 0.0),
    "se_w": (np.float32, (bank.SEASON_BINS,), 0.0),
    "se_z": (np.float32, (), 0.0),
}

_AGG = ("agg_n", "agg_sum", "agg_min", "agg_max", "agg_last", "agg_last_ts", "agg_score")
# the first fields of a channel's record, in one cache line: what the dropout sweep reads of
# every channel on each tick, and what every reading reads first
_HEAD = ("last_ts", "ival", "s1", "s2", "a_row", "pos", "cnt", "st")


def build_params(settings: Settings, registry: Registry) -> np.ndarray:
    """One row of kernel parameters per profile (kind.metric) known to the registry."""
    prm = np.full((max(len(registry.profiles), 1), bank.N_PARAMS), np.nan)
    for p in range(len(registry.profiles)):
        kind, metric = registry.profile_kind_metric(p)
        th = settings.threshold_for(kind, metric)
        z = settings.rules["zscore"].for_channel(kind, metric)
        fl = settings.rules["flatline"].for_channel(kind, metric)
        do = settings.rules["dropout"].for_channel(kind, metric)
        nb = settings.rules["neighbour"].for_channel(kind, metric)
        rt = settings.rules["rate"].for_channel(kind, metric)
        hp = settings.rules["hampel"].for_channel(kind, metric)
        cu = settings.rules["cusum"].for_channel(kind, metric)
        se = settings.rules["seasonal"].for_channel(kind, metric)
        lv = settings.rules["level"].for_channel(kind, metric)
        row = prm[p]
        row[bank.P_TH_ABOVE] = th.above
        row[bank.P_TH_CRIT_ABOVE] = th.critical_above
        row[bank.P_TH_CLEAR_BELOW] = th.clear_below
        row[bank.P_TH_BELOW] = th.below
        row[bank.P_TH_CRIT_BELOW] = th.critical_below
        row[bank.P_TH_CLEAR_ABOVE] = th.clear_above
        row[bank.P_TH_MIN_MS] = th.min_duration_s * 1000
        row[bank.P_Z_ON] = z.enabled
        row[bank.P_Z_OPEN] = z.z_open
        row[bank.P_Z_CLOSE] = z.z_close
        row[bank.P_Z_CRIT] = z.z_critical
        row[bank.P_Z_MIN_STD] = z.min_std
        row[bank.P_Z_MIN_N] = z.min_readings
        row[bank.P_FL_ON] = fl.enabled
        row[bank.P_FL_MIN_N] = fl.min_readings
        row[bank.P_FL_MIN_MS] = fl.min_duration_s * 1000
        row[bank.P_FL_TOL] = fl.tolerance
        row[bank.P_FL_LOG_CHANCE] = np.log(fl.max_chance) if fl.max_chance > 0 else 0.0
        row[bank.P_DO_ON] = do.enabled
        row[bank.P_DO_FACTOR] = do.factor
        row[bank.P_DO_MIN_GAP_MS] = do.min_gap_s * 1000
        row[bank.P_HP_ON] = hp.enabled
        row[bank.P_HP_Z_OPEN] = hp.z_open
        row[bank.P_HP_Z_CRIT] = hp.z_critical
        row[bank.P_HP_BACK] = hp.back
        row[bank.P_HP_MIN_N] = hp.min_readings
        row[bank.P_HP_MIN_STD] = hp.min_std
        row[bank.P_HP_SIBLINGS] = hp.siblings
        row[bank.P_RT_RISE] = rt.max_rise_per_s
        row[bank.P_RT_FALL] = rt.max_fall_per_s
        row[bank.P_RT_CRIT] = rt.critical_factor
        row[bank.P_RT_MIN_DT_MS] = rt.min_dt_s * 1000
        row[bank.P_NB_ON] = nb.enabled
        row[bank.P_NB_MIN_NB] = nb.min_neighbours
        row[bank.P_NB_LOG] = nb.log
        row[bank.P_NB_MIN_LEVEL] = nb.min_level
        row[bank.P_NB_ALPHA] = nb.alpha
        row[bank.P_NB_SMOOTH] = nb.smooth
        row[bank.P_NB_SLOW] = nb.slow_alpha
        row[bank.P_NB_CLIP] = nb.clip
        row[bank.P_NB_Z_OPEN] = nb.z_open
        row[bank.P_NB_Z_CLOSE] = nb.z_close
        row[bank.P_NB_Z_CRIT] = nb.z_critical
        row[bank.P_NB_MIN_MS] = nb.min_duration_s * 1000
        row[bank.P_NB_MIN_N] = nb.min_intervals
        row[bank.P_CU_ON] = cu.enabled
        _cusum_block(row, bank.P_CU, cu.alpha, cu.k, cu.h, cu.h_close, cu.h_critical, cu.clip,
                     cu.min_readings, cu.min_std)  # fmt: skip
        row[bank.P_SE_ON] = se.enabled
        row[bank.P_SE_OFFSET_MS] = round(se.utc_offset_h * 3_600_000)
        row[bank.P_SE_ALPHA] = se.alpha
        row[bank.P_SE_SMOOTH] = se.smooth
        row[bank.P_SE_Z_OPEN] = se.z_open
        row[bank.P_SE_Z_CLOSE] = se.z_close
        row[bank.P_SE_Z_CRIT] = se.z_critical
        row[bank.P_SE_CLIP] = se.clip
        row[bank.P_SE_MIN_N] = se.min_hours
        row[bank.P_SE_MIN_STD] = se.min_std
        row[bank.P_LV_ON] = lv.enabled
        row[bank.P_LV_ALPHA] = lv.alpha
        row[bank.P_LV_Z_OPEN] = lv.z_open
        row[bank.P_LV_Z_CLOSE] = lv.z_close
        row[bank.P_LV_Z_CRIT] = lv.z_critical
        row[bank.P_LV_MIN_N] = lv.min_readings
        row[bank.P_LV_MIN_STD] = lv.min_std
    return prm


def _cusum_block(row: np.ndarray, o: int, *values: float) -> None:
    """Fill a CUSUM block (alpha, k, h, h_close, h_critical, clip, min_n, min_std) from ``o``."""
    row[o : o + len(values)] = values


AlertTables = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                    np.ndarray, np.ndarray, np.ndarray]  # fmt: skip


class Detector:
    def __init__(self, settings: Settings, registry: Registry, counters: C.Counters):
        self.registry = registry
        self.counters = counters
        self.window = settings.detect.window
        self.spec = _state_spec(self.window)
        self.scratch = np.empty(2 * self.window)  # the kernels allocate nothing
        self.prefetch_ahead = PREFETCH_AHEAD
        self.state: dict[str, np.ndarray] = {}
        self.capacity = 0
        self._grow(1024)
        self.alert_rows = _filled(ALERT_SPEC, 0)
        self.a_free = np.zeros(1, np.int32)  # free rows: a_free[0] of them, in a_free[1:]
        self._grow_alert_rows()
        self.season = _filled(SEASON_SPEC, 64)
        self.season_rows = 0  # rows of the seasonal tables in use
        self.n_synced = 0  # channels given their seasonal rows
        self.wm = NEVER  # watermark: largest accepted event time
        self.next_tick = NEVER  # next dropout sweep
        self.open_k: int | None = None  # oldest snapshot interval not yet written
        self.counts = np.zeros(2, np.int64)
        self.ev: dict[str, np.ndarray] = {
            "ch": np.empty(EVENT_CAPACITY, np.int32),
            "rule": np.empty(EVENT_CAPACITY, np.int8),
            "kind": np.empty(EVENT_CAPACITY, np.int8),
            "ts": np.empty(EVENT_CAPACITY, np.int64),
            "opened": np.empty(EVENT_CAPACITY, np.int64),
            "peak": np.empty(EVENT_CAPACITY, np.float64),
            "score": np.empty(EVENT_CAPACITY, np.float32),
            "sev": np.empty(EVENT_CAPACITY, np.int8),
        }
        self.reload(settings)

    def reload(self, settings: Settings) -> None:
        """Take new detector settings; window state and open alerts are kept."""
        if settings.detect.window != self.window:
            raise ValueError("detect.window cannot change while running")
        self.settings = settings
        self.tick_ms = round(settings.detect.tick_s * 1000)
        self.interval_ms = round(settings.snapshots.interval_s * 1000)
        self.grace_ms = round(settings.snapshots.grace_s * 1000)
        a = settings.alerts
        self.g = np.zeros(bank.N_GLOBALS)
        self.g[bank.G_HOLD_MS] = a.hold_s * 1000
        self.g[bank.G_FLAP_WINDOW_MS] = a.flap_window_s * 1000
        self.g[bank.G_FLAP_MAX] = a.flap_max
        self.g[bank.G_FLAP_HOLD_MS] = a.flap_hold_s * 1000
        self.g[bank.G_INTERVAL_MS] = self.interval_ms
        self.prm = build_params(settings, self.registry)
        self.n_profiles = len(self.registry.profiles)
        self.assign_seasonal()

    def _grow(self, need: int) -> None:
        cap = _doubled(self.capacity, need)
        if cap != self.capacity:
            self.state = _records(self.spec, cap, self.state)
            self.capacity = cap

    def _sync(self) -> None:
        """Make room for channels and profiles the registry learnt since the last batch."""
        if len(self.registry.profiles) != self.n_profiles:
            self.prm = build_params(self.settings, self.registry)
            self.n_profiles = len(self.registry.profiles)
        if self.registry.n > self.n_synced:  # new channels: grow, give seasonal rows
            self.assign_seasonal(self.n_synced)

    def assign_seasonal(self, start: int = 0) -> None:
        """Make room for every channel; give a seasonal row to every channel from ``start``
        whose profile enables the seasonal rule and that has none yet."""
        n = self.registry.n
        self._grow(n)
        se_row = self.state["se_row"]
        on = self.prm[self.registry.ch_profile[start:n], bank.P_SE_ON] > 0
        new = start + np.flatnonzero(on & (se_row[start:n] < 0))
        if len(new):
            need = self.season_rows + len(new)
            self.season = _filled(SEASON_SPEC, _doubled(len(self.season["se_z"]), need),
                                  self.season)  # fmt: skip
            se_row[new] = np.arange(self.season_rows, need)
            self.season_rows = need
        self.n_synced = n

    # -- processing ---------------------------------------------------------------------

    def process(self, batch: Batch) -> tuple[list[Output], np.ndarray]:
        """Run a batch; returns the outputs and one anomaly score per reading (NaN if dropped)."""
        self._sync()
        n = len(batch)
        scores = np.full(n, np.nan, np.float32)
        if n == 0:
            return [], scores
        wm_after = np.empty(n, np.int64)
        self.wm = bank.advance_watermark(batch.ts_ms, self.wm, wm_after)
        outputs: list[Output] = []
        if self.open_k is None and len(batch):
            t0 = int(batch.ts_ms[0])
            self.open_k = t0 // self.interval_ms
            self.next_tick = (t0 // self.tick_ms + 1) * self.tick_ms
        a, m = 0, len(batch)
        while a < m:
            due = min(self.next_tick, self._close_boundary())
            j = a + int(np.searchsorted(wm_after[a:], due, side="left"))
            self._run(batch, a, j, scores, outputs)
            if j == m:
                break
            self._fire_timers(int(wm_after[j]), outputs)
            a = j
        return outputs, scores

    def _close_boundary(self) -> int:
        assert self.open_k is not None
        return (self.open_k + 1) * self.interval_ms + self.grace_ms

    def _run(self, batch: Batch, a: int, b: int, scores: np.ndarray, outputs: list[Output]) -> None:
        s, se = self.state, self.season
        ev = self.ev
        late_before = self._late_before()
        before = self.counts.copy()
        n_in = b - a
        while a < b:
            a, ne = bank.process_readings(
                batch.idx, batch.ts_ms, batch.value, a, b, late_before, scores, self.scratch,
                self.prefetch_ahead,
                self.registry.ch_profile, self.registry.ch_sibling, self.prm, self.g,
                s["ring"], s["pos"], s["cnt"], s["s1"], s["s2"], s["last_ts"], s["ival"],
                s["fin_ts"], s["fin_prev_ts"], s["flat_n"], s["flat_t0"], s["flat_learnt"],
                s["cu_n"], s["cu_base"], s["cu_dev"], s["cu_pos"], s["cu_neg"],
                s["lv_n"], s["lv_mean"], s["lv_var"],
                s["se_row"], se["se_mean"], se["se_dev"], se["se_w"], se["se_z"],
                *self._alert_tables(),
                s["agg_n"], s["agg_sum"], s["agg_min"], s["agg_max"], s["agg_last"],
                s["agg_last_ts"], s["agg_score"],
                ev["ch"], ev["rule"], ev["kind"], ev["ts"], ev["opened"], ev["peak"],
                ev["score"], ev["sev"], self.counts,
            )  # fmt: skip
            self._drain(ne, outputs)
            self._grow_alert_rows()
        late, ooo = (self.counts - before).tolist()
        self.counters.drop(C.LATE, late, "snapshot interval already written")
        self.counters.drop(C.OUT_OF_ORDER, ooo, "not newer than the channel's last reading")
        self.counters.readings += n_in - late - ooo

    def _late_before(self) -> int:
        """Readings before this event time are late: their interval was written."""
        return (self.open_k or 0) * self.interval_ms

    def _alert_tables(self) -> AlertTables:
        """The alert state arrays in the kernels' argument order."""
        a = self.alert_rows
        return (self.state["st"], self.state["a_row"], self.a_free, a["a_sev"], a["a_flap"],
                a["a_since"], a["a_last_open"], a["a_peak"], a["a_score"])  # fmt: skip

    def _grow_alert_rows(self) -> None:
        """Double the alert tables when no free row is left (the kernels stop before a
        reading when they might need one)."""
        if self.a_free[0] > 0:
            return
        old = len(self.alert_rows["a_sev"])
        new = _doubled(old, old + 1)
        self.alert_rows = _filled(ALERT_SPEC, new, self.alert_rows)
        free = np.empty(new + 1, np.int32)
        free[0] = new - old
        free[1 : new - old + 1] = np.arange(new - 1, old - 1, -1)  # the lowest row first
        self.a_free = free

    def _drain(self, ne: int, outputs: list[Output]) -> None:
        if ne == 0:
            return
        ev = self.ev  # columns in the order of Events' fields
        outputs.append(Events(*(column[:ne].copy() for column in ev.values())))

    def _fire_timers(self, wm: int, outputs: list[Output]) -> None:
        """Everything due at watermark ``wm``: snapshot closes, then the latest dropout tick."""
        assert self.open_k is not None
        tick = None
        if self.next_tick <= wm:
            tick = self.next_tick + (wm - self.next_tick) // self.tick_ms * self.tick_ms
            self.next_tick = tick + self.tick_ms
        # intervals open_k..due are due; only the first two can hold readings: a reading of
        # interval open_k + 2 comes after the close of open_k is due (grace < interval)
        due = (wm - self.grace_ms) // self.interval_ms - 1
        for k in range(self.open_k, min(self.open_k + 1, due) + 1):
            if tick is not None and tick < (k + 1) * self.interval_ms + self.grace_ms:
                self._sweep(tick, outputs)
                tick = None
            closed = self._close(k, outputs)
            if len(closed.rows):
                outputs.append(closed)
        self.open_k = max(self.open_k, due + 1)
        if tick is not None:
            self._sweep(tick, outputs)

    def _sweep(self, now_ms: int, outputs: list[Output]) -> None:
        s = self.state
        ev = self.ev
        c = 0
        while c < self.registry.n:
            c, ne = bank.sweep_dropout(
                c, self.registry.n, now_ms, self._late_before(), self.registry.ch_profile,
                self.prm, self.g, s["last_ts"], s["ival"], *self._alert_tables(),
                ev["ch"], ev["rule"], ev["kind"], ev["ts"], ev["opened"], ev["peak"],
                ev["score"], ev["sev"],
            )  # fmt: skip
            self._drain(ne, outputs)
            self._grow_alert_rows()

    def _close(self, k: int, outputs: list[Output]) -> IntervalClosed:
        """Run the neighbour rule on interval k, then take its aggregates out of their slot
        and reset it."""
        self._neighbours(k, outputs)
        return self._aggregates(k, reset=True)

    def _neighbours(self, k: int, outputs: list[Output]) -> None:
        """The neighbour rule over the channels that reported in interval k. A group is the
        channels of one group, kind and metric. Its common level is the median of its members'
        values less their learnt offsets (so that a station that always reads higher does not
        move it); the members are its known channels whose neighbour alert is idle (a channel
        drifting away would bias the median against the others), else all known ones, else
        the plain values of all. A channel's deviation is its value less its offset and the
        common level. On a device with three or more channels in the rule, two or more of them
        idle, the residual is the deviation less the median deviation of the idle ones (what
        moves a whole station); else the residual is the deviation."""
        if not (self.prm[:, bank.P_NB_ON] > 0).any():
            return
        s, reg = self.state, self.registry
        sl = k & 1
        rows = np.flatnonzero(s["agg_n"][: reg.n, sl] > 0).astype(np.int32)
        if len(rows) == 0:
            return
        mean = s["agg_sum"][rows, sl] / s["agg_n"][rows, sl]
        prof = reg.ch_profile[rows]
        level = s["nb_level"][rows]
        level = np.maximum(
            np.where(np.isnan(level), mean, level), self.prm[prof, bank.P_NB_MIN_LEVEL]
        )
        with np.errstate(invalid="ignore", divide="ignore"):  # rows without the log scale
            logged = np.log(np.maximum(mean, 0.0) + level)
        value = np.where(self.prm[prof, bank.P_NB_LOG] > 0, logged, mean)
        key = reg.ch_group[rows].astype(np.int64) * len(reg.profiles) + prof
        _, gid, n_per_group = np.unique(key, return_inverse=True, return_counts=True)
        known = s["nb_n"][rows] > 0
        idle = s["st"][rows, R_NEIGHBOUR] == ST_IDLE
        corrected = value - s["nb_base"][rows]  # the plain value while a channel is unknown
        # members of the common level: known and idle, else known, else all
        rank = known.astype(np.int8) + (known & idle)
        best = np.zeros(len(n_per_group), np.int8)
        np.maximum.at(best, gid, rank)
        members = rank == best[gid]
        common = _group_medians(gid[members], corrected[members], len(n_per_group))
        dev = corrected - common[gid]
        on = self.prm[prof, bank.P_NB_ON] > 0
        _, did, n_per_device = np.unique(reg.ch_device[rows[on]], return_inverse=True,
                                         return_counts=True)  # fmt: skip
        idle_on = idle[on]
        centre = _group_medians(did[idle_on], dev[on][idle_on], len(n_per_device))[did]
        n_idle = np.bincount(did[idle_on], minlength=len(n_per_device))[did]
        resid = dev.copy()
        resid[on] -= np.where((n_per_device[did] >= 3) & (n_idle >= 2), centre, 0.0)
        t = (k + 1) * self.interval_ms
        n_group = n_per_group[gid]
        ev = self.ev
        i = 0
        while i < len(rows):
            i, ne = bank.neighbour_step(
                rows, mean, dev, resid, n_group, t, reg.ch_profile, self.prm, self.g,
                s["nb_n"], s["nb_level"], s["nb_base"], s["nb_dev"], s["nb_sm"], s["nb_spread"],
                *self._alert_tables(),
                ev["ch"], ev["rule"], ev["kind"], ev["ts"], ev["opened"], ev["peak"],
                ev["score"], ev["sev"], i,
            )  # fmt: skip
            self._drain(ne, outputs)
            self._grow_alert_rows()

    def _aggregates(self, k: int, reset: bool = False) -> IntervalClosed:
        """Interval k's aggregates of the channels that had readings in it; with ``reset``,
        their slot is refilled for interval k + 2."""
        s = self.state
        n = self.registry.n
        f8 = np.float64  # ChannelRows' columns, in order:
        cols = [np.empty(n, t) for t in (np.int32, np.int32, f8, f8, f8, f8, np.int64,
                                         np.float32, np.int16)]  # fmt: skip
        fills = tuple(self.spec[name][2] for name in _AGG)
        m = bank.take_slot(n, k & 1, reset, fills, *[s[name] for name in (*_AGG, "st")], *cols)
        rows = ChannelRows(*(c[:m] for c in cols))
        return IntervalClosed(k * self.interval_ms, (k + 1) * self.interval_ms, rows)

    def finish(self) -> list[Output]:
        """End of input: write the intervals still open (the last one may be partial)."""
        if self.open_k is None:
            return []
        out: list[Output] = []
        last_k = self.wm // self.interval_ms
        for k in range(self.open_k, last_k + 1):
            closed = self._close(k, out)
            if len(closed.rows):
                out.append(closed)
        self.open_k = last_k + 1
        return out

    def peek(self) -> list[IntervalClosed]:
        """The intervals still open, as they stand, without closing them (for a shutdown
        that will resume: the complete interval is written again when it closes)."""
        if self.open_k is None:
            return []
        ks = range(self.open_k, self.wm // self.interval_ms + 1)
        return [c for c in map(self._aggregates, ks) if len(c.rows)]


def _doubled(cap: int, need: int) -> int:
    """``cap`` doubled (from at least 64) until it holds ``need``."""
    cap = max(cap, 64)
    while cap < need:
        cap *= 2
    return cap


def _filled(
    spec: dict[str, tuple[type, tuple[int, ...], object]],
    rows: int,
    old: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays of ``spec`` with ``rows`` rows, filled, holding ``old``'s rows at the start."""
    out: dict[str, np.ndarray] = {}
    for name, (dtype, shape, fill) in spec.items():
        out[name] = np.full((rows, *shape), fill, dtype)
        if old:
            out[name][: len(old[name])] = old[name]
    return out


def _records(
    spec: dict[str, tuple[type, tuple[int, ...], object]],
    rows: int,
    old: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """``_filled``, but a channel's scalars and small arrays lie together in one record of a
    structured array (the dict holds views of its fields): a reading touches a few cache lines
    of its channel instead of one line in each of some thirty arrays. The ring stays apart.
    Records start on a cache line, the ``_HEAD`` fields first; then the others, widest first
    (no padding between them)."""
    apart = {k: v for k, v in spec.items() if k == "ring"}
    packed = {k: v for k, v in spec.items() if k not in apart}
    fields = [(k, d, shape) for k, (d, shape, _) in packed.items()]
    fields.sort(key=lambda f: (f[0] not in _HEAD, -np.dtype(f[1]).alignment))
    dtype = np.dtype(fields, align=True)
    raw = np.empty(rows * dtype.itemsize + 64, np.uint8)
    at = -raw.ctypes.data % 64
    rec = raw[at : at + rows * dtype.itemsize].view(dtype)
    out = _filled(apart, rows, old)
    for name, (_, _, fill) in packed.items():
        out[name] = rec[name]
        out[name][...] = fill
        if old:
            out[name][: len(old[name])] = old[name]
    return {k: out[k] for k in spec}


def row_bytes(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Bytes of one row (the first axis) of each array, and of the padding of the records that
    hold some of them (``_records``) as ``"record padding"``."""
    out = {name: a.itemsize * int(np.prod(a.shape[1:])) for name, a in arrays.items()}
    records: dict[int, list[int]] = {}  # memory -> [record size, bytes of its fields]
    for name, a in arrays.items():
        if a.base is not None and a.strides[0] != out[name]:
            records.setdefault(id(a.base), [a.strides[0], 0])[1] += out[name]
    pad = sum(size - used for size, used in records.values())
    return out | ({"record padding": pad} if pad else {})


def _group_medians(gid: np.ndarray, value: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``value`` per group id (NaN for a group without values)."""
    out = np.full(n_groups, np.nan)
    if len(gid) == 0:
        return out
    order = np.lexsort((value, gid))
    gs, vs = gid[order], value[order]
    starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
    lengths = np.diff(np.r_[starts, len(gs)])
    out[gs[starts]] = (vs[starts + (lengths - 1) // 2] + vs[starts + lengths // 2]) / 2
    return out


def warm_up(settings: Settings) -> None:
    """Compile every kernel (or load it from the numba cache) before real traffic; the
    decoder's gateway scan too."""
    gateway.warm_up()
    registry = Registry(ChannelSettings(kinds=("warm",), max_channels=4))
    counters = C.Counters()
    det = Detector(settings, registry, counters)
    c = registry.channel("d", "m", "warm", "g")
    t = np.arange(8, dtype=np.int64) * 250_000 + 1_700_000_000_000
    det.process(Batch(np.full(8, c, np.int32), t, np.arange(8, dtype=np.float64)))
    det.finish()
