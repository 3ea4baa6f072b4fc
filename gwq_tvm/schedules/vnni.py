"""The one place that works around TVM 0.27's broken x86 VNNI tensor intrinsic.

Cause
-----
``tvm.s_tir.tensor_intrin.x86`` registers ``dot_16x4_vnni`` with an
implementation that calls ``llvm.x86.avx512.vpdpbusd.512`` on three
``int32x16`` vectors.  The LLVM 22 bundled with the 0.27 wheel declares the
intrinsic as ``<16 x i32> (<16 x i32>, <64 x i8>, <64 x i8>)``, so every
tensorized kernel fails to build (and MetaSchedule silently keeps non-VNNI
candidates).  Here the same description gets an implementation that
reinterprets the activation and weight operands as ``uint8x64`` /
``int8x64``: :func:`register_vnni_intrinsic` registers it under our own name
(for the default schedules), :func:`fix_stock_vnni_intrinsic` also overrides
the stock name (for MetaSchedule and tuning databases).

Semantics of one call (both the description and ``vpdpbusd``)::

    C[i] += sum_k int32(A[k]) * int32(B[i, k])     i < 16, k < 4,
    A: uint8[4], B: int8[16, 4], C: int32[16]

Four u8 x s8 products fit in int32 without saturation, so the result is
exact (``vpdpbusd``, not the saturating ``vpdpbusds``).

256-bit form (the ``x86-avxvnni`` family)
-----------------------------------------
:func:`register_avxvnni_intrinsic` registers the same description with an
implementation of two ``llvm.x86.avx512.vpdpbusd.256`` calls (``int32x8``
accumulators, ``uint8x32`` / ``int8x32`` operands: lanes 0-7, then 8-15).
LLVM encodes it as VEX ``{vex} vpdpbusd ymm`` when the target has AVX-VNNI
but not AVX-512 VNNI (Alder Lake and later client cores, no AVX-512), and as
EVEX ``vpdpbusd ymm`` on AVX-512 VL + VNNI CPUs; the arithmetic is the same.
"""

from __future__ import annotations

import functools

import numpy as np

import tvm
from tvm.script import tirx as T

from .intrin import dot_16x4_desc, dot_16x4_int4_desc

VNNI_INTRIN = "gwq_dot_16x4_vnni"
"""Our name for the fixed 16-lane, 4-deep uint8 x int8 -> int32 intrinsic (default schedules use it)."""

STOCK_VNNI_INTRIN = "dot_16x4_vnni"
"""TVM's name, used by MetaSchedule's x86 rules and by the traces in a tuning database."""


@functools.lru_cache(maxsize=None)
def _dot_16x4_vnni_impl():
    """The implementation, parsed from TVMScript on first use (only the target's family needs it; parsed at
    import, the three families cost every command ~0.8 s before it did anything)."""

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
            a_u8x64 = T.meta_var(T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64"))
            b_i8x64 = T.meta_var(B.vload([0, 0], dtype="int8x64"))
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                a_u8x64,
                b_i8x64,
                dtype="int32x16",
            )

    return impl


AVXVNNI_INTRIN = "gwq_dot_16x4_avxvnni"
"""Our name for the same 16-lane, 4-deep uint8 x int8 -> int32 step as two 256-bit ``vpdpbusd``."""


def _vpdpbusd_ymm(acc, a_u8x32, w_i8x32):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"), acc, a_u8x32, w_i8x32,
                                   dtype="int32x8")


@functools.lru_cache(maxsize=None)
def register_avxvnni_intrinsic() -> str:
    """Register :data:`AVXVNNI_INTRIN` (idempotent, cheap) and return its name."""
    from .avx2 import dot_ymm_impl

    tvm.s_tir.TensorIntrin.register(AVXVNNI_INTRIN, dot_16x4_desc("uint8"), dot_ymm_impl(_vpdpbusd_ymm), override=True)
    return AVXVNNI_INTRIN


AVXVNNI_INT4_INTRIN = "gwq_dot_16x4_int4_avxvnni"
"""Name prefix of the AVX-VNNI family's packed int4 steps (one per code table)."""


@functools.lru_cache(maxsize=None)
def register_avxvnni_int4_intrinsic(table: tuple) -> str:
    """Register the AVX-VNNI family's packed int4 step of code table ``table`` (16 ints; idempotent) and return its
    name: ``vpshufb`` over the table into ``vpdpbusd ymm`` (:func:`gwq_tvm.schedules.avx2.int4_ymm_impl`)."""
    from .avx2 import int4_ymm_impl

    table = tuple(int(t) for t in table)
    name = f"{AVXVNNI_INT4_INTRIN}_{table_key(table)}"
    tvm.s_tir.TensorIntrin.register(name, dot_16x4_int4_desc("uint8", table), int4_ymm_impl(table, _vpdpbusd_ymm),
                                    override=True)
    return name


@functools.lru_cache(maxsize=None)
def register_vnni_intrinsic() -> str:
    """Register the fixed intrinsic under :data:`VNNI_INTRIN` (idempotent) and return that name.

    Cheap: it does not import ``tvm.s_tir.tensor_intrin``, whose import parses
    ~500 TVMScript functions (about 17 s here).
    """
    tvm.s_tir.TensorIntrin.register(VNNI_INTRIN, dot_16x4_desc("uint8"), _dot_16x4_vnni_impl(), override=True)
    return VNNI_INTRIN


@functools.lru_cache(maxsize=None)
def fix_stock_vnni_intrinsic() -> str:
    """Override TVM's own ``dot_16x4_vnni`` with the fixed implementation; return its name.

    Needed wherever TVM code looks the intrinsic up by its stock name:
    MetaSchedule's x86 VNNI schedule rule while tuning, and replaying a
    tuning database whose traces tensorize with it.  It imports
    ``tvm.s_tir.tensor_intrin`` first (slow, once per process) so that ours
    is registered last and wins.
    """
    import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the broken stock version)

    register_vnni_intrinsic()
    tvm.s_tir.TensorIntrin.register(STOCK_VNNI_INTRIN, dot_16x4_desc("uint8"), _dot_16x4_vnni_impl(), override=True)
    return STOCK_VNNI_INTRIN


VNNI_INT4_INTRIN = "gwq_dot_16x4_int4_vnni"
"""Name prefix of the packed int4 steps (one per code table): 32 bytes of codes -> 64 int8 weights in registers
-> ``vpdpbusd``."""

_CONCAT = list(range(64))


def table_key(table) -> str:
    """A name suffix for a 16-entry code table (``-8_-7_..``-free: offset by 128, two hex digits each)."""
    return "".join(f"{int(t) + 128:02x}" for t in table)


def table_of_key(key: str) -> tuple:
    """The code table a :func:`table_key` suffix names (``table_of_key(table_key(t)) == tuple(t)``)."""
    return tuple(b - 128 for b in bytes.fromhex(key))


@functools.lru_cache(maxsize=None)
def _dot_16x4_int4_vnni_impl(table: tuple):
    """The packed int4 step (:func:`gwq_tvm.schedules.intrin.dot_16x4_int4_desc`) in registers.

    One 32-byte load of codes; low nibbles (``& 15``: lanes 0-7) and high
    nibbles (``>> 4``: lanes 8-15) concatenated into 64 indices; ``vpshufb``
    (``llvm.x86.avx512.pshuf.b.512``) looks them up in the 16-entry table, a
    constant vector repeated in the four 128-bit lanes (indices below 16 never
    set bit 7, so no byte is zeroed); the 64 int8 weights feed ``vpdpbusd`` as
    the int8 step's do.
    """
    entries = [tvm.tirx.const(int(t), "int8") for t in table] * 4

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
            a_u8x64 = T.meta_var(T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64"))
            packed = T.meta_var(B.vload([0, 0], dtype="uint8x32"))
            low = T.meta_var(T.bitwise_and(packed, T.broadcast(T.uint8(15), 32)))
            high = T.meta_var(T.shift_right(packed, T.broadcast(T.uint8(4), 32)))
            codes = T.meta_var(T.reinterpret(T.Shuffle([low, high], _CONCAT), dtype="int8x64"))
            weights = T.meta_var(T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pshuf.b.512"), T.Shuffle(entries, _CONCAT), codes,
                dtype="int8x64"))
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                a_u8x64,
                weights,
                dtype="int32x16",
            )

    return impl


def _gf2_matrix(sources) -> int:
    """The ``gf2p8affineqb`` matrix (one qword) whose output bit ``i`` is input bit ``sources[i]`` (``None``: 0).

    ``gf2p8affineqb`` sets output bit ``i`` of each byte to the parity of ``byte & A.byte[7 - i]``.
    """
    return sum((1 << k) << (8 * (7 - i)) for i, k in enumerate(sources) if k is not None)


#: low / high nibble as a code 0..15, and low / high nibble sign-extended to int8 (a linear bit map over GF(2))
_LOW_CODE = _gf2_matrix([0, 1, 2, 3, None, None, None, None])
_HIGH_CODE = _gf2_matrix([4, 5, 6, 7, None, None, None, None])
_LOW_SIGNED = _gf2_matrix([0, 1, 2, 3, 3, 3, 3, 3])
_HIGH_SIGNED = _gf2_matrix([4, 5, 6, 7, 7, 7, 7, 7])


def _qword_bytes(low: int, high: int) -> list:
    """64 int8 constants: qwords 0-3 hold matrix ``low``, qwords 4-7 matrix ``high`` (the two 256-bit halves)."""
    out = []
    for m in (low,) * 4 + (high,) * 4:
        out += [tvm.tirx.const(int(np.int8(np.uint8((m >> (8 * b)) & 255))), "int8") for b in range(8)]
    return out


@functools.lru_cache(maxsize=None)
def _dot_16x4_int4_gfni_impl(table: tuple):
    """The packed int4 step with GFNI: the 32 code bytes loaded into both 256-bit halves, one ``vgf2p8affineqb``
    whose per-qword matrices take the low nibbles in the lower half and the high nibbles in the upper half.

    For the sign extension table (uniform int4) the matrices sign-extend the nibble (bit 3 / bit 7 copied into
    the upper bits: a linear map over GF(2)), so that one instruction gives the 64 int8 weights; for any other
    table they give the codes, looked up by ``vpshufb`` as in :func:`_dot_16x4_int4_vnni_impl`.
    """
    signed = tuple(int(t) for t in table) == tuple(range(8)) + tuple(range(-8, 0))
    matrix = _qword_bytes(*((_LOW_SIGNED, _HIGH_SIGNED) if signed else (_LOW_CODE, _HIGH_CODE)))
    entries = [tvm.tirx.const(int(t), "int8") for t in table] * 4

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
            a_u8x64 = T.meta_var(T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64"))
            packed = T.meta_var(T.reinterpret(B.vload([0, 0], dtype="uint8x32"), dtype="int8x32"))
            decoded = T.meta_var(T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.vgf2p8affineqb.512"), T.Shuffle([packed, packed], _CONCAT),
                T.Shuffle(matrix, _CONCAT), T.int8(0), dtype="int8x64"))
            weights = decoded if signed else T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pshuf.b.512"), T.Shuffle(entries, _CONCAT), decoded,
                dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                a_u8x64,
                weights,
                dtype="int32x16",
            )

    return impl


def register_vnni_int4_intrinsic(table: tuple) -> str:
    """Register the int4 step of code table ``table`` (16 ints; idempotent, cheap) and return its name.

    With GFNI in the current target (``tvm.target.Target.current()``, set while compiling; Ice Lake, Zen 4)
    the nibbles are split by one ``vgf2p8affineqb`` (:func:`_dot_16x4_int4_gfni_impl`), else by mask,
    shift and concatenation (:func:`_dot_16x4_int4_vnni_impl`, Cascade Lake).
    """
    target = tvm.target.Target.current(allow_none=True)
    return register_int4(tuple(int(t) for t in table), target is not None and _has_feature(target, "gfni"))


@functools.lru_cache(maxsize=None)
def register_int4(table: tuple, gfni: bool) -> str:
    """Register the VNNI int4 step of ``table``, with or without GFNI (see :func:`register_vnni_int4_intrinsic`)."""
    name = f"{VNNI_INT4_INTRIN}{'_gfni' if gfni else ''}_{table_key(table)}"
    impl = _dot_16x4_int4_gfni_impl(table) if gfni else _dot_16x4_int4_vnni_impl(table)
    tvm.s_tir.TensorIntrin.register(name, dot_16x4_int4_desc("uint8", table), impl, override=True)
    return name


def has_vnni(target: tvm.target.Target) -> bool:
    """Does ``target`` have AVX-512 VNNI (``vpdpbusd`` on zmm registers)?

    Asks LLVM for the target's CPU features, so ``mcpu``/``mattr`` are both
    honoured; non-LLVM and non-x86 targets answer ``False``.
    """
    return _has_feature(target, "avx512vnni")


def has_avx512(target: tvm.target.Target) -> bool:
    """Does ``target`` have AVX-512F (32 zmm registers of 64 bytes)?"""
    return _has_feature(target, "avx512f")


def has_avxvnni(target: tvm.target.Target) -> bool:
    """Does ``target`` have AVX-VNNI (VEX ``vpdpbusd`` on ymm registers; ``mcpu`` such as alderlake, or ``+avxvnni``)?"""
    return _has_feature(target, "avxvnni")


def _has_feature(target: tvm.target.Target, feature: str) -> bool:
    if target.kind.name != "llvm":
        return False
    try:
        return bool(tvm.target.codegen.target_has_features(feature, target))
    except (RuntimeError, ValueError):  # pragma: no cover - feature query unsupported for this triple
        return False
