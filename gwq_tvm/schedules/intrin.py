"""What the 16-lane dot-product intrinsics compute (shared by x86 VNNI, x86 AVX2, aarch64 sdot and i8mm).

All the instructions are described by the same block, differing only in the
operand dtypes and the reduction depth ``k``::

    C[i] += sum_k int32(A[k]) * int32(B[i, k])     i < 16, k < K,
    A: a_dtype[K], B: b_dtype[16, K], C: int32[16]

* VNNI ``vpdpbusd`` and aarch64 ``sdot``: ``K = 4``, 8-bit operands, so one
  packed weight layout (``[16o][4i]``) serves both;
* AVX2 ``vpmaddwd``: ``K = 2``, int16 operands (8-bit values widened);
* aarch64 ``usmmla`` (i8mm) for one output pixel: ``K = 8``.

The i8mm family also has a two-pixel step (:func:`dot_2x16xk_desc`), the
same sum for two output pixels whose inputs are ``stride`` rows apart::

    C[p, i] += sum_k int32(A[p * stride, k]) * int32(B[i, k])     p < 2, i < 16, k < K

The implementations (the instructions) live in :mod:`.vnni`, :mod:`.avx2` and :mod:`.arm`.

Naming an operand inside an implementation (TVM 0.27)
-----------------------------------------------------
In 0.27's TVMScript, ``name = expr`` in a PrimFunc body declares a
one-element ``local`` buffer and stores ``expr`` into it.  ``LowerTVMBuiltin``
keeps only ``global`` buffers on the stack, so each such name became a
``TVMBackendAllocWorkspace``/``Free`` pair per iteration of the kernel's
parallel loop, and the broadcast activation went through memory on every
step.  The implementations name their operands with ``T.meta_var(expr)``
(substituted where used) or, for a value used twice, ``T.Bind(expr)`` (a let
binding); ``test_conv_register_tile_stays_on_the_stack`` fails if a name
allocates again.
"""

from __future__ import annotations

import functools

from tvm.script import tirx as T


@functools.lru_cache(maxsize=None)
def dot_16xk_desc(a_dtype: str, b_dtype: str = "int8", k: int = 4):
    """The TensorIntrin description of ``C[16] += A[k] . B[16, k]`` with ``A`` of ``a_dtype``, ``B`` of ``b_dtype``."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((k,), a_dtype, offset_factor=1),
        B: T.Buffer((16, k), b_dtype, offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:k], B[0:16, 0:k])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for r in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, r])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def dot_16x4_desc(a_dtype: str):
    """The TensorIntrin description of ``C[16] += A[4] . B[16, 4]`` with ``A`` of ``a_dtype`` (uint8 or int8), ``B`` int8."""
    return dot_16xk_desc(a_dtype, "int8", 4)


@functools.lru_cache(maxsize=None)
def dot_2x16xk_desc(a_dtype: str, b_dtype: str, k: int, stride: int):
    """The TensorIntrin description of ``C[p, 16] += A[p * stride, k] . B[16, k]`` for two pixels ``p``.

    ``A`` spans ``stride + 1`` input pixels (rows) of which rows ``0`` and
    ``stride`` are read: the conv's input pixels of two adjacent output pixels
    at horizontal stride ``stride``.
    """

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((stride + 1, k), a_dtype, offset_factor=1),
        B: T.Buffer((16, k), b_dtype, offset_factor=1),
        C: T.Buffer((2, 16), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:16], A[0:stride + 1, 0:k], B[0:16, 0:k])
            T.writes(C[0:2, 0:16])
            for p, i, r in T.grid(2, 16, k):
                with T.sblock("update"):
                    vp, vi, vk = T.axis.remap("SSR", [p, i, r])
                    C[vp, vi] = C[vp, vi] + T.cast(A[vp * stride, vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


@functools.lru_cache(maxsize=None)
def dot_16x4_int4_desc(a_dtype: str, table: tuple):
    """The TensorIntrin description of one packed int4 step with code table ``table`` (16 int8 constants).

    ::

        C[i] += sum_k int32(A[k]) * int32(table[(B[i % 8, k] >> 4 * (i // 8)) & 15])     i < 16, k < 4,
        A: a_dtype[4], B: uint8[8, 4] (two codes per byte), C: int32[16]

    (the decode is :func:`gwq_tvm.schedules.compute.int4_weight`, shared with the conv compute; int64
    iterators, as the legalized Relax kernels have).
    """
    from .compute import int4_weight

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), a_dtype, offset_factor=1),
        B: T.Buffer((8, 4), "uint8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:8, 0:4])
            T.writes(C[0:16])
            for i in T.serial(T.int64(0), T.int64(16)):
                for r in T.serial(T.int64(0), T.int64(4)):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, r])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(
                            int4_weight(B[vi % T.int64(8), vk], vi, table), "int32")

    return desc
