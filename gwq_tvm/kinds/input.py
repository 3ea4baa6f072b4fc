"""The model input: quantized once, in float32, at the program's entry.

``q = clip(floor(x / s + 1/2), qmin, qmax)`` with ``s`` a float32 constant
(the only float arithmetic before the integer region).
"""

from __future__ import annotations

from . import register
from .base import Kind


class Input(Kind):
    name = "input"
    #: the program quantizes the input as ``floor(x / s + 1/2) + z``
    zero_point_out = True

    def realize(self, em, node) -> None:
        em.set_float(node, em.param)

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        em.finish(node, em.emit(R.astype(em.param, em.dtype)))

    def qat(self, run, node) -> None:
        import torch

        from ..plan import scales as S

        tq = run.plan.tensors[node.name]
        s = run.plan.scale(node.name)
        qmin, qmax = S.qrange(tq.bits, tq.signed)
        # The compiled program quantizes in float32: floor(x / s + 0.5) with s a float32 constant.
        x32 = run.inputs.detach().to(torch.float32)
        q = torch.floor(x32 / torch.tensor(s, dtype=torch.float32) + torch.tensor(0.5, dtype=torch.float32))
        q = torch.clamp(q, qmin, qmax).to(torch.int64)
        run.store(node, run.inputs.to(run.dtype), q, qmin, qmax)

    def float_torch(self, node, ins):
        return ins[0]


register(Input())
