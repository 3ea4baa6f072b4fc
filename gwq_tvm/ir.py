"""Small readers of Relax expressions shared by the graph extractor, the passes and the backends."""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from . import errors


def _keep_error_types_across_passes() -> None:
    """Register gwq-tvm's error classes with TVM's FFI (a TVM 0.27 workaround, done once, here).

    Cause: an exception raised inside a Python ``module_pass`` crosses TVM's
    FFI on its way out, and TVM 0.27 re-raises any class it does not know as
    ``RuntimeError``. A :class:`~gwq_tvm.errors.PlanError` from
    :class:`~gwq_tvm.passes.realize.RealizeIntegerProgram` then reached the CLI
    as an "internal error" instead of the user's one-line error. Registered,
    the FFI re-raises the original class. Tested by
    ``tests/test_core_v2.py::test_gwq_errors_keep_their_type_through_a_pass``.
    """
    for cls in [errors.GwqError, *_subclasses(errors.GwqError)]:
        if cls.__module__ == errors.__name__:
            tvm_ffi.register_error(f"gwq_tvm.{cls.__name__}", cls)


def _subclasses(cls) -> list:
    return [c for s in cls.__subclasses__() for c in (s, *_subclasses(s))]


_keep_error_types_across_passes()


def const_value(expr) -> np.ndarray | None:
    """The numpy value of a Relax constant, ``None`` for anything else."""
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def static_shape(var) -> tuple:
    """The shape of a tensor-typed ``var`` with ``-1`` for each symbolic dimension (``()`` when unknown)."""
    ty = var.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return ()
    return tuple(int(v) if isinstance(v, tvm.tirx.IntImm) else -1 for v in ty.shape.values)


def vars_in(expr) -> list:
    """The Relax variables ``expr`` reads, in argument order (through tuples and tuple accesses)."""
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in vars_in(f)]
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in vars_in(a)]
    if isinstance(expr, relax.TupleGetItem):
        return vars_in(expr.tuple_value)
    return []


def float_call(graph, node, value_of) -> relax.Call:
    """``node.call`` (a ``float`` node) with each graph input replaced by ``value_of(input_name)``.

    Used by every backend that re-emits an op it cannot quantize on its own float values.
    """
    by_var = {graph.nodes[n].var: n for n in node.inputs}

    def remap(arg):
        if isinstance(arg, relax.Var) and arg in by_var:
            return value_of(by_var[arg])
        if isinstance(arg, relax.Tuple):
            return relax.Tuple([remap(f) for f in arg.fields])
        return arg

    call = node.call
    return relax.Call(call.op, [remap(a) for a in call.args], call.attrs, call.ty_args)
