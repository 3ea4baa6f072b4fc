"""How much each activation tensor's quantization noise hurts the model's output (runs on TVM).

The GWQ error curves (:mod:`gwq_tvm.plan.grouping`) measure noise tensor by
tensor; at low bit-widths tensors differ a lot in how much of that noise
reaches the output.  :class:`FakeQuantSimulator` compiles the float model
once with a fake-quantizer ``s * clip(floor(x / s + 1/2), qmin, qmax)`` after
every quantized tensor, the scales ``s`` being *run-time inputs*, and with the
weights fake-quantized at their planned scales; any assignment of activation
scales is then one run, no recompile.  :func:`tensor_sensitivity` uses it to
measure, for each tensor, the output divergence (KL from the fp32 softmax)
per unit of added noise, the weight the planner gives that tensor's curve.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from ..graph import Graph, Node, kind_of
from ..plan import scales as S
from ..runtime import batches, host_target, run_batched
from ..schedules.float import compile_float


#: The simulator computes in float64 by default.  Power-of-two SFCs put exact round-half-up ties on every
#: 2**k-th accumulator value, and float64 products of non-power-of-two scales land within ~1e-13 on
#: either side of them; nudging by TIE_EPS (far above that, far below any real distance from a tie)
#: rounds them up as the integer program does.  A float32 simulator (``dtype="float32"``) is about twice
#: as fast and does not resolve those ties (0.5 + TIE_EPS is 0.5 in float32): it serves statistics of many
#: outputs (:func:`tensor_sensitivity`), never a comparison with one compiled output.
DTYPE = "float64"
TIE_EPS = 1e-9

#: Images per simulator call.  Every image is computed on its own, so the outputs do not depend on the chunking;
#: one call over all 256 sensitivity samples held every float64 intermediate of all of them at once (7.8 GB peak
#: for ResNet-18 at 224 px, benchmarks/results/pipeline_time/pipeline_time_zen4_probe.md).
SIM_BATCH = 32


def _const(value, dtype=DTYPE):
    return relax.const(np.asarray(value, dtype=dtype), dtype)


class Emitter:
    """Emits the graph in float with fake-quantizers on the quantized tensors (the kinds' simulation backend).

    Each kind's :meth:`~gwq_tvm.kinds.base.Kind.simulate` emits its float op
    on ``values`` of its inputs and hands the result to :meth:`finish`, which
    applies the fused activation and the fake-quantizer of the node's tensor.
    With ``switchable``, a tensor whose run-time step is ``s <= 0`` is left
    unquantized (and the biases of its readers unrounded).
    """

    def __init__(self, bb, graph: Graph, bits: dict, weight_scales: dict, weight_bits: dict, scale_vars: dict, param,
                 dtype: str = DTYPE, switchable: bool = False):
        self.bb, self.graph, self.param, self.dtype, self.switchable = bb, graph, param, dtype, switchable
        self.bits, self.weight_scales, self.weight_bits, self.scale_vars = bits, weight_scales, weight_bits, scale_vars
        self.values: dict[str, relax.Expr] = {}

    def const(self, value, dtype=None):
        """A Relax constant in ``dtype``, by default the simulator's."""
        return _const(value, dtype or self.dtype)

    def emit(self, expr):
        return self.bb.emit(expr)

    def finish(self, node: Node, y):
        """Record ``y`` as ``node``'s value after its fused activation and fake-quantizer."""
        if node.act is not None:
            y = self.emit(R.clip(y, relax.prim_value(node.act[0]), relax.prim_value(min(node.act[1], 3.0e38))))
        if node.name in self.scale_vars:
            s = self.scale_vars[node.name]
            qmin, qmax = self.bits[node.name]
            q = R.clip(R.floor(R.add(R.divide(y, s), self.const(0.5 + TIE_EPS))), relax.prim_value(qmin), relax.prim_value(qmax))
            y = self.emit(self._switched(s, R.multiply(q, s), y))
        self.values[node.name] = y

    def _switched(self, s, quantized, plain):
        """``quantized`` where the step ``s > 0`` (always, unless :attr:`switchable`), else ``plain``."""
        return R.where(R.greater(s, self.const(0.0)), quantized, plain) if self.switchable else quantized

    def weight(self, node: Node) -> np.ndarray:
        """The layer's weights fake-quantized at their planned scales: ``s_w * clip(rint(w / s_w))``
        (``s_w`` per channel, or a block scale map broadcastable to the weight)."""
        ws = self.weight_scales[node.name]
        wq = S.quantize_weight(node.weight, ws, self.weight_bits[node.name]).astype(np.float64)
        return wq * (ws if ws.ndim == node.weight.ndim else ws.reshape((-1,) + (1,) * (node.weight.ndim - 1)))

    def weight_const(self, node: Node, layout=None):
        """The layer's fake-quantized weights (:meth:`weight`) as a Relax constant, ``layout`` (numpy to
        numpy, e.g. a transpose) applied first."""
        w = self.weight(node)
        return self.const(layout(w) if layout is not None else w)

    def bias(self, node: Node, y, ndim):
        """Add the bias rounded to the accumulator grid ``s_in * s_w,c``, as the integer program stores it."""
        if node.bias is None:
            return y
        shape = [1] * ndim
        shape[1] = node.bias.size
        b = self.const(node.bias.reshape(shape))
        src = self.graph.tensor_of(node.inputs[0])
        if src in self.scale_vars:
            ws = self.weight_scales[node.name]  # the accumulator unit's weight part: the finest block scale
            ws = ws.reshape(ws.shape[0], -1).min(axis=1) if ws.ndim > 1 else ws
            unit = self.emit(R.multiply(self.scale_vars[src], self.const(ws.reshape(shape))))
            b = self.emit(self._switched(self.scale_vars[src], R.multiply(R.round(R.divide(b, unit)), unit), b))
        return self.emit(R.add(y, b))


def segment_starts(graph: Graph) -> list[int]:
    """Where the graph splits into a chain: 0 and every position ``i`` after which one node's value alone is live.

    A value is live across the split before ``nodes[i]`` when it is made by
    ``nodes[:i]`` and read by ``nodes[i:]`` (model outputs are read at the end).
    Where exactly one is, everything from ``nodes[i]`` on is a function of that
    value: a residual network splits after every block, a plain chain after
    every node, a dense block not at all.
    """
    order = list(graph.nodes)
    pos = {n: i for i, n in enumerate(order)}
    last_read = dict.fromkeys(order, -1)
    for node in graph.nodes.values():
        for src in node.inputs:
            last_read[src] = max(last_read[src], pos[node.name])
    for n in graph.outputs:
        last_read[n] = len(order)
    starts, live = [0], 0
    for i in range(1, len(order)):
        live += last_read[order[i - 1]] >= i  # made by nodes[i-1], read at or after i
        live -= sum(1 for n in order[: i - 1] if last_read[n] == i - 1)  # last read by nodes[i-1]
        if live == 1:
            starts.append(i)
    return starts


class FakeQuantSimulator:
    """The float model with fake-quantized weights and run-time activation scales.

    Parameters
    ----------
    model : FloatModel
    graph : Graph
    tensors : dict of str to (qmin, qmax)
        The activation tensors to fake-quantize and their integer ranges.
    layers : dict of str to (weight_bits, weight_scales)
        ``weight_scales`` per output channel or a scale map (:meth:`WeightQuant.scale_map`).
        Weight quantization of every conv/dense node.
    dtype : {"float64", "float32"}
        float32 does not resolve round-half-up ties exactly (see :data:`TIE_EPS`).
    segmented : bool
        Compile the graph as a chain of functions split at :func:`segment_starts`,
        so :meth:`run_from` can re-run only what follows one segment's input.
        The chain computes what the whole function does, op for op.
    switchable : bool
        A tensor given step 0 at run time is not quantized (see :class:`Emitter`),
        so one compiled simulator serves every subset of ``tensors``.
    """

    def __init__(self, model, graph: Graph, tensors: dict, layers: dict, *, dtype: str = DTYPE, segmented: bool = False,
                 switchable: bool = False):
        self.graph, self.names, self.dtype = graph, list(tensors), dtype
        order = list(graph.nodes)
        self.starts = segment_starts(graph) if segmented else [0]
        # a split needs the live value's whole shape (a dynamic H/W stays one function)
        self.starts = [i for i in self.starts if i == 0 or -1 not in graph.nodes[self._live(order, i)].shape[1:]]
        self.segment_of = {}
        bb = relax.BlockBuilder()
        old = model.mod["main"].params[0]
        x = relax.Var(old.name, old.ty)
        wq = {k: np.asarray(v[1]) for k, v in layers.items()}, {k: v[0] for k, v in layers.items()}
        bounds = list(zip(self.starts, self.starts[1:] + [len(order)]))
        for j, (lo, hi) in enumerate(bounds):
            svars = {n: relax.Var(f"s_{n}", relax.TensorType([], dtype)) for n in self.names}
            if j == 0:
                param = x
            else:  # the one live value: the fake-quantized output of the segment's predecessor node(s)
                shape = graph.nodes[self._live(order, lo)].shape[1:]
                # the model input's batch dim (its symbolic var, if dynamic): kinds' reshapes name it
                param = relax.Var("cut", relax.TensorType([old.ty.shape.values[0], *shape], dtype))
            with bb.function(f"seg{j}" if segmented else "main", [param, *svars.values()]):
                with bb.dataflow():
                    em = Emitter(bb, graph, tensors, *wq, svars, x, dtype, switchable)
                    if j:
                        em.values[self._live(order, lo)] = param
                    for name in order[lo:hi]:
                        self.segment_of[name] = j
                        kind_of(graph.nodes[name]).simulate(em, graph.nodes[name])
                    if hi < len(order):
                        out = bb.emit_output(em.values[self._live(order, hi)])
                    else:
                        outs = [em.values[n] for n in graph.outputs]
                        out = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
                bb.emit_func_output(out)
        self.vm = relax.VirtualMachine(compile_float(bb.get(), host_target()), tvm.cpu())
        self.functions = [f"seg{j}" for j in range(len(bounds))] if segmented else ["main"]
        self.fixed_batch = model.input_shape[0]

    def _live(self, order, i) -> str:
        """The one node whose value crosses the split before ``order[i]``."""
        made = set(order[:i])
        live = {src for n in order[i:] for src in self.graph.nodes[n].inputs if src in made}
        live |= {n for n in self.graph.outputs if n in made}
        (name,) = live
        return name

    def args(self, scales: dict, base: list | None = None) -> list:
        """The run-time scale arguments of ``scales`` (tensor name to step); with ``base`` (an earlier
        :meth:`args` result) only the tensors named in ``scales`` change."""
        args = list(base) if base is not None else [None] * len(self.names)
        for k, n in enumerate(self.names):
            if n in scales:
                args[k] = tvm.runtime.tensor(np.asarray(scales[n], dtype=self.dtype))
        return args

    def run(self, x: np.ndarray, scales: dict) -> np.ndarray:
        """Logits of ``x`` with activation ``scales`` (one float per tensor), in batches the model accepts."""
        x = np.asarray(x, dtype=np.float32)
        outs = []
        for chunk, n in batches(x, self.fixed_batch or min(len(x), SIM_BATCH), padded=bool(self.fixed_batch)):
            outs.append(self.run_from(0, tvm.runtime.tensor(chunk), self.args(scales))[:n])
        return np.concatenate(outs)

    def run_cuts(self, x: np.ndarray, args: list) -> tuple[list, np.ndarray]:
        """One batch ``x`` (the model's fixed batch, if it has one) with scale arguments ``args``
        (:meth:`args`): the input of every segment, and the logits."""
        value, cuts = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32)), []
        for f in self.functions:
            cuts.append(value)
            value = self.vm[f](value, *args)
        return cuts, _first(value).numpy()

    def run_from(self, segment: int, value, args: list) -> np.ndarray:
        """The logits of the chain run from ``segment`` on, its input being ``value`` (from :meth:`run_cuts`)."""
        for f in self.functions[segment:]:
            value = self.vm[f](value, *args)
        return _first(value).numpy()


def _first(out):
    return out if hasattr(out, "numpy") else out[0]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def per_sample_kl(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """``KL(softmax(ref) || softmax(logits))`` of each sample (rows flattened to (N, C))."""
    p, q = _log_softmax(ref_logits.reshape(len(ref_logits), -1)), _log_softmax(logits.reshape(len(logits), -1))
    return (np.exp(p) * (p - q)).sum(axis=1)


def kl_divergence(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean ``KL(softmax(ref) || softmax(logits))`` over the batch (:func:`per_sample_kl`)."""
    return float(per_sample_kl(ref_logits, logits).mean())


#: Smallest sensitivity weight a tensor gets (relative to the mean), so no tensor's noise is free.
MIN_WEIGHT = 0.1
#: A tensor's KL rise is measured on at least MIN_SAMPLES samples and at most ``samples``; it stops taking more once
#: its standard error is at most REL_SE of the rise (or the rise is below zero by two standard errors), or once even
#: ``samples`` would leave the rise within two standard errors of zero (its noise is out of reach of the budget).
MIN_SAMPLES = 64
REL_SE = 0.1


def settled(rise: np.ndarray, budget: int | None = None) -> bool:
    """Whether sampling the per-sample KL rises ``rise`` may stop (:data:`REL_SE`, :data:`MIN_SAMPLES`).

    With ``m`` the mean and ``se`` the standard error of the ``n`` samples so
    far: stop when ``se <= REL_SE * |m|``, when ``m + 2 se < 0``, or (with a
    ``budget`` of samples) when ``2 se * sqrt(n / budget) >= |m|``: the rise
    would still not differ from zero at the whole budget.
    """
    n = len(rise)
    if n < MIN_SAMPLES:
        return False
    mean, se = float(rise.mean()), float(rise.std(ddof=1)) / np.sqrt(n)
    futile = budget is not None and 2 * se * np.sqrt(n / budget) >= abs(mean)
    return se <= REL_SE * abs(mean) or mean + 2 * se < 0 or futile


#: Calibration samples GWQ's output sensitivity uses at most.
SENSITIVITY_SAMPLES = 256


def tensor_sensitivity(model, graph: Graph, stats: dict, config, data: np.ndarray, *, samples: int = SENSITIVITY_SAMPLES,
                       reference: np.ndarray | None = None) -> dict:
    """Output sensitivity of every materialized activation tensor, normalized to mean 1.

    All tensors sit at their best scale (the minimum of their error curve);
    then each tensor ``t`` alone is moved to its worst mantissa, and the rise
    of the KL divergence from the fp32 outputs per unit of added noise is its
    sensitivity::

        raw_t = max(mean_i(KL_i(t at worst) - KL_i(all best)), 0) / added_t
        w_t   = max(raw_t / mean_u(raw_u), MIN_WEIGHT)

    Weights are fake-quantized as the plan will quantize them.  A fall of
    the KL (it happens at 2-3 bits, where the MSE-best scale is not the
    output-best one) counts as :data:`MIN_WEIGHT`.

    The cost is one simulator run per tensor, kept down three ways:

    * the simulator is float32 (a statistic of many outputs does not need
      float64's exact rounding ties);
    * it is a chain of functions (:func:`segment_starts`): a probe of ``t``
      re-runs only the segments from ``t``'s on, from the all-best run's
      value at their input;
    * the samples come in chunks of :data:`SIM_BATCH`, and a tensor stops
      taking more once its mean rise is :func:`settled` (at least
      :data:`MIN_SAMPLES`, at most ``samples``): known to 10%, or out of
      reach of the budget.  On a seeded ResNet-18 at W8A8 most rises stay
      within two standard errors of zero even at 256 samples (the cross term
      of the probed tensor's noise with all the others' dominates them); a
      float-only probe (the tensor alone against the float model) is far less
      noisy but planned MobileNetV3-Small W4A4 3.5 pt worse, so the rise at the
      operating point stays the measure.

    Parameters
    ----------
    model : FloatModel
    graph : Graph
    stats : dict of str to TensorStats
    config : QuantConfig
    data : numpy.ndarray
        Calibration inputs; at most the first ``samples`` are used.
    reference : numpy.ndarray, optional
        The fp32 model's (first) output on the first samples of ``data``
        (``calibrate(..., keep_outputs=samples)``); only that many samples are
        then used.  Without it the float model is compiled and run here.

    Returns
    -------
    dict of str to float
        One weight per tensor of :func:`gwq_tvm.plan.planner.error_curves` with weight > 0.
    """
    from ..plan.planner import error_curves, layer_quant, tensor_choices

    choices = tensor_choices(graph, stats, config)
    curves = error_curves(graph, stats, config, choices)
    names = [n for n, c in curves.items() if c.weight > 0]
    ranges = {n: S.qrange(choices[n].bits, choices[n].signed) for n in names}
    layers = {}
    for n, node in graph.nodes.items():
        if node.weight is not None:
            lq = layer_quant(node, config)
            layers[n] = (lq.bits, lq.scale_map(node.weight.shape))
    if reference is not None:
        samples = min(samples, len(reference))
    x = np.asarray(data[:samples], dtype=np.float32)
    sim = FakeQuantSimulator(model, graph, ranges, layers, dtype="float32", segmented=True)
    ref_vm = None if reference is not None else relax.VirtualMachine(compile_float(model.mod, host_target()), tvm.cpu())
    best = {n: curves[n].scale(curves[n].best_phase) for n in names}
    worst = {n: int(np.argmax(curves[n].added)) for n in names}
    added = {n: float(curves[n].added[worst[n]]) for n in names}
    rises = {n: [] for n in names if added[n] > 0}
    pending = list(rises)
    best_args = sim.args(best)
    probe_args = {n: sim.args({n: curves[n].scale(worst[n])}, best_args) for n in pending}
    fixed = model.input_shape[0]
    done = 0
    for chunk, _ in batches(x, SIM_BATCH):
        if not pending:
            break
        for part, n_real in batches(chunk, fixed or len(chunk), padded=bool(fixed)):
            if ref_vm is None:
                ref = reference[done : done + n_real]
            else:
                ref = _first(ref_vm["main"](tvm.runtime.tensor(part))).numpy()[:n_real]
            done += n_real
            cuts, logits = sim.run_cuts(part, best_args)
            kl0 = per_sample_kl(ref, logits[:n_real])
            for n in pending:
                k = sim.segment_of[n]
                logits = sim.run_from(k, cuts[k], probe_args[n])
                rises[n].append(per_sample_kl(ref, logits[:n_real]) - kl0)
        pending = [n for n in pending if not settled(np.concatenate(rises[n]), len(x))]
    raw = {n: 0.0 for n in names}
    for n, r in rises.items():
        raw[n] = max(float(np.concatenate(r).mean()), 0.0) / added[n]
    mean = float(np.mean(list(raw.values()))) if raw else 0.0
    if mean <= 0:
        return {n: 1.0 for n in names}
    return {n: max(v / mean, MIN_WEIGHT) for n, v in raw.items()}


class _ProxyEmitter(Emitter):
    """The float graph where chosen layers' weights and chosen tensors' fake-quantizers are run-time inputs.

    A tensor's quantizer takes four scalars, the step ``s``, the clip bounds
    ``qmin, qmax`` and ``on``: the value is ``s * min(max(floor(y / s + 1/2), qmin), qmax)``
    where ``on > 0``, else ``y`` unchanged (so one compiled function serves every
    bit-width and "not quantized").  Biases are added in float.
    """

    def __init__(self, bb, graph: Graph, tensors: list, layers: list, param):
        super().__init__(bb, graph, {}, {}, {}, {}, param)
        self.tensor_names, self.layer_names = set(tensors), set(layers)
        self.qvars: dict[str, tuple] = {}
        self.wvars: dict[str, tuple] = {}

    def weight(self, node: Node) -> np.ndarray:
        return np.asarray(node.weight, dtype=np.float64)

    def weight_const(self, node: Node, layout=None):
        w = layout(self.weight(node)) if layout is not None else self.weight(node)
        if node.name not in self.layer_names:
            return self.const(w)
        var = relax.Var(f"w_{node.name}", relax.TensorType(list(w.shape), DTYPE))
        self.wvars[node.name] = (var, layout)
        return var

    def bias(self, node: Node, y, ndim):
        if node.bias is None:
            return y
        shape = [1] * ndim
        shape[1] = node.bias.size
        return self.emit(R.add(y, _const(node.bias.reshape(shape))))

    def finish(self, node: Node, y):
        if node.act is not None:
            y = self.emit(R.clip(y, relax.prim_value(node.act[0]), relax.prim_value(min(node.act[1], 3.0e38))))
        if node.name in self.tensor_names:
            s, lo, hi, on = (relax.Var(f"{k}_{node.name}", relax.TensorType([], DTYPE)) for k in ("s", "lo", "hi", "on"))
            self.qvars[node.name] = (s, lo, hi, on)
            q = R.minimum(R.maximum(R.floor(R.add(R.divide(y, s), _const(0.5 + TIE_EPS))), lo), hi)
            y = self.emit(R.where(R.greater(on, _const(0.0)), R.multiply(q, s), y))
        self.values[node.name] = y


class ProxySimulator:
    """The float model with run-time weights of ``layers`` and run-time fake-quantizers on ``tensors``.

    Compiled once; :meth:`run` quantizes any subset of them at any bit-width
    (weights are passed fake-quantized, tensors as ``(s, qmin, qmax)``), so the
    per-layer, per-width damage :func:`bit_importance` measures costs one run
    each, no recompile.
    """

    def __init__(self, model, graph: Graph, tensors: list, layers: list):
        bb = relax.BlockBuilder()
        old = model.mod["main"].params[0]
        x = relax.Var(old.name, old.ty)
        with bb.function("main"):
            with bb.dataflow():
                em = _ProxyEmitter(bb, graph, tensors, layers, x)
                for node in graph.nodes.values():
                    kind_of(node).simulate(em, node)
                outs = [em.values[n] for n in graph.outputs]
                out = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
            self.qvars, self.wvars = em.qvars, em.wvars
            params = [x] + [v for n in self.qvars for v in self.qvars[n]] + [self.wvars[n][0] for n in self.wvars]
            bb.emit_func_output(out, params=params)
        self.graph = graph
        self.vm = relax.VirtualMachine(compile_float(bb.get(), host_target()), tvm.cpu())
        self.fixed_batch = model.input_shape[0]

    def run(self, x: np.ndarray, tensors: dict | None = None, weights: dict | None = None) -> np.ndarray:
        """Logits of ``x``; ``tensors`` maps a tensor to ``(s, qmin, qmax)``, ``weights`` a layer to its
        (fake-quantized) weights; the rest stay float."""
        tensors, weights = tensors or {}, weights or {}
        args = []
        for n in self.qvars:
            s, lo, hi = tensors.get(n, (1.0, 0.0, 0.0))
            args += [np.float64(s), np.float64(lo), np.float64(hi), np.float64(1.0 if n in tensors else 0.0)]
        for n, (_, layout) in self.wvars.items():
            w = np.asarray(weights[n] if n in weights else self.graph.nodes[n].weight, dtype=np.float64)
            args.append(np.ascontiguousarray(layout(w) if layout is not None else w))
        args = [tvm.runtime.tensor(a) for a in args]
        return run_batched(self.vm, np.asarray(x, dtype=np.float32), min(len(x), SIM_BATCH), fixed_batch=self.fixed_batch,
                           args=args)


def bit_importance(model, graph: Graph, stats: dict, config, data: np.ndarray, layers: list, tensors: list,
                   weight_bits, act_bits, *, samples: int = 64) -> tuple[dict, dict]:
    """Post-training importance of each layer's weights and each tensor at each candidate bit-width.

    ``I_w[l][b] = KL(f(x) || f_{l@b}(x))``: the output divergence (mean KL of
    the softmax over ``samples`` calibration images) of the float model
    ``f`` when *only* layer ``l``'s weights are quantized at ``b`` bits (as the
    plan would: :func:`gwq_tvm.plan.planner.layer_quant` with ``weight_bits=b``),
    everything else float; ``I_a[t][a]`` likewise for tensor ``t`` alone at
    ``a`` bits at its calibrated scale (:func:`gwq_tvm.plan.planner.tensor_choices`
    with ``act_bits=a``).  A proxy for LIMPQ's learned indicators for users who
    cannot train: one compile, then ``len(layers) * len(weight_bits) +
    len(tensors) * len(act_bits)`` runs.

    Parameters
    ----------
    config : QuantConfig
        The settings of the plan (calibration rule, weight granularity, mode), without bit overrides.

    Returns
    -------
    (dict of str to dict of int to float, dict of str to dict of int to float)
        ``I_w`` and ``I_a``.
    """
    from ..plan.planner import layer_quant, tensor_choices

    x = np.asarray(data[:samples], dtype=np.float32)
    sim = ProxySimulator(model, graph, tensors, layers)
    ref = sim.run(x)
    iw = {}
    for n in layers:
        node = graph.nodes[n]
        iw[n] = {}
        for b in weight_bits:
            smap = layer_quant(node, config.replace(weight_bits=b)).scale_map(node.weight.shape)
            wq = S.quantize_weight(node.weight, smap, b).astype(np.float64) * smap
            iw[n][b] = max(kl_divergence(ref, sim.run(x, weights={n: wq})), 0.0)
    ia = {t: {} for t in tensors}
    for a in act_bits:
        choices = tensor_choices(graph, stats, config.replace(act_bits=a))
        for t in tensors:
            qmin, qmax = S.qrange(a, choices[t].signed)
            ia[t][a] = max(kl_divergence(ref, sim.run(x, tensors={t: (choices[t].scale, qmin, qmax)})), 0.0)
    return iw, ia
