"""The x86-avxvnni kernel family: two 256-bit ``vpdpbusd`` per 16-lane step, bit-exact against the numpy reference.

The family's intrinsic is ``llvm.x86.avx512.vpdpbusd.256``.  LLVM encodes it
as VEX ``{vex} vpdpbusd ymm`` on a target with AVX-VNNI and no AVX-512 VNNI
(``alderlake``), and as EVEX ``vpdpbusd ymm`` on a target with AVX-512 VL +
VNNI.  So the numeric tests run the family's kernels on any CPU that has
either: forced on this CPU's own target (:func:`compile_packed` with
``X86_AVXVNNI``), on an AVX-512 VNNI machine such as the Zen 4 this was
written on they run the EVEX-256 encoding of the same instruction and the
same arithmetic.  The VEX encoding itself is checked in the assembly built
for ``alderlake``; it cannot run on a CPU without AVX-VNNI (Zen 4 has none).
"""

import re

import numpy as np
import pytest
import tvm

from gwq_tvm.reference import run_reference
from gwq_tvm.runtime import host_target
from gwq_tvm.schedules.build import compile_packed
from gwq_tvm.schedules.spec import X86_AMX, X86_AVX2, X86_AVXVNNI, X86_VNNI, kernel_spec
from gwq_tvm.schedules.targets import resolve_target
from gwq_tvm.schedules.vnni import AVXVNNI_INTRIN, has_avxvnni, has_vnni, register_avxvnni_intrinsic

from conftest import tensorized_dot_16x4
from test_arm_kernels import _dense_module
from test_int4_kernels import SHAPES as INT4_SHAPES
from test_int4_kernels import _int4_kernels
from test_int4_kernels import conv_module as int4_conv_module
from test_int4_kernels import dense_module as int4_dense_module
from test_schedules import SHAPES, _asm, _conv_module, _run


def _host_runs_ymm_vpdpbusd() -> bool:
    """Can this CPU execute ``vpdpbusd ymm``: VEX (AVX-VNNI) or EVEX (AVX-512 VL + VNNI)?"""
    host = host_target()
    if has_avxvnni(host):
        return True
    try:
        return has_vnni(host) and bool(tvm.target.codegen.target_has_features("avx512vl", host))
    except (RuntimeError, ValueError):
        return False


RUNS = _host_runs_ymm_vpdpbusd()
needs_ymm_vnni = pytest.mark.skipif(
    not RUNS, reason="host CPU has neither AVX-VNNI nor AVX-512 VL+VNNI: it cannot execute vpdpbusd on ymm registers")

#: A 256-bit vpdpbusd in AT&T syntax: VEX ({vex} prefix) or EVEX, ymm destination.
_YMM_DOT = re.compile(r"^\s*(\{vex\}\s*)?vpdpbusd\s+[^\n]*%ymm\d+\s*$", re.M)


def _compile_avxvnni(mod):
    """The module packed and scheduled for the AVX-VNNI family, built for this CPU (forced on a VNNI CPU too)."""
    return compile_packed(mod, host_target(), X86_AVXVNNI)


def _vex_only(asm: str) -> None:
    """Every vpdpbusd is VEX on ymm registers, and no zmm register appears at all."""
    dots = [line.strip() for line in asm.splitlines() if "vpdpbusd" in line]
    assert dots, "no vpdpbusd in the assembly"
    assert all(line.startswith("{vex}") and "%ymm" in line for line in dots), dots[:4]
    assert "%zmm" not in asm


# --- detection -----------------------------------------------------------------
@pytest.mark.parametrize("target, family", [
    ({"kind": "llvm", "mcpu": "alderlake"}, X86_AVXVNNI),
    ({"kind": "llvm", "mcpu": "raptorlake"}, X86_AVXVNNI),
    ({"kind": "llvm", "mcpu": "meteorlake"}, X86_AVXVNNI),
    ({"kind": "llvm", "mcpu": "haswell", "mattr": ["+avxvnni"]}, X86_AVXVNNI),
    ({"kind": "llvm", "mcpu": "sapphirerapids"}, X86_AMX),  # AVX-VNNI too, but AVX-512 VNNI (and AMX) win
    ({"kind": "llvm", "mcpu": "znver5"}, X86_VNNI),
    ({"kind": "llvm", "mcpu": "znver4"}, X86_VNNI),
    ({"kind": "llvm", "mcpu": "haswell"}, X86_AVX2),
    ({"kind": "llvm", "mcpu": "znver3"}, X86_AVX2),
])
def test_kernel_spec_picks_avxvnni_only_without_avx512_vnni(target, family):
    assert kernel_spec(tvm.target.Target(target)) is family


def test_presets_and_host():
    assert kernel_spec(resolve_target("alderlake")) is X86_AVXVNNI
    assert kernel_spec(resolve_target("x86-avx2")) is X86_AVX2
    assert kernel_spec(resolve_target("znver3")) is X86_AVX2
    assert kernel_spec(resolve_target("x86-64")) is None
    host = host_target()
    if has_vnni(host):  # an AVX-512 VNNI host keeps the zmm family
        assert kernel_spec(host) is X86_VNNI
    assert X86_AVXVNNI.input_offset("int8") == X86_VNNI.input_offset("int8") == 128
    assert X86_AVXVNNI.weight_dtype == "int8" and X86_AVXVNNI.k_block == 4


# --- the intrinsic ---------------------------------------------------------------
def test_avxvnni_intrinsic_is_vex_on_alderlake_and_exact():
    """The 16x4 step alone: VEX vpdpbusd on ymm for alderlake (built only); run on this CPU, exact at the extremes."""
    assert register_avxvnni_intrinsic() == AVXVNNI_INTRIN
    _vex_only(tensorized_dot_16x4(AVXVNNI_INTRIN, "uint8", resolve_target("alderlake")).mod.inspect_source("asm"))
    if not RUNS:
        pytest.skip("host CPU cannot execute vpdpbusd on ymm registers: built, not run")
    lib = tensorized_dot_16x4(AVXVNNI_INTRIN, "uint8", host_target())
    assert len(_YMM_DOT.findall(lib.mod.inspect_source("asm"))) == 2
    rng = np.random.default_rng(0)
    for av in (np.full(4, 255, "uint8"), np.array([255, 0, 255, 1], "uint8"), rng.integers(0, 256, 4).astype("uint8")):
        bv = np.concatenate([np.full((8, 4), -128), rng.integers(-128, 128, (8, 4))]).astype("int8")
        out = tvm.runtime.tensor(np.full(16, 12345, "int32"))  # the kernel's init zeroes it first
        lib(tvm.runtime.tensor(av), tvm.runtime.tensor(bv), out)
        np.testing.assert_array_equal(out.numpy(), bv.astype(np.int64) @ av.astype(np.int64))


# --- code generation for an AVX-VNNI CPU ------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_alderlake_conv_and_dense_are_vex_vpdpbusd_without_zmm(dtype):
    """Built for the ``alderlake`` preset (AVX-VNNI, no AVX-512): every vpdpbusd is VEX on ymm, no zmm anywhere."""
    target = resolve_target("alderlake")
    conv, _ = _conv_module(16, 32, 10, 3, 1, 1, 1, dtype)
    dense, _ = _dense_module(dtype, n=2, k=64, m=40)
    for mod in (conv, dense):
        _vex_only(_asm(compile_packed(mod, target, kernel_spec(target))))


# --- kernels, run here -----------------------------------------------------------
@needs_ymm_vnni
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_avxvnni_conv_sweep_bit_exact(c, o, hw, k, stride, padding, groups, dtype):
    """Strides, paddings, groups, odd channels, int8 and uint8 inputs: equal to the numpy reference."""
    mod, x = _conv_module(c, o, hw, k, stride, padding, groups, dtype)
    ex = _compile_avxvnni(mod)
    if groups == 1:
        assert _YMM_DOT.search(_asm(ex))
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


@needs_ymm_vnni
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_avxvnni_extreme_values_bit_exact(dtype):
    """All-extreme activations and weights (int8 inputs reach vpdpbusd as x+128, corrected by 128*sum(w))."""
    mod, _ = _conv_module(32, 16, 6, 3, 1, 1, 1, dtype)
    hi = 255 if dtype == "uint8" else 127
    x = np.where(np.random.default_rng(3).random((2, 32, 6, 6)) < 0.8, hi, -128 if dtype == "int8" else 0).astype(dtype)
    np.testing.assert_array_equal(_run(_compile_avxvnni(mod), x), run_reference(mod, x))


@needs_ymm_vnni
@pytest.mark.parametrize("dtype, batch, k, n", [("uint8", 3, 17, 24), ("int8", 2, 3, 5), ("uint8", 1, 512, 1000)])
def test_avxvnni_dense_bit_exact(dtype, batch, k, n):
    """A dense by a constant runs as the packed 1x1 conv on 256-bit vpdpbusd (odd K/N included)."""
    mod, data = _dense_module(dtype, n=batch, k=k, m=n)
    ex = _compile_avxvnni(mod)
    assert _YMM_DOT.search(_asm(ex))
    np.testing.assert_array_equal(_run(ex, data), run_reference(mod, data))


def test_bundled_model_through_build_for_alderlake_is_vex_vpdpbusd(bundled_int8):
    """gwq_tvm.build for the ``alderlake`` preset picks the family by itself: every conv/dense on VEX vpdpbusd ymm,
    no zmm, no vpmaddwd.  Built, not run: the VEX encoding needs an AVX-VNNI CPU (the EVEX one is run above)."""
    import gwq_tvm

    asm = _asm(gwq_tvm.build(bundled_int8, resolve_target("alderlake")))
    _vex_only(asm)
    assert asm.count("{vex}\tvpdpbusd") >= 8 and "vpmaddwd" not in asm


# --- packed int4: vpshufb decode into vpdpbusd ymm ---------------------------------
@needs_ymm_vnni
@pytest.mark.parametrize("form", ["int4", "post"])
@pytest.mark.parametrize("c,o,hw,k,stride,padding,dtype", INT4_SHAPES)
def test_avxvnni_int4_conv_bit_exact(c, o, hw, k, stride, padding, dtype, form):
    """Uniform int4 and POST 4-bit weights stored two per byte, looked up by vpshufb, fed to vpdpbusd ymm."""
    mod, x = int4_conv_module(c, o, hw, k, stride, padding, dtype, form)
    assert _int4_kernels(mod, X86_AVXVNNI) == 2
    ex = _compile_avxvnni(mod)
    asm = _asm(ex)
    assert "vpshufb" in asm and _YMM_DOT.search(asm)
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


@needs_ymm_vnni
@pytest.mark.parametrize("form", ["int4", "post"])
def test_avxvnni_int4_dense_bit_exact(form):
    mod, x = int4_dense_module(1, 512, 1000, "uint8", form)
    assert _int4_kernels(mod, X86_AVXVNNI) == 1
    np.testing.assert_array_equal(_run(_compile_avxvnni(mod), x), run_reference(mod, x))


def test_alderlake_int4_conv_is_vex_vpdpbusd_after_vpshufb():
    """Built for alderlake (no AVX-512): the int4 decode and the dot product are VEX on ymm, no zmm anywhere."""
    mod, _ = int4_conv_module(16, 32, 8, 3, 1, 1, "uint8", "post")
    asm = _asm(compile_packed(mod, resolve_target("alderlake"), X86_AVXVNNI))
    _vex_only(asm)
    assert "vpshufb" in asm
