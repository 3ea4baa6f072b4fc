"""What the 16-lane, 4-deep dot-product intrinsics compute (shared by x86 VNNI and aarch64 sdot).

Both instructions are described by the same block, differing only in the
activation dtype::

    C[i] += sum_k int32(A[k]) * int32(B[i, k])     i < 16, k < 4,
    A: a_dtype[4], B: int8[16, 4], C: int32[16]

so one packed weight layout ([16o][4i]) serves both.  The implementations
(the instructions) live in :mod:`.vnni` and :mod:`.arm`.
"""

from __future__ import annotations

import functools

from tvm.script import tirx as T


@functools.lru_cache(maxsize=None)
def dot_16x4_desc(a_dtype: str):
    """The TensorIntrin description of ``C[16] += A[4] . B[16, 4]`` with ``A`` of ``a_dtype`` (uint8 or int8)."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), a_dtype, offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc
