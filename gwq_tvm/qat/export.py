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
from ..graph import Graph, Node, extract_graph
from ..plan.quantplan import QuantPlan

#: ONNX opset of exported models
OPSET = 17


class _Writer:
    def __init__(self, graph: Graph, weights: dict, biases: dict):
        self.graph, self.weights, self.biases = graph, weights, biases
        self.nodes, self.inits = [], []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def act(self, node: Node, out: str) -> str:
        """Append the fused activation of ``node`` to ``out``; returns the activation's output."""
        if node.act is None:
            return out
        return self._relu(f"{node.name}_act", out, *node.act)

    def _relu(self, name: str, src: str, lo: float, hi: float) -> str:
        if lo == 0.0 and math.isinf(hi):
            self.nodes.append(helper.make_node("Relu", [src], [name]))
        else:
            lo_c = self.const(f"{name}_min", np.array(lo if math.isfinite(lo) else -3.0e38, np.float32))
            hi_c = self.const(f"{name}_max", np.array(hi if math.isfinite(hi) else 3.0e38, np.float32))
            self.nodes.append(helper.make_node("Clip", [src, lo_c, hi_c], [name]))
        return name

    def emit(self, node: Node) -> str:
        """Emit ``node``; returns the ONNX name of its output."""
        n, a = node.name, node.attrs
        ins = list(node.inputs)
        raw = f"{n}_raw" if node.act is not None else n
        if node.kind == "conv2d":
            args = ins + [self.const(f"{n}_w", self.weights[n])] + ([self.const(f"{n}_b", self.biases[n])] if n in self.biases else [])
            self.nodes.append(helper.make_node("Conv", args, [raw], strides=list(a["strides"]), pads=list(a["padding"]),
                                               dilations=list(a["dilation"]), group=int(a["groups"]),
                                               kernel_shape=list(self.weights[n].shape[2:])))
        elif node.kind == "dense":
            args = ins + [self.const(f"{n}_w", self.weights[n])] + ([self.const(f"{n}_b", self.biases[n])] if n in self.biases else [])
            self.nodes.append(helper.make_node("Gemm", args, [raw], transB=1))
        elif node.kind == "add":
            self.nodes.append(helper.make_node("Add", ins, [raw]))
        elif node.kind == "concat":
            self.nodes.append(helper.make_node("Concat", ins, [raw], axis=int(a["axis"])))
        elif node.kind == "global_avgpool":
            if a["keepdims"]:
                self.nodes.append(helper.make_node("GlobalAveragePool", ins, [raw]))
            else:
                self.nodes.append(helper.make_node("ReduceMean", ins, [raw], axes=[2, 3], keepdims=0))  # axes: attribute until opset 18
        elif node.kind == "avgpool":
            self.nodes.append(helper.make_node("AveragePool", ins, [raw], kernel_shape=list(a["pool_size"]), strides=list(a["strides"]),
                                               pads=list(a["padding"]), count_include_pad=1))
        elif node.kind == "maxpool":
            self.nodes.append(helper.make_node("MaxPool", ins, [raw], kernel_shape=list(a["pool_size"]), strides=list(a["strides"]),
                                               pads=list(a["padding"]), dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"])))
        elif node.kind == "reshape":
            src_shape = self.graph.nodes[ins[0]].shape
            if len(node.shape) == 2 and node.shape[1] == int(np.prod(src_shape[1:])):
                self.nodes.append(helper.make_node("Flatten", ins, [raw], axis=1))
            else:
                shape = self.const(f"{n}_shape", np.array([0] + list(node.shape[1:]), np.int64))
                self.nodes.append(helper.make_node("Reshape", ins + [shape], [raw]))
        elif node.kind == "relu":
            lo, hi = node.act if node.act is not None else (0.0, math.inf)
            return self._relu(n, ins[0], lo, hi)
        else:
            raise PlanError(f"cannot export node {n} of kind {node.kind!r} to ONNX")
        out = self.act(node, raw)
        if out != n:
            self.nodes.append(helper.make_node("Identity", [out], [n]))
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
    w = _Writer(graph, weights, biases)
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
    return QuantPlan(new_graph.fingerprint, plan.config, plan.groups, plan.tensors, plan.layers, plan.input_shape)


def export_qat(model, path) -> tuple[Path, Path]:
    """Write ``model`` (a :class:`~gwq_tvm.qat.model.QATModel`) as ``path`` (ONNX) and ``<stem>.plan.json``.

    The ONNX file is re-imported to check it reproduces the trained graph, and
    the plan is stamped with its fingerprint.  Returns the two paths.
    """
    from ..frontend import load_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {n: p.detach().to("cpu").float().numpy() for n, p in model.weight.items()}
    biases = {n: p.detach().to("cpu").float().numpy() for n, p in model.bias.items()}
    plan = model.plan()
    proto = graph_to_onnx(model.graph, weights, biases, plan.input_shape or (None,) + tuple(model.graph.nodes[model.graph.input].shape[1:]))
    plan_path = path.with_suffix(".plan.json")
    with atomic_paths(path, plan_path) as (onnx_tmp, plan_tmp):
        onnx.save(proto, str(onnx_tmp))
        new_graph = extract_graph(load_model(str(onnx_tmp)).mod)
        restamp(plan, model.graph, new_graph).save(plan_tmp)
    return path, plan_path
