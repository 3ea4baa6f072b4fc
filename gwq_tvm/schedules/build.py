"""Compile a realized integer program with the fast kernels (or the plain path where they do not apply)."""

from __future__ import annotations

import tvm
from tvm import relax

from .default import ScheduleIntegerKernels
from .vnni import fix_stock_vnni_intrinsic, has_vnni, register_vnni_intrinsic


def lowering_passes(target: tvm.target.Target) -> list:
    """Relax lowering after scheduling: everything of the CPU pipeline except legalize/fuse (already done)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)


def fuse_passes() -> list:
    """Legalize to TIR and fuse each conv with its SFC epilogue (the CPU pipeline's legalize stage)."""
    return [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def packed_fused_module(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Realized module -> packed layout -> legalized and fused TIR kernels (not yet scheduled)."""
    from ..passes.pack_layout import PackInt8Layout

    with target:
        return tvm.transform.Sequential([PackInt8Layout(), *fuse_passes()])(mod)


def kernel_module(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The fused TIR kernels :func:`compile_integer` schedules for ``target`` (and tuning extracts tasks from)."""
    if has_vnni(target):
        return packed_fused_module(mod, target)
    with target:
        return tvm.transform.Sequential(fuse_passes())(mod)


def compile_integer(mod: tvm.IRModule, target: tvm.target.Target, database=None) -> relax.VMExecutable:
    """Compile a realized integer program; fast packed VNNI kernels when ``target`` has them.

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
        On targets without AVX-512 VNNI (generic x86, aarch64) and without a
        database this is plain ``tvm.compile(mod, target)``.
    """
    vnni = has_vnni(target)
    if not vnni and database is None:
        return tvm.compile(mod, target)
    if vnni:
        register_vnni_intrinsic()
        if database is not None:
            fix_stock_vnni_intrinsic()  # tuned traces tensorize with the stock name
    fused = kernel_module(mod, target)
    with target:
        if database is not None:
            with database:  # the pass reads Database.current()
                fused = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
        if vnni:
            fused = ScheduleIntegerKernels()(fused)
    return tvm.compile(fused, target, relax_pipeline=tvm.transform.Sequential(lowering_passes(target)))
