"""Planning strategies by name: how a plan is searched, and the steps that improve it.

:func:`gwq_tvm.quantize` asks for a strategy by name and never imports the
module that implements it: each strategy module registers its function with
:func:`register` when imported, and :data:`MODULES` says which module holds a
built-in strategy, so that one needing torch (``select``, ``refine``) is
imported only when it is used.

Every strategy is ``fn(ctx: PlanContext) -> QuantPlan``.

=========== ================================ ==========================================
name        module                           what it does
=========== ================================ ==========================================
grouping    :mod:`gwq_tvm.plan.planner`      per-layer / pot / GWQ grouping by error curves
select      :mod:`gwq_tvm.qat.select`        GWQ grouping by calibration KL (``min_shift_share``)
refine      :mod:`gwq_tvm.qat.refine`        post-training refinement of ``ctx.plan`` (``refine_steps``)
subl_search :mod:`gwq_tvm.plan.block_search` PTQ-SL block scales of ``ctx.plan`` on the layer-output error
mixed_prec. :mod:`gwq_tvm.calibration.       per-layer bits by LIMPQ's ILP (or greedy) on proxy, hessian or
            mixed_precision`                 learned importance (``mixed_precision``, ``size_budget``, ...)
=========== ================================ ==========================================
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import QuantConfig
from ..errors import ConfigError

MODULES = {"grouping": "gwq_tvm.plan.planner", "select": "gwq_tvm.qat.select", "refine": "gwq_tvm.qat.refine",
           # branch subl: PTQ-SL block-scale search
           "subl_search": "gwq_tvm.plan.block_search",
           # branch limpq: importance, the bit-width ILP, the plan
           "mixed_precision": "gwq_tvm.calibration.mixed_precision"}
"""The module that registers each built-in strategy."""

#: the install hint for strategies whose module needs an optional dependency
_NEEDS = {"select": "torch", "refine": "torch"}

_REGISTRY: dict[str, Callable] = {}


@dataclass(frozen=True)
class PlanContext:
    """What a strategy may read.

    Attributes
    ----------
    graph : Graph
    stats : dict of str to TensorStats
    config : QuantConfig
    images : numpy.ndarray
        The calibration inputs (float32, the model's layout).
    input_shape : tuple
    sensitivity : dict of str to float, optional
    plan : QuantPlan, optional
        The plan a refining step starts from.
    model : FloatModel, optional
        The float model (for steps that run it, e.g. ``block_search``).
    """

    graph: object
    stats: dict
    config: QuantConfig
    images: np.ndarray
    input_shape: tuple | None = None
    sensitivity: dict | None = None
    plan: object | None = None
    model: object | None = None


def register(name: str):
    """Decorator: register ``fn`` as the strategy ``name``."""

    def wrap(fn):
        _REGISTRY[name] = fn
        return fn

    return wrap


def get(name: str) -> Callable:
    """The strategy ``name`` (importing its module on first use).

    Raises
    ------
    ConfigError
        If ``name`` is unknown or its module's dependency is not installed.
    """
    if name not in _REGISTRY:
        if name not in MODULES:
            raise ConfigError(f"unknown planning strategy {name!r} (known: {', '.join(sorted(MODULES))})")
        try:
            importlib.import_module(MODULES[name])
        except ImportError as err:
            extra = _NEEDS.get(name, "")
            raise ConfigError(f"the {name!r} planning step needs {extra or 'a missing module'} ({err}): "
                              f"pip install 'gwq-tvm[{extra}]'") from None
    return _REGISTRY[name]


def run(name: str, ctx: PlanContext):
    """``get(name)(ctx)``."""
    return get(name)(ctx)
