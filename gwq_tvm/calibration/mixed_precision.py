"""The ``mixed_precision`` planning strategy: proxy importance, LIMPQ's ILP, an ordinary QuantPlan (runs on TVM).

1. :func:`~gwq_tvm.calibration.sensitivity.bit_importance` measures each
   layer's and each input tensor's output divergence at every candidate
   width on the calibration images;
2. :class:`~gwq_tvm.plan.mixed_precision.Problem` picks the widths under the
   size and BitOps budgets;
3. the widths become per-node ``bits`` of an ordinary configuration and
   :func:`~gwq_tvm.plan.planner.build_plan` makes the plan, so the compiler
   sees nothing new.  ``plan.provenance["config"]`` is that ordinary
   configuration; ``plan.provenance["mixed_precision"]`` records the search
   (the asked configuration, budgets, figures, chosen bits, importance values,
   solve time), never read by the compiler.
"""

from __future__ import annotations

import time

from ..config import QuantConfig
from ..graph import Graph, kind_of
from ..plan import mixed_precision as M
from ..plan import strategies
from ..plan.planner import build_plan, provenance
from .sensitivity import bit_importance

#: calibration images the proxy importance runs on
PROXY_SAMPLES = 64


def layer_macs(node) -> int:
    """Multiply-accumulates per sample of a layer: weights x output positions
    (``weight.size * elements / C_out``: ``kh*kw*C_in/groups * C_out * H*W`` for a conv)."""
    return int(node.weight.size) * int(node.elements) // int(node.weight.shape[0])


def problem_layers(graph: Graph, config: QuantConfig) -> tuple[list, dict, dict]:
    """The ILP's layers and what it may not choose.

    Returns
    -------
    (list of Layer, dict of str to int, dict of str to int)
        The layers; fixed weight widths (first and last layer at ``end_bits``
        or 8, kinds with fixed weight bits at theirs); fixed tensor widths (the
        model input at ``end_bits`` or 8).
    """
    ends = config.end_bits or 8
    names = graph.layers()
    layers = [M.Layer(n, graph.tensor_of(graph.nodes[n].inputs[0]), int(graph.nodes[n].weight.size),
                      layer_macs(graph.nodes[n])) for n in names]
    fixed_w = {n: ends for n in names[:1] + names[-1:]}
    for n in names:
        kind_bits = getattr(kind_of(graph.nodes[n]), "weight_bits", None)
        if kind_bits is not None:
            fixed_w[n] = kind_bits
    return layers, fixed_w, {graph.input: ends}


def ordinary_config(config: QuantConfig) -> QuantConfig:
    """``config`` without its mixed-precision options (the settings every candidate plan shares)."""
    return config.replace(mixed_precision=False, size_budget=None, bitops_budget=None, importance="proxy",
                          mp_weight_bits=QuantConfig.mp_weight_bits, mp_act_bits=QuantConfig.mp_act_bits, end_bits=None)


@strategies.register("mixed_precision")
def mixed_precision_strategy(ctx: strategies.PlanContext):
    """The ``mixed_precision`` strategy (see the module docstring)."""
    cfg, graph = ctx.config, ctx.graph
    base = ordinary_config(cfg)
    layers, fixed_w, fixed_a = problem_layers(graph, cfg)
    free_layers = [l.name for l in layers if l.name not in fixed_w]
    free_tensors = list(dict.fromkeys(l.tensor for l in layers if l.tensor not in fixed_a))
    size = M.parse_budget(cfg.size_budget, "size_budget") if cfg.size_budget is not None else None
    bitops = M.parse_budget(cfg.bitops_budget, "bitops_budget") if cfg.bitops_budget is not None else None
    # feasibility does not depend on the importance: refuse an impossible budget before measuring it
    zero_w, zero_a = {n: dict.fromkeys(cfg.mp_weight_bits, 0.0) for n in free_layers}, {t: dict.fromkeys(cfg.mp_act_bits, 0.0) for t in free_tensors}
    M.Problem(layers, zero_w, zero_a, weight_bits=cfg.mp_weight_bits, act_bits=cfg.mp_act_bits,
              fixed_weights=fixed_w, fixed_acts=fixed_a).solve(size, bitops)
    t0 = time.perf_counter()
    iw, ia = bit_importance(ctx.model, graph, ctx.stats, base, ctx.images, free_layers, free_tensors,
                            cfg.mp_weight_bits, cfg.mp_act_bits, samples=PROXY_SAMPLES)
    importance_seconds = time.perf_counter() - t0
    problem = M.Problem(layers, {n: M.monotone(v) for n, v in iw.items()}, {t: M.monotone(v) for t, v in ia.items()},
                        weight_bits=cfg.mp_weight_bits, act_bits=cfg.mp_act_bits, fixed_weights=fixed_w, fixed_acts=fixed_a)
    policy = problem.solve(size, bitops)
    bits = {}
    for n in set(policy.weight_bits) | set(policy.act_bits):
        bits[n] = (policy.weight_bits.get(n, base.weight_bits), policy.act_bits.get(n, base.act_bits))
    chosen = base.replace(bits=bits)
    plan = build_plan(graph, ctx.stats, chosen, ctx.input_shape, ctx.sensitivity)
    record = {
        "config": cfg.to_dict(), "importance_kind": cfg.importance, "importance_samples": min(PROXY_SAMPLES, len(ctx.images)),
        "objective": "sum_l alpha*I_w[l,b_w] + sum_t I_a[t,b_a], alpha=1 (LIMPQ, one activation indicator per tensor)",
        "budgets": policy.budgets,
        "size_bytes": policy.size_bytes, "size_w8a8_bytes": policy.size_w8a8,
        "bitops": policy.bitops, "bitops_w8a8": policy.bitops_w8a8,
        "weight_bits": policy.weight_bits, "act_bits": policy.act_bits,
        "layer_input": {l.name: l.tensor for l in layers},
        "fixed": {"weights": fixed_w, "tensors": fixed_a},
        "importance": {"weights": iw, "tensors": ia},
        "solve_seconds": policy.solve_seconds, "importance_seconds": importance_seconds,
    }
    return plan.replace(provenance=provenance(chosen, mixed_precision=record))
