"""Fast kernels: packed int8 layouts, default s_tir schedules, MetaSchedule tuning (x86 AMX/VNNI/AVX-VNNI/AVX2, aarch64 i8mm/sdot/NEON), scheduled float.

* :mod:`.spec` - the kernel families and :func:`kernel_spec`, the one place a target picks its kernels.
* :mod:`.amx` - the x86 AMX ``tdpbusd`` tile intrinsic (TVM 0.27 has none), the ``arch_prctl`` tile-data request, AMX detection.
* :mod:`.vnni` - the TVM 0.27 ``dot_16x4_vnni`` intrinsic fix, its 256-bit (AVX-VNNI) twin, VNNI/AVX-VNNI detection.
* :mod:`.avx2` - the x86 16x2 ``vpmaddwd`` intrinsic (int16-widened operands, exact), AVX2 detection.
* :mod:`.arm` - the aarch64 16x4 ``sdot`` and 16x8 / 2x16x8 ``usmmla`` (i8mm) intrinsics, i8mm/dotprod/NEON detection.
* :mod:`.layout` - pure numpy: packed layouts and compile-time weight packing.
* :mod:`.compute` - TE definitions of the packed kernels.
* :mod:`.default` - the default (untuned) schedules, :class:`ScheduleIntegerKernels`.
* :mod:`.build` - :func:`compile_integer`, what :func:`gwq_tvm.build` calls.
* :mod:`.float` - :func:`compile_float`, the scheduled float32/float64 build of gwq-tvm's own analyses.
* :mod:`.tune` - MetaSchedule tuning and its database (import it explicitly; it loads MetaSchedule).
* :mod:`.pack_layout` - :class:`PackInt8Layout`, the Relax pass that puts a realized program's convs in the packed layout
  (re-exported as ``gwq_tvm.passes.PackInt8Layout`` and ``gwq_tvm.PackInt8Layout``).
"""

from .build import compile_integer, compile_packed, packed_fused_module
from .default import ScheduleIntegerKernels, schedule_primfunc
from .pack_layout import PackInt8Layout
from .spec import AARCH64_I8MM, AARCH64_NEON, AARCH64_SDOT, X86_AMX, X86_AVXVNNI, X86_VNNI, KernelSpec, kernel_spec
from .vnni import STOCK_VNNI_INTRIN, VNNI_INTRIN, fix_stock_vnni_intrinsic, has_vnni, register_vnni_intrinsic

__all__ = [
    "AARCH64_I8MM", "AARCH64_NEON", "AARCH64_SDOT", "KernelSpec", "PackInt8Layout", "STOCK_VNNI_INTRIN", "ScheduleIntegerKernels", "VNNI_INTRIN",
    "X86_AMX", "X86_AVXVNNI", "X86_VNNI", "compile_integer", "compile_packed", "fix_stock_vnni_intrinsic", "has_vnni", "kernel_spec",
    "packed_fused_module", "register_vnni_intrinsic", "schedule_primfunc",
]
