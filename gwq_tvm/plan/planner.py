"""Build a :class:`QuantPlan` from a graph and its calibration statistics (pure numpy)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..stats import TensorStats, choose_clip
from ..config import Calibration, QuantConfig, ScaleMode, WeightGranularity
from ..errors import PlanError
from ..graph import Graph, Node, kind_of
from . import scales as S
from . import post, strategies, sublayer
from .grouping import ErrorCurve, Grouping, error_curve, group_tensors
from .program import materialized, needs_integer_output, sfc_edges, zero_point_blocker
from .quantplan import Arithmetic, QuantPlan, TensorQuant, WeightQuant


@dataclass(frozen=True)
class TensorChoice:
    """What calibration says about one tensor before any sharing of scales."""

    bits: int
    signed: bool
    scale: float  # the scale the calibration rule picks for this tensor alone


def _signed(node: Node, stats: TensorStats) -> bool:
    if node.act is not None and node.act[0] >= 0:
        return False
    return stats.min < 0


def apply_end_bits(graph: Graph, config: QuantConfig) -> QuantConfig:
    """``config`` with ``end_bits`` spelled out as ``bits`` overrides for ``graph``.

    The input tensor gets ``end_bits`` activation bits; the first and last weight
    layers get ``end_bits`` weight bits (their outputs keep the default activation
    bits).  Explicit ``bits`` entries win.  Idempotent.  With ``mixed_precision``
    ``config`` is returned as it is (the ILP holds the ends at ``end_bits``).
    """
    if config.end_bits is None or config.mixed_precision:  # mixed precision fixes the ends in its ILP
        return config
    weighted = graph.layers()
    ends = {graph.input: (config.weight_bits, config.end_bits)}
    for n in weighted[:1] + weighted[-1:]:
        ends[n] = (config.end_bits, config.act_bits)
    return config.replace(bits={**ends, **dict(config.bits)})


def tensor_choices(graph: Graph, stats: dict, config: QuantConfig) -> dict[str, TensorChoice]:
    """Bits, signedness and calibrated scale of every quantized tensor, in graph order."""
    missing = [n for n in graph.tensors() if n not in stats]
    if missing:
        raise PlanError(f"no calibration statistics for: {', '.join(missing)}")
    out = {}
    for name in graph.tensors():
        node, st = graph.nodes[name], stats[name]
        bits = config.act_bits_for(name)
        signed = _signed(node, st)
        clip = choose_clip(st, config.calibration, bits, signed, config.percentile)
        if node.act is not None and math.isfinite(node.act[1]):
            clip = min(clip, node.act[1]) if clip > 0 else node.act[1]
        if config.act_clip_k is not None:  # GDRQ Scale-Clip of activations
            sigma = sublayer.activation_sigma(st.hist, st.bin_edges, signed, config.scale_clip or "std")
            if sigma > 0:
                clip = min(clip, config.act_clip_k * sigma)
        out[name] = TensorChoice(bits, signed, S.activation_scale(clip, bits, signed))
    return out


def error_curves(graph: Graph, stats: dict, config: QuantConfig, choices: dict | None = None,
                 sensitivity: dict | None = None) -> dict[str, ErrorCurve]:
    """The GWQ :class:`ErrorCurve` of every quantized tensor.

    A curve's weight is 0 for a tensor the program never materializes, else its
    ``sensitivity`` (1 without one; see
    :func:`gwq_tvm.calibration.sensitivity.tensor_sensitivity`).
    """
    choices = choices or tensor_choices(graph, stats, config)
    search = config.calibration is Calibration.MSE
    curves = {}
    for name, ch in choices.items():
        materialized = graph.nodes[name].kind in ("input", "float") or needs_integer_output(graph, name)
        weight = (sensitivity or {}).get(name, 1.0) if materialized else 0.0
        qmax = S.qrange(ch.bits, ch.signed)[1]
        curves[name] = error_curve(stats[name], ch.scale, qmax, search=search, weight=weight)
    return curves


def gwq_grouping(graph: Graph, stats: dict, config: QuantConfig, choices: dict | None = None, sensitivity: dict | None = None):
    """Error curves and the :class:`Grouping` GWQ mode uses (see :mod:`gwq_tvm.plan.grouping`).

    Returns
    -------
    (dict of str to ErrorCurve, Grouping)
    """
    if config.min_shift_share is not None:
        raise PlanError("min_shift_share picks the grouping by the calibration loss of each candidate's integer "
                        "program: plan through gwq_tvm.quantize (or gwq_tvm.qat.select.select_plan)")
    curves = error_curves(graph, stats, config, choices, sensitivity)
    groups = config.groups
    if groups is not None and groups > len(curves):
        raise PlanError(f"groups={groups} is more than the model's {len(curves)} quantized tensors")
    grouping = group_tensors(curves, sfc_edges(graph), groups=groups, tolerance=config.tolerance, sfc_cost=config.sfc_cost)
    return curves, grouping


def layer_blocks(node: Node, config: QuantConfig):
    """The block grid ``config`` asks for ``node`` (``None``: per-channel; see :mod:`gwq_tvm.plan.sublayer`).

    PTQ-SL blocks and GDRQ filter groups apply to conv and dense layers;
    other kinds with weights (the per-channel affine) stay per-channel.
    """
    if config.weight_granularity is WeightGranularity.PER_TENSOR and config.weight_blocks is None and config.weight_groups is None:
        return (1, 1)
    if node.kind not in ("conv2d", "dense"):
        return None
    if config.weight_blocks is not None:
        return config.weight_blocks
    if config.weight_groups is not None:
        return (config.weight_groups, 1)
    return None


def layer_quant(node: Node, config: QuantConfig) -> WeightQuant:
    """Weight bits, granularity and weight scales of a layer under ``config``.

    Max-calibrated (or Scale-Clipped) scales of the layer's blocks, rounded up
    to powers of two in ``pot`` and ``gwq`` mode (:func:`gwq_tvm.plan.sublayer.weight_quant`).
    A kind with fixed ``weight_bits`` (the per-channel affine) takes them unless
    ``config.bits`` names the layer.
    """
    fixed = getattr(kind_of(node), "weight_bits", None)
    wbits = fixed if fixed is not None and node.name not in config.bits else config.weight_bits_for(node.name)
    if config.weights == "post" and node.kind in ("conv2d", "dense") and post.MIN_BITS <= wbits <= post.MAX_BITS:
        units = post.choose_units(node.weight, wbits, pot=config.mode is not ScaleMode.PER_LAYER)
        return WeightQuant(wbits, tuple(float(u) for u in units), granularity="channel", codebook="post")
    return sublayer.weight_quant(node.name, node.weight, wbits, pot=config.mode is not ScaleMode.PER_LAYER,
                                 blocks=layer_blocks(node, config), fit=config.weight_blocks_fit,
                                 reorder=config.reorder_channels, clip_rule=config.scale_clip, clip_k=config.scale_clip_k)


def unit_scale_tensors(graph: Graph, choices: dict) -> list[str]:
    """Tensors GWQ gives a mantissa-1 scale.

    Candidates are the tensors a kind names in :meth:`Kind.unit_scale_inputs`
    (the gate of a product, whose SFC ``s_a * s_b / s_out`` is a shift only
    when the gate's mantissa is 1).  A candidate is taken when the SFC
    elements it can turn into shifts, ``sum`` of its readers' edges, exceed the
    elements of its own edges that pinning may turn into multiplies (an SE gate
    is a table output with none, or a 1x1 conv of ``C`` elements gating
    ``C*H*W``).
    """
    from .program import sfc_edges

    edges = sfc_edges(graph)
    own = {}
    for e in edges:
        for t in {e.src, e.dst}:
            own[t] = own.get(t, 0) + e.elements
    gains: dict[str, int] = {}
    for node in graph.nodes.values():
        for t in kind_of(node).unit_scale_inputs(graph, node):
            if t in choices:
                gains[t] = gains.get(t, 0) + sum(e.elements for e in edges if e.node == node.name)
    return [t for t, gain in gains.items() if gain > own.get(t, 0)]


def build_plan(graph: Graph, stats: dict, config: QuantConfig = QuantConfig(), input_shape=None,
               sensitivity: dict | None = None, grouping: Grouping | None = None) -> QuantPlan:
    """Choose every tensor's scale and every layer's weight scales.

    Parameters
    ----------
    graph : Graph
        The canonical fp32 graph.
    stats : dict of str to TensorStats
        Calibration statistics for every non-passthrough node output.
    config : QuantConfig
    input_shape : tuple, optional
        Recorded in the plan for checking run-time data.
    sensitivity : dict of str to float, optional
        GWQ only: per-tensor output sensitivities weighting the error curves
        (:func:`gwq_tvm.calibration.sensitivity.tensor_sensitivity`).
    grouping : Grouping, optional
        GWQ only: use this grouping of the graph's tensors instead of
        :func:`gwq_grouping` (e.g. one of :func:`gwq_tvm.plan.grouping.sweep_groupings`).

    Returns
    -------
    QuantPlan
        * ``per-layer``: each tensor is its own group (the calibrated scale split
          into mantissa and exponent); max-calibrated weight scales.
        * ``pot``: one group of mantissa 1, max/percentile/MSE clip rounded *up*
          to a power of two, max-calibrated weight scales rounded up.
        * ``gwq``: groups from :func:`gwq_grouping`; each tensor's exponent is the
          best one for its group's mantissa (the :func:`unit_scale_tensors` take
          their best power of two, in a group of mantissa 1); weight scales as in ``pot``.
    """
    config = apply_end_bits(graph, config)
    choices = tensor_choices(graph, stats, config)
    groups: dict[str, float] = {}
    tensors: dict[str, TensorQuant] = {}
    if grouping is not None and config.mode is not ScaleMode.GWQ:
        raise PlanError(f"a grouping applies to mode 'gwq' only (mode is {config.mode.value!r})")
    if config.mode is ScaleMode.GWQ:
        if grouping is None:
            curves, grouping = gwq_grouping(graph, stats, config, choices, sensitivity)
        else:
            curves = error_curves(graph, stats, config, choices, sensitivity)
            if grouping.tensors != tuple(curves):
                raise PlanError("the grouping was made for other tensors than this graph's quantized tensors")
        for g, mantissa in enumerate(grouping.mantissas):
            groups[f"g{g}"] = mantissa
        for name, ch in choices.items():
            g = grouping.group_of(name)
            tensors[name] = TensorQuant(ch.bits, ch.signed, f"g{g}", int(curves[name].exponent[grouping.phases[g]]))
        for name in unit_scale_tensors(graph, choices):
            unit = next((g for g, m in groups.items() if m == 1.0), None)
            if unit is None:
                unit, groups["unit"] = "unit", 1.0
            tensors[name] = TensorQuant(tensors[name].bits, tensors[name].signed, unit, int(curves[name].exponent[0]))
    elif config.mode is ScaleMode.POT:
        groups["pot"] = 1.0
        for name, ch in choices.items():
            tensors[name] = TensorQuant(ch.bits, ch.signed, "pot", int(math.ceil(math.log2(ch.scale))))
    else:
        for name, ch in choices.items():
            mantissa, exponent = S.split_scale(ch.scale)
            groups[name] = mantissa
            tensors[name] = TensorQuant(ch.bits, ch.signed, name, exponent)
    layers = {name: layer_quant(node, config) for name, node in graph.nodes.items()
              if node.weight is not None and not kind_of(node).passthrough}
    if uses_zero_points(config):
        for name in list(tensors):
            tensors, groups = _with_zero_point(graph, name, stats[name], tensors, groups, layers, config.mode)
    for name, node in graph.nodes.items():
        if kind_of(node).passthrough:
            tensors[name] = tensors[graph.tensor_of(name)]
    tensors = {name: tensors[name] for name in graph.nodes}  # graph order
    return fit_bias_scales(QuantPlan(graph.fingerprint, groups, tensors, layers, input_shape=input_shape,
                                     arithmetic=Arithmetic(config.add_precision_bits), provenance=provenance(config)), graph)


#: a zero point is taken only where it lowers the tensor's step at least this much (a symmetric range
#: would otherwise gain the 255/254 of one more level)
ZERO_POINT_GAIN = 0.9


def uses_zero_points(config: QuantConfig) -> bool:
    """Does ``config`` plan asymmetric activations (W8A8 without mixed precision and not ``symmetric_activations``)?"""
    return (not config.symmetric_activations and not config.mixed_precision and config.weight_bits == 8
            and config.act_bits == 8)


def zero_point_choice(lo: float, hi: float, scale: float, bits: int, fixed_mantissa: bool = False,
                      stats: TensorStats | None = None):
    """The unsigned step and zero point of a signed tensor calibrated to ``[lo, hi]`` (``lo < 0 < hi``), or ``None``.

    The symmetric tensor has step ``scale`` (``hi <= (2**(b-1) - 1) * scale``).  Held in
    ``b``-bit unsigned codes with ``r = s' (q - z)``, ``z = clip(round(-lo / s'), 0, 2**b - 1)``:

    * free scale (per-layer mode): ``s' = (hi - lo) / (2**b - 1)``, taken when
      ``s' <= ZERO_POINT_GAIN * scale``;
    * ``fixed_mantissa`` (pot, GWQ: the group decides the mantissa, and zero points do
      not change whether an SFC is a shift): ``s' = scale / 2``, whose codes reach
      ``top = (2**b - 1 - z) s'`` only.  Taken when the squared error this adds by
      clipping the values above ``top`` (from ``stats``' histogram of ``|x|``: above
      ``top >= -lo`` every counted value is positive), per element, is below what the
      finer step saves, ``(s**2 - s'**2) / 12``.

    Returns
    -------
    (float, int) or None
        ``(s', z)``.
    """
    levels = (1 << bits) - 1
    if not (lo < 0 < hi) or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    step = scale / 2 if fixed_mantissa else (hi - lo) / levels
    if not step <= ZERO_POINT_GAIN * scale:
        return None
    z = int(min(max(round(-lo / step), 0), levels))
    if fixed_mantissa:
        top = (levels - z) * step
        if stats is None or top < -lo:
            return None
        centers = (np.asarray(stats.bin_edges[:-1]) + np.asarray(stats.bin_edges[1:])) / 2
        counts = np.asarray(stats.hist, dtype=np.float64)
        above = centers > top
        extra = np.square(centers[above] - top) - np.square(np.maximum(centers[above] - hi, 0))
        if float((counts[above] * extra).sum()) / max(counts.sum(), 1.0) >= (scale ** 2 - step ** 2) / 12:
            return None
    return step, z


def _with_zero_point(graph: Graph, name: str, st: TensorStats, tensors: dict, groups: dict, layers: dict, mode):
    """``(tensors, groups)`` with tensor ``name`` made unsigned with a zero point where
    :func:`zero_point_choice` says so and its producer and readers take one (:func:`~gwq_tvm.plan.program.zero_point_blocker`)."""
    tq = tensors[name]
    if not tq.signed or tq.bits != 8 or tq.dynamic is not None or not materialized(graph, name):
        return tensors, groups
    m = groups[tq.group]
    scale = math.ldexp(m, tq.exponent)
    clip = scale * S.qrange(tq.bits, True)[1]
    choice = zero_point_choice(max(st.min, -clip), min(st.max, clip), scale, tq.bits, mode is not ScaleMode.PER_LAYER, st)
    if choice is None or zero_point_blocker(graph, name, layers) is not None:
        return tensors, groups
    step, z = choice
    groups = dict(groups)
    if mode is ScaleMode.PER_LAYER:
        mantissa, exponent = S.split_scale(step)
        groups[tq.group] = mantissa
    else:
        exponent = tq.exponent - 1
    return {**tensors, name: dataclasses.replace(tq, signed=False, exponent=exponent, zero_point=z)}, groups


def fit_bias_scales(plan: QuantPlan, graph: Graph) -> QuantPlan:
    """``plan`` with weight scales raised where a channel's bias would not fit the int32 accumulator.

    A channel whose weights are tiny next to its bias (a batch norm with
    ``gamma ~ 0`` folded in: the channel is nearly the constant ``b_c``) has a
    tiny max-calibrated ``s_w,c`` and ``q_b = b_c / (s_in s_w,c)`` beyond int32
    (:func:`gwq_tvm.plan.program.layer_accumulator`).  Its scale becomes::

        s_w,c = max(s_w,c, |b_c| / (s_in * BIAS_LIMIT))

    rounded up to a power of two where the layer's scales are powers of two
    (pot, GWQ), so the shift SFCs stay shifts.  The channel's weights then
    quantize to (nearly) zero and it outputs its bias, as the float channel
    does up to its tiny weights.  Per-tensor scales rise together; a layer
    with sub-layer blocks is left as it is (compiling it names the channel).
    """
    layers = dict(plan.layers)
    for name, wq in plan.layers.items():
        node = graph.nodes.get(name)
        if node is None or node.bias is None or wq.granularity not in ("tensor", "channel"):
            continue
        s_in = plan.scale(node.inputs[0])
        floor = np.abs(np.asarray(node.bias, np.float64)) / (s_in * S.BIAS_LIMIT) * (1 + 1e-9)
        scales = np.asarray(wq.scales, np.float64)
        if wq.granularity == "tensor":
            floor = np.array([floor.max()])
        if np.all(scales >= floor):
            continue
        pot = bool(S.is_power_of_two(scales).all())
        if pot:
            floor = np.exp2(np.ceil(np.log2(np.maximum(floor, np.finfo(np.float64).tiny))))
        raised = np.maximum(scales, floor)
        layers[name] = dataclasses.replace(wq, scales=tuple(float(v) for v in raised))
    return plan if layers == plan.layers else dataclasses.replace(plan, layers=layers)


@strategies.register("grouping")
def _grouping_strategy(ctx: strategies.PlanContext) -> QuantPlan:
    """The ``grouping`` strategy: :func:`build_plan`."""
    return build_plan(ctx.graph, ctx.stats, ctx.config, ctx.input_shape, ctx.sensitivity)


def provenance(config: QuantConfig, **extra) -> dict:
    """How a plan was made: the search settings and the tool (recorded, never read by the compiler)."""
    from ..version import __version__

    return {"config": config.to_dict(), "tool": f"gwq-tvm {__version__}", **extra}
