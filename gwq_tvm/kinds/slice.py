"""Strided slices of a quantized tensor, and the sections of a ``split``: passthrough.

``strided_slice`` (positive strides) is one node; ``split`` is a tuple op whose
``TupleGetItem`` users are each a slice node of the split's input (the tuple
itself is never materialized).  The attributes are normalized to
``axes, begin, end, strides`` with ``0 <= begin <= end <= dim``.
"""

from __future__ import annotations

from . import register
from .layout import LayoutKind


def _ints(expr) -> list[int]:
    """A Relax tuple of prim values / a shape / a list as Python ints."""
    from tvm import relax

    if isinstance(expr, relax.ShapeExpr):
        return [int(v) for v in expr.values]
    fields = expr.fields if isinstance(expr, relax.Tuple) else expr
    return [int(getattr(f, "value", f)) for f in fields]


def _normalize(shape, axes, begin, end, strides):
    """Clamped ``(axes, begin, end, strides)`` tuples, or ``None`` for what the kind does not take."""
    out = ([], [], [], [])
    for a, b, e, s in zip(axes, begin, end, strides):
        a %= len(shape)
        dim = shape[a]
        if dim < 0 or s <= 0:
            return None
        b = min(max(b + dim if b < 0 else b, 0), dim)
        e = min(max(e + dim if e < 0 else e, 0), dim)
        for lst, v in zip(out, (a, b, max(e, b), s)):
            lst.append(v)
    return tuple(tuple(v) for v in out)


class Slice(LayoutKind):
    name = "slice"
    ops = ("relax.strided_slice", "relax.split")

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import static_shape

        x = call.args[0]
        if not isinstance(x, relax.Var) or x not in w.var_node:
            return False
        shape = static_shape(x)
        if call.op.name == "relax.strided_slice":
            axes, begin, end = (_ints(a) for a in call.args[1:4])
            strides = _ints(call.args[4]) if len(call.args) > 4 and call.args[4] is not None else [1] * len(axes)
            found = _normalize(shape, axes, begin, end, strides)
            if found is None:
                return False
            w.add("slice", w.bindings[i].var, [x], attrs=dict(zip(("axes", "begin", "end", "strides"), found)))
            return True
        return self._split(w, i, call, x, shape)

    @staticmethod
    def _split(w, i, call, x, shape) -> bool:
        from tvm import relax

        axis = int(call.attrs.axis) % len(shape)
        dim, cuts = shape[axis], call.attrs.indices_or_sections
        if dim < 0:
            return False
        if isinstance(cuts, (int,)) or hasattr(cuts, "value"):
            n = int(getattr(cuts, "value", cuts))
            step = -(-dim // n)
            bounds = [min(k * step, dim) for k in range(n + 1)]
        else:
            bounds = [0] + [int(c) for c in cuts] + [dim]
        tuple_var = w.bindings[i].var
        users = w.users.get(tuple_var, [])
        gets = [(j, w.bindings[j]) for j in users]
        if tuple_var in w.out_vars or not users or not all(isinstance(b.value, relax.TupleGetItem) for _, b in gets):
            return False
        for j, b in gets:
            k = int(b.value.index)
            w.add("slice", b.var, [x], attrs=dict(axes=(axis,), begin=(bounds[k],), end=(bounds[k + 1],), strides=(1,)))
            w.absorbed.add(j)
        return True

    def relax_op(self, x, node):
        from tvm.relax import op as R

        a = node.attrs
        return R.strided_slice(x, list(a["axes"]), list(a["begin"]), list(a["end"]), list(a["strides"]))

    def torch_op(self, t, node):
        a = node.attrs
        index = [slice(None)] * t.ndim
        for axis, b, e, s in zip(a["axes"], a["begin"], a["end"], a["strides"]):
            index[axis] = slice(b, e, s)
        return t[tuple(index)]

    def to_onnx(self, writer, node, raw):
        import numpy as np

        a, n = node.attrs, node.name
        names = [writer.const(f"{n}_{k}", np.array(a[k], np.int64)) for k in ("begin", "end", "axes", "strides")]
        writer.node("Slice", [node.inputs[0], *names], raw)


register(Slice())
