"""2-D convolution (NCHW/OIHW) with its folded bias/batch norm and fused ReLU.

``acc = conv2d(q_in, q_w) + q_b`` in int32 (:func:`gwq_tvm.plan.program.layer_accumulator`),
then the SFC ``M_c = s_in * s_w,c / s_out`` and the clip of the fused activation.
The matcher, the backends and the ONNX export are :class:`~.layer.ConvKind`'s; the torch function is this module's.
"""

from __future__ import annotations

from dataclasses import replace

from . import register
from .layer import ConvKind, pads


class Conv2d(ConvKind):
    name = "conv2d"
    ops = ("relax.nn.conv2d",)
    layouts = ("NCHW", "OIHW")
    input_zero_point = True

    def torch_layer(self, x, w, b, node):
        """``F.conv2d``; an uneven padding (ONNX allows it, torch does not) is an explicit ``F.pad`` first."""
        import torch.nn.functional as F

        a = node.attrs
        top, left, bottom, right = pads(a["padding"])
        if (top, left) != (bottom, right):
            x, pad = F.pad(x, (left, right, top, bottom)), 0
        else:
            pad = (top, left)
        return F.conv2d(x, w, b, stride=tuple(a["strides"]), padding=pad, dilation=tuple(a["dilation"]), groups=a["groups"])

    def float_torch(self, node, ins):
        """The teacher pads explicitly always (F.conv2d's own padding differs from it in the last bits on some shapes)."""
        import torch.nn.functional as F

        top, left, bottom, right = pads(node.attrs["padding"])
        unpadded = replace(node, attrs={**node.attrs, "padding": [0, 0, 0, 0]})
        return super().float_torch(unpadded, [F.pad(ins[0], (left, right, top, bottom))])


register(Conv2d())
