"""Numba kernels: arrays and scalars in, ``out`` arrays written; no I/O, no Python objects.

Compile options live here only. No fastmath: the kernels rely on NaN checks (``x != x``)
and IEEE semantics. ``cache=True`` keeps compiled code on disk; ``detect.warm_up`` compiles
before the first real batch. ``nogil`` lets a kernel run beside the event loop's thread.

The kernels allocate nothing (scratch space comes from the caller), so they are compiled
without numba's reference counting (``_nrt=False``): with it, every call of a helper such as
``step_alert`` paid atomic reference-count updates on each array argument, about 60 % of the
bank's time. An allocation in a kernel then fails to compile instead of leaking.
"""

from collections.abc import Callable
from typing import Any, TypeVar, cast

from numba import njit

F = TypeVar("F", bound=Callable[..., Any])
# ``_nrt`` is not in numba's typing stubs, hence a plain dict
OPTIONS: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy", "_nrt": False}


def kernel(fn: F) -> F:
    """Compile ``fn`` with the project's numba options."""
    return cast(F, njit(**OPTIONS)(fn))


def kernel_inline(fn: F) -> F:
    """Compile ``fn`` into each kernel that calls it (numba's ``inline="always"``), for small
    helpers on the per-reading path whose call would cost more than their body."""
    return cast(F, njit(inline="always", **OPTIONS)(fn))
