"""Post-training refinement of a plan's continuous scale choices on calibration data (torch).

The planner picks every group mantissa, tensor exponent and weight-scale
exponent from per-tensor statistics (the MSE of each tensor alone).  At low
activation bits that proxy does not predict the network output well, so
:func:`refine_plan` tunes those choices against the output itself: with the
weights and biases *frozen* and the group membership *fixed*, it minimises the
KL divergence between the float model's softmax (the teacher) and the
simulated integer program's (:class:`~gwq_tvm.qat.model.QATModel`) on the
unlabelled calibration images, AdaQuant/BRECQ style.

What may change: group mantissas, activation exponents, and the per-channel
weight scales (their power-of-two exponents in ``pot``/``gwq`` plans, the free
scales in ``per-layer`` plans).  What may not: weights, biases, bit-widths,
signedness and which tensors share a group, so every SFC that was a shift
stays a shift.

The loss of every candidate plan is measured on all calibration images with
the exact integer simulation, and the best plan seen (the starting plan
included) is returned: refinement never makes the calibration loss worse.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..graph import Graph
from ..plan import strategies
from ..plan.quantplan import QuantPlan
from .model import QATModel, float_forward

#: Adam learning rate of the scale parameters (mantissas, exponents in log2 units)
REFINE_LR = 0.02
#: calibration images per optimisation step
REFINE_BATCH = 128
#: the calibration loss is measured (and the best plan kept) every this many steps
EVAL_EVERY = 20


def _kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))``, mean over the batch."""
    return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")


@torch.no_grad()
def calibration_loss(graph: Graph, plan: QuantPlan, images: np.ndarray, teacher: np.ndarray | None = None,
                     batch: int = 512) -> float:
    """The loss :func:`refine_plan` minimises: mean KL of the integer program's softmax to the float model's.

    Parameters
    ----------
    graph : Graph
    plan : QuantPlan
    images : numpy.ndarray
        Calibration inputs (float32, the model's input layout).
    teacher : numpy.ndarray, optional
        The float model's logits on ``images`` (computed when omitted).
    """
    model = QATModel(graph, plan).eval()
    return _full_loss(model, images, teacher_logits(graph, images) if teacher is None else teacher, batch)


@torch.no_grad()
def teacher_logits(graph: Graph, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """The float model's logits on ``images`` (torch, the graph's own weights): the refinement target."""
    return np.concatenate([float_forward(graph, torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)])


@torch.no_grad()
def _full_loss(model: QATModel, images: np.ndarray, teacher: np.ndarray, batch: int = 512) -> float:
    total = 0.0
    for i in range(0, len(images), batch):
        logits = model(torch.from_numpy(images[i : i + batch]))
        total += float(_kl(logits, torch.from_numpy(teacher[i : i + batch]))) * len(logits)
    return total / len(images)


def refine_plan(graph: Graph, plan: QuantPlan, images, steps: int, *, lr: float = REFINE_LR, batch: int = REFINE_BATCH,
                seed: int = 0, log=None) -> QuantPlan:
    """Refine ``plan``'s scales on calibration ``images`` for ``steps`` Adam steps (weights frozen).

    Parameters
    ----------
    graph : Graph
        The graph the plan was made for.
    plan : QuantPlan
    images : array_like
        Unlabelled calibration inputs (the model's input layout).
    steps : int
        Optimisation steps; ``0`` returns ``plan`` unchanged.
    lr : float
        Adam learning rate of mantissas, exponents and weight-scale exponents.
    batch : int
        Images per step (drawn in a seeded order).
    seed : int
    log : callable, optional
        Called with one line of text at every loss measurement.

    Returns
    -------
    QuantPlan
        The plan of least calibration loss among those measured (the input plan
        included), with the same groups, members, bit-widths and fingerprint.
    """
    if steps <= 0:
        return plan
    images = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    teacher = teacher_logits(graph, images)
    model = QATModel(graph, plan)
    for p in list(model.weight.values()) + list(model.bias.values()):
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.scale_param_groups(lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.eval()
    best_loss, best_plan = _full_loss(model, images, teacher), plan
    if log:
        log(f"refine: step 0, calibration KL {best_loss:.5f}")
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(images)), 0
    for step in range(1, steps + 1):
        if pos + batch > len(order):
            order, pos = rng.permutation(len(images)), 0
        idx = order[pos : pos + batch]
        pos += batch
        loss = _kl(model(torch.from_numpy(images[idx])), torch.from_numpy(teacher[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        model.normalize_()
        if step % EVAL_EVERY == 0 or step == steps:
            candidate = model.plan()
            full = calibration_loss(graph, candidate, images, teacher)
            if log:
                log(f"refine: step {step}, calibration KL {full:.5f}")
            if full < best_loss:
                best_loss, best_plan = full, candidate
    return best_plan


@strategies.register("refine")
def _refine_strategy(ctx: strategies.PlanContext) -> QuantPlan:
    """The ``refine`` strategy: :func:`refine_plan` of ``ctx.plan`` for ``ctx.config.refine_steps`` steps."""
    return refine_plan(ctx.graph, ctx.plan, ctx.images, ctx.config.refine_steps)
