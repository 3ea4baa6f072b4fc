"""What the data-movement kinds share: the integers move, the scale stays (passthrough).

A transpose, a slice or a split section of a quantized tensor is the same op
on its integer codes, so each such kind states its op once per backend
(:meth:`LayoutKind.relax_op` for the integer program and the fake-quant
simulator, :meth:`LayoutKind.torch_op` for QAT on both values and integers).
"""

from __future__ import annotations

from .base import Kind


class LayoutKind(Kind):
    passthrough = True

    def accepts_zero_point(self, graph, node, layers) -> bool:
        return True  # the integers move, the zero point with them

    def relax_op(self, x, node):
        """The node's Relax op on ``x`` (integers or float)."""
        raise NotImplementedError

    def torch_op(self, t, node):
        """The node's torch op on ``t`` (values or integers)."""
        raise NotImplementedError

    def realize(self, em, node) -> None:
        em.move(node, lambda x: self.relax_op(x, node))

    def simulate(self, em, node) -> None:
        em.values[node.name] = em.emit(self.relax_op(em.values[node.inputs[0]], node))

    def qat(self, run, node) -> None:
        src = node.inputs[0]
        run.x[node.name] = self.torch_op(run.x[src], node)
        run.q[node.name] = self.torch_op(run.q[src], node)

    def float_torch(self, node, ins):
        return self.torch_op(ins[0], node)
