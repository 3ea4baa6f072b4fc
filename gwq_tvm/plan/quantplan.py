"""The QuantPlan: the versioned JSON contract between the algorithms and the compiler.

A plan says everything that defines the integer program and nothing about how
it was chosen:

* every quantized activation tensor (a node output): :class:`TensorQuant`,
  ``bits``, ``signed`` and a static scale ``groups[group] * 2**exponent``
  (with ``dynamic``, that step times a per-sample ``beta`` that the named
  entry of ``adapters`` computes: ASQ, :class:`AdapterQuant`);
  and on unsigned tensors an optional ``zero_point`` (``r = s * (q - z)``);
* every layer with weights: :class:`WeightQuant`, a value object of bits,
  granularity (``tensor``, ``channel`` or ``block`` ``n_out x n_in``, with an
  optional output-channel permutation), codebook (``uniform``, ``pot``,
  ``post``), storage (``int8`` or ``int4`` packed two per byte) and the scales
  shaped by the granularity;
* :class:`Arithmetic`: the program-wide integer settings (the residual-add
  precision);
* ``provenance``: how the plan was made (the :class:`~gwq_tvm.config.QuantConfig`
  of the search, the tool).  The compiler never reads it.

A plan names the graph it was made for by fingerprint;
:class:`~gwq_tvm.passes.realize.RealizeIntegerProgram` refuses a plan made
for another graph.  Version 1 files (the embedded ``config``, per-channel
``weight_scales``) load through :func:`upgrade_v1`.

Example (abridged)::

    {"format": "gwq-tvm/quantplan", "version": 2, "fingerprint": "08202588c12adf59",
     "arithmetic": {"add_precision_bits": 8}, "groups": {"conv2d_0": 1.3826},
     "tensors": {"conv2d_0": {"bits": 8, "signed": false, "group": "conv2d_0", "exponent": -7}},
     "layers": {"conv2d_0": {"bits": 8, "granularity": "channel", "scales": [0.0031, ...],
                             "codebook": "uniform", "storage": "int8"}},
     "input_shape": [null, 1, 28, 28], "provenance": {"config": {...}, "tool": "gwq-tvm 0.1.0"}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from ..errors import ConfigError, PlanError
from .validate import MAX_SCALE, MIN_SCALE

FORMAT = "gwq-tvm/quantplan"
VERSION = 2
#: versions :meth:`QuantPlan.from_dict` reads
READS = (1, 2)

GRANULARITIES = ("tensor", "channel", "block")
CODEBOOKS = ("uniform", "pot", "post")
STORAGES = ("int8", "int4")


@dataclass(frozen=True)
class TensorQuant:
    """Quantization of one activation tensor: ``r = groups[group] * 2**exponent * (q - zero_point)``.

    ``dynamic`` names the entry of :attr:`QuantPlan.adapters` that produces a
    per-sample multiplier ``beta`` of this step (ASQ: ``r = s * beta * q``);
    ``None`` for a static scale.  ``zero_point`` (an integer code of
    the container, 0 by default) is nonzero only on unsigned tensors: an
    asymmetric range ``[min, max]`` held in uint8 (see
    :func:`gwq_tvm.plan.planner.zero_point_choice`).
    """

    bits: int
    signed: bool
    group: str
    exponent: int
    dynamic: str | None = None
    zero_point: int = 0


@dataclass(frozen=True)
class WeightQuant:
    """Weight quantization of one conv/dense layer, a value.

    Attributes
    ----------
    bits : int
    scales : tuple of float
        Row-major scales of the granularity's shape: one (``tensor``), one per
        output channel (``channel``), or ``block[0] x block[1]`` (``block``:
        output-channel blocks x input blocks of the weight viewed as
        ``(C_out, C_in*kh*kw)``).
    granularity : str
    block : tuple of int, optional
        ``(n_out, n_in)`` for ``block``.
    codebook : str
        The weight levels: ``uniform`` integers, ``pot`` (powers of two) or ``post`` (powers of sqrt 2).
    storage : str
        ``int8``, or ``int4`` packed two per byte.
    permutation : tuple of int, optional
        Output-channel order applied before blocking (``None``: identity).
    """

    bits: int
    scales: tuple
    granularity: str = "channel"
    block: tuple | None = None
    codebook: str = "uniform"
    storage: str = "int8"
    permutation: tuple | None = None

    # v1 names, kept for readers of the plan
    @property
    def weight_bits(self) -> int:
        return self.bits

    @property
    def weight_scales(self) -> tuple:
        return self.scales

    def channel_scales(self, channels: int) -> np.ndarray:
        """One scale per output channel, float64 (``tensor`` broadcast; ``channel`` as stored;
        ``block`` with one input block: each channel takes its output block's scale).

        Raises
        ------
        PlanError
            If the scales do not fit ``channels`` or the granularity has no
            per-channel form (blocks with input splits).
        """
        grid = self.block_scales(channels)
        if grid.shape[1] != 1:
            raise PlanError(f"block {self.block[0]}x{self.block[1]} weight scales have no per-channel form")
        return grid[:, 0]

    def block_scales(self, channels: int) -> np.ndarray:
        """The ``(channels, n_in)`` grid of scales: output channel ``c``'s scale in input block ``j``.

        With a ``permutation``, output block ``i`` holds the channels
        ``permutation[i*b : (i+1)*b]`` (``b = channels / n_out``): the reordering
        only decides which channels share a scale, so every per-channel
        constant of the program is indexed statically and no gather is emitted.
        """
        s = np.asarray(self.scales, dtype=np.float64)
        if self.granularity == "tensor":
            return np.full((channels, 1), s[0])
        if self.granularity == "channel":
            if s.size != channels:
                raise PlanError(f"{s.size} weight scales for {channels} output channels")
            return s.reshape(channels, 1)
        n_out, n_in = self.block
        if channels % n_out:
            raise PlanError(f"block {n_out}x{n_in}: {n_out} output blocks do not divide {channels} channels")
        grid = np.repeat(s.reshape(n_out, n_in), channels // n_out, axis=0)
        if self.permutation is not None:
            if len(self.permutation) != channels:
                raise PlanError(f"permutation of {len(self.permutation)} channels for {channels} output channels")
            out = np.empty_like(grid)
            out[np.asarray(self.permutation)] = grid
            grid = out
        return grid

    def scale_map(self, shape: tuple) -> np.ndarray:
        """Each weight element's scale, broadcastable to a weight of ``shape`` (output channels first).

        Input block ``j`` covers the columns ``[j*K/n_in, (j+1)*K/n_in)`` of the
        weight viewed as ``(C_out, K)``, ``K = prod(shape[1:])`` (for a conv,
        ``C_in/groups * kh * kw``, so a depthwise conv's blocks split its taps).
        """
        grid = self.block_scales(int(shape[0]))
        k = int(np.prod(shape[1:]))
        n_in = grid.shape[1]
        if k % n_in:
            raise PlanError(f"{n_in} input blocks do not divide the {k} weight columns")
        if n_in == 1:
            return grid.reshape((-1,) + (1,) * (len(shape) - 1))
        return np.repeat(grid, k // n_in, axis=1).reshape(shape)

    def to_dict(self) -> dict:
        out = {"bits": self.bits, "granularity": self.granularity, "scales": list(self.scales),
               "codebook": self.codebook, "storage": self.storage}
        if self.block is not None:
            out["block"] = list(self.block)
        if self.permutation is not None:
            out["permutation"] = list(self.permutation)
        return out


#: the version 1 name
LayerQuant = WeightQuant


@dataclass(frozen=True)
class AdapterQuant:
    """ASQ's adapter of one activation tensor ``x`` (seed 004), as trained floats.

    ``beta = relu(w2 . relu(w1 @ GAP(x) + b1) + b2)``: a per-sample multiplier of
    the tensor's step.  The integer program (:func:`gwq_tvm.plan.program.adapter_recipe`)
    quantizes ``w1`` per row and ``w2`` per tensor to int8, the hidden layer to
    uint8 at ``hidden_scale`` and ``beta`` to a fixed-point integer.

    Attributes
    ----------
    w1 : tuple of tuple of float
        ``(H, C)``: hidden units by the tensor's channels.
    b1 : tuple of float
        ``(H,)``.
    w2 : tuple of float
        ``(H,)``.
    b2 : float
    hidden_scale : float
        The step of the uint8 hidden activations.
    """

    w1: tuple
    b1: tuple
    w2: tuple
    b2: float
    hidden_scale: float

    def arrays(self) -> tuple:
        """``(w1, b1, w2)`` as float64 arrays."""
        return (np.asarray(self.w1, dtype=np.float64).reshape(len(self.b1), -1), np.asarray(self.b1, dtype=np.float64),
                np.asarray(self.w2, dtype=np.float64))

    def to_dict(self) -> dict:
        return {"w1": [list(r) for r in self.w1], "b1": list(self.b1), "w2": list(self.w2), "b2": self.b2,
                "hidden_scale": self.hidden_scale}

    @classmethod
    def from_arrays(cls, w1, b1, w2, b2, hidden_scale) -> "AdapterQuant":
        """From numpy/torch-converted arrays (values become Python floats)."""
        w1 = np.asarray(w1, dtype=np.float64)
        return cls(tuple(tuple(float(v) for v in r) for r in w1), tuple(float(v) for v in np.ravel(b1)),
                   tuple(float(v) for v in np.ravel(w2)), float(b2), float(hidden_scale))


@dataclass(frozen=True)
class Arithmetic:
    """Program-wide integer settings the compiler reads.

    ``add_precision_bits``: a residual add rescales its inputs to ``2**P``
    units of its output scale (``P`` extra fractional bits) before adding.

    ``int32_requantize``: a requantizing multiply whose accumulator bound
    allows runs in int32 with a ``Q<b>`` mantissa, ``b >= 12``
    (:func:`gwq_tvm.plan.sfc.int32_multiply`), instead of int64 with the Q31
    one.  The two differ by at most one output code, so the choice is part of
    the plan: new plans say ``true``; a plan file without the key (written
    before this setting existed) keeps the int64 form it was made with.
    """

    add_precision_bits: int = 8
    int32_requantize: bool = True


@dataclass(frozen=True)
class QuantPlan:
    """A complete, immutable quantization plan (see module docstring)."""

    fingerprint: str
    groups: Mapping[str, float]
    tensors: Mapping[str, TensorQuant]
    layers: Mapping[str, WeightQuant] = field(default_factory=dict)
    #: the model input's shape (``None`` for a dynamic dimension), for checking run-time data
    input_shape: tuple | None = None
    arithmetic: Arithmetic = Arithmetic()
    #: how the plan was made (search settings, tool); never read by the compiler
    provenance: Mapping = field(default_factory=dict)
    #: ASQ adapters by name (a tensor's ``dynamic`` names one)
    adapters: Mapping[str, AdapterQuant] = field(default_factory=dict)

    def __post_init__(self):
        for k in ("groups", "tensors", "layers", "provenance", "adapters"):
            object.__setattr__(self, k, MappingProxyType(dict(getattr(self, k))))
        _validate(self)

    def scale(self, tensor: str) -> float:
        """The real scale of ``tensor``: group mantissa times its power of two."""
        t = self.tensors[tensor]
        return math.ldexp(self.groups[t.group], t.exponent)

    @property
    def config(self):
        """The :class:`~gwq_tvm.config.QuantConfig` the plan was searched with (provenance; ``None`` if unknown)."""
        from ..config import QuantConfig

        cfg = self.provenance.get("config")
        return QuantConfig.from_dict(cfg) if cfg is not None else None

    def replace(self, **changes) -> "QuantPlan":
        """A copy with ``changes`` applied (validated again)."""
        import dataclasses

        return dataclasses.replace(self, **changes)

    # --- serialisation -------------------------------------------------
    def to_dict(self) -> dict:
        out = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "arithmetic": {"add_precision_bits": self.arithmetic.add_precision_bits,
                           "int32_requantize": self.arithmetic.int32_requantize},
            "groups": dict(self.groups),
            "tensors": {k: _tensor_dict(v) for k, v in self.tensors.items()},
            "layers": {k: v.to_dict() for k, v in self.layers.items()},
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "provenance": _plain(self.provenance),
        }
        if self.adapters:
            out["adapters"] = {k: v.to_dict() for k, v in self.adapters.items()}
        return out

    def save(self, path) -> None:
        """Write the plan as JSON (atomically: a crash never leaves half a file)."""
        from ..atomic import write_text

        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: Mapping) -> "QuantPlan":
        """Read a plan dict of any version in :data:`READS` (schema-checked; errors name the JSON path)."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise PlanError(f"not a gwq-tvm QuantPlan (expected format {FORMAT!r})")
        version = d.get("version")
        if version not in READS:
            raise PlanError(f"QuantPlan version {version!r} is not supported (this gwq-tvm reads {', '.join(map(str, READS))})")
        if version == 1:
            d = upgrade_v1(d)
        return _read_v2(d)

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
        """Human-readable differences, one line each (empty when equal; provenance ignored)."""
        out = []
        if self.fingerprint != other.fingerprint:
            out.append(f"fingerprint: {self.fingerprint} -> {other.fingerprint}")
        a, b = self.to_dict(), other.to_dict()
        for section in ("arithmetic", "groups", "tensors", "layers", "adapters"):
            for key in sorted(set(a.get(section, {})) | set(b.get(section, {}))):
                va, vb = a.get(section, {}).get(key), b.get(section, {}).get(key)
                if va != vb:
                    out.append(f"{section}.{key}: {_short(va)} -> {_short(vb)}")
        return out


def _tensor_dict(t: TensorQuant) -> dict:
    out = {"bits": t.bits, "signed": t.signed, "group": t.group, "exponent": t.exponent}
    if t.dynamic is not None:
        out["dynamic"] = t.dynamic
    if t.zero_point:
        out["zero_point"] = t.zero_point
    return out


def _plain(value):
    """A JSON-ready copy of nested mappings/sequences (mapping proxies and tuples included)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short(v) -> str:
    s = json.dumps(v)
    return s if len(s) < 120 else s[:117] + "..."


# --- reading: schema checks that name the JSON path --------------------------------
def _get(d: Mapping, key: str, kind, path: str, default=...):
    if key not in d:
        if default is ...:
            raise PlanError(f"{path}.{key}: missing")
        return default
    v = d[key]
    ok = isinstance(v, kind) and not (kind in (int, (int, float)) and isinstance(v, bool))
    if not ok:
        names = {int: "an integer", bool: "true/false", str: "a string", Mapping: "an object", list: "a list",
                 (int, float): "a number"}
        raise PlanError(f"{path}.{key}: expected {names.get(kind, kind)}, got {json.dumps(v)[:40]}")
    return v


def _ints(v, path: str) -> tuple:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise PlanError(f"{path}: expected a list of integers")
    return tuple(v)


#: the keys of a version 2 plan and of its entries
_KEYS = {
    "plan": {"format", "version", "fingerprint", "arithmetic", "groups", "tensors", "layers", "input_shape", "provenance",
             "adapters"},
    "adapter": {"w1", "b1", "w2", "b2", "hidden_scale"},
    "tensor": {"bits", "signed", "group", "exponent", "dynamic", "zero_point"},
    "layer": {"bits", "granularity", "scales", "block", "codebook", "storage", "permutation"},
    "arithmetic": {"add_precision_bits", "int32_requantize"},
}


def _known(d: Mapping, what: str, path: str) -> None:
    unknown = sorted(set(d) - _KEYS[what])
    if unknown:
        raise PlanError(f"{path}.{unknown[0]}: unknown key ({'an' if what[0] in 'aeiou' else 'a'} {what} entry has "
                       f"{', '.join(sorted(_KEYS[what]))})")


def _read_v2(d: Mapping) -> QuantPlan:
    _known(d, "plan", "plan")
    arith = _get(d, "arithmetic", Mapping, "plan", {})
    _known(arith, "arithmetic", "arithmetic")
    groups = _get(d, "groups", Mapping, "plan")
    tensors, layers = {}, {}
    for name, t in _get(d, "tensors", Mapping, "plan").items():
        p = f"tensors.{name}"
        if not isinstance(t, Mapping):
            raise PlanError(f"{p}: expected an object")
        _known(t, "tensor", p)
        dyn = _get(t, "dynamic", str, p, None)
        tensors[name] = TensorQuant(_get(t, "bits", int, p), _get(t, "signed", bool, p), _get(t, "group", str, p),
                                    _get(t, "exponent", int, p), dyn, _get(t, "zero_point", int, p, 0))
    for name, w in _get(d, "layers", Mapping, "plan", {}).items():
        p = f"layers.{name}"
        if not isinstance(w, Mapping):
            raise PlanError(f"{p}: expected an object")
        _known(w, "layer", p)
        scales = _get(w, "scales", list, p)
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scales):
            raise PlanError(f"{p}.scales: expected a list of numbers")
        block = _get(w, "block", list, p, None)
        perm = _get(w, "permutation", list, p, None)
        layers[name] = WeightQuant(
            _get(w, "bits", int, p), tuple(float(s) for s in scales), _get(w, "granularity", str, p, "channel"),
            _ints(block, f"{p}.block") if block is not None else None, _get(w, "codebook", str, p, "uniform"),
            _get(w, "storage", str, p, "int8"), _ints(perm, f"{p}.permutation") if perm is not None else None,
        )
    adapters = {name: _read_adapter(a, f"adapters.{name}") for name, a in _get(d, "adapters", Mapping, "plan", {}).items()}
    shape = d.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or not all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s > 0)
                                                                      for s in shape)):
        raise PlanError("input_shape: expected a list of positive integers or null")
    for g, m in groups.items():
        if not isinstance(m, (int, float)) or isinstance(m, bool):
            raise PlanError(f"groups.{g}: expected a number")
    return QuantPlan(
        fingerprint=_get(d, "fingerprint", str, "plan"),
        groups={str(k): float(v) for k, v in groups.items()},
        tensors=tensors,
        layers=layers,
        input_shape=tuple(shape) if shape is not None else None,
        arithmetic=Arithmetic(_get(arith, "add_precision_bits", int, "arithmetic", 8),
                              _get(arith, "int32_requantize", bool, "arithmetic", False)),
        provenance=_provenance(d),
        adapters=adapters,
    )


def _numbers(v, path: str) -> tuple:
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise PlanError(f"{path}: expected a list of numbers")
    return tuple(float(x) for x in v)


def _read_adapter(a, path: str) -> AdapterQuant:
    if not isinstance(a, Mapping):
        raise PlanError(f"{path}: expected an object")
    _known(a, "adapter", path)
    w1 = _get(a, "w1", list, path)
    return AdapterQuant(tuple(_numbers(r, f"{path}.w1[{i}]") for i, r in enumerate(w1)), _numbers(_get(a, "b1", list, path), f"{path}.b1"),
                        _numbers(_get(a, "w2", list, path), f"{path}.w2"), float(_get(a, "b2", (int, float), path)),
                        float(_get(a, "hidden_scale", (int, float), path)))


def _provenance(d: Mapping) -> Mapping:
    """``plan.provenance``, its ``config`` (when there is one) read as a QuantConfig here, at load.

    The compiler never reads it, but the summary every command prints does
    (:attr:`QuantPlan.config`): a damaged config must be refused before any
    work, not after a compile has written its outputs.
    """
    from ..config import QuantConfig

    prov = _get(d, "provenance", Mapping, "plan", {})
    cfg = prov.get("config")
    if cfg is not None:
        if not isinstance(cfg, Mapping):
            raise PlanError("provenance.config: expected an object")
        try:
            QuantConfig.from_dict(cfg)
        except (ConfigError, TypeError, ValueError, AttributeError, OverflowError) as err:
            raise PlanError(f"provenance.config: {err}") from None
    return prov


def upgrade_v1(d: Mapping) -> dict:
    """A version 1 plan dict as version 2: the embedded config becomes provenance (its
    ``add_precision_bits`` the plan's arithmetic), per-channel weight scales that are all
    equal under ``per-tensor`` granularity become one scale."""
    config = d.get("config")
    if not isinstance(config, Mapping):
        raise PlanError("plan.config: missing (a version 1 plan embeds its QuantConfig)")
    try:
        from ..config import QuantConfig

        add_bits = QuantConfig.from_dict(config).add_precision_bits
    except ConfigError as err:
        raise PlanError(f"plan.config: {err}") from None
    layers = {}
    for name, v in (d.get("layers") or {}).items():
        if not isinstance(v, Mapping):
            raise PlanError(f"layers.{name}: expected an object")
        scales = v.get("weight_scales")
        gran = {"per-channel": "channel", "per-tensor": "tensor"}.get(v.get("granularity"))
        if gran is None:
            raise PlanError(f"layers.{name}.granularity: expected 'per-channel' or 'per-tensor', got {v.get('granularity')!r}")
        if gran == "tensor" and isinstance(scales, list) and scales and all(s == scales[0] for s in scales):
            scales = scales[:1]
        layers[name] = {"bits": v.get("weight_bits"), "granularity": gran, "scales": scales}
    return {
        "format": FORMAT, "version": VERSION, "fingerprint": d.get("fingerprint"),
        "arithmetic": {"add_precision_bits": add_bits}, "groups": d.get("groups"), "tensors": d.get("tensors"),
        "layers": layers, "input_shape": d.get("input_shape"), "provenance": {"config": dict(config), "upgraded_from": 1},
    }


def _validate(plan: QuantPlan) -> None:
    """Value checks of a plan on its own (against a graph, with the ranges that keep every SFC
    representable: :func:`gwq_tvm.plan.validate.check_plan`)."""
    a = plan.arithmetic
    if isinstance(a.add_precision_bits, bool) or not isinstance(a.add_precision_bits, int) or not 0 <= a.add_precision_bits <= 12:
        raise PlanError(f"arithmetic.add_precision_bits must be an integer from 0 to 12; got {a.add_precision_bits!r}")
    for g, m in plan.groups.items():
        if not (1.0 <= m < 2.0):
            raise PlanError(f"groups.{g}: mantissa must be in [1, 2); got {m}")
    for name, t in plan.tensors.items():
        if not 2 <= t.bits <= 8:
            raise PlanError(f"tensors.{name}.bits must be 2-8; got {t.bits}")
        if t.group not in plan.groups:
            raise PlanError(f"tensors.{name}.group: unknown group {t.group!r}")
        if t.dynamic is not None and t.dynamic not in plan.adapters:
            raise PlanError(f"tensors.{name}.dynamic: no adapter {t.dynamic!r} in the plan's adapters")
        if isinstance(t.zero_point, bool) or not isinstance(t.zero_point, int):
            raise PlanError(f"tensors.{name}.zero_point must be an integer; got {t.zero_point!r}")
        if t.zero_point and t.signed:
            raise PlanError(f"tensors.{name}.zero_point: {t.zero_point} on a signed tensor (zero points are for unsigned tensors only)")
        if not 0 <= t.zero_point <= (1 << t.bits) - 1:
            raise PlanError(f"tensors.{name}.zero_point: {t.zero_point} is outside the {t.bits}-bit unsigned range 0..{(1 << t.bits) - 1}")
    used = {t.dynamic for t in plan.tensors.values()}
    for name, a in plan.adapters.items():
        if name not in used:
            raise PlanError(f"adapters.{name}: no tensor's 'dynamic' names this adapter, so it would be ignored "
                            f"(set tensors.<tensor>.dynamic to {name!r}, or remove the entry)")
        _check_adapter(a, f"adapters.{name}")
    for name, w in plan.layers.items():
        p = f"layers.{name}"
        if not 2 <= w.bits <= 8:
            raise PlanError(f"{p}.bits must be 2-8; got {w.bits}")
        if w.granularity not in GRANULARITIES:
            raise PlanError(f"{p}.granularity: expected one of {', '.join(GRANULARITIES)}; got {w.granularity!r}")
        if w.codebook not in CODEBOOKS:
            raise PlanError(f"{p}.codebook: expected one of {', '.join(CODEBOOKS)}; got {w.codebook!r}")
        if w.storage not in STORAGES:
            raise PlanError(f"{p}.storage: expected one of {', '.join(STORAGES)}; got {w.storage!r}")
        if w.codebook == "post" and not 2 <= w.bits <= 5:
            raise PlanError(f"{p}.bits: post weights take 2-5 bits (2**b - 1 levels); got {w.bits}")
        if w.codebook == "post" and w.granularity == "block":
            raise PlanError(f"{p}.granularity: post weights have one clip per output channel (channel or tensor), not blocks")
        if w.storage == "int4" and w.bits > 4:
            raise PlanError(f"{p}.storage: int4 holds at most 4 bits; bits is {w.bits}")
        if not w.scales:
            raise PlanError(f"{p}.scales: empty")
        bad = next((i for i, s in enumerate(w.scales) if not (math.isfinite(s) and s > 0)), None)
        if bad is not None:
            raise PlanError(f"{p}.scales[{bad}]: {w.scales[bad]!r} must be positive and finite")
        expected = {"tensor": 1, "channel": None}.get(w.granularity)
        if w.granularity == "block":
            if w.block is None or len(w.block) != 2 or min(w.block) < 1:
                raise PlanError(f"{p}.block: expected [n_out, n_in] of positive integers")
            expected = w.block[0] * w.block[1]
        elif w.block is not None:
            raise PlanError(f"{p}.block applies to granularity 'block' only")
        if expected is not None and len(w.scales) != expected:
            raise PlanError(f"{p}.scales: {len(w.scales)} values for granularity {w.granularity} (expected {expected})")
        if w.permutation is not None and w.granularity != "block":
            raise PlanError(f"{p}.permutation applies to granularity 'block' only (it orders channels into blocks)")
        if w.permutation is not None and sorted(w.permutation) != list(range(len(w.permutation))):
            raise PlanError(f"{p}.permutation is not a permutation of 0..{len(w.permutation) - 1}")


def _check_adapter(a: AdapterQuant, p: str) -> None:
    """Shapes and values of one adapter on its own (its width against the tensor: :func:`gwq_tvm.plan.program.adapter_recipe`)."""
    h = len(a.b1)
    if h < 1 or len(a.w1) != h or len(a.w2) != h:
        raise PlanError(f"{p}: w1 has {len(a.w1)} rows, b1 {h} and w2 {len(a.w2)} values (one per hidden unit, at least one)")
    widths = {len(r) for r in a.w1}
    if len(widths) != 1 or 0 in widths:
        raise PlanError(f"{p}.w1: rows of different or zero length {sorted(widths)}")
    for key in ("w1", "b1", "w2", "b2"):
        v = np.asarray(getattr(a, key), dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise PlanError(f"{p}.{key}: values must be finite")
    if not (math.isfinite(a.hidden_scale) and a.hidden_scale > 0):
        raise PlanError(f"{p}.hidden_scale: {a.hidden_scale!r} must be positive and finite")
    if not MIN_SCALE <= a.hidden_scale <= MAX_SCALE:
        raise PlanError(f"{p}.hidden_scale: {a.hidden_scale!r} is outside [{MIN_SCALE:g}, {MAX_SCALE:g}]")
