"""Concatenation of quantized tensors: each input ``clip(SFC(q_i - z_i, s_i / s_out) + z_out)``, then joined.

An input whose tensor already has the output's quantization (scale and zero
point) is joined as it is.  Zero points are exact here: ``q_i - z_i`` is the
input's real value in units of ``s_i``, and ``+ z_out`` puts it on the output's
codes, so inputs and output may each carry one (DenseNet's joined feature maps,
whose pre-activation conv outputs are skewed).
"""

from __future__ import annotations

from ..plan import program as P
from . import register
from .base import Kind


class Concat(Kind):
    name = "concat"
    ops = ("relax.concat",)
    zero_point_out = True

    def accepts_zero_point(self, graph, node, layers) -> bool:
        return True

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import static_shape

        fields = call.args[0]
        if not isinstance(fields, relax.Tuple) or not all(isinstance(f, relax.Var) for f in fields.fields):
            return False
        axis = int(call.attrs.axis) if call.attrs.axis is not None else 0
        w.add("concat", w.bindings[i].var, list(fields.fields), attrs=dict(axis=axis % len(static_shape(fields.fields[0]))))
        return True

    def sfc_edges(self, graph, node) -> list:
        return [P.SfcEdge(node.name, src, graph.tensor_of(src), node.name, graph.nodes[src].elements) for src in node.inputs]

    def recipe(self, graph, node, plan) -> list:
        return P.concat_inputs(node, plan)

    def sfcs(self, graph, node, plan) -> dict:
        return dict(zip(node.inputs, P.concat_inputs(node, plan)))

    @staticmethod
    def _joined_as_is(plan, node, src, sfc) -> bool:
        return sfc.kind == "identity" and plan.tensors[src] == plan.tensors[node.name]

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        from ..passes.realize import const

        qmin, qmax = P.out_range(node, em.plan)
        dtype = P.container(em.plan.tensors[node.name])
        z_out = P.zero_point(em.plan, node.name)
        parts = []
        for src, sfc in zip(node.inputs, P.concat_inputs(node, em.plan)):
            x = em.as_int(src)
            if self._joined_as_is(em.plan, node, src, sfc):
                parts.append(x)
                continue
            work = "int64" if sfc.kind == "multiply" else "int32"
            z_in = P.zero_point(em.plan, src)
            if z_in:
                x = em.emit(R.subtract(em.cast(x, work), const(z_in, work)))
            x = em.apply_sfc(x, sfc, len(node.shape), work)
            if z_out:
                x = em.emit(R.add(x, const(z_out, work)))
            parts.append(em.clip_cast(x, qmin, qmax, dtype))
        em.set_int(node, em.emit(R.concat(parts, axis=node.attrs["axis"])))

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        em.finish(node, em.emit(R.concat([em.values[n] for n in node.inputs], axis=node.attrs["axis"])))

    def qat(self, run, node) -> None:
        import torch

        from ..qat.fakequant import apply_sfc

        qmin, qmax = P.out_range(node, run.plan)
        axis = node.attrs["axis"]
        parts = []
        for src, sfc in zip(node.inputs, P.concat_inputs(node, run.plan)):
            if self._joined_as_is(run.plan, node, src, sfc):
                parts.append(run.q[src])
            else:
                parts.append(torch.clamp(apply_sfc(run.q[src], sfc), qmin, qmax))
        v = torch.cat([run.x[src] for src in node.inputs], dim=axis)
        run.store(node, v, torch.cat(parts, dim=axis), qmin, qmax)

    def float_torch(self, node, ins):
        import torch

        return torch.cat(ins, dim=node.attrs["axis"])

    def to_onnx(self, writer, node, raw):
        writer.node("Concat", list(node.inputs), raw, axis=int(node.attrs["axis"]))


register(Concat())
