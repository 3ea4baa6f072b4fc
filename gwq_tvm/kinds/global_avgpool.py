"""Global average pooling (``mean`` over H, W, or adaptive pooling to 1x1).

``acc = sum_{h,w} q_in`` in int32, scale ``s_in / (H*W)``
(:func:`gwq_tvm.plan.program.pool_accumulator`), then the SFC into the output.
"""

from __future__ import annotations

import numpy as np

from ..plan import program as P
from . import register
from .layer import AccumulatingKind


class GlobalAvgPool(AccumulatingKind):
    name = "global_avgpool"
    ops = ("relax.mean", "relax.nn.adaptive_avg_pool2d")

    def match(self, w, i, call) -> bool:
        from ..ir import static_shape

        x = call.args[0]
        shape = static_shape(x)
        if call.op.name == "relax.mean":
            axes = sorted(int(v) % 4 for v in (call.attrs.axis or [])) if len(shape) == 4 else None
            if axes != [2, 3] or -1 in shape[2:]:
                return False
            keepdims = bool(call.attrs.keepdims)
        else:
            size = call.attrs.output_size
            if len(shape) != 4 or size is None or any(int(s) != 1 for s in size) or -1 in shape[2:]:
                return False
            keepdims = True
        w.add("global_avgpool", w.bindings[i].var, [x], attrs=dict(keepdims=keepdims))
        return True

    def window(self, graph, node) -> int:
        src = graph.nodes[node.inputs[0]]
        return src.shape[2] * src.shape[3]

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        return P.pool_accumulator(node, plan, self.window(graph, node), zero_points=True)

    def accepts_zero_point(self, graph, node, layers) -> bool:
        return True

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        acc = self.accumulator(em.graph, node, em.plan)
        x = em.emit(R.astype(em.as_int(node.inputs[0]), "int32"))
        y = em.emit(R.sum(x, axis=[2, 3], keepdims=node.attrs["keepdims"]))
        em.finish_acc(node, y, acc)

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        em.finish(node, em.emit(R.mean(em.values[node.inputs[0]], axis=[2, 3], keepdims=node.attrs["keepdims"])))

    def qat(self, run, node) -> None:
        src = node.inputs[0]
        keep = node.attrs["keepdims"]
        window = self.window(run.graph, node)
        v = run.x[src].mean(dim=(2, 3), keepdim=keep)
        acc_int = run.q[src].sum(dim=(2, 3), keepdim=keep)
        unit = run.s(src) / window
        run.finish_acc(node, v, acc_int, np.array([run.plan.scale(run.graph.tensor_of(src)) / window]), unit)

    def float_torch(self, node, ins):
        return ins[0].mean(dim=(2, 3), keepdim=node.attrs["keepdims"])

    def to_onnx(self, writer, node, raw):
        if node.attrs["keepdims"]:
            writer.node("GlobalAveragePool", list(node.inputs), raw)
        else:  # axes: an attribute until opset 18
            writer.node("ReduceMean", list(node.inputs), raw, axes=[2, 3], keepdims=0)


register(GlobalAvgPool())
