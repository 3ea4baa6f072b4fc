"""Build a :class:`QuantPlan` from a graph and its calibration statistics (pure numpy)."""

from __future__ import annotations

import math

import numpy as np

from ..calibrate.observers import TensorStats, choose_clip
from ..config import QuantConfig, ScaleMode, WeightGranularity
from ..errors import PlanError
from ..graph import PASSTHROUGH, Graph
from . import scales as S
from .quantplan import LayerQuant, QuantPlan, TensorQuant


def _signed(node, stats: TensorStats) -> bool:
    if node.act is not None and node.act[0] >= 0:
        return False
    return stats.min < 0


def _pot_weight_scales(scales: np.ndarray) -> np.ndarray:
    """Round weight scales up to powers of two (no weight is clipped)."""
    return np.exp2(np.ceil(np.log2(scales)))


def build_plan(graph: Graph, stats: dict, config: QuantConfig = QuantConfig(), input_shape=None) -> QuantPlan:
    """Choose every tensor's scale and every layer's weight scales.

    Parameters
    ----------
    graph : Graph
        The canonical fp32 graph.
    stats : dict of str to TensorStats
        Calibration statistics for every non-passthrough node output.
    config : QuantConfig

    Returns
    -------
    QuantPlan
        ``per-layer`` mode: each tensor is its own group (mantissa, exponent
        from its calibrated scale).  ``pot`` mode: a single group of mantissa 1,
        exponents rounded up (every SFC a shift) and power-of-two weight scales.
    """
    missing = [n for n, node in graph.nodes.items() if node.kind not in PASSTHROUGH and n not in stats]
    if missing:
        raise PlanError(f"no calibration statistics for: {', '.join(missing)}")
    groups: dict[str, float] = {}
    tensors: dict[str, TensorQuant] = {}
    layers: dict[str, LayerQuant] = {}
    pot = config.mode is ScaleMode.POT
    if pot:
        groups["pot"] = 1.0
    for name, node in graph.nodes.items():
        if node.kind in PASSTHROUGH:
            tensors[name] = tensors[node.inputs[0]]
            continue
        st = stats[name]
        bits = config.act_bits_for(name)
        signed = _signed(node, st)
        clip = choose_clip(st, config.calibration, bits, signed, config.percentile)
        if node.act is not None and math.isfinite(node.act[1]):
            clip = min(clip, node.act[1]) if clip > 0 else node.act[1]
        scale = S.activation_scale(clip, bits, signed)
        if pot:
            tensors[name] = TensorQuant(bits, signed, "pot", int(math.ceil(math.log2(scale))))
        else:
            mantissa, exponent = S.split_scale(scale)
            groups[name] = mantissa
            tensors[name] = TensorQuant(bits, signed, name, exponent)
        if node.weight is not None:
            wbits = config.weight_bits_for(name)
            per_channel = config.weight_granularity is WeightGranularity.PER_CHANNEL
            ws = S.weight_scales(node.weight, wbits, per_channel)
            if pot:
                ws = _pot_weight_scales(ws)
            layers[name] = LayerQuant(wbits, config.weight_granularity.value, tuple(float(s) for s in ws))
    return QuantPlan(graph.fingerprint, config, groups, tensors, layers, input_shape)
