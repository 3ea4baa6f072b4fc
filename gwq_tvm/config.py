"""The frozen configuration that flows through every gwq-tvm stage."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Mapping

from .errors import ConfigError, GwqError


class Calibration(str, Enum):
    """How an activation tensor's clipping range is chosen from its statistics.

    * ``MAX``: the largest magnitude seen.
    * ``PERCENTILE``: the ``percentile``-th percentile of the magnitudes.
    * ``MSE``: the clip minimising the expected quantization MSE over the histogram.
    """

    MAX = "max"
    PERCENTILE = "percentile"
    MSE = "mse"


class ScaleMode(str, Enum):
    """How activation scales are shared (DESIGN.md section 3).

    * ``PER_LAYER``: every tensor its own scale; most SFCs are multiplies.
    * ``POT``: one global power-of-two grid (max-calibrated scales rounded up
      to ``2**k``, like TVM Relay's old ``power2`` mode); every SFC is a shift.
    * ``GWQ``: tensors grouped by distribution similarity and by the SFC edges
      between them; a group shares one mantissa, each tensor has its own
      exponent, weights have power-of-two scales.  SFCs inside a group are
      shifts, across groups one multiply (see :mod:`gwq_tvm.plan.grouping`).
    """

    PER_LAYER = "per-layer"
    POT = "pot"
    GWQ = "gwq"


class WeightGranularity(str, Enum):
    """One weight scale per output channel or per tensor."""

    PER_CHANNEL = "per-channel"
    PER_TENSOR = "per-tensor"


MIN_BITS, MAX_BITS = 2, 8
#: GWQ defaults (chosen on the trade-off benchmark, benchmarks/gwq_tradeoff.py)
DEFAULT_GROUPS = 4
DEFAULT_SFC_COST = 0.05
#: upper bound of ``refine_steps`` (a typo guard: a few hundred steps are plenty)
MAX_REFINE_STEPS = 100_000


def _enum(enum_cls, value, name):
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(e.value for e in enum_cls)
        raise ConfigError(f"{name} must be one of {choices}; got {value!r}") from None


def _bits(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise ConfigError(f"{name} must be an integer from {MIN_BITS} to {MAX_BITS}; got {value!r}")
    return value


#: the PTQ-SL / GDRQ options (written by :meth:`QuantConfig.to_dict` only when set)
SUBLAYER_FIELDS = ("weights", "weight_blocks", "weight_blocks_fit", "reorder_channels", "block_search", "search_metric",
                   "search_rounds", "weight_groups", "scale_clip", "scale_clip_k", "act_clip_k")
#: options written by :meth:`QuantConfig.to_dict` only when set
ACTIVATION_FIELDS = ("symmetric_activations",)
#: values of the PTQ-SL / GDRQ options
BLOCK_FITS = ("strict", "gcd")
SEARCH_METRICS = ("l2", "cosine", "weighted-l2")
SIGMA_RULES = ("std", "mean-abs")


def parse_blocks(text: str) -> tuple:
    """``"NOUTxNIN"`` as ``(n_out, n_in)`` (``n_out`` may be ``C``: every output channel its own block).

    >>> parse_blocks("4x2"), parse_blocks("Cx1")
    ((4, 2), ('C', 1))
    """
    parts = str(text).lower().split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        n_out = "C" if parts[0] == "c" else int(parts[0])
        return _blocks((n_out, int(parts[1])))
    except ValueError:
        raise ConfigError(f"weight blocks must be NOUTxNIN with positive integers (NOUT may be C), e.g. 4x2; got {text!r}") from None


def _blocks(value) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"weight_blocks must be an (n_out, n_in) pair; got {value!r}")
    n_out, n_in = value
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
    if not (ok(n_out) or n_out == "C") or not ok(n_in):
        raise ConfigError(f"weight_blocks must be positive integers (n_out may be 'C'); got {tuple(value)!r}")
    return (n_out, n_in)


#: weight codebooks of :attr:`QuantConfig.weights`
WEIGHT_CODEBOOKS = ("uniform", "post")


def _check_weights(cfg) -> None:
    """``weights='post'``: POST levels (:mod:`gwq_tvm.plan.post`) on conv/dense layers, per output channel, 2-5 bits."""
    if cfg.weights not in WEIGHT_CODEBOOKS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_CODEBOOKS)}; got {cfg.weights!r}")
    if cfg.weights == "post":
        if not 2 <= cfg.weight_bits <= 5:
            raise ConfigError(f"weights post needs weight_bits 2-5 (2**b - 1 levels of powers of sqrt 2); got {cfg.weight_bits}")
        if cfg.weight_blocks is not None or cfg.weight_groups is not None or cfg.scale_clip is not None:
            raise ConfigError("weights post chooses its own per-channel clip: drop weight_blocks, weight_groups and scale_clip")
        if cfg.weight_granularity is not WeightGranularity.PER_CHANNEL:
            raise ConfigError("weights post has one clip per output channel: weight_granularity must be per-channel")
        if cfg.refine_steps or cfg.block_search:
            raise ConfigError("weights post is post-training only here: refine_steps and block_search work on uniform weights")


#: the mixed-precision options (written by :meth:`QuantConfig.to_dict` only when set)
MIXED_FIELDS = ("mixed_precision", "size_budget", "bitops_budget", "importance", "mp_weight_bits", "mp_act_bits",
                "importance_file", "mp_search", "latency_budget", "latency_table", "latency_target", "latency_board")
IMPORTANCES = ("proxy", "learned", "hessian")
#: how the bit-widths are chosen from the importance
MP_SEARCHES = ("ilp", "greedy")


def _bit_choices(value, name) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{name} must be a list of bit-widths from {MIN_BITS} to {MAX_BITS}; got {value!r}")
    out = tuple(sorted({_bits(v, name) for v in value}))
    if not out:
        raise ConfigError(f"{name} must name at least one bit-width")
    return out


def _check_mixed(cfg, set_) -> None:
    """Validate the mixed-precision options of :class:`QuantConfig`."""
    from .plan.mixed_precision import parse_budget, parse_latency_budget

    if not isinstance(cfg.mixed_precision, bool):
        raise ConfigError(f"mixed_precision must be true or false; got {cfg.mixed_precision!r}")
    for k in ("size_budget", "bitops_budget"):
        if getattr(cfg, k) is not None:
            set_(k, str(parse_budget(getattr(cfg, k), k)))
    if cfg.latency_budget is not None:
        budget = parse_latency_budget(cfg.latency_budget)
        set_("latency_budget", str(budget) if budget.percent else f"{budget.value:.9g}s")
    for k, what in (("latency_table", "a path"), ("latency_target", "a target name or JSON"),
                    ("latency_board", "KEY@HOST:PORT")):
        v = getattr(cfg, k)
        if v is None:
            continue
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{k} must be {what}; got {v!r}")
        if cfg.latency_budget is None:
            raise ConfigError(f"{k} applies with a latency_budget only")
    if cfg.latency_board is not None:
        from .remote.tracker import parse_board

        try:
            parse_board(cfg.latency_board)
        except GwqError as err:
            raise ConfigError(f"latency_board: {err}") from None
    set_("mp_weight_bits", _bit_choices(cfg.mp_weight_bits, "mp_weight_bits"))
    set_("mp_act_bits", _bit_choices(cfg.mp_act_bits, "mp_act_bits"))
    if cfg.importance not in IMPORTANCES:
        raise ConfigError(f"importance must be one of {', '.join(IMPORTANCES)}; got {cfg.importance!r}")
    if cfg.mp_search not in MP_SEARCHES:
        raise ConfigError(f"mp_search must be one of {', '.join(MP_SEARCHES)}; got {cfg.mp_search!r}")
    if cfg.importance_file is not None:
        if not isinstance(cfg.importance_file, str) or not cfg.importance_file:
            raise ConfigError(f"importance_file must be a path; got {cfg.importance_file!r}")
    if not cfg.mixed_precision:
        given = [k for k in MIXED_FIELDS[1:] if getattr(cfg, k) != QuantConfig.__dataclass_fields__[k].default]
        if given:
            raise ConfigError(f"{given[0]} applies with mixed_precision only")
        return
    if cfg.importance == "learned" and cfg.importance_file is None:
        raise ConfigError("importance 'learned' reads LIMPQ's indicators from an importance_file (written by "
                          "'gwq-tvm plan --mixed-precision --importance learned' or gwq_tvm.qat.importance.learn_importance)")
    if cfg.size_budget is None and cfg.bitops_budget is None and cfg.latency_budget is None:
        raise ConfigError("mixed_precision needs a size_budget, a bitops_budget or a latency_budget (or several)")
    if cfg.bits:
        raise ConfigError("mixed_precision chooses every layer's bits: drop the per-layer bits overrides")
    if (cfg.weight_bits, cfg.act_bits) != (8, 8):
        raise ConfigError("mixed_precision chooses weight and activation bits (from mp_weight_bits, mp_act_bits): "
                          "leave weight_bits and act_bits at 8")
    if cfg.weights != "uniform":
        raise ConfigError(f"mixed_precision chooses bits for uniform weights; weights {cfg.weights} is not combined with it yet")
    if cfg.min_shift_share is not None:
        raise ConfigError("mixed_precision and min_shift_share are two planning searches: give one")
    if cfg.block_search or cfg.refine_steps:
        raise ConfigError("mixed_precision is not combined with block_search or refine_steps yet (they re-plan at "
                          "uniform bits): give one")


def _check_gdrq_ptqsl(cfg, set_) -> None:
    """Validate the PTQ-SL / GDRQ options of :class:`QuantConfig`."""
    if cfg.weight_blocks is not None:
        set_("weight_blocks", _blocks(cfg.weight_blocks))
    if cfg.weight_blocks_fit not in BLOCK_FITS:
        raise ConfigError(f"weight_blocks_fit must be one of {', '.join(BLOCK_FITS)}; got {cfg.weight_blocks_fit!r}")
    if cfg.search_metric not in SEARCH_METRICS:
        raise ConfigError(f"search_metric must be one of {', '.join(SEARCH_METRICS)}; got {cfg.search_metric!r}")
    for k in ("reorder_channels", "block_search"):
        if not isinstance(getattr(cfg, k), bool):
            raise ConfigError(f"{k} must be true or false; got {getattr(cfg, k)!r}")
    if isinstance(cfg.search_rounds, bool) or not isinstance(cfg.search_rounds, int) or not 1 <= cfg.search_rounds <= 10:
        raise ConfigError(f"search_rounds must be an integer from 1 to 10; got {cfg.search_rounds!r}")
    g = cfg.weight_groups
    if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
        raise ConfigError(f"weight_groups must be a positive integer; got {g!r}")
    if g is not None and cfg.weight_blocks is not None:
        raise ConfigError("give weight_groups (GDRQ filter groups) or weight_blocks (PTQ-SL blocks), not both")
    if cfg.scale_clip is not None and cfg.scale_clip not in SIGMA_RULES:
        raise ConfigError(f"scale_clip must be one of {', '.join(SIGMA_RULES)}; got {cfg.scale_clip!r}")
    for k in ("scale_clip_k", "act_clip_k"):
        v = getattr(cfg, k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
            raise ConfigError(f"{k} must be a positive number; got {v!r}")
    if cfg.scale_clip_k is not None and cfg.scale_clip is None:
        raise ConfigError("scale_clip_k needs scale_clip (std or mean-abs)")
    if cfg.reorder_channels and cfg.weight_blocks is None and g is None:
        raise ConfigError("reorder_channels sorts channels into weight blocks: give weight_blocks or weight_groups")


@dataclass(frozen=True)
class QuantConfig:
    """Settings of one quantization run; validated on construction.

    Parameters
    ----------
    weight_bits, act_bits : int
        Default bit-widths (2-8) of weights and activations.  Values live in
        ``int8``/``uint8`` containers whatever the width.
    calibration : Calibration or str
        Clipping rule for activations (``max``, ``percentile``, ``mse``).
    percentile : float
        Percentile of magnitudes used by ``calibration="percentile"``, in (50, 100].
    weight_granularity : WeightGranularity or str
        ``per-channel`` (default) or ``per-tensor`` weight scales.
    mode : ScaleMode or str
        ``per-layer``, ``pot`` or ``gwq``.
    groups : int, optional
        GWQ: at most this many groups (shared mantissas).  Exclusive with ``tolerance``;
        when both are ``None`` GWQ uses ``DEFAULT_GROUPS``.
    tolerance : float, optional
        GWQ: the fewest multiply-SFC elements whose added quantization error stays
        within ``tolerance`` (summed added noise-to-signal power over the tensors,
        e.g. ``0.01``; see :mod:`gwq_tvm.plan.grouping`).
    min_shift_share : float, optional
        GWQ: among the groupings the ``tolerance`` search visits (every
        ``sfc_cost`` of its sweep, every number of groups up to 8), the one whose
        integer program is closest to the float model on the calibration images
        (softmax KL, exact integer simulation) while at least this fraction of
        SFC elements are shifts, in ``[0, 1]``.  Exclusive with ``groups`` and
        ``tolerance``; needs the ``torch`` extra (see :mod:`gwq_tvm.qat.select`).
    sfc_cost : float
        GWQ: weight of the multiply cost against the added error (the added error
        worth turning every SFC element from a multiply into a shift); ``0`` groups
        by error alone.
    loss_aware : bool
        GWQ: weight each tensor's error curve by its measured output sensitivity
        (a fake-quant run on 256 calibration samples per tensor; see
        :mod:`gwq_tvm.calibration.sensitivity`).  Off: every tensor's noise counts alike.
    bits : mapping of str to (int, int)
        Per-layer overrides ``{node_name: (weight_bits, act_bits)}``; ``act_bits``
        applies to the node's output tensor.
    end_bits : int, optional
        The usual low-bit protocol: the model input and the weights of the first and
        last weight layers use this many bits whatever ``weight_bits``/``act_bits``
        say (explicit ``bits`` overrides still win).  ``None``: no exception.
    symmetric_activations : bool
        Keep every activation symmetric (zero point 0).  ``False`` (default):
        at W8A8 (8-bit weights and activations, no mixed precision) a signed
        8-bit tensor whose calibrated range is asymmetric becomes uint8 with a
        zero point where that lowers its step and every node reading it takes
        zero points (:func:`gwq_tvm.plan.planner.zero_point_choice`).  QAT
        keeps activations symmetric.
    add_precision_bits : int
        Extra fractional bits kept while adding rescaled residual inputs (0-12).
    allow_float_fallback : bool
        Keep ops that cannot be quantized in float, with explicit
        dequantize/quantize boundaries, instead of raising.
    calib_batch_size : int
        Batch size used while running the float model for calibration.
    weight_blocks : (int or "C", int), optional
        PTQ-SL sub-layerwise weight scales: the weight viewed as
        ``(C_out, C_in/groups * kh * kw)`` is cut into ``n_out x n_in`` blocks,
        one scale each (``(1, 1)`` is per-tensor, ``("C", 1)`` per-channel).
        Overrides ``weight_granularity``.  See :mod:`gwq_tvm.plan.sublayer`.
    weight_blocks_fit : str
        ``strict``: a layer the block shape does not divide is an error;
        ``gcd``: such a layer uses ``(gcd(n_out, C_out), gcd(n_in, K))``.
    reorder_channels : bool
        PTQ-SL channel reordering: sort each layer's output channels by weight
        range and split them into the ``n_out`` blocks (recorded as the
        layer's ``permutation``).
    block_search : bool
        PTQ-SL scale search: each block scale ``delta * alpha``,
        ``alpha in [0.1, 2.0]``, minimising the layer-output error on the
        calibration images, alternated with the layer input's activation scale
        (per-layer mode) for ``search_rounds`` rounds (see :mod:`gwq_tvm.plan.block_search`).
    search_metric : str
        ``l2`` (default), ``cosine`` or ``weighted-l2`` (L2 weighted by ``|y|``).
    search_rounds : int
        Rounds of the alternating search (1-10).
    mixed_precision : bool
        Choose each layer's weight bits and each activation tensor's bits
        with LIMPQ's ILP (:mod:`gwq_tvm.plan.mixed_precision`) under
        ``size_budget`` and/or ``bitops_budget``; the first and last layers'
        weights and the model input stay at ``end_bits`` (8 when unset).
        Exclusive with ``bits``, ``weight_bits``/``act_bits`` other than 8 and
        ``min_shift_share``.
    size_budget, bitops_budget : str or float, optional
        Packed weight bytes (``bits * count / 8``) and BitOps per sample
        (``MACs * w_bits * a_bits``): an absolute number or a percentage of
        the W8A8 figure (``"60%"``).
    importance : str
        ``proxy``: each layer's and tensor's output divergence when it alone is
        quantized at each width, measured on the calibration images
        (:func:`gwq_tvm.calibration.sensitivity.bit_importance`).  ``learned``:
        LIMPQ's step sizes from one joint QAT run over all candidate widths
        (:mod:`gwq_tvm.qat.importance`; needs ``importance_file``, training needs
        labelled data).  ``hessian``: HAWQ's Hutchinson trace of each layer's
        Hessian times its quantization perturbation (a baseline; needs torch).
    importance_file : str, optional
        An indicator file (:func:`gwq_tvm.qat.importance.save_importance`) of this
        model and these candidate widths: the ILP reads the indicators from it
        instead of measuring them (so it reruns for any budget at once).
    mp_search : str
        ``ilp`` (LIMPQ's integer program) or ``greedy`` (a baseline: from all at
        the widest, lower the least sensitive layer until the budgets hold;
        :meth:`gwq_tvm.plan.mixed_precision.Problem.greedy`).
    mp_weight_bits, mp_act_bits : tuple of int
        Candidate widths of weights (default 2, 3, 4, 8) and activations (4, 8).
    latency_budget : str, optional
        The predicted latency of the compiled program at batch 1, measured on
        this machine or on ``latency_board``: a time (``"0.8ms"``, ``"800us"``, ``"0.0008s"``) or a
        percentage of the measured W8A8 program (``"95%"``).  The prediction
        is the W8A8 program's time with each layer's kernel swapped for its
        chosen storage's (:mod:`gwq_tvm.schedules.latency`).
    latency_table : str, optional
        Where the measured latencies are kept: read when the file exists (it
        must be of this model and of ``latency_target``), else measured and
        written there.  Without it they are measured and not kept.
    latency_target : str, optional
        The target the latencies are for: ``None`` (this machine), a preset
        (``rpi4``, ``aarch64-dotprod``, ...) or a TVM target JSON.  Another
        target than this machine's is measured on ``latency_board``, or read
        from an existing ``latency_table`` measured there.
    latency_board : str, optional
        ``KEY@HOST:PORT``: measure the table on the board registered under
        ``KEY`` at the TVM RPC tracker ``HOST:PORT``, every kernel
        cross-compiled for ``latency_target`` and timed there.
    weight_groups : int, optional
        GDRQ group-based quantization: each layer's output filters in ``G``
        contiguous groups with one step each (folded into the per-channel SFC:
        no op is added).  Exclusive with ``weight_blocks``.
    scale_clip : str, optional
        GDRQ Scale-Clip of weights: clip at ``k * sigma(W)`` before uniform
        quantization, ``sigma`` the standard deviation (``std``) or mean
        absolute value (``mean-abs``) of the weights of each scale's block.
    scale_clip_k : float, optional
        The ``k`` of Scale-Clip; ``None`` picks it per tensor among
        :data:`gwq_tvm.plan.sublayer.CLIP_KS` by the weights' quantization error.
    act_clip_k : float, optional
        GDRQ Scale-Clip of activations: clip each tensor at ``k * sigma``
        (``sigma`` per ``scale_clip``'s rule, estimated over all calibration
        batches) when that is below the ``calibration`` rule's clip.
    weights : str
        Weight codebook of the conv/dense layers: ``uniform`` (default) or ``post``
        (ASQ's powers of sqrt 2, per-channel clip chosen post-training; needs
        ``weight_bits`` 2-5; layers overridden to more bits stay uniform; see
        :mod:`gwq_tvm.plan.post`).
    refine_steps : int
        After planning, refine the plan's continuous scale choices (group
        mantissas, tensor exponents, power-of-two weight-scale exponents) for
        this many Adam steps on the calibration images, against the float
        model's outputs, weights frozen and groups unchanged (post-training; see
        :mod:`gwq_tvm.qat.refine`; needs the ``torch`` extra).  ``0``: no refinement.
    """

    weight_bits: int = 8
    act_bits: int = 8
    calibration: Calibration = Calibration.MSE
    percentile: float = 99.99
    weight_granularity: WeightGranularity = WeightGranularity.PER_CHANNEL
    mode: ScaleMode = ScaleMode.PER_LAYER
    groups: int | None = None
    tolerance: float | None = None
    min_shift_share: float | None = None
    sfc_cost: float = DEFAULT_SFC_COST
    loss_aware: bool = True
    bits: Mapping[str, tuple] = field(default_factory=dict)
    end_bits: int | None = None
    add_precision_bits: int = 8
    symmetric_activations: bool = False
    allow_float_fallback: bool = True
    calib_batch_size: int = 64
    refine_steps: int = 0
    weight_blocks: tuple | None = None
    weight_blocks_fit: str = "strict"
    reorder_channels: bool = False
    block_search: bool = False
    search_metric: str = "l2"
    search_rounds: int = 2
    weight_groups: int | None = None
    scale_clip: str | None = None
    scale_clip_k: float | None = None
    act_clip_k: float | None = None
    weights: str = "uniform"
    mixed_precision: bool = False
    size_budget: str | None = None
    bitops_budget: str | None = None
    importance: str = "proxy"
    mp_weight_bits: tuple = (2, 3, 4, 8)
    mp_act_bits: tuple = (4, 8)
    importance_file: str | None = None
    mp_search: str = "ilp"
    latency_budget: str | None = None
    latency_table: str | None = None
    #: the target the latency table is for (``None``: this machine) and the board measuring it (``KEY@HOST:PORT``)
    latency_target: str | None = None
    latency_board: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        _bits(self.weight_bits, "weight_bits")
        _bits(self.act_bits, "act_bits")
        set_("calibration", _enum(Calibration, self.calibration, "calibration"))
        set_("weight_granularity", _enum(WeightGranularity, self.weight_granularity, "weight_granularity"))
        set_("mode", _enum(ScaleMode, self.mode, "mode"))
        if self.groups is not None and (isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1):
            raise ConfigError(f"groups must be a positive integer; got {self.groups!r}")
        if self.tolerance is not None and (
            isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or not 0 <= self.tolerance < float("inf")
        ):
            raise ConfigError(f"tolerance must be a finite number >= 0; got {self.tolerance!r}")
        if isinstance(self.sfc_cost, bool) or not isinstance(self.sfc_cost, (int, float)) or not 0 <= self.sfc_cost < float("inf"):
            raise ConfigError(f"sfc_cost must be a finite number >= 0; got {self.sfc_cost!r}")
        if not isinstance(self.loss_aware, bool):
            raise ConfigError(f"loss_aware must be true or false; got {self.loss_aware!r}")
        if self.min_shift_share is not None and (
            isinstance(self.min_shift_share, bool) or not isinstance(self.min_shift_share, (int, float))
            or not 0 <= self.min_shift_share <= 1
        ):
            raise ConfigError(f"min_shift_share must be a number from 0 to 1; got {self.min_shift_share!r}")
        chosen = [k for k in ("groups", "tolerance", "min_shift_share") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ConfigError(f"give GWQ one of groups, tolerance or min_shift_share; got {' and '.join(chosen)}")
        if self.mode is not ScaleMode.GWQ and chosen:
            raise ConfigError(f"{chosen[0]} applies to mode 'gwq' only (mode is {self.mode.value!r})")
        if not isinstance(self.percentile, (int, float)) or not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100]; got {self.percentile!r}")
        if self.end_bits is not None:
            _bits(self.end_bits, "end_bits")
        if not isinstance(self.add_precision_bits, int) or not 0 <= self.add_precision_bits <= 12:
            raise ConfigError(f"add_precision_bits must be an integer from 0 to 12; got {self.add_precision_bits!r}")
        if not isinstance(self.symmetric_activations, bool):
            raise ConfigError(f"symmetric_activations must be true or false; got {self.symmetric_activations!r}")
        if isinstance(self.calib_batch_size, bool) or not isinstance(self.calib_batch_size, int) or self.calib_batch_size < 1:
            raise ConfigError(f"calib_batch_size must be a positive integer; got {self.calib_batch_size!r}")
        if isinstance(self.refine_steps, bool) or not isinstance(self.refine_steps, int) or not 0 <= self.refine_steps <= MAX_REFINE_STEPS:
            raise ConfigError(f"refine_steps must be an integer from 0 to {MAX_REFINE_STEPS}; got {self.refine_steps!r}")
        _check_gdrq_ptqsl(self, set_)
        _check_weights(self)
        _check_mixed(self, set_)
        overrides = {}
        for name, pair in dict(self.bits).items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ConfigError(f"bits[{name!r}] must be a (weight_bits, act_bits) pair; got {pair!r}")
            overrides[str(name)] = (_bits(pair[0], f"bits[{name!r}] weight"), _bits(pair[1], f"bits[{name!r}] act"))
        set_("bits", MappingProxyType(overrides))

    def weight_bits_for(self, node: str) -> int:
        return self.bits.get(node, (self.weight_bits, self.act_bits))[0]

    def act_bits_for(self, node: str) -> int:
        return self.bits.get(node, (self.weight_bits, self.act_bits))[1]

    def replace(self, **changes) -> "QuantConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The settings as JSON values; the PTQ-SL/GDRQ and mixed-precision options (:data:`SUBLAYER_FIELDS`,
        :data:`MIXED_FIELDS`) only when they differ from their defaults, so that configs which do not use them
        read as before."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in SUBLAYER_FIELDS + MIXED_FIELDS + ACTIVATION_FIELDS and v == f.default:
                continue
            if isinstance(v, tuple) and f.name in MIXED_FIELDS:
                v = list(v)
            out[f.name] = v.value if isinstance(v, Enum) else ({k: list(p) for k, p in v.items()} if f.name == "bits" else v)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "QuantConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        data = dict(data)
        if "bits" in data:
            data["bits"] = {k: tuple(v) for k, v in data["bits"].items()}
        for k in ("mp_weight_bits", "mp_act_bits"):
            if isinstance(data.get(k), list):
                data[k] = tuple(data[k])
        if data.get("weight_blocks") is not None:
            data["weight_blocks"] = tuple(data["weight_blocks"])
        return cls(**data)

