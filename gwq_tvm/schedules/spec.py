"""Kernel families: how each kind of target runs the packed int8 conv, chosen in one place.

A :class:`KernelSpec` is everything that differs between targets; the
layout pass (:class:`gwq_tvm.schedules.pack_layout.PackInt8Layout`), the
compute (:mod:`.compute`) and the default schedules (:mod:`.default`) are
shared and read it:

============== ============ ======= ===================== ===========================
family         conv reads   k       inner step            targets
============== ============ ======= ===================== ===========================
x86-amx        uint8        4       ``tdpbusd`` (Mx64x64) x86 with AMX-INT8 + AVX-512 VNNI, OS permitting
x86-vnni       uint8        4       ``vpdpbusd`` (16x4)   x86 with AVX-512 VNNI
x86-avxvnni    uint8        4       2 x ``vpdpbusd`` ymm  x86 with AVX-VNNI + AVX2, no AVX-512 VNNI
x86-avx2       int16        2       2 x ``vpmaddwd``      x86 with AVX2, no (AVX-)VNNI
x86-avx2 (7b)  uint8        4       2 x ``vpmaddubsw``    the same, convs whose weights fit 7 bits
aarch64-i8mm   uint8        8       8 x ``usmmla``        aarch64 ``+i8mm`` (A710, N2, V1/Graviton3)
aarch64-sdot   int8         4       4 x ``sdot`` (16x4)   aarch64 ``+dotprod`` (A76, N1, rpi5)
aarch64-neon   as is        1       16 vector lanes       aarch64 NEON only (A72, rpi4)
============== ============ ======= ===================== ===========================

"conv reads" is the activation type the dot-product instruction takes;
activations of the other 8-bit type are offset by +-128 inside the kernel
and compensated exactly (:func:`gwq_tvm.schedules.layout.offset_compensation`).
The AVX2 family widens both operands to int16 instead (weights at compile
time, activations in the conv's padded-input stage; see :mod:`.avx2`), which
is exact for int8 and uint8 alike; a conv whose weights fit 7 bits takes
its exact ``vpmaddubsw`` step in the VNNI layout instead
(:attr:`KernelSpec.narrow`).  ``k`` is the reduction depth innermost
in the packed weight.  The i8mm family's step covers two output pixels
(``[2] x [16] x [8]``, see :mod:`.arm`), with a one-pixel step for output
widths that have no even register tile.

The AMX family covers the stride-1 convs with at least 64 input channels
(and dense layers: 1x1 convs of width 1, or of the batch, see
:mod:`.pack_layout`): input NCHW64c, weight rows of 64 output channels,
output NCHW64c, one ``M x 64 x 64`` tile step per call
(:mod:`.amx`).  Every other conv of the program (strided, thin, grouped,
depthwise) is built exactly as the ``x86-vnni`` family builds it, from the
same spec fields, so the AMX family is "VNNI plus tiles where they fit".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm

import re

from .amx import has_amx, register_amx_intrinsic
from .arm import (has_dotprod, has_i8mm, has_neon, register_sdot_int4_intrinsic, register_sdot_intrinsic, register_usmmla_intrinsic,
                  register_usmmla_pair_intrinsic)
from .avx2 import OPERAND_DTYPE as AVX2_OPERAND_DTYPE
from .avx2 import (NARROW_WEIGHT_MAX, has_avx2, register_avx2_int4_intrinsic, register_avx2_intrinsic,
                   register_avx2_narrow_intrinsic)
from .vnni import (VNNI_INT4_INTRIN, has_avxvnni, has_vnni, register_avxvnni_int4_intrinsic, register_avxvnni_intrinsic,
                   register_int4, register_vnni_int4_intrinsic, register_vnni_intrinsic, table_of_key)


@dataclass(frozen=True)
class KernelSpec:
    """How one target family computes and schedules the packed int8 conv.

    Attributes
    ----------
    name : str
    input_dtype : str or None
        Activation type the conv's inner product takes (``"uint8"``,
        ``"int8"``), ``None`` when both are taken as they are.
    k_block : int
        Reduction depth innermost in the packed weight: 8 for i8mm's 2x8x2
        matrix step, 4 for a 16x4 dot-product intrinsic, 2 for AVX2's int16
        pairs, 1 for lane-wise multiply-accumulate.
    intrinsic : callable or None
        Registers the tensor intrinsic for one ``[16 lanes] x [k_block]`` step
        (cheap, idempotent) and returns its name; ``None``: the lanes are
        vectorized instead.
    tile_limit, tile_min, tile_fallback : int
        Output pixels per register tile: the largest divisor of the output
        width up to ``tile_limit``, or up to ``tile_fallback`` when that is
        below ``tile_min`` (each pixel holds 16 int32 accumulators per
        channel block: 1 zmm register on x86, 4 q registers on aarch64,
        so an aarch64 tile above 6 spills; every tile stays below 1024 bytes of
        accumulators, :func:`gwq_tvm.schedules.default.conv_register_tile`).
    channel_pairs : bool
        May a tile hold two 16-channel blocks (wide register files)?
    operand_dtype : str or None
        Type both conv operands are widened to before the inner product
        (``"int16"`` for AVX2 ``vpmaddwd``); ``None``: the 8-bit values as they are.
    tile_intrinsic : callable or None
        ``rows -> name``: registers the ``rows x 64 x 64`` matrix-tile
        intrinsic (AMX ``tdpbusd``, :func:`.amx.register_amx_intrinsic`) for the
        convs it covers; ``None`` for the vector families.
    pair_intrinsic : callable or None
        ``pair_intrinsic(stride)`` registers the step of two adjacent output
        pixels at horizontal conv stride ``stride``
        (:func:`gwq_tvm.schedules.intrin.dot_2x16xk_desc`) and returns its
        name; the conv schedule uses it whenever the output width has an
        even register tile, ``intrinsic`` otherwise.  ``None``: one pixel per step.
    tune_intrinsic : bool
        MetaSchedule's stock rules have no rule for this family's intrinsic:
        tuning adds one that tensorizes with ``intrinsic``
        (:func:`gwq_tvm.schedules.tune.design_space`).
    int4_intrinsic : callable or None
        ``table -> name``: registers the packed int4 step with 16-entry code table ``table`` (:func:`gwq_tvm.schedules.intrin.dot_16x4_int4_desc`:
        32 bytes of nibble codes decoded through a 16-entry table in
        registers, then the family's dot product) and returns its name;
        ``None``: the family keeps int4 weights as int8.
    narrow : KernelSpec or None
        The family's kernel for a conv whose int8 weights all lie within
        ``+-narrow_max`` (:meth:`for_weight`): AVX2's exact ``vpmaddubsw``
        step for weights of 7 bits or fewer (:mod:`.avx2`).  A narrow conv is
        packed and scheduled from these fields; ``None``: every conv uses this spec.
    narrow_max : int
        The weight bound of :attr:`narrow`.
    """

    name: str
    input_dtype: str | None
    k_block: int
    intrinsic: Callable[[], str] | None
    tile_limit: int
    tile_min: int
    tile_fallback: int
    channel_pairs: bool
    operand_dtype: str | None = None
    tile_intrinsic: Callable[[int], str] | None = None
    pair_intrinsic: Callable[[int], str] | None = None
    tune_intrinsic: bool = False
    int4_intrinsic: Callable[[tuple], str] | None = None
    narrow: KernelSpec | None = None
    narrow_max: int = 0

    def __post_init__(self):
        if self.input_dtype not in (None, "int8", "uint8"):
            raise ValueError(f"input_dtype must be int8, uint8 or None, not {self.input_dtype!r}")
        if self.k_block not in (1, 2, 4, 8):
            raise ValueError(f"k_block must be 1, 2, 4 or 8, not {self.k_block}")
        if self.operand_dtype not in (None, "int16"):
            raise ValueError(f"operand_dtype must be int16 or None, not {self.operand_dtype!r}")

    def for_weight(self, w: np.ndarray) -> KernelSpec:
        """The spec that runs a conv of int8 weight ``w``: :attr:`narrow` when every ``|w| <= narrow_max``, else this one."""
        if self.narrow is not None and w.size and -self.narrow_max <= int(w.min()) and int(w.max()) <= self.narrow_max:
            return self.narrow
        return self

    @property
    def weight_dtype(self) -> str:
        """Type of the packed conv weight: int8, or the widened operand type."""
        return self.operand_dtype or "int8"

    def input_offset(self, dtype: str) -> int:
        """What the conv adds to activations of ``dtype``: 0, +128 (int8 -> uint8) or -128 (uint8 -> int8)."""
        if self.input_dtype is None or dtype == self.input_dtype:
            return 0
        return 128 if self.input_dtype == "uint8" else -128

    def max_product(self) -> int:
        """Largest ``|activation x weight|`` the inner product sees (for the int32 overflow bound)."""
        return {"uint8": 255 * 128, "int8": 128 * 128, None: 255 * 128}[self.input_dtype]



X86_VNNI = KernelSpec("x86-vnni", "uint8", 4, register_vnni_intrinsic, tile_limit=8, tile_min=4, tile_fallback=16,
                      channel_pairs=True, int4_intrinsic=register_vnni_int4_intrinsic)
"""x86 with AVX-512 VNNI: 32 zmm registers, ``vpdpbusd`` is uint8 x int8."""

X86_AMX = KernelSpec("x86-amx", "uint8", 4, register_vnni_intrinsic, tile_limit=8, tile_min=4, tile_fallback=16,
                     channel_pairs=True, tile_intrinsic=register_amx_intrinsic,
                     int4_intrinsic=register_vnni_int4_intrinsic)
"""x86 with AMX-INT8 (Sapphire Rapids and later): ``tdpbusd`` tiles for the stride-1 convs of 64+ input channels and
dense layers, the ``x86-vnni`` kernels (same fields) for every other conv."""

X86_AVX2_NARROW = KernelSpec("x86-avx2-narrow", "uint8", 4, register_avx2_narrow_intrinsic, tile_limit=6, tile_min=4,
                             tile_fallback=7, channel_pairs=False, int4_intrinsic=register_avx2_int4_intrinsic)
"""The x86-avx2 family's convs with weights in [-64, 64]: the VNNI layout and offset, ``vpmaddubsw`` + ``vpmaddwd``
by ones per 8 lanes (exact by the weight bound, :mod:`.avx2`), register tiles as the widened kernels'; packed int4
weights decoded by ``vpshufb`` into the same step."""

X86_AVX2 = KernelSpec("x86-avx2", None, 2, register_avx2_intrinsic, tile_limit=6, tile_min=4, tile_fallback=7,
                      channel_pairs=False, operand_dtype=AVX2_OPERAND_DTYPE, narrow=X86_AVX2_NARROW,
                      narrow_max=NARROW_WEIGHT_MAX)
"""x86 with AVX2 only: 16 ymm registers (2 per pixel's 16 accumulators), ``vpmaddwd`` on int16-widened operands;
convs whose weights fit 7 bits take :data:`X86_AVX2_NARROW` instead."""

X86_AVXVNNI = KernelSpec("x86-avxvnni", "uint8", 4, register_avxvnni_intrinsic, tile_limit=6, tile_min=4,
                         tile_fallback=7, channel_pairs=False, int4_intrinsic=register_avxvnni_int4_intrinsic)
"""x86 with AVX-VNNI but no AVX-512 (Alder Lake and later client cores): the VNNI layout and offset, 16 ymm
registers tiled as the AVX2 family's (2 per pixel's 16 accumulators), ``vpdpbusd ymm`` (VEX) twice per step; packed
int4 weights decoded by ``vpshufb`` into the same instruction."""

AARCH64_I8MM = KernelSpec("aarch64-i8mm", "uint8", 8, register_usmmla_intrinsic, tile_limit=6, tile_min=2,
                          tile_fallback=7, channel_pairs=False, pair_intrinsic=register_usmmla_pair_intrinsic,
                          tune_intrinsic=True)
"""aarch64 with i8mm: ``usmmla`` (uint8 x int8, as VNNI: no offset after a ReLU), 2 pixels x 2 channels x 8 deep
per instruction; register tiles as sdot's (4 q registers per pixel's 16 accumulators), of even width where possible."""

AARCH64_SDOT = KernelSpec("aarch64-sdot", "int8", 4, register_sdot_intrinsic, tile_limit=6, tile_min=2,
                          tile_fallback=7, channel_pairs=False, int4_intrinsic=register_sdot_int4_intrinsic)
"""aarch64 with the dot-product extension: 32 q registers (4 per pixel's 16 accumulators), ``sdot`` is int8 x int8."""

AARCH64_NEON = KernelSpec("aarch64-neon", None, 1, None, tile_limit=5, tile_min=2, tile_fallback=7,
                          channel_pairs=False)
"""aarch64 NEON without dotprod: widening multiply-accumulate over 16 output-channel lanes."""

FAMILIES = (X86_AMX, X86_VNNI, X86_AVXVNNI, X86_AVX2, AARCH64_I8MM, AARCH64_SDOT, AARCH64_NEON)


def kernel_spec(target: tvm.target.Target) -> KernelSpec | None:
    """The kernel family for ``target``, ``None`` when it has none (plain ``tvm.compile`` then).

    The one place where targets are told apart: x86 with AMX-INT8 (and
    AVX-512 VNNI), x86 with AVX-512 VNNI,
    x86 with AVX-VNNI and AVX2 (no AVX-512 VNNI), x86 with AVX2 (no VNNI),
    aarch64 with i8mm, aarch64 with dotprod (no i8mm), aarch64 with NEON only.
    The host's target carries AMX only where the OS grants it
    (:func:`gwq_tvm.runtime.host_target`, :func:`.amx.host_amx_usable`), so
    the host falls back to ``x86-vnni`` when the CPU or the kernel refuses AMX.
    """
    if has_vnni(target):
        return X86_AMX if has_amx(target) else X86_VNNI
    if has_avxvnni(target) and has_avx2(target):
        return X86_AVXVNNI
    if has_avx2(target):
        return X86_AVX2
    if has_i8mm(target):
        return AARCH64_I8MM
    if has_dotprod(target):
        return AARCH64_SDOT
    if has_neon(target):
        return AARCH64_NEON
    return None


#: Our intrinsics whose name carries a parameter: ``(pattern, register(match))``.  The int4 steps name their code
#: table (:func:`.vnni.table_key`), the i8mm pair step its stride, the AMX step its tile height.
_NAMED = (
    (re.compile(rf"{VNNI_INT4_INTRIN}_gfni_([0-9a-f]{{32}})"), lambda m: register_int4(table_of_key(m[1]), True)),
    (re.compile(rf"{VNNI_INT4_INTRIN}_([0-9a-f]{{32}})"), lambda m: register_int4(table_of_key(m[1]), False)),
    (re.compile(r"gwq_dot_16x4_int4_avxvnni_([0-9a-f]{32})"), lambda m: X86_AVXVNNI.int4_intrinsic(table_of_key(m[1]))),
    (re.compile(r"gwq_dot_16x4_int4_avx2_([0-9a-f]{32})"), lambda m: X86_AVX2_NARROW.int4_intrinsic(table_of_key(m[1]))),
    (re.compile(r"gwq_dot_16x4_int4_sdot_([0-9a-f]{32})"), lambda m: AARCH64_SDOT.int4_intrinsic(table_of_key(m[1]))),
    (re.compile(r"gwq_dot_2x16x8_usmmla_s(\d+)"), lambda m: AARCH64_I8MM.pair_intrinsic(int(m[1]))),
    (re.compile(r"gwq_amx_tdpbusd_(\d+)x64x64"), lambda m: register_amx_intrinsic(int(m[1]))),
)


def register_named_intrinsic(name: str) -> bool:
    """Register our tensor intrinsic called ``name`` (as :func:`kernel_spec`'s families register it while
    scheduling); ``False`` when no family has one of that name.

    A tuning record's trace refers to the intrinsics it tensorized with by name; a
    process that replays it (a fresh ``compile --tuning-db``) must have registered
    them, or TVM cannot read the record (:func:`gwq_tvm.schedules.tune.open_database`).
    """
    for family in FAMILIES + tuple(f.narrow for f in FAMILIES if f.narrow is not None):
        if family.intrinsic is not None and family.intrinsic() == name:
            return True
    for pattern, register in _NAMED:
        m = pattern.fullmatch(name)
        if m is not None:
            return register(m) == name
    return False
