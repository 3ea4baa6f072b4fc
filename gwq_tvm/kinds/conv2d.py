"""2-D convolution (NCHW/OIHW) with its folded bias/batch norm and fused ReLU.

``acc = conv2d(q_in, q_w) + q_b`` in int32 (:func:`gwq_tvm.plan.program.layer_accumulator`),
then the SFC ``M_c = s_in * s_w,c / s_out`` and the clip of the fused activation.
"""

from __future__ import annotations

import numpy as np

from ..plan import program as P
from . import register
from .layer import AccumulatingKind, pads


class Conv2d(AccumulatingKind):
    name = "conv2d"
    ops = ("relax.nn.conv2d",)

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import const_value

        weight = const_value(call.args[1])
        a = call.attrs
        if (
            weight is None
            or not isinstance(call.args[0], relax.Var)
            or a.data_layout != "NCHW"
            or a.kernel_layout != "OIHW"
            or a.out_layout != "NCHW"
        ):
            return False
        x, weight, bias = w.fold_input_affine(call.args[0], i, weight, int(a.groups), a.padding)
        var, j, weight, bias = w.fuse_affine(w.bindings[i].var, i, weight, 4, bias)
        var, j, act = w.fuse_activation(var, j)
        attrs = dict(strides=[int(v) for v in a.strides], padding=[int(v) for v in a.padding],
                     dilation=[int(v) for v in a.dilation], groups=int(a.groups))
        w.add("conv2d", var, [x], attrs=attrs, weight=weight, bias=bias, act=act)
        return True

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        return P.layer_accumulator(node, plan)

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        a = node.attrs
        em.accumulate(node, self.accumulator(em.graph, node, em.plan), lambda x, w: R.nn.conv2d(
            x, w, strides=a["strides"], padding=a["padding"], dilation=a["dilation"],
            groups=a["groups"], out_dtype="int32"))

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        a = node.attrs
        y = em.emit(R.nn.conv2d(em.values[node.inputs[0]], em.weight_const(node), strides=a["strides"],
                                padding=a["padding"], dilation=a["dilation"], groups=a["groups"]))
        em.finish(node, em.bias(node, y, 4))

    def qat(self, run, node) -> None:
        import torch.nn.functional as F

        a = node.attrs
        wq, b, unit, acc_scale = run.layer(node)
        xin = run.x[node.inputs[0]]
        top, left, bottom, right = pads(a["padding"])
        if (top, left) != (bottom, right):
            xin, pad = F.pad(xin, (left, right, top, bottom)), 0
        else:
            pad = (top, left)
        v = F.conv2d(xin, wq, b, stride=tuple(a["strides"]), padding=pad, dilation=tuple(a["dilation"]), groups=a["groups"])
        run.finish_acc(node, v, run.round_int(v, unit), acc_scale, unit)

    def float_torch(self, node, ins):
        import torch
        import torch.nn.functional as F

        a = node.attrs
        top, left, bottom, right = pads(a["padding"])
        w = torch.from_numpy(node.weight.astype(np.float32))
        b = torch.from_numpy(node.bias.astype(np.float32)) if node.bias is not None else None
        return F.conv2d(F.pad(ins[0], (left, right, top, bottom)), w, b, stride=tuple(a["strides"]),
                        dilation=tuple(a["dilation"]), groups=a["groups"])

    def to_onnx(self, writer, node, raw):
        n, a = node.name, node.attrs
        args = list(node.inputs) + [writer.const(f"{n}_w", writer.weights[n])]
        if n in writer.biases:
            args.append(writer.const(f"{n}_b", writer.biases[n]))
        writer.node("Conv", args, raw, strides=list(a["strides"]), pads=list(a["padding"]), dilations=list(a["dilation"]),
                    group=int(a["groups"]), kernel_shape=list(writer.weights[n].shape[2:]))


register(Conv2d())
