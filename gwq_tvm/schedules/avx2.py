"""The x86 AVX2 tensor intrinsic of the packed conv (``vpmaddwd``) and AVX2 detection.

For x86 CPUs with AVX2 but without AVX-512 VNNI (Haswell to Alder Lake
client cores, Zen 1-3, Atom/Celeron with AVX2).  One call::

    C[i] += A[0] * B[i, 0] + A[1] * B[i, 1]     i < 16,
    A: int16[2], B: int16[16, 2], C: int32[16]

is two ``vpmaddwd ymm`` (each: 8 lanes x 2 int16 products summed into
int32) and two ``vpaddd``.  ``A`` is broadcast as one int32 (its two int16
halves) to all 8 lanes.

Why ``vpmaddwd`` on widened operands, not ``vpmaddubsw``
--------------------------------------------------------
``vpmaddubsw`` multiplies uint8 x int8 and adds pairs into int16 *with
saturation*: ``255 * 127 * 2 = 64770`` does not fit, so 8-bit activations
are not exact (7-bit ones would be).  ``vpmaddwd`` on int16 operands is
exact for every 8-bit value (``|a * w| <= 2**15`` and the pair sum fits
int32) and needs no plan restriction.  Both sequences
spend two vector-multiply instructions per 32 products
(``vpmaddubsw + vpmaddwd`` against two ``vpmaddwd``); measured on one Zen 3
core (``benchmarks/avx2_peak.c``, a shared machine, so the spread is wide)
the saturating sequence ran at 0.9-1.6x the exact one's MAC rate, and our
kernels reach well under either peak (``benchmarks/avx2_bench.py``), so
the exact path is the one built.  The price is memory: weights are stored as
int16 (packed at compile time) and the padded-input stage writes
activations widened to int16.  No offset is needed either: int8 and uint8
both widen exactly.

The narrow-weight step: ``vpmaddubsw`` where it is exact
--------------------------------------------------------
A conv whose int8 weights all lie in ``[-64, 64]`` (a plan at 7 weight bits
or fewer, e.g. ``--weight-bits 7``, the ``reduce_range`` ORT offers for the
same reason, or the 2-4-bit layers of a mixed-precision plan) cannot
saturate: ``|a0 * w0 + a1 * w1| <= 255 * 64 * 2 = 32640 < 2**15``.  Such a
conv takes the VNNI layout (uint8 activations, the +128 offset for int8
ones, int8 weights four deep) and one call::

    C[i] += sum_k int32(A[k]) * int32(B[i, k])     i < 16, k < 4,
    A: uint8[4], B: int8[16, 4] with |B| <= 64, C: int32[16]

is, per 8 lanes, ``vpmaddubsw`` (32 u8 x s8 products into 16 int16 pair
sums, exact by the bound above), ``vpmaddwd`` by ones (the two pairs of a
lane into int32) and ``vpaddd``: 64 products per 6 instructions against
32 per 4, and no widened copies of the input or the weight.  The exactness
rests on the weight bound alone, which the layout pass checks on the
constant weight before choosing this step (:data:`NARROW_WEIGHT_MAX`).

Packed int4 weights take the same step after a decode in registers
(:func:`register_avx2_int4_intrinsic`): 32 bytes of nibble codes, the low
nibbles for lanes 0-7 and the high ones for lanes 8-15, each looked up by
``vpshufb`` in the 16-entry code table (the sign extension table for uniform
int4, the POST levels, whose 4-bit ones lie within +-64).
"""

from __future__ import annotations

import functools

import tvm
from tvm.script import tirx as T

from .intrin import dot_16x4_desc, dot_16x4_int4_desc, dot_16xk_desc

AVX2_INTRIN = "gwq_dot_16x2_avx2"
"""Our name for the 16-lane, 2-deep int16 x int16 -> int32 ``vpmaddwd`` intrinsic."""

OPERAND_DTYPE = "int16"
"""What the AVX2 kernel multiplies: both 8-bit operands widened to int16."""


@functools.lru_cache(maxsize=None)
def _dot_16x2_avx2_impl():
    """The implementation, parsed from TVMScript on first use (only the target's family needs it; parsed at
    import, the three families cost every command ~0.8 s before it did anything)."""

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), "int16", offset_factor=1),
        B: T.Buffer((16, 2), "int16", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:2], B[0:16, 0:2])
            T.writes(C[0:16])
            a_pair = T.meta_var(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"))
            a_i16x16 = T.meta_var(T.reinterpret(T.broadcast(a_pair, 8), dtype="int16x16"))
            for j in T.unroll(0, 2):
                C[T.ramp(j * 8, 1, 8)] = C.vload([j * 8], dtype="int32x8") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                    a_i16x16,
                    B.vload([j * 8, 0], dtype="int16x16"),
                    dtype="int32x8",
                )

    return impl


NARROW_INTRIN = "gwq_dot_16x4_avx2_narrow"
"""Our name for the 16-lane, 4-deep uint8 x int8 -> int32 ``vpmaddubsw`` step, exact for ``|weight| <= 64``."""

NARROW_WEIGHT_MAX = 64
"""Largest ``|weight|`` the ``vpmaddubsw`` step takes: ``255 * 64 * 2 = 32640`` fits int16, ``255 * 65 * 2`` does not."""


def quad_sums(a_u8x32, w_i8x32):
    """8 int32 lanes, lane ``i`` = ``sum_k a[4i + k] * w[4i + k]`` (``k < 4``): ``vpmaddubsw`` (int16 pair sums,
    exact when ``|w| <= 64``), then ``vpmaddwd`` by ones (the two pairs of a lane)."""
    pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a_u8x32, w_i8x32,
                                    dtype="int16x16")
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs,
                                   T.broadcast(T.int16(1), 16), dtype="int32x8")


def dot_ymm_impl(step):
    """A 16-lane, 4-deep uint8 x int8 step (:func:`gwq_tvm.schedules.intrin.dot_16x4_desc`) on 256-bit registers.

    The four activation bytes are broadcast to 8 lanes; lanes 0-7 and 8-15
    each go to ``step(acc: int32x8, a: uint8x32, w: int8x32) -> int32x8``,
    the family's 8-lane dot product: the narrow ``vpmaddubsw`` step here,
    ``vpdpbusd ymm`` for AVX-VNNI (:func:`gwq_tvm.schedules.vnni.register_avxvnni_intrinsic`).
    """

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.meta_var(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"))
            a_u8x32 = T.meta_var(T.reinterpret(T.broadcast(a_i32, 8), dtype="uint8x32"))
            for j in T.unroll(0, 2):
                C[T.ramp(j * 8, 1, 8)] = step(C.vload([j * 8], dtype="int32x8"), a_u8x32,
                                              B.vload([j * 8, 0], dtype="int8x32"))

    return impl


def _narrow_step(acc, a_u8x32, w_i8x32):
    return acc + quad_sums(a_u8x32, w_i8x32)


@functools.lru_cache(maxsize=None)
def register_avx2_narrow_intrinsic() -> str:
    """Register :data:`NARROW_INTRIN` (idempotent, cheap) and return its name."""
    tvm.s_tir.TensorIntrin.register(NARROW_INTRIN, dot_16x4_desc("uint8"), dot_ymm_impl(_narrow_step), override=True)
    return NARROW_INTRIN


INT4_INTRIN = "gwq_dot_16x4_int4_avx2"
"""Name prefix of the packed int4 steps of the narrow kernels (one per code table)."""


def int4_ymm_impl(table: tuple, step):
    """A packed int4 step (:func:`gwq_tvm.schedules.intrin.dot_16x4_int4_desc`) on 256-bit registers.

    One 32-byte load of codes; ``& 15`` gives lanes 0-7's four codes each,
    ``>> 4`` lanes 8-15's; ``vpshufb`` looks each half up in the table (a
    constant repeated in both 128-bit lanes; indices below 16 never set bit 7,
    so no byte is zeroed); each 32 int8 weights then go to
    ``step(acc: int32x8, a: uint8x32, w: int8x32) -> int32x8``, the family's
    8-lane dot product (the narrow ``vpmaddubsw`` step here, ``vpdpbusd ymm``
    for AVX-VNNI, :func:`gwq_tvm.schedules.vnni.register_avxvnni_int4_intrinsic`).
    """
    entries = [tvm.tirx.const(int(t), "int8") for t in table] * 2

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((8, 4), "uint8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:8, 0:4])
            T.writes(C[0:16])
            a_i32 = T.meta_var(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"))
            a_u8x32 = T.meta_var(T.reinterpret(T.broadcast(a_i32, 8), dtype="uint8x32"))
            packed = T.meta_var(B.vload([0, 0], dtype="uint8x32"))
            for j in T.unroll(0, 2):
                codes = T.meta_var(T.reinterpret(T.shift_right(packed, T.broadcast(T.uint8(4 * j), 32))
                                                 & T.broadcast(T.uint8(15), 32), dtype="int8x32"))
                C[T.ramp(j * 8, 1, 8)] = step(
                    C.vload([j * 8], dtype="int32x8"), a_u8x32,
                    T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pshuf.b"),
                                            T.Shuffle(entries, list(range(32))), codes, dtype="int8x32"))

    return impl


@functools.lru_cache(maxsize=None)
def register_avx2_int4_intrinsic(table: tuple) -> str:
    """Register the narrow int4 step of code table ``table`` (16 ints; idempotent, cheap) and return its name."""
    from .vnni import table_key

    table = tuple(int(t) for t in table)
    name = f"{INT4_INTRIN}_{table_key(table)}"
    tvm.s_tir.TensorIntrin.register(name, dot_16x4_int4_desc("uint8", table), int4_ymm_impl(table, _narrow_step),
                                    override=True)
    return name


@functools.lru_cache(maxsize=None)
def register_avx2_intrinsic() -> str:
    """Register :data:`AVX2_INTRIN` (idempotent, cheap) and return its name."""
    tvm.s_tir.TensorIntrin.register(AVX2_INTRIN, dot_16xk_desc(OPERAND_DTYPE, OPERAND_DTYPE, 2), _dot_16x2_avx2_impl(),
                                    override=True)
    return AVX2_INTRIN


def has_avx2(target: tvm.target.Target) -> bool:
    """Does the x86 ``target`` have AVX2 (``mcpu`` or ``mattr``)?  Non-LLVM and non-x86 targets answer ``False``."""
    triple = str(target.attrs.get("mtriple", "") or "")
    if target.kind.name != "llvm" or (triple and not triple.startswith(("x86_64", "i686", "i386"))):
        return False
    try:
        return bool(tvm.target.codegen.target_has_features("avx2", target))
    except (RuntimeError, ValueError):  # pragma: no cover - feature query unsupported for this triple
        return False
