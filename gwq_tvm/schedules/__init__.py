"""Fast integer kernels: packed VNNI layouts, default s_tir schedules, MetaSchedule tuning.

* :mod:`.vnni` - the TVM 0.27 ``dot_16x4_vnni`` intrinsic fix and VNNI detection.
* :mod:`.layout` - pure numpy: packed layouts and compile-time weight packing.
* :mod:`.compute` - TE definitions of the packed kernels.
"""

from .vnni import VNNI_INTRIN, has_vnni, register_vnni_intrinsic

__all__ = ["VNNI_INTRIN", "has_vnni", "register_vnni_intrinsic"]
