"""Elementwise product of two quantized tensors (squeeze-excitation ``x * gate``), with broadcasting.

Integer program (:func:`gwq_tvm.plan.program.product_accumulator`)::

    acc = (int32(q_a) - z_a) * (int32(q_b) - z_b)  (scale s_a * s_b, zero points z_a, z_b)
    q   = clip(SFC(acc, M = s_a * s_b / s_out))

``b`` may broadcast against ``a`` (the ``N, C, 1, 1`` gate of an SE block over
``N, C, H, W``).  A product of a tensor with itself is a lookup table
(:mod:`.lut`), not this kind.

**GWQ.**  The ratio ``s_a * s_b / s_out`` involves three tensors; the grouping
works with pairwise edges, so the SFC is declared as the edge from the larger
input (the feature map) to the output, and the other input (the gate) is named
by :meth:`Mul.unit_scale_inputs`: the planner gives it a power-of-two scale
(its best one at mantissa 1) when it carries no SFC edge of its own, as an
SE gate produced by a lookup table does.  The SFC is then a shift whenever
the feature map and the output share a group; the reports
(:func:`gwq_tvm.plan.program.sfc_sites`) always show the real kind.
"""

from __future__ import annotations

import numpy as np

from ..plan import program as P
from . import register
from .layer import AccumulatingKind


def _broadcasts(small: tuple, big: tuple) -> bool:
    return len(small) == len(big) and all(s in (b, 1) or b == -1 and s == -1 for s, b in zip(small, big))


class Mul(AccumulatingKind):
    name = "mul"
    ops = ("relax.multiply",)

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import static_shape

        a, b = call.args
        if not (isinstance(a, relax.Var) and isinstance(b, relax.Var)) or a.same_as(b):
            return False
        if not (a in w.var_node and b in w.var_node):
            return False
        sa, sb = static_shape(a), static_shape(b)
        if not sa or not sb:
            return False
        if not _broadcasts(sb, sa):
            if not _broadcasts(sa, sb):
                return False
            a, b = b, a  # the full-size operand first
        var, _, act = w.fuse_activation(w.bindings[i].var, i)
        if static_shape(var) != static_shape(a):
            return False
        w.add("mul", var, [a, b], act=act)
        return True

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        return P.product_accumulator(node, plan)

    def sfc_edges(self, graph, node) -> list:
        if not P.needs_integer_output(graph, node.name):
            return []
        return [P.SfcEdge(node.name, "out", graph.tensor_of(node.inputs[0]), node.name, node.elements)]

    def accepts_zero_point(self, graph, node, layers) -> bool:
        return True

    def unit_scale_inputs(self, graph, node) -> list:
        return [graph.tensor_of(node.inputs[1])]

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        a, b = (em.emit(R.astype(em.as_int(n), "int32")) for n in node.inputs)
        za, zb = (P.zero_point(em.plan, n) for n in node.inputs)
        if za:
            a = em.emit(R.subtract(a, em.const(za, "int32")))
        if zb:
            b = em.emit(R.subtract(b, em.const(zb, "int32")))
        em.finish_acc(node, em.emit(R.multiply(a, b)), self.accumulator(em.graph, node, em.plan))

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        em.finish(node, em.emit(R.multiply(em.values[node.inputs[0]], em.values[node.inputs[1]])))

    def qat(self, run, node) -> None:
        a, b = node.inputs
        scale = np.array([run.plan.scale(a) * run.plan.scale(b)])
        run.finish_acc(node, run.x[a] * run.x[b], run.q[a] * run.q[b], scale, run.s(a) * run.s(b))

    def float_torch(self, node, ins):
        return ins[0] * ins[1]

    def to_onnx(self, writer, node, raw):
        writer.node("Mul", list(node.inputs), raw)


register(Mul())
