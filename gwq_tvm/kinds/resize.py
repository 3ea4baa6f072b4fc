"""Nearest-neighbour upsampling by integer factors (YOLO necks, U-Net decoders): a passthrough repeat.

For an output ``o = k * i + r`` (``0 <= r < k``) the source row of
``resize2d(method="nearest_neighbor")`` is ``i`` under the coordinate rules
taken here (``asymmetric`` with ``floor``: ``floor(o / k) = i``;
``half_pixel`` / ``pytorch_half_pixel`` with rounding:
``round((o + 1/2) / k - 1/2)`` lies strictly within ``i +- 1/2``), so the op
is ``repeat(repeat(q, k_h, axis=2), k_w, axis=3)`` on the integers, the scale
kept.  TVM's own integer resize computes its coordinates in float (not
integer-only), hence the rewrite.  Other factors and modes stay float.
"""

from __future__ import annotations

from . import register
from .layout import LayoutKind

#: (coordinate_transformation_mode, rounding_method) pairs under which nearest upsampling by k repeats
REPEATING = {("asymmetric", "floor"), ("half_pixel", "round"), ("half_pixel", "round_prefer_floor"),
             ("half_pixel", "round_prefer_ceil"), ("pytorch_half_pixel", "round"),
             ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil"),
             ("tf_half_pixel_for_nn", "floor")}


class Resize(LayoutKind):
    name = "resize"
    ops = ("relax.image.resize2d",)

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import static_shape

        x, a = call.args[0], call.attrs
        if not isinstance(x, relax.Var) or x not in w.var_node or a.layout != "NCHW" or a.method != "nearest_neighbor":
            return False
        if (str(a.coordinate_transformation_mode), str(a.rounding_method)) not in REPEATING:
            return False
        (_, _, h, wd), (_, _, oh, ow) = static_shape(x), static_shape(w.bindings[i].var)
        if min(h, wd, oh, ow) < 1 or oh % h or ow % wd:
            return False
        w.add("resize", w.bindings[i].var, [x], attrs=dict(factors=(oh // h, ow // wd)))
        return True

    def relax_op(self, x, node):
        from tvm.relax import op as R

        kh, kw = node.attrs["factors"]
        return R.repeat(R.repeat(x, kh, axis=2), kw, axis=3)

    def torch_op(self, t, node):
        kh, kw = node.attrs["factors"]
        return t.repeat_interleave(kh, dim=2).repeat_interleave(kw, dim=3)

    def to_onnx(self, writer, node, raw):
        import numpy as np

        kh, kw = node.attrs["factors"]
        scales = writer.const(f"{node.name}_scales", np.array([1, 1, kh, kw], np.float32))
        writer.node("Resize", [node.inputs[0], "", scales], raw, mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")


register(Resize())
