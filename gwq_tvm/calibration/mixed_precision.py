"""The ``mixed_precision`` planning strategy: importance, LIMPQ's ILP, an ordinary QuantPlan (runs on TVM).

1. the importance of each layer's weights and each input tensor at every
   candidate width: read from ``config.importance_file`` when given (any kind;
   the only source of ``learned`` indicators, which need labelled training:
   :mod:`gwq_tvm.qat.importance`), else measured on the calibration images:
   ``proxy``, the output divergence (:func:`~gwq_tvm.calibration.sensitivity.bit_importance`),
   or ``hessian``, HAWQ's trace times perturbation (:func:`~gwq_tvm.qat.importance.hessian_importance`);
2. :class:`~gwq_tvm.plan.mixed_precision.Problem` picks the widths under the
   size, BitOps and latency budgets (the latency table measured on this machine:
   :func:`latency_inputs`) (``mp_search="greedy"``: the greedy baseline instead of the ILP);
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
from ..errors import ConfigError
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
    from ..config import MIXED_FIELDS

    return config.replace(end_bits=None, **{k: QuantConfig.__dataclass_fields__[k].default for k in MIXED_FIELDS})


def free_names(layers, fixed_w: dict, fixed_a: dict) -> tuple[list, list]:
    """The layers and the tensors the ILP chooses widths for (graph order)."""
    return ([l.name for l in layers if l.name not in fixed_w],
            list(dict.fromkeys(l.tensor for l in layers if l.tensor not in fixed_a)))


def read_importance(path, graph: Graph, config: QuantConfig, free_layers: list, free_tensors: list) -> dict:
    """The indicator file ``path`` checked against this graph, importance kind and candidate widths.

    Raises
    ------
    ConfigError
        One line: a file of another model, kind or widths, or without a free layer/tensor.
    """
    from ..errors import ConfigError
    from ..qat.importance import load_importance

    rec = load_importance(path)
    if rec["kind"] != config.importance:
        raise ConfigError(f"importance file {path} holds {rec['kind']} indicators; importance is {config.importance!r}")
    if rec["fingerprint"] != graph.fingerprint:
        raise ConfigError(f"importance file {path} was made for graph {rec['fingerprint']}, this model is {graph.fingerprint}")
    for names, got, bits, what in ((free_layers, rec["weights"], config.mp_weight_bits, "layer"),
                                   (free_tensors, rec["tensors"], config.mp_act_bits, "tensor")):
        for n in names:
            if n not in got or any(b not in got[n] for b in bits):
                raise ConfigError(f"importance file {path} has no indicator of {what} {n} at every width {tuple(bits)}")
    return rec


def measure_importance(ctx, base: QuantConfig, free_layers: list, free_tensors: list) -> tuple[dict, dict, float]:
    """``(I_w, I_a, seconds)`` of ``ctx.config.importance`` (proxy or hessian) measured on the calibration images."""
    cfg = ctx.config
    t0 = time.perf_counter()
    if cfg.importance == "hessian":
        try:
            from ..qat.importance import hessian_importance
        except ImportError as err:
            raise ConfigError(f"importance 'hessian' needs torch ({err}): pip install 'gwq-tvm[torch]'") from None
        iw, ia = hessian_importance(ctx.graph, ctx.stats, base, ctx.images, free_layers, free_tensors,
                                    cfg.mp_weight_bits, cfg.mp_act_bits, samples=PROXY_SAMPLES)
    else:
        iw, ia = bit_importance(ctx.model, ctx.graph, ctx.stats, base, ctx.images, free_layers, free_tensors,
                                cfg.mp_weight_bits, cfg.mp_act_bits, samples=PROXY_SAMPLES)
    return iw, ia, time.perf_counter() - t0


def latency_inputs(ctx, base: QuantConfig, layers, fixed_w: dict) -> tuple[dict, float, dict]:
    """``(t_l[b], T_w8a8, table)`` for the ILP's latency row: the table at ``config.latency_table`` when it
    exists, else measured (:mod:`gwq_tvm.schedules.latency`) on this machine or on ``config.latency_board``
    for ``config.latency_target``, and written there if a path is given."""
    from pathlib import Path

    from ..passes.realize import RealizeIntegerProgram
    from ..runtime import host_target
    from ..schedules import latency as L
    from ..schedules.targets import resolve_target

    cfg, graph = ctx.config, ctx.graph
    target = resolve_target(cfg.latency_target)
    path = Path(cfg.latency_table) if cfg.latency_table is not None else None
    if path is not None and path.exists():
        table = L.load_table(path, graph, target)
    else:
        if ctx.model is None:
            raise ConfigError("a latency budget without a latency table needs the float model to measure it")
        if cfg.latency_board is None and str(target) != str(host_target()):
            raise ConfigError(f"latencies for target {cfg.latency_target} are measured on its board: give "
                              "latency_board KEY@HOST:PORT (--latency-board), or a latency_table measured there")
        w8a8 = build_plan(graph, ctx.stats, base, ctx.input_shape, ctx.sensitivity)
        signed = {t: tq.signed for t, tq in w8a8.tensors.items()}
        table = L.make_table(graph, signed, RealizeIntegerProgram(w8a8)(ctx.model.mod), ctx.model.input_shape, target,
                             board=cfg.latency_board)
        if path is not None:
            L.save_table(path, table)
    widths = set(cfg.mp_weight_bits) | set(fixed_w.values()) | {8}
    return L.layer_latency(table, graph, widths), float(table["program_w8a8_s"]), table


@strategies.register("mixed_precision")
def mixed_precision_strategy(ctx: strategies.PlanContext):
    """The ``mixed_precision`` strategy (see the module docstring)."""
    cfg, graph = ctx.config, ctx.graph
    base = ordinary_config(cfg)
    layers, fixed_w, fixed_a = problem_layers(graph, cfg)
    free_layers, free_tensors = free_names(layers, fixed_w, fixed_a)
    size = M.parse_budget(cfg.size_budget, "size_budget") if cfg.size_budget is not None else None
    bitops = M.parse_budget(cfg.bitops_budget, "bitops_budget") if cfg.bitops_budget is not None else None
    latency = M.parse_latency_budget(cfg.latency_budget) if cfg.latency_budget is not None else None
    if latency is not None and cfg.mp_search == "greedy":
        raise ConfigError("the greedy baseline takes size and BitOps budgets only; a latency budget needs the ILP")
    lat, lat8, table = latency_inputs(ctx, base, layers, fixed_w) if latency is not None else (None, None, None)
    # feasibility does not depend on the importance: refuse an impossible budget before measuring it
    zero_w, zero_a = {n: dict.fromkeys(cfg.mp_weight_bits, 0.0) for n in free_layers}, {t: dict.fromkeys(cfg.mp_act_bits, 0.0) for t in free_tensors}
    M.Problem(layers, zero_w, zero_a, weight_bits=cfg.mp_weight_bits, act_bits=cfg.mp_act_bits,
              fixed_weights=fixed_w, fixed_acts=fixed_a, latency=lat, latency_w8a8=lat8).solve(size, bitops, latency)
    if cfg.importance_file is not None:
        rec = read_importance(cfg.importance_file, graph, cfg, free_layers, free_tensors)
        iw = {n: {b: rec["weights"][n][b] for b in cfg.mp_weight_bits} for n in free_layers}
        ia = {t: {a: rec["tensors"][t][a] for a in cfg.mp_act_bits} for t in free_tensors}
        importance_seconds, source = rec["seconds"], {"file": str(cfg.importance_file), "settings": rec.get("settings", {})}
    else:
        iw, ia, importance_seconds = measure_importance(ctx, base, free_layers, free_tensors)
        source = {"samples": min(PROXY_SAMPLES, len(ctx.images))}
    problem = M.Problem(layers, {n: M.monotone(v) for n, v in iw.items()}, {t: M.monotone(v) for t, v in ia.items()},
                        weight_bits=cfg.mp_weight_bits, act_bits=cfg.mp_act_bits, fixed_weights=fixed_w, fixed_acts=fixed_a,
                        latency=lat, latency_w8a8=lat8)
    policy = problem.greedy(size, bitops) if cfg.mp_search == "greedy" else problem.solve(size, bitops, latency)
    bits = {}
    for n in set(policy.weight_bits) | set(policy.act_bits):
        bits[n] = (policy.weight_bits.get(n, base.weight_bits), policy.act_bits.get(n, base.act_bits))
    chosen = base.replace(bits=bits)
    plan = build_plan(graph, ctx.stats, chosen, ctx.input_shape, ctx.sensitivity)
    from ..schedules.latency import int4_step
    from ..schedules.targets import resolve_target

    host = resolve_target(cfg.latency_target)  # this machine unless the latencies are a board's
    step = int4_step(host)  # the stored size is the kernel family's: nibbles only where it has an int4 step
    record = {
        "config": cfg.to_dict(), "importance_kind": cfg.importance, "importance_source": source, "search": cfg.mp_search,
        "objective": "sum_l alpha*I_w[l,b_w] + sum_t I_a[t,b_a], alpha=1 (LIMPQ, one activation indicator per tensor)",
        "budgets": policy.budgets,
        "size_bytes": policy.size_bytes, "size_w8a8_bytes": policy.size_w8a8,
        "stored_bytes": {"bytes": sum(M.stored_bytes(l.weights, policy.weight_bits[l.name], step) for l in layers),
                         "target": str(host), "target_name": cfg.latency_target or "host", "int4_step": step},
        "bitops": policy.bitops, "bitops_w8a8": policy.bitops_w8a8,
        "weight_bits": policy.weight_bits, "act_bits": policy.act_bits,
        "layer_input": {l.name: l.tensor for l in layers},
        "fixed": {"weights": fixed_w, "tensors": fixed_a},
        "importance": {"weights": iw, "tensors": ia},
        "solve_seconds": policy.solve_seconds, "importance_seconds": importance_seconds,
    }
    if table is not None:
        record["latency"] = {"predicted_s": policy.latency_s, "w8a8_program_s": policy.latency_w8a8,
                             "target": table["target"], "device": table.get("device", "local"),
                             "int4_step": table["int4_step"],
                             "table": str(cfg.latency_table) if cfg.latency_table else None,
                             "layers": table["layers"], "measure_seconds": table.get("seconds")}
    return plan.replace(provenance=provenance(chosen, mixed_precision=record))
