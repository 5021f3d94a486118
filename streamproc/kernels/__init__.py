"""Numba kernels: arrays and scalars in, ``out`` arrays written; no I/O, no Python objects.

Compile options live here only. No fastmath: the kernels rely on NaN checks (``x != x``)
and IEEE semantics. ``cache=True`` keeps compiled code on disk; ``detect.warm_up`` compiles
before the first real batch. ``nogil`` lets a kernel run beside the event loop's thread.
"""

from collections.abc import Callable
from typing import Any, TypeVar, cast

from numba import njit

F = TypeVar("F", bound=Callable[..., Any])


def kernel(fn: F) -> F:
    """Compile ``fn`` with the project's numba options."""
    return cast(F, njit(cache=True, nogil=True, error_model="numpy")(fn))
