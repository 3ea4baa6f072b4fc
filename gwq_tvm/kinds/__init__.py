"""The node-kind registry: one module per kind (see :mod:`.base` for what a kind declares).

Adding a kind is one new module with a :class:`~.base.Kind` subclass and one
line in :data:`_BUILTIN` below.  The order of :data:`_BUILTIN` is the order
in which matchers of the same Relax op are tried.
"""

from __future__ import annotations

import importlib

from ..errors import GwqError
from .base import Kind

_REGISTRY: dict[str, Kind] = {}
_BY_OP: dict[str, list[Kind]] = {}

#: the built-in kinds, by module (matcher order for a shared op: earlier first)
_BUILTIN = (
    "input", "conv2d", "dense",
    # kernels branch: the lookup tables first (their regions start with ops add, affine and relu also claim)
    "lut", "mul", "prelu", "permute", "slice", "resize", "bilinear",
    "add", "affine", "relu", "maxpool", "avgpool", "global_avgpool", "reshape", "concat",
    # import branch: padding and the average pools with every padding / ceil mode
    "pad",
    # kinds2 branch: transposed and 1-D convolution
    "conv_transpose", "conv1d",
    "float_op",
    # adapter branch: ASQ's per-sample step (no Relax op; called by the requantization of dynamic tensors)
    "adapter",
)


def register(kind: Kind) -> Kind:
    """Add ``kind`` to the registry (its ``name`` must be new)."""
    if not kind.name or kind.name in _REGISTRY:
        raise ValueError(f"node kind {kind.name!r} is empty or already registered")
    _REGISTRY[kind.name] = kind
    for op in kind.ops:
        _BY_OP.setdefault(op, []).append(kind)
    return kind


def get_kind(name: str) -> Kind:
    """The kind registered as ``name``.

    Raises
    ------
    GwqError
        For a name no kind has (a hand-edited graph or plan, or a bug).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GwqError(f"unknown node kind {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def matchers_for(op: str) -> list:
    """The ``match`` methods of the kinds that claim Relax op ``op``, in registration order."""
    return [k.match for k in _BY_OP.get(op, ())]


def kinds() -> dict[str, Kind]:
    """All registered kinds by name."""
    return dict(_REGISTRY)


for _module in _BUILTIN:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Kind", "get_kind", "kinds", "matchers_for", "register"]
