"""Check a user-supplied QuantPlan against the graph it is applied to, before any IR is touched.

A plan read from JSON may be hand-edited, truncated, or made for another
model (with a forged or copied fingerprint).  :func:`check_plan` finds what
would otherwise surface deep in the realization as a ``KeyError`` or an
overflow, and names the JSON path of the bad entry, e.g.
``layers.conv2d_3.scales: 15 values for 16 channels``.

Only the plan's public API is used (``tensors``, ``layers``, ``groups``,
``scale``, ``input_shape``), so the check holds for any plan version that
keeps it.
"""

from __future__ import annotations

import math

from ..errors import PlanError

#: Largest ``|exponent|`` of a tensor scale ``m * 2**exponent``.
MAX_EXPONENT = 64
#: Range of every real scale (tensor, weight and adapter hidden scales).  It
#: keeps every scale-factor conversion ``s_in * s_w / s_out`` in ``[1e-36, 1e36]``,
#: far inside float32/float64; a ratio of ``2**30`` or more has no Q31
#: multiplier-and-shift form and is refused where the SFC is built
#: (:func:`gwq_tvm.plan.program.plan_sfc`), naming the site.
MIN_SCALE, MAX_SCALE = 1e-12, 1e12


def _scale_ok(s) -> bool:
    return isinstance(s, (int, float)) and math.isfinite(s) and MIN_SCALE <= s <= MAX_SCALE


def check_plan(plan, graph) -> None:
    """Raise :class:`PlanError` unless ``plan`` covers ``graph`` exactly and all its numbers are usable.

    Checks, in this order: every node of the graph has a tensor entry and no
    entry names a node the graph lacks; every weight layer has a layer entry
    (and no other layer has one) with one weight scale per output channel,
    each in ``[MIN_SCALE, MAX_SCALE]``; every tensor's group exists, its
    exponent is within ``±MAX_EXPONENT`` and its scale in ``[MIN_SCALE,
    MAX_SCALE]``; the input shape has the graph input's rank and dimensions.

    Raises
    ------
    PlanError
        Naming the JSON path of the first bad entry and what is wrong with it.
    """
    nodes = graph.nodes
    missing = [n for n in nodes if n not in plan.tensors]
    if missing:
        raise PlanError(f"tensors.{missing[0]}: missing; the model has this tensor"
                        + (f" (and {len(missing) - 1} more are missing)" if len(missing) > 1 else "")
                        + " - is the plan for another model?")
    extra = [t for t in plan.tensors if t not in nodes]
    if extra:
        raise PlanError(f"tensors.{extra[0]}: the model has no such tensor - is the plan for another model?")
    weighted = [n for n, node in nodes.items() if node.weight is not None]
    for name in weighted:
        if name not in plan.layers:
            raise PlanError(f"layers.{name}: missing; the model's layer {name} has weights")
        channels = int(nodes[name].weight.shape[0])
        layer = plan.layers[name]
        scales = layer.scales
        expected, what = _expected_scales(layer, channels)
        if len(scales) != expected:
            raise PlanError(f"layers.{name}.scales: {len(scales)} values for {what}")
        bad = next((i for i, s in enumerate(scales) if not _scale_ok(s)), None)
        if bad is not None:
            raise PlanError(f"layers.{name}.scales[{bad}]: {scales[bad]!r} is outside [{MIN_SCALE:g}, {MAX_SCALE:g}]")
    extra = [n for n in plan.layers if n not in weighted]
    if extra:
        raise PlanError(f"layers.{extra[0]}: the model has no weight layer of that name")
    for name in nodes:
        tq = plan.tensors[name]
        if tq.group not in plan.groups:
            raise PlanError(f"tensors.{name}.group: {tq.group!r} is not defined in groups")
        if not -MAX_EXPONENT <= tq.exponent <= MAX_EXPONENT:
            raise PlanError(f"tensors.{name}.exponent: {tq.exponent} is outside [-{MAX_EXPONENT}, {MAX_EXPONENT}]")
        scale = plan.scale(name)
        if not _scale_ok(scale):
            raise PlanError(f"tensors.{name}: scale {scale:g} (groups.{tq.group} * 2**{tq.exponent}) is outside "
                            f"[{MIN_SCALE:g}, {MAX_SCALE:g}]")
    _check_input_shape(plan.input_shape, tuple(nodes[graph.input].shape))


def _expected_scales(layer, channels: int) -> tuple[int, str]:
    """How many weight scales ``layer``'s granularity stores, and what they are for (v1 and v2 granularity names).

    v1 stores one scale per output channel for both ``per-channel`` and
    ``per-tensor``; v2 stores one for ``tensor``, one per channel for
    ``channel`` and one per block of the ``(n_out, n_in)`` grid for ``block``.
    """
    if layer.granularity == "tensor":
        return 1, "a per-tensor scale"
    if layer.granularity == "block":
        n_out, n_in = (int(b) for b in layer.block)
        return n_out * n_in, f"a {n_out}x{n_in} block grid"
    return channels, f"{channels} channels"


def _check_input_shape(shape, model_shape: tuple) -> None:
    if shape is None:
        return
    shown = list(shape)
    if len(shape) != len(model_shape):
        raise PlanError(f"input_shape: {shown} has rank {len(shape)}; the model input has rank {len(model_shape)}")
    for i, (d, m) in enumerate(zip(shape, model_shape)):
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise PlanError(f"input_shape[{i}]: {d!r} is not a positive integer or null")
        if i > 0 and isinstance(m, int) and m >= 0 and d != m:  # a dynamic dimension is None (v1) or -1 (v2)
            raise PlanError(f"input_shape[{i}]: {d!r}; the model input has {m} there")
