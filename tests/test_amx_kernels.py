"""The x86-amx kernel family: ``tdpbusd`` tiles, host detection with the arch_prctl permission, per-layer VNNI fallback.

Three levels, so that something real is checked on every CPU:

* **built** for the ``sapphirerapids`` preset (LLVM ``+amx-tile,+amx-int8``)
  everywhere: the assembly holds ``ldtilecfg``, ``tileloadd``, ``tdpbusd``
  and ``tilestored`` where the family covers the layer, ``vpdpbusd`` where
  it falls back to VNNI;
* **emulated** everywhere: the same tile program (:data:`gwq_tvm.schedules.amx._PROGRAM`:
  offsets, row strides, tile shapes of the configuration) interpreted in
  scalar code, compiled for this CPU and compared bit for bit with the numpy
  reference, which checks the packing, the tiling and the tensorization;
* **run** on the AMX instructions, bit-exact against the numpy reference,
  only where ``/proc/cpuinfo`` lists ``amx_int8`` and the arch_prctl
  request succeeds; skipped with the reason elsewhere (the Zen 4 this was
  written on has no AMX, and qemu-user does not emulate it).
"""

import dataclasses
import functools
import warnings

import numpy as np
import pytest
import tvm

import gwq_tvm
from gwq_tvm.reference import run_reference
from gwq_tvm.runtime import amx_reconciled, host_target
from gwq_tvm.schedules.amx import (
    amx_intrin_name, cpuinfo_has_amx, has_amx, host_amx_usable, read_cpuinfo, register_amx_intrinsic,
    request_amx_permission, tile_rows,
)
from gwq_tvm.schedules.build import compile_packed, packed_fused_module
from gwq_tvm.schedules.spec import X86_AMX, X86_AVXVNNI, X86_VNNI, kernel_spec
from gwq_tvm.schedules.targets import resolve_target
from gwq_tvm.schedules.vnni import has_vnni

from test_arm_kernels import _dense_module
from test_schedules import _asm, _conv_module, _run


def _skip_reason() -> str:
    if not cpuinfo_has_amx(read_cpuinfo()):
        return "/proc/cpuinfo lacks amx_int8/amx_tile: this CPU cannot execute tdpbusd (built and emulated here, not run)"
    granted, reason = request_amx_permission()
    return "" if granted else f"the CPU has AMX but {reason} (built and emulated here, not run)"


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the one-line refusal warning is tested below
    AMX = host_amx_usable()
needs_amx = pytest.mark.skipif(not AMX, reason=_skip_reason() or "AMX not usable")

SPR = resolve_target("sapphirerapids")

#: The AMX family with the tile program emulated in scalar code (runs on any CPU; see the module docstring).
EMULATED = dataclasses.replace(X86_AMX, name="x86-amx-emulated",
                               tile_intrinsic=functools.partial(register_amx_intrinsic, emulate=True))

#: /proc/cpuinfo "flags" of a Sapphire Rapids core (abridged), for the detection logic.
SPR_CPUINFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
               "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni avx_vnni avx512_bf16 amx_bf16 "
               "avx512_fp16 amx_tile amx_int8\n")

_TILE_OPS = ("ldtilecfg", "tileloadd", "tdpbusd", "tilestored")


def _counts(asm: str) -> dict:
    return {op: asm.count(op) for op in (*_TILE_OPS, "vpdpbusd")}


def _tiled_convs(mod, target=SPR) -> list[bool]:
    """For each packed conv kernel of ``mod`` built for ``target``: is it packed for tiles (64-channel weight rows)?"""
    fused = packed_fused_module(mod, target, kernel_spec(target))
    out = []
    for gv, func in fused.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and "gwq_conv2d" in gv.name_hint:
            weight = next(p for p in func.params if getattr(p, "shape", None) is not None and len(p.shape) == 7)
            out.append(int(weight.shape[5]) == 64)
    return sorted(out)


# --- detection ---------------------------------------------------------------------
@pytest.mark.parametrize("target, family", [
    ({"kind": "llvm", "mcpu": "sapphirerapids"}, X86_AMX),
    ({"kind": "llvm", "mcpu": "graniterapids"}, X86_AMX),
    ({"kind": "llvm", "mcpu": "sapphirerapids", "mattr": ["-amx-tile", "-amx-int8"]}, X86_VNNI),  # OS refused
    ({"kind": "llvm", "mcpu": "znver4", "mattr": ["+amx-tile", "+amx-int8"]}, X86_AMX),
    ({"kind": "llvm", "mcpu": "znver4"}, X86_VNNI),
    ({"kind": "llvm", "mcpu": "icelake-server"}, X86_VNNI),
    ({"kind": "llvm", "mcpu": "alderlake"}, X86_AVXVNNI),
])
def test_kernel_spec_picks_amx_only_with_amx_int8(target, family):
    assert kernel_spec(tvm.target.Target(target)) is family


def test_sapphirerapids_preset_is_amx():
    assert has_amx(SPR) and kernel_spec(SPR) is X86_AMX
    assert X86_AMX.input_offset("int8") == 128 and X86_AMX.weight_dtype == "int8"


def test_cpuinfo_flags():
    assert cpuinfo_has_amx(SPR_CPUINFO)
    assert not cpuinfo_has_amx(SPR_CPUINFO.replace(" amx_int8", ""))
    assert not cpuinfo_has_amx(SPR_CPUINFO.replace(" amx_tile", ""))
    assert not cpuinfo_has_amx("") and not cpuinfo_has_amx("model name\t: amx_int8 amx_tile\n")


def test_host_detection_with_this_cpuinfo():
    """This machine's /proc/cpuinfo and arch_prctl: AMX exactly when both allow it (here, a Zen 4: VNNI, no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no AMX in cpuinfo: no request, no warning
        usable = host_amx_usable() if not cpuinfo_has_amx(read_cpuinfo()) else AMX
    assert usable == AMX
    host = host_target()
    assert has_amx(host) == AMX
    if has_vnni(host):
        assert kernel_spec(host) is (X86_AMX if AMX else X86_VNNI)
    if not cpuinfo_has_amx(read_cpuinfo()):
        assert not AMX and not has_amx(host)


def test_host_detection_with_a_sapphirerapids_cpuinfo():
    """A Sapphire Rapids cpuinfo: AMX iff this process's real arch_prctl request is granted, one warning line if not."""
    granted, reason = request_amx_permission()
    if granted:
        assert host_amx_usable(SPR_CPUINFO)
    else:
        with pytest.warns(RuntimeWarning) as caught:
            assert not host_amx_usable(SPR_CPUINFO)
        assert len(caught) == 1 and "\n" not in str(caught[0].message)
        assert "ARCH_REQ_XCOMP_PERM" in str(caught[0].message) and "x86-vnni" in str(caught[0].message)
        assert reason
    if not cpuinfo_has_amx(read_cpuinfo()):
        assert not granted  # no kernel grants tile data on a CPU without it
    # what host_target makes of the answer, for a Sapphire Rapids mcpu:
    assert kernel_spec(amx_reconciled("sapphirerapids", granted)) is (X86_AMX if granted else X86_VNNI)
    assert kernel_spec(amx_reconciled("sapphirerapids", False)) is X86_VNNI
    assert kernel_spec(amx_reconciled("sapphirerapids", True)) is X86_AMX


# --- the intrinsic ---------------------------------------------------------------------
def _tile_step(rows: int, target, emulate=False):
    """A standalone ``C[rows, 64] += A[rows, 64] . B[16, 64, 4]`` tensorized with the tile intrinsic."""
    from tvm import s_tir, te

    name = register_amx_intrinsic(rows, emulate)
    a = te.placeholder((rows, 64), "uint8", name="a")
    b = te.placeholder((16, 64, 4), "int8", name="b")
    rb, r4 = te.reduce_axis((0, 16), "rb"), te.reduce_axis((0, 4), "r4")
    c = te.compute((rows, 64), lambda m, n: te.sum(a[m, rb * 4 + r4].astype("int32") * b[rb, n, r4].astype("int32"),
                                                   axis=[rb, r4]), name="c")
    sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("c")
    sch.decompose_reduction(block, sch.get_loops(block)[0])
    sch.tensorize(sch.get_loops(block)[0 if rows > 1 else 1], name)
    return tvm.compile(sch.mod, target)


def _check_tile_step(lib, rows):
    rng = np.random.default_rng(rows)
    av = rng.integers(0, 256, (rows, 64)).astype("uint8")
    av[0] = 255
    bv = rng.integers(-128, 128, (16, 64, 4)).astype("int8")
    bv[:, :3] = -128
    out = tvm.runtime.tensor(np.full((rows, 64), 12345, "int32"))  # the kernel's init zeroes it first
    lib(tvm.runtime.tensor(av), tvm.runtime.tensor(bv), out)
    want = av.astype(np.int64) @ bv.transpose(0, 2, 1).reshape(64, 64).astype(np.int64)
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("rows", [1, 7, 16])
def test_tile_step_assembly_and_emulation(rows):
    """One call: ldtilecfg, 9 tileloadd (A, 4 accumulators, 4 B slices), 4 tdpbusd, 4 tilestored; its emulation exact."""
    assert amx_intrin_name(rows) == f"gwq_amx_tdpbusd_{rows}x64x64"
    asm = _tile_step(rows, SPR).mod.inspect_source("asm")
    assert _counts(asm) == {"ldtilecfg": 1, "tileloadd": 9, "tdpbusd": 4, "tilestored": 4, "vpdpbusd": 0}
    _check_tile_step(_tile_step(rows, "llvm", emulate=True), rows)


@needs_amx
@pytest.mark.parametrize("rows", [1, 7, 16])
def test_tile_step_on_amx_bit_exact(rows):
    _check_tile_step(_tile_step(rows, host_target()), rows)


def test_tile_rows():
    assert [tile_rows(w) for w in (1, 7, 14, 16, 28, 56, 112, 17)] == [1, 7, 14, 16, 14, 14, 16, 1]
    with pytest.raises(ValueError, match="1 to 16 rows"):
        register_amx_intrinsic(17)


# --- convs and dense layers ---------------------------------------------------------------
#: c, o, hw, k, stride, padding, groups, dtype; expected (sorted) tiled-or-not of the module's two convs
#: (the second is a 1x1 from o channels at the first's output size, int8 input).
AMX_SHAPES = [
    ((64, 64, 14, 3, 1, 1, 1, "uint8"), [True, True]),  # ResNet-like 3x3, 14-row tiles
    ((96, 70, 8, 3, 1, 1, 1, "int8"), [True, True]),  # padded channels (96 -> 128 in, 70 -> 128 out), x+128 path
    ((80, 64, 9, 1, 1, 0, 1, "int8"), [True, True]),  # 1x1, 9-row tiles
    ((128, 32, 20, 3, 1, (1, 1, 2, 1), 1, "uint8"), [False, True]),  # asymmetric padding, 10-row tiles; 32 in -> VNNI
    ((64, 64, 17, 1, 1, 0, 1, "uint8"), [False, False]),  # width 17: no 4..16 divisor -> VNNI
    ((64, 64, 12, 3, 2, 1, 1, "uint8"), [False, True]),  # stride 2 -> VNNI, then a tiled 1x1 (NCHW16c -> 64c)
    ((32, 64, 8, 3, 1, 1, 1, "int8"), [False, True]),  # 32 input channels -> VNNI
]


@pytest.mark.filterwarnings("error:default schedule failed")
@pytest.mark.parametrize("shape, tiled", AMX_SHAPES)
def test_amx_conv_builds_and_emulates_bit_exact(shape, tiled):
    """Built for sapphirerapids: tiles where covered, vpdpbusd where not; the emulated build equals the reference."""
    mod, x = _conv_module(*shape)
    assert _tiled_convs(mod) == tiled
    counts = _counts(_asm(compile_packed(mod, SPR, X86_AMX)))
    assert (counts["tdpbusd"] > 0) == any(tiled) and (counts["ldtilecfg"] > 0) == any(tiled)
    assert (counts["vpdpbusd"] > 0) == (not all(tiled))
    np.testing.assert_array_equal(_run(compile_packed(mod, host_target(), EMULATED), x), run_reference(mod, x))


def test_amx_dilated_conv_emulates_bit_exact():
    mod, x = _conv_module(64, 16, 12, 3, 1, 2, 1, "int8", dilation=2)
    assert _tiled_convs(mod) == [False, True]  # the 1x1 reads 16 channels: VNNI
    mod, x = _conv_module(64, 64, 12, 3, 1, 2, 1, "int8", dilation=2)
    assert _tiled_convs(mod) == [True, True]
    np.testing.assert_array_equal(_run(compile_packed(mod, host_target(), EMULATED), x), run_reference(mod, x))


@needs_amx
@pytest.mark.parametrize("shape, tiled", AMX_SHAPES)
def test_amx_conv_bit_exact_on_amx(shape, tiled):
    mod, x = _conv_module(*shape)
    np.testing.assert_array_equal(_run(compile_packed(mod, host_target(), X86_AMX), x), run_reference(mod, x))


DENSE = [("uint8", 1, 128, 100), ("int8", 4, 128, 100), ("uint8", 1, 512, 1000), ("int8", 3, 17, 24)]


@pytest.mark.filterwarnings("error:default schedule failed")
@pytest.mark.parametrize("dtype, batch, k, n", DENSE)
def test_amx_dense_builds_and_emulates_bit_exact(dtype, batch, k, n):
    """Dense as a 1x1 conv: 1-row tiles at batch 1, the batch as tile rows above (4), VNNI for K < 64."""
    mod, x = _dense_module(dtype, n=batch, k=k, m=n)
    counts = _counts(_asm(compile_packed(mod, SPR, X86_AMX)))
    assert (counts["tdpbusd"] > 0) == (k >= 64) and (counts["vpdpbusd"] > 0) == (k < 64)
    np.testing.assert_array_equal(_run(compile_packed(mod, host_target(), EMULATED), x), run_reference(mod, x))


@needs_amx
@pytest.mark.parametrize("dtype, batch, k, n", DENSE)
def test_amx_dense_bit_exact_on_amx(dtype, batch, k, n):
    mod, x = _dense_module(dtype, n=batch, k=k, m=n)
    np.testing.assert_array_equal(_run(compile_packed(mod, host_target(), X86_AMX), x), run_reference(mod, x))


def test_refused_amx_builds_plain_vnni():
    """A Sapphire Rapids host whose OS refuses AMX (host_target removes the features): no tile instruction at all."""
    mod, _ = _conv_module(64, 64, 14, 3, 1, 1, 1, "uint8")
    target = amx_reconciled("sapphirerapids", False)
    counts = _counts(_asm(gwq_tvm.schedules.compile_integer(mod, target)))
    assert counts["vpdpbusd"] > 0 and not any(counts[op] for op in _TILE_OPS)


def test_bundled_model_for_sapphirerapids(bundled_int8, fmnist):
    """gwq_tvm.build for the preset: tiles for the 64-channel 3x3 conv and the dense, VNNI for the thin and strided
    convs; the emulated build of the whole model equals the reference (run on AMX where it exists)."""
    asm = _asm(gwq_tvm.build(bundled_int8, SPR))
    counts = _counts(asm)
    assert counts["tdpbusd"] >= 8 and counts["ldtilecfg"] >= 2 and counts["vpdpbusd"] > 0
    assert _tiled_convs(bundled_int8.mod).count(True) == 2
    x = fmnist[1][:8]
    want = run_reference(bundled_int8.mod, x)
    np.testing.assert_array_equal(_run(compile_packed(bundled_int8.mod, host_target(), EMULATED), x), want)
    if AMX:
        np.testing.assert_array_equal(_run(gwq_tvm.build(bundled_int8), x), want)


def test_tuning_runner_workers_request_tile_data():
    """MetaSchedule's local runner worker has made the arch_prctl request before it runs a candidate."""
    from gwq_tvm.schedules.tune import make_runner

    runner = make_runner()
    info = runner.pool.submit(request_amx_permission.cache_info).result()
    assert info.currsize == 1  # made (granted or not) in the worker, by the initializer
    assert runner.pool.submit(request_amx_permission).result()[0] == AMX
