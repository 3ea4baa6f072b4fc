"""Transpose / ``permute_dims`` of a quantized tensor (channel shuffle, NHWC flatten): passthrough.

ShuffleNet's channel shuffle is ``reshape -> permute_dims -> reshape``, a
Keras-style flatten ``permute_dims(0, 2, 3, 1) -> reshape``: each op is a
passthrough node (:mod:`.reshape`, this kind), the integers are moved, the
scale is kept.
"""

from __future__ import annotations

import numpy as np

from . import register
from .layout import LayoutKind


class Permute(LayoutKind):
    name = "permute"
    ops = ("relax.permute_dims",)

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import static_shape

        x = call.args[0]
        if not isinstance(x, relax.Var) or x not in w.var_node:
            return False
        ndim = len(static_shape(x))
        axes = [int(a) % ndim for a in call.attrs.axes] if call.attrs.axes is not None else list(range(ndim))[::-1]
        w.add("permute", w.bindings[i].var, [x], attrs=dict(axes=tuple(axes)))
        return True

    def relax_op(self, x, node):
        from tvm.relax import op as R

        return R.permute_dims(x, list(node.attrs["axes"]))

    def torch_op(self, t, node):
        return t.permute(*node.attrs["axes"])

    def to_onnx(self, writer, node, raw):
        writer.node("Transpose", list(node.inputs), raw, perm=[int(a) for a in np.asarray(node.attrs["axes"])])


register(Permute())
