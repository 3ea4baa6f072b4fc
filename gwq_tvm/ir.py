"""Small readers of Relax expressions shared by the graph extractor, the passes and the backends."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


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
