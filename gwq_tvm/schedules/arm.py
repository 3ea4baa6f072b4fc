"""The aarch64 ``sdot`` and ``usmmla`` (i8mm) tensor intrinsics of the packed conv and aarch64 feature detection.

TVM 0.27 ships ``dot_4x4_i8i8s32_sdot`` (``tvm.s_tir.tensor_intrin.arm_cpu``),
and unlike the x86 VNNI one (:mod:`.vnni`) it builds with the wheel's LLVM 22
(checked: ``llvm.aarch64.neon.sdot.v4i32.v16i8`` takes ``(<4 x i32>,
<16 x i8>, <16 x i8>)``, which is what it passes).  We still register our
own, for two reasons that are not bugs:

* it covers the same ``[16 output channels] x [4-deep reduction]`` step as
  the VNNI intrinsic, so both families share one packed weight layout
  (``OIHW[cb/4]i16o4i``) and one conv compute (:mod:`.compute`);
* registering it does not import ``tvm.s_tir.tensor_intrin`` (17-50 s here).

Semantics of one call (description and implementation)::

    C[i] += sum_k int32(A[k]) * int32(B[i, k])     i < 16, k < 4,
    A: int8[4], B: int8[16, 4], C: int32[16]

implemented as four ``sdot v.4s, v.16b, v.16b``: lane ``i`` of the ``j``-th
adds ``B[4j + i, 0:4] . A[0:4]``, with ``A`` broadcast to 16 bytes.  Four
int8 x int8 products fit in int32, so it is exact.  ``sdot`` is signed x
signed: uint8 activations reach it as ``x - 128`` (see
:func:`gwq_tvm.schedules.layout.offset_compensation`).

i8mm: ``usmmla`` (the ``aarch64-i8mm`` family)
----------------------------------------------
``usmmla v.4s, a.16b, b.16b`` (FEAT_I8MM: Cortex-A710, Neoverse N2/V1,
Graviton3; not Cortex-A78/X1, which LLVM and the TRMs give dotprod only) is
a 2x8 by 8x2 matrix multiply-accumulate::

    c[2p + q] += sum_{k<8} int32(a[8p + k]) * int32(b[8q + k])     p, q < 2,
    a: uint8[2, 8] (two rows), b: int8[2, 8] (two output channels), c: int32[2, 2]

64 products per instruction against ``sdot``'s 16.  The weight is packed
``OIHW[cb/8]i16o8i`` (the shared layout with ``k = 8``), so each 16-byte
vector ``B[2j:2j+2, 0:8]`` is the ``b`` of output channels ``2j, 2j+1``.
Two steps are registered:

* the two-pixel step (:func:`register_usmmla_pair_intrinsic`,
  :func:`gwq_tvm.schedules.intrin.dot_2x16xk_desc`): ``a`` holds the
  8 input bytes of two adjacent output pixels (input rows ``0`` and
  ``stride``), eight ``usmmla`` cover ``[2 pixels] x [16 channels] x [8]``;
  each result ``[p0c0, p0c1, p1c0, p1c1]`` is split back into the
  pixel-major NCHW16c accumulators (two 64-bit halves);
* the one-pixel step (:func:`register_usmmla_intrinsic`, the shared
  ``[16] x [8]`` description) for output widths without an even register
  tile (7, 1, ...): the pixel's 8 bytes fill both rows of ``a`` and the
  duplicate half of each result is dropped (32 useful products per
  instruction, still twice ``sdot``).

Why ``usmmla`` (uint8 x int8) and not ``smmla`` (int8 x int8): most
activations are uint8 (everything after a ReLU), which ``usmmla`` takes as
they are, like x86 VNNI's ``vpdpbusd``; the int8 ones (network input,
residual sums without ReLU) are read as ``x + 128`` and compensated
(:func:`gwq_tvm.schedules.layout.offset_compensation`).  With ``smmla`` the
common uint8 case would pay the ``x - 128`` input stage instead.  Eight
products of at most ``255 * 128`` fit in int32, so each step is exact.
"""

from __future__ import annotations

import functools

import tvm
from tvm.script import tirx as T

from .intrin import dot_2x16xk_desc, dot_16x4_desc, dot_16x4_int4_desc, dot_16xk_desc

SDOT_INTRIN = "gwq_dot_16x4_sdot"
"""Our name for the 16-lane, 4-deep int8 x int8 -> int32 ``sdot`` intrinsic."""


@functools.lru_cache(maxsize=None)
def _dot_16x4_sdot_impl():
    """The implementation, parsed from TVMScript on first use (only the target's family needs it; parsed at
    import, the three families cost every command ~0.8 s before it did anything)."""

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.meta_var(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"))
            a_i8x16 = T.meta_var(T.reinterpret(T.broadcast(a_i32, 4), dtype="int8x16"))
            for j in T.unroll(0, 4):
                C[T.ramp(j * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                    C.vload([j * 4], dtype="int32x4"),
                    a_i8x16,
                    B.vload([j * 4, 0], dtype="int8x16"),
                    dtype="int32x4",
                )

    return impl


@functools.lru_cache(maxsize=None)
def register_sdot_intrinsic() -> str:
    """Register :data:`SDOT_INTRIN` (idempotent, cheap) and return its name."""
    tvm.s_tir.TensorIntrin.register(SDOT_INTRIN, dot_16x4_desc("int8"), _dot_16x4_sdot_impl(), override=True)
    return SDOT_INTRIN


SDOT_INT4_INTRIN = "gwq_dot_16x4_int4_sdot"
"""Name prefix of the packed int4 ``sdot`` steps (one per code table)."""


@functools.lru_cache(maxsize=None)
def _dot_16x4_int4_sdot_impl(table: tuple):
    """The packed int4 step (:func:`gwq_tvm.schedules.intrin.dot_16x4_int4_desc`, int8 activations) in registers.

    Two 16-byte loads of codes (rows 0-3 and 4-7 of ``B``); their low nibbles
    (``& 15``) are the weights of lanes 0-3 / 4-7, their high nibbles
    (``>> 4``) those of lanes 8-11 / 12-15; each 16-code vector becomes 16 int8
    weights by ``tbl`` (``llvm.aarch64.neon.tbl1``) over the 16-entry table
    held in one q register, and feeds one ``sdot`` as the int8 step's do.
    """
    entries = [tvm.tirx.const(int(t), "int8") for t in table]

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((8, 4), "uint8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:8, 0:4])
            T.writes(C[0:16])
            a_i32 = T.meta_var(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"))
            a_i8x16 = T.meta_var(T.reinterpret(T.broadcast(a_i32, 4), dtype="int8x16"))
            tab = T.meta_var(T.Shuffle(entries, list(range(16))))
            for h, j in T.grid(2, 2):  # nibble h of rows 4j..4j+3: lanes 8h + 4j .. 8h + 4j + 3
                codes = T.meta_var(T.bitwise_and(T.shift_right(B.vload([j * 4, 0], dtype="uint8x16"),
                                                    T.broadcast(T.Cast("uint8", h * 4), 16)),
                                      T.broadcast(T.uint8(15), 16)))
                C[T.ramp(h * 8 + j * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                    C.vload([h * 8 + j * 4], dtype="int32x4"),
                    a_i8x16,
                    T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.tbl1.v16i8"), tab,
                                            T.reinterpret(codes, dtype="int8x16"), dtype="int8x16"),
                    dtype="int32x4",
                )

    return impl


@functools.lru_cache(maxsize=None)
def register_sdot_int4_intrinsic(table: tuple) -> str:
    """Register the int4 ``sdot`` step of code table ``table`` (16 ints; idempotent, cheap) and return its name."""
    from .vnni import table_key

    name = f"{SDOT_INT4_INTRIN}_{table_key(table)}"
    tvm.s_tir.TensorIntrin.register(name, dot_16x4_int4_desc("int8", table), _dot_16x4_int4_sdot_impl(table),
                                    override=True)
    return name


USMMLA_INTRIN = "gwq_dot_16x8_usmmla"
"""Our name for the one-pixel, 16-lane, 8-deep uint8 x int8 -> int32 ``usmmla`` step."""

_USMMLA = "llvm.aarch64.neon.usmmla.v4i32.v16i8"

MMLA_STRIDES = (1, 2)
"""Conv strides whose two-pixel step :func:`register_usmmla_intrinsic` registers up front (others on demand)."""


@functools.lru_cache(maxsize=None)
def _dot_16x8_usmmla_impl():
    """One pixel: its 8 input bytes in both rows of ``a``; lanes 0-1 of each result are kept."""

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((8,), "uint8", offset_factor=1),
        B: T.Buffer((16, 8), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:8], B[0:16, 0:8])
            T.writes(C[0:16])
            a_u8x16 = T.meta_var(T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x8"), dtype="int64"), 2),
                                    dtype="uint8x16"))
            for j in T.unroll(0, 8):
                c = T.meta_var(T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(_USMMLA),
                    T.reinterpret(T.broadcast(T.reinterpret(C.vload([j * 2], dtype="int32x2"), dtype="int64"), 2),
                                  dtype="int32x4"),
                    a_u8x16,
                    B.vload([j * 2, 0], dtype="int8x16"),
                    dtype="int32x4",
                ))
                C[T.ramp(j * 2, 1, 2)] = T.Shuffle([c], [0, 1])

    return impl


@functools.lru_cache(maxsize=None)
def _dot_2x16x8_usmmla_impl(stride: int):
    """Two pixels ``stride`` input rows apart: rows 0 and ``stride`` of ``A`` are ``a``'s two rows."""

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (stride + 1, 8), "uint8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(b, (16, 8), "int8", offset_factor=1)
        C = T.match_buffer(c, (2, 16), "int32", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:2, 0:16], A[0:stride + 1, 0:8], B[0:16, 0:8])
            T.writes(C[0:2, 0:16])
            rows = T.meta_var(T.reinterpret(T.Shuffle([T.reinterpret(A.vload([0, 0], "uint8x8"), dtype="int64"),
                                             T.reinterpret(A.vload([stride, 0], "uint8x8"), dtype="int64")], [0, 1]),
                                 dtype="uint8x16"))
            for j in T.unroll(0, 8):
                acc = T.Bind(T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(_USMMLA),
                    T.Shuffle([C.vload([0, j * 2], dtype="int32x2"), C.vload([1, j * 2], dtype="int32x2")], [0, 1, 2, 3]),
                    rows,
                    B.vload([j * 2, 0], dtype="int8x16"),
                    dtype="int32x4",
                ))
                C[0, T.ramp(j * 2, 1, 2)] = T.Shuffle([acc], [0, 1])
                C[1, T.ramp(j * 2, 1, 2)] = T.Shuffle([acc], [2, 3])

    return impl


@functools.lru_cache(maxsize=None)
def register_usmmla_pair_intrinsic(stride: int) -> str:
    """Register the two-pixel ``usmmla`` step for conv stride ``stride`` (idempotent) and return its name."""
    name = f"gwq_dot_2x16x8_usmmla_s{stride}"
    tvm.s_tir.TensorIntrin.register(name, dot_2x16xk_desc("uint8", "int8", 8, stride), _dot_2x16x8_usmmla_impl(stride),
                                    override=True)
    return name


@functools.lru_cache(maxsize=None)
def register_usmmla_intrinsic() -> str:
    """Register :data:`USMMLA_INTRIN` and the two-pixel steps of :data:`MMLA_STRIDES` (idempotent); return the former."""
    tvm.s_tir.TensorIntrin.register(USMMLA_INTRIN, dot_16xk_desc("uint8", "int8", 8), _dot_16x8_usmmla_impl(),
                                    override=True)
    for stride in MMLA_STRIDES:
        register_usmmla_pair_intrinsic(stride)
    return USMMLA_INTRIN


def _has_feature(target: tvm.target.Target, feature: str) -> bool:
    if target.kind.name != "llvm" or not is_aarch64(target):
        return False
    try:
        return bool(tvm.target.codegen.target_has_features(feature, target))
    except (RuntimeError, ValueError):  # pragma: no cover - feature query unsupported for this triple
        return False


def is_aarch64(target: tvm.target.Target) -> bool:
    """Is ``target`` an LLVM aarch64 target (``mtriple`` aarch64*/arm64*)?"""
    triple = str(target.attrs.get("mtriple", "") or "")
    return target.kind.name == "llvm" and triple.startswith(("aarch64", "arm64"))


def has_dotprod(target: tvm.target.Target) -> bool:
    """Does the aarch64 ``target`` have the dot-product extension (``sdot``/``udot``)?

    Asks LLVM, so ``mcpu`` (e.g. cortex-a76) and ``mattr`` (``+dotprod``) both count.
    """
    return _has_feature(target, "dotprod")


def has_i8mm(target: tvm.target.Target) -> bool:
    """Does the aarch64 ``target`` have the int8 matrix multiply extension (``smmla``/``usmmla``; ``+i8mm`` or ``mcpu``)?"""
    return _has_feature(target, "i8mm")


def has_neon(target: tvm.target.Target) -> bool:
    """Does the aarch64 ``target`` have Advanced SIMD (NEON)?"""
    return _has_feature(target, "neon")
