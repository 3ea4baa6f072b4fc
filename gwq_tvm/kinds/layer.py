"""What the accumulating kinds share: an int32 accumulator that one SFC turns into the output tensor.

conv2d, dense and the average pools subclass :class:`AccumulatingKind`; it
declares their SFC edge (``acc -> out``, only when the output is consumed as
integers: a final layer's accumulator is dequantized directly) and their
recipe's SFC, ``M_c = s_acc,c / s_out``.
"""

from __future__ import annotations

from ..plan import program as P
from .base import Kind


class AccumulatingKind(Kind):
    accumulates = True

    def window(self, graph, node) -> int:
        """Inputs summed per output element with unit weight (pools); 1 for layers with weights."""
        return 1

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        raise NotImplementedError

    def recipe(self, graph, node, plan) -> P.Accumulator:
        return self.accumulator(graph, node, plan)

    def sfc_edges(self, graph, node) -> list:
        if not P.needs_integer_output(graph, node.name):
            return []
        src = graph.tensor_of(node.inputs[0])
        return [P.SfcEdge(node.name, "out", src, node.name, node.elements, 1.0 / self.window(graph, node))]

    def sfcs(self, graph, node, plan) -> dict:
        acc = self.accumulator(graph, node, plan)
        out = {f"partial{j}": part.sfc for j, part in enumerate(acc.partials)}
        if P.needs_integer_output(graph, node.name):
            out["out"] = P.requant(node, acc, plan).sfc
        return out


def pads(padding) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of a Relax 4-value padding."""
    top, left, bottom, right = (int(p) for p in padding)
    return top, left, bottom, right
