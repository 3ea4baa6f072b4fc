"""2-D transposed convolution (ONNX ConvTranspose, torch ConvTranspose2d) with its folded bias/BN and fused ReLU.

The integer program is conv2d's (:func:`gwq_tvm.plan.program.layer_accumulator`)::

    acc = conv2d_transpose(q_in, q_w) + q_b        (int32, unit s_in * s_w,c)
    q_out = clip(SFC(acc, M_c = s_in * s_w,c / s_out))

where, for input ``x`` of ``C_in`` channels, kernel taps ``(a, b)``, stride
``s``, dilation ``d`` and padding ``(top, left, ...)``,
``acc[n, o, i*s_h - top + a*d_h, j*s_w - left + b*d_w] += q_in[n, c, i, j] * q_w[o, c, a, b]``
summed over the input channels ``c`` of ``o``'s group (every output element is a
sum of products of int8 weights and 8-bit activations: the same accumulator as
a convolution, with the same int32 bound ``sum|q_w,o| * max|q_in|``).

**Weight layout.**  ONNX, torch and Relax hold the kernel input-channel first,
``(C_in, C_out/groups, kh, kw)`` (IOHW), so its output channels are axis 1.
The node stores it **output-channel first**, ``(C_out, C_in/groups, kh, kw)``
(:func:`output_major`), so that everything that works per output channel
along axis 0 (per-channel weight scales, the batch-norm/bias folding of
:meth:`~gwq_tvm.extract.Walker.fuse_affine`, the int32 bound, QAT's weight
fake-quantizer) is the conv2d code unchanged; each backend converts back
with :func:`input_major` where it emits the op.  TVM 0.27's
``relax.nn.conv2d_transpose`` builds with uint8/int8 data, int8 weights and
``out_dtype="int32"`` and is exact (checked against the numpy reference, which
scatters the products itself, in ``tests/test_kinds_edge.py``).
"""

from __future__ import annotations

import numpy as np

from . import register
from .layer import ConvKind, pads


def output_major(w: np.ndarray, groups: int) -> np.ndarray:
    """IOHW ``(C_in, C_out/g, kh, kw)`` -> ``(C_out, C_in/g, kh, kw)``: ``out[g*og + o, i] = w[g*cg + i, o]``."""
    ci, og = w.shape[:2]
    cg = ci // groups
    return np.ascontiguousarray(w.reshape((groups, cg, og) + w.shape[2:]).swapaxes(1, 2).reshape((groups * og, cg) + w.shape[2:]))


def input_major(w, groups: int):
    """The inverse of :func:`output_major` (numpy array or torch tensor): back to IOHW."""
    co, cg = w.shape[:2]
    og = co // groups
    return w.reshape((groups, og, cg) + tuple(w.shape[2:])).swapaxes(1, 2).reshape((groups * cg, og) + tuple(w.shape[2:]))


def _torch_conv_transpose(x, w, b, a):
    """``conv2d_transpose`` in torch with Relax's 4-value padding (ONNX allows uneven pads; torch does not).

    The un-padded transposed conv, ``output_padding`` zero rows/columns appended at the
    far ends (no input reaches them), then ``top/left/bottom/right`` cropped.
    """
    import torch.nn.functional as F

    top, left, bottom, right = pads(a["padding"])
    oph, opw = a["output_padding"]
    y = F.conv_transpose2d(x, input_major(w, a["groups"]), None, stride=tuple(a["strides"]),
                           dilation=tuple(a["dilation"]), groups=a["groups"])
    y = F.pad(y, (0, opw, 0, oph))[:, :, top:y.shape[2] + oph - bottom, left:y.shape[3] + opw - right]
    return y if b is None else y + b.reshape(1, -1, 1, 1)


class ConvTranspose2d(ConvKind):
    """The matcher, the backends and the ONNX export are :class:`~.layer.ConvKind`'s, with the kernel made output-channel first.

    No input ``affine`` folds forward: an output near the border sums fewer
    taps than one inside, so the input's shift ``b_c`` would not be one bias.
    """

    name = "conv2d_transpose"
    ops = ("relax.nn.conv2d_transpose",)
    layouts = ("NCHW", "IOHW")
    onnx_op = "ConvTranspose"
    extra_attrs = ("output_padding",)
    folds_input_affine = False

    def kernel(self, weight, groups):
        return output_major(weight, groups)

    def relax_kernel(self, weight, groups):
        return input_major(weight, groups)

    def torch_layer(self, x, w, b, node):
        return _torch_conv_transpose(x, w, b, node.attrs)


register(ConvTranspose2d())
