"""Numba kernels: arrays and scalars in, ``out`` arrays written; no I/O, no Python objects.

Compile options live here only. No fastmath: the kernels rely on NaN checks (``x != x``)
and IEEE semantics. ``cache=True`` keeps compiled code on disk; ``detect.warm_up`` compiles
before the first real batch.
"""

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}
