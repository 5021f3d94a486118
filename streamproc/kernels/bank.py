"""The detector bank: one pass over a batch updates every detector of every reading's channel
and runs the alert state machine, so Python only ever sees alert *events*.

Per reading (channel c, time t, value x), in this order:
1. drop it if its snapshot interval was already written (``late``) or it is not newer than
   the channel's last reading (``out_of_order``);
2. a dropout alert of c resolves;
3. rules see x against the window *before* x enters it:
   - threshold: x beyond an absolute limit, with hysteresis and a minimum duration;
   - zscore: the change x - previous against the mean and std of the changes in the last
     ``window`` values (spikes, dips, sudden steps; slow daily trends barely move it);
   - flatline: x equal (within tolerance) to the previous value for N readings and T ms
     (and for longer than the channel's own rate of repeats makes likely: its rate at its
     floor for a run at the floor, such as a detection limit, its rate elsewhere otherwise);
   - rate: the change from the previous reading per second beyond a limit;
   - hampel: the previous reading jumped, robustly far from the window's changes (median and
     MAD), and x takes the jump back (an isolated spike, reported one reading late), and no
     other channel of its device jumped the same way at the same time (``siblings``);
   - cusum: x against the channel's learnt level (EWMA), summed on each side (level shifts,
     drift);
   - seasonal: x against the learnt profile of its hour (weekday or weekend), smoothed;
   - level: x against the channel's long-run mean and standard deviation (EWMAs);
4. x enters the ring buffer and the running sums; the interval aggregates take it.

State is arrays indexed by channel (alert state by [channel, rule]; an open alert's opening
time is its ``a_last_open``), all but the ring fields of one record per channel
(``detect._records``), so the kernels take them as strided arrays; the seasonal profiles are
rows of their own tables, only for channels whose profile enables the rule (``se_row``, -1
for none).
Parameters are rows of ``prm`` indexed by the channel's profile (kind.metric), columns ``P_*``.
Every loop is O(1) per reading except the exact re-sum of the ring every ``window`` writes.
A reading's state spans its record's five cache lines, the ring's and the alert row's; with
many channels these are cache misses, so the kernel prefetches the state of the channels a
few readings ahead.
"""

from __future__ import annotations

import numpy as np

from streamproc.kernels import kernel, kernel_inline
from streamproc.kernels.prefetch import prefetch, prefetch2, prefetch_record
from streamproc.kernels.rules import (
    EV_OPEN,
    EV_RESOLVE,
    EV_UPDATE,
    N_RULES,
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
    SEV_CRITICAL,
    SEV_WARNING,
    ST_IDLE,
    ST_OPEN,
    ST_PENDING,
)

NEVER = np.iinfo(np.int64).min

# parameter columns (one row per profile)
(
    P_TH_ABOVE,
    P_TH_CRIT_ABOVE,
    P_TH_CLEAR_BELOW,
    P_TH_BELOW,
    P_TH_CRIT_BELOW,
    P_TH_CLEAR_ABOVE,
    P_TH_MIN_MS,
    P_Z_ON,
    P_Z_OPEN,
    P_Z_CLOSE,
    P_Z_CRIT,
    P_Z_MIN_STD,
    P_Z_MIN_N,
    P_FL_ON,
    P_FL_MIN_N,
    P_FL_MIN_MS,
    P_FL_TOL,
    P_DO_ON,
    P_DO_FACTOR,
    P_DO_MIN_GAP_MS,
    P_FL_LOG_CHANCE,
    P_RT_RISE,
    P_RT_FALL,
    P_RT_CRIT,
    P_RT_MIN_DT_MS,
    P_HP_ON,
    P_HP_Z_OPEN,
    P_HP_Z_CRIT,
    P_HP_BACK,
    P_HP_MIN_N,
    P_HP_MIN_STD,
    P_HP_SIBLINGS,
    P_NB_ON,
    P_NB_MIN_NB,
    P_NB_LOG,
    P_NB_MIN_LEVEL,
    P_NB_ALPHA,
    P_NB_SMOOTH,
    P_NB_SLOW,
    P_NB_CLIP,
    P_NB_Z_OPEN,
    P_NB_Z_CLOSE,
    P_NB_Z_CRIT,
    P_NB_MIN_MS,
    P_NB_MIN_N,
    P_CU_ON,
) = range(46)
P_CU = P_CU_ON + 1  # first of the cusum rule's CUSUM block
(
    P_SE_ON,
    P_SE_ALPHA,
    P_SE_SMOOTH,
    P_SE_Z_OPEN,
    P_SE_Z_CLOSE,
    P_SE_Z_CRIT,
    P_SE_CLIP,
    P_SE_MIN_N,
    P_SE_MIN_STD,
    P_SE_OFFSET_MS,
    P_LV_ON,
    P_LV_ALPHA,
    P_LV_Z_OPEN,
    P_LV_Z_CLOSE,
    P_LV_Z_CRIT,
    P_LV_MIN_N,
    P_LV_MIN_STD,
) = range(P_CU + 8, P_CU + 25)
N_PARAMS = P_CU + 25

# a CUSUM block: offsets from its first column
CS_ALPHA, CS_K, CS_H, CS_CLOSE, CS_CRIT, CS_CLIP, CS_MIN_N, CS_MIN_STD = range(8)

# scalar settings (one vector for all channels)
G_HOLD_MS, G_FLAP_WINDOW_MS, G_FLAP_MAX, G_FLAP_HOLD_MS, G_INTERVAL_MS = range(5)
N_GLOBALS = 5

# counters written by the reading kernel
C_LATE, C_OUT_OF_ORDER = range(2)

FLATLINE_SCORE = 0.75
FLAT_P_ALPHA = 0.01  # EWMA weight of one reading in a channel's share of repeated values
FLAT_FLOOR_RISE = 0.001  # a reading above the floor lifts it by this share of the difference
# slots of ``flat_learnt`` (32 B per channel): the share of repeated values off the floor and at
# the floor; the floor (a leaky minimum); its value, once a reading has sat on it and left it (a
# reading below it is off the floor: a sensor failing below all it has read)
FL_OFF_FLOOR, FL_AT_FLOOR, FL_FLOOR, FL_FLOOR_VALUE = range(4)
DROPOUT_SCORE = 0.75
SELECT_STEPS = 8  # distinct values _kth_from visits from its guess before it selects instead
ORDER_BITS = np.int64(0x7FFFFFFFFFFFFFFF)
SWEEP_AHEAD = 16  # channels between the dropout sweep's prefetch of a record and its use
SEASON_BINS = 48  # hour of day x (weekday, weekend)
SEASON_BIN_MS = 3_600_000
DAY_MS = 86_400_000


@kernel
def _emit(ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev, ne,
          c, r, kind, t, opened, peak, score, sev):  # fmt: skip
    ev_ch[ne] = c
    ev_rule[ne] = r
    ev_kind[ne] = kind
    ev_ts[ne] = t
    ev_opened[ne] = opened
    ev_peak[ne] = peak
    ev_score[ne] = score
    ev_sev[ne] = sev
    return ne + 1


@kernel
def take_row(c, a_row, a_free, a_flap, a_since, a_last_open):
    """Give channel c a row of the alert tables from the free stack (``a_free[0]`` rows,
    ``a_free[1..]``), with no alert history."""
    n = a_free[0]
    b = a_free[n]
    a_free[0] = n - 1
    a_row[c] = b
    for r in range(N_RULES):
        a_flap[b, r] = 0
        a_since[b, r] = NEVER
        a_last_open[b, r] = NEVER
    return b


@kernel_inline
def release_row(c, earliest_t, g, st, a_row, a_free, a_last_open):
    """Put channel c's alert row back on the free stack if it holds nothing that a reading
    at ``earliest_t`` or later could use: every rule idle, and every last opening too long
    ago to count as flapping. Compiled into the sweep, which calls it for every channel
    and nearly always finds no row."""
    b = a_row[c]
    if b < 0:
        return
    for r in range(N_RULES):
        if st[c, r] != ST_IDLE:
            return
        last = a_last_open[b, r]
        if last != NEVER and earliest_t - last <= g[G_FLAP_WINDOW_MS]:
            return
    a_free[0] += 1
    a_free[a_free[0]] = b
    a_row[c] = -1


@kernel_inline
def step_alert(c, r, t, trig, hold, sev, score, value, min_ms, g,
               st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
               ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
               ne):  # fmt: skip
    """Advance the alert of (c, r) by one reading; returns the new event count.

    ``trig``: the open condition holds; ``hold``: the alert must stay open (trig implies hold).
    The alert's fields live in the channel's row of the alert tables, taken when one of its
    rules first leaves idle (the caller makes sure a free row is left).

    Compiled into its caller: nearly every reading leaves an idle alert idle, and that test
    costs a load where a call passing some thirty arrays costs about 40 ns.
    """
    s = st[c, r]
    if s == ST_IDLE and not trig:
        return ne
    return _advance_alert(c, r, s, t, trig, hold, sev, score, value, min_ms, g,
                          st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
                          ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                          ne)  # fmt: skip


@kernel
def _advance_alert(c, r, s, t, trig, hold, sev, score, value, min_ms, g,
                   st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
                   ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                   ne):  # fmt: skip
    """``step_alert`` for an alert that is not idle or is triggered (its state ``s``)."""
    b = a_row[c]
    if b < 0:
        b = take_row(c, a_row, a_free, a_flap, a_since, a_last_open)
    if s == ST_IDLE:
        st[c, r] = ST_PENDING
        a_since[b, r] = t
        s = ST_PENDING
    if s == ST_PENDING:
        if not trig:
            st[c, r] = ST_IDLE
            return ne
        if t - a_since[b, r] < min_ms:
            return ne
        last = a_last_open[b, r]
        if last != NEVER and t - last <= g[G_FLAP_WINDOW_MS]:
            a_flap[b, r] = min(a_flap[b, r] + 1, 100)
        else:
            a_flap[b, r] = 1
        a_last_open[b, r] = t
        st[c, r] = ST_OPEN
        a_since[b, r] = NEVER
        a_peak[b, r] = value
        a_score[b, r] = score
        a_sev[b, r] = sev
        return _emit(ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev, ne,
                     c, r, EV_OPEN, t, t, value, score, sev)  # fmt: skip
    # open
    if hold:
        a_since[b, r] = NEVER
        if score > a_score[b, r]:
            a_score[b, r] = score
            a_peak[b, r] = value
        if sev > a_sev[b, r]:
            a_sev[b, r] = sev
            return _emit(ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                         ne, c, r, EV_UPDATE, t, a_last_open[b, r], a_peak[b, r], a_score[b, r],
                         sev)  # fmt: skip
        return ne
    if a_since[b, r] == NEVER:
        a_since[b, r] = t
    hold_ms = g[G_FLAP_HOLD_MS] if a_flap[b, r] >= g[G_FLAP_MAX] else g[G_HOLD_MS]
    if t - a_since[b, r] < hold_ms:
        return ne
    st[c, r] = ST_IDLE
    a_since[b, r] = NEVER
    return _emit(ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev, ne,
                 c, r, EV_RESOLVE, t, a_last_open[b, r], a_peak[b, r], a_score[b, r],
                 a_sev[b, r])  # fmt: skip


@kernel
def _ratio_score(q):
    """Map q >= 0 (1 = at the limit) to [0, 1): 0.5 at the limit, rising towards 1."""
    return q * q / (1.0 + q * q)


@kernel
def _kth(buf, n, k):
    """The k-th smallest of buf[:n] (0-based), by selection; reorders buf[:n].

    Quickselect with a median-of-three pivot and a branch-free partition (each value is
    swapped to the front and the front advances only past values below the pivot), about 3x
    faster than a branching one on noisy windows; values equal to the pivot are then
    gathered next to it, so that many ties (integer readings) stay linear."""
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        a, b, c = buf[lo], buf[mid], buf[hi]
        if (a <= b) == (b <= c):
            m = mid
        elif (b <= a) == (a <= c):
            m = lo
        else:
            m = hi
        pivot = buf[m]
        buf[m] = buf[hi]
        i = lo
        for j in range(lo, hi):
            v = buf[j]
            buf[j] = buf[i]
            buf[i] = v
            i += v < pivot
        buf[hi] = buf[i]
        buf[i] = pivot
        if k < i:
            hi = i - 1
        elif k == i:
            return pivot
        else:
            e = i + 1
            for j in range(i + 1, hi + 1):
                v = buf[j]
                buf[j] = buf[e]
                buf[e] = v
                e += v == pivot
            if k < e:
                return pivot
            lo = e
    return buf[k]


@kernel_inline
def _order_key(bits):
    """The int64 bits of a float64 as a key that orders as the float does (for non-NaN values;
    the transform is its own inverse)."""
    return bits ^ ((bits >> 63) & ORDER_BITS)


@kernel_inline
def _kth_from(vals, n, k, guess, work):
    """The k-th smallest of vals[:n] (0-based), leaving vals as it is; ``work[:n + 1]`` scratch.

    From ``guess``, the distinct values next to it are visited in order, each found and counted
    by passes over the values' order keys that compile to vector code, until the one of rank
    k; a guess a few values from the answer (the mean of a window's changes for their median)
    needs a few such passes, where a selection pays a partition of dependent stores. After
    SELECT_STEPS values it falls back on selection (``_kth``) of a copy."""
    keys = work[:n].view(np.int64)
    bits = vals[:n].view(np.int64)
    for j in range(n):
        keys[j] = _order_key(bits[j])
    slot = work[n : n + 1]  # one slot more, to turn a float into its key and back
    slot[0] = guess
    t = _order_key(slot.view(np.int64)[0])
    below = 0
    for j in range(n):
        below += keys[j] < t
    up = k >= below  # the answer is at or above the guess
    for _ in range(SELECT_STEPS):
        if up:  # the smallest key from t up
            m = ORDER_BITS
            for j in range(n):
                v = keys[j]
                m = min(m, v if v >= t else ORDER_BITS)
        else:  # the largest key below t
            m = -ORDER_BITS - 1
            for j in range(n):
                v = keys[j]
                m = max(m, v if v < t else -ORDER_BITS - 1)
        e = 0
        for j in range(n):
            e += keys[j] == m
        if up:
            if k < below + e:
                slot.view(np.int64)[0] = _order_key(m)
                return slot[0]
            below += e
            t = m + 1
        else:
            below -= e
            if below <= k:
                slot.view(np.int64)[0] = _order_key(m)
                return slot[0]
            t = m
    for j in range(n):
        work[j] = vals[j]
    return _kth(work, n, k)


@kernel
def _change_spread(ring, c, pos, n, window, buf, min_std):
    """Median and robust spread (1.4826 x MAD, at least 1.2533 x the mean absolute deviation,
    at least ``min_std``) of the changes between the ``n`` newest values of ring row ``c``
    (the next write at ``pos``); uses ``buf[:2 * n - 1]``."""
    k = (pos - n) % window  # the oldest value
    nd = n - 1
    oldest = np.float64(ring[c, k])
    for j in range(nd):
        k1 = k + 1 if k + 1 < window else 0
        buf[j] = np.float64(ring[c, k1]) - np.float64(ring[c, k])
        k = k1
    work = buf[nd:]
    # the changes' mean (they telescope) is near their median on noisy windows
    med = _kth_from(buf, nd, nd // 2, (np.float64(ring[c, k]) - oldest) / nd, work)
    sum_ad = 0.0
    for j in range(nd):
        buf[j] = abs(buf[j] - med)
        sum_ad += buf[j]
    floor = max(1.2533 * sum_ad / nd, min_std)
    # the MAD (the (nd // 2)-th smallest deviation) only matters if 1.4826 x MAD can exceed the
    # floor: when more than nd // 2 deviations lie below floor / 1.4826 (less a margin far
    # beyond rounding), it cannot, and its selection is skipped
    r = floor / 1.4826 * (1.0 - 1e-9)
    below = 0
    for j in range(nd):
        below += buf[j] < r
    if below > nd // 2:
        return med, floor
    # for normal changes the MAD is 0.845 x their mean absolute deviation
    mad = _kth_from(buf, nd, nd // 2, 0.8453 * sum_ad / nd, work)
    return med, max(1.4826 * mad, floor)


@kernel
def _sibling_jump(c, t1, sign, min_n, sib, prof, prm, ring, pos, cnt, fin_ts, fin_prev_ts, buf):
    """The largest robust z-score (in the direction ``sign``) of a change that another channel
    of c's device made into a reading at time ``t1``: its latest reading or the one before.
    Devices are circular lists (``sib``: the next channel); at most 64 are looked at."""
    window = ring.shape[1]
    best = -np.inf
    s = sib[c]
    seen = 0
    while s != c and seen < 64:
        back = 1 if fin_ts[s] == t1 else (2 if fin_prev_ts[s] == t1 else 0)
        n = cnt[s]
        if back > 0 and n >= min_n and n > back:
            a = np.float64(ring[s, (pos[s] - back) % window])
            b = np.float64(ring[s, (pos[s] - back - 1) % window])
            med, sd = _change_spread(ring, s, pos[s], n, window, buf, prm[prof[s], P_HP_MIN_STD])
            if sd > 0:
                best = max(best, sign * (a - b - med) / sd)
        s = sib[s]
        seen += 1
    return best


@kernel
def _cusum(c, e, m, base, dev, pos, neg, prm, p, o):
    """One step of a two-sided CUSUM against a learnt baseline (the CS_* columns from ``o``).

    ``e`` is the new value less ``base[c]``, ``m`` how many values were learnt. From min_n
    on, e in learnt standard deviations (1.2533 x the EWMA of |e|), clipped, moves the sums;
    then the baseline and the spread learn e (clipped). Returns (z, stat); stat is -1 while
    the rule is still learning."""
    sd = max(1.2533 * dev[c], prm[p, o + CS_MIN_STD])
    clip = prm[p, o + CS_CLIP]
    z = 0.0
    stat = -1.0
    if m >= prm[p, o + CS_MIN_N] and sd > 0:
        z = e / sd
        u = min(max(z, -clip), clip)
        pos[c] = max(0.0, pos[c] + u - prm[p, o + CS_K])
        neg[c] = max(0.0, neg[c] - u - prm[p, o + CS_K])
        stat = max(pos[c], neg[c])
    if sd > 0:
        e = min(max(e, -clip * sd), clip * sd)
    a = max(prm[p, o + CS_ALPHA], 1.0 / (m + 1))
    base[c] += a * e
    dev[c] += a * (abs(e) - dev[c])
    return z, stat


@kernel_inline
def _prefetch_state(c, prof, last_ts):
    """Prefetch channel c's profile and record (the first of two stages)."""
    prefetch(prof, c)
    prefetch_record(last_ts, c)


@kernel_inline
def _season_bin(t, offset_ms):
    """The seasonal profile's bin of event time t (ms): the local hour of the day, plus
    SEASON_BINS // 2 on a weekend day."""
    local = t + offset_ms
    sb = (local % DAY_MS) // SEASON_BIN_MS
    if (local // DAY_MS + 3) % 7 >= 5:  # day 0 (1970-01-01) was a Thursday
        sb += SEASON_BINS // 2
    return sb


@kernel_inline
def _prefetch_rows(c, t, prof, prm, ring, pos, se_row, se_mean, se_dev, se_w, se_z, a_row, a_sev,
                   a_flap, a_since, a_last_open, a_peak, a_score):  # fmt: skip
    """Prefetch the rows outside channel c's record that its reading (at time t) will use,
    found from the record the first stage brought in: the ring's newest values, the seasonal
    row and the bin of t in its tables, the alert row."""
    window = ring.shape[1]
    k = pos[c]
    prefetch2(ring, c, k - 1 if k > 0 else window - 1)  # a line holding k - 1 or k + 1 holds k
    prefetch2(ring, c, k + 1 if k + 1 < window else 0)
    r = se_row[c]
    if r >= 0:
        prefetch(se_z, r)
        sb = _season_bin(t, np.int64(prm[prof[c], P_SE_OFFSET_MS]))
        prefetch2(se_mean, r, sb)
        prefetch2(se_dev, r, sb)
        prefetch2(se_w, r, sb)
    b = a_row[c]
    if b >= 0:
        prefetch(a_sev, b)
        prefetch(a_flap, b)
        prefetch(a_since, b)
        prefetch(a_last_open, b)
        prefetch(a_peak, b)
        prefetch(a_score, b)


@kernel
def process_readings(idx, ts, val, start, stop, late_before_ms, out_score, buf, ahead,
                     prof, sib, prm, g,
                     ring, pos, cnt, s1, s2, last_ts, ival, fin_ts, fin_prev_ts,
                     flat_n, flat_t0, flat_learnt,
                     cu_n, cu_base, cu_dev, cu_pos, cu_neg, lv_n, lv_mean, lv_var,
                     se_row, se_mean, se_dev, se_w, se_z,
                     st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
                     agg_n, agg_sum, agg_min, agg_max, agg_last, agg_last_ts, agg_score,
                     ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                     counts):  # fmt: skip
    """Run readings ``start..stop`` of a batch; returns (next reading, events written).
    ``buf`` is scratch space of at least ``2 * window`` floats. The record of the channel
    ``2 * ahead`` readings ahead is prefetched, and then, ``ahead`` readings ahead, the rows
    outside it that its reading needs (0: no prefetch).

    Stops early, before a reading, when fewer than N_RULES event slots or no free alert row
    remain; the caller drains the events (grows the alert tables) and calls again from the
    returned position.
    """
    window = ring.shape[1]
    interval_ms = np.int64(g[G_INTERVAL_MS])
    cap = ev_ch.shape[0]
    ne = 0
    for i in range(start, stop):
        if ne + N_RULES > cap or a_free[0] < 1:
            return i, ne
        if ahead > 0:
            if i + 2 * ahead < stop:
                _prefetch_state(idx[i + 2 * ahead], prof, last_ts)
            if i + ahead < stop:
                _prefetch_rows(idx[i + ahead], ts[i + ahead], prof, prm, ring, pos, se_row,
                               se_mean, se_dev, se_w, se_z, a_row, a_sev, a_flap, a_since,
                               a_last_open, a_peak, a_score)  # fmt: skip
        c = idx[i]
        t = ts[i]
        x = val[i]
        if t < late_before_ms:
            counts[C_LATE] += 1
            out_score[i] = np.nan
            continue
        if t <= last_ts[c]:
            counts[C_OUT_OF_ORDER] += 1
            out_score[i] = np.nan
            continue
        p = prof[c]
        prev_ts = last_ts[c]
        last_ts[c] = t
        if prev_ts != NEVER:
            dt = float(t - prev_ts)
            if st[c, R_DROPOUT] == ST_OPEN:
                st[c, R_DROPOUT] = ST_IDLE
                ne = _emit(ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                           ne, c, R_DROPOUT, EV_RESOLVE, t, a_last_open[a_row[c], R_DROPOUT],
                           dt / 1000.0, a_score[a_row[c], R_DROPOUT],
                           a_sev[a_row[c], R_DROPOUT])  # fmt: skip
            # typical interval: an EWMA in which one long gap weighs at most 3 intervals
            if ival[c] <= 0:
                ival[c] = dt
            else:
                ival[c] += 0.1 * (min(dt, 3.0 * ival[c]) - ival[c])
        if x != x:  # NaN: the sensor is alive but has no value; detectors skip it
            out_score[i] = np.nan
            continue
        x32 = np.float32(x)
        xv = np.float64(x32)
        n = cnt[c]
        head = pos[c]  # where x will go; the newest value is just before it
        prev = np.float64(ring[c, head - 1 if head > 0 else window - 1])
        score = 0.0

        # threshold
        above = prm[p, P_TH_ABOVE]
        below = prm[p, P_TH_BELOW]
        if above == above or below == below:
            hi = above == above and x >= above
            lo = below == below and x <= below
            trig = hi or lo
            clear_below = prm[p, P_TH_CLEAR_BELOW]
            clear_above = prm[p, P_TH_CLEAR_ABOVE]
            hold = trig
            if above == above and x >= (clear_below if clear_below == clear_below else above):
                hold = True
            if below == below and x <= (clear_above if clear_above == clear_above else below):
                hold = True
            crit_a = prm[p, P_TH_CRIT_ABOVE]
            crit_b = prm[p, P_TH_CRIT_BELOW]
            crit = (crit_a == crit_a and x >= crit_a) or (crit_b == crit_b and x <= crit_b)
            sev = SEV_CRITICAL if crit else SEV_WARNING
            sc = 0.0
            if hi:
                sc = _ratio_score(x / above) if above > 0 else 1.0
            elif lo:
                sc = _ratio_score(below / x) if x > 0 else 1.0
            score = max(score, sc)
            ne = step_alert(c, R_THRESHOLD, t, trig, hold, sev, sc, x, prm[p, P_TH_MIN_MS], g,
                            st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
                            ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                            ne)  # fmt: skip

        # rolling z-score of the change x - previous, against the changes in the window
        # (a daily trend shifts their mean a little; a spike or a dip stands out at once); its
        # square against each limit squared, and the score from it: no square root
        if prm[p, P_Z_ON] > 0 and n >= prm[p, P_Z_MIN_N]:
            nd = n - 1
            mean = s1[c] / nd
            var = s2[c] / nd - mean * mean
            min_sd = prm[p, P_Z_MIN_STD]
            var = max(var if var > 0 else 0.0, min_sd * min_sd)  # sd^2, with sd >= min_std
            e = (xv - prev) - mean
            z2 = e * e / var if var > 0 else 0.0
            z_open = prm[p, P_Z_OPEN]
            lim = z_open * z_open
            sc = z2 / (z2 + lim)
            score = max(score, sc)
            z_crit = prm[p, P_Z_CRIT]
            z_close = prm[p, P_Z_CLOSE]
            sev = SEV_CRITICAL if z2 >= z_crit * z_crit else SEV_WARNING
            ne = step_alert(c, R_ZSCORE, t, z2 >= lim, z2 >= z_close * z_close, sev, sc, x, 0,
                            g, st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak,
                            a_score, ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak,
                            ev_score, ev_sev, ne)  # fmt: skip

        # flatline: the same value again and again, for longer than chance explains. Chance is
        # learnt apart at the channel's floor (a leaky minimum), where coarse sensors sit on
        # their detection limit for days, and elsewhere.
        if prm[p, P_FL_ON] > 0:
            tol = prm[p, P_FL_TOL]
            same = n > 0 and abs(xv - prev) <= tol
            if same:
                flat_n[c] += 1
            else:
                flat_n[c] = 1
                flat_t0[c] = t
            floor = flat_learnt[c, FL_FLOOR]
            if floor != floor or xv <= floor:
                floor = xv
            else:
                if abs(prev - floor) <= tol:  # leaving the floor: its value is established
                    flat_learnt[c, FL_FLOOR_VALUE] = floor
                floor += FLAT_FLOOR_RISE * (xv - floor)
            flat_learnt[c, FL_FLOOR] = floor
            # at the floor: at its established value (a reading there is never above the floor)
            k = FL_AT_FLOOR if abs(xv - flat_learnt[c, FL_FLOOR_VALUE]) <= tol else FL_OFF_FLOOR
            if n > 0 and flat_n[c] < prm[p, P_FL_MIN_N]:  # learn p outside (suspected) runs
                flat_learnt[c, k] += FLAT_P_ALPHA * ((1.0 if same else 0.0) - flat_learnt[c, k])
            trig = flat_n[c] >= prm[p, P_FL_MIN_N] and t - flat_t0[c] >= prm[p, P_FL_MIN_MS]
            log_chance = prm[p, P_FL_LOG_CHANCE]
            q = flat_learnt[c, k]
            if trig and log_chance < 0 and q > 0:
                trig = flat_n[c] * np.log(q) <= log_chance
            sc = FLATLINE_SCORE if trig else 0.0
            score = max(score, sc)
            ne = step_alert(c, R_FLATLINE, t, trig, trig, SEV_WARNING, sc, x, 0, g,
                            st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
                            ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                            ne)  # fmt: skip

        # hampel: the previous reading jumped (robustly far from the window's changes) and x
        # takes the jump back
        if prm[p, P_HP_ON] > 0 and n >= prm[p, P_HP_MIN_N]:
            x1 = prev
            x2 = np.float64(ring[c, head - 2 if head > 1 else head - 2 + window])
            jump = x1 - x2
            z = 0.0
            back = abs(xv - x2) <= prm[p, P_HP_BACK] * abs(jump)
            if jump != 0 and (xv - x1) * jump < 0 and back:
                med, sd = _change_spread(ring, c, head, n, window, buf, prm[p, P_HP_MIN_STD])
                z = abs(jump - med) / sd if sd > 0 else 0.0
                share = prm[p, P_HP_SIBLINGS]
                if share > 0 and z >= prm[p, P_HP_Z_OPEN]:  # a real event moves several
                    sign = 1.0 if jump > 0 else -1.0
                    zs = _sibling_jump(c, fin_ts[c], sign, prm[p, P_HP_MIN_N], sib, prof, prm,
                                       ring, pos, cnt, fin_ts, fin_prev_ts, buf)  # fmt: skip
                    if zs >= share * z:
                        z = 0.0
            sc = _ratio_score(z / prm[p, P_HP_Z_OPEN])
            score = max(score, sc)
            trig = z >= prm[p, P_HP_Z_OPEN]
            sev = SEV_CRITICAL if z >= prm[p, P_HP_Z_CRIT] else SEV_WARNING
            ne = step_alert(c, R_HAMPEL, t, trig, trig, sev, sc, x1, 0, g,
                            st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
                            ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                            ne)  # fmt: skip

        # rate of change from the previous reading (NaN limits: off)
        rise = prm[p, P_RT_RISE]
        fall = prm[p, P_RT_FALL]
        if n > 0 and (rise == rise or fall == fall):
            dt_s = max(float(t - prev_ts), prm[p, P_RT_MIN_DT_MS]) / 1000.0
            rate = (xv - prev) / dt_s
            q = 0.0
            if rate > 0 and rise == rise:
                q = rate / rise
            elif rate < 0 and fall == fall:
                q = -rate / fall
            sc = _ratio_score(q)
            score = max(score, sc)
            sev = SEV_CRITICAL if q >= prm[p, P_RT_CRIT] else SEV_WARNING
            ne = step_alert(c, R_RATE, t, q >= 1.0, q >= 1.0, sev, sc, x, 0, g,
                            st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
                            ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                            ne)  # fmt: skip

        # cusum: the value against its learnt level (EWMA), in learnt standard deviations,
        # summed on each side (level shifts, slow drift)
        if prm[p, P_CU_ON] > 0:
            m = cu_n[c]
            if m == 0:
                cu_base[c] = xv
                cu_dev[c] = 0.0
            else:
                z, stat = _cusum(c, xv - cu_base[c], m, cu_base, cu_dev, cu_pos, cu_neg,
                                 prm, p, P_CU)  # fmt: skip
                if stat >= 0:
                    h = prm[p, P_CU + CS_H]
                    sc = _ratio_score(stat / h)
                    score = max(score, sc)
                    sev = SEV_CRITICAL if stat >= prm[p, P_CU + CS_CRIT] else SEV_WARNING
                    ne = step_alert(c, R_CUSUM, t, stat >= h, stat >= prm[p, P_CU + CS_CLOSE],
                                    sev, sc, x, 0, g, st, a_row, a_free, a_sev, a_flap, a_since,
                                    a_last_open, a_peak, a_score, ev_ch, ev_rule, ev_kind, ev_ts,
                                    ev_opened, ev_peak, ev_score, ev_sev, ne)  # fmt: skip
            if m < 2_000_000_000:
                cu_n[c] = m + 1

        # seasonal: the value against what this hour of a weekday (or weekend day) usually
        # brings on this channel, learnt online; the z-score is smoothed over readings
        r = se_row[c]
        if r >= 0 and prm[p, P_SE_ON] > 0:
            sb = _season_bin(t, np.int64(prm[p, P_SE_OFFSET_MS]))
            w = np.float64(se_w[r, sb])
            mean = np.float64(se_mean[r, sb])
            dv = np.float64(se_dev[r, sb])
            sd = max(1.2533 * dv, prm[p, P_SE_MIN_STD])
            e = xv - mean
            clip = prm[p, P_SE_CLIP]
            if w >= prm[p, P_SE_MIN_N] and sd > 0:
                zc = min(max(e / sd, -clip), clip)
                zs = np.float64(se_z[r])
                zs += prm[p, P_SE_SMOOTH] * (zc - zs)
                se_z[r] = zs
                az = abs(np.float64(se_z[r]))
                z_open = prm[p, P_SE_Z_OPEN]
                sc = _ratio_score(az / z_open)
                score = max(score, sc)
                sev = SEV_CRITICAL if az >= prm[p, P_SE_Z_CRIT] else SEV_WARNING
                ne = step_alert(c, R_SEASONAL, t, az >= z_open, az >= prm[p, P_SE_Z_CLOSE], sev,
                                sc, x, 0, g, st, a_row, a_free, a_sev, a_flap, a_since, a_last_open,
                                a_peak, a_score, ev_ch, ev_rule, ev_kind, ev_ts, ev_opened,
                                ev_peak, ev_score, ev_sev, ne)  # fmt: skip
            # a reading stands for its share of the hour (the channel's typical interval)
            f = min(ival[c] / SEASON_BIN_MS, 1.0)
            if f > 0:
                if w > 0 and sd > 0:
                    e = min(max(e, -clip * sd), clip * sd)
                a = max(prm[p, P_SE_ALPHA] * f, f / (w + f))
                se_mean[r, sb] = mean + a * e
                se_dev[r, sb] = dv + a * (abs(e) - dv)
                se_w[r, sb] = w + f

        # level: the value against the channel's long-run mean and standard deviation
        if prm[p, P_LV_ON] > 0:
            m = lv_n[c]
            if m == 0:
                lv_mean[c] = xv
                lv_var[c] = 0.0
            else:
                e = xv - lv_mean[c]
                min_sd = prm[p, P_LV_MIN_STD]
                var = max(lv_var[c], min_sd * min_sd)  # sd^2: as zscore, no square root
                if m >= prm[p, P_LV_MIN_N] and var > 0:
                    z2 = e * e / var
                    z_open = prm[p, P_LV_Z_OPEN]
                    lim = z_open * z_open
                    sc = z2 / (z2 + lim)
                    score = max(score, sc)
                    z_crit = prm[p, P_LV_Z_CRIT]
                    z_close = prm[p, P_LV_Z_CLOSE]
                    sev = SEV_CRITICAL if z2 >= z_crit * z_crit else SEV_WARNING
                    ne = step_alert(c, R_LEVEL, t, z2 >= lim, z2 >= z_close * z_close, sev, sc,
                                    x, 0, g, st, a_row, a_free, a_sev, a_flap, a_since,
                                    a_last_open, a_peak, a_score, ev_ch, ev_rule, ev_kind, ev_ts,
                                    ev_opened, ev_peak, ev_score, ev_sev, ne)  # fmt: skip
                a = max(prm[p, P_LV_ALPHA], 1.0 / (m + 1))
                lv_mean[c] += a * e
                lv_var[c] += a * (e * e - lv_var[c])
            if m < 2_000_000_000:
                lv_n[c] = m + 1

        # the window takes x; s1, s2 sum the changes between consecutive values in it
        k = head
        if n > 0:
            dn = xv - prev
            s1[c] += dn
            s2[c] += dn * dn
        if n == window:
            dold = np.float64(ring[c, k + 1 if k + 1 < window else 0]) - np.float64(ring[c, k])
            s1[c] -= dold
            s2[c] -= dold * dold
        else:
            cnt[c] = n + 1
        ring[c, k] = x32
        fin_prev_ts[c] = fin_ts[c]
        fin_ts[c] = t
        k += 1
        if k == window:
            k = 0
            # exact re-sum once per lap keeps rounding error from accumulating
            a = 0.0
            b = 0.0
            for j in range(window - 1):
                dd = np.float64(ring[c, j + 1]) - np.float64(ring[c, j])
                a += dd
                b += dd * dd
            s1[c] = a
            s2[c] = b
        pos[c] = k

        # snapshot aggregates of the reading's interval (two slots: the open intervals)
        sl = (t // interval_ms) & 1
        if agg_n[c, sl] == 0:
            agg_min[c, sl] = x
            agg_max[c, sl] = x
        else:
            agg_min[c, sl] = min(agg_min[c, sl], x)
            agg_max[c, sl] = max(agg_max[c, sl], x)
        agg_n[c, sl] += 1
        agg_sum[c, sl] += x
        agg_last[c, sl] = x
        agg_last_ts[c, sl] = t
        agg_score[c, sl] = max(agg_score[c, sl], score)
        out_score[i] = score
    return stop, ne


@kernel
def take_slot(n_channels, slot, reset, fills, agg_n, agg_sum, agg_min, agg_max, agg_last,
              agg_last_ts, agg_score, st, channel, count, vmin, vmax, mean, last, last_ts,
              max_score, open_alerts):  # fmt: skip
    """Copy the aggregates in ``slot`` of every channel that had readings there into the
    ``channel..open_alerts`` columns (``open_alerts``: its rules with an open alert); if
    ``reset``, refill its slot with ``fills`` (agg_n, agg_sum, ..., agg_score). One pass in
    channel order, each channel's fields together: numpy's fancy indexing into record fields
    takes a pass per field. Returns the number of rows written."""
    m = 0
    for c in range(n_channels):
        k = agg_n[c, slot]
        if k <= 0:
            continue
        channel[m] = c
        count[m] = k
        vmin[m] = agg_min[c, slot]
        vmax[m] = agg_max[c, slot]
        mean[m] = agg_sum[c, slot] / k
        last[m] = agg_last[c, slot]
        last_ts[m] = agg_last_ts[c, slot]
        max_score[m] = agg_score[c, slot]
        n_open = 0
        for r in range(st.shape[1]):
            if st[c, r] == ST_OPEN:
                n_open += 1
        open_alerts[m] = n_open
        if reset:
            agg_n[c, slot] = fills[0]
            agg_sum[c, slot] = fills[1]
            agg_min[c, slot] = fills[2]
            agg_max[c, slot] = fills[3]
            agg_last[c, slot] = fills[4]
            agg_last_ts[c, slot] = fills[5]
            agg_score[c, slot] = fills[6]
        m += 1
    return m


@kernel
def sweep_dropout(start, n_channels, now_ms, earliest_t, prof, prm, g, last_ts, ival,
                  st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
                  ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score,
                  ev_sev):  # fmt: skip
    """Open a dropout alert for every channel silent for ``factor`` x its interval (and at
    least ``min_gap``) at event time ``now_ms``; give back the alert rows no reading from
    ``earliest_t`` on can use. Returns (next channel, events written)."""
    cap = ev_ch.shape[0]
    ne = 0
    for c in range(start, n_channels):
        if ne == cap or a_free[0] < 1:
            return c, ne
        if c + SWEEP_AHEAD < n_channels:  # the fields read here share a record's first line
            prefetch(last_ts, c + SWEEP_AHEAD)
        release_row(c, earliest_t, g, st, a_row, a_free, a_last_open)
        p = prof[c]
        if prm[p, P_DO_ON] <= 0 or st[c, R_DROPOUT] != ST_IDLE:
            continue
        last = last_ts[c]
        if last == NEVER or ival[c] <= 0:
            continue
        gap = now_ms - last
        if gap > prm[p, P_DO_FACTOR] * ival[c] and gap >= prm[p, P_DO_MIN_GAP_MS]:
            b = a_row[c]
            if b < 0:
                b = take_row(c, a_row, a_free, a_flap, a_since, a_last_open)
            st[c, R_DROPOUT] = ST_OPEN
            a_last_open[b, R_DROPOUT] = now_ms
            a_sev[b, R_DROPOUT] = SEV_WARNING
            a_score[b, R_DROPOUT] = DROPOUT_SCORE
            a_peak[b, R_DROPOUT] = gap / 1000.0
            ne = _emit(ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev, ne,
                       c, R_DROPOUT, EV_OPEN, now_ms, now_ms, gap / 1000.0, DROPOUT_SCORE,
                       SEV_WARNING)  # fmt: skip
    return n_channels, ne


@kernel
def neighbour_step(rows, value, dev, resid, n_group, t, prof, prm, g,
                   nb_n, nb_level, nb_base, nb_dev, nb_sm, nb_spread,
                   st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak, a_score,
                   ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak, ev_score, ev_sev,
                   start):  # fmt: skip
    """The neighbour rule at the close of an interval ending at ``t``: channel ``rows[i]``
    had mean ``value[i]``, the deviation ``dev[i]`` from its group's common level less its
    learnt offset (``nb_base``), and ``resid[i]``, that deviation less its device's median
    deviation (see ``Detector._neighbours``); its group had ``n_group[i]`` reporting
    channels. Rows ``start..``; returns (next row, events written).

    The residual, clipped to ``clip`` x its learnt spread (``nb_dev``, 1.2533 x the EWMA of
    its absolute value), is smoothed (``nb_sm``); the smoothed residual over its own learnt
    spread (``nb_spread``) is the z-score. Then the offset learns the deviation and the
    channel's level (``nb_level``, used for the log scale) the mean."""
    cap = ev_ch.shape[0]
    ne = 0
    for i in range(start, rows.shape[0]):
        if ne == cap or a_free[0] < 1:
            return i, ne
        c = rows[i]
        p = prof[c]
        if prm[p, P_NB_ON] <= 0 or n_group[i] < prm[p, P_NB_MIN_NB]:
            continue
        m = nb_n[c]
        first = 1.0 / (m + 1)
        e = resid[i]
        lim = prm[p, P_NB_CLIP] * 1.2533 * nb_dev[c]
        if lim > 0:
            e = min(max(e, -lim), lim)
        sm = nb_sm[c] + prm[p, P_NB_SMOOTH] * (e - nb_sm[c])
        nb_sm[c] = sm
        sd = 1.2533 * nb_spread[c]
        if m >= prm[p, P_NB_MIN_N] and sd > 0:
            az = abs(sm) / sd
            z_open = prm[p, P_NB_Z_OPEN]
            sev = SEV_CRITICAL if az >= prm[p, P_NB_Z_CRIT] else SEV_WARNING
            ne = step_alert(c, R_NEIGHBOUR, t, az >= z_open, az >= prm[p, P_NB_Z_CLOSE], sev,
                            _ratio_score(az / z_open), value[i], prm[p, P_NB_MIN_MS], g,
                            st, a_row, a_free, a_sev, a_flap, a_since, a_last_open, a_peak,
                            a_score, ev_ch, ev_rule, ev_kind, ev_ts, ev_opened, ev_peak,
                            ev_score, ev_sev, ne)  # fmt: skip
        slow = max(prm[p, P_NB_SLOW], first)
        nb_base[c] += max(prm[p, P_NB_ALPHA], first) * dev[i]
        nb_dev[c] += slow * (abs(resid[i]) - nb_dev[c])
        nb_spread[c] += slow * (abs(sm) - nb_spread[c])
        lvl = nb_level[c]
        nb_level[c] = value[i] if lvl != lvl else lvl + slow * (value[i] - lvl)
        if m < 2_000_000_000:
            nb_n[c] = m + 1
    return rows.shape[0], ne


@kernel
def advance_watermark(ts, wm, wm_after):
    """The watermark (the largest event time so far) after each reading, in ``wm_after``."""
    for i in range(ts.shape[0]):
        if ts[i] > wm:
            wm = ts[i]
        wm_after[i] = wm
    return wm
