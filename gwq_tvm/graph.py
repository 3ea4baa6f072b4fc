"""The quantizable-node view of a model: plain data, no TVM and no torch.

Each :class:`Node` is one unit of the integer program and owns one output
tensor (one scale): a convolution or dense layer together with its bias add
and ReLU/clip, a residual add with its ReLU, a pooling op, a concat, a
reshape, or a ``float`` node (an op gwq-tvm cannot quantize, kept in float).
What a node *does* is its kind's (:mod:`gwq_tvm.kinds`): ``node.kind`` names
an entry of the kind registry.  Node names (``conv2d_0``, ``add_1``, ...) are
deterministic for a given module, so a :class:`~gwq_tvm.plan.quantplan.QuantPlan`
made for it applies to the same module later.

Graphs are read from canonical Relax by :func:`gwq_tvm.extract.extract_graph`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


def kind_of(node: "Node"):
    """The :class:`~gwq_tvm.kinds.base.Kind` that defines ``node`` (the registry imports lazily: kinds read graphs)."""
    from .kinds import get_kind

    return get_kind(node.kind)


@dataclass
class Node:
    """One quantizable unit.

    Attributes
    ----------
    name, kind : str
        Unique name and registry kind.
    inputs : list of str
        Names of the nodes whose outputs this node reads.
    var : object
        Its fp32 output variable in the canonical Relax module (opaque here).
    shape : tuple
        Output shape, ``-1`` for a dynamic dimension.
    attrs : dict
        Kind-specific attributes (strides, padding, axis, ...).
    weight, bias : numpy.ndarray, optional
        Float weights (output channels first) and bias of a layer.
    act : tuple, optional
        Fused activation as real-valued clip bounds ``(lo, hi)``.
    call : object, optional
        The original Relax call of a ``float`` node (opaque here).
    """

    name: str
    kind: str
    inputs: list[str]
    var: object
    shape: tuple
    attrs: dict = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    act: tuple | None = None
    call: object | None = None

    @property
    def elements(self) -> int:
        """Output elements per sample (batch dimension excluded)."""
        return int(np.prod([d for d in self.shape[1:]], dtype=np.int64))


@dataclass
class Graph:
    """Nodes in topological order, the input node and the output node names."""

    nodes: dict[str, Node]
    input: str
    outputs: list[str]
    fingerprint: str

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes.values() if name in n.inputs]

    def tensor_of(self, name: str) -> str:
        """The node whose quantized tensor ``name`` reuses (passthrough nodes share their input's)."""
        while kind_of(self.nodes[name]).passthrough:
            name = self.nodes[name].inputs[0]
        return name

    def tensors(self) -> list[str]:
        """Names of the nodes that own a quantized tensor, in topological order."""
        return [n for n, node in self.nodes.items() if not kind_of(node).passthrough]

    def float_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "float"]

    def layers(self) -> list[str]:
        """Names of the nodes with weights, in topological order."""
        return [n for n, node in self.nodes.items() if node.weight is not None]


def fingerprint(nodes: dict[str, Node], outputs: list[str]) -> str:
    """Hash of the node structure and weights: a plan applies only to the graph it was made for."""
    h = hashlib.sha256()
    for n in nodes.values():
        h.update(f"{n.name}|{n.kind}|{n.inputs}|{n.shape}|{sorted(n.attrs.items())}|{n.act}".encode())
        for arr in (n.weight, n.bias):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr(outputs).encode())
    return h.hexdigest()[:16]
