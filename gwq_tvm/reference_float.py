"""Evaluate one float Relax op the numpy reference has no rule for, with a small TVM-compiled function.

The numpy reference (:mod:`gwq_tvm.reference`) interprets the integer
program op by op.  Ops a model keeps in float (LRN, a mid-graph softmax,
LayerNorm, power, ...: the ``float`` nodes between a dequantize and a
quantize) are not what it checks; it only needs their values to go on.  For
an op without a numpy rule, :func:`run_float_op` builds a Relax function
holding that single call, compiles it with plain ``tvm.compile`` for this
CPU and runs it::

    main(a_0, ..., a_k) = op(a_0, ..., a_k; attrs)

so its float results are TVM's own (the same legalized TIR as the compiled
module's kernel), not an independent check.  The integer arithmetic around
the island (dequantize ``q * s``, requantize ``clip(floor(y / s + 1/2))``,
every integer op) stays interpreted by numpy.  Compiled functions are cached
by the call's structure and argument shapes.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
import tvm_ffi
from tvm import relax


@functools.lru_cache(maxsize=1)
def _target() -> tvm.target.Target:
    mcpu = tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", **({"mcpu": mcpu} if mcpu and mcpu != "generic" else {})})


_CACHE: dict = {}


def _param_for(value, names: list, values: list):
    """A fresh parameter for array ``value`` (recorded in ``names``/``values``)."""
    arr = np.ascontiguousarray(value)
    var = relax.Var(f"a{len(names)}", relax.TensorType(list(arr.shape), str(arr.dtype)))
    names.append(var)
    values.append(arr)
    return var


def _rebuild(arg, value, params: list, values: list):
    """``arg`` with every array-valued part replaced by a parameter, and a shape by its evaluated value
    (a symbolic batch in ``broadcast_to(x, (n, ...))`` has no value in the one-op function); constants and
    prim values are kept."""
    if isinstance(arg, relax.ShapeExpr):
        return relax.ShapeExpr([int(v) for v in value])
    if isinstance(arg, relax.Tuple):
        return relax.Tuple([_rebuild(f, v, params, values) for f, v in zip(arg.fields, value)])
    if isinstance(value, np.ndarray) and not isinstance(arg, tvm.ir.GenericConst):
        return _param_for(value, params, values)
    return arg


def run_float_op(call: relax.Call, args: list):
    """``call`` evaluated by TVM on the numpy ``args`` (the already evaluated arguments, in order).

    Returns
    -------
    numpy.ndarray or list of numpy.ndarray
        The op's output (a list for a tuple-valued op).
    """
    params: list = []
    values: list = []
    new_args = [_rebuild(a, v, params, values) for a, v in zip(call.args, args)]
    body = relax.Call(call.op, new_args, call.attrs, call.ty_args)
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        out = bb.emit(body)
        bb.emit_func_output(out)
    mod = bb.get()
    key = tvm_ffi.structural_hash(mod)
    entry = _CACHE.get(key)
    if entry is None or not tvm_ffi.structural_equal(entry[0], mod):
        entry = (mod, relax.VirtualMachine(tvm.compile(mod, _target()), tvm.cpu()))
        _CACHE[key] = entry
    result = entry[1]["main"](*(tvm.runtime.tensor(v) for v in values))
    if hasattr(result, "numpy"):
        return result.numpy()
    return [r.numpy() for r in result]
