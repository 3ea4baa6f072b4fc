"""The frozen configuration that flows through every gwq-tvm stage."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Mapping

from .errors import ConfigError


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
    add_precision_bits : int
        Extra fractional bits kept while adding rescaled residual inputs (0-12).
    allow_float_fallback : bool
        Keep ops that cannot be quantized in float, with explicit
        dequantize/quantize boundaries, instead of raising.
    calib_batch_size : int
        Batch size used while running the float model for calibration.
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
    allow_float_fallback: bool = True
    calib_batch_size: int = 64
    refine_steps: int = 0

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
        if isinstance(self.calib_batch_size, bool) or not isinstance(self.calib_batch_size, int) or self.calib_batch_size < 1:
            raise ConfigError(f"calib_batch_size must be a positive integer; got {self.calib_batch_size!r}")
        if isinstance(self.refine_steps, bool) or not isinstance(self.refine_steps, int) or not 0 <= self.refine_steps <= MAX_REFINE_STEPS:
            raise ConfigError(f"refine_steps must be an integer from 0 to {MAX_REFINE_STEPS}; got {self.refine_steps!r}")
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
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
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
        return cls(**data)

