"""The x86-avx2 kernel family: ``vpmaddwd`` on int16-widened operands, and ``vpmaddubsw`` for convs whose
weights fit 7 bits, bit-exact against the numpy reference.

The numeric tests need a CPU with AVX2 (they run the AVX2 code here, on any
AVX2 CPU, forced with the ``x86-avx2`` preset or :func:`compile_packed`);
detection and code generation are checked everywhere.
"""

import numpy as np
import pytest
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm.schedules.pack_layout import PackInt8Layout
from gwq_tvm.reference import run_reference
from gwq_tvm.runtime import host_target
from gwq_tvm.schedules.avx2 import (AVX2_INTRIN, NARROW_INTRIN, NARROW_WEIGHT_MAX, has_avx2, register_avx2_intrinsic,
                                    register_avx2_narrow_intrinsic)
from gwq_tvm.schedules.build import compile_packed
from gwq_tvm.schedules.spec import X86_AVX2, X86_AVX2_NARROW, X86_AVXVNNI, X86_VNNI, kernel_spec
from gwq_tvm.schedules.targets import resolve_target

from conftest import tensorized_dot_16x4
from test_arm_kernels import _dense_module
from test_int4_kernels import SHAPES as INT4_SHAPES
from test_int4_kernels import _int4_kernels
from test_int4_kernels import conv_module as int4_conv_module
from test_int4_kernels import dense_module as int4_dense_module
from test_schedules import SHAPES, TRANSPOSED, _asm, _conv_module, _run, _transposed_module

AVX2 = has_avx2(host_target())
VNNI_HOST = kernel_spec(host_target()) is X86_VNNI
needs_avx2 = pytest.mark.skipif(not AVX2, reason="host CPU has no AVX2 (the x86-avx2 kernels cannot run here)")


def _holds_pair_dot(asm: str) -> bool:
    """The family's int16 pair dot, ``vpmaddwd``.  Built for this CPU's mcpu (``_compile_avx2``), LLVM fuses
    ``vpmaddwd`` + ``vpaddd`` into ``vpdpwssd`` where the CPU has AVX-512 VNNI (seen on Zen 4): the same exact,
    non-saturating int16 pair products, accumulated in the same instruction.  Only there is it accepted."""
    return "vpmaddwd" in asm or (VNNI_HOST and "vpdpwssd" in asm and "vpdpwssds" not in asm)


def _compile_avx2(mod):
    """The module packed and scheduled for the AVX2 family, built for this CPU (forced on a VNNI CPU too)."""
    return compile_packed(mod, host_target(), X86_AVX2)


# --- detection -----------------------------------------------------------------
@pytest.mark.parametrize("mcpu", ["haswell", "skylake", "znver2", "znver3"])  # alderlake: x86-avxvnni
def test_avx2_cpus_without_vnni_get_the_avx2_family(mcpu):
    assert kernel_spec(tvm.target.Target({"kind": "llvm", "mcpu": mcpu})) is X86_AVX2


def test_avx2_detection_and_presets():
    assert kernel_spec(resolve_target("x86-avx2")) is X86_AVX2
    assert kernel_spec(resolve_target("alderlake")) is X86_AVXVNNI  # AVX-VNNI beats AVX2 (test_avxvnni_kernels)
    assert kernel_spec(tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})) is X86_VNNI  # VNNI wins
    assert kernel_spec(tvm.target.Target({"kind": "llvm", "mattr": ["+avx2"]})) is X86_AVX2
    assert kernel_spec(tvm.target.Target("llvm")) is None  # generic x86-64: no AVX2
    assert not has_avx2(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}))


def test_avx2_family_widens_instead_of_offsetting():
    assert X86_AVX2.weight_dtype == "int16" and X86_VNNI.weight_dtype == "int8"
    assert (X86_AVX2.input_offset("int8"), X86_AVX2.input_offset("uint8")) == (0, 0)


# --- the intrinsic ---------------------------------------------------------------
def test_avx2_intrinsic_builds_emits_vpmaddwd_and_is_exact():
    """The 16x2 int16 step alone: vpmaddwd in the assembly, exact at the 8-bit extremes (where vpmaddubsw saturates)."""
    lib = tensorized_dot_16x4(register_avx2_intrinsic(), "int16", resolve_target("x86-avx2"), b_dtype="int16", k=2)
    assert AVX2_INTRIN == register_avx2_intrinsic()
    assert "vpmaddwd" in lib.mod.inspect_source("asm")
    if not AVX2:
        pytest.skip("host CPU has no AVX2: built, not run")
    rng = np.random.default_rng(0)
    for av in (np.array([255, 255], "int16"), np.array([-128, 255], "int16"), rng.integers(-128, 256, 2).astype("int16")):
        bv = np.concatenate([np.full((8, 2), -128), rng.integers(-128, 128, (8, 2))]).astype("int16")
        out = tvm.runtime.tensor(np.full(16, 12345, "int32"))  # the kernel's init zeroes it first
        lib(tvm.runtime.tensor(av), tvm.runtime.tensor(bv), out)
        np.testing.assert_array_equal(out.numpy(), bv.astype(np.int64) @ av.astype(np.int64))


# --- kernels -------------------------------------------------------------------
def test_pack_pass_stores_int16_weights_for_avx2():
    """The AVX2 layout: conv weights packed at compile time as int16, one int16 pair innermost."""
    mod, _ = _conv_module(5, 17, 8, 3, 2, 1, 1, "int8")
    packed = PackInt8Layout(X86_AVX2)(mod)
    weights = [b.value.args[1].fields[1] for blk in packed["main"].body.blocks for b in blk.bindings
               if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"
               and b.value.args[0].name_hint.startswith("gwq_conv2d")]
    assert len(weights) == 2
    assert all(str(w.ty.dtype) == "int16" and int(w.ty.shape.values[-1]) == 2 for w in weights)


@needs_avx2
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_avx2_conv_sweep_bit_exact(c, o, hw, k, stride, padding, groups, dtype):
    """Strides, paddings, groups, odd channels, int8 and uint8 inputs: equal to the numpy reference."""
    mod, x = _conv_module(c, o, hw, k, stride, padding, groups, dtype)
    ex = _compile_avx2(mod)
    if groups == 1:
        assert _holds_pair_dot(_asm(ex))
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


@needs_avx2
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_avx2_extreme_values_bit_exact(dtype):
    """All-extreme activations and weights: 255 x -128 pairs are where vpmaddubsw's int16 would saturate."""
    mod, _ = _conv_module(32, 16, 6, 3, 1, 1, 1, dtype)
    hi = 255 if dtype == "uint8" else 127
    x = np.where(np.random.default_rng(3).random((2, 32, 6, 6)) < 0.8, hi, -128 if dtype == "int8" else 0).astype(dtype)
    np.testing.assert_array_equal(_run(_compile_avx2(mod), x), run_reference(mod, x))


@needs_avx2
@pytest.mark.parametrize("dtype, batch, k, n", [("uint8", 3, 17, 24), ("int8", 2, 3, 5), ("uint8", 1, 512, 1000)])
def test_avx2_dense_bit_exact(dtype, batch, k, n):
    """A dense by a constant runs as the packed 1x1 conv on vpmaddwd (odd K/N included)."""
    mod, data = _dense_module(dtype, n=batch, k=k, m=n)
    ex = _compile_avx2(mod)
    assert _holds_pair_dot(_asm(ex))
    np.testing.assert_array_equal(_run(ex, data), run_reference(mod, data))


@needs_avx2
def test_bundled_model_through_build_is_bit_exact_with_vpmaddwd(bundled_int8, fmnist):
    """gwq_tvm.build for the x86-avx2 preset: every conv/dense on vpmaddwd, logits equal to the reference."""
    _, test_x, _ = fmnist
    ex = gwq_tvm.build(bundled_int8, resolve_target("x86-avx2"))
    asm = _asm(ex)
    assert asm.count("vpmaddwd") >= 8 and "vpmaddubsw" not in asm
    x = test_x[:48]
    np.testing.assert_array_equal(_run(ex, x), run_reference(bundled_int8.mod, x))


@needs_avx2
@pytest.mark.parametrize("geometry", TRANSPOSED, ids=lambda g: "x".join(map(str, g)))
def test_avx2_transposed_conv_bit_exact(geometry):
    """Transposed convs (zero-inserted input, flipped taps) in the AVX2 family's widened layout."""
    for dtype in ("int8", "uint8"):
        mod, x = _transposed_module(*geometry, dtype)
        np.testing.assert_array_equal(_run(_compile_avx2(mod), x), run_reference(mod, x))


# --- the narrow-weight step: vpmaddubsw where |w| <= 64 ---------------------------
NARROW = (-NARROW_WEIGHT_MAX, NARROW_WEIGHT_MAX)


def _conv_weights(packed) -> list:
    return [b.value.args[1].fields[1] for blk in packed["main"].body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"
            and b.value.args[0].name_hint.startswith("gwq_conv2d")]


def test_narrow_spec_is_chosen_by_the_weight_bound():
    """[-64, 64] takes the vpmaddubsw step (255 * 64 * 2 = 32640 fits int16); one weight of 65 or -65 does not."""
    assert X86_AVX2.for_weight(np.array([-64, 3, 64], np.int8)) is X86_AVX2_NARROW
    assert X86_AVX2.for_weight(np.array([-65, 3, 64], np.int8)) is X86_AVX2
    assert X86_AVX2.for_weight(np.array([-64, 65], np.int8)) is X86_AVX2
    assert X86_VNNI.for_weight(np.zeros(4, np.int8)) is X86_VNNI  # families without a narrow step keep theirs
    assert 255 * NARROW_WEIGHT_MAX * 2 < 2**15 <= 255 * (NARROW_WEIGHT_MAX + 1) * 2
    assert X86_AVX2_NARROW.input_offset("int8") == 128 and X86_AVX2_NARROW.weight_dtype == "int8"


def test_pack_pass_keeps_narrow_weights_int8_four_deep():
    """Weights within 7 bits: int8, four deep (the VNNI layout); one step beyond: int16 pairs as before."""
    for weight_range, dtype, k in ((NARROW, "int8", 4), ((-65, 64), "int16", 2)):
        mod, _ = _conv_module(5, 17, 8, 3, 2, 1, 1, "int8", weight_range=weight_range)
        weights = _conv_weights(PackInt8Layout(X86_AVX2)(mod))
        assert len(weights) == 2
        assert all(str(w.ty.dtype) == dtype and int(w.ty.shape.values[-1]) == k for w in weights)


def test_narrow_intrinsic_emits_vpmaddubsw_exact_within_the_bound():
    """The 16x4 u8 x s8 step alone: vpmaddubsw in the assembly, exact at 255 x +-64; at 255 x -128 the int16 pair
    sum saturates (why the layout pass checks the bound)."""
    lib = tensorized_dot_16x4(register_avx2_narrow_intrinsic(), "uint8", resolve_target("x86-avx2"))
    assert NARROW_INTRIN == register_avx2_narrow_intrinsic()
    assert "vpmaddubsw" in lib.mod.inspect_source("asm")
    if not AVX2:
        pytest.skip("host CPU has no AVX2: built, not run")

    def run(av, bv):
        out = tvm.runtime.tensor(np.full(16, 12345, "int32"))  # the kernel's init zeroes it first
        lib(tvm.runtime.tensor(av), tvm.runtime.tensor(bv), out)
        return out.numpy()

    rng = np.random.default_rng(1)
    top = np.full(4, 255, "uint8")
    for av in (top, rng.integers(0, 256, 4).astype("uint8")):
        for bv in (np.full((16, 4), -64), np.full((16, 4), 64), rng.integers(-64, 65, (16, 4))):
            bv = bv.astype("int8")
            np.testing.assert_array_equal(run(av, bv), bv.astype(np.int64) @ av.astype(np.int64))
    assert run(top, np.full((16, 4), -128, "int8"))[0] == 2 * -(2**15)  # saturated: not -130560


@needs_avx2
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_avx2_narrow_conv_sweep_bit_exact(c, o, hw, k, stride, padding, groups, dtype):
    """The same sweep with 7-bit weights (both ends of [-64, 64] present): vpmaddubsw, equal to the reference."""
    mod, x = _conv_module(c, o, hw, k, stride, padding, groups, dtype, weight_range=NARROW)
    ex = _compile_avx2(mod)
    if groups == 1:
        assert "vpmaddubsw" in _asm(ex)
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


@needs_avx2
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("weight", [-NARROW_WEIGHT_MAX, NARROW_WEIGHT_MAX])
def test_avx2_narrow_extreme_values_bit_exact(dtype, weight):
    """Every weight at -64 or at +64 against mostly extreme activations: int16 pair sums of +-32640, the edge of
    exactness, wherever two top activations meet."""
    mod, _ = _conv_module(32, 16, 6, 3, 1, 1, 1, dtype, weight_range=(weight, weight))
    hi = 255 if dtype == "uint8" else 127
    x = np.where(np.random.default_rng(3).random((2, 32, 6, 6)) < 0.8, hi, -128 if dtype == "int8" else 0).astype(dtype)
    ex = _compile_avx2(mod)
    assert "vpmaddubsw" in _asm(ex)
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


@needs_avx2
@pytest.mark.parametrize("dtype, batch, k, n", [("uint8", 3, 17, 24), ("int8", 1, 512, 1000)])
def test_avx2_narrow_dense_bit_exact(dtype, batch, k, n):
    """A dense with 7-bit weights: the packed 1x1 conv on vpmaddubsw."""
    mod, data = _dense_module(dtype, n=batch, k=k, m=n, weight_range=NARROW)
    ex = _compile_avx2(mod)
    assert "vpmaddubsw" in _asm(ex)
    np.testing.assert_array_equal(_run(ex, data), run_reference(mod, data))


@needs_avx2
def test_bundled_model_at_7_weight_bits_runs_on_vpmaddubsw_bit_exact(fmnist):
    """--weight-bits 7 on the AVX2 preset: every conv/dense on vpmaddubsw (none widened), logits equal to the reference."""
    calib, test_x, _ = fmnist
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:256], gwq_tvm.QuantConfig(weight_bits=7))
    ex = gwq_tvm.build(q, resolve_target("x86-avx2"))
    asm = _asm(ex)
    assert asm.count("vpmaddubsw") >= 8
    x = test_x[:48]
    np.testing.assert_array_equal(_run(ex, x), run_reference(q.mod, x))


def test_compile_names_the_8_bit_layers_that_miss_the_narrow_step(bundled_int8, capsys):
    """'compile' on an AVX2 target says how many layers run widened and which option puts them on vpmaddubsw;
    nothing on a family without a narrow step, nor when no layer is above 7 bits."""
    import dataclasses

    from gwq_tvm.cli import _narrow_weight_hint

    plan = bundled_int8.plan
    _narrow_weight_hint(plan, resolve_target("x86-avx2"))
    line = capsys.readouterr().out
    assert line.startswith(f"x86-avx2: {len(plan.layers)} of {len(plan.layers)} weight layers") and "--weight-bits 7" in line
    _narrow_weight_hint(plan, tvm.target.Target({"kind": "llvm", "mcpu": "znver4"}))
    seven = dataclasses.replace(plan, layers={n: dataclasses.replace(w, bits=7) for n, w in plan.layers.items()})
    _narrow_weight_hint(seven, resolve_target("x86-avx2"))
    assert capsys.readouterr().out == ""


# --- packed int4 on the narrow step: vpshufb decode + vpmaddubsw -------------------
@needs_avx2
@pytest.mark.parametrize("form", ["int4", "post"])
@pytest.mark.parametrize("c,o,hw,k,stride,padding,dtype", INT4_SHAPES)
def test_avx2_int4_conv_bit_exact(c, o, hw, k, stride, padding, dtype, form):
    """Uniform int4 and POST 4-bit weights: two codes per byte, decoded by vpshufb into the vpmaddubsw step."""
    mod, x = int4_conv_module(c, o, hw, k, stride, padding, dtype, form)
    assert _int4_kernels(mod, X86_AVX2) == 2
    ex = _compile_avx2(mod)
    asm = _asm(ex)
    assert "vpshufb" in asm and "vpmaddubsw" in asm
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


@needs_avx2
@pytest.mark.parametrize("form", ["int4", "post"])
@pytest.mark.parametrize("batch,k,n,dtype", [(3, 17, 24, "int8"), (1, 512, 1000, "uint8")])
def test_avx2_int4_dense_bit_exact(batch, k, n, dtype, form):
    mod, x = int4_dense_module(batch, k, n, dtype, form)
    assert _int4_kernels(mod, X86_AVX2) == 1
    np.testing.assert_array_equal(_run(_compile_avx2(mod), x), run_reference(mod, x))


@needs_avx2
def test_avx2_lookup_beyond_the_narrow_bound_is_not_decoded_into_vpmaddubsw():
    """A 16-level lookup whose used levels reach 100 fits nibbles but not the narrow step: the AVX2 family keeps
    the per-call lookup and the widened int16 kernel (exact), where VNNI, which has no bound, packs nibbles."""
    rng = np.random.default_rng(5)
    table = np.array([0, 1, -1, 2, -2, 4, -4, 8, -8, 16, -16, 32, -32, 64, -64, 100], np.int8)
    codes = rng.integers(0, 16, (16, 8, 3, 3)).astype("uint8")
    codes.flat[0] = 15
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            w = bb.emit(relax.op.take(relax.const(table), relax.const(codes), axis=0, mode="clip"))
            out = bb.emit_output(bb.emit(relax.op.nn.conv2d(x, w, padding=1, out_dtype="int32")))
        bb.emit_func_output(out)
    mod = bb.get()
    assert (_int4_kernels(mod, X86_AVX2), _int4_kernels(mod, X86_VNNI)) == (0, 1)
    data = np.full((1, 8, 6, 6), 255, np.uint8)
    ex = _compile_avx2(mod)
    assert "vpmaddubsw" not in _asm(ex)
    np.testing.assert_array_equal(_run(ex, data), run_reference(mod, data))
