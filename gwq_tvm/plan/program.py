"""The integer constants of each node, derived from a graph and a plan (pure numpy).

This is where the integer program's arithmetic is decided; the realize pass
only turns these constants into Relax ops, and the SFC report counts them.

* conv / dense: ``acc = conv(q_in, q_w) + q_b`` (int32), ``acc`` has scale
  ``s_in * s_w,c``; then an SFC by ``M_c = s_in * s_w,c / s_out`` and a clip.
* global / window average pool: ``acc = sum(q_in)`` over the window (int32),
  scale ``s_in / window``; then an SFC.
* add: each input ``i`` becomes ``t_i = SFC(q_i, 2**P * s_i / s_out)`` (int32,
  ``P = add_precision_bits``), then ``q = clip((t_a + t_b + 2**(P-1)) >> P)``.
* concat: each input ``SFC(q_i, s_i / s_out)``, clipped, then concatenated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import PlanError
from ..graph import Graph, Node
from . import scales as S
from .quantplan import QuantPlan, TensorQuant
from .sfc import SFC, make_sfc

INT32_MAX = (1 << 31) - 1
#: node kinds that produce an int32 accumulator which an SFC turns into an activation
ACC_KINDS = frozenset({"conv2d", "dense", "global_avgpool", "avgpool"})


def container(tq: TensorQuant) -> str:
    """The numpy/Relax dtype holding the tensor's integers."""
    return "int8" if tq.signed else "uint8"


def out_range(node: Node, plan: QuantPlan) -> tuple[int, int]:
    """Integer clip range of ``node``'s output: the dtype range narrowed by a fused ReLU/ReLU6."""
    tq = plan.tensors[node.name]
    qmin, qmax = S.qrange(tq.bits, tq.signed)
    if node.act is not None:
        s = plan.scale(node.name)
        lo, hi = node.act
        qmin = max(qmin, math.ceil(lo / s - 0.5)) if math.isfinite(lo) else qmin
        qmax = min(qmax, math.floor(hi / s + 0.5)) if math.isfinite(hi) else qmax
    return qmin, qmax


def magnitude(tq: TensorQuant) -> int:
    qmin, qmax = S.qrange(tq.bits, tq.signed)
    return max(abs(qmin), abs(qmax))


@dataclass(frozen=True)
class Accumulator:
    """The int32 accumulator of a conv/dense/pool node.

    ``weight`` (int8, channels first) and ``bias`` (int32) are ``None`` for
    pools; ``scale`` is the real scale of one accumulator unit per channel
    (a single value for pools); ``bound`` bounds ``|acc|`` over all inputs.
    """

    scale: np.ndarray
    bound: int
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    window: int = 1


def accumulator(node: Node, graph: Graph, plan: QuantPlan) -> Accumulator:
    """Quantized weights and bias of ``node`` and the scale of its accumulator."""
    src = node.inputs[0]
    s_in, in_mag = plan.scale(src), magnitude(plan.tensors[src])
    if node.kind in ("conv2d", "dense"):
        layer = plan.layers[node.name]
        ws = np.asarray(layer.weight_scales, dtype=np.float64)
        if ws.size != node.weight.shape[0]:
            raise PlanError(f"{node.name}: plan has {ws.size} weight scales for {node.weight.shape[0]} channels")
        wq = S.quantize_weight(node.weight, ws, layer.weight_bits)
        acc_scale = s_in * ws
        bq = S.quantize_bias(node.bias, acc_scale) if node.bias is not None else None
        per_channel = np.abs(wq.reshape(wq.shape[0], -1).astype(np.int64)).sum(axis=1) * in_mag
        bound = int(per_channel.max() + (np.abs(bq.astype(np.int64)).max() if bq is not None else 0))
        if bound > INT32_MAX:
            raise PlanError(f"{node.name}: the int32 accumulator can overflow (bound {bound}); split the layer")
        return Accumulator(acc_scale, bound, wq, bq)
    if node.kind == "global_avgpool":
        window = graph.nodes[src].shape[2] * graph.nodes[src].shape[3]
    elif node.kind == "avgpool":
        window = int(np.prod(node.attrs["pool_size"]))
    else:
        raise PlanError(f"{node.name}: {node.kind} has no accumulator")
    return Accumulator(np.array([s_in / window]), window * in_mag, window=window)


@dataclass(frozen=True)
class Requant:
    """An SFC into an activation tensor plus its clip and container dtypes."""

    sfc: SFC
    qmin: int
    qmax: int
    dtype: str
    work_dtype: str


def _work_dtype(sfc: SFC, bound: int) -> str:
    """``int32`` when the shift path provably fits, else ``int64`` (always for multiplies)."""
    if sfc.kind == "multiply":
        return "int64"
    left = int(sfc.left.max()) if sfc.left is not None else 0
    right = int(sfc.right.max()) if sfc.right is not None else 0
    worst = (bound << left) + ((1 << right) >> 1)
    return "int32" if worst <= INT32_MAX else "int64"


def requant(node: Node, acc: Accumulator, plan: QuantPlan) -> Requant:
    """The SFC from ``node``'s accumulator to its planned output tensor."""
    sfc = make_sfc(acc.scale / plan.scale(node.name))
    qmin, qmax = out_range(node, plan)
    return Requant(sfc, qmin, qmax, container(plan.tensors[node.name]), _work_dtype(sfc, acc.bound))


def add_inputs(node: Node, plan: QuantPlan) -> list[SFC]:
    """The SFCs that bring each add input to ``2**P`` units of the output scale."""
    p = plan.config.add_precision_bits
    s_out = plan.scale(node.name)
    out = []
    for src in node.inputs:
        sfc = make_sfc(math.ldexp(plan.scale(src) / s_out, p))
        if magnitude(plan.tensors[src]) * float(sfc.ratio.max()) * 2 > INT32_MAX:
            raise PlanError(f"{node.name}: input {src} rescaled by {sfc.ratio.max():.3g} overflows int32")
        out.append(sfc)
    return out


def concat_inputs(node: Node, plan: QuantPlan) -> list[SFC]:
    s_out = plan.scale(node.name)
    return [make_sfc(plan.scale(src) / s_out) for src in node.inputs]


def needs_integer_output(graph: Graph, name: str) -> bool:
    """Does any non-float node consume ``name``'s output as integers?"""
    return any(c.kind != "float" for c in graph.consumers(name))


@dataclass(frozen=True)
class SfcEdge:
    """Where the program converts one tensor's integers to another's scale (structure only).

    ``src`` and ``dst`` are tensor owners (see :meth:`Graph.tensor_of`);
    ``factor`` is the part of the ratio fixed by the graph (``1/window`` for
    average pools, ``1`` otherwise), so that with power-of-two weight scales
    the SFC is a shift exactly when ``s_src * factor / s_dst`` is a power of two.
    """

    node: str
    port: str
    src: str
    dst: str
    elements: int
    factor: float = 1.0


def sfc_edges(graph: Graph) -> list[SfcEdge]:
    """Every scale conversion the realized program performs, in graph order.

    conv/dense/pool outputs (only when consumed as integers), each residual-add
    input and each concat input.
    """
    edges = []
    for name, node in graph.nodes.items():
        if node.kind in ACC_KINDS and needs_integer_output(graph, name):
            src = graph.tensor_of(node.inputs[0])
            factor = 1.0
            if node.kind == "global_avgpool":
                factor = 1.0 / (graph.nodes[node.inputs[0]].shape[2] * graph.nodes[node.inputs[0]].shape[3])
            elif node.kind == "avgpool":
                factor = 1.0 / int(np.prod(node.attrs["pool_size"]))
            edges.append(SfcEdge(name, "out", src, name, node.elements, factor))
        elif node.kind in ("add", "concat"):
            for src in node.inputs:
                n_el = node.elements if node.kind == "add" else graph.nodes[src].elements
                edges.append(SfcEdge(name, src, graph.tensor_of(src), name, n_el))
    return edges


@dataclass(frozen=True)
class SfcSite:
    """One scale-factor conversion of the integer program, for reports."""

    node: str
    port: str
    kind: str
    elements: int
    channels: int
    src: str = ""
    dst: str = ""


def sfc_sites(graph: Graph, plan: QuantPlan) -> list[SfcSite]:
    """Every SFC the realized program performs with its kind (identity conversions are not listed)."""
    add_sfcs = {}
    sites = []
    for e in sfc_edges(graph):
        node = graph.nodes[e.node]
        if e.port == "out":
            sfc = requant(node, accumulator(node, graph, plan), plan).sfc
        else:
            if e.node not in add_sfcs:
                sfcs = add_inputs(node, plan) if node.kind == "add" else concat_inputs(node, plan)
                add_sfcs[e.node] = dict(zip(node.inputs, sfcs))
            sfc = add_sfcs[e.node][e.port]
        if sfc.kind != "identity":
            sites.append(SfcSite(e.node, e.port, sfc.kind, e.elements, sfc.channels, e.src, e.dst))
    return sites


def sfc_summary(sites: list[SfcSite]) -> dict:
    """Counts of SFC sites and per-sample elements that take a multiply vs a shift."""
    out = {"multiply_sites": 0, "shift_sites": 0, "multiply_elements": 0, "shift_elements": 0}
    for s in sites:
        out[f"{s.kind}_sites"] += 1
        out[f"{s.kind}_elements"] += s.elements
    total = out["multiply_elements"] + out["shift_elements"]
    out["shift_share"] = out["shift_elements"] / total if total else 1.0
    return out
