"""Fast integer kernels: packed VNNI layouts, default s_tir schedules, MetaSchedule tuning.

* :mod:`.vnni` - the TVM 0.27 ``dot_16x4_vnni`` intrinsic fix and VNNI detection.
* :mod:`.layout` - pure numpy: packed layouts and compile-time weight packing.
* :mod:`.compute` - TE definitions of the packed kernels.
"""

from .vnni import STOCK_VNNI_INTRIN, VNNI_INTRIN, fix_stock_vnni_intrinsic, has_vnni, register_vnni_intrinsic

__all__ = ["STOCK_VNNI_INTRIN", "VNNI_INTRIN", "fix_stock_vnni_intrinsic", "has_vnni", "register_vnni_intrinsic"]
