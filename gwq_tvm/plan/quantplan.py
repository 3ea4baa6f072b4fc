"""The QuantPlan: the versioned JSON contract between the algorithms and the compiler.

Every quantized tensor (a node output) has ``bits``, ``signed`` and a scale
``groups[group] * 2**exponent``; every layer with weights has its weight bits,
granularity and per-channel weight scales.  A plan names the graph it was made
for by fingerprint; :class:`~gwq_tvm.passes.realize.RealizeIntegerProgram`
refuses a plan made for another graph.

Example (abridged)::

    {"format": "gwq-tvm/quantplan", "version": 1, "fingerprint": "08202588c12adf59",
     "config": {...}, "groups": {"conv2d_0": 1.3826},
     "tensors": {"conv2d_0": {"bits": 8, "signed": false, "group": "conv2d_0", "exponent": -7}},
     "layers": {"conv2d_0": {"weight_bits": 8, "granularity": "per-channel", "weight_scales": [0.0031, ...]}}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from ..config import QuantConfig
from ..errors import ConfigError, PlanError

FORMAT = "gwq-tvm/quantplan"
VERSION = 1


@dataclass(frozen=True)
class TensorQuant:
    """Quantization of one activation tensor: ``r = groups[group] * 2**exponent * q``."""

    bits: int
    signed: bool
    group: str
    exponent: int


@dataclass(frozen=True)
class LayerQuant:
    """Weight quantization of one conv/dense layer (scales on the output channels)."""

    weight_bits: int
    granularity: str
    weight_scales: tuple


@dataclass(frozen=True)
class QuantPlan:
    """A complete, immutable quantization plan (see module docstring)."""

    fingerprint: str
    config: QuantConfig
    groups: Mapping[str, float]
    tensors: Mapping[str, TensorQuant]
    layers: Mapping[str, LayerQuant] = field(default_factory=dict)
    #: the model input's shape (``None`` for a dynamic dimension), for checking run-time data
    input_shape: tuple | None = None

    def __post_init__(self):
        for k in ("groups", "tensors", "layers"):
            object.__setattr__(self, k, MappingProxyType(dict(getattr(self, k))))
        _validate(self)

    def scale(self, tensor: str) -> float:
        """The real scale of ``tensor``: group mantissa times its power of two."""
        t = self.tensors[tensor]
        return math.ldexp(self.groups[t.group], t.exponent)

    # --- serialisation -------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "config": self.config.to_dict(),
            "groups": dict(self.groups),
            "tensors": {k: vars(v) for k, v in self.tensors.items()},
            "layers": {k: {**vars(v), "weight_scales": list(v.weight_scales)} for k, v in self.layers.items()},
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
        }

    def save(self, path) -> None:
        """Write the plan as JSON (atomically: a crash never leaves half a file)."""
        from ..atomic import write_text

        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: Mapping) -> "QuantPlan":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise PlanError(f"not a gwq-tvm QuantPlan (expected format {FORMAT!r})")
        if d.get("version") != VERSION:
            raise PlanError(f"QuantPlan version {d.get('version')!r} is not supported (this gwq-tvm reads {VERSION})")
        try:
            return cls(
                fingerprint=str(d["fingerprint"]),
                config=QuantConfig.from_dict(d["config"]),
                groups={str(k): float(v) for k, v in d["groups"].items()},
                tensors={k: TensorQuant(int(v["bits"]), bool(v["signed"]), str(v["group"]), int(v["exponent"])) for k, v in d["tensors"].items()},
                layers={
                    k: LayerQuant(int(v["weight_bits"]), str(v["granularity"]), tuple(float(s) for s in v["weight_scales"]))
                    for k, v in d.get("layers", {}).items()
                },
                input_shape=tuple(d["input_shape"]) if d.get("input_shape") is not None else None,
            )
        except ConfigError as err:
            raise PlanError(f"QuantPlan config: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise PlanError(f"malformed QuantPlan: {type(err).__name__}: {err}") from None

    @classmethod
    def load(cls, path) -> "QuantPlan":
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise PlanError(f"{path}: cannot read the plan ({err.strerror or type(err).__name__})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PlanError(f"{path}: not JSON ({err})") from None
        except RecursionError:
            raise PlanError(f"{path}: not a QuantPlan (JSON nested too deeply)") from None
        try:
            return cls.from_dict(data)
        except (OverflowError, RecursionError) as err:  # int(1e400), deeply nested values
            raise PlanError(f"{path}: malformed QuantPlan ({type(err).__name__}: {err})") from None

    def diff(self, other: "QuantPlan") -> list[str]:
        """Human-readable differences, one line each (empty when equal)."""
        out = []
        if self.fingerprint != other.fingerprint:
            out.append(f"fingerprint: {self.fingerprint} -> {other.fingerprint}")
        a, b = self.to_dict(), other.to_dict()
        for section in ("config", "groups", "tensors", "layers"):
            for key in sorted(set(a[section]) | set(b[section])):
                va, vb = a[section].get(key), b[section].get(key)
                if va != vb:
                    out.append(f"{section}.{key}: {_short(va)} -> {_short(vb)}")
        return out


def _short(v) -> str:
    s = json.dumps(v)
    return s if len(s) < 120 else s[:117] + "..."


def _validate(plan: QuantPlan) -> None:
    for name, t in plan.tensors.items():
        if not 2 <= t.bits <= 8:
            raise PlanError(f"tensor {name}: bits must be 2-8; got {t.bits}")
        if t.group not in plan.groups:
            raise PlanError(f"tensor {name}: unknown group {t.group!r}")
    for g, m in plan.groups.items():
        if not (1.0 <= m < 2.0):
            raise PlanError(f"group {g}: mantissa must be in [1, 2); got {m}")
    for name, layer in plan.layers.items():
        if not 2 <= layer.weight_bits <= 8:
            raise PlanError(f"layer {name}: weight_bits must be 2-8; got {layer.weight_bits}")
        if layer.granularity not in ("per-channel", "per-tensor"):
            raise PlanError(f"layer {name}: unknown granularity {layer.granularity!r}")
        if not layer.weight_scales or not all(s > 0 and math.isfinite(s) for s in layer.weight_scales):
            raise PlanError(f"layer {name}: weight scales must be positive and finite")
