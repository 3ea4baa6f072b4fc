"""Window average pooling (no dilation, no ceil mode, padding counted).

``acc = sum_window q_in`` in int32 (a depthwise conv by ones), scale
``s_in / (kh*kw)``, then the SFC into the output.
"""

from __future__ import annotations

import numpy as np

from ..plan import program as P
from . import register
from .layer import AccumulatingKind, pads


class AvgPool(AccumulatingKind):
    name = "avgpool"
    ops = ("relax.nn.avg_pool2d",)

    def match(self, w, i, call) -> bool:
        a = call.attrs
        padded = any(int(p) for p in a.padding)
        if a.layout != "NCHW" or a.ceil_mode or any(int(d) != 1 for d in a.dilation) or (padded and not a.count_include_pad):
            return False
        ints = lambda v: [int(x) for x in v]  # noqa: E731
        attrs = dict(pool_size=ints(a.pool_size), strides=ints(a.strides), padding=ints(a.padding))
        w.add("avgpool", w.bindings[i].var, [call.args[0]], attrs=attrs)
        return True

    def window(self, graph, node) -> int:
        return int(np.prod(node.attrs["pool_size"]))

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        return P.pool_accumulator(node, plan, self.window(graph, node))

    @staticmethod
    def _window_conv(R, x, node, ones, **kw):
        """The window sum (or mean) as a depthwise conv by a constant window."""
        return R.nn.conv2d(x, ones, strides=node.attrs["strides"], padding=node.attrs["padding"], groups=node.shape[1], **kw)

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        acc = self.accumulator(em.graph, node, em.plan)
        kh, kw = node.attrs["pool_size"]
        ones = em.const(np.ones((node.shape[1], 1, kh, kw), dtype="int8"), "int8")
        y = em.emit(self._window_conv(R, em.as_int(node.inputs[0]), node, ones, out_dtype="int32"))
        em.finish_acc(node, y, acc)

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        kh, kw = node.attrs["pool_size"]
        ones = em.const(np.full((node.shape[1], 1, kh, kw), 1.0 / (kh * kw)))
        em.finish(node, em.emit(self._window_conv(R, em.values[node.inputs[0]], node, ones)))

    def _torch_pool(self, node, t):
        import torch.nn.functional as F

        top, left, bottom, right = pads(node.attrs["padding"])
        return F.avg_pool2d(F.pad(t, (left, right, top, bottom)), tuple(node.attrs["pool_size"]), tuple(node.attrs["strides"]))

    def qat(self, run, node) -> None:
        import torch

        src = node.inputs[0]
        window = self.window(run.graph, node)
        v = self._torch_pool(node, run.x[src])
        acc_int = torch.round(self._torch_pool(node, run.q[src].to(torch.float64)) * window).to(torch.int64)
        unit = run.s(src) / window
        run.finish_acc(node, v, acc_int, np.array([run.plan.scale(run.graph.tensor_of(src)) / window]), unit)

    def float_torch(self, node, ins):
        return self._torch_pool(node, ins[0])

    def to_onnx(self, writer, node, raw):
        a = node.attrs
        writer.node("AveragePool", list(node.inputs), raw, kernel_shape=list(a["pool_size"]), strides=list(a["strides"]),
                    pads=list(a["padding"]), count_include_pad=1)


register(AvgPool())
