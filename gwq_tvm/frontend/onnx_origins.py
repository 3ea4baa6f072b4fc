"""Which ONNX node each binding of an imported ``main`` comes from (for messages that name what the user wrote).

TVM's ONNX importer converts the nodes in graph order and keeps a table
``ONNX tensor name -> Relax expression``.  :func:`capture_importer_tables`
records that table; :func:`binding_origins` then walks ``main``'s bindings
in order: a binding whose value *is* an ONNX node's output belongs to that
node, and so do the bindings emitted before it since the previous node's
output (a converter emits its intermediate ops, e.g. LRN's ``expand_dims``,
``avg_pool3d``, ``power``, just before its result).  The canonicalization
passes keep these ``Var`` objects, so the map stays valid on the canonical
module; a binding they create (a decomposed batch norm) has no origin, and
messages fall back to its Relax op name.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def capture_importer_tables(captured: dict | None = None):
    """Record the ONNX importer's ``tensor -> expression`` table and node list while the block runs.

    Yields ``captured`` (a new dict by default), which holds ``"nodes"`` (the table) and ``"graph"`` (the ``GraphProto``) afterwards, and
    ``"current"``, ``(op_type, node_name)`` of the node being converted (the one an import error is about).
    """
    from tvm.relax.frontend.onnx import onnx_frontend as of

    captured = {} if captured is None else captured
    original = of.ONNXGraphImporter._construct_nodes
    original_convert = of.ONNXGraphImporter._convert_operator

    def construct(self, graph):
        result = original(self, graph)
        captured["nodes"], captured["graph"] = dict(self._nodes), graph
        return result

    def convert(self, op_name, inputs, attrs, opset):
        captured["current"] = (op_name, attrs.get("tvm_custom", {}).get("name", ""))  # named by import errors
        return original_convert(self, op_name, inputs, attrs, opset)

    of.ONNXGraphImporter._construct_nodes = construct
    of.ONNXGraphImporter._convert_operator = convert
    try:
        yield captured
    finally:
        of.ONNXGraphImporter._construct_nodes = original
        of.ONNXGraphImporter._convert_operator = original_convert


def binding_origins(mod, captured: dict) -> dict:
    """``{Var: (op_type, node_name)}`` for the bindings of ``mod["main"]`` (see the module docstring)."""
    table, graph = captured.get("nodes"), captured.get("graph")
    if table is None or graph is None:
        return {}
    producers: dict = {}  # keyed by object identity (Relax expressions hash by handle)
    for node in graph.node:
        label = (node.op_type, node.name or (node.output[0] if node.output else node.op_type))
        producers.update((table[o], label) for o in node.output if o in table and not isinstance(table[o], (list, tuple)))
    origins: dict = {}
    pending: list = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            pending.append(b.var)
            label = producers.get(b.var) or producers.get(b.value)
            if label is not None:
                origins.update((v, label) for v in pending)
                pending = []
    return origins


def describe_float_ops(float_nodes, origins: dict) -> str:
    """``"LRN (lrn0), Softmax (sm1, sm2), relax.permute_dims"``: the ONNX op types and node names behind ``float_nodes``.

    A float node without an ONNX origin (a torch model, or an op a pass created) is named by its Relax op.
    """
    by_type: dict = {}
    for n in float_nodes:
        op_type, name = origins.get(n.var, (n.attrs.get("op", n.kind), None))
        names = by_type.setdefault(op_type, [])
        if name is not None and name not in names:
            names.append(name)
    return ", ".join(f"{t} ({', '.join(names)})" if names else t for t, names in sorted(by_type.items()))
