"""Residual add of two tensors of one shape, with its fused ReLU.

Each input becomes ``t_i = SFC(q_i, 2**P * s_i / s_out)`` in int32 (int64
while a multiply SFC runs), then ``q = clip((t_a + t_b + 2**(P-1)) >> P)``
with ``P = plan.arithmetic.add_precision_bits`` (:func:`gwq_tvm.plan.program.add_inputs`).
"""

from __future__ import annotations

from ..plan import program as P
from . import register
from .base import Kind


class Add(Kind):
    name = "add"
    ops = ("relax.add",)

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import static_shape

        lhs, rhs = call.args
        if not (isinstance(lhs, relax.Var) and isinstance(rhs, relax.Var)) or static_shape(lhs) != static_shape(rhs):
            return False
        var, _, act = w.fuse_activation(w.bindings[i].var, i)
        w.add("add", var, [lhs, rhs], act=act)
        return True

    def sfc_edges(self, graph, node) -> list:
        return [P.SfcEdge(node.name, src, graph.tensor_of(src), node.name, node.elements) for src in node.inputs]

    def recipe(self, graph, node, plan) -> list:
        return P.add_inputs(node, plan)

    def sfcs(self, graph, node, plan) -> dict:
        return dict(zip(node.inputs, P.add_inputs(node, plan)))

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        p = em.plan.arithmetic.add_precision_bits
        ndim = len(node.shape)
        terms = []
        for src, sfc in zip(node.inputs, P.add_inputs(node, em.plan)):
            work = "int64" if sfc.kind == "multiply" else "int32"
            t = em.apply_sfc(em.as_int(src), sfc, ndim, work)
            terms.append(em.emit(R.astype(t, "int32")) if work != "int32" else t)
        y = em.emit(R.add(terms[0], terms[1]))
        if p > 0:
            y = em.emit(R.right_shift(R.add(y, em.const(1 << (p - 1), "int32")), em.const(p, "int32")))
        qmin, qmax = P.out_range(node, em.plan)
        em.set_int(node, em.clip_cast(y, qmin, qmax, P.container(em.plan.tensors[node.name])))

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        em.finish(node, em.emit(R.add(em.values[node.inputs[0]], em.values[node.inputs[1]])))

    def qat(self, run, node) -> None:
        import torch

        from ..qat.fakequant import apply_sfc

        p = run.plan.arithmetic.add_precision_bits
        total = None
        for src, sfc in zip(node.inputs, P.add_inputs(node, run.plan)):
            t = apply_sfc(run.q[src], sfc)
            total = t if total is None else total + t
        if p > 0:
            total = (total + (1 << (p - 1))) >> p
        qmin, qmax = P.out_range(node, run.plan)
        v = run.x[node.inputs[0]] + run.x[node.inputs[1]]
        run.store(node, v, torch.clamp(total, qmin, qmax), qmin, qmax)

    def float_torch(self, node, ins):
        return ins[0] + ins[1]

    def to_onnx(self, writer, node, raw):
        writer.node("Add", list(node.inputs), raw)


register(Add())
