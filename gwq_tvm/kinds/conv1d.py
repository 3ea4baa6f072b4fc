"""1-D convolution (NCW/OIW: torch Conv1d, ONNX Conv on 3-D input) with its folded bias/BN and fused ReLU.

conv2d's integer program on one spatial axis: ``acc = conv1d(q_in, q_w) + q_b``
in int32 (:func:`gwq_tvm.plan.program.layer_accumulator`, the kernel
``(C_out, C_in/groups, k)`` output-channel first as Relax holds it), then the SFC
``M_c = s_in * s_w,c / s_out`` and the clip of the fused activation.
"""

from __future__ import annotations

import numpy as np

from ..plan import program as P
from . import register
from .layer import AccumulatingKind


class Conv1d(AccumulatingKind):
    name = "conv1d"
    ops = ("relax.nn.conv1d",)

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import const_value

        weight = const_value(call.args[1])
        a = call.attrs
        if (
            weight is None
            or weight.ndim != 3
            or not isinstance(call.args[0], relax.Var)
            or a.data_layout != "NCW"
            or a.kernel_layout != "OIW"
            or (a.out_layout or "NCW") != "NCW"
        ):
            return False
        x, weight, bias = w.fold_input_affine(call.args[0], i, weight, int(a.groups), a.padding)
        var, j, weight, bias = w.fuse_affine(w.bindings[i].var, i, weight, 3, bias)
        var, j, act = w.fuse_activation(var, j)
        attrs = dict(strides=[int(v) for v in a.strides], padding=[int(v) for v in a.padding],
                     dilation=[int(v) for v in a.dilation], groups=int(a.groups))
        w.add(self.name, var, [x], attrs=attrs, weight=weight, bias=bias, act=act)
        return True

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        return P.layer_accumulator(node, plan)

    def _relax(self, x, w, node, **kw):
        from tvm.relax import op as R

        a = node.attrs
        return R.nn.conv1d(x, w, strides=a["strides"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"], **kw)

    def realize(self, em, node) -> None:
        em.accumulate(node, self.accumulator(em.graph, node, em.plan),
                      lambda x, w: self._relax(x, w, node, out_dtype="int32"))

    def simulate(self, em, node) -> None:
        y = em.emit(self._relax(em.values[node.inputs[0]], em.const(em.weight(node)), node))
        em.finish(node, em.bias(node, y, 3))

    @staticmethod
    def _torch(x, w, b, a):
        import torch.nn.functional as F

        left, right = a["padding"]
        return F.conv1d(F.pad(x, (left, right)), w, b, stride=a["strides"][0], dilation=a["dilation"][0], groups=a["groups"])

    def qat(self, run, node) -> None:
        wq, b, unit, acc_scale = run.layer(node)
        v = self._torch(run.x[node.inputs[0]], wq, b, node.attrs)
        run.finish_acc(node, v, run.round_int(v, unit), acc_scale, unit)

    def float_torch(self, node, ins):
        import torch

        w = torch.from_numpy(node.weight.astype(np.float32))
        b = torch.from_numpy(node.bias.astype(np.float32)) if node.bias is not None else None
        return self._torch(ins[0], w, b, node.attrs)

    def to_onnx(self, writer, node, raw):
        n, a = node.name, node.attrs
        args = list(node.inputs) + [writer.const(f"{n}_w", writer.weights[n])]
        if n in writer.biases:
            args.append(writer.const(f"{n}_b", writer.biases[n]))
        writer.node("Conv", args, raw, strides=list(a["strides"]), pads=list(a["padding"]), dilations=list(a["dilation"]),
                    group=int(a["groups"]), kernel_shape=list(writer.weights[n].shape[2:]))


register(Conv1d())
