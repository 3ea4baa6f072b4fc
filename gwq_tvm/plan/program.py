"""The integer arithmetic shared by the node kinds' recipes (pure numpy).

This is where the integer program's arithmetic is decided, once; each kind
(:mod:`gwq_tvm.kinds`) builds its recipe from these pieces, and the backends
only turn recipes into ops.

* conv / dense: ``acc = conv(q_in, q_w) + q_b`` (int32), ``acc`` has scale
  ``s_in * s_w,c`` (:func:`layer_accumulator`); then an SFC by
  ``M_c = s_in * s_w,c / s_out`` and a clip (:func:`requant`).  POST weights
  are ``q_w = table[codes]`` (:mod:`gwq_tvm.plan.post`), looked up in the program.
* global / window average pool: ``acc = sum(q_in)`` over the window (int32),
  scale ``s_in / window`` (:func:`pool_accumulator`); then an SFC.
* add: each input ``i`` becomes ``t_i = SFC(q_i, 2**P * s_i / s_out)`` (int32,
  ``P = plan.arithmetic.add_precision_bits``), then
  ``q = clip((t_a + t_b + 2**(P-1)) >> P)`` (:func:`add_inputs`).
* concat: each input ``SFC(q_i, s_i / s_out)``, clipped, then concatenated.

**Zero points.**  A tensor may hold ``r = s * (q - z)`` (uint8, ``z =
TensorQuant.zero_point``).  The kinds that accept one on their inputs
(:meth:`~gwq_tvm.kinds.base.Kind.accepts_zero_point`) stay exact:

* conv2d / dense: ``conv(q - z, q_w) = conv(q, q_w) - z * sum(q_w,c)``, so the
  bias becomes ``q_b - z * sum(q_w,c)`` (int32, :func:`layer_accumulator`) and the
  padding holds the code ``z`` (real 0) instead of 0 (``Accumulator.pad_value``);
* global average pool: ``sum(q - z) = sum(q) - window * z`` (the bias);
* product: ``(q_a - z_a) * (q_b - z_b)`` (the kind subtracts before multiplying);
* lookup tables: the table is indexed by the code, only its values change
  (:func:`lookup_table`);
* every output through an SFC: ``q = clip(SFC(acc) + z_out)`` (:func:`requant`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import PlanError
from . import post
from . import scales as S
from .quantplan import QuantPlan, TensorQuant
from .sfc import SFC, apply_sfc, int32_multiply, make_sfc

if TYPE_CHECKING:
    from ..graph import Graph, Node

INT32_MAX = (1 << 31) - 1


def _kind(node: "Node"):
    from ..graph import kind_of

    return kind_of(node)


def container(tq: TensorQuant) -> str:
    """The numpy/Relax dtype holding the tensor's integers."""
    return "int8" if tq.signed else "uint8"


def out_range(node: "Node", plan: QuantPlan) -> tuple[int, int]:
    """Integer clip range of ``node``'s output: the dtype range narrowed by a fused ReLU/ReLU6
    (the real bound ``lo`` is the code ``ceil(lo / s - 1/2) + z``, ``hi`` is ``floor(hi / s + 1/2) + z``)."""
    tq = plan.tensors[node.name]
    qmin, qmax = S.qrange(tq.bits, tq.signed)
    if node.act is not None:
        s, z = plan.scale(node.name), tq.zero_point
        lo, hi = node.act
        qmin = max(qmin, math.ceil(lo / s - 0.5) + z) if math.isfinite(lo) else qmin
        qmax = min(qmax, math.floor(hi / s + 0.5) + z) if math.isfinite(hi) else qmax
    return qmin, qmax


def zero_point(plan: QuantPlan, name: str) -> int:
    """The zero point of tensor ``name`` (0 for a symmetric tensor)."""
    return plan.tensors[name].zero_point


def magnitude(tq: TensorQuant) -> int:
    """Largest ``|q|`` of the tensor's integers."""
    qmin, qmax = S.qrange(tq.bits, tq.signed)
    return max(abs(qmin), abs(qmax))


#: most extra fractional bits kept while partial accumulators of input blocks are summed
PARTIAL_PRECISION_BITS = 8


def plan_sfc(ratio, where: str) -> SFC:
    """:func:`~gwq_tvm.plan.sfc.make_sfc` of a ratio the plan's scales set, at site ``where``.

    In-range scales can still combine into a ratio no integer requantizer applies
    (``M >= 2**30``: a Q31 mantissa would need a negative shift), e.g. a
    hand-edited weight scale of ``1e12``; that is the plan's error, named here,
    not an arithmetic one.
    """
    try:
        return make_sfc(ratio)
    except ValueError as err:
        raise PlanError(f"{where}: {err} (the plan's scales give a scale-factor conversion no integer requantizer "
                        "applies; check them)") from None


@dataclass(frozen=True)
class Partial:
    """One input block's int32 partial accumulator of a layer with ``n_in > 1`` weight blocks.

    The partial is ``conv(q_in[:, lo:hi], weight)`` (or a matmul), where
    ``weight`` holds the block's integer weights of those input channels and
    zeros in the columns of other blocks; ``sfc`` brings it to the layer's
    accumulator unit (see :func:`layer_accumulator`), computed in ``work_dtype``.
    ``channels`` is ``None`` when the partial reads the whole input (grouped convs).
    """

    channels: tuple | None
    weight: np.ndarray
    sfc: SFC
    work_dtype: str


@dataclass(frozen=True)
class Accumulator:
    """The int32 accumulator of a conv/dense/pool node.

    ``weight`` (int8, channels first) and ``bias`` (int32) are ``None`` for
    pools; ``scale`` is the real scale of one accumulator unit per channel
    (a single value for pools); ``bound`` bounds ``|acc|`` over all inputs.
    ``partials`` is non-empty when the weight has input blocks: the
    accumulator is then the sum of the rescaled partials plus the bias.
    """

    scale: np.ndarray
    bound: int
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    window: int = 1
    partials: tuple = ()
    #: POST layers (:mod:`gwq_tvm.plan.post`): the stored b-bit level codes (uint8, ``weight``'s shape) and
    #: the int8 table with ``weight == table[codes]``; the program computes the weight by that lookup
    codes: np.ndarray | None = None
    table: np.ndarray | None = None
    #: the code a conv pads its input with: the input's zero point (real 0); with a nonzero one the conv's
    #: padding is an explicit pad by this code before an unpadded conv
    pad_value: int = 0
    #: conv/dense: ``q_b`` alone, the bias of ``conv(q_in - z, q_w)`` (``bias`` is ``q_b - z * sum(q_w,c)``, what the
    #: program adds to ``conv(q_in, q_w)``); a graph that subtracts ``z`` itself, like the QDQ export, adds this one
    plain_bias: np.ndarray | None = None


def weight_scales(node: "Node", plan: QuantPlan) -> np.ndarray:
    """The per-output-channel weight scales of layer ``node`` under ``plan``."""
    try:
        return plan.layers[node.name].channel_scales(node.weight.shape[0])
    except PlanError as err:
        raise PlanError(f"layers.{node.name}: {err}") from None


def weight_scale_map(node: "Node", plan: QuantPlan) -> np.ndarray:
    """Each weight element's scale under ``plan``, broadcastable to ``node.weight``."""
    try:
        return plan.layers[node.name].scale_map(node.weight.shape)
    except PlanError as err:
        raise PlanError(f"layers.{node.name}: {err}") from None


def layer_accumulator(node: "Node", plan: QuantPlan) -> Accumulator:
    """Quantized weights and bias of a conv/dense ``node`` and the scale of its accumulator.

    ``q_w = clip(rint(w / s_w))`` with ``s_w`` the scale of the weight's
    block (:meth:`WeightQuant.scale_map`).  With one input block per channel
    (tensor, channel, ``n_out x 1`` blocks) ``acc = conv(q_in, q_w) + q_b``,
    unit ``s_in * s_w,c``, ``q_b = rint(b / (s_in * s_w,c))``; the bound is
    ``max_c sum|q_w,c| * max|q_in| + max|q_b|``, which must fit int32.  With
    ``n_in > 1`` input blocks see :func:`input_block_partials`.
    """
    src = node.inputs[0]
    s_in, in_mag = plan.scale(src), magnitude(plan.tensors[src])
    layer = plan.layers[node.name]
    # storage "int4" (bits <= 4, checked by the plan) realizes as storage "int8": the weights' values lie in
    # [-8, 7] (POST: codes below 16), and the kernel families with an int4 step store them two per byte
    # (gwq_tvm.schedules.pack_layout, Packer.int4_weight); the others keep int8 containers.
    unsupported = [f for f, on in (("codebook " + layer.codebook, layer.codebook not in ("uniform", "post")),) if on]
    if unsupported:
        raise PlanError(f"layers.{node.name}: {', '.join(unsupported)} is not realized by this gwq-tvm yet")
    grid = layer.block_scales(node.weight.shape[0])
    z_in = zero_point(plan, src)
    takes_z = getattr(_kind(node), "input_zero_point", False)
    if z_in and (not takes_z or grid.shape[1] > 1):
        raise PlanError(f"tensors.{src}.zero_point: {node.kind} layer {node.name} does not take an input zero point"
                        + (" with input weight blocks" if takes_z else "") + " (plan it symmetric)")
    codes = table = None
    if layer.codebook == "post":
        if node.kind not in ("conv2d", "dense") or grid.shape[1] > 1 or not 2 <= layer.bits <= 5:
            raise PlanError(f"layers.{node.name}: post weights need a conv2d/dense layer, 2-5 bits and one scale per output channel")
        codes = post.codes(post.quantize_indices(node.weight, weight_scale_map(node, plan), layer.bits), layer.bits)
        table = post.code_table(layer.bits)
        wq = table[codes]
    else:
        wq = S.quantize_weight(node.weight, weight_scale_map(node, plan), layer.bits)
    if grid.shape[1] > 1:
        return input_block_partials(node, wq, grid, s_in, in_mag)
    acc_scale = s_in * grid[:, 0]
    try:
        bq = S.quantize_bias(node.bias, acc_scale) if node.bias is not None else None
    except OverflowError:
        c = int(np.argmax(np.abs(node.bias) / acc_scale))
        raise PlanError(f"layers.{node.name}: channel {c}'s bias {float(node.bias[c]):.4g} does not fit the int32 "
                        f"accumulator at weight scale {float(grid[c, 0]):.4g} (input scale {s_in:.4g}); its weight scale "
                        f"must be at least {abs(float(node.bias[c])) / (s_in * S.BIAS_LIMIT):.4g}") from None
    plain = bq
    if z_in:  # conv(q - z, q_w) + q_b = conv(q, q_w) + (q_b - z * sum(q_w,c)), padded with the code z
        folded = -z_in * wq.reshape(wq.shape[0], -1).astype(np.int64).sum(axis=1)
        if bq is not None:
            folded = folded + bq.astype(np.int64)
        if np.abs(folded).max() > INT32_MAX:
            raise PlanError(f"layers.{node.name}: the bias with the input zero point {z_in} folded in does not fit int32")
        bq = folded.astype(np.int32)
    per_channel = np.abs(wq.reshape(wq.shape[0], -1).astype(np.int64)).sum(axis=1) * in_mag
    bound = int(per_channel.max() + (np.abs(bq.astype(np.int64)).max() if bq is not None else 0))
    if bound > INT32_MAX:
        raise PlanError(f"{node.name}: the int32 accumulator can overflow (bound {bound}); split the layer")
    return Accumulator(acc_scale, bound, wq, bq, codes=codes, table=table, pad_value=z_in, plain_bias=plain)


def input_block_partials(node: "Node", wq: np.ndarray, grid: np.ndarray, s_in: float, in_mag: int) -> Accumulator:
    """The accumulator of a layer whose weight has ``n_in > 1`` input blocks (PTQ-SL), all in integers.

    Block ``j`` covers the weight columns ``[j*K/n_in, (j+1)*K/n_in)`` of the
    ``(C_out, K)`` view, the input channels ``lo_j..hi_j`` that hold them.
    Its partial ``acc_j = conv(q_in[:, lo_j:hi_j], q_w,j)`` has unit
    ``s_in * s_w,cj``.  The accumulator unit is
    ``u_c = s_in * min_j s_w,cj / 2**P``; each partial is rescaled by the
    SFC ``M_cj = s_w,cj * 2**P / min_j s_w,cj`` (``>= 1``: a left shift when
    the scales are powers of two, exact) and the partials are added in int32:
    ``acc = sum_j SFC_j(acc_j) + q_b`` with ``q_b = rint(b / u_c)``.  ``P`` is
    the largest value up to :data:`PARTIAL_PRECISION_BITS` whose bound fits int32.
    """
    channels, n_in = grid.shape
    flat = wq.reshape(channels, -1).astype(np.int64)
    cols = flat.shape[1] // n_in
    taps = int(np.prod(wq.shape[2:])) if wq.ndim > 2 else 1
    grouped = int(node.attrs.get("groups", 1)) > 1
    base = grid.min(axis=1)
    ratio = grid / base[:, None]
    part_bounds = np.stack([np.abs(flat[:, j * cols:(j + 1) * cols]).sum(axis=1) * in_mag for j in range(n_in)], axis=1)
    for p in range(PARTIAL_PRECISION_BITS, -1, -1):
        acc_scale = s_in * base / (1 << p)
        bq = S.quantize_bias(node.bias, acc_scale) if node.bias is not None else None
        bound = int(np.ceil((part_bounds * ratio).sum(axis=1) * (1 << p)).max()) + (int(np.abs(bq.astype(np.int64)).max()) if bq is not None else 0)
        if bound <= INT32_MAX:
            break
    else:
        raise PlanError(f"{node.name}: the int32 accumulator of the input blocks can overflow (bound {bound}); split the layer")
    partials = []
    for j in range(n_in):
        mask = np.zeros_like(flat)
        mask[:, j * cols:(j + 1) * cols] = 1
        w = (flat * mask).astype(np.int8).reshape(wq.shape)
        lo, hi = (j * cols) // taps, -(-((j + 1) * cols) // taps)
        sel = None
        if not grouped:
            w, sel = w[:, lo:hi], (lo, hi)
        sfc = plan_sfc(ratio[:, j] * (1 << p), f"layers.{node.name}: input block {j}")
        partials.append(Partial(sel, np.ascontiguousarray(w), sfc, _work_dtype(sfc, int(part_bounds[:, j].max()))))
    return Accumulator(acc_scale, bound, wq, bq, partials=tuple(partials))


def pool_accumulator(node: "Node", plan: QuantPlan, window: int, zero_points: bool = False) -> Accumulator:
    """The accumulator of a pool summing ``window`` inputs: scale ``s_in / window``.

    With ``zero_points`` (a pool whose every window holds ``window`` real inputs: the global
    average pool) the input's zero point ``z`` is the bias ``-window * z``: ``sum(q - z) = sum(q) - window * z``.
    Other pools refuse a nonzero ``z``.
    """
    src = node.inputs[0]
    z = zero_point(plan, src)
    if z and not zero_points:
        raise PlanError(f"tensors.{src}.zero_point: {node.kind} {node.name} does not take an input zero point (plan it symmetric)")
    bias = np.array([-window * z], dtype=np.int32) if z else None
    return Accumulator(np.array([plan.scale(src) / window]), window * (magnitude(plan.tensors[src]) + z), bias=bias,
                       window=window)


def accumulator(node: "Node", graph: "Graph", plan: QuantPlan) -> Accumulator:
    """The accumulator recipe of an accumulating ``node`` (conv, dense, pools)."""
    kind = _kind(node)
    if not kind.accumulates:
        raise PlanError(f"{node.name}: {node.kind} has no accumulator")
    return kind.accumulator(graph, node, plan)


@dataclass(frozen=True)
class Requant:
    """An SFC into an activation tensor plus its clip and container dtypes: ``q = clip(SFC(acc) + zero_point)``.

    ``pre_clip`` (per-channel ``(lo, hi)``, int32 multiplies only) clips the
    accumulator before the multiply; it changes no result and keeps the
    product inside int32 (:func:`gwq_tvm.plan.sfc.int32_multiply`).
    """

    sfc: SFC
    qmin: int
    qmax: int
    dtype: str
    work_dtype: str
    pre_clip: tuple[np.ndarray, np.ndarray] | None = None
    zero_point: int = 0
    #: ASQ: the per-sample form (:func:`dynamic_requant`); ``None`` for a static SFC
    dynamic: "DynamicRequant | None" = None


def _work_dtype(sfc: SFC, bound: int) -> str:
    """``int32`` when the shift path provably fits, else ``int64`` (always for multiplies)."""
    if sfc.kind == "multiply":
        return "int64"
    left = int(sfc.left.max()) if sfc.left is not None else 0
    right = int(sfc.right.max()) if sfc.right is not None else 0
    worst = (bound << left) + ((1 << right) >> 1)
    return "int32" if worst <= INT32_MAX else "int64"


def requant(node: "Node", acc: Accumulator, plan: QuantPlan) -> Requant:
    """The SFC from ``node``'s accumulator to its planned output tensor: ``M_c = acc.scale_c / s_out``.

    A multiply runs in int32 with a ``Q<b>`` mantissa, ``b >= 12``, where the
    accumulator bound allows (:func:`gwq_tvm.plan.sfc.int32_multiply`), else in
    int64 with the Q31 one.  A bound of 0 means "not known" (QAT's simulation,
    whose weights move): the Q31 multiply is kept.
    """
    sfc = plan_sfc(acc.scale / plan.scale(node.name), f"{node.name}: requantize")
    qmin, qmax = out_range(node, plan)
    dtype = container(plan.tensors[node.name])
    z = zero_point(plan, node.name)
    if sfc.kind == "multiply" and acc.bound > 0 and plan.arithmetic.int32_requantize:  # the int32 form clips SFC(acc) to the range before + z
        narrow = int32_multiply(sfc, acc.bound, qmin - z, qmax - z)
        if narrow is not None:
            return Requant(narrow[0], qmin, qmax, dtype, "int32", pre_clip=narrow[1], zero_point=z)
    return Requant(sfc, qmin, qmax, dtype, _work_dtype(sfc, acc.bound + z), zero_point=z)


def add_inputs(node: "Node", plan: QuantPlan) -> list[SFC]:
    """The SFCs that bring each add input to ``2**P`` units of the output scale."""
    p = plan.arithmetic.add_precision_bits
    s_out = plan.scale(node.name)
    out = []
    for src in node.inputs:
        sfc = plan_sfc(math.ldexp(plan.scale(src) / s_out, p), f"{node.name}: input {src}")
        if magnitude(plan.tensors[src]) * float(sfc.ratio.max()) * 2 > INT32_MAX:
            raise PlanError(f"{node.name}: input {src} rescaled by {sfc.ratio.max():.3g} overflows int32")
        out.append(sfc)
    return out


def concat_inputs(node: "Node", plan: QuantPlan) -> list[SFC]:
    """The SFC of each concat input into the output scale: ``s_i / s_out``."""
    s_out = plan.scale(node.name)
    return [plan_sfc(plan.scale(src) / s_out, f"{node.name}: input {src}") for src in node.inputs]


def zero_point_blocker(graph: "Graph", owner: str, layers) -> str | None:
    """The first node that cannot hold tensor ``owner`` with a nonzero zero point, ``None`` when none.

    That is ``owner`` itself when its kind cannot add ``z_out``
    (:attr:`~gwq_tvm.kinds.base.Kind.zero_point_out`), else a reader that does not
    :meth:`~gwq_tvm.kinds.base.Kind.accepts_zero_point` (passthrough readers share the
    tensor, so theirs count too).  ``layers``: the plan's weight quantization by layer.
    """
    if not _kind(graph.nodes[owner]).zero_point_out:
        return owner
    todo, seen = [owner], set()
    while todo:
        for reader in graph.consumers(todo.pop()):
            if reader.name in seen:
                continue
            seen.add(reader.name)
            kind = _kind(reader)
            if not kind.accepts_zero_point(graph, reader, layers):
                return reader.name
            if kind.passthrough:
                todo.append(reader.name)
    return None


def needs_integer_output(graph: "Graph", name: str) -> bool:
    """Does any non-float node consume ``name``'s output as integers?"""
    return any(c.kind != "float" for c in graph.consumers(name))


def materialized(graph: "Graph", name: str) -> bool:
    """Does the program hold ``name``'s output as quantized integers?

    Every tensor does but an accumulating node's output that only float ops
    (or the program output) read: that stays an int32 accumulator.
    """
    return not _kind(graph.nodes[name]).accumulates or needs_integer_output(graph, name)


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


def sfc_edges(graph: "Graph") -> list[SfcEdge]:
    """Every scale conversion the realized program performs, in graph order (each kind's :meth:`sfc_edges`)."""
    return [e for node in graph.nodes.values() for e in _kind(node).sfc_edges(graph, node)]


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


def sfc_sites(graph: "Graph", plan: QuantPlan) -> list[SfcSite]:
    """Every SFC the realized program performs with its kind (identity conversions are not listed)."""
    sites = []
    edges = sfc_edges(graph)
    for node in graph.nodes.values():
        sfcs = _kind(node).sfcs(graph, node, plan) if node.weight is not None or any(e.node == node.name for e in edges) else {}
        ports = set()
        for e in (e for e in edges if e.node == node.name):
            ports.add(e.port)
            sfc = sfcs[e.port]
            if sfc.kind != "identity":
                sites.append(SfcSite(e.node, e.port, sfc.kind, e.elements, sfc.channels, e.src, e.dst))
        for port, sfc in sfcs.items():  # rescales inside a node (input-block partials): no edge of the grouping
            if port not in ports and sfc.kind != "identity":
                sites.append(SfcSite(node.name, port, sfc.kind, node.elements, sfc.channels, graph.tensor_of(node.inputs[0]), node.name))
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


# --- kernels branch: the integer recipes of the lookup-table, product and PReLU kinds -------------------


@dataclass(frozen=True)
class Table:
    """A 256-entry (``2**bits``) lookup table from input codes to output codes.

    ``q_out = values[q_in + offset]`` with ``offset = -qmin_in``; ``values``
    is held in the output tensor's container ``dtype``.
    """

    values: np.ndarray
    offset: int
    dtype: str


def lookup_table(node: "Node", plan: QuantPlan, fn) -> Table:
    """The table of an elementwise function ``fn`` (float64 numpy) of ``node``'s single input.

    ``values[q - qmin_in] = clip(floor(fn((q - z_in) * s_in) / s_out + 1/2) + z_out, qmin_out, qmax_out)``
    for every input code ``q``: the correctly rounded output code of every input the tensor can hold, so the
    table is exact by construction (error at most half an output step inside the output range).  The zero
    points change only the values: the table is indexed by the code.

    Raises
    ------
    PlanError
        If ``fn`` is not finite-or-infinite (NaN) on a code of the input tensor.
    """
    src = node.inputs[0]
    tq_in = plan.tensors[src]
    qmin_in, qmax_in = S.qrange(tq_in.bits, tq_in.signed)
    codes = np.arange(qmin_in, qmax_in + 1, dtype=np.int64)
    with np.errstate(all="ignore"):
        x = (codes - tq_in.zero_point).astype(np.float64) * plan.scale(src)
        y = np.asarray(fn(x), dtype=np.float64)
        q = np.floor(y / plan.scale(node.name) + 0.5) + zero_point(plan, node.name)
    if np.isnan(q).any():
        raise PlanError(f"{node.name}: the function is undefined (NaN) at input {x[np.isnan(q)][0]:g}")
    qmin, qmax = out_range(node, plan)
    dtype = container(plan.tensors[node.name])
    return Table(np.clip(q, qmin, qmax).astype(dtype), -qmin_in, dtype)


def product_accumulator(node: "Node", plan: QuantPlan) -> Accumulator:
    """The accumulator of an elementwise product of two tensors: ``acc = (q_a - z_a) * (q_b - z_b)``, scale ``s_a * s_b``."""
    a, b = node.inputs
    scale = np.array([plan.scale(a) * plan.scale(b)])
    za, zb = zero_point(plan, a), zero_point(plan, b)
    return Accumulator(scale, (magnitude(plan.tensors[a]) + za) * (magnitude(plan.tensors[b]) + zb))


#: fractional bits of the PReLU slopes: ``q_alpha = rint(alpha * 2**SLOPE_BITS)``
SLOPE_BITS = 12


def prelu_accumulator(node: "Node", plan: QuantPlan) -> Accumulator:
    """PReLU ``y = x`` (x >= 0), ``alpha_c * x`` (x < 0) as one accumulator of scale ``s_in * 2**-SLOPE_BITS``.

    ``acc = max(q, 0) * 2**SLOPE_BITS + min(q, 0) * q_alpha,c`` with
    ``q_alpha,c = rint(alpha_c * 2**SLOPE_BITS)`` (``weight``, int32, one per ``node.attrs["slopes"]``):
    the SFC to the output, ``s_in * 2**-SLOPE_BITS / s_out``, is a shift exactly when
    ``s_in / s_out`` is a power of two.
    """
    src = node.inputs[0]
    one = 1 << SLOPE_BITS
    alpha = np.asarray(node.attrs["slopes"], dtype=np.float64)
    q_alpha = np.rint(alpha * one).astype(np.int64)
    bound = magnitude(plan.tensors[src]) * max(one, int(np.abs(q_alpha).max()))
    if bound > INT32_MAX:
        raise PlanError(f"{node.name}: PReLU slope {np.abs(alpha).max():g} overflows the int32 accumulator")
    return Accumulator(np.array([math.ldexp(plan.scale(src), -SLOPE_BITS)]), bound, q_alpha.astype(np.int32))


# --- ASQ: the adapter's integer side branch and the per-sample requantization (seed 004) -----------------
#
# A tensor ``t`` whose plan entry is ``dynamic`` has the real value ``s_t * beta * q`` with a per-sample
# ``beta``.  The program computes, per sample (all in integers):
#
# 1. ``q0``: ``t`` at its static step ``s_t`` (the plain program's integers), from its producer's accumulator;
# 2. the adapter on ``q0``: ``g = clip(SFC(sum_hw q0, 2**(8-b)/HW))`` (8-bit mean at ``s_g = s_t * 2**(b-8)``),
#    ``h = clip(SFC(W1q g + b1q, s_g * s1_j / s_h), 0, 255)`` (uint8 hidden, ReLU),
#    ``B = clip(SFC(w2q . h, s_h * s2 * 2**F) + rint(b2 * 2**F), B_MIN, B_MAX)``: ``beta = B * 2**-F``;
# 3. ``q = clip(round(acc * M_c * beta_in / beta_out))`` (:func:`dynamic_multiplier`), where ``beta_out``
#    is ``t``'s and ``beta_in`` that of the producer's input when it is dynamic too (its consumers see integers
#    at step ``s * beta``, so every layer reading a dynamic tensor rescales by ``beta_in``, its bias included).
#
# With ``B == 2**F`` (``beta == 1``) every step equals the static program's exactly.

#: fractional bits of the fixed-point ``beta``: ``beta = B * 2**-BETA_FRAC_BITS``
BETA_FRAC_BITS = 12
#: ``beta`` is clipped to ``[2**-BETA_RANGE_BITS, 2**BETA_RANGE_BITS]`` (the integer bounds below)
BETA_RANGE_BITS = 4
B_MIN, B_MAX = 1 << (BETA_FRAC_BITS - BETA_RANGE_BITS), 1 << (BETA_FRAC_BITS + BETA_RANGE_BITS)
#: fractional bits of the per-sample ratio ``rho = beta_in / beta_out``
RHO_FRAC_BITS = 22
#: bits of the adapter's pooled input ``g`` and of its int8 weights
GAP_BITS, ADAPTER_WEIGHT_QMAX = 8, 127
INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class AdapterRecipe:
    """The integer constants of one adapter branch (see the block comment above).

    ``gap`` turns the int32 spatial sum of ``q0`` into the 8-bit mean ``g``
    (range ``gap_range``); ``w1`` (int8 ``(H, C)``), ``b1`` (int32) and ``sfc1``
    give the uint8 hidden layer; ``w2`` (int8 ``(H,)``) and ``sfc2`` plus ``b2``
    (int, ``Q BETA_FRAC_BITS``) give ``B`` in ``[B_MIN, B_MAX]``.  ``scales``
    keeps the real steps ``(s_g, s1 (H,), s_h, s2)`` for the float twin.
    """

    name: str
    window: int
    gap: SFC
    gap_range: tuple
    w1: np.ndarray
    b1: np.ndarray
    sfc1: SFC
    w2: np.ndarray
    sfc2: SFC
    b2: int
    scales: tuple


def adapter_weight_scale(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 steps ``max|w_row| / 127`` of each row of ``w`` (1.0 for an all-zero row)."""
    m = np.abs(np.asarray(w, dtype=np.float64)).max(axis=-1)
    return np.where(m > 0, m / ADAPTER_WEIGHT_QMAX, 1.0)


def adapter_recipe(graph: "Graph", name: str, plan: QuantPlan) -> AdapterRecipe:
    """The integer constants of the adapter of tensor ``name`` (its ``dynamic`` entry).

    ``w1`` rows are quantized at ``s1_j = max|w1_j|/127``, ``w2`` at ``s2 = max|w2|/127``
    (``rint``, half to even); ``b1q = rint(b1 / (s_g * s1_j))``.

    Raises
    ------
    PlanError
        The adapter's width differs from the tensor's channels, or a bias leaves int32.
    """
    tq = plan.tensors[name]
    a = plan.adapters[tq.dynamic]
    node = graph.nodes[name]
    w1, b1, w2 = a.arrays()
    channels = int(node.shape[1])
    if w1.shape[1] != channels:
        raise PlanError(f"adapters.{tq.dynamic}.w1: {w1.shape[1]} columns for tensor {name} of {channels} channels")
    window = int(np.prod(node.shape[2:])) if len(node.shape) > 2 else 1
    s_t = plan.scale(name)
    s_g = math.ldexp(s_t, tq.bits - GAP_BITS)
    gap_range = S.qrange(GAP_BITS, tq.signed)
    gap = plan_sfc(math.ldexp(1.0, GAP_BITS - tq.bits) / window, f"adapters.{tq.dynamic}: average")
    s1 = adapter_weight_scale(w1)
    w1q = np.clip(np.rint(w1 / s1[:, None]), -ADAPTER_WEIGHT_QMAX, ADAPTER_WEIGHT_QMAX).astype(np.int8)
    b1q = np.rint(b1 / (s_g * s1))
    if np.abs(b1q).max() > INT32_MAX >> 1:
        raise PlanError(f"adapters.{tq.dynamic}.b1: the bias does not fit the int32 accumulator")
    s_h = a.hidden_scale
    sfc1 = plan_sfc(s_g * s1 / s_h, f"adapters.{tq.dynamic}: w1 to hidden_scale")
    s2 = float(adapter_weight_scale(w2[None, :])[0])
    w2q = np.clip(np.rint(w2 / s2), -ADAPTER_WEIGHT_QMAX, ADAPTER_WEIGHT_QMAX).astype(np.int8)
    sfc2 = plan_sfc(math.ldexp(s_h * s2, BETA_FRAC_BITS), f"adapters.{tq.dynamic}: w2 to beta")
    b2q = int(np.clip(np.rint(math.ldexp(a.b2, BETA_FRAC_BITS)), -INT32_MAX, INT32_MAX))
    return AdapterRecipe(tq.dynamic, window, gap, gap_range, w1q, b1q.astype(np.int32), sfc1, w2q, sfc2, b2q,
                         (s_g, s1, s_h, s2))


def adapter_beta(q0: np.ndarray, r: AdapterRecipe) -> np.ndarray:
    """The numpy semantics of the branch: ``B`` (int64, one per sample) of integers ``q0`` (N, C, ...)."""
    q0 = np.asarray(q0, dtype=np.int64)
    g = q0.reshape(q0.shape[0], q0.shape[1], -1).sum(axis=2)
    g = np.clip(apply_sfc(g, r.gap), *r.gap_range)
    acc1 = g @ r.w1.astype(np.int64).T + r.b1.astype(np.int64)
    h = np.clip(apply_sfc(acc1, r.sfc1), 0, 255)
    acc2 = h @ r.w2.astype(np.int64)
    return np.clip(apply_sfc(acc2[:, None], r.sfc2)[:, 0] + r.b2, B_MIN, B_MAX)


@dataclass(frozen=True)
class DynamicRequant:
    """A per-sample requantization ``q = clip(round(acc * M_c * beta_in / beta_out))`` (integers).

    ``multiplier``/``right``: the static ratio ``M_c ~= m_c * 2**-n_c`` (Q31, per channel; a power of two
    ``2**-k`` is ``m = 2**30, n = k + 30``).  ``beta_in``/``beta_out`` name the tensors whose ``B`` the
    ratio uses (``None``: static, ``B = 2**F``).  Per sample::

        rho   = floor((B_in * 2**RHO + floor(B_out / 2)) / B_out)        # beta_in / beta_out, Q22
        mb_c  = (m_c * rho + 2**(RHO-1)) >> RHO                           # int64
        q     = clip((acc * mb_c + 2**(n_c-1)) >> n_c)

    and when ``beta_in`` is dynamic the layer's bias is ``floor((q_b * 2**F + floor(B_in/2)) / B_in)``
    (:func:`dynamic_bias`).  With ``B_in = B_out`` (both ``2**F`` included) ``rho = 2**RHO`` and
    ``mb = m``: the static program exactly.
    """

    multiplier: np.ndarray
    right: np.ndarray
    beta_in: str | None
    beta_out: str | None


def dynamic_input(graph: "Graph", node: "Node", plan: QuantPlan) -> str | None:
    """The dynamic tensor ``node`` reads (its first input's owner), or ``None``."""
    if not node.inputs:
        return None
    src = graph.tensor_of(node.inputs[0])
    return src if src in plan.tensors and plan.tensors[src].dynamic is not None else None


def dynamic_requant(graph: "Graph", node: "Node", acc: Accumulator, plan: QuantPlan, static_out: bool = False) -> Requant:
    """The requantization of a layer that reads or writes a dynamic tensor (``static_out``: into the output's
    static step, the ``q0`` the adapter reads).  Its ``sfc`` is the static ``M_c`` in multiply form (what the
    SFC reports count: a per-sample multiply), ``dynamic`` the per-sample form.

    Raises
    ------
    PlanError
        The product ``acc * mb`` could leave int64, or the per-sample bias int32.
    """
    rq = requant(node, acc, plan)
    beta_in = dynamic_input(graph, node, plan)
    beta_out = None if static_out or plan.tensors[node.name].dynamic is None else node.name
    if beta_in is None and beta_out is None:
        return rq
    m, n = S.quantize_multiplier(rq.sfc.ratio)
    sfc = SFC("multiply", rq.sfc.ratio, multiplier=m, right=n)
    growth = (1 << (2 * BETA_RANGE_BITS)) if beta_in and beta_out else (1 << BETA_RANGE_BITS)
    bias = int(np.abs(acc.bias.astype(np.int64)).max()) if acc.bias is not None else 0
    bound = acc.bound + (bias * ((1 << BETA_RANGE_BITS) - 1) if beta_in else 0)
    if bound > INT32_MAX:
        raise PlanError(f"{node.name}: the per-sample bias (up to {1 << BETA_RANGE_BITS}x) can overflow the int32 accumulator")
    if bound * (int(m.max()) * growth + 1) + (1 << int(n.max())) > INT64_MAX:
        raise PlanError(f"{node.name}: the per-sample requantization acc * M * beta_in / beta_out can overflow int64")
    return Requant(sfc, rq.qmin, rq.qmax, rq.dtype, "int64", zero_point=rq.zero_point, dynamic=DynamicRequant(m, n, beta_in, beta_out))


def dynamic_rho(b_in, b_out) -> np.ndarray:
    """``rho = floor((B_in * 2**RHO + floor(B_out/2)) / B_out)`` (int64; ``None`` stands for ``2**F``)."""
    one = np.int64(1 << BETA_FRAC_BITS)
    b_in = one if b_in is None else np.asarray(b_in, dtype=np.int64)
    b_out = one if b_out is None else np.asarray(b_out, dtype=np.int64)
    return (b_in * (np.int64(1) << RHO_FRAC_BITS) + (b_out >> 1)) // b_out


def apply_dynamic(acc: np.ndarray, d: DynamicRequant, b_in=None, b_out=None) -> np.ndarray:
    """Numpy semantics of :class:`DynamicRequant` on ``acc`` (N, C, ...) (int64, unclipped)."""
    acc = np.asarray(acc, dtype=np.int64)
    rho = np.broadcast_to(dynamic_rho(b_in, b_out), (acc.shape[0],)).reshape((-1, 1))
    c = d.multiplier.size
    mb = S.round_shift(np.asarray(d.multiplier, dtype=np.int64).reshape(1, c) * rho, RHO_FRAC_BITS)
    shape = (acc.shape[0], c) + (1,) * (acc.ndim - 2) if c > 1 else (acc.shape[0],) + (1,) * (acc.ndim - 1)
    right = np.asarray(d.right, dtype=np.int64).reshape((1, c) + (1,) * (acc.ndim - 2) if c > 1 else (1,) * acc.ndim)
    return S.round_shift(acc * mb.reshape(shape), right)


def dynamic_bias(bias: np.ndarray, b_in) -> np.ndarray:
    """``floor((q_b * 2**F + floor(B/2)) / B)``: the int32 bias at the per-sample unit ``s_in * beta * s_w`` (N, C)."""
    b = np.asarray(b_in, dtype=np.int64).reshape(-1, 1)
    return (np.asarray(bias, dtype=np.int64).reshape(1, -1) * (1 << BETA_FRAC_BITS) + (b >> 1)) // b


def adaptive_candidates(graph: "Graph") -> list[str]:
    """Tensors an adapter may scale: conv outputs (NCHW) that only conv2d/dense layers with integer
    outputs read, at least one of them a conv2d (ASQ adapts conv inputs)."""
    out = []
    for name, node in graph.nodes.items():
        if node.kind != "conv2d" or len(node.shape) != 4 or not materialized(graph, name):
            continue
        readers = [c for c in graph.consumers(name)]
        if readers and all(c.kind in ("conv2d", "dense") and needs_integer_output(graph, c.name) and
                           graph.tensor_of(c.inputs[0]) == name for c in readers) and any(c.kind == "conv2d" for c in readers):
            out.append(name)
    return out


def check_adaptive(graph: "Graph", names, what: str = "--adaptive-step {}") -> list[str]:
    """The adapted tensors ``names`` (each a tensor, or a conv layer whose input is adapted), checked.

    Raises
    ------
    PlanError
        One line naming a tensor an adapter cannot scale, and why.
    """
    ok = set(adaptive_candidates(graph))
    out = []
    for n in names:
        if n not in graph.nodes:
            raise PlanError(f"{what.format(n)}: no layer or tensor named {n!r}")
        t = n if n in ok else graph.tensor_of(graph.nodes[n].inputs[0]) if graph.nodes[n].inputs else n
        if t not in ok:
            raise PlanError(f"{what.format(n)}: the adapted tensor must be a conv2d output read only by conv2d/dense "
                            f"layers with integer outputs ({t} is not)")
        if t not in out:
            out.append(t)
    return out
