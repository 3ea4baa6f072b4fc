"""Compile a realized integer program with the fast kernels (or the plain path where they do not apply)."""

from __future__ import annotations

import tvm
from tvm import relax

from .amx import request_amx_permission
from .default import ScheduleIntegerKernels
from .pack_layout import PackInt8Layout
from .spec import X86_VNNI, KernelSpec, kernel_spec, register_named_intrinsic
from .vnni import STOCK_VNNI_INTRIN, fix_stock_vnni_intrinsic


def lowering_passes(target: tvm.target.Target) -> list:
    """Relax lowering after scheduling: everything of the CPU pipeline except legalize/fuse (already done)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)


def fuse_passes(fold: bool = True) -> list:
    """Legalize to TIR and fuse each conv with its SFC epilogue (the CPU pipeline's legalize stage).

    ``fold=False`` leaves out ``FoldConstant``: it evaluates every call whose
    arguments are all constants at compile time, so it would turn a POST
    layer's weight lookup ``take(table, codes)`` back into stored int8 weights
    (see :func:`has_weight_lookups`).
    """
    return [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        MarkElementwise(),
        *([relax.transform.FoldConstant()] if fold else []),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


@tvm.transform.module_pass(opt_level=0, name="MarkElementwise")
class MarkElementwise:
    """Give the kernels tagged :data:`.compute.ELEMENTWISE_ATTR` the elementwise fusion pattern.

    ``AnnotateTIROpPattern`` calls a gather by data (the table lookup of a packed lookup activation,
    :func:`.compute.lookup`) opaque, so ``FuseOps`` would run it as a kernel of its own that reads the
    conv's int32 output back from memory; it is elementwise in its tensor operand, so it may fuse into
    the producing conv's epilogue (``FuseOps`` fuses a conv only with elementwise consumers).  Run right
    after ``AnnotateTIROpPattern`` (which re-analyses a pattern of 0, so the tag cannot be the pattern).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from .compute import ELEMENTWISE_ATTR

        marked = {gv: f for gv, f in mod.functions_items()
                  if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and f.attrs.get(ELEMENTWISE_ATTR, False)}
        if not marked:
            return mod
        mod = mod.clone()
        for gv, f in marked.items():
            mod.update_func(gv, f.with_attr("op_pattern", 0))  # kElemWise
        return mod


def has_weight_lookups(mod: tvm.IRModule) -> bool:
    """Does the realized ``main`` compute weights by a table lookup of constant codes (POST layers)?

    Such a module is compiled without ``FoldConstant``, so that the compiled
    program stores the codes and runs the lookup on every call.
    """
    from ..ir import const_value

    return any(isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op) and b.value.op.name == "relax.take"
               and all(const_value(a) is not None for a in b.value.args)
               for blk in mod["main"].body.blocks for b in blk.bindings)


def packed_fused_module(mod: tvm.IRModule, target: tvm.target.Target, spec: KernelSpec | None = None) -> tvm.IRModule:
    """Realized module -> packed layout -> legalized and fused TIR kernels (not yet scheduled).

    ``spec`` defaults to the target's kernel family (:func:`.spec.kernel_spec`),
    and to x86 VNNI for a target without one.
    """
    spec = spec or kernel_spec(target) or X86_VNNI
    with target:
        return tvm.transform.Sequential([PackInt8Layout(spec), *fuse_passes(not has_weight_lookups(mod))])(mod)


def kernel_module(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The fused TIR kernels :func:`compile_integer` schedules for ``target`` (and tuning extracts tasks from).

    Packed for the target's kernel family; plain fused kernels for a target of none.
    """
    spec = kernel_spec(target)
    if spec is not None:
        return packed_fused_module(mod, target, spec)
    with target:
        return tvm.transform.Sequential(fuse_passes(not has_weight_lookups(mod)))(mod)


def compile_integer(mod: tvm.IRModule, target: tvm.target.Target, database=None) -> relax.VMExecutable:
    """Compile a realized integer program with the fast packed kernels of ``target``'s family.

    The family (:func:`gwq_tvm.schedules.spec.kernel_spec`) is x86 AVX-512
    VNNI, x86 AVX-VNNI (``vpdpbusd ymm``), x86 AVX2 (``vpmaddwd``), aarch64 dotprod (``sdot``) or aarch64 NEON; each packs the convs
    for its instruction and gets default schedules (or tuning records).

    Parameters
    ----------
    mod : tvm.IRModule
        A realized (not legalized) module, the output of ``RealizeIntegerProgram``.
    target : tvm.target.Target
    database : tvm.s_tir.meta_schedule.Database, optional
        Tuning records to apply first (see :mod:`gwq_tvm.schedules.tune`); kernels
        without a record get the default schedules.

    Returns
    -------
    relax.VMExecutable
        On targets of no family (generic x86 without VNNI, non-LLVM) this is
        plain ``tvm.compile(mod, target)``, or, with a database, the plain
        fused kernels with its records applied.
    """
    spec = kernel_spec(target)
    if spec is None:
        if database is None and not has_weight_lookups(mod):
            return tvm.compile(mod, target)
        fused = kernel_module(mod, target)
        if database is not None:
            with target, database:  # the pass reads Database.current()
                fused = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
        return tvm.compile(fused, target, relax_pipeline=tvm.transform.Sequential(lowering_passes(target)))
    return compile_packed(mod, target, spec, database=database)


def _needs_stock_intrinsics(database) -> bool:
    """Does a record of ``database`` tensorize with TVM's stock VNNI intrinsic, or one neither registered nor ours?

    (Ours are registered here by name, :func:`.spec.register_named_intrinsic`.)

    Only then is :func:`.vnni.fix_stock_vnni_intrinsic` needed, which imports
    ``tvm.s_tir.tensor_intrin`` (17-24 s here); the records ``gwq-tvm tune``
    writes name ours (:data:`.vnni.VNNI_INTRIN`), registered cheaply.
    """
    for record in database.get_all_tuning_records():
        for inst in record.trace.as_json()[0]:
            if str(inst[0]) == "Tensorize" and len(inst[2]):
                name = str(inst[2][0])
                if name == STOCK_VNNI_INTRIN or (tvm.s_tir.TensorIntrin.get(name, allow_missing=True) is None
                                                 and not register_named_intrinsic(name)):
                    return True
    return False


def compile_packed(mod: tvm.IRModule, target: tvm.target.Target, spec: KernelSpec, database=None) -> relax.VMExecutable:
    """Pack ``mod`` for kernel family ``spec``, apply ``database`` then the default schedules, and compile.

    :func:`compile_integer` calls it with the target's own family; calling it
    directly with another compatible family (e.g. one with the intrinsic
    removed, to run an aarch64 layout on x86) is for tests and experiments.
    """
    if spec.intrinsic is not None:
        spec.intrinsic()
    if spec.tile_intrinsic is not None:  # the module may run in this process: ask for AMX tile data now (quietly, once)
        request_amx_permission()
    if database is not None and _needs_stock_intrinsics(database):
        fix_stock_vnni_intrinsic()  # registers TVM's stock intrinsics (these traces use them), VNNI's fixed
    fused = packed_fused_module(mod, target, spec)
    with target:
        if database is not None:
            with database:  # the pass reads Database.current()
                fused = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
        fused = ScheduleIntegerKernels(spec)(fused)
    return tvm.compile(fused, target, relax_pipeline=tvm.transform.Sequential(lowering_passes(target)))
