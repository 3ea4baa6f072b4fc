"""Dense layer ``x @ W^T`` (a ``matmul`` by a constant) with its folded bias and fused ReLU.

``acc = q_in @ q_w^T + q_b`` in int32, then the SFC ``M_c = s_in * s_w,c / s_out``.
The matcher's folds, QAT and the float teacher are :class:`~.layer.LayerKind`'s.
"""

from __future__ import annotations

import numpy as np

from . import register
from .layer import LayerKind


class Dense(LayerKind):
    name = "dense"
    ops = ("relax.matmul",)
    input_zero_point = True

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import const_value, static_shape

        weight = const_value(call.args[1])
        x = call.args[0]
        if weight is None or weight.ndim != 2 or not isinstance(x, relax.Var) or len(static_shape(x)) != 2:
            return False
        self.add_layer(w, i, x, np.ascontiguousarray(weight.T))
        return True

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        em.accumulate(node, self.accumulator(em.graph, node, em.plan),
                      lambda x, w: R.matmul(x, w, out_dtype="int32"), arrange=np.transpose)

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        y = em.emit(R.matmul(em.values[node.inputs[0]], em.weight_const(node, lambda w: np.ascontiguousarray(w.T))))
        em.finish(node, em.bias(node, y, 2))

    def torch_layer(self, x, w, b, node):
        import torch.nn.functional as F

        return F.linear(x, w, b)

    def to_onnx(self, writer, node, raw):
        writer.node("Gemm", self.onnx_args(writer, node), raw, transB=1)


register(Dense())
