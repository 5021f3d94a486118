"""A software prefetch for the kernels: ask the CPU to bring an array element into cache
without waiting for it (LLVM's ``llvm.prefetch``; a no-op where the target has none).

At a million channels a reading's state sits in several cache lines that are not in cache;
the reading kernel prefetches them a few readings ahead so that the misses overlap with the
work on the readings before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LINE = 64  # bytes in a cache line


def _item(context: Any, builder: Any, sig: Any, args: Any) -> tuple[Any, Any]:
    """The array's structure and the address of the element the index arguments name."""
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    pairs = zip(args[1:], sig.args[1:], strict=True)
    idx = [context.cast(builder, v, t, types.intp) for v, t in pairs]
    idx += [context.get_constant(types.intp, 0)] * (aryty.ndim - len(idx))
    return ary, cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)


def _emit(builder: Any, ptr: Any) -> None:
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
    )
    # read access, keep in all cache levels, data cache
    builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])


def _codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
    _, ptr = _item(context, builder, sig, args)
    _emit(builder, ptr)
    return context.get_dummy_value()


def _codegen_record(context: Any, builder: Any, sig: Any, args: Any) -> Any:
    ary, ptr = _item(context, builder, sig, args)
    intp = context.get_value_type(types.intp)
    first = builder.and_(builder.ptrtoint(ptr, intp), intp(-LINE))
    stride = cgutils.unpack_tuple(builder, ary.strides, 1)[0]
    lines = builder.udiv(builder.add(stride, intp(LINE - 1)), intp(LINE))
    with cgutils.for_range(builder, lines) as loop:
        at = builder.add(first, builder.mul(loop.index, intp(LINE)))
        _emit(builder, builder.inttoptr(at, ir.IntType(8).as_pointer()))
    return context.get_dummy_value()


def _prefetch(typingctx: Any, arr: Any, i: Any) -> Any:
    if isinstance(arr, types.Array) and isinstance(i, types.Integer):
        return types.none(arr, i), _codegen
    return None


def _prefetch2(typingctx: Any, arr: Any, i: Any, j: Any) -> Any:
    ok = isinstance(i, types.Integer) and isinstance(j, types.Integer)
    if isinstance(arr, types.Array) and arr.ndim == 2 and ok:
        return types.none(arr, i, j), _codegen
    return None


def _prefetch_record(typingctx: Any, arr: Any, i: Any) -> Any:
    if isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer):
        return types.none(arr, i), _codegen_record
    return None


# typed for callers: numba passes ``typingctx`` itself
prefetch = cast(Callable[[Any, int], None], intrinsic(_prefetch))
"""Prefetch ``arr[i]`` (for a 2-D array, the start of row ``i``)."""
prefetch2 = cast(Callable[[Any, int, int], None], intrinsic(_prefetch2))
"""Prefetch ``arr[i, j]`` of a 2-D array."""
prefetch_record = cast(Callable[[Any, int], None], intrinsic(_prefetch_record))
"""Prefetch every cache line of the record that holds ``arr[i]``: ``arr`` is a field in the
first cache line of records that start on one (its stride is the record's size)."""
