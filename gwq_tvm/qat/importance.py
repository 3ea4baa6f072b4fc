"""Importance indicators for the mixed-precision ILP that need torch: LIMPQ's learned step sizes and a HAWQ-style proxy.

Learned (LIMPQ, seed 003; the authors' ``indicators_pretraining``)
------------------------------------------------------------------
:class:`JointModel` runs the graph's float model with every quantized layer's
weights and every quantized activation tensor behind LSQ fake-quantizers
(:func:`~gwq_tvm.qat.fakequant.lsq`), and gives each quantizer **one learned
step per candidate bit-width**: ``s[l, b]`` for layer ``l``'s weights at
``b in mp_weight_bits`` and ``s[t, a]`` for tensor ``t`` at ``a in mp_act_bits``.
:func:`train_indicators` trains all of them in **one joint run**: at every
optimizer step each free layer draws its weight width and each free tensor its
activation width uniformly at random, and the forward/backward pass goes
through the drawn quantizers only (the others get no gradient and Adam leaves
them alone), together with the float weights.  After training the indicators are

    I_w[l][b] = s[l, b],     I_a[t][a] = s[t, a]

the learned steps themselves, as the authors' ``importance_extractor.py``
reads them (per-tensor steps; a larger learned step at a width means the
layer's values are represented more coarsely there).  The ILP
(:class:`~gwq_tvm.plan.mixed_precision.Problem`) then minimises their sum.
Where our scheme differs from the authors' code, on purpose:

* by default one sampled policy per step.  The authors' code also runs, before
  it, one pass per candidate width with every free layer at that width
  (their ``set_uniform_policy_mode``), accumulating all gradients into one
  optimizer step; ``uniform_passes=True`` (``plan --uniform-passes``) does
  that too, at ``1 + len(weight widths)`` times the cost.  Our activation candidates differ from the weights' ({4, 8} against
  {2, 3, 4, 8}), so uniform pass ``k`` puts every free layer's weights at the
  ``k``-th weight width and every free tensor at the smallest activation width
  not below it (the largest if none is): {2, 3, 4} -> 4, 8 -> 8;
* Adam on ``log s`` (theirs: SGD on ``s`` with LSQ's gradient scale
  ``1/sqrt(N * qmax)``, an SGD device that Adam's per-parameter normalisation
  makes moot; in the log domain Adam's steps are relative, so one learning
  rate suits 2-bit and 8-bit steps alike);
* weight steps start at LSQ's ``2 * mean|W| / sqrt(qmax)``, activation steps
  at the calibrated scale of the tensor at that width
  (:func:`~gwq_tvm.plan.planner.tensor_choices`) instead of LSQ's first-batch rule;
* points where a lower width has the *smaller* step (the authors erase them
  with a huge value) are levelled by :func:`~gwq_tvm.plan.mixed_precision.monotone`
  in the strategy, as for every importance kind.

Layers and tensors the ILP does not choose (the first and last layers, the
model input, tensors no layer reads) are quantized at their fixed width with
a single learned step.  The weights trained here serve the indicators only;
the chosen policy is fine-tuned from the original weights (``gwq-tvm train``).

HAWQ-style Hessian trace (baseline)
-----------------------------------
:func:`hessian_importance`: ``I_w[l][b] = Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2``
(HAWQ-V2/V3's sensitivity), ``H_l`` the Hessian of the loss in layer ``l``'s
``n_l`` weights, its trace estimated by Hutchinson's method,
``Tr(H) ~ mean_k v_k^T H v_k`` over Rademacher vectors ``v_k`` (Hessian-vector
products by double back-propagation); ``Q_b`` the plan's own weight
quantization at ``b`` bits (:func:`~gwq_tvm.plan.planner.layer_quant`).
Activations alike: ``I_a[t][a] = Tr(H_t) / n_t * E||Q_a(x_t) - x_t||^2`` with
``H_t`` the per-sample Hessian in tensor ``t`` (``n_t`` elements) and ``Q_a``
at the tensor's calibrated scale for ``a`` bits.  The loss is the
cross-entropy against the float model's own predictions (post-training: the
calibration images carry no labels).

Indicator files
---------------
:func:`save_importance` / :func:`load_importance` keep any kind of indicator
(``learned``, ``proxy``, ``hessian``) as JSON with the graph fingerprint and
the candidate widths, so the ILP reruns for every budget without training or
measuring again (``QuantConfig.importance_file``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import write_text
from ..errors import ConfigError, PlanError
from ..graph import Graph, kind_of
from ..kinds import Kind
from ..kinds.layer import LayerKind
from ..plan import program as P
from ..plan import scales as S
from .fakequant import lsq

#: format tag of an indicator file
FORMAT = "gwq-tvm importance"
#: importance kinds an indicator file may hold
KINDS = ("learned", "proxy", "hessian")
#: Adam learning rate of the log-steps in the joint run (relative change per step).  On the bundled ResNet one
#: epoch of 20k images at this rate left every learned step within 12% of its LSQ start
#: (benchmarks/results/mixed_precision): the indicators mostly rank layers by ``mean|W|``.
INDICATOR_SCALE_LR = 1e-2


# --------------------------------------------------------------------------------------------------------------------
# LIMPQ: the joint model
# --------------------------------------------------------------------------------------------------------------------
def lsq_init(weight: np.ndarray, bits: int) -> float:
    """LSQ's initial weight step ``2 * mean|W| / sqrt(qmax)`` (``qmax`` = :func:`~gwq_tvm.plan.scales.weight_qmax`)."""
    m = float(np.abs(weight).mean())
    return 2.0 * m / math.sqrt(S.weight_qmax(bits)) if m > 0 else 1.0


class JointModel(nn.Module):
    """The float graph with per-candidate-width LSQ quantizers on weights and activation tensors.

    Parameters
    ----------
    graph : Graph
    stats : dict of str to TensorStats
        Calibration statistics (signedness and the initial activation steps).
    config : QuantConfig
        The ordinary settings (calibration rule) the activation steps start from.
    layers, tensors : list of str
        The free layers and tensors (the ILP's); each gets one step per candidate width.
    weight_bits, act_bits : tuple of int
        Candidate widths.
    fixed_weights, fixed_acts : dict of str to int
        Widths of the other layers and quantized tensors (default ``config.weight_bits``/``config.act_bits``).
    """

    def __init__(self, graph: Graph, stats: dict, config, layers, tensors, weight_bits, act_bits, *,
                 fixed_weights: dict | None = None, fixed_acts: dict | None = None):
        super().__init__()
        from ..plan.planner import tensor_choices

        unsupported = sorted({n.attrs.get("op", n.kind) for n in graph.nodes.values()
                              if type(kind_of(n)).float_torch is Kind.float_torch})
        if unsupported:
            raise ConfigError(f"learned importance cannot train models with float-fallback ops: {', '.join(unsupported)}")
        self.graph = graph
        self.free_layers, self.free_tensors = list(layers), list(tensors)
        self.wb, self.ab = tuple(sorted(weight_bits)), tuple(sorted(act_bits))
        all_layers = graph.layers()
        for n in all_layers:
            if not isinstance(kind_of(graph.nodes[n]), LayerKind):
                raise ConfigError(f"learned importance: layer {n} ({graph.nodes[n].kind}) has no torch layer function")
        #: the quantized tensors (a final layer's output stays an int32 accumulator in the program)
        self.quantized = [t for t in graph.tensors() if P.materialized(graph, t)]
        missing = [t for t in self.free_tensors if t not in self.quantized]
        if missing:
            raise PlanError(f"tensors {', '.join(missing)} are not quantized by the program")
        fixed_weights, fixed_acts = dict(fixed_weights or {}), dict(fixed_acts or {})
        #: candidate widths of every layer / tensor (one entry for the fixed ones)
        self.layer_bits = {n: self.wb if n in self.free_layers else (fixed_weights.get(n, config.weight_bits),) for n in all_layers}
        self.tensor_bits = {t: self.ab if t in self.free_tensors else (fixed_acts.get(t, config.act_bits),) for t in self.quantized}
        self.weight = nn.ParameterDict({n: nn.Parameter(torch.from_numpy(graph.nodes[n].weight.astype(np.float32).copy()))
                                        for n in all_layers})
        self.bias = nn.ParameterDict({n: nn.Parameter(torch.from_numpy(graph.nodes[n].bias.astype(np.float32).copy()))
                                      for n in all_layers if graph.nodes[n].bias is not None})
        steps = {}
        for n, bits in self.layer_bits.items():
            for b in bits:
                steps[self.key(n, b, "w")] = math.log(lsq_init(graph.nodes[n].weight, b))
        self.signed = {}
        for a in sorted({a for bits in self.tensor_bits.values() for a in bits}):
            choices = tensor_choices(graph, stats, config.replace(bits={}, act_bits=a))
            for t, bits in self.tensor_bits.items():
                self.signed[t] = choices[t].signed
                if a in bits:
                    steps[self.key(t, a, "a")] = math.log(choices[t].scale)
        #: log of every step (float64 scalars)
        self.log_step = nn.ParameterDict({k: nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in steps.items()})
        self.initial = dict(steps)
        #: the widths the next forward uses: layers' weights and tensors
        self.policy = {"w": {n: bits[-1] for n, bits in self.layer_bits.items()},
                       "a": {t: bits[-1] for t, bits in self.tensor_bits.items()}}
        #: optimizer steps each (name, width) was drawn in
        self.draws = {k: 0 for k in steps}

    @staticmethod
    def key(name: str, bits: int, what: str) -> str:
        """Parameter name of the step of layer ``name``'s weights (``what="w"``) or tensor ``name`` (``"a"``) at ``bits``."""
        return f"{name}__{what}{bits}"

    def step(self, name: str, bits: int, what: str, dtype=torch.float32) -> torch.Tensor:
        """The (differentiable) step ``exp(log_step)`` of ``name``'s weights (``"w"``) or tensor (``"a"``) at ``bits``."""
        return torch.exp(self.log_step[self.key(name, bits, what)]).to(dtype)

    def sample_(self, rng: np.random.Generator) -> dict:
        """Draw every free layer's weight width and every free tensor's width uniformly; returns the policy."""
        for n in self.free_layers:
            self.policy["w"][n] = int(rng.choice(self.wb))
        for t in self.free_tensors:
            self.policy["a"][t] = int(rng.choice(self.ab))
        return self._count_policy()

    def uniform_(self, bits: int) -> dict:
        """Put every free layer's weights at ``bits`` and every free tensor at the smallest activation width
        ``>= bits`` (the largest if none is): one of the authors' uniform passes.  Returns the policy."""
        act = min((a for a in self.ab if a >= bits), default=self.ab[-1])
        for n in self.free_layers:
            self.policy["w"][n] = bits
        for t in self.free_tensors:
            self.policy["a"][t] = act
        return self._count_policy()

    def _count_policy(self) -> dict:
        """Count the current policy's (name, width) pairs as drawn; return a copy of it."""
        for what, chosen in self.policy.items():
            for n, b in chosen.items():
                self.draws[self.key(n, b, what)] += 1
        return {k: dict(v) for k, v in self.policy.items()}

    def quant_weight(self, n: str, dtype=torch.float32) -> torch.Tensor:
        b = self.policy["w"][n]
        qmax = S.weight_qmax(b)
        return lsq(self.weight[n].to(dtype), self.step(n, b, "w", dtype), -qmax, qmax)

    def quant_act(self, t: str, x: torch.Tensor) -> torch.Tensor:
        a = self.policy["a"][t]
        qmin, qmax = S.qrange(a, self.signed[t])
        return lsq(x, self.step(t, a, "a", x.dtype), qmin, qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals: dict[str, torch.Tensor] = {}
        quantized = set(self.quantized)
        for name, node in self.graph.nodes.items():
            ins = [vals[i] for i in node.inputs] if node.inputs else [x]
            kind = kind_of(node)
            if name in self.weight:
                b = self.bias[name].to(x.dtype) if name in self.bias else None
                y = kind.torch_layer(ins[0], self.quant_weight(name, x.dtype), b, node)
            else:
                y = kind.float_torch(node, ins)
            if node.act is not None:
                y = torch.clamp(y, node.act[0], node.act[1])
            if name in quantized:
                y = self.quant_act(name, y)
            vals[name] = y
        return vals[self.graph.outputs[0]]

    def indicators(self) -> tuple[dict, dict]:
        """``(I_w, I_a)``: the learned steps of the free layers and tensors at every candidate width."""
        iw = {n: {b: float(self.step(n, b, "w", torch.float64).detach()) for b in self.wb} for n in self.free_layers}
        ia = {t: {a: float(self.step(t, a, "a", torch.float64).detach()) for a in self.ab} for t in self.free_tensors}
        return iw, ia


def train_indicators(model: JointModel, images: np.ndarray, labels: np.ndarray, cfg=None, *, log=None,
                     max_steps: int | None = None, uniform_passes: bool = False) -> dict:
    """LIMPQ's joint training of ``model`` (in place): one sampled policy per step.

    With ``uniform_passes`` each step first runs one pass per candidate weight
    width with every free layer at it (:meth:`JointModel.uniform_`), then the
    sampled policy; the gradients of all passes add up into one optimizer step,
    as in the authors' ``indicators_pretraining``.

    Adam with two groups (weights and biases at ``cfg.lr``; log-steps at
    ``cfg.scale_lr``), cosine schedule, loss ``(1 - d) * CE(labels) + d * KL(float teacher)``
    with ``d = cfg.distill`` (:class:`~gwq_tvm.qat.train.TrainConfig`); epoch ``e``'s
    data order and the policies from ``cfg.seed + e``.

    Returns
    -------
    dict
        ``{"steps", "seconds", "history": [per-epoch loss], "draws": {name: {bits: count}}}``.
    """
    from .train import TrainConfig, check_training_data, distill_loss

    cfg = cfg or TrainConfig(epochs=1, scale_lr=INDICATOR_SCALE_LR)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_node = model.graph.nodes[model.graph.outputs[0]]
    images, labels = check_training_data(images, labels, None, out_node.shape[-1])
    n = len(images)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if max_steps is None else min(max_steps, cfg.epochs * steps_per_epoch)
    weights = list(model.weight.values()) + list(model.bias.values())
    opt = torch.optim.Adam([{"params": weights, "lr": cfg.lr}, {"params": list(model.log_step.values()), "lr": cfg.scale_lr}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    teacher = None
    if cfg.distill > 0:
        from .model import float_forward

        with torch.no_grad():
            teacher = np.concatenate([float_forward(model.graph, torch.from_numpy(images[i:i + 1000])).numpy()
                                      for i in range(0, n, 1000)])
    t0, done, history = time.time(), 0, []
    model.train()
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng(cfg.seed + epoch)
        order = rng.permutation(n)
        loss_sum, seen = 0.0, 0
        for b in range(steps_per_epoch):
            if done >= total:
                break
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = torch.from_numpy(images[idx]), torch.from_numpy(labels[idx])
            opt.zero_grad(set_to_none=True)
            t = None if teacher is None else torch.from_numpy(teacher[idx])
            for bits in (model.wb if uniform_passes else ()):
                model.uniform_(bits)
                distill_loss(model(x), y, t, cfg.distill).backward()
            model.sample_(rng)
            loss = distill_loss(model(x), y, t, cfg.distill)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
            done += 1
        if seen:
            history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "images": seen})
            if log:
                log(f"indicator training epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.4f} ({time.time() - t0:.0f} s)")
    model.eval()
    draws = {"weights": {n: {b: model.draws[model.key(n, b, "w")] for b in model.wb} for n in model.free_layers},
             "tensors": {t: {a: model.draws[model.key(t, a, "a")] for a in model.ab} for t in model.free_tensors}}
    return {"steps": done, "seconds": time.time() - t0, "history": history, "draws": draws}


def learn_importance(model, calib_data, images, labels, config, train_config=None, *, input_shape=None, log=None,
                     uniform_passes: bool = False) -> dict:
    """LIMPQ's learned indicators of ``model`` for the mixed-precision ILP of ``config``.

    Calibrates ``model`` on ``calib_data`` (signedness and initial activation
    steps), builds the :class:`JointModel` over the ILP's free layers and
    tensors (:func:`~gwq_tvm.calibration.mixed_precision.problem_layers`) and
    trains it on the labelled ``images`` (:func:`train_indicators`; ``uniform_passes``
    adds the authors' uniform-width passes to every step).

    Returns
    -------
    dict
        An indicator record (:func:`save_importance` writes it).
    """
    from ..calibration import calibrate, check_batch
    from ..calibration.mixed_precision import free_names, ordinary_config, problem_layers
    from ..extract import extract_graph
    from ..frontend import load_model

    fm = load_model(model, input_shape=input_shape)
    graph = extract_graph(fm.mod)
    base = ordinary_config(config)
    stats = calibrate(fm, check_batch(calib_data, fm.input_shape), base)
    layers, fixed_w, fixed_a = problem_layers(graph, config)
    free_layers, free_tensors = free_names(layers, fixed_w, fixed_a)
    joint = JointModel(graph, stats, base, free_layers, free_tensors, config.mp_weight_bits, config.mp_act_bits,
                       fixed_weights=fixed_w, fixed_acts=fixed_a)
    run = train_indicators(joint, images, labels, train_config, log=log, uniform_passes=uniform_passes)
    iw, ia = joint.indicators()
    initial = {n: {b: math.exp(joint.initial[joint.key(n, b, "w")]) for b in joint.wb} for n in free_layers}
    from .train import TrainConfig

    return record("learned", graph, config, iw, ia, seconds=run["seconds"],
                  settings={"train": (train_config or TrainConfig(epochs=1, scale_lr=INDICATOR_SCALE_LR)).to_dict(), "images": int(len(images)),
                            "steps": run["steps"], "uniform_passes": bool(uniform_passes), "history": run["history"], "draws": run["draws"],
                            "initial_weight_steps": initial})


# --------------------------------------------------------------------------------------------------------------------
# HAWQ-style Hessian trace
# --------------------------------------------------------------------------------------------------------------------
def hessian_importance(graph: Graph, stats: dict, config, data: np.ndarray, layers: list, tensors: list,
                       weight_bits, act_bits, *, samples: int = 64, probes: int = 16, seed: int = 0) -> tuple[dict, dict]:
    """HAWQ-style importance: Hutchinson's trace of each layer's (tensor's) Hessian times the quantization
    perturbation (see the module docstring).

    Parameters
    ----------
    config : QuantConfig
        The ordinary settings the plan would quantize with (weight granularity, calibration rule).
    samples : int
        Calibration images the loss is taken over.
    probes : int
        Rademacher vectors of the trace estimate.

    Returns
    -------
    (dict of str to dict of int to float, dict of str to dict of int to float)
        ``I_w`` and ``I_a`` (non-negative: a negative trace estimate counts as 0).
    """
    from ..plan.planner import layer_quant, tensor_choices

    x = torch.from_numpy(np.asarray(data[:samples], dtype=np.float32)).double()
    nodes = graph.nodes
    weights = {n: torch.from_numpy(nodes[n].weight.astype(np.float64)).requires_grad_(True) for n in layers}
    with torch.no_grad():
        vals = _forward64(graph, x, {}, {})
        target = vals[graph.outputs[0]].argmax(1)
    deltas = {t: torch.zeros_like(vals[t], requires_grad=True) for t in tensors}
    logits = _forward64(graph, x, weights, deltas)[graph.outputs[0]]
    loss = F.cross_entropy(logits, target)
    params = [weights[n] for n in layers] + [deltas[t] for t in tensors]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    trace = np.zeros(len(params))
    for _ in range(probes):
        vs = [torch.randint(0, 2, p.shape, generator=gen, dtype=torch.float64) * 2 - 1 for p in params]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        trace += np.array([float((v * h).sum()) for v, h in zip(vs, hv)])
    trace /= probes
    iw, ia = {}, {}
    for i, n in enumerate(layers):
        w = nodes[n].weight.astype(np.float64)
        per_weight = max(trace[i], 0.0) / w.size
        iw[n] = {}
        for b in weight_bits:
            smap = layer_quant(nodes[n], config.replace(weight_bits=b)).scale_map(w.shape)
            dq = S.quantize_weight(w, smap, b).astype(np.float64) * smap
            iw[n][b] = per_weight * float(((dq - w) ** 2).sum())
    choices = {a: tensor_choices(graph, stats, config.replace(bits={}, act_bits=a)) for a in act_bits}
    for j, t in enumerate(tensors):
        v = vals[t]
        # the loss is a batch mean, so the trace in the batch's tensor is the mean per-sample trace
        per_element = max(trace[len(layers) + j], 0.0) / v[0].numel()
        ia[t] = {}
        for a in act_bits:
            ch = choices[a][t]
            qmin, qmax = S.qrange(a, ch.signed)
            with torch.no_grad():
                err = float(((lsq(v, torch.tensor(ch.scale, dtype=v.dtype), qmin, qmax) - v) ** 2).sum()) / v.shape[0]
            ia[t][a] = per_element * err
    return iw, ia


def _forward64(graph: Graph, x: torch.Tensor, weights: dict, deltas: dict) -> dict:
    """The float graph in float64; ``weights`` replace layers' weights, ``deltas`` are added to tensors' values."""
    vals = {}
    for name, node in graph.nodes.items():
        ins = [vals[i] for i in node.inputs] if node.inputs else [x]
        kind = kind_of(node)
        if node.weight is not None:
            w = weights.get(name)
            if w is None:
                w = torch.from_numpy(node.weight.astype(np.float64))
            b = torch.from_numpy(node.bias.astype(np.float64)) if node.bias is not None else None
            y = kind.torch_layer(ins[0], w, b, node)
        else:
            y = kind.float_torch(node, ins)
        if node.act is not None:
            y = torch.clamp(y, node.act[0], node.act[1])
        if name in deltas:
            y = y + deltas[name]
        vals[name] = y
    return vals


# --------------------------------------------------------------------------------------------------------------------
# indicator files
# --------------------------------------------------------------------------------------------------------------------
def record(kind: str, graph: Graph, config, iw: dict, ia: dict, *, seconds: float, settings: dict | None = None) -> dict:
    """An indicator record: what :func:`save_importance` writes and the strategy reads."""
    return {"format": FORMAT, "version": 1, "kind": kind, "fingerprint": graph.fingerprint,
            "weight_bits": list(config.mp_weight_bits), "act_bits": list(config.mp_act_bits),
            "weights": {n: {str(b): float(v) for b, v in d.items()} for n, d in iw.items()},
            "tensors": {t: {str(a): float(v) for a, v in d.items()} for t, d in ia.items()},
            "seconds": float(seconds), "settings": settings or {}}


def save_importance(path, rec: dict) -> Path:
    """Write an indicator record as JSON (atomically)."""
    path = Path(path)
    write_text(path, json.dumps(rec, indent=1) + "\n")
    return path


def load_importance(path) -> dict:
    """Read an indicator file; widths come back as ``int`` keys.

    Raises
    ------
    ConfigError
        One line: a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"importance file {path} does not exist")
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"importance file {path} is not readable JSON ({type(err).__name__})") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or rec.get("kind") not in KINDS:
        raise ConfigError(f"{path} is not a gwq-tvm importance file")
    rec["weights"] = {n: {int(b): float(v) for b, v in d.items()} for n, d in rec["weights"].items()}
    rec["tensors"] = {t: {int(a): float(v) for a, v in d.items()} for t, d in rec["tensors"].items()}
    return rec
