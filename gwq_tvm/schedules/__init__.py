"""Fast integer kernels: packed VNNI layouts, default s_tir schedules, MetaSchedule tuning.

* :mod:`.vnni` - the TVM 0.27 ``dot_16x4_vnni`` intrinsic fix and VNNI detection.
* :mod:`.layout` - pure numpy: packed layouts and compile-time weight packing.
* :mod:`.compute` - TE definitions of the packed kernels.
* :mod:`.default` - the default (untuned) schedules, :class:`ScheduleIntegerKernels`.
* :mod:`.build` - :func:`compile_integer`, what :func:`gwq_tvm.build` calls.
* :mod:`.tune` - MetaSchedule tuning and its database (import it explicitly; it loads MetaSchedule).

The Relax layout pass itself is :class:`gwq_tvm.passes.pack_layout.PackInt8Layout`.
"""

from .build import compile_integer, packed_fused_module
from .default import ScheduleIntegerKernels, schedule_primfunc
from .vnni import STOCK_VNNI_INTRIN, VNNI_INTRIN, fix_stock_vnni_intrinsic, has_vnni, register_vnni_intrinsic

__all__ = [
    "STOCK_VNNI_INTRIN", "ScheduleIntegerKernels", "VNNI_INTRIN", "compile_integer", "fix_stock_vnni_intrinsic",
    "has_vnni", "packed_fused_module", "register_vnni_intrinsic", "schedule_primfunc",
]
