"""The x86 AMX-INT8 tile intrinsic of the packed conv, AMX detection and the Linux tile-data permission.

TVM 0.27 ships no AMX tensor intrinsic (``tvm.s_tir.tensor_intrin.x86``
has VNNI only), so this module is the one place that writes ours, on LLVM's
register-numbered AMX intrinsics: ``llvm.x86.ldtilecfg``,
``llvm.x86.tileloadd64``, ``llvm.x86.tdpbusd`` and ``llvm.x86.tilestored64``
(tile numbers are immediates; the ``.internal`` forms take LLVM's
``x86_amx`` type, which TIR cannot express).

One call of :func:`register_amx_intrinsic` ``(rows)`` (``M = rows``, 1..16)::

    C[m, n] += sum_{b < 16, k < 4} int32(A[m, 4b + k]) * int32(B[b, n, k])     m < M, n < 64,
    A: uint8[M, 64], B: int8[16, 64, 4], C: int32[M, 64]

that is ``M`` output pixels x 64 output channels x 64 input channels:

* ``ldtilecfg`` of a 64-byte configuration on the stack (palette 1;
  ``tmm0``-``tmm3``: the four ``M x 16`` int32 accumulator tiles of
  ``C``, ``tmm4``: ``A``, ``M`` rows of 64 bytes; ``tmm5``-``tmm7``: ``B``
  slices, 16 rows of 64 bytes);
* ``tileloadd`` of ``A`` and of the four accumulator tiles (row stride 256
  bytes: 64 int32), then for ``j < 4``: ``tileloadd`` of the ``B`` slice
  ``B[:, 16j:16j+16, :]`` (row stride 256 bytes), ``tdpbusd tmm_j, tmm4,
  tmm_{5 + j mod 3}`` and ``tilestored`` of ``tmm_j``.

``tdpbusd`` is ``C[m, n] += sum_k zx(A[m].byte[4k+i]) * sx(B[k].byte[4n+i])``
summed over ``i < 4`` without saturation: uint8 activations x int8 weights,
the operands of VNNI's ``vpdpbusd`` (so int8 activations take the same
``x + 128`` path), and exact, since 64 products of at most ``255 * 128``
fit in int32.  ``B`` is VNNI's ``[k/4][16o][4k]`` interleave with 64
output channels per row instead of 16 (:func:`gwq_tvm.schedules.layout.pack_conv_weight`
with ``out_block=64``).

The tile configuration is loaded on every call: tile state is per thread
and the call is the unit TVM's parallel loops hand to a thread; its cost
(and the accumulators' round trip through memory) is what a future
schedule keeping them in tiles across the reduction would save.

The call is written once, as a tile program (:data:`_PROGRAM`: loads,
``tdpbusd``, stores with their byte offsets and row strides, over the tile
shapes of :func:`_tile_shapes`), and emitted either on the AMX instructions
or, with ``emulate=True``, as scalar code that interprets the same program
(:func:`_emit_emulated`); the emulation runs on any CPU, so the packing,
tiling and tensorization are tested bit-exact where AMX is absent.

Permission
----------
Linux keeps AMX tile data (XSAVE feature 18, ``XFEATURE_XTILEDATA``) off
for a process until it asks: the first tile instruction of a process that
did not ``arch_prctl(ARCH_REQ_XCOMP_PERM, 18)`` dies with SIGILL.
:func:`request_amx_permission` makes that request, once per process.
Host detection (:func:`host_amx_usable`) picks AMX only when ``/proc/cpuinfo``
lists ``amx_int8`` (and ``amx_tile``) *and* the request succeeds; otherwise
the host keeps the ``x86-vnni`` family, with one warning line when the CPU
has AMX but the kernel refused it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings

import tvm
from tvm.script import tirx as T

TILE_K = 64
"""Input channels per ``tdpbusd`` (bytes of one ``A`` row; ``B`` has ``TILE_K / 4`` rows)."""

TILE_N = 64
"""Output channels per call: four 16-column int32 accumulator tiles."""

MAX_ROWS = 16
"""Most rows (output pixels) of an AMX tile."""

SYS_ARCH_PRCTL = 158
"""x86-64 syscall number of ``arch_prctl``."""

ARCH_REQ_XCOMP_PERM = 0x1023
"""``arch_prctl`` code requesting permission for a dynamically enabled XSAVE feature."""

XFEATURE_XTILEDATA = 18
"""XSAVE feature number of the AMX tile data."""


def amx_intrin_name(rows: int) -> str:
    """Our name for the ``rows x 64 x 64`` tile step of :func:`register_amx_intrinsic`."""
    return f"gwq_amx_tdpbusd_{rows}x64x64"


@functools.lru_cache(maxsize=None)
def _desc(rows: int):
    """The TensorIntrin description: ``C[m, n] += sum A[m, 4b + k] * B[b, n, k]`` (see the module docstring)."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((rows, TILE_K), "uint8", offset_factor=1),
        B: T.Buffer((TILE_K // 4, TILE_N, 4), "int8", offset_factor=1),
        C: T.Buffer((rows, TILE_N), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:TILE_N], A[0:rows, 0:TILE_K], B[0:TILE_K // 4, 0:TILE_N, 0:4])
            T.writes(C[0:rows, 0:TILE_N])
            for m, n, b, k in T.grid(rows, TILE_N, TILE_K // 4, 4):
                with T.sblock("update"):
                    vm, vn, vb, vk = T.axis.remap("SSRR", [m, n, b, k])
                    C[vm, vn] = C[vm, vn] + T.cast(A[vm, vb * 4 + vk], "int32") * T.cast(B[vb, vn, vk], "int32")

    @T.prim_func(s_tir=True)
    def desc_row(
        A: T.Buffer((1, TILE_K), "uint8", offset_factor=1),
        B: T.Buffer((TILE_K // 4, TILE_N, 4), "int8", offset_factor=1),
        C: T.Buffer((1, TILE_N), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:1, 0:TILE_N], A[0:1, 0:TILE_K], B[0:TILE_K // 4, 0:TILE_N, 0:4])
            T.writes(C[0:1, 0:TILE_N])
            for n, b, k in T.grid(TILE_N, TILE_K // 4, 4):
                with T.sblock("update"):
                    vn, vb, vk = T.axis.remap("SRR", [n, b, k])
                    C[0, vn] = C[0, vn] + T.cast(A[0, vb * 4 + vk], "int32") * T.cast(B[vb, vn, vk], "int32")

    # One row (a dense at batch 1, a width-1 conv): the scheduled block has no pixel iterator left (a unit
    # loop's iterator is folded to its constant), so the description must have none either to match.
    return desc_row if rows == 1 else desc



def _tile_shapes(rows: int) -> dict[int, tuple[int, int]]:
    """``tile -> (rows, bytes per row)`` of the configuration: accumulators ``tmm0``-``tmm3`` and ``A``
    (``tmm4``) have ``rows`` rows, the ``B`` slices (``tmm5``-``tmm7``) ``TILE_K / 4``; every row is 64 bytes."""
    return {t: (rows if t < 5 else TILE_K // 4, 64) for t in range(8)}


def _tile_config(rows: int) -> list[tuple[int, int]]:
    """``(byte, value)`` of the non-zero bytes of the 64-byte ``ldtilecfg`` operand (palette 1).

    Byte 0: palette; bytes 16 + 2t (uint16, little-endian; all values here
    fit the low byte): bytes per row of tile ``t``; byte 48 + t: rows of tile ``t``.
    """
    cfg = [(0, 1)]
    for t, (nrows, colsb) in _tile_shapes(rows).items():
        cfg += [(16 + 2 * t, colsb), (48 + t, nrows)]
    return cfg


_ROW_BYTES = TILE_N * 4
"""Row stride of ``C`` (64 int32) and of ``B`` (64 output channels x 4 int8): 256 bytes."""

#: One call, as ``(op, ...)`` steps on tiles: ``("load" | "store", tile, operand, byte offset, row stride)``,
#: ``("dot", dst, src1, src2)`` (``tdpbusd``).  The AMX implementation and the emulation are both made from it.
_PROGRAM = (
    ("load", 4, "A", 0, TILE_K),
    *(("load", j, "C", 64 * j, _ROW_BYTES) for j in range(4)),
    *(step for j in range(4) for step in (
        ("load", 5 + j % 3, "B", 64 * j, _ROW_BYTES),  # B[:, 16j:16j+16, :]
        ("dot", j, 4, 5 + j % 3),
        ("store", j, "C", 64 * j, _ROW_BYTES))),
)


def _emit_amx(rows: int, buffers: dict) -> None:
    """Emit (TVMScript builder) one call on the AMX instructions: ``ldtilecfg`` then :data:`_PROGRAM`."""
    cfg = T.decl_buffer((64,), "uint8", scope="local")
    with T.serial(0, 64) as i:
        T.buffer_store(cfg, T.uint8(0), [i])
    for byte, value in _tile_config(rows):
        T.buffer_store(cfg, T.uint8(value), [byte])
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", cfg.access_ptr("rw")))
    for step in _PROGRAM:
        if step[0] == "dot":
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbusd", *(T.uint8(t) for t in step[1:])))
            continue
        op, tile, name, offset, stride = step
        buf = buffers[name]
        ptr = buf.access_ptr("r" if op == "load" else "w", offset=offset // (tvm.DataType(buf.dtype).bits // 8))
        intrin = "llvm.x86.tileloadd64" if op == "load" else "llvm.x86.tilestored64"
        T.evaluate(T.call_llvm_intrin("void", intrin, T.uint8(tile), ptr, T.int64(stride)))


def _flat(buf, index):
    """``buf`` (compact) at flat element ``index``."""
    dims = [int(d) for d in buf.shape]
    idx = []
    for d in reversed(dims):
        idx.append(index % d)
        index = index // d
    return list(reversed(idx))


def _emit_emulated(rows: int, buffers: dict) -> None:
    """Emit (TVMScript builder) :data:`_PROGRAM` interpreted in scalar code: for testing on CPUs without AMX.

    Tiles are a local ``int32[8, 16, 64]`` register file (element ``c`` of
    a row: byte ``c`` of ``A``/``B`` tiles, dword ``c`` of accumulators);
    loads and stores move ``rows x bytes-per-row`` of the configuration
    (:func:`_tile_shapes`) at the same byte offsets and row strides as the
    AMX code, and ``tdpbusd`` is its definition: ``dst[m, n] += sum_{k, i}
    zx(src1[m, 4k + i]) * sx(src2[k, 4n + i])`` over the shapes of the
    configuration, wrapping in int32.  Only the instructions' encoding is
    left untested by it.
    """
    shapes = _tile_shapes(rows)
    regs = T.decl_buffer((8, 16, 64), "int32", scope="local")
    for step in _PROGRAM:
        if step[0] == "dot":
            _, d, a, b = step
            (m_rows, d_colsb), (a_rows, a_colsb), (b_rows, b_colsb) = shapes[d], shapes[a], shapes[b]
            assert a_rows == m_rows and a_colsb // 4 == b_rows and b_colsb == d_colsb, "tdpbusd shapes (#GP on AMX)"
            with T.grid(m_rows, d_colsb // 4, a_colsb // 4, 4) as (m, n, k, i):
                ua = T.bitwise_and(regs[a, m, 4 * k + i], 255)
                sb = T.bitwise_and(regs[b, k, 4 * n + i], 255)
                sb = sb - T.if_then_else(sb >= 128, 256, 0)
                T.buffer_store(regs, regs[d, m, n] + ua * sb, [d, m, n])
            continue
        op, tile, name, offset, stride = step
        buf = buffers[name]
        size = (tvm.DataType(buf.dtype).bits // 8)
        n_rows, colsb = shapes[tile]
        with T.grid(n_rows, colsb // size) as (r, c):
            e = offset // size + r * (stride // size) + c
            if op == "load":
                T.buffer_store(regs, T.cast(buf[tuple(_flat(buf, e))], "int32"), [tile, r, c])
            else:
                T.buffer_store(buf, T.cast(regs[tile, r, c], buf.dtype), _flat(buf, e))


@functools.lru_cache(maxsize=None)
def _impl(rows: int, emulate: bool = False):
    """The implementation on LLVM's AMX intrinsics, or its scalar emulation (parsed on first use, like the
    other families')."""
    emit = _emit_emulated if emulate else _emit_amx

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((rows, TILE_K), "uint8", offset_factor=1),
        B: T.Buffer((TILE_K // 4, TILE_N, 4), "int8", offset_factor=1),
        C: T.Buffer((rows, TILE_N), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:TILE_N], A[0:rows, 0:TILE_K], B[0:TILE_K // 4, 0:TILE_N, 0:4])
            T.writes(C[0:rows, 0:TILE_N])
            emit(rows, {"A": A, "B": B, "C": C})

    return impl


@functools.lru_cache(maxsize=None)
def register_amx_intrinsic(rows: int, emulate: bool = False) -> str:
    """Register the ``rows x 64 x 64`` AMX step under :func:`amx_intrin_name` (idempotent, cheap); return the name.

    ``emulate=True`` registers the scalar emulation of the same tile program
    instead (name suffix ``_emulated``; :func:`_emit_emulated`): it runs on
    any CPU, so tests check the layouts, offsets, strides and tile shapes
    the AMX code uses where no AMX exists.
    """
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"an AMX tile has 1 to {MAX_ROWS} rows, not {rows}")
    name = amx_intrin_name(rows) + ("_emulated" if emulate else "")
    tvm.s_tir.TensorIntrin.register(name, _desc(rows), _impl(rows, emulate), override=True)
    return name

def tile_rows(width: int) -> int:
    """Output pixels per AMX tile for an output row of ``width``: its largest divisor up to 16."""
    return max(d for d in range(1, MAX_ROWS + 1) if width % d == 0)


# --- detection ------------------------------------------------------------------
def has_amx(target: tvm.target.Target) -> bool:
    """Does the LLVM x86 ``target`` have AMX-INT8 and AMX-TILE (``mcpu`` such as sapphirerapids, or ``mattr``)?"""
    if target.kind.name != "llvm":
        return False
    try:
        return all(bool(tvm.target.codegen.target_has_features(f, target)) for f in ("amx-tile", "amx-int8"))
    except (RuntimeError, ValueError):  # pragma: no cover - feature query unsupported for this triple
        return False


def cpuinfo_has_amx(cpuinfo: str) -> bool:
    """Does a ``/proc/cpuinfo`` text list the ``amx_int8`` and ``amx_tile`` flags (on its first ``flags`` line)?"""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return {"amx_int8", "amx_tile"} <= flags
    return False


@functools.lru_cache(maxsize=1)
def request_amx_permission() -> tuple[bool, str]:
    """Ask Linux for AMX tile data in this process: ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``.

    The request is made once per process (cached) through ``libc.syscall``
    (``SYS_arch_prctl`` = 158, code ``0x1023``, feature 18); a granted
    permission covers every thread of the process, TVM's worker threads
    included, and must precede the first tile instruction.

    Returns
    -------
    (bool, str)
        ``(True, "")`` when granted, else ``(False, reason)`` with the
        ``errno`` text (e.g. ``EOPNOTSUPP`` on a CPU or kernel without AMX,
        ``EPERM`` when a sigaltstack is too small for the tile state).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ret = libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    except (OSError, AttributeError) as err:  # pragma: no cover - no libc syscall() (not Linux/glibc)
        return False, f"arch_prctl unavailable ({err})"
    if ret == 0:
        return True, ""
    code = ctypes.get_errno()
    return False, f"arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) refused: {os.strerror(code)}"


def read_cpuinfo() -> str:
    """This machine's ``/proc/cpuinfo`` ("" where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def host_amx_usable(cpuinfo: str | None = None) -> bool:
    """May this process run AMX-INT8 tiles: ``cpuinfo`` lists ``amx_int8`` *and* the permission request succeeds?

    ``cpuinfo`` defaults to this machine's ``/proc/cpuinfo``.  The request
    (:func:`request_amx_permission`) is made only for an AMX CPU; when it is
    refused, one warning line says so and the caller falls back to VNNI.
    """
    if not cpuinfo_has_amx(read_cpuinfo() if cpuinfo is None else cpuinfo):
        return False
    granted, reason = request_amx_permission()
    if not granted:
        warnings.warn(f"the CPU has AMX-INT8 but {reason}; using the x86-vnni kernels", RuntimeWarning, stacklevel=2)
    return granted
