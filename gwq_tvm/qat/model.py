"""The QAT model: a torch module that runs a gwq-tvm graph with the compiler's integer arithmetic.

:class:`QATModel` is built from a :class:`~gwq_tvm.graph.Graph` (the canonical
form of the user's ONNX file or ``nn.Module``, batch norm already folded into
the convolutions) and a calibrated :class:`~gwq_tvm.plan.quantplan.QuantPlan`.
Its parameters are

* the float weights and biases of every conv/dense layer (fine-tuned);
* one **mantissa** per plan group (``mantissa[g]``, LSQ-style gradient);
* one real **exponent** per quantized tensor (``exponent[t]``), used as
  ``2**round(e)`` with a straight-through estimator;
* per stored weight scale (one per tensor, per output channel, or per GDRQ
  filter group: ``G x 1`` blocks), the scale's real log2 (power-of-two weights,
  the GWQ/pot case, again rounded with an STE) or the log2 of its ratio to the
  plan's scale, ``s = s0 * 2**p`` (per-layer plans with free weight scales), so
  that one optimizer step moves large and small scales alike, by a relative
  amount (:meth:`QATModel.scale_param_groups`).  A filter group's step is shared by its
  channels (LSQ gradient summed over the group), so it folds into the
  per-channel SFC of the compiled program like a per-channel scale.

GDRQ Scale-Clip (seed 002) is trained with the weights when asked for:

* weights: each scale block's weights are clipped at ``c = k * sigma(W_block)``
  before quantization, ``sigma`` the standard deviation or mean ``|W|``,
  recomputed from the current weights every step (no gradient through
  ``sigma``; the weights' gradient is straight-through inside ``[-c, c]`` and
  zero outside).  :meth:`QATModel.effective_weight` is the clipped weight, and
  it is what :func:`~gwq_tvm.qat.export.export_qat` writes, so the compiler
  quantizes exactly the integers the model trained with.
* activations: a running estimate ``sigma_t`` (exponential average over the
  training batches) caps each tensor's range: its exponent may not exceed
  ``round(log2(k * sigma_t / (qmax * m)))`` (``m`` its group mantissa), so the
  integer clamp of the program *is* the clip and nothing is added to the graph.
  Below the cap the exponent is still learned.

Every forward recomputes the plan from the parameters (:meth:`QATModel.plan`)
and produces, next to each tensor's real value, its integers exactly as the
compiled program computes them: the integer SFCs, clips and round-half-up
shifts come from :mod:`gwq_tvm.plan.program`, the same functions the realize
pass emits from.  The forward value of a tensor is ``s * q``; its gradient is
the LSQ gradient of ``s * clamp(round(v / s))`` (:func:`fake_quant`).  Run in
float64 (``model.double()``) the integers match the compiled program; float32
is for training speed (its accumulators may round differently in rare cases).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, PlanError, UnsupportedOpError
from ..graph import Graph, Node, kind_of
from ..kinds import Kind
from ..plan import program as P
from ..plan import scales as S
from ..plan import post, sublayer
from ..plan.quantplan import QuantPlan, TensorQuant
from ..plan.quantplan import AdapterQuant
from .fakequant import apply_dynamic, apply_sfc, fake_quant, grad_scale, lsq, round_ste, ste


class AdapterParams(nn.Module):
    """The trainable floats of one ASQ adapter (:class:`~gwq_tvm.plan.quantplan.AdapterQuant`).

    ``new`` initialises as the authors do: ``w1``/``b1`` as ``nn.Linear(C, C/4)``, ``w2 ~ N(0, 0.01)`` and
    ``b2 = 1`` so that ``beta ~= 1``; the hidden step starts at ``1/64`` and is learned (LSQ).
    """

    def __init__(self, w1, b1, w2, b2, hidden_scale):
        super().__init__()
        f = lambda v: nn.Parameter(torch.as_tensor(np.asarray(v, dtype=np.float32)))  # noqa: E731
        self.w1, self.b1, self.w2, self.b2 = f(w1), f(b1), f(w2), f(b2)
        self.hidden_scale = nn.Parameter(torch.tensor(float(hidden_scale), dtype=torch.float64))

    @classmethod
    def new(cls, channels: int, seed: int = 0) -> "AdapterParams":
        g = torch.Generator().manual_seed(seed + channels)
        hidden = max(channels // 4, 1)
        lin = nn.Linear(channels, hidden)
        bound = 1.0 / math.sqrt(channels)
        w1 = (torch.rand((hidden, channels), generator=g) * 2 - 1) * bound
        b1 = (torch.rand((hidden,), generator=g) * 2 - 1) * bound
        del lin
        w2 = torch.randn((hidden,), generator=g) * 0.01
        return cls(w1.numpy(), b1.numpy(), w2.numpy(), 1.0, 1.0 / 64)

    @classmethod
    def from_quant(cls, a: AdapterQuant) -> "AdapterParams":
        w1, b1, w2 = a.arrays()
        return cls(w1, b1, w2, a.b2, a.hidden_scale)

    def quant(self) -> AdapterQuant:
        d = lambda p: p.detach().double().cpu().numpy()  # noqa: E731
        return AdapterQuant.from_arrays(d(self.w1), d(self.b1), d(self.w2), float(self.b2.detach()), abs(float(self.hidden_scale.detach())))

def trainable(kind: Kind) -> bool:
    """Does ``kind`` have a torch lowering (float-fallback regions cannot be trained)?"""
    return type(kind).qat is not Kind.qat


def _is_pot(scales) -> bool:
    return bool(np.all(S.is_power_of_two(np.asarray(scales, dtype=np.float64))))


#: momentum of the running activation ``sigma`` of the activation Scale-Clip
ACT_SIGMA_MOMENTUM = 0.1


def scale_groups(layer, channels: int) -> np.ndarray:
    """Index of the stored weight scale each output channel uses (``tensor``: all 0; ``channel``: itself;
    ``G x 1`` blocks: its filter group, through the layer's permutation)."""
    if layer.granularity == "tensor":
        return np.zeros(channels, dtype=np.int64)
    if layer.granularity == "channel":
        return np.arange(channels, dtype=np.int64)
    index = np.arange(layer.block[0], dtype=np.int64).repeat(channels // layer.block[0])
    if layer.permutation is None:
        return index
    out = np.empty_like(index)
    out[np.asarray(layer.permutation)] = index
    return out


def torch_sigma(values: torch.Tensor, rule: str, signed: bool) -> float:
    """``sigma`` of an activation batch, as :func:`gwq_tvm.plan.sublayer.activation_sigma` defines it from a
    histogram: ``E|x|`` (``mean-abs``), ``sqrt(E x**2 - (E x)**2)`` (``std``, non-negative tensor) or
    ``sqrt(E x**2)`` (``std``, signed tensor: mean taken as 0)."""
    v = values.detach().to(torch.float64)
    if rule == "mean-abs":
        return float(v.abs().mean())
    m2 = float(v.square().mean())
    m1 = 0.0 if signed else float(v.mean())
    return math.sqrt(max(m2 - m1 * m1, 0.0))


def check_clip_options(scale_clip, scale_clip_k, act_clip_k) -> None:
    """The Scale-Clip options of :class:`QATModel` (the rules of :class:`~gwq_tvm.config.QuantConfig`).

    Raises
    ------
    ConfigError
        One line naming the bad value.
    """
    from ..config import SIGMA_RULES

    if scale_clip is not None and scale_clip not in SIGMA_RULES:
        raise ConfigError(f"scale_clip must be one of {', '.join(SIGMA_RULES)}; got {scale_clip!r}")
    for name, v in (("scale_clip_k", scale_clip_k), ("act_clip_k", act_clip_k)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
            raise ConfigError(f"{name} must be a positive number; got {v!r}")
    if scale_clip_k is not None and scale_clip is None:
        raise ConfigError("scale_clip_k needs scale_clip (std or mean-abs)")


def clip_options(config) -> dict:
    """The Scale-Clip keyword arguments of :class:`QATModel` that a :class:`~gwq_tvm.config.QuantConfig` asks for."""
    if config is None:
        return {}
    return {"scale_clip": config.scale_clip, "scale_clip_k": config.scale_clip_k, "act_clip_k": config.act_clip_k}


class QATModel(nn.Module):
    """Trainable fake-quant twin of the integer program of ``plan`` on ``graph``.

    Parameters
    ----------
    graph : Graph
        The quantizable graph (from :func:`gwq_tvm.extract_graph`).
    plan : QuantPlan
        A calibrated plan for ``graph``: it fixes bit-widths, signedness, the
        group of every tensor, the weight granularity (per tensor, per channel
        or GDRQ filter groups ``G x 1``) and the initial mantissas, exponents
        and weight scales.
    scale_clip : {"std", "mean-abs"}, optional
        Train with the weights' Scale-Clip at ``k * sigma`` of each scale block.
    scale_clip_k : float, optional
        Its ``k``; ``None`` picks it per layer once, on the initial weights, among
        :data:`gwq_tvm.plan.sublayer.CLIP_KS` by the weight quantization error
        (:func:`gwq_tvm.plan.sublayer.choose_clip_k`).
    act_clip_k : float, optional
        Cap each activation range at ``k * sigma_t`` (running estimate; the rule
        of ``scale_clip``, ``std`` without one).

    Raises
    ------
    PlanError
        If ``plan`` was made for another graph.
    UnsupportedOpError
        If the graph holds float-fallback ops (named), or a layer's weights are
        not uniform int8 per tensor, per channel or in ``G x 1`` filter groups.
    ConfigError
        Bad Scale-Clip options (one line).
    """

    def __init__(self, graph: Graph, plan: QuantPlan, *, scale_clip: str | None = None, scale_clip_k: float | None = None,
                 act_clip_k: float | None = None, adaptive_step=None):
        super().__init__()
        if plan.fingerprint != graph.fingerprint:
            raise PlanError(f"the QuantPlan was made for graph {plan.fingerprint}, this model is {graph.fingerprint}")
        unsupported = sorted({n.attrs.get("op", n.kind) for n in graph.nodes.values() if not trainable(kind_of(n))})
        if unsupported:
            raise UnsupportedOpError(f"QAT cannot train models with float-fallback ops: {', '.join(unsupported)}")
        check_clip_options(scale_clip, scale_clip_k, act_clip_k)
        zp = next((t for t, tq in plan.tensors.items() if tq.zero_point), None)
        if zp is not None:
            raise UnsupportedOpError(f"QAT keeps activations symmetric; tensors.{zp} has zero point "
                                     f"{plan.tensors[zp].zero_point}: plan with symmetric_activations=True (--symmetric-activations)")
        for n, w in plan.layers.items():
            if (w.granularity == "block" and w.block[1] != 1) or w.codebook not in ("uniform", "post") or w.storage != "int8":
                shape = f" {w.block[0]}x{w.block[1]}" if w.block else ""
                raise UnsupportedOpError(f"QAT trains uniform int8 weights per tensor, per channel or in Gx1 filter groups; "
                                         f"layers.{n} is {w.granularity}{shape}/{w.codebook}/{w.storage}")
        self.graph, self.base_plan = graph, plan
        self.owners = graph.tensors()
        #: tensors the program actually quantizes (a final layer's output stays an int32 accumulator)
        self.quantized = [t for t in self.owners if P.materialized(graph, t)]
        layers = graph.layers()
        self.weight = nn.ParameterDict({n: nn.Parameter(torch.from_numpy(graph.nodes[n].weight.astype(np.float32).copy())) for n in layers})
        self.bias = nn.ParameterDict(
            {n: nn.Parameter(torch.from_numpy(graph.nodes[n].bias.astype(np.float32).copy())) for n in layers if graph.nodes[n].bias is not None}
        )
        groups = sorted({plan.tensors[t].group for t in self.owners})
        self.mantissa = nn.ParameterDict({g: nn.Parameter(torch.tensor(float(plan.groups[g]), dtype=torch.float64)) for g in groups})
        self.exponent = nn.ParameterDict(
            {t: nn.Parameter(torch.tensor(float(plan.tensors[t].exponent), dtype=torch.float64)) for t in self.quantized}
        )
        self.pot_weights = {n: _is_pot(plan.layers[n].scales) for n in layers}
        #: log2 of each stored weight scale: of the scale itself where it is a power of two (rounded in the forward),
        #: else of its ratio to the plan's value ``s = s0 * 2**p`` (``p = 0`` at the start: exactly the plan's scale).
        #: In the log domain one Adam step moves every scale by the same relative amount, large or small.
        self.weight_scale = nn.ParameterDict(
            {
                n: nn.Parameter(torch.tensor(np.log2(plan.layers[n].scales) if self.pot_weights[n] else np.zeros(len(plan.layers[n].scales)),
                                             dtype=torch.float64))
                for n in layers
            }
        )
        #: ``s0``, the plan's free (non power-of-two) weight scales (float64; fixed, rebuilt from the plan)
        self.weight_scale0 = {n: torch.tensor(plan.layers[n].scales, dtype=torch.float64) for n in layers if not self.pot_weights[n]}
        #: the stored scale of each output channel (a buffer: moves with the model)
        self.channel_scale = {n: torch.from_numpy(scale_groups(plan.layers[n], graph.nodes[n].weight.shape[0])) for n in layers}
        self.scale_clip, self.act_clip_k = scale_clip, act_clip_k
        #: Scale-Clip ``k`` of each layer's weights (``inf``: not clipped)
        self.weight_clip_k = {n: float("inf") for n in layers}
        if scale_clip is not None:
            for n in layers:
                self.weight_clip_k[n] = float(scale_clip_k) if scale_clip_k is not None else self._choose_clip_k(n)
        #: tensors whose range the activation Scale-Clip caps, and their running sigma (NaN until the first batch)
        self.act_clipped = [t for t in self.quantized] if act_clip_k is not None else []
        self.register_buffer("act_sigma", torch.full((len(self.act_clipped),), float("nan"), dtype=torch.float64))
        # ASQ adapters: the plan's own, plus those asked for (``True``/"all": every candidate tensor)
        if adaptive_step is True or adaptive_step == "all" or adaptive_step == ["all"]:
            adaptive_step = P.adaptive_candidates(graph)
        wanted = P.check_adaptive(graph, list(adaptive_step or []))
        self.adapter = nn.ModuleDict()
        for t, tq in plan.tensors.items():
            if tq.dynamic is not None and t == graph.tensor_of(t):
                self.adapter[t] = AdapterParams.from_quant(plan.adapters[tq.dynamic])
        for t in wanted:
            if t not in self.adapter:
                self.adapter[t] = AdapterParams.new(int(graph.nodes[t].shape[1]))

    def _choose_clip_k(self, n: str) -> float:
        """The ``k`` of :data:`~gwq_tvm.plan.sublayer.CLIP_KS` whose clip, applied literally before the plan's
        starting steps ``s``, gives the least weight error ``sum (W - s * clamp(rint(clip(W, k*sigma) / s)))**2``.

        (The post-training search, :func:`~gwq_tvm.plan.sublayer.choose_clip_k`, scores ``k`` by the step it
        implies; with power-of-two steps rounded up, the clip there is the integer clamp at ``qmax * s``, not
        ``k * sigma``, and it picks ``k`` as low as 1.5 at 4 bits.  QAT clips at ``k * sigma`` itself, so ``k`` is
        scored that way; ``inf``, no clip, is the plan's own error.)
        """
        layer, w = self.base_plan.layers[n], self.graph.nodes[n].weight
        n_out = 1 if layer.granularity == "tensor" else (w.shape[0] if layer.granularity == "channel" else layer.block[0])
        perm = np.asarray(layer.permutation) if layer.permutation is not None else None
        blocks = sublayer.blocks_of(w, n_out, 1, perm)
        steps = P.weight_scale_map(self.graph.nodes[n], self.base_plan)
        w64 = w.astype(np.float64)
        errors = []
        for k in sublayer.CLIP_KS:
            c = sublayer.expand(sublayer.block_clips(blocks, self.scale_clip, k), w.shape, perm)
            q = S.quantize_weight(np.clip(w64, -c, c), steps, layer.bits).astype(np.float64)
            errors.append(float(((w64 - q * steps) ** 2).sum()))
        return sublayer.CLIP_KS[int(np.argmin(errors))]

    def clip_settings(self) -> dict:
        """The Scale-Clip the model trains with (recorded in the exported plan's provenance)."""
        return {"scale_clip": self.scale_clip, "weight_clip_k": {n: k for n, k in self.weight_clip_k.items() if math.isfinite(k)},
                "act_clip_k": self.act_clip_k}

    # --- Scale-Clip ---------------------------------------------------------
    @torch.no_grad()
    def weight_clip(self, n: str) -> torch.Tensor | None:
        """Per output channel, the clip ``k * sigma`` of its scale block (float32, shape ``(C_out, 1, ...)``), or ``None``.

        ``sigma`` (``std`` about the block mean, or mean ``|W|``) is computed in
        float64 from the current weights over all weights sharing the channel's
        scale, then rounded to float32 once, so float32 training, the float64
        check and the export clip at the same value.
        """
        k = self.weight_clip_k[n]
        if not math.isfinite(k):
            return None
        w = self.weight[n].detach().to(torch.float64)
        rows = w.reshape(w.shape[0], -1)
        idx = self.channel_scale[n]
        nb = int(idx.max()) + 1
        count = torch.zeros(nb, dtype=torch.float64).index_add_(0, idx, torch.full((rows.shape[0],), float(rows.shape[1]), dtype=torch.float64))
        if self.scale_clip == "mean-abs":
            sig = torch.zeros(nb, dtype=torch.float64).index_add_(0, idx, rows.abs().sum(1)) / count
        else:
            mean = torch.zeros(nb, dtype=torch.float64).index_add_(0, idx, rows.sum(1)) / count
            var = torch.zeros(nb, dtype=torch.float64).index_add_(0, idx, (rows - mean[idx, None]).square().sum(1)) / count
            sig = var.sqrt()
        c = (k * sig)[idx].to(torch.float32)
        return c.reshape((-1,) + (1,) * (w.ndim - 1))

    def effective_weight(self, n: str, dtype=None) -> torch.Tensor:
        """Layer ``n``'s weight as the program quantizes it: clipped at :meth:`weight_clip` (gradient zero outside)."""
        w = self.weight[n]
        c = self.weight_clip(n)
        if c is not None:
            c = c.to(w.dtype)
            w = torch.clamp(w, -c, c)
        return w if dtype is None else w.to(dtype)

    @torch.no_grad()
    def observe_activation(self, t: str, v: torch.Tensor) -> None:
        """Fold batch values ``v`` of tensor ``t`` into its running sigma (training only)."""
        if not self.training or t not in self.act_clipped:
            return
        i = self.act_clipped.index(t)
        sig = torch_sigma(v, self.scale_clip or "std", self.base_plan.tensors[t].signed)
        old = float(self.act_sigma[i])
        self.act_sigma[i] = sig if math.isnan(old) else (1 - ACT_SIGMA_MOMENTUM) * old + ACT_SIGMA_MOMENTUM * sig

    @torch.no_grad()
    def cap_activation_exponents_(self) -> None:
        """Lower each clipped tensor's exponent to ``round(log2(k * sigma_t / (qmax * m)))`` where it is above."""
        for i, t in enumerate(self.act_clipped):
            sig = float(self.act_sigma[i])
            if not sig > 0:
                continue
            tq = self.base_plan.tensors[t]
            m = float(self.mantissa[tq.group])
            cap = round(math.log2(self.act_clip_k * sig / (S.qrange(tq.bits, tq.signed)[1] * m)))
            if float(self.exponent[t]) > cap:
                self.exponent[t].fill_(float(cap))

    def set_dtype(self, dtype: torch.dtype) -> "QATModel":
        """Cast the weights and biases (not the float64 scale parameters) to ``dtype``."""
        for p in list(self.weight.values()) + list(self.bias.values()):
            p.data = p.data.to(dtype)
        return self

    # --- the plan the parameters describe -------------------------------
    def plan(self) -> QuantPlan:
        """The QuantPlan of the current parameters (fingerprint of the graph the model was built from).

        Mantissas are normalised into ``[1, 2)`` (the power of two moves into
        the exponents), so every member of a group shares one mantissa.
        """
        base = self.base_plan
        groups, owned = {}, {}
        for t in self.owners:
            tq = base.tensors[t]
            mu = float(self.mantissa[tq.group].detach())
            m, k = S.split_scale(mu)
            groups[tq.group] = m
            e = int(round(float(self.exponent[t].detach()))) if t in self.exponent else tq.exponent
            owned[t] = TensorQuant(tq.bits, tq.signed, tq.group, e + k)
        tensors = {n: owned[self.graph.tensor_of(n)] for n in self.graph.nodes}
        layers = {}
        for n, layer in base.layers.items():
            p = self.weight_scale[n].detach().double().numpy()
            ws = np.exp2(np.round(p)) if self.pot_weights[n] else self.weight_scale0[n].numpy() * np.exp2(p)
            layers[n] = dataclasses.replace(layer, scales=tuple(float(v) for v in ws))
        provenance = dict(base.provenance)
        if self.scale_clip is not None or self.act_clip_k is not None:
            provenance["qat_scale_clip"] = self.clip_settings()
        adapters = {}
        for t, a in self.adapter.items():
            adapters[t] = a.quant()
            tensors = {n: (dataclasses.replace(tq, dynamic=t) if self.graph.tensor_of(n) == t else tq) for n, tq in tensors.items()}
        return base.replace(groups=groups, tensors=tensors, layers=layers, provenance=provenance, adapters=adapters)

    def scale_param_groups(self, lr: float) -> list[dict]:
        """Adam groups giving every scale parameter a step of about ``lr`` in relative (log2) terms.

        Mantissas live in ``[1, 2)``; exponents and weight scales are log2
        values (:attr:`weight_scale`), so ``lr`` suits them as it is.  An
        adapter's hidden step is stored as itself (``1/64`` at the start) and
        gets ``lr * |h_0|``.  (Adam's step does not depend on a parameter's size:
        with the plain ``lr`` on a stored scale, one step changed a POST unit
        ``alpha_c * 2**-F`` of ``1.5e-3`` by 100%, and per-layer MobileNetV3
        W3A3 POST training collapsed.)
        """
        logs = list(self.mantissa.values()) + list(self.exponent.values()) + list(self.weight_scale.values())
        groups = [{"params": logs, "lr": lr}] if logs else []
        for a in self.adapter.values():
            size = abs(float(a.hidden_scale.detach()))
            groups.append({"params": [a.hidden_scale], "lr": lr * size if size > 0 else lr})
        return groups

    @torch.no_grad()
    def normalize_(self) -> None:
        """Move each mantissa back into ``[1, 2)`` by shifting its members' exponents (values unchanged)."""
        for g, mu in self.mantissa.items():
            if not float(mu) > 0:
                raise PlanError(f"group {g}: the learned mantissa became {float(mu)} (learning rate too high?)")
            k = math.floor(math.log2(float(mu)))
            if k:
                mu.mul_(2.0**-k)
                for t in self.quantized:
                    if self.base_plan.tensors[t].group == g:
                        self.exponent[t].add_(k)

    # --- differentiable scales ------------------------------------------
    def _act_scale(self, t: str, dtype) -> torch.Tensor:
        node = self.graph.nodes[t]
        tq = self.base_plan.tensors[t]
        g = 1.0 / math.sqrt(max(node.elements, 1) * S.qrange(tq.bits, tq.signed)[1])
        s = self.mantissa[tq.group].to(dtype) * torch.exp2(round_ste(self.exponent[t].to(dtype)))
        return grad_scale(s, g)

    def _weight_scale(self, n: str, dtype) -> torch.Tensor:
        p = self.weight_scale[n].to(dtype)
        s = torch.exp2(round_ste(p)) if self.pot_weights[n] else self.weight_scale0[n].to(dtype) * torch.exp2(p)
        w = self.weight[n]
        per_scale = w[0].numel() * (w.shape[0] // s.numel() if self.base_plan.layers[n].granularity == "block" else 1)
        g = 1.0 / math.sqrt(per_scale * S.weight_qmax(self.base_plan.layers[n].bits))
        return grad_scale(s, g)

    # --- forward ----------------------------------------------------------
    def forward(self, x: torch.Tensor, return_int: bool = False):
        """Logits of the quantized program (and, with ``return_int``, the integer outputs).

        The integer outputs are what the compiled program dequantizes: the int32
        accumulator of a final conv/dense layer, else the output tensor's integers.
        """
        if self.training and self.act_clipped:
            self.cap_activation_exponents_()
        plan = self.plan()
        run = Run(self, plan, x.dtype, x)
        for node in self.graph.nodes.values():
            kind_of(node).qat(run, node)
        outs = [run.output(n) for n in self.graph.outputs]
        logits = outs[0][0] if len(outs) == 1 else tuple(o[0] for o in outs)
        if not return_int:
            return logits
        ints = outs[0][1] if len(outs) == 1 else tuple(o[1] for o in outs)
        return logits, ints


class Run:
    """One forward pass: real values and integers of every node (the kinds' torch backend).

    Each kind's :meth:`~gwq_tvm.kinds.base.Kind.qat` reads ``x`` (real values,
    differentiable) and ``q`` (integers, ``int64``) of its inputs and stores its
    own with :meth:`store` or :meth:`finish_acc`, using the plan's recipes for
    every integer constant.
    """

    def __init__(self, model: QATModel, plan: QuantPlan, dtype, inputs: torch.Tensor):
        self.m, self.plan, self.dtype, self.graph, self.inputs = model, plan, dtype, model.graph, inputs
        self.x: dict[str, torch.Tensor] = {}  # real values (differentiable)
        self.q: dict[str, torch.Tensor] = {}  # integers (int64)
        self.acc: dict[str, tuple] = {}  # final accumulators: (v, acc_int, unit)
        self.scales: dict[str, torch.Tensor] = {}
        #: ASQ: per dynamic tensor, (B int64 (N,), beta float (N,))
        self.beta: dict[str, tuple] = {}

    def s(self, name: str) -> torch.Tensor:
        """The differentiable scale of ``name``'s tensor (ASQ: ``s * beta``, shape ``(N, 1, ...)``, once its
        adapter has run)."""
        t = self.graph.tensor_of(name)
        if t not in self.scales:
            self.scales[t] = self.m._act_scale(t, self.dtype)
        if t in self.beta:
            beta = self.beta[t][1]
            return self.scales[t] * beta.reshape((-1,) + (1,) * (self.x_ndim(t) - 1))
        return self.scales[t]

    def x_ndim(self, t: str) -> int:
        return len(self.graph.nodes[t].shape)

    def store(self, node: Node, v: torch.Tensor, q: torch.Tensor, qmin: int, qmax: int):
        """Record ``node``'s integers ``q`` and its fake-quantized value (LSQ gradient from ``v``)."""
        self.q[node.name] = q
        if self.graph.tensor_of(node.name) == node.name:
            self.m.observe_activation(node.name, v)
        self.x[node.name] = fake_quant(v, self.s(node.name), q, qmin, qmax)

    def layer(self, node: Node):
        """Fake-quantized weight and bias (differentiable), the accumulator unit and its planned scale."""
        n = node.name
        src = self.graph.tensor_of(node.inputs[0])
        layer = self.plan.layers[n]
        ws = self.m._weight_scale(n, self.dtype)
        if layer.granularity == "block":  # G filter groups: each channel takes its group's step
            ws = ws[self.m.channel_scale[n]]
        w = self.m.effective_weight(n, self.dtype)
        shape = (-1,) + (1,) * (w.ndim - 1)
        qmax = S.weight_qmax(layer.bits)
        if layer.codebook == "post":  # ASQ POST: levels table[codes] * unit_c, the unit (alpha_c * 2**-F) learned
            idx = post.quantize_indices(w.detach().double().numpy(), ws.detach().double().numpy().reshape(shape), layer.bits)
            levels = torch.from_numpy(post.integer_weights(idx, layer.bits).astype(np.int64))
            top = int(post.level_table(layer.bits)[0])
            wq = fake_quant(w, ws.reshape(shape), levels, -top, top)
        else:
            wq = lsq(w, ws.reshape(shape), -qmax, qmax)
        dyn = src if src in self.beta else None
        if dyn is None:
            unit = self.s(src) * ws
        else:  # the input's step is s * beta per sample: unit (N, C, 1, ...)
            unit = self.s(src).reshape((-1, 1) + (1,) * (len(node.shape) - 2)) * ws.reshape((1, -1) + (1,) * (len(node.shape) - 2))
        b = None
        if n in self.m.bias:
            b = self.m.bias[n].to(self.dtype)
            if dyn is None:
                b = unit * round_ste(b / unit)
            else:  # the compiled per-sample bias (plan.program.dynamic_bias), gradient to b straight through
                static = S.quantize_bias(self.m.bias[n].detach().double().numpy(), self.plan.scale(src) * P.weight_scales(node, self.plan))
                qb = P.dynamic_bias(static, self.beta[dyn][0].numpy())
                qb = torch.from_numpy(qb.astype(np.float64)).to(self.dtype).reshape(unit.shape[:2] + (1,) * (len(node.shape) - 2))
                b = ste(b.reshape((1, -1) + (1,) * (len(node.shape) - 2)).expand_as(qb), unit.detach() * qb)
        acc_scale = self.plan.scale(src) * P.weight_scales(node, self.plan)
        return wq, b, unit, acc_scale

    def finish_acc(self, node: Node, v: torch.Tensor, acc_int: torch.Tensor, acc_scale: np.ndarray, unit: torch.Tensor):
        """Requantize ``node``'s accumulator into its tensor, or keep it when the program dequantizes it."""
        if not P.needs_integer_output(self.graph, node.name):
            self.acc[node.name] = (v, acc_int, unit)
            return
        acc = P.Accumulator(np.asarray(acc_scale, dtype=np.float64), 0)
        rq = P.dynamic_requant(self.graph, node, acc, self.plan)
        if rq.dynamic is None:
            q = torch.clamp(apply_sfc(acc_int, rq.sfc), rq.qmin, rq.qmax)
            self.store(node, v, q, rq.qmin, rq.qmax)
            return
        d = rq.dynamic
        b_in = self.beta[d.beta_in][0] if d.beta_in is not None else None
        if d.beta_out is not None:  # ASQ: q0 at the static step, the adapter, then q at s * beta
            from ..kinds.adapter import ADAPTER

            q0 = torch.clamp(apply_dynamic(acc_int, d, b_in, None), rq.qmin, rq.qmax)
            x0 = fake_quant(v, self.s(node.name), q0, rq.qmin, rq.qmax)
            recipe = P.adapter_recipe(self.graph, node.name, self.plan)
            self.beta[node.name] = ADAPTER.qat_branch(q0, x0, recipe, self.m.adapter[node.name])
        q = torch.clamp(apply_dynamic(acc_int, d, b_in, self.beta[d.beta_out][0] if d.beta_out else None), rq.qmin, rq.qmax)
        self.store(node, v, q, rq.qmin, rq.qmax)

    @staticmethod
    def round_int(v: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """The accumulator integers of a layer's real output ``v``: ``round(v / unit)``."""
        if unit.ndim == v.ndim:  # ASQ: a per-sample unit, already broadcast
            return torch.round(v.detach() / unit.detach()).to(torch.int64)
        shape = [1] * v.ndim
        if unit.ndim and unit.numel() > 1:
            shape[1] = unit.numel()
        return torch.round(v.detach() / unit.detach().reshape(shape)).to(torch.int64)

    def output(self, name: str):
        """(real output, integer output) as the compiled program dequantizes them (float32 arithmetic)."""
        node = self.graph.nodes[name]
        if name in self.acc:
            v, acc_int, unit = self.acc[name]
            unit32 = unit.detach().to(torch.float32)
            shape = [1] * v.ndim
            if unit32.ndim and unit32.numel() > 1:
                shape[1] = unit32.numel()
            hard = acc_int.to(torch.float32) * unit32.reshape(shape)
            if node.act is not None:
                hard = torch.clamp(hard, node.act[0], min(node.act[1], 3.0e38))
                v = torch.clamp(v, node.act[0], node.act[1])
            return ste(v, hard.to(v.dtype)), acc_int
        q = self.q[name]
        hard = q.to(torch.float32) * torch.tensor(self.plan.scale(name), dtype=torch.float32)
        return ste(self.x[name], hard.to(self.x[name].dtype)), q


def float_forward(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """The graph's float model in torch (its own weights, no quantization): the distillation teacher."""
    vals: dict[str, torch.Tensor] = {}
    for name, node in graph.nodes.items():
        ins = [vals[i] for i in node.inputs] if node.inputs else [x]
        y = kind_of(node).float_torch(node, ins)
        vals[name] = torch.clamp(y, node.act[0], node.act[1]) if node.act is not None else y
    outs = [vals[o] for o in graph.outputs]
    return outs[0] if len(outs) == 1 else tuple(outs)


def prepare_qat(model, calib_data, config, *, input_shape=None) -> QATModel:
    """Calibrate and plan ``model`` (ONNX path or an ordinary ``torch.nn.Module``), then wrap it for QAT.

    The module is imported through ``torch.export`` (batch norm folded into the
    convolutions); the user does not rewrite it.  Equivalent to
    ``QATModel(q.graph, q.plan, **clip_options(config))`` with ``q = gwq_tvm.quantize(model, calib_data, config)``:
    GDRQ filter groups come with the plan, the Scale-Clip settings of ``config`` are trained with.
    """
    from ..api import quantize

    q = quantize(model, calib_data, config, input_shape=input_shape)
    return QATModel(q.graph, q.plan, **clip_options(config))
