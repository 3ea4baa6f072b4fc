"""Reshape / flatten / squeeze / expand_dims of a quantized tensor: the integers are reshaped, the scale kept (passthrough)."""

from __future__ import annotations

import numpy as np

from . import register
from .base import Kind


class Reshape(Kind):
    name = "reshape"
    ops = ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims")
    passthrough = True

    def accepts_zero_point(self, graph, node, layers) -> bool:
        return True  # the integers move, the zero point with them

    def match(self, w, i, call) -> bool:
        from tvm import relax

        x = call.args[0]
        if not isinstance(x, relax.Var):
            return False
        w.add("reshape", w.bindings[i].var, [x])
        return True

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        em.move(node, lambda x: R.reshape(x, node.var.ty.shape))

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        em.values[node.name] = em.emit(R.reshape(em.values[node.inputs[0]], node.var.ty.shape))

    def _shape(self, node) -> tuple:
        return (-1,) + tuple(int(d) for d in node.shape[1:])

    def qat(self, run, node) -> None:
        src = node.inputs[0]
        run.x[node.name] = run.x[src].reshape(self._shape(node))
        run.q[node.name] = run.q[src].reshape(self._shape(node))

    def float_torch(self, node, ins):
        return ins[0].reshape(self._shape(node))

    def to_onnx(self, writer, node, raw):
        src_shape = writer.graph.nodes[node.inputs[0]].shape
        if len(node.shape) == 2 and node.shape[1] == int(np.prod(src_shape[1:])):
            writer.node("Flatten", list(node.inputs), raw, axis=1)
        else:
            shape = writer.const(f"{node.name}_shape", np.array([0] + list(node.shape[1:]), np.int64))
            writer.node("Reshape", list(node.inputs) + [shape], raw)


register(Reshape())
