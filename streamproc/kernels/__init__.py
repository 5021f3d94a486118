"""Numba kernels: arrays and scalars in, ``out`` arrays written; no I/O, no Python objects."""
