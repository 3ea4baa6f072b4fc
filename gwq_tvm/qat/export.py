"""Write a fine-tuned QAT model as an ONNX file plus the QuantPlan ``gwq-tvm compile`` consumes unchanged.

The ONNX graph is emitted node by node from the gwq-tvm :class:`~gwq_tvm.graph.Graph`
(batch norm is already folded, so it holds Conv/Gemm with biases, Relu/Clip,
Add, pools, Concat and Flatten/Reshape) with the trained float weights.
Re-importing it gives the same graph with the new weights; the plan is then
stamped with that graph's fingerprint, so ``gwq-tvm compile model.onnx --plan
model.plan.json`` realizes exactly the integer program the QAT model simulated.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..atomic import atomic_paths
from ..errors import PlanError
from ..extract import extract_graph
from ..graph import Graph, Node, kind_of
from ..plan.quantplan import QuantPlan

#: ONNX opset of exported models
OPSET = 17


class Writer:
    """Collects the ONNX nodes and initializers of a graph (the kinds' ONNX backend)."""

    def __init__(self, graph: Graph, weights: dict, biases: dict):
        self.graph, self.weights, self.biases = graph, weights, biases
        self.nodes, self.inits = [], []

    def const(self, name: str, value: np.ndarray) -> str:
        """Add an initializer; returns its name."""
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op_type: str, inputs: list, output: str, **attrs) -> str:
        """Append one ONNX node writing ``output``."""
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output

    def relu(self, name: str, src: str, lo: float, hi: float) -> str:
        """A Relu (``lo = 0, hi = inf``) or a Clip of ``src`` written as ``name``."""
        if lo == 0.0 and math.isinf(hi):
            return self.node("Relu", [src], name)
        lo_c = self.const(f"{name}_min", np.array(lo if math.isfinite(lo) else -3.0e38, np.float32))
        hi_c = self.const(f"{name}_max", np.array(hi if math.isfinite(hi) else 3.0e38, np.float32))
        return self.node("Clip", [src, lo_c, hi_c], name)

    def emit(self, node: Node) -> str:
        """Emit ``node`` and its fused activation; returns the ONNX name of its output (the node's name)."""
        n = node.name
        raw = f"{n}_raw" if node.act is not None else n
        final = kind_of(node).to_onnx(self, node, raw)
        if final is not None:
            return final
        out = self.relu(f"{n}_act", raw, *node.act) if node.act is not None else raw
        if out != n:
            self.node("Identity", [out], n)
        return n


def graph_to_onnx(graph: Graph, weights: dict, biases: dict, input_shape) -> onnx.ModelProto:
    """An ONNX model of ``graph`` with the given float weights and biases (dicts by layer name).

    Parameters
    ----------
    graph : Graph
    weights, biases : dict of str to numpy.ndarray
        float32 weights (channels first, dense ``(out, in)``) and biases of the layers.
    input_shape : tuple
        The model input shape; ``None``/negative entries become a dynamic ``batch`` dimension.
    """
    w = Writer(graph, weights, biases)
    for node in graph.nodes.values():
        if node.kind != "input":
            w.emit(node)
    dims = ["batch" if (d is None or d < 0) else int(d) for d in input_shape]
    inp = helper.make_tensor_value_info(graph.input, TensorProto.FLOAT, dims)
    outs = [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch" if d < 0 else int(d) for d in graph.nodes[o].shape])
        for o in graph.outputs
    ]
    g = helper.make_graph(w.nodes, "gwq_tvm_qat", [inp], outs, initializer=w.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gwq-tvm qat")
    onnx.checker.check_model(model)
    return model


def restamp(plan: QuantPlan, graph: Graph, new_graph: Graph) -> QuantPlan:
    """``plan`` for ``new_graph``: same structure as ``graph`` (names, kinds, shapes), new weights.

    Raises
    ------
    PlanError
        If the re-imported graph's structure differs from the trained one.
    """
    old = [(n.name, n.kind, tuple(n.inputs), n.shape, n.act) for n in graph.nodes.values()]
    new = [(n.name, n.kind, tuple(n.inputs), n.shape, n.act) for n in new_graph.nodes.values()]
    if old != new:
        diff = next(f"{a} != {b}" for a, b in zip(old + [None] * len(new), new + [None] * len(old)) if a != b)
        raise PlanError(f"the exported ONNX does not re-import to the trained graph: {diff}")
    return plan.replace(fingerprint=new_graph.fingerprint)


def export_qat(model, path) -> tuple[Path, Path]:
    """Write ``model`` (a :class:`~gwq_tvm.qat.model.QATModel`) as ``path`` (ONNX) and ``<stem>.plan.json``.

    The ONNX file is re-imported to check it reproduces the trained graph, and
    the plan is stamped with its fingerprint.  With Scale-Clip the ONNX holds
    the clipped weights (:meth:`~gwq_tvm.qat.model.QATModel.effective_weight`),
    so the compiler, quantizing them with the plan's steps, computes exactly
    the trained integers; the plan's provenance records the clip settings.
    Returns the two paths.
    """
    from ..frontend import load_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the weights as the model quantizes them: with Scale-Clip, clipped at k * sigma (bit-identical float32 values)
    weights = {n: model.effective_weight(n).detach().to("cpu").float().numpy() for n in model.weight}
    biases = {n: p.detach().to("cpu").float().numpy() for n, p in model.bias.items()}
    plan = model.plan()
    proto = graph_to_onnx(model.graph, weights, biases, plan.input_shape or (None,) + tuple(model.graph.nodes[model.graph.input].shape[1:]))
    plan_path = path.with_suffix(".plan.json")
    with atomic_paths(path, plan_path) as (onnx_tmp, plan_tmp):
        onnx.save(proto, str(onnx_tmp))
        new_graph = extract_graph(load_model(str(onnx_tmp)).mod)
        restamp(plan, model.graph, new_graph).save(plan_tmp)
    return path, plan_path
