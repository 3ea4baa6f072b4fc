"""Default (untuned) s_tir schedules of the packed integer kernels.

Run :class:`ScheduleIntegerKernels` after ``LegalizeOps`` + ``FuseOps`` +
``FuseTIR`` on a module rewritten by
:class:`gwq_tvm.schedules.pack_layout.PackInt8Layout`.  Every PrimFunc not yet
scheduled (no ``tirx.is_scheduled`` attribute, e.g. from a tuning database)
gets one of:

* **conv** (a ``gwq_conv2d_nchwc`` block): register tile of ``ow`` x 16/32
  output channels, reductions outside the tile, the 16-lane inner product
  tensorized with the kernel family's intrinsic (``vpdpbusd``, ``sdot``,
  ``usmmla`` on pixel pairs) or,
  without one, its 16 lanes vectorized (NEON multiply-accumulate), the fused
  SFC epilogue computed per tile right after its accumulators, the
  padded/offset input as a parallel stage;
* **depthwise** (``gwq_dwconv2d_nchwc``): 16 channel lanes vectorized, ``ow`` tile unrolled;
* **float conv** (``gwq_fconv2d``, :mod:`.float`): register tile of ``ow`` x L output-channel
  lanes (FMA with a broadcast input), reductions outside the tile, epilogue per tile;
* **generic**: elementwise chains inlined, outer loops parallel, the
  innermost static loop vectorized (reductions keep their lane loop innermost).

Parallel grain: a kernel whose estimated single-core time (:func:`estimated_us`) is below
:data:`PARALLEL_MIN_US` runs serially (no ``parallel`` loop, so no thread-pool launch and barrier).

A kernel whose schedule fails keeps its plain loops (with a warning): never a crash.
"""

from __future__ import annotations

import warnings

import tvm
from tvm import s_tir, tirx
from tvm.sym.pattern import detect_linear_equation

from .amx import TILE_N, tile_rows
from .compute import INT4_TABLE_ATTR, CONV_BLOCK, CONV_INPUT_BLOCK, DW_BLOCK, DW_INPUT_BLOCK, FLOAT_CONV_BLOCK, FLOAT_CONV_INPUT_BLOCK
from .spec import X86_VNNI, KernelSpec

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


def _register_tile(width: int, limit: int, minimum: int, fallback: int) -> int:
    """Largest divisor of the output width up to ``limit`` (up to ``fallback`` when that is below ``minimum``)."""
    best = max(d for d in range(1, limit + 1) if width % d == 0)
    if best < minimum:
        best = max(d for d in range(1, fallback + 1) if width % d == 0)
    return best


#: TVM 0.27's ``LowerTVMBuiltin`` leaves a CPU scratch buffer on the stack only when it has global scope and
#: fewer than ``kMaxStackAlloca`` = 1024 bytes.  A larger one becomes a ``TVMBackendAllocWorkspace`` /
#: ``TVMBackendFreeWorkspace`` pair per iteration of the enclosing parallel loop, and LLVM then stores every
#: accumulator of the register tile to it and loads it back for the epilogue.  An 8-pixel x 2-block VNNI tile
#: (exactly 1024 bytes) made the 16 -> 96 expansion conv of MobileNetV2 1.6x slower than the 7 x 2 tile
#: (benchmarks/results/layer_profile/README.md).  Register tiles are kept below it; ``test_schedules``'
#: ``test_conv_register_tile_stays_on_the_stack`` fails if a kernel's tile is served from the workspace again.
STACK_BYTES = 1024
_ACC_BYTES = 16 * 4
"""One output pixel's accumulators of one 16-lane output block (int32)."""


def _stack_tile_cap(lanes: int = 16) -> int:
    """Most ``pixels x blocks`` of ``lanes`` int32 accumulators that stay below :data:`STACK_BYTES`."""
    return (STACK_BYTES - 1) // (lanes * 4)


def conv_register_tile(width: int, out_blocks: int, spec: KernelSpec) -> tuple[int, int]:
    """``(owi, oci)``: the conv's register tile of ``owi`` output pixels x ``oci`` 16-lane output blocks.

    ``owi`` is the largest divisor of the output width up to ``spec.tile_limit``
    (up to ``spec.tile_fallback`` below ``spec.tile_min``); families with
    ``channel_pairs`` take two output blocks per broadcast activation.  The
    tile holds ``owi * oci * 64`` bytes of accumulators, kept below
    :data:`STACK_BYTES` (15 pixel-blocks): when two blocks of ``owi`` pixels
    would not fit, two blocks of the largest divisor up to 7 are taken if
    they hold at least ``owi`` accumulators, else one block of ``owi``.

    >>> [conv_register_tile(w, 6, X86_VNNI) for w in (112, 56, 32, 7, 13)]
    [(7, 2), (7, 2), (4, 2), (7, 2), (13, 1)]
    """
    cap = _stack_tile_cap()
    owi = _register_tile(width, min(spec.tile_limit, cap), spec.tile_min, min(spec.tile_fallback, cap))
    if not (spec.channel_pairs and out_blocks % 2 == 0):
        return owi, 1
    if 2 * owi <= cap:
        return owi, 2
    half = max(d for d in range(1, cap // 2 + 1) if width % d == 0)
    return (half, 2) if 2 * half >= owi else (owi, 1)


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


#: Kernels estimated to run shorter than this on one core stay single-threaded: TVM's parallel launch and
#: its barrier cost a few microseconds on an idle machine and far more when the other core is busy (the
#: second thread waits for a time slice), which made MobileNetV3-Small 5x slower at 2 threads than at 1
#: (benchmarks/results/layer_profile).
PARALLEL_MIN_US = 25.0

#: Single-core rates behind :func:`estimated_us`, per microsecond (Zen 4, benchmarks/layer_profile.py):
#: packed conv ~50 GMAC/s, depthwise ~8 GMAC/s, float conv ~20 GFLOP/s; other reductions and the
#: kernel's outputs (elementwise chains are inlined into them) ~2 G iterations/s.
_RATE_PER_US = {CONV_BLOCK: 50e3, DW_BLOCK: 8e3, FLOAT_CONV_BLOCK: 20e3}
_OTHER_RATE_PER_US = 2e3


def estimated_us(sch: s_tir.Schedule) -> float:
    """Rough single-core time in microseconds of a (fused, not yet scheduled) kernel, per image.

    ``sum over counted blocks of iterations(block) / rate(block)``; counted are the conv blocks (at
    their rates in :data:`_RATE_PER_US`), other reductions and the output blocks (at
    :data:`_OTHER_RATE_PER_US`; inner elementwise blocks are inlined into those).  A block's
    iterations are the product of its iteration extents, a symbolic batch counting as 1.
    """
    outputs = {_name(sch, b) for b in sch.get_output_blocks(sch.get_sblock("root"))}
    total = 0.0
    for block in _blocks(sch):
        node = sch.get(block)
        rate = _RATE_PER_US.get(node.name_hint)
        if rate is None and not (node.name_hint in outputs or _is_reduction(sch, block)):
            continue
        n = 1
        for iv in node.iter_vars:
            ext = iv.dom.extent
            n *= int(ext) if isinstance(ext, tirx.IntImm) else 1
        total += n / (rate or _OTHER_RATE_PER_US)
    return total


def _parallel(sch, loop, parallel: bool) -> None:
    """Mark ``loop`` parallel when the kernel is above the grain (``parallel``)."""
    if parallel:
        sch.parallel(loop)


def _parallel_stage(sch, block, parallel: bool = True) -> None:
    """A root-level injective stage: outer loops fused and parallel, static innermost loop vectorized."""
    loops = sch.get_loops(block)
    if len(loops) > 1 and _extent(sch, loops[-1]) is not None and _extent(sch, loops[-1]) <= 64:
        sch.vectorize(loops[-1])
        loops = loops[:-1]
    if loops:
        _parallel(sch, sch.fuse(*loops[: max(1, min(3, len(loops)))]), parallel)


def _epilogue_at(sch, anchor_loop, parallel: bool = True) -> None:
    """Move the (single, inlined) output epilogue under ``anchor_loop`` and vectorize its lanes."""
    for block in sch.get_output_blocks(sch.get_sblock("root")):
        if _name(sch, block) in (CONV_BLOCK, DW_BLOCK, FLOAT_CONV_BLOCK):
            continue
        try:
            sch.reverse_compute_at(block, anchor_loop)
            lanes = sch.get_loops(block)[-1]
            if _extent(sch, lanes) in (4, 8, 12, 16, TILE_N):
                sch.vectorize(lanes)
        except _ERRORS:
            _parallel_stage(sch, block, parallel)


def _input_stride(sch, block) -> int | None:
    """The conv's horizontal stride: the coefficient of the output column in its input read (``None`` if not static)."""
    stmt = sch.get(block)
    x = stmt.iter_vars[3].var
    for region in stmt.reads:
        if len(region.region) == 5:  # the (padded) input; the weight is 7-d
            coeff = detect_linear_equation(region.region[3].min, [x])
            if len(coeff) == 2 and isinstance(coeff[0], tirx.IntImm):
                return int(coeff[0])
    return None


def _even_tile(width: int, limit: int) -> int | None:
    """Largest even divisor of the output width up to ``limit`` (``None``: none, e.g. odd widths)."""
    return max((d for d in range(2, limit + 1, 2) if width % d == 0), default=None)


def _conv_spec(sch: s_tir.Schedule, block, spec: KernelSpec) -> KernelSpec:
    """The spec the conv ``block`` was packed for: ``spec.narrow`` when the layout pass gave it the narrow
    step's weight (int8, where ``spec`` widens to ``spec.operand_dtype``; :meth:`KernelSpec.for_weight`) or
    packed int4 codes that only the narrow step decodes."""
    if spec.narrow is None:
        return spec
    if sch.get(block).annotations.get(INT4_TABLE_ATTR) is not None:
        return spec if spec.int4_intrinsic is not None else spec.narrow
    weight = next(r.source for r in sch.get(block).reads if len(r.region) == 7)
    return spec.narrow if str(weight.dtype) == spec.narrow.weight_dtype != spec.weight_dtype else spec


def schedule_conv2d_nchwc(sch: s_tir.Schedule, spec: KernelSpec = X86_VNNI, parallel: bool = True) -> None:
    """Schedule a (fused) ``gwq_conv2d_nchwc`` kernel of family ``spec`` (tensorized, or vector lanes).

    With a two-pixel step (``spec.pair_intrinsic``, i8mm) and an output width
    that has an even register tile, the tile's pixels are taken in pairs and
    each pair's ``[2] x [16] x [k]`` is tensorized; otherwise one pixel's
    ``[16] x [k]`` is.
    """
    _inline_elementwise(sch, keep={CONV_BLOCK, CONV_INPUT_BLOCK})
    block = sch.get_sblock(CONV_BLOCK)
    spec = _conv_spec(sch, block, spec)
    intrin = spec.intrinsic() if spec.intrinsic is not None else None
    table = sch.get(block).annotations.get(INT4_TABLE_ATTR)
    if table is not None:  # packed int4 (pack_layout does so only for families with an int4 step)
        intrin = spec.int4_intrinsic(tuple(int(t) for t in str(table).split(",")))
    stride = _input_stride(sch, block)
    b, o, y, x, oi, rc, ry, rx, rb, r4 = sch.get_loops(block)
    if spec.tile_intrinsic is not None and _extent(sch, oi) == TILE_N:  # packed for matrix tiles (pack_layout)
        _schedule_conv2d_tiles(sch, spec, block)
        return
    width = _extent(sch, x)
    owi, oci = conv_register_tile(width, _extent(sch, o), spec)
    pair = None
    if spec.pair_intrinsic is not None and stride is not None and _even_tile(width, spec.tile_limit) is not None:
        owi, oci, pair = _even_tile(width, spec.tile_limit), 1, spec.pair_intrinsic(stride)
    xo, xi = sch.split(x, [None, owi])
    oo, on = sch.split(o, [None, oci])
    if pair is not None:  # the intrinsic consumes [2 pixels] x [16 lanes] x [k]
        xi, xp = sch.split(xi, [None, 2])
        sch.reorder(b, oo, y, xo, rc, ry, rx, rb, xi, on, xp, oi, r4)
    elif intrin is not None:  # the intrinsic consumes [16 lanes] x [k]
        sch.reorder(b, oo, y, xo, rc, ry, rx, rb, xi, on, oi, r4)
    else:  # k == 1: lanes innermost, one broadcast activation per lane vector
        sch.reorder(b, oo, y, xo, rc, ry, rx, rb, r4, xi, on, oi)
    outer = sch.fuse(b, oo, y)
    _parallel(sch, outer, parallel)
    src = _find(sch, CONV_INPUT_BLOCK)
    if src is not None:
        _parallel_stage(sch, src, parallel)
    _epilogue_at(sch, xo, parallel)
    if intrin is None:  # before decompose_reduction: vectorize needs the block's init to see a reduction
        sch.vectorize(oi)
    init = sch.decompose_reduction(block, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    if pair is not None:
        sch.tensorize(xp, pair)
    elif intrin is not None:
        sch.tensorize(oi, intrin)
    sch.unroll(xi)
    sch.unroll(on)


def _schedule_conv2d_tiles(sch: s_tir.Schedule, spec: KernelSpec, block) -> None:
    """A conv packed for matrix tiles (AMX): ``M`` output pixels x 64 output channels x 64 input channels per step.

    Loops ``(b, o, y) parallel, x/M, rc, ry, rx, [M, 64, 16, 4]``, the bracket
    tensorized with ``spec.tile_intrinsic(M)`` (``M`` = largest divisor of
    the output width up to 16); the accumulators are zeroed per tile and the
    fused epilogue runs per tile, after the reduction.
    """
    b, o, y, x, oi, rc, ry, rx, rb, r4 = sch.get_loops(block)
    rows = tile_rows(_extent(sch, x))
    intrin = spec.tile_intrinsic(rows)
    xo, xi = sch.split(x, [None, rows])
    sch.reorder(b, o, y, xo, rc, ry, rx, xi, oi, rb, r4)
    sch.parallel(sch.fuse(b, o, y))
    src = _find(sch, CONV_INPUT_BLOCK)
    if src is not None:
        _parallel_stage(sch, src)
    _epilogue_at(sch, xo)
    init = sch.decompose_reduction(block, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(xi if rows > 1 else oi, intrin)  # one row: the unit pixel loop stays outside (see amx._desc)


def _row_tiles(sch, rows, x, owi, reduce, lanes, input_block: str, parallel: bool = True):
    """Tile the output width by ``owi`` under parallel ``rows``: ``rows, x/owi, reduce..., owi, lanes``.

    The padded-input stage ``input_block`` (if any) becomes a parallel stage and
    the output epilogue moves under the tile; returns the ``owi`` loop.
    """
    xo, xi = sch.split(x, [None, owi])
    sch.reorder(*rows, xo, *reduce, xi, lanes)
    _parallel(sch, sch.fuse(*rows), parallel)
    src = _find(sch, input_block)
    if src is not None:
        _parallel_stage(sch, src, parallel)
    _epilogue_at(sch, xo, parallel)
    return xi


#: Float conv register tile: output pixels x L lanes, L = two vector registers, so 6 pixels hold
#: 12 accumulator registers of the 16 ymm (AVX2) and leave room for the weights and the broadcast.
#: A width with no divisor from 2 to 6 (7: the last ResNet stage) takes a 7-pixel tile (14 registers);
#: measured on Zen 3, 256x14x14 convs ran faster with 2-pixel tiles than with 7 (4.7 vs 3.3 GMAC/s).
FLOAT_TILE = dict(limit=6, minimum=2, fallback=7)


def schedule_float_conv(sch: s_tir.Schedule, parallel: bool = True) -> None:
    """Schedule a (fused) ``gwq_fconv2d`` kernel: ``[ow tile] x [L lanes]`` FMA register tile, parallel rows."""
    _inline_elementwise(sch, keep={FLOAT_CONV_BLOCK, FLOAT_CONV_INPUT_BLOCK})
    block = sch.get_sblock(FLOAT_CONV_BLOCK)
    b, o, y, x, lane, rc, ry, rx = sch.get_loops(block)
    owi = _register_tile(_extent(sch, x), FLOAT_TILE["limit"], FLOAT_TILE["minimum"], FLOAT_TILE["fallback"])
    xi = _row_tiles(sch, (b, o, y), x, owi, (rc, ry, rx), lane, FLOAT_CONV_INPUT_BLOCK, parallel)
    sch.vectorize(lane)
    init = sch.decompose_reduction(block, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(xi)


def schedule_depthwise_nchwc(sch: s_tir.Schedule, spec: KernelSpec = X86_VNNI, parallel: bool = True) -> None:
    """Schedule a (fused) ``gwq_dwconv2d_nchwc`` kernel: channel lanes vectorized, a register tile of ``spec``'s size."""
    _inline_elementwise(sch, keep={DW_BLOCK, DW_INPUT_BLOCK})
    block = sch.get_sblock(DW_BLOCK)
    b, c, y, x, ci, ry, rx = sch.get_loops(block)
    cap = _stack_tile_cap(_extent(sch, ci))
    owi = _register_tile(_extent(sch, x), min(spec.tile_limit, cap), spec.tile_min, min(spec.tile_fallback, cap))
    xi = _row_tiles(sch, (b, c, y), x, owi, (ry, rx), ci, DW_INPUT_BLOCK, parallel)
    sch.unroll(xi)
    sch.vectorize(ci)


def schedule_generic(sch: s_tir.Schedule, parallel: bool = True) -> None:
    """Elementwise/pooling/reduction kernels: inline chains, parallel outer loops, vector lanes."""
    _inline_elementwise(sch, keep=set())
    for block in _blocks(sch):
        if not _is_reduction(sch, block):
            _parallel_stage(sch, block, parallel)
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
                _parallel(sch, sch.fuse(*outer[: min(3, len(outer))]), parallel)
            sch.vectorize(lane)
        elif len(spatial) > 1:
            _parallel(sch, sch.fuse(*spatial[: min(2, len(spatial) - 1)]), parallel)


def _lane_loop(sch, spatial):
    """The innermost spatial loop as vector lanes (split to 16/8/4 lanes when longer), or ``None``.

    A short loop (2..16, e.g. the 10 classes of a final dense) is vectorized whole.
    """
    if not spatial:
        return None
    extent = _extent(sch, spatial[-1])
    if extent is not None and 2 <= extent <= 16:
        return spatial[-1]
    lanes = next((v for v in (16, 8, 4) if extent is not None and extent > v and extent % v == 0), None)
    if lanes is None:
        return None
    return sch.split(spatial[-1], [None, lanes])[1]


def apply_default_schedule(sch: s_tir.Schedule, spec: KernelSpec = X86_VNNI, grain_us: float = PARALLEL_MIN_US) -> None:
    """Dispatch ``sch`` (one PrimFunc ``main``) to its kernel's schedule; raises if a primitive fails.

    ``spec`` is the kernel family the module was packed for (it decides how the conv is
    tensorized and the register tiles).  A kernel whose :func:`estimated_us` (per image: a symbolic
    batch counts as 1) is below ``grain_us`` gets no parallel loop; ``grain_us=0`` parallelizes every
    kernel (the float programs, which calibration runs on batches).
    """
    parallel = estimated_us(sch) >= grain_us
    if _find(sch, CONV_BLOCK) is not None:
        schedule_conv2d_nchwc(sch, spec, parallel)
    elif _find(sch, DW_BLOCK) is not None:
        schedule_depthwise_nchwc(sch, spec, parallel)
    elif _find(sch, FLOAT_CONV_BLOCK) is not None:
        schedule_float_conv(sch, parallel)
    else:
        schedule_generic(sch, parallel)


def schedule_primfunc(func: tirx.PrimFunc, spec: KernelSpec = X86_VNNI,
                      grain_us: float = PARALLEL_MIN_US) -> tirx.PrimFunc | None:
    """The default schedule of one PrimFunc (``None``, with a warning, when it could not be scheduled)."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        apply_default_schedule(sch, spec, grain_us)
    except _ERRORS as err:
        warnings.warn(f"default schedule failed, kernel left unscheduled: {str(err).splitlines()[-1]}", stacklevel=2)
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="ScheduleIntegerKernels")
class ScheduleIntegerKernels:
    """Apply the default schedules to every not-yet-scheduled PrimFunc of the module.

    Run after ``FuseTIR`` (and after ``MetaScheduleApplyDatabase`` when a
    tuning database is used: tuned kernels are left alone).

    Parameters
    ----------
    spec : KernelSpec
        The kernel family the module was packed for (default x86 VNNI).
    grain_us : float
        Kernels estimated below this many microseconds per image stay single-threaded
        (:data:`PARALLEL_MIN_US`; 0 parallelizes every kernel).
    """

    def __init__(self, spec: KernelSpec = X86_VNNI, grain_us: float = PARALLEL_MIN_US):
        self.spec = spec
        self.grain_us = grain_us

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
                continue
            scheduled = schedule_primfunc(func, self.spec, self.grain_us)
            if scheduled is not None:
                updates[gv] = scheduled
        if not updates:
            return mod
        mod = mod.clone()  # a pass must not mutate its input
        for gv, func in updates.items():
            mod.update_func(gv, func)
        return mod
