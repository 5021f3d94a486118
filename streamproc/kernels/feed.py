"""Compiled passes over a feed chunk's columns (``sources/replay.py``): one loop instead of a
chain of numpy temporaries."""

from __future__ import annotations

import numpy as np

from streamproc.kernels import kernel
from streamproc.times import MS_CUTOFF, MS_PER_S


@kernel
def first_appearance(key: np.ndarray, table: np.ndarray, out: np.ndarray, first: np.ndarray) -> int:
    """Code each ``key`` (0 <= key < len(table)) 0, 1, ... in order of first appearance, into
    ``out``, and the row where code j first appears into ``first[j]``; ``table`` must hold -1
    everywhere. Returns the number of distinct keys."""
    count = 0
    for i in range(len(key)):
        k = key[i]
        c = table[k]
        if c < 0:
            c = table[k] = count
            first[count] = i
            count += 1
        out[i] = c
    return count


@kernel
def extend_key(key: np.ndarray, codes: np.ndarray, size: int) -> None:
    """``key = key * size + codes + 1`` in place: one pass, where numpy takes three."""
    for i in range(len(key)):
        key[i] = key[i] * size + codes[i] + 1


@kernel
def epoch_ms(
    raw: np.ndarray, valid: np.ndarray, limit: int, out: np.ndarray, ok: np.ndarray
) -> None:
    """Integer times, epoch seconds or milliseconds (``times.number_to_ms``), to epoch ms in
    ``out``; ``ok`` where ``valid`` and less than ``limit`` ms from the epoch (else 0)."""
    for i in range(len(raw)):
        r = raw[i]
        ms = r if r >= MS_CUTOFF or r <= -MS_CUTOFF else r * MS_PER_S
        good = valid[i] and -limit < ms < limit
        ok[i] = good
        out[i] = ms if good else 0
