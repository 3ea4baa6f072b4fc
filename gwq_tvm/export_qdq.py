"""Export a QuantPlan as a standard QDQ ONNX model (QuantizeLinear/DequantizeLinear pairs, opset 13).

ONNX Runtime's QDQ executor (or TensorRT, or a board vendor's converter)
then runs the same quantization as the gwq-tvm integer program:

* every activation tensor ``t`` of the plan gets ``Q -> DQ`` with the
  per-tensor scale ``s_t = mu_g * 2**e_t`` (:meth:`QuantPlan.scale`) and the
  plan's zero point (0 unless the tensor is asymmetric), ``uint8`` when the plan
  says unsigned, ``int8`` otherwise;
* weights are stored as the program's integers ``w_q = clip(rint(w / s_c))``
  behind a per-channel ``DequantizeLinear`` on axis 0: as int8 with zero point
  0 (the default, what TensorRT requires), or as uint8 ``w_q + 128`` with zero
  point 128 (``weight_type="uint8"``, the same real values; see below);
* biases are stored as int32 at the accumulator scale ``s_in * s_w,c``.

Inside a GWQ group every scale ratio is a power of two: a shift SFC of the
gwq-tvm program is, in ONNX terms, a ``DQ -> op -> Q`` whose scales differ by
``2**k``.

Bit-widths below 8 stay in the 8-bit containers, with a ``Clip`` to the
plan's integer range ``[qmin * s, qmax * s]`` before the ``QuantizeLinear``:
both ends are on the quantization grid, so ``Q(Clip(x))`` equals the
narrow-range quantization exactly, for every width from 2 to 8, with opset-13
ops that every QDQ consumer knows.  (The int4/uint4 types of opset 21 would
express only the 4-bit case, and their support for activations is thin.)

The plan's tensor names (``conv2d_0``, ``add_1``, ...) are found in the ONNX
graph by walking its nodes in order with the rules :mod:`gwq_tvm.graph` uses
on the imported Relax program (a Conv absorbs its BatchNormalization / constant
affine ops and a following Relu or Clip, ...), and the result is checked
against the plan's graph node by node (kind, inputs, weight shape); a model
that cannot be mapped is refused with the first mismatch.

Where ONNX Runtime and gwq-tvm can differ: ORT rounds half to even and
requantizes in float (``round(acc * s_in * s_w / s_out)``), gwq-tvm rounds half
up and requantizes in integers (a Q31 multiply or a shift); residual adds and
average pools are rescaled in float by ORT and in fixed point by gwq-tvm.  The
differences are at most one integer step at a tie or a rounding boundary.

On x86 CPUs without VNNI (AVX2 only), ONNX Runtime's fused int8 kernels for
uint8 activations x int8 weights add pairs of products in int16 with
saturation (``vpmaddubsw``), so its results then drift far from the exact
integer program (measured in ``benchmarks/qdq_agreement.py``); ORT documents
this u8s8 saturation and its remedies.  ``weight_type="uint8"`` selects its
u8u8 kernels, which do not saturate, without changing any value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GwqError
from .graph import Graph
from .plan import scales as S
from .plan.program import materialized
from .plan.quantplan import QuantPlan

OPSET = 13

#: ONNX ops that map to one plan node kind, for the walk (fusion rules follow :mod:`gwq_tvm.graph`).
_KINDS = {
    "Conv": "conv2d", "Gemm": "dense", "MatMul": "dense", "Add": "add", "Relu": "relu", "Clip": "relu",
    "MaxPool": "maxpool", "GlobalMaxPool": "maxpool", "ReduceMax": "maxpool",
    "AveragePool": "avgpool", "GlobalAveragePool": "global_avgpool", "ReduceMean": "global_avgpool",
    "Flatten": "reshape", "Reshape": "reshape", "Concat": "concat",
}
_AFFINE = frozenset({"Add", "Sub", "Mul", "Div"})
_ALIASES = frozenset({"Identity", "Dropout"})


class QdqExportError(GwqError):
    """The plan or model cannot be written as QDQ ONNX (the message names why)."""


@dataclass
class _Unit:
    """ONNX nodes that form one plan node: ``head`` (Conv/Gemm/...) plus absorbed affine ops and activation."""

    name: str
    kind: str
    head: object
    inputs: list
    output: str
    affine: list = field(default_factory=list)
    act: object = None


class _Walk:
    """Group the ONNX nodes into units named as :func:`gwq_tvm.graph.extract_graph` names its nodes."""

    def __init__(self, model):
        g = model.graph
        self.consts = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
        self.graph_outputs = {o.name for o in g.output}
        self.users: dict[str, list] = {}
        for n in g.node:
            for t in n.input:
                self.users.setdefault(t, []).append(n)
        self.alias: dict[str, str] = {}
        self.owner: dict[str, str] = {}
        self.units: list[_Unit] = []
        self.counts: dict[str, int] = {}
        self.absorbed: set[int] = set()

    def resolve(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def sole_user(self, t: str):
        users = self.users.get(t, [])
        if len(users) == 1 and t not in self.graph_outputs:
            return users[0]
        return None

    def activation(self, t: str, values):
        n = self.sole_user(t)
        if n is None or n.op_type not in ("Relu", "Clip") or id(n) in self.absorbed:
            return None
        if n.op_type == "Clip" and _clip_bounds(n, values)[0] > 0:
            return None
        return n

    def run(self, model, values) -> list[_Unit]:
        for n in model.graph.node:
            if id(n) in self.absorbed or n.op_type == "Constant":
                continue
            if n.op_type in _ALIASES:
                self.alias[n.output[0]] = self.resolve(n.input[0])
                continue
            kind = _KINDS.get(n.op_type)
            data = [self.resolve(t) for t in n.input if t and t not in self.consts]
            if kind is None:
                raise QdqExportError(f"cannot map ONNX op {n.op_type} ({n.name or n.output[0]}) to a plan node")
            if kind == "add" and len(data) != 2:
                raise QdqExportError(f"cannot map {n.op_type} {n.name or n.output[0]}: an add of a constant outside a layer")
            unit = _Unit("", kind, n, data if kind != "reshape" else data[:1], n.output[0])
            if kind in ("conv2d", "dense"):
                out = n.output[0]
                while True:
                    nxt = self.sole_user(out)
                    if nxt is None or nxt.op_type not in _AFFINE and nxt.op_type != "BatchNormalization":
                        break
                    others = [t for t in nxt.input if t != out]
                    if not all(t in self.consts or not t for t in others):
                        break
                    unit.affine.append(nxt)
                    self.absorbed.add(id(nxt))
                    out = nxt.output[0]
                unit.output = out
            if kind in ("conv2d", "dense", "add"):
                act = self.activation(unit.output, values)
                if act is not None:
                    unit.act = act
                    self.absorbed.add(id(act))
                    unit.output = act.output[0]
            idx = self.counts.get(kind, 0)
            self.counts[kind] = idx + 1
            unit.name = f"{kind}_{idx}"
            unit.inputs = [self.owner.get(t, t) for t in unit.inputs]
            self.owner[unit.output] = unit.name
            self.units.append(unit)
        return self.units


def _clip_bounds(node, values) -> tuple[float, float]:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    lo, hi = attrs.get("min", -math.inf), attrs.get("max", math.inf)
    for i, default in ((1, lo), (2, hi)):
        if len(node.input) > i and node.input[i]:
            v = values.get(node.input[i])
            if v is None:
                raise QdqExportError(f"Clip {node.name or node.output[0]} has a non-constant bound")
            if i == 1:
                lo = float(v.reshape(()))
            else:
                hi = float(v.reshape(()))
    return lo, hi


def map_units(model, graph: Graph) -> list[_Unit]:
    """The ONNX units of ``model``, one per non-input node of ``graph``, in graph order (checked).

    Raises
    ------
    QdqExportError
        If the ONNX graph does not correspond to ``graph`` node by node.
    """
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    inputs = [i.name for i in model.graph.input if i.name not in values]
    walk = _Walk(model)
    walk.owner[inputs[0]] = "input"
    units = walk.run(model, values)
    expected = [n for n in graph.nodes.values() if n.kind != "input"]
    if len(units) != len(expected):
        raise QdqExportError(f"cannot map the ONNX graph to the plan: {len(units)} ONNX units for {len(expected)} plan nodes")
    for unit, node in zip(units, expected):
        problem = None
        if (unit.name, unit.kind) != (node.name, node.kind):
            problem = f"{unit.name} ({unit.head.op_type}) where the plan has {node.name}"
        elif unit.inputs != node.inputs:
            problem = f"{node.name} reads {unit.inputs} in ONNX, {node.inputs} in the plan"
        elif node.weight is not None:
            w = values.get(unit.head.input[1])
            if w is None or w.size != node.weight.size:
                problem = f"{node.name}: its ONNX weight {unit.head.input[1]} does not match the plan's layer"
        if problem:
            raise QdqExportError(f"cannot map the ONNX graph to the plan: {problem}")
    return units


def check_expressible(plan: QuantPlan) -> None:
    """Refuse plan features that QDQ ONNX cannot express, naming the feature.

    Uniform integer grids with per-channel or per-tensor weight scales and
    static activation scales are always expressible.  Block-wise weight
    scales, channel permutations, POT/POST weight codebooks, packed int4
    storage and dynamic (per-sample) activation steps are not.
    """
    for name, layer in plan.layers.items():
        if layer.granularity not in ("channel", "tensor"):
            raise QdqExportError(f"layer {name}: {layer.granularity} weight scales cannot be expressed in QDQ ONNX")
        if layer.codebook != "uniform":
            raise QdqExportError(f"layer {name}: the {layer.codebook} weight codebook cannot be expressed in QDQ ONNX")
        if layer.storage != "int8" or layer.permutation is not None:
            raise QdqExportError(f"layer {name}: {layer.storage} storage / channel permutations cannot be expressed in QDQ ONNX")
    for name, t in plan.tensors.items():
        if t.dynamic is not None:
            raise QdqExportError(f"tensor {name}: dynamic (per-sample) activation steps cannot be expressed in QDQ ONNX")


class _Builder:
    def __init__(self, graph: Graph, plan: QuantPlan, alias: dict, weight_type: str):
        self.graph, self.plan, self.alias, self.weight_type = graph, plan, alias, weight_type
        self.nodes, self.inits, self.rename = [], [], {}

    def source(self, t: str) -> str:
        """What a consumer of ONNX tensor ``t`` reads in the export (past dropped aliases and inserted Q/DQ)."""
        t = self.alias.get(t, t)
        return self.rename.get(t, t)

    def init(self, name, array):
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, outputs, **attrs):
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))

    def qdq(self, tensor: str, onnx_name: str) -> None:
        """``[Clip ->] Q -> DQ`` after ``onnx_name`` at ``tensor``'s scale; consumers read the DQ output."""
        tq = self.plan.tensors[tensor]
        scale = np.float32(self.plan.scale(tensor))
        qmin, qmax = S.qrange(tq.bits, tq.signed)
        dtype = np.int8 if tq.signed else np.uint8
        src = onnx_name
        if tq.bits < 8:
            lo = self.init(f"{tensor}_qmin", np.float32((qmin - tq.zero_point) * np.float64(scale)))
            hi = self.init(f"{tensor}_qmax", np.float32((qmax - tq.zero_point) * np.float64(scale)))
            self.node("Clip", [src, lo, hi], [f"{tensor}_clipped"])
            src = f"{tensor}_clipped"
        s = self.init(f"{tensor}_scale", scale)
        z = self.init(f"{tensor}_zero_point", np.asarray(tq.zero_point, dtype))
        self.node("QuantizeLinear", [src, s, z], [f"{tensor}_q"])
        self.node("DequantizeLinear", [f"{tensor}_q", s, z], [f"{tensor}_dq"])
        self.rename[onnx_name] = f"{tensor}_dq"

    def layer(self, unit: _Unit, out_name: str) -> None:
        """The unit's Conv/Gemm with dequantized int8 weights and int32 bias (BN and affine ops folded)."""
        from .plan.program import accumulator

        node = self.graph.nodes[unit.name]
        acc = accumulator(node, self.graph, self.plan)
        layer = self.plan.layers[unit.name]
        ws = np.asarray(layer.scales, np.float64)
        per_tensor = layer.granularity == "tensor"
        w_scale = np.float32(ws[0]) if per_tensor else ws.astype(np.float32)
        axis = {} if per_tensor else {"axis": 0}
        if self.weight_type == "uint8":  # the same values, w = s * ((w_q + 128) - 128)
            wq, zero = (acc.weight.astype(np.int16) + 128).astype(np.uint8), np.full(np.shape(w_scale), 128, np.uint8)
        else:
            wq, zero = acc.weight, np.zeros(np.shape(w_scale), np.int8)
        w = self.init(f"{unit.name}_weight_q", wq)
        ws_name = self.init(f"{unit.name}_weight_scale", w_scale)
        wz = self.init(f"{unit.name}_weight_zero_point", zero)
        self.node("DequantizeLinear", [w, ws_name, wz], [f"{unit.name}_weight"], **axis)
        args = [self.source(unit.head.input[0]), f"{unit.name}_weight"]
        if acc.plain_bias is not None:  # the DQ input is s (q - z): the bias without the folded -z sum(q_w)
            b = self.init(f"{unit.name}_bias_q", acc.plain_bias)
            bs = self.init(f"{unit.name}_bias_scale", acc.scale.astype(np.float32))
            bz = self.init(f"{unit.name}_bias_zero_point", np.zeros(acc.scale.shape, np.int32))
            self.node("DequantizeLinear", [b, bs, bz], [f"{unit.name}_bias"], axis=0)
            args.append(f"{unit.name}_bias")
        if unit.kind == "conv2d":
            a = node.attrs
            pt, pl, pb, pr = a["padding"]
            kh, kw = node.weight.shape[2:]
            self.node("Conv", args, [out_name], strides=a["strides"], pads=[pt, pl, pb, pr], dilations=a["dilation"],
                      group=a["groups"], kernel_shape=[kh, kw])
        else:
            self.node("Gemm", args, [out_name], transB=1)


WEIGHT_TYPES = ("int8", "uint8")


def export_qdq(plan: QuantPlan, model, output, graph: Graph | None = None, *, weight_type: str = "int8") -> Path:
    """Write ``model`` quantized as ``plan`` says as a QDQ ONNX file at ``output`` (atomically).

    Parameters
    ----------
    plan : QuantPlan
    model : path or onnx.ModelProto
        The fp32 ONNX model the plan was made for.
    output : path
        Where to write the QDQ model (never the input file).
    graph : Graph, optional
        The plan's graph (imported from ``model`` when not given).
    weight_type : {"int8", "uint8"}
        Container of the weight integers (see the module docstring).

    Raises
    ------
    QdqExportError
        If the plan holds features QDQ cannot express, or the ONNX graph cannot
        be mapped to the plan's nodes.
    PlanError
        If the plan was made for another model.
    """
    import onnx
    from onnx import helper

    from .errors import PlanError
    from .frontend import load_model
    from .extract import extract_graph

    output = Path(output)
    if weight_type not in WEIGHT_TYPES:
        raise QdqExportError(f"weight type must be one of {', '.join(WEIGHT_TYPES)}; got {weight_type!r}")
    if isinstance(model, (str, os.PathLike)):
        if Path(model).resolve() == output.resolve():
            raise QdqExportError("the output would overwrite the input model; choose another -o")
        proto = onnx.load(str(model))
    else:
        proto = model
    if graph is None:
        graph = extract_graph(load_model(proto).mod)
    if plan.fingerprint != graph.fingerprint:
        raise PlanError(f"the QuantPlan was made for graph {plan.fingerprint}, this model is {graph.fingerprint}")
    check_expressible(plan)
    floats = sorted({n.attrs["op"] for n in graph.float_nodes()})
    if floats:
        raise QdqExportError(f"ops the plan keeps in float cannot be mapped to ONNX nodes: {', '.join(floats)}")
    units = map_units(proto, graph)
    b = _Builder(graph, plan, _aliases(proto), weight_type)
    g = proto.graph
    values = {i.name for i in g.initializer}
    input_name = next(i.name for i in g.input if i.name not in values)
    b.qdq("input", input_name)
    for unit in units:
        if unit.kind in ("conv2d", "dense"):
            b.layer(unit, unit.output if unit.act is None else f"{unit.name}_acc")
            if unit.act is not None:
                _copy(b, unit.act, {unit.act.input[0]: f"{unit.name}_acc"})
        else:
            _copy(b, unit.head, {})
            if unit.act is not None:
                _copy(b, unit.act, {})
        if materialized(graph, unit.name):
            b.qdq(unit.name, unit.output)
    used_inits = {t for n in b.nodes for t in n.input}
    kept = [i for i in g.initializer if i.name in used_inits and i.name not in {x.name for x in b.inits}]
    outputs = []
    for o in g.output:
        o2 = onnx.ValueInfoProto()
        o2.CopyFrom(o)
        o2.name = b.source(o.name)
        outputs.append(o2)
    constants = [n for n in g.node if n.op_type == "Constant" and n.output[0] in used_inits]
    new_graph = helper.make_graph(constants + b.nodes, g.name or "gwq_qdq", [i for i in g.input if i.name == input_name],
                                  outputs, kept + b.inits)
    opset = max([o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] + [OPSET])
    out = helper.make_model(new_graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="gwq-tvm export-qdq")
    out.ir_version = max(proto.ir_version, 7)
    mode = plan.config.mode.value if plan.config is not None else "plan given"
    out.doc_string = f"gwq-tvm QuantPlan {plan.fingerprint} ({mode}) as QDQ"
    onnx.checker.check_model(out)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    onnx.save(out, str(tmp))
    os.replace(tmp, output)
    return output


def _aliases(model) -> dict[str, str]:
    """Identity/Dropout outputs -> the tensor they pass on (the export drops those nodes)."""
    alias = {}
    for n in model.graph.node:
        if n.op_type in _ALIASES:
            alias[n.output[0]] = alias.get(n.input[0], n.input[0])
    return alias


def _copy(b: _Builder, node, extra: dict) -> None:
    """Re-emit ONNX ``node`` reading the dequantized tensors (``b.rename``) and ``extra`` renames."""
    from onnx import NodeProto

    new = NodeProto()
    new.CopyFrom(node)
    del new.input[:]
    for t in node.input:
        new.input.append(extra[t] if t in extra else b.source(t) if t else t)
    b.nodes.append(new)


def exported_scales(path) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The scales stored in a QDQ model written by :func:`export_qdq`.

    Returns
    -------
    activations : dict of str to float
        Each QuantizeLinear's scale, by plan tensor name.
    weights : dict of str to numpy.ndarray
        Each layer's weight DequantizeLinear scales, by plan layer name.
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    acts, weights = {}, {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            acts[n.output[0][: -len("_q")]] = float(inits[n.input[1]])
        elif n.op_type == "DequantizeLinear" and n.output[0].endswith("_weight"):
            weights[n.output[0][: -len("_weight")]] = np.atleast_1d(inits[n.input[1]])
    return acts, weights


def run_ort(path, data: np.ndarray, *, batch: int = 500, optimize: bool = True) -> np.ndarray:
    """Outputs of ONNX Runtime's CPU executor on ``data`` (its QDQ fusions on unless ``optimize`` is off).

    Raises
    ------
    GwqError
        If onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise GwqError("running the QDQ model needs onnxruntime: pip install 'gwq-tvm[bench]'") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    data = np.asarray(data, np.float32)
    return np.concatenate([sess.run(None, {name: data[i : i + batch]})[0] for i in range(0, len(data), batch)])


def program_logits(qmodel, data: np.ndarray) -> np.ndarray:
    """``qmodel``'s integer program compiled for this CPU and run on ``data``."""
    import tvm
    from tvm import relax

    from . import api

    vm = relax.VirtualMachine(api.build(qmodel), tvm.cpu())
    return api.predict(vm, data, qmodel.plan.input_shape or qmodel.float_model.input_shape)


def ort_agreement(qmodel, path, data: np.ndarray, labels=None, *, optimize: bool = True, program=None):
    """ONNX Runtime on the QDQ model at ``path`` against ``qmodel``'s compiled integer program.

    Parameters
    ----------
    program : numpy.ndarray, optional
        The program's outputs on ``data`` (:func:`program_logits`), when already computed.

    Returns
    -------
    Fidelity
        With the integer program as the reference (:func:`gwq_tvm.fidelity.fidelity`).
    """
    from .fidelity import fidelity

    ours = program_logits(qmodel, data) if program is None else program
    return fidelity(ours, run_ort(path, data, optimize=optimize), labels)


def host_has_vnni() -> bool:
    """Does this CPU have x86 VNNI (ORT's u8s8 kernels then do not saturate)?"""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


EXPLANATION = ("ORT rounds half to even and requantizes in float (acc * s_in * s_w / s_out); gwq-tvm rounds half up and "
               "requantizes in integers (a Q31 multiply or a shift), and rescales residual adds and average pools in fixed "
               "point where ORT uses float: outputs differ by at most one step at rounding boundaries")
