"""Default (untuned) s_tir schedules of the packed integer kernels.

Run :class:`ScheduleIntegerKernels` after ``LegalizeOps`` + ``FuseOps`` +
``FuseTIR`` on a module rewritten by
:class:`gwq_tvm.passes.pack_layout.PackInt8Layout`.  Every PrimFunc not yet
scheduled (no ``tirx.is_scheduled`` attribute, e.g. from a tuning database)
gets one of:

* **conv** (a ``gwq_conv2d_nchwc`` block): register tile of ``ow`` x 16/32
  output channels, reductions outside the tile, the 16x4 inner product
  tensorized to ``vpdpbusd``, the fused SFC epilogue computed per tile right
  after its accumulators, the padded/shifted input as a parallel stage;
* **depthwise** (``gwq_dwconv2d_nchwc``): 16 channel lanes vectorized, ``ow`` tile unrolled;
* **generic**: elementwise chains inlined, outer loops parallel, the
  innermost static loop vectorized (reductions keep their lane loop innermost).

A kernel whose schedule fails keeps its plain loops (with a warning): never a crash.
"""

from __future__ import annotations

import warnings

import tvm
from tvm import s_tir, tirx

from .compute import CONV_BLOCK, CONV_INPUT_BLOCK, DW_BLOCK, DW_INPUT_BLOCK
from .vnni import register_vnni_intrinsic

_DATA_PAR, _REDUCE = 0, 2
_ERRORS = (RuntimeError, ValueError, TypeError)
"""What a failed schedule primitive raises (ScheduleError is a RuntimeError)."""


def _blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _name(sch, block) -> str:
    return sch.get(block).name_hint


def _find(sch, prefix: str):
    return next((b for b in _blocks(sch) if _name(sch, b).startswith(prefix)), None)


def _extent(sch, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _is_reduction(sch, block) -> bool:
    return any(int(iv.iter_type) == _REDUCE for iv in sch.get(block).iter_vars)


def _register_tile(width: int, limit: int = 8) -> int:
    """Largest divisor of the output width up to ``limit`` (up to 16 when the small ones are tiny)."""
    best = max(d for d in range(1, limit + 1) if width % d == 0)
    if best < 4:
        best = max(d for d in range(1, 17) if width % d == 0)
    return best


def _inline_elementwise(sch, keep) -> None:
    """Inline every non-reduction block except ``keep`` and the function's output blocks."""
    outputs = {_name(sch, b) for b in sch.get_output_blocks(sch.get_sblock("root"))}
    for block in _blocks(sch):
        name = _name(sch, block)
        if name in keep or name in outputs or _is_reduction(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except _ERRORS:
            pass


def _parallel_stage(sch, block) -> None:
    """A root-level injective stage: outer loops fused and parallel, static innermost loop vectorized."""
    loops = sch.get_loops(block)
    if len(loops) > 1 and _extent(sch, loops[-1]) is not None and _extent(sch, loops[-1]) <= 64:
        sch.vectorize(loops[-1])
        loops = loops[:-1]
    if loops:
        sch.parallel(sch.fuse(*loops[: max(1, min(3, len(loops)))]))


def _epilogue_at(sch, anchor_loop) -> None:
    """Move the (single, inlined) output epilogue under ``anchor_loop`` and vectorize its lanes."""
    for block in sch.get_output_blocks(sch.get_sblock("root")):
        if _name(sch, block) in (CONV_BLOCK, DW_BLOCK):
            continue
        try:
            sch.reverse_compute_at(block, anchor_loop)
            lanes = sch.get_loops(block)[-1]
            if _extent(sch, lanes) in (4, 8, 12, 16):
                sch.vectorize(lanes)
        except _ERRORS:
            _parallel_stage(sch, block)


def schedule_conv2d_nchwc(sch: s_tir.Schedule) -> None:
    """Schedule a (fused) ``gwq_conv2d_nchwc`` kernel with VNNI tensorization."""
    intrin = register_vnni_intrinsic()
    _inline_elementwise(sch, keep={CONV_BLOCK, CONV_INPUT_BLOCK})
    block = sch.get_sblock(CONV_BLOCK)
    b, o, y, x, oi, rc, ry, rx, rb, r4 = sch.get_loops(block)
    owi = _register_tile(_extent(sch, x))
    oci = 2 if _extent(sch, o) % 2 == 0 and owi <= 14 else 1
    xo, xi = sch.split(x, [None, owi])
    oo, on = sch.split(o, [None, oci])
    sch.reorder(b, oo, y, xo, rc, ry, rx, rb, xi, on, oi, r4)
    outer = sch.fuse(b, oo, y)
    sch.parallel(outer)
    src = _find(sch, CONV_INPUT_BLOCK)
    if src is not None:
        _parallel_stage(sch, src)
    _epilogue_at(sch, xo)
    init = sch.decompose_reduction(block, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(oi, intrin)
    sch.unroll(xi)
    sch.unroll(on)


def schedule_depthwise_nchwc(sch: s_tir.Schedule) -> None:
    """Schedule a (fused) ``gwq_dwconv2d_nchwc`` kernel: channel lanes vectorized."""
    _inline_elementwise(sch, keep={DW_BLOCK, DW_INPUT_BLOCK})
    block = sch.get_sblock(DW_BLOCK)
    b, c, y, x, ci, ry, rx = sch.get_loops(block)
    owi = _register_tile(_extent(sch, x))
    xo, xi = sch.split(x, [None, owi])
    sch.reorder(b, c, y, xo, ry, rx, xi, ci)
    sch.parallel(sch.fuse(b, c, y))
    src = _find(sch, DW_INPUT_BLOCK)
    if src is not None:
        _parallel_stage(sch, src)
    _epilogue_at(sch, xo)
    sch.unroll(xi)
    sch.vectorize(ci)


def schedule_generic(sch: s_tir.Schedule) -> None:
    """Elementwise/pooling/reduction kernels: inline chains, parallel outer loops, vector lanes."""
    _inline_elementwise(sch, keep=set())
    for block in _blocks(sch):
        if not _is_reduction(sch, block):
            _parallel_stage(sch, block)
            continue
        loops = sch.get_loops(block)
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        if len(loops) != len(kinds):
            continue
        spatial = [lp for lp, k in zip(loops, kinds) if k == _DATA_PAR]
        reduce = [lp for lp, k in zip(loops, kinds) if k == _REDUCE]
        lane = _lane_loop(sch, spatial)
        if lane is not None:
            reduce_stmts = [sch.get(lp) for lp in reduce]
            outer = [lp for lp in sch.get_loops(block) if not any(sch.get(lp).same_as(r) for r in reduce_stmts)][:-1]
            sch.reorder(*outer, *reduce, lane)
            if outer:
                sch.parallel(sch.fuse(*outer[: min(3, len(outer))]))
            sch.vectorize(lane)
        elif len(spatial) > 1:
            sch.parallel(sch.fuse(*spatial[: min(2, len(spatial) - 1)]))


def _lane_loop(sch, spatial):
    """The innermost spatial loop as vector lanes (split to 16/8/4 lanes when longer), or ``None``."""
    if not spatial:
        return None
    extent = _extent(sch, spatial[-1])
    if extent in (4, 8, 12, 16):
        return spatial[-1]
    lanes = next((v for v in (16, 8, 4) if extent is not None and extent > v and extent % v == 0), None)
    if lanes is None:
        return None
    return sch.split(spatial[-1], [None, lanes])[1]


def apply_default_schedule(sch: s_tir.Schedule) -> None:
    """Dispatch ``sch`` (one PrimFunc ``main``) to its kernel's schedule; raises if a primitive fails."""
    if _find(sch, CONV_BLOCK) is not None:
        schedule_conv2d_nchwc(sch)
    elif _find(sch, DW_BLOCK) is not None:
        schedule_depthwise_nchwc(sch)
    else:
        schedule_generic(sch)


def schedule_primfunc(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The default schedule of one PrimFunc (``None``, with a warning, when it could not be scheduled)."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        apply_default_schedule(sch)
    except _ERRORS as err:
        warnings.warn(f"default schedule failed, kernel left unscheduled: {str(err).splitlines()[-1]}", stacklevel=2)
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="ScheduleIntegerKernels")
class ScheduleIntegerKernels:
    """Apply the default schedules to every not-yet-scheduled PrimFunc of the module.

    Run after ``FuseTIR`` (and after ``MetaScheduleApplyDatabase`` when a
    tuning database is used: tuned kernels are left alone).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
                continue
            scheduled = schedule_primfunc(func)
            if scheduled is not None:
                updates[gv] = scheduled
        if not updates:
            return mod
        mod = mod.clone()  # a pass must not mutate its input
        for gv, func in updates.items():
            mod.update_func(gv, func)
        return mod
