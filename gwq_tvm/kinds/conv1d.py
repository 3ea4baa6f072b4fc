"""1-D convolution (NCW/OIW: torch Conv1d, ONNX Conv on 3-D input) with its folded bias/BN and fused ReLU.

conv2d's integer program on one spatial axis: ``acc = conv1d(q_in, q_w) + q_b``
in int32 (:func:`gwq_tvm.plan.program.layer_accumulator`, the kernel
``(C_out, C_in/groups, k)`` output-channel first as Relax holds it), then the SFC
``M_c = s_in * s_w,c / s_out`` and the clip of the fused activation.  An input
zero point ``z`` folds into the bias as ``-z * sum(q_w,c)`` and the input is
padded with the code ``z``, as for conv2d.
The matcher, the backends and the ONNX export are :class:`~.layer.ConvKind`'s; the torch function is this module's.
"""

from __future__ import annotations

from . import register
from .layer import ConvKind


class Conv1d(ConvKind):
    name = "conv1d"
    ops = ("relax.nn.conv1d",)
    layouts = ("NCW", "OIW")
    input_zero_point = True

    def torch_layer(self, x, w, b, node):
        import torch.nn.functional as F

        a = node.attrs
        left, right = a["padding"]
        return F.conv1d(F.pad(x, (left, right)), w, b, stride=a["strides"][0], dilation=a["dilation"][0], groups=a["groups"])


register(Conv1d())
