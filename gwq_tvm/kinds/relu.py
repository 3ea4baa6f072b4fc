"""A ReLU or ReLU-like clip that no layer absorbed: a clip of the integers, same scale (passthrough)."""

from __future__ import annotations

import math

from ..plan import program as P
from . import register
from .base import Kind


class Relu(Kind):
    name = "relu"
    ops = ("relax.nn.relu", "relax.clip")
    passthrough = True

    def match(self, w, i, call) -> bool:
        from ..extract import activation_bounds

        act = activation_bounds(call)
        if act is None:
            return False
        w.add("relu", w.bindings[i].var, [call.args[0]], act=act)
        return True

    def realize(self, em, node) -> None:
        from tvm import relax
        from tvm.relax import op as R

        x = em.as_int(node.inputs[0])
        qmin, qmax = P.out_range(node, em.plan)
        em.set_int(node, em.emit(R.clip(x, relax.prim_value(qmin), relax.prim_value(qmax))))

    def simulate(self, em, node) -> None:
        from tvm import relax
        from tvm.relax import op as R

        lo, hi = node.act if node.act is not None else (0.0, float("inf"))
        em.values[node.name] = em.emit(R.clip(em.values[node.inputs[0]], relax.prim_value(lo), relax.prim_value(min(hi, 3.0e38))))

    def qat(self, run, node) -> None:
        import torch

        from ..qat.fakequant import fake_quant

        qmin, qmax = P.out_range(node, run.plan)
        src = node.inputs[0]
        q = torch.clamp(run.q[src], qmin, qmax)
        run.q[node.name] = q
        run.x[node.name] = fake_quant(run.x[src], run.s(node.name), q, qmin, qmax)

    def float_torch(self, node, ins):
        import torch

        lo, hi = node.act if node.act is not None else (0.0, math.inf)
        return torch.clamp(ins[0], lo, hi)

    def to_onnx(self, writer, node, raw):
        lo, hi = node.act if node.act is not None else (0.0, math.inf)
        return writer.relu(node.name, node.inputs[0], lo, hi)


register(Relu())
