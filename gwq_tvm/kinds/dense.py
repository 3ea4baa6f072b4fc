"""Dense layer ``x @ W^T`` (a ``matmul`` by a constant) with its folded bias and fused ReLU.

``acc = q_in @ q_w^T + q_b`` in int32, then the SFC ``M_c = s_in * s_w,c / s_out``.
"""

from __future__ import annotations

import numpy as np

from ..plan import program as P
from . import register
from .layer import AccumulatingKind


class Dense(AccumulatingKind):
    name = "dense"
    ops = ("relax.matmul",)

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import const_value, static_shape

        weight = const_value(call.args[1])
        x = call.args[0]
        if weight is None or weight.ndim != 2 or not isinstance(x, relax.Var) or len(static_shape(x)) != 2:
            return False
        x, weight_t, bias = w.fold_input_affine(x, i, np.ascontiguousarray(weight.T))
        var, j, weight_t, bias = w.fuse_affine(w.bindings[i].var, i, weight_t, 2, bias)
        var, j, act = w.fuse_activation(var, j)
        w.add("dense", var, [x], weight=weight_t, bias=bias, act=act)
        return True

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        return P.layer_accumulator(node, plan)

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        em.accumulate(node, self.accumulator(em.graph, node, em.plan),
                      lambda x, w: R.matmul(x, w, out_dtype="int32"), arrange=np.transpose)

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        y = em.emit(R.matmul(em.values[node.inputs[0]], em.weight_const(node, lambda w: np.ascontiguousarray(w.T))))
        em.finish(node, em.bias(node, y, 2))

    def qat(self, run, node) -> None:
        import torch.nn.functional as F

        wq, b, unit, acc_scale = run.layer(node)
        v = F.linear(run.x[node.inputs[0]], wq, b)
        run.finish_acc(node, v, run.round_int(v, unit), acc_scale, unit)

    def float_torch(self, node, ins):
        import torch
        import torch.nn.functional as F

        b = torch.from_numpy(node.bias.astype(np.float32)) if node.bias is not None else None
        return F.linear(ins[0], torch.from_numpy(node.weight.astype(np.float32)), b)

    def to_onnx(self, writer, node, raw):
        n = node.name
        args = list(node.inputs) + [writer.const(f"{n}_w", writer.weights[n])]
        if n in writer.biases:
            args.append(writer.const(f"{n}_b", writer.biases[n]))
        writer.node("Gemm", args, raw, transB=1)


register(Dense())
