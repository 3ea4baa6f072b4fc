"""The aarch64 ``sdot`` tensor intrinsic of the packed conv and aarch64 feature detection.

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
"""

from __future__ import annotations

import functools

import tvm
from tvm.script import tirx as T

from .intrin import dot_16x4_desc

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
            a_i32 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
            a_i8x16 = T.reinterpret(T.broadcast(a_i32, 4), dtype="int8x16")
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


def has_neon(target: tvm.target.Target) -> bool:
    """Does the aarch64 ``target`` have Advanced SIMD (NEON)?"""
    return _has_feature(target, "neon")
