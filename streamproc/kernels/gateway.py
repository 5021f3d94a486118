"""A compiled scan of gateway batches straight into batch columns: no Python object per reading.

``scan`` reads the plain gateway form of ``streamproc.decode`` (form 3): a top-level array of
entries, or ``{"readings": [entry, ...]}`` whose ``ts``, ``device``, ``kind`` and ``group``
(defaults for the entries) come before ``readings``. An entry is an object of ``ts`` (an
integer, epoch s or ms), ``device``, ``kind``, ``group`` (strings) and metric keys with number
values. Strings are printable ASCII without escapes; a float is read exactly only when its
digits fit 2**53 and its power of ten is within 1e22 (Clinger's fast path: one correctly
rounded operation, the value any JSON parser gives).

Whatever falls outside that, or would be dropped or counted by the general decoder (a bad
value, a time out of range, a duplicate key, no device), makes ``scan`` return FALLBACK
without deciding anything, so the caller decodes the message the general way and every
outcome keeps its one definition. A (device, metric) not in the channel table is a MISS: the
caller decodes the message the general way and then adds the channels it registered.

The channel table (``streamproc.channel_table``): open addressing over ``slots`` (entry number or
-1); entry ``e`` holds the FNV-1a hash of ``device + b"\\0" + metric``, its channel and its key
bytes ``keys[off[e]:off[e + 1]]``.
"""

from __future__ import annotations

import numpy as np

from streamproc.kernels import kernel, kernel_inline
from streamproc.times import MS_CUTOFF

OK = 0
FALLBACK = 1
MISS = 2

MAX_METRICS = 64  # metric keys per entry; an entry with more falls back
NO_DEVICE = -2  # device span start when neither the entry, the message nor the topic has one
TOPIC_DEVICE = -1  # device span start meaning "the topic's device"

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_POW10 = np.array([10.0**k for k in range(23)])
_MAX_EXACT = 2**53

# key codes
_METRIC, _TS, _DEVICE, _KIND, _GROUP, _READINGS, _OTHER = 0, 1, 2, 3, 4, 5, 6
_KEY_NAMES = (
    (_TS, b"ts"),
    (_DEVICE, b"device"),
    (_KIND, b"kind"),
    (_GROUP, b"group"),
    (_READINGS, b"readings"),
    (_OTHER, b"value"),
    (_OTHER, b"metric"),
)
# the reserved names in one array: name k is _NAMES[_NAME_AT[k]:_NAME_AT[k + 1]]
_NAMES = np.frombuffer(b"".join(name for _, name in _KEY_NAMES), np.uint8)
_NAME_AT = np.cumsum([0] + [len(name) for _, name in _KEY_NAMES])
_NAME_CODE = np.array([code for code, _ in _KEY_NAMES])


@kernel
def _ws(buf: np.ndarray, i: int) -> int:
    n = len(buf)
    while i < n:
        b = buf[i]
        if b != 32 and b != 10 and b != 13 and b != 9:
            break
        i += 1
    return i


@kernel
def _after_value(buf: np.ndarray, i: int, close: int) -> tuple[int, bool]:
    """After a value in an object or array closed by the byte ``close``: (the next item's
    index, False) after a comma, (the index after ``close``, True) at the end, or (-1, True)."""
    i = _ws(buf, i)
    if i < len(buf) and buf[i] == 44:
        return _ws(buf, i + 1), False
    if i < len(buf) and buf[i] == close:
        return i + 1, True
    return -1, True


@kernel
def _string_end(buf: np.ndarray, i: int) -> int:
    """``buf[i]`` should open a string: the index after its closing quote, or -1 (not a
    string, or one with escapes, control or non-ASCII bytes)."""
    n = len(buf)
    if i >= n or buf[i] != 34:
        return -1
    j = i + 1
    while j < n:
        b = buf[j]
        if b == 34:
            return j + 1
        if b < 32 or b >= 128 or b == 92:
            return -1
        j += 1
    return -1


@kernel
def _same(a: np.ndarray, s: int, e: int, b: np.ndarray, t: int) -> bool:
    """a[s:e] == b[t:t + e - s] (the caller checks that b is long enough)."""
    k = 0
    while k < e - s and a[s + k] == b[t + k]:
        k += 1
    return k == e - s


@kernel
def _key_code(buf: np.ndarray, s: int, e: int) -> int:
    for k in range(len(_NAME_CODE)):
        a = _NAME_AT[k]
        if e - s == _NAME_AT[k + 1] - a and _same(buf, s, e, _NAMES, a):
            return _NAME_CODE[k]
    return _METRIC


@kernel
def _number(buf: np.ndarray, i: int) -> tuple[int, bool, int, float]:
    """A JSON number at ``buf[i]``: (end, is an integer literal, its int, its float); end -1
    if it is not a number this scan reads exactly."""
    n = len(buf)
    neg = i < n and buf[i] == 45
    if neg:
        i += 1
    if i >= n or not 48 <= buf[i] <= 57:
        return -1, False, 0, 0.0
    w = 0
    digits = 0
    if buf[i] == 48:
        i += 1
        if i < n and 48 <= buf[i] <= 57:  # a leading zero: not JSON
            return -1, False, 0, 0.0
    else:
        while i < n and 48 <= buf[i] <= 57:
            if digits == 18:
                return -1, False, 0, 0.0
            w = w * 10 + (buf[i] - 48)
            digits += 1
            i += 1
    e10 = 0
    integer = True
    if i < n and buf[i] == 46:
        integer = False
        i += 1
        start = i
        while i < n and 48 <= buf[i] <= 57:
            if digits == 18:
                return -1, False, 0, 0.0
            w = w * 10 + (buf[i] - 48)
            digits += 1
            e10 -= 1
            i += 1
        if i == start:
            return -1, False, 0, 0.0
    if i < n and (buf[i] == 101 or buf[i] == 69):
        integer = False
        i += 1
        eneg = False
        if i < n and (buf[i] == 43 or buf[i] == 45):
            eneg = buf[i] == 45
            i += 1
        start = i
        x = 0
        while i < n and 48 <= buf[i] <= 57:
            if i - start == 4:
                return -1, False, 0, 0.0
            x = x * 10 + (buf[i] - 48)
            i += 1
        if i == start:
            return -1, False, 0, 0.0
        e10 += -x if eneg else x
    if integer:
        v = -w if neg else w
        return i, True, v, float(v)
    if w == 0:
        f = 0.0
    elif w > _MAX_EXACT or e10 < -22 or e10 > 22:
        return -1, False, 0, 0.0
    elif e10 >= 0:
        f = float(w) * _POW10[e10]
    else:
        f = float(w) / _POW10[-e10]
    return i, False, 0, -f if neg else f


@kernel
def _ts_ms(buf: np.ndarray, i: int, lo: int, hi: int) -> tuple[int, int]:
    """An integer time at ``buf[i]`` -> (end, epoch ms); end -1 unless it is in [lo, hi]."""
    end, integer, x, _ = _number(buf, i)
    if end < 0 or not integer:
        return -1, 0
    ms = x if abs(x) >= MS_CUTOFF else x * 1000  # as times.number_to_ms
    if ms < lo or ms > hi:
        return -1, 0
    return end, ms


@kernel
def _field(
    buf: np.ndarray, i: int, code: int, lo: int, hi: int, ts: int, ds: int, de: int
) -> tuple[int, int, int, int]:
    """The value of a reserved key at ``buf[i]``: ``ts`` (an integer time) or a name (a
    string). Returns (its end or -1, the time, the device span): ``ts``, ``ds`` and ``de`` as
    given unless this key sets them."""
    if code == _TS:
        end, ts = _ts_ms(buf, i, lo, hi)
        return end, ts, ds, de
    end = _string_end(buf, i)
    if code == _DEVICE:
        return end, ts, i + 1, end - 1
    return end, ts, ds, de


@kernel
def hash_keys(keys: np.ndarray, off: np.ndarray, first: int, end: int, out: np.ndarray) -> None:
    """``out[e]``: FNV-1a of table key ``e`` (``keys[off[e]:off[e + 1]]``, that is
    ``device + b"\\0" + metric``) for entries ``first..end - 1``."""
    for e in range(first, end):
        h = _FNV_OFFSET
        for k in range(off[e], off[e + 1]):
            h = (h ^ np.uint64(keys[k])) * _FNV_PRIME
        out[e] = h


@kernel
def _pair_hash(buf: np.ndarray, ds: int, de: int, dev: np.ndarray, ms: int, me: int) -> np.uint64:
    """The key hash (``hash_keys``) of the device (``buf[ds:de]``, or ``dev`` if ds is
    TOPIC_DEVICE) and the metric ``buf[ms:me]``, without building the key."""
    h = _FNV_OFFSET
    if ds == TOPIC_DEVICE:
        for b in dev:
            h = (h ^ np.uint64(b)) * _FNV_PRIME
    else:
        for k in range(ds, de):
            h = (h ^ np.uint64(buf[k])) * _FNV_PRIME
    h = (h ^ np.uint64(0)) * _FNV_PRIME
    for k in range(ms, me):
        h = (h ^ np.uint64(buf[k])) * _FNV_PRIME
    return h


@kernel
def find(
    buf: np.ndarray,
    ds: int,
    de: int,
    dev: np.ndarray,
    ms: int,
    me: int,
    slots: np.ndarray,
    ent_hash: np.ndarray,
    ent_ch: np.ndarray,
    off: np.ndarray,
    keys: np.ndarray,
) -> int:
    """The channel of (device, metric), or -1 if it is not in the table."""
    e = _find_entry(buf, ds, de, dev, ms, me, slots, ent_hash, off, keys)
    return ent_ch[e] if e >= 0 else -1


@kernel_inline
def _find_entry(buf: np.ndarray, ds: int, de: int, dev: np.ndarray, ms: int, me: int,
                slots: np.ndarray, ent_hash: np.ndarray, off: np.ndarray,
                keys: np.ndarray) -> int:  # fmt: skip
    """The entry of (device, metric) (see ``find``), or -1. Compiled into its callers: the
    gateway scan runs ``find`` for every reading."""
    h = _pair_hash(buf, ds, de, dev, ms, me)
    mask = len(slots) - 1
    i = np.int64(h & np.uint64(mask))
    while slots[i] >= 0:
        e = slots[i]
        if ent_hash[e] == h and _is_entry(e, buf, ds, de, dev, ms, me, off, keys):
            return e
        i = (i + 1) & mask
    return -1


@kernel_inline
def _is_entry(e: int, buf: np.ndarray, ds: int, de: int, dev: np.ndarray, ms: int, me: int,
              off: np.ndarray, keys: np.ndarray) -> bool:  # fmt: skip
    """Whether entry e's key is the device (``buf[ds:de]``, or ``dev`` if ds is TOPIC_DEVICE)
    and the metric ``buf[ms:me]``."""
    dlen = len(dev) if ds == TOPIC_DEVICE else de - ds
    o = off[e]
    if off[e + 1] - o != dlen + 1 + me - ms or keys[o + dlen] != 0:
        return False
    device = _same(dev, 0, dlen, keys, o) if ds == TOPIC_DEVICE else _same(buf, ds, de, keys, o)
    return device and _same(buf, ms, me, keys, o + dlen + 1)


@kernel
def find_pairs(
    dev_off: np.ndarray,
    dev: np.ndarray,
    met_off: np.ndarray,
    met: np.ndarray,
    entries: int,
    slots: np.ndarray,
    ent_hash: np.ndarray,
    ent_ch: np.ndarray,
    off: np.ndarray,
    keys: np.ndarray,
    out: np.ndarray,
) -> None:
    """``find`` for each pair i: device ``dev[dev_off[i]:dev_off[i + 1]]``, metric
    ``met[met_off[i]:met_off[i + 1]]``. The entry after the previous pair's is tried first:
    a feed's sensors tend to report in the same order every round, and the table holds them
    in the order they first came (that check reads what the previous look-up brought into
    cache; a hash look-up misses it several times)."""
    guess = -1
    for i in range(len(out)):
        device = dev[dev_off[i] : dev_off[i + 1]]
        ms, me = met_off[i], met_off[i + 1]
        e = guess
        if not (0 <= e < entries and _is_entry(e, met, TOPIC_DEVICE, 0, device, ms, me, off, keys)):
            e = _find_entry(met, TOPIC_DEVICE, 0, device, ms, me, slots, ent_hash, off, keys)
        out[i] = ent_ch[e] if e >= 0 else -1
        guess = e + 1 if e >= 0 else -1


@kernel
def table_insert(slots: np.ndarray, ent_hash: np.ndarray, first: int, last: int) -> None:
    """Put entries ``first..last`` (their hashes in ``ent_hash``) in ``slots``; the caller
    keeps the table under half full."""
    mask = len(slots) - 1
    for e in range(first, last + 1):
        i = np.int64(ent_hash[e] & np.uint64(mask))
        while slots[i] >= 0:
            i = (i + 1) & mask
        slots[i] = e


@kernel
def scan(
    buf: np.ndarray,
    dev: np.ndarray,
    has_dev: bool,
    messages: int,
    recv_ms: int,
    lo_ms: int,
    hi_ms: int,
    table_n: int,
    slots: np.ndarray,
    ent_hash: np.ndarray,
    ent_ch: np.ndarray,
    off: np.ndarray,
    keys: np.ndarray,
    met: np.ndarray,
    out_idx: np.ndarray,
    out_ts: np.ndarray,
    out_val: np.ndarray,
    miss: np.ndarray,
) -> tuple[int, int, int]:
    """Scan the gateway payload ``buf`` (uint8) -> (OK, readings, 0), (MISS, 0, misses) or
    (FALLBACK, entries read whole before the one that made it fall back, 0).

    ``dev``: the topic's device bytes (``has_dev`` False if the topic has none); times must
    lie in [lo_ms, hi_ms]; ``recv_ms`` is the time of entries that carry none; the table
    holds ``table_n`` entries. ``messages`` > 0: the array holds that many messages
    coalesced (``streamproc.coalesce``), one entry each; another number of entries, or an
    entry without its own ``ts`` or without a metric (which the general decoder would time
    or count apart), falls back. Outputs:
    ``out_idx``, ``out_ts``, ``out_val`` (room for ``len(buf) // 5 + 1`` readings) and, on a
    MISS, the device and metric spans of up to ``len(miss)`` unknown pairs in ``miss``
    (rows ``ds, de, ms, me``; ``ds`` TOPIC_DEVICE for the topic's device). ``met`` is scratch
    (MAX_METRICS rows of 2).
    """
    n = len(buf)
    entries = 0
    i = _ws(buf, 0)
    if recv_ms < lo_ms or recv_ms > hi_ms:
        return FALLBACK, entries, 0
    ts0 = recv_ms
    in_object = i < n and buf[i] == 123
    ds0 = TOPIC_DEVICE if has_dev else NO_DEVICE
    de0 = 0
    if in_object:  # {"ts": .., "device": .., "readings": [..]}
        seen = 0
        i = _ws(buf, i + 1)
        while True:
            e = _string_end(buf, i)
            if e < 0:
                return FALLBACK, entries, 0
            code = _key_code(buf, i + 1, e - 1)
            i = _ws(buf, e)
            if i >= n or buf[i] != 58 or code in (_METRIC, _OTHER):
                return FALLBACK, entries, 0
            if seen & (1 << code):
                return FALLBACK, entries, 0
            seen |= 1 << code
            i = _ws(buf, i + 1)
            if code == _READINGS:
                break
            e, ts0, ds0, de0 = _field(buf, i, code, lo_ms, hi_ms, ts0, ds0, de0)
            if e < 0:
                return FALLBACK, entries, 0
            i = _ws(buf, e)
            if i >= n or buf[i] != 44:
                return FALLBACK, entries, 0
            i = _ws(buf, i + 1)
    if i >= n or buf[i] != 91:  # the entries' array
        return FALLBACK, entries, 0
    i = _ws(buf, i + 1)
    count = 0
    misses = 0
    guess = -1
    if i < n and buf[i] == 93:
        return FALLBACK, entries, 0  # no entry: the general decoder says how
    while True:
        if i >= n or buf[i] != 123:
            return FALLBACK, entries, 0
        i = _ws(buf, i + 1)
        ts = ts0
        ds, de = ds0, de0
        seen = 0
        k = 0
        if i < n and buf[i] == 125:
            i += 1
        else:
            while True:
                e = _string_end(buf, i)
                if e < 0:
                    return FALLBACK, entries, 0
                s = i + 1
                code = _key_code(buf, s, e - 1)
                i = _ws(buf, e)
                if i >= n or buf[i] != 58 or code in (_OTHER, _READINGS):
                    return FALLBACK, entries, 0
                i = _ws(buf, i + 1)
                if code == _METRIC:
                    for j in range(k):  # a repeated metric: the general decoder keeps the last
                        a, b = met[j, 0], met[j, 1]
                        if b - a == e - 1 - s and _same(buf, a, b, buf, s):
                            return FALLBACK, entries, 0
                    if k == MAX_METRICS:
                        return FALLBACK, entries, 0
                    end, _, _, v = _number(buf, i)
                    if end < 0:
                        return FALLBACK, entries, 0
                    met[k, 0], met[k, 1] = s, e - 1
                    out_val[count + k] = v
                    k += 1
                else:
                    if seen & (1 << code):
                        return FALLBACK, entries, 0
                    seen |= 1 << code
                    end, ts, ds, de = _field(buf, i, code, lo_ms, hi_ms, ts, ds, de)
                    if end < 0:
                        return FALLBACK, entries, 0
                i, closed = _after_value(buf, end, 125)
                if i < 0:
                    return FALLBACK, entries, 0
                if closed:
                    break
        if k > 0 and ds == NO_DEVICE:
            return FALLBACK, entries, 0
        if messages > 0 and (k == 0 or not seen & (1 << _TS)):
            return FALLBACK, entries, 0
        for j in range(k):
            ms, me = met[j, 0], met[j, 1]
            # the entry after the last one found first, as find_pairs does: a gateway's
            # readings tend to come in the same order every time
            e = guess
            if not (0 <= e < table_n and _is_entry(e, buf, ds, de, dev, ms, me, off, keys)):
                e = _find_entry(buf, ds, de, dev, ms, me, slots, ent_hash, off, keys)
            if e < 0:
                guess = -1
                if misses < len(miss):
                    miss[misses, 0], miss[misses, 1] = ds, de
                    miss[misses, 2], miss[misses, 3] = ms, me
                    misses += 1
            else:
                guess = e + 1
                out_idx[count + j] = ent_ch[e]
                out_ts[count + j] = ts
        count += k
        i, closed = _after_value(buf, i, 93)
        if i < 0:
            return FALLBACK, entries, 0
        entries += 1
        if closed:
            break
    if in_object:
        i = _ws(buf, i)
        if i >= n or buf[i] != 125:  # "readings" must be the object's last key
            return FALLBACK, entries, 0
        i += 1
    if _ws(buf, i) != n or (messages > 0 and entries != messages):
        return FALLBACK, entries, 0
    if misses > 0:
        return MISS, 0, misses
    if count == 0:
        return FALLBACK, entries, 0
    return OK, count, 0


def warm_up() -> None:
    """Compile ``scan`` and the table's kernels (or load them from the numba cache) with the
    argument types the decoder passes: the payload and device bytes are read-only views."""
    buf = np.frombuffer(b'{"ts": 0, "readings": [{"device": "d", "m": 1.5}]}', np.uint8)
    pair = np.frombuffer(b"d\0m", np.uint8)
    slots = np.full(2, -1, np.int32)
    key = pair.copy()
    ent_hash = np.empty(1, np.uint64)
    hash_keys(key, np.array([0, 3]), 0, 1, ent_hash)
    table_insert(slots, ent_hash, 0, 0)
    n = len(buf)
    find(pair, 0, 1, buf[:0], 2, 3, slots, ent_hash, np.zeros(1, np.int32), np.array([0, 3]), key)
    find_pairs(np.array([0, 1]), pair[:1], np.array([0, 1]), pair[2:], 1, slots, ent_hash,
               np.zeros(1, np.int32), np.array([0, 3]), key, np.empty(1, np.int32))  # fmt: skip
    scan(
        buf, buf[:0], False, 0, 0, 0, 0, 1, slots, ent_hash, np.zeros(1, np.int32),
        np.array([0, 3]), key, np.empty((MAX_METRICS, 2), np.int64), np.empty(n, np.int32),
        np.empty(n, np.int64), np.empty(n), np.empty((1, 4), np.int64),
    )  # fmt: skip
