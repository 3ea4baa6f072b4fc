"""2-D max pooling: the max of integers is the integer of the max (passthrough, same scale).

A global max pool (ONNX ``GlobalMaxPool``, ``ReduceMax`` over H, W with
``keepdims``: ``relax.max(x, [2, 3], keepdims=True)``) is the max pool whose
window is the whole ``H x W`` map.
"""

from __future__ import annotations

from . import register
from .base import Kind
from .layer import pads


class MaxPool(Kind):
    name = "maxpool"
    ops = ("relax.nn.max_pool2d", "relax.max")
    passthrough = True

    def accepts_zero_point(self, graph, node, layers) -> bool:
        return True  # max is monotonic in the code; padding takes the lowest code

    def match(self, w, i, call) -> bool:
        if call.op.name == "relax.max":
            return self._match_global(w, i, call)
        a = call.attrs
        if a.layout != "NCHW" or a.out_layout != "NCHW":
            return False
        ints = lambda v: [int(x) for x in v]  # noqa: E731
        attrs = dict(pool_size=ints(a.pool_size), strides=ints(a.strides), padding=ints(a.padding),
                     dilation=ints(a.dilation), ceil_mode=bool(a.ceil_mode))
        w.add("maxpool", w.bindings[i].var, [call.args[0]], attrs=attrs)
        return True

    def _match_global(self, w, i, call) -> bool:
        """``max(x, axis=[2, 3], keepdims=True)`` of a 4-D map of static ``H x W``: the ``H x W`` window."""
        from ..ir import static_shape

        shape = static_shape(call.args[0])
        if len(shape) != 4 or min(shape[2:]) < 1 or call.attrs.axis is None or not bool(call.attrs.keepdims):
            return False
        if sorted(int(a) % 4 for a in call.attrs.axis) != [2, 3]:
            return False
        attrs = dict(pool_size=list(shape[2:]), strides=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1], ceil_mode=False)
        w.add("maxpool", w.bindings[i].var, [call.args[0]], attrs=attrs)
        return True

    @staticmethod
    def _pool(R, x, a):
        return R.nn.max_pool2d(x, pool_size=a["pool_size"], strides=a["strides"], padding=a["padding"],
                               dilation=a["dilation"], ceil_mode=a["ceil_mode"])

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        em.set_int(node, em.emit(self._pool(R, em.as_int(node.inputs[0]), node.attrs)))

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        em.values[node.name] = em.emit(self._pool(R, em.values[node.inputs[0]], node.attrs))

    def _torch_pool(self, node, t):
        import torch.nn.functional as F

        from ..errors import UnsupportedOpError

        a = node.attrs
        top, left, bottom, right = pads(a["padding"])
        if (top, left) != (bottom, right):
            raise UnsupportedOpError(f"{node.name}: QAT supports symmetric max-pool padding only")
        return F.max_pool2d(t, tuple(a["pool_size"]), tuple(a["strides"]), (top, left), tuple(a["dilation"]),
                            ceil_mode=bool(a["ceil_mode"]))

    def qat(self, run, node) -> None:
        import torch

        src = node.inputs[0]
        run.x[node.name] = self._torch_pool(node, run.x[src])
        run.q[node.name] = self._torch_pool(node, run.q[src].to(torch.float64)).to(torch.int64)

    def float_torch(self, node, ins):
        import torch.nn.functional as F

        a = node.attrs
        top, left, _, _ = pads(a["padding"])
        return F.max_pool2d(ins[0], tuple(a["pool_size"]), tuple(a["strides"]), (top, left), tuple(a["dilation"]),
                            ceil_mode=bool(a["ceil_mode"]))

    def to_onnx(self, writer, node, raw):
        a = node.attrs
        writer.node("MaxPool", list(node.inputs), raw, kernel_shape=list(a["pool_size"]), strides=list(a["strides"]),
                    pads=list(a["padding"]), dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))


register(MaxPool())
