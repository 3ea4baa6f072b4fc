"""Choose a GWQ grouping by its integer program's loss on the calibration images (torch).

The grouping search (:mod:`gwq_tvm.plan.grouping`) ranks groupings by a proxy:
the summed, sensitivity-weighted noise each tensor gains from sharing a
mantissa.  At low activation bits the proxy mis-ranks groupings whose added
errors are close, so with ``QuantConfig.min_shift_share`` the choice among the
search's own candidates (:func:`~gwq_tvm.plan.grouping.sweep_groupings`) is
made by the quantity the proxy stands for: the KL divergence between the float
model's softmax and the exact integer simulation's
(:func:`~gwq_tvm.qat.refine.calibration_loss`), on the unlabelled calibration
images, among the candidates with at least that share of shift SFC elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PlanError
from ..graph import Graph
from ..plan.grouping import Grouping, sweep_groupings
from ..plan import strategies
from ..plan.planner import apply_end_bits, build_plan, error_curves, provenance
from ..plan.program import sfc_edges
from ..plan.quantplan import QuantPlan
from .refine import calibration_loss, teacher_logits

#: share comparisons allow this much rounding
_SHARE_EPS = 1e-9


@dataclass(frozen=True)
class Candidate:
    """One grouping :func:`select_plan` scored.

    Attributes
    ----------
    grouping : Grouping
    loss : float
        Calibration KL of the grouping's (unrefined) integer program.
    """

    grouping: Grouping
    loss: float

    @property
    def shift_share(self) -> float:
        """Fraction of SFC elements that are shifts (the grouping's)."""
        return self.grouping.shift_share


def select_plan(graph: Graph, stats: dict, config, images: np.ndarray, input_shape=None,
                sensitivity: dict | None = None) -> tuple[QuantPlan, list[Candidate]]:
    """The plan of least calibration loss among the groupings with enough shift elements.

    Parameters
    ----------
    graph : Graph
    stats : dict of str to TensorStats
    config : QuantConfig
        Mode ``gwq`` with ``min_shift_share`` set.
    images : numpy.ndarray
        Calibration inputs (float32, the model's input layout).
    input_shape : tuple, optional
        Recorded in the plan.
    sensitivity : dict of str to float, optional
        Output sensitivities weighting the error curves (as in :func:`build_plan`).

    Returns
    -------
    (QuantPlan, list of Candidate)
        The chosen plan (its config keeps ``min_shift_share``) and every scored
        candidate, best first.  Ties in loss go to the higher shift share.

    Raises
    ------
    PlanError
        If no grouping reaches ``min_shift_share`` or ``images`` is empty.
    """
    if config.min_shift_share is None:
        raise PlanError("select_plan needs QuantConfig.min_shift_share")
    if len(images) == 0:
        raise PlanError("select_plan needs calibration images")
    config = apply_end_bits(graph, config)
    curves = error_curves(graph, stats, config, sensitivity=sensitivity)
    groupings = sweep_groupings(curves, sfc_edges(graph))
    chosen = [g for g in groupings if g.shift_share >= config.min_shift_share - _SHARE_EPS]
    if not chosen:
        best = max(g.shift_share for g in groupings)
        raise PlanError(f"no grouping reaches a shift share of {config.min_shift_share:.1%}: the highest is {best:.1%} "
                        "(SFCs with a fixed factor that is not a power of two, like an average pool's, are always multiplies)")
    # the planner itself refuses min_shift_share (it cannot score plans); plan each grouping without it
    plan_config = config.replace(min_shift_share=None)
    teacher = teacher_logits(graph, images)
    scored = []
    for g in chosen:
        plan = build_plan(graph, stats, plan_config, input_shape, sensitivity, grouping=g)
        scored.append((Candidate(g, calibration_loss(graph, plan, images, teacher)), plan))
    scored.sort(key=lambda c: (c[0].loss, -c[0].shift_share))
    return scored[0][1].replace(provenance=provenance(config, strategy="select")), [c for c, _ in scored]


@strategies.register("select")
def _select_strategy(ctx: strategies.PlanContext) -> QuantPlan:
    """The ``select`` strategy: :func:`select_plan`'s chosen plan."""
    return select_plan(ctx.graph, ctx.stats, ctx.config, ctx.images, ctx.input_shape, ctx.sensitivity)[0]
