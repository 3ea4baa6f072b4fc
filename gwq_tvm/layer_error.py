"""Where a quantized model loses accuracy: the error of every quantized tensor, worst first.

For every tensor ``t`` of the plan (a node output that owns a scale), on
``N`` sample inputs, with float activations ``r`` of the fp32 model:

* ``sqnr_db``, the **accumulated** error: SQNR (dB, per sample then mean, as
  :func:`gwq_tvm.fidelity.sqnr_db`) of the integer program's activation
  ``s_t * q_t`` against ``r``.  The integers come from the numpy reference
  interpreter (:mod:`gwq_tvm.reference`) running the realized program with
  every tensor exposed; they carry all upstream error.
* ``local_sqnr_db``: the SQNR of ``r`` quantized at ``t``'s own scale and
  range, ``s_t * clip(floor(r / s_t + 1/2), qmin, qmax)``, against ``r``: the
  noise ``t`` adds where everything upstream is float.
* ``alone_kl``, the error ``t`` **alone** causes at the output:
  ``KL(softmax(fp32) || softmax(y_t))`` where ``y_t`` are the logits of the
  fake-quant simulator (:class:`~gwq_tvm.calibration.sensitivity.FakeQuantSimulator`)
  given ``t`` as its only activation tensor: every other activation stays
  float.  The simulator quantizes weights as planned; ``weights_only_kl`` (no
  activation quantized) is the floor every ``alone_kl`` includes.  One
  switchable, segmented simulator serves every tensor (step 0 switches a
  tensor off), and each probe re-runs only the segments from ``t``'s on.
* ``sfc``: the kinds of scale conversion into ``t`` (``shift``, ``multiply``,
  ``identity``; ``quantize`` for the model input, ``passthrough`` for
  tensors that keep their input's scale, ``dequantize`` for a model output
  the program dequantizes straight from its accumulator).  Such an output is
  never quantized: its ``sqnr_db`` is the logits' SQNR and it has no
  ``local_sqnr_db`` or ``alone_kl``.

Tensors are sorted by ``alone_kl``, largest first (the promotion candidate).
With several model outputs the KL figures compare the first one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from .calibration.sensitivity import SIM_BATCH, FakeQuantSimulator, kl_divergence
from .fidelity import sqnr_db
from .extract import extract_graph
from .graph import Graph, kind_of
from .passes.realize import RealizeIntegerProgram
from .plan.program import materialized, out_range, sfc_sites
from .plan.quantplan import QuantPlan
from .reference import run_reference
from .runtime import batches, host_target

#: Sample inputs used when none are given.
DEFAULT_SAMPLES = 256


def _materialized(graph: Graph) -> list[str]:
    """Tensors the integer program holds as integers (an output dequantized from its accumulator is not one)."""
    return [t for t in graph.tensors() if materialized(graph, t)]


def _with_probes(mod: tvm.IRModule, graph: Graph, names: list[str]) -> tvm.IRModule:
    """``mod`` whose ``main`` also returns a same-shape reshape of each tensor in ``names``.

    A reshape is a passthrough node that reads its input as integers, so the
    realized program returns each tensor's integers, dequantized at its own
    scale; the original nodes, their fusion and their names are unchanged
    (the probes are appended after every original binding).
    """
    func = mod["main"]
    bb = relax.BlockBuilder()
    out = func.body.body
    with bb.function("main", list(func.params), attrs=dict(func.attrs.items()) if func.attrs is not None else None):
        with bb.dataflow():
            for binding in func.body.blocks[0].bindings:
                if binding.var.same_as(out) and isinstance(binding.value, relax.Tuple):
                    continue  # a model with several outputs: its output tuple is rebuilt below with the probes
                bb.emit_normalized(binding)
            probes = [bb.emit(R.reshape(graph.nodes[n].var, graph.nodes[n].var.ty.shape)) for n in names]
            fields = [graph.nodes[n].var for n in graph.outputs]
            result = bb.emit_output(relax.Tuple(fields + probes))
        bb.emit_func_output(result)
    return bb.get()


def _probe_plan(plan: QuantPlan, probe_graph: Graph, names: list[str]) -> QuantPlan:
    probes = [n for n in probe_graph.nodes if n not in plan.tensors]
    tensors = {**plan.tensors, **{p: plan.tensors[src] for p, src in zip(probes, names)}}
    return dataclasses.replace(plan, fingerprint=probe_graph.fingerprint, tensors=tensors)


def _run_tuple(vm, x: np.ndarray, fixed_batch) -> list[np.ndarray]:
    """Every output of a tuple-returning ``main`` over ``x``."""
    parts = [[o.numpy()[:n] for o in vm["main"](tvm.runtime.tensor(chunk))]
             for chunk, n in batches(x, fixed_batch or len(x), padded=bool(fixed_batch))]
    return [np.concatenate(p) for p in zip(*parts)]


def _alone_logits(sim: FakeQuantSimulator, x: np.ndarray, scales: dict) -> tuple[np.ndarray, dict]:
    """The logits of ``sim`` (switchable, segmented) on ``x`` with no activation quantized, and with each tensor of
    ``scales`` quantized alone at its step: the run with all off is cut into segments once per batch, and each
    tensor's run starts from the cut at its own segment."""
    off = sim.args({n: 0.0 for n in sim.names})
    base, alone = [], {n: [] for n in scales}
    for chunk, n_real in batches(x, sim.fixed_batch or min(len(x), SIM_BATCH), padded=bool(sim.fixed_batch)):
        cuts, logits = sim.run_cuts(chunk, off)
        base.append(logits[:n_real])
        for name, step in scales.items():
            k = sim.segment_of[name]
            alone[name].append(sim.run_from(k, cuts[k], sim.args({name: step}, off))[:n_real])
    return np.concatenate(base), {n: np.concatenate(v) for n, v in alone.items()}


def _reference_tuple(mod, x: np.ndarray, fixed_batch) -> list[np.ndarray]:
    """Every output of the numpy reference of ``mod`` over ``x``, in the batches the model was exported for.

    A model with a static batch (e.g. an ONNX LRN imported as ``reshape`` to
    ``(1, 1, C, H, W)``) only runs on that batch, in the reference as in TVM.
    """
    parts = []
    for chunk, n in batches(x, fixed_batch or len(x), padded=bool(fixed_batch)):
        out = run_reference(mod, chunk)
        parts.append([np.asarray(o)[:n] for o in (out if isinstance(out, (list, tuple)) else [out])])
    return [np.concatenate(p) for p in zip(*parts)]


def _sfc_kinds(graph: Graph, plan: QuantPlan) -> dict[str, str]:
    kinds: dict[str, set] = {}
    for site in sfc_sites(graph, plan):
        kinds.setdefault(site.node, set()).add(site.kind)
    out = {}
    for name, node in graph.nodes.items():
        if node.kind == "input":
            out[name] = "quantize"
        elif kind_of(node).passthrough:
            out[name] = "passthrough"
        elif not materialized(graph, name):
            out[name] = "dequantize"
        else:
            out[name] = "+".join(sorted(kinds.get(name, {"identity"})))
    return out


def _local_error(r: np.ndarray, scale: float, qmin: int, qmax: int) -> np.ndarray:
    q = np.clip(np.floor(r.astype(np.float64) / scale + 0.5), qmin, qmax) * scale
    return sqnr_db(r, q)


def _mean_db(values: np.ndarray) -> float | None:
    """Mean SQNR in dB; ``None`` (JSON null) when every sample is exact (infinite)."""
    m = float(np.mean(values))
    return m if np.isfinite(m) else None


def layer_error(qmodel, data, *, samples: int = DEFAULT_SAMPLES) -> dict:
    """The per-tensor error of ``qmodel`` on ``data`` (see the module docstring), worst first.

    Parameters
    ----------
    qmodel : QuantizedModel
    data : numpy.ndarray
        Sample inputs (e.g. the calibration set); the first ``samples`` are used.

    Returns
    -------
    dict
        ``samples``, ``program_kl`` (the integer program's output KL),
        ``weights_only_kl`` and ``tensors``: one dict per tensor with ``name``,
        ``kind``, ``bits``, ``signed``, ``scale``, ``sfc``, ``sqnr_db``,
        ``local_sqnr_db`` and ``alone_kl``, sorted by ``alone_kl`` descending.
    """
    fm, graph, plan = qmodel.float_model, qmodel.graph, qmodel.plan
    x = np.ascontiguousarray(np.asarray(data, np.float32)[:samples])
    names = _materialized(graph)
    probe_mod = _with_probes(fm.mod, graph, names)
    probe_graph = extract_graph(probe_mod)
    realized = RealizeIntegerProgram(_probe_plan(plan, probe_graph, names))(probe_mod)
    n_out = len(graph.outputs)
    ints = _reference_tuple(realized, x, fm.input_shape[0])
    floats = _run_tuple(relax.VirtualMachine(tvm.compile(probe_mod, host_target()), tvm.cpu()), x, fm.input_shape[0])
    ref_logits, int_logits = floats[0], np.asarray(ints[0])
    exposed = {n: (floats[n_out + i], np.asarray(ints[n_out + i])) for i, n in enumerate(names)}
    for i, n in enumerate(graph.outputs):
        exposed.setdefault(n, (floats[i], np.asarray(ints[i])))

    layers = {n: (plan.layers[n].bits, plan.layers[n].scale_map(graph.nodes[n].weight.shape)) for n in plan.layers}
    ranges = {}
    for name in names:
        qmin, qmax = out_range(graph.nodes[name], plan)
        z = plan.tensors[name].zero_point  # the codes less the zero point: r = s * (q - z)
        ranges[name] = (qmin - z, qmax - z)
    weights_logits, alone_logits = _alone_logits(FakeQuantSimulator(fm, graph, ranges, layers, segmented=True, switchable=True),
                                                 x, {n: plan.scale(n) for n in names})
    weights_only = kl_divergence(ref_logits, weights_logits)
    sfc = _sfc_kinds(graph, plan)
    rows = []
    for name in graph.tensors():
        if name not in exposed:
            continue
        node, tq = graph.nodes[name], plan.tensors[name]
        r, q = exposed[name]
        row = {"name": name, "kind": node.kind, "bits": tq.bits, "signed": tq.signed, "scale": plan.scale(name),
               "sfc": sfc[name], "sqnr_db": _mean_db(sqnr_db(r, q)), "local_sqnr_db": None, "alone_kl": None}
        if name in names:
            row["alone_kl"] = kl_divergence(ref_logits, alone_logits[name])
            row["local_sqnr_db"] = _mean_db(_local_error(r, plan.scale(name), *ranges[name]))
        rows.append(row)
    rows.sort(key=lambda row: -1.0 if row["alone_kl"] is None else -row["alone_kl"])
    return {"samples": len(x), "program_kl": kl_divergence(ref_logits, int_logits), "weights_only_kl": weights_only,
            "tensors": rows}


def format_layer_error(result: dict) -> str:
    """The per-tensor table for the terminal, worst first."""
    lines = [f"per-tensor error on {result['samples']} samples (worst first); output KL of the integer program "
             f"{result['program_kl']:.4g}, of the weights alone {result['weights_only_kl']:.4g}",
             f"{'tensor':<20} {'bits':>4} {'SFC in':<15} {'SQNR dB':>8} {'local dB':>8} {'alone KL':>10}"]
    for row in result["tensors"]:
        bits = f"{row['bits']}{'s' if row['signed'] else 'u'}"
        alone = "-" if row["alone_kl"] is None else f"{row['alone_kl']:.4g}"
        local = "-" if row["alone_kl"] is None else _db(row["local_sqnr_db"])
        lines.append(f"{row['name']:<20} {bits:>4} {row['sfc']:<15} {_db(row['sqnr_db']):>8} {local:>8} {alone:>10}")
    return "\n".join(lines)


def _db(v) -> str:
    return "inf" if v is None else f"{v:.2f}"
