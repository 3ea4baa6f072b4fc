"""aarch64 kernels: sdot (dotprod) and NEON packed convs, vectorized depthwise/dense/pooling.

Fast tests cross-compile for aarch64 with real TVM and read the assembly
(``sdot`` on dotprod targets, NEON multiply-accumulate on NEON-only ones),
and run the aarch64 layouts on this x86 host (without the ARM intrinsic)
against the numpy reference.  Board tests (``slow``) run the cross-compiled
programs on an aarch64 board over TVM RPC and compare bit for bit.
"""

import dataclasses
import re
import shutil
import uuid
import warnings

import numpy as np
import pytest
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm.reference import run_reference
from gwq_tvm.remote.bench import upload
from gwq_tvm.runtime import host_target
from gwq_tvm.schedules.build import compile_integer, compile_packed, packed_fused_module
from gwq_tvm.schedules.default import ScheduleIntegerKernels
from gwq_tvm.schedules.spec import AARCH64_NEON, AARCH64_SDOT, X86_VNNI, kernel_spec
from gwq_tvm.schedules.targets import PRESETS, export_compiler, resolve_target

from conftest import tensorized_dot_16x4
from test_schedules import SHAPES, TRANSPOSED, _asm, _conv_module, _transposed_module

needs_cross_gcc = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                                     reason="apt-get install gcc-aarch64-linux-gnu")

DOTPROD, NEON = "aarch64-dotprod", "rpi4"
SDOT = re.compile(r"\tsdot\tv\d+\.4s, v\d+\.16b, v\d+\.(16b|4b\[\d\])")
NEON_MAC = re.compile(r"\t(smlal2?|umlal2?|smull2?|umull2?|mla)\tv\d+\.(4s|8h)")
"""A NEON vector multiply(-accumulate) on int32/int16 lanes."""


# --- helpers -----------------------------------------------------------------
def _compile(mod, preset):
    """compile_integer for a preset, where a kernel left unscheduled (a warning) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return compile_integer(mod, resolve_target(preset))


def _run_local(ex, x):
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def _run_remote(remote, ex, x, preset, path):
    """Export ``ex`` with the cross compiler, run ``main(x)`` on the board, return the (first) output.

    The library gets a unique name: the board's session keeps every uploaded
    file in one directory, and a library loaded twice under the same path
    would be the first one.
    """
    path = path.with_name(f"{path.stem}_{uuid.uuid4().hex[:8]}.so")
    ex.export_library(str(path), fcompile=export_compiler(resolve_target(preset)))
    vm = relax.VirtualMachine(remote.load_module(upload(remote, path)), remote.cpu())
    vm.set_input("main", tvm.runtime.tensor(np.ascontiguousarray(x), device=remote.cpu()))
    vm.invoke_stateful("main")
    out = vm.get_outputs("main")
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def _dense_module(dtype, n=3, k=17, m=24, seed=2, weight_range=(-128, 127)):
    rng = np.random.default_rng(seed)
    w = rng.integers(weight_range[0], weight_range[1] + 1, (k, m)).astype("int8")
    x = relax.Var("x", relax.TensorType((n, k), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(w), out_dtype="int32"))
            out = bb.emit_output(bb.emit(relax.op.add(y, relax.const(np.arange(m, dtype="int32")))))
        bb.emit_func_output(out)
    info = np.iinfo(dtype)
    return bb.get(), rng.integers(info.min, info.max + 1, (n, k)).astype(dtype)


def _pool_module(seed=4):
    """uint8 input -> 3x3 conv (+bias, >>8, clip 0..255) -> 3x3/2 max pool (padded) -> int32 output."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (16, 8, 3, 3)).astype("int8")
    x = relax.Var("x", relax.TensorType((1, 8, 9, 9), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1, out_dtype="int32"))
            y = bb.emit(relax.op.right_shift(y, relax.const(np.int32(8))))
            y = bb.emit(relax.op.astype(relax.op.clip(y, relax.prim_value(0), relax.prim_value(255)), "uint8"))
            y = bb.emit(relax.op.nn.max_pool2d(y, pool_size=3, strides=2, padding=1))
            out = bb.emit_output(bb.emit(relax.op.astype(y, "int32")))
        bb.emit_func_output(out)
    return bb.get(), rng.integers(0, 256, (1, 8, 9, 9)).astype("uint8")


def _depthwise_module(c, hw, stride, dtype, seed=5):
    """Only a depthwise conv and its epilogue (the pack/unpack edges multiply nothing)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (c, 1, 3, 3)).astype("int8")
    x = relax.Var("x", relax.TensorType((1, c, hw, hw), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=1, groups=c, out_dtype="int32"))
            out = bb.emit_output(bb.emit(relax.op.right_shift(y, relax.const(np.int32(3)))))
        bb.emit_func_output(out)
    info = np.iinfo(dtype)
    return bb.get(), rng.integers(info.min, info.max + 1, (1, c, hw, hw)).astype(dtype)


# --- dispatch ------------------------------------------------------------------
@pytest.mark.parametrize("preset,family", [
    ("aarch64-dotprod", AARCH64_SDOT), ("rpi5", AARCH64_SDOT), ("cortex-a76", AARCH64_SDOT),
    ("neoverse-n1", AARCH64_SDOT), ("aarch64-neon", AARCH64_NEON), ("rpi4", AARCH64_NEON), ("x86-64", None),
])
def test_kernel_family_of_each_preset(preset, family):
    """One place picks the family: dotprod -> sdot, NEON only -> NEON lanes, generic x86 -> none (plain compile)."""
    assert kernel_spec(resolve_target(preset)) is family


def test_kernel_family_of_vnni_and_mcpu_only_targets():
    assert kernel_spec(tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})) is X86_VNNI
    a76 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    assert kernel_spec(a76) is AARCH64_SDOT  # dotprod from mcpu alone


def test_input_offsets_of_the_families():
    """sdot reads uint8 as x - 128, VNNI reads int8 as x + 128, NEON takes both as they are."""
    assert (AARCH64_SDOT.input_offset("uint8"), AARCH64_SDOT.input_offset("int8")) == (-128, 0)
    assert (X86_VNNI.input_offset("int8"), X86_VNNI.input_offset("uint8")) == (128, 0)
    assert (AARCH64_NEON.input_offset("uint8"), AARCH64_NEON.input_offset("int8")) == (0, 0)
    with pytest.raises(ValueError, match="k_block"):
        dataclasses.replace(AARCH64_NEON, k_block=3)


# --- the intrinsic ---------------------------------------------------------------
def _sdot_kernel():
    """A standalone C[16] += A[4] . B[16, 4] tensorized with our sdot intrinsic, built for aarch64-dotprod."""
    return tensorized_dot_16x4(AARCH64_SDOT.intrinsic(), "int8", resolve_target(DOTPROD))


def test_sdot_intrinsic_builds_with_four_sdots():
    """Our 16x4 intrinsic builds with the wheel's LLVM and is exactly four sdot on 16-byte vectors."""
    asm = _sdot_kernel().mod.inspect_source("asm")
    assert len(SDOT.findall(asm)) == 4


# --- assembly: convs, depthwise, dense, pooling -----------------------------------
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_conv_sweep_dotprod_emits_sdot(c, o, hw, k, stride, padding, groups, dtype):
    """Every packed conv of the sweep (strides, paddings, groups, odd channels, int8/uint8) is tensorized to sdot."""
    mod, _ = _conv_module(c, o, hw, k, stride, padding, groups, dtype)
    asm = _asm(_compile(mod, DOTPROD))
    assert SDOT.search(asm)


@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_conv_sweep_neon_uses_vector_macs(c, o, hw, k, stride, padding, groups, dtype):
    """On a NEON-only target (Cortex-A72) the convs are vector multiply-accumulates, and no sdot is emitted."""
    mod, _ = _conv_module(c, o, hw, k, stride, padding, groups, dtype)
    asm = _asm(_compile(mod, NEON))
    assert NEON_MAC.search(asm) and "sdot" not in asm


@pytest.mark.parametrize("preset", [DOTPROD, NEON])
@pytest.mark.parametrize("c,stride,dtype", [(16, 1, "uint8"), (24, 2, "int8"), (5, 1, "uint8")])
def test_depthwise_is_vectorized(preset, c, stride, dtype):
    mod, _ = _depthwise_module(c, 7, stride, dtype)
    assert NEON_MAC.search(_asm(_compile(mod, preset)))


@pytest.mark.parametrize("m", [24, 10])
def test_dense_uses_the_family_instruction(m):
    """Dense runs as the packed 1x1 conv: sdot on a dotprod target, NEON multiply-accumulates on Cortex-A72."""
    mod, _ = _dense_module("uint8", m=m)
    assert SDOT.search(_asm(_compile(mod, DOTPROD)))
    asm = _asm(_compile(mod, NEON))
    assert NEON_MAC.search(asm) and "sdot" not in asm


@pytest.mark.parametrize("preset", [DOTPROD, NEON])
def test_max_pool_is_vectorized(preset):
    """Max pooling stays in the packed layout: a byte-vector max over the 16 channel lanes."""
    mod, _ = _pool_module()
    assert re.search(r"\tumax\tv\d+\.16b", _asm(_compile(mod, preset)))


def test_failed_schedule_keeps_plain_loops_with_a_warning():
    """A kernel whose schedule fails (here: sdot asked to tensorize a uint8 VNNI-packed conv) keeps plain loops."""
    mod, x = _conv_module(5, 17, 8, 3, 2, 1, 1, "uint8")
    target = resolve_target(DOTPROD)
    fused = packed_fused_module(mod, target, X86_VNNI)
    with pytest.warns(UserWarning, match="default schedule failed"):
        scheduled = ScheduleIntegerKernels(AARCH64_SDOT)(fused)
    assert sum(1 for _, f in scheduled.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and not f.attrs.get("tirx.is_scheduled", False)) == 2


# --- the aarch64 layouts, run on this host -----------------------------------------
@pytest.mark.parametrize("family", [dataclasses.replace(AARCH64_SDOT, intrinsic=None), AARCH64_NEON],
                         ids=["sdot-layout", "neon"])
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES[:5])
def test_aarch64_layouts_bit_exact_on_host(family, c, o, hw, k, stride, padding, groups, dtype):
    """The sdot layout (int8 reads, uint8 offset by -128 and compensated) and the NEON one equal numpy.

    The sdot family runs here with its lanes vectorized instead of tensorized:
    the layout, the offset and its compensation are checked without the
    board; the intrinsic itself is checked on the board.
    """
    mod, x = _conv_module(c, o, hw, k, stride, padding, groups, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = compile_packed(mod, host_target(), family)
    np.testing.assert_array_equal(_run_local(ex, x), run_reference(mod, x))


# --- the bundled model and tuning tasks ---------------------------------------------
@pytest.mark.parametrize("family", [AARCH64_SDOT, AARCH64_NEON], ids=["sdot", "neon"])
def test_arm_packed_program_is_integer_only(bundled_int8, family):
    """Packing for an aarch64 family keeps the program integer-only (the -128 offset and its correction included)."""
    from gwq_tvm.passes.check import check_integer_only
    from gwq_tvm.schedules.pack_layout import PackInt8Layout

    report = check_integer_only(PackInt8Layout(family)(bundled_int8.mod))
    assert report.ok, str(report)



@needs_cross_gcc
@pytest.mark.parametrize("preset,mac", [(DOTPROD, SDOT), (NEON, NEON_MAC)])
def test_bundled_model_cross_compiles_with_arm_kernels(bundled_int8, preset, mac, tmp_path):
    """The bundled model through build(): an AArch64 shared object whose convs use sdot (dotprod) / NEON MACs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = gwq_tvm.build(bundled_int8, resolve_target(preset))
    asm = _asm(ex)
    assert len(mac.findall(asm)) >= 16
    if preset == NEON:
        assert "sdot" not in asm
    out = tmp_path / "m.so"
    ex.export_library(str(out), fcompile=export_compiler(resolve_target(preset)))
    header = out.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183


def test_tuning_tasks_extract_for_aarch64():
    """MetaSchedule tasks come from the same packed module; each task's default schedule builds, the conv with sdot."""
    from gwq_tvm.schedules import tune as T

    target = tvm.target.Target({**PRESETS["rpi5"], "num-cores": 1})
    mod, _ = _conv_module(16, 32, 10, 3, 1, 1, 1, "uint8")
    tasks = T.extract_tuning_tasks(mod, target)
    convs = [t for t in tasks if "gwq_conv2d" in t.task_name]
    assert len(convs) == 2
    for task in convs:
        sch = T._default_schedule(task.dispatched[0], T._spec(target))
        assert sch is not None
        assert SDOT.search(T.build_candidate(sch.mod, target).inspect_source("asm"))


@pytest.mark.slow
def test_metaschedule_design_spaces_tensorize_aarch64_tasks_with_sdot(tmp_path):
    """MetaSchedule's own aarch64 rules tensorize a uint8-input packed conv task with sdot, and it builds.

    Its candidates use TVM's stock ``dot_4x4_i8i8s32_sdot``, which (unlike the
    stock VNNI intrinsic) builds with the wheel's LLVM.  Not every sampled
    candidate builds (TVM's vectorizer rejects some), so two seeded searches'
    design spaces must hold at least one that does.
    """
    from gwq_tvm.schedules import tune as T

    target = tvm.target.Target({**PRESETS["rpi5"], "num-cores": 1})
    mod, _ = _conv_module(16, 32, 10, 3, 1, 1, 1, "uint8")
    (task,) = [t for t in T.extract_tuning_tasks(mod, target) if t.task_name.startswith("fused_gwq_conv2d")]
    built = []
    for seed in (1, 2):
        (ctx,), _ = T.tune_contexts([task], tmp_path, seed=seed)
        for space in ctx.generate_design_space():
            assert "dot_4x4_i8i8s32_sdot" in str(space.trace)
            if all(postproc.apply(space) for postproc in ctx.space_generator.postprocs):  # RewriteTensorize
                try:
                    built.append(T.build_candidate(space.mod, target).inspect_source("asm"))
                except tvm.error.TVMError:
                    pass
    assert any(SDOT.search(asm) for asm in built)


@pytest.mark.slow
def test_compile_with_an_aarch64_tuning_database(tmp_path):
    """compile_integer applies aarch64 records (here: the default schedules committed as records) and keeps sdot."""
    from tvm.s_tir import meta_schedule as ms

    from gwq_tvm.schedules import tune as T

    target = tvm.target.Target({**PRESETS["rpi5"], "num-cores": 1})
    mod, _ = _conv_module(16, 32, 10, 3, 1, 1, 1, "uint8")
    database = T.open_database(tmp_path)
    for task in T.extract_tuning_tasks(mod, target):
        tmod = task.dispatched[0]
        sch = T._default_schedule(tmod, T._spec(target))
        args = ms.arg_info.ArgInfo.from_prim_func(tmod["main"])
        database.commit_tuning_record(ms.database.TuningRecord(sch.trace, database.commit_workload(tmod), [1e-4],
                                                               target, args))
    fused = packed_fused_module(mod, target)
    with target, T.open_database(tmp_path):
        applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
    assert all(f.attrs.get("tirx.is_scheduled", False) for _, f in applied.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc))
    ex = compile_integer(mod, target, database=T.open_database(tmp_path))
    assert SDOT.search(_asm(ex))


# --- on the board ------------------------------------------------------------------
@pytest.mark.slow
def test_sdot_intrinsic_exact_on_board(aarch64_remote, tmp_path):
    """The intrinsic computes C += A . B[i] exactly, extremes (-128 x -128, 127 x -128) included."""
    lib = _sdot_kernel()
    path = tmp_path / "sdot.so"
    lib.export_library(str(path), fcompile=export_compiler(resolve_target(DOTPROD)))
    fn = aarch64_remote.load_module(upload(aarch64_remote, path))
    dev = aarch64_remote.cpu()
    av = np.array([-128, 127, -128, 7], "int8")
    bv = np.random.default_rng(0).integers(-128, 128, (16, 4)).astype("int8")
    bv[0] = -128
    out = tvm.runtime.tensor(np.zeros(16, "int32"), device=dev)
    fn(tvm.runtime.tensor(av, device=dev), tvm.runtime.tensor(bv, device=dev), out)
    np.testing.assert_array_equal(out.numpy(), bv.astype(np.int64) @ av.astype(np.int64))


@pytest.mark.slow
@pytest.mark.parametrize("preset", [DOTPROD, NEON])
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_conv_sweep_bit_exact_on_board(aarch64_remote, tmp_path, preset, c, o, hw, k, stride, padding, groups, dtype):
    mod, x = _conv_module(c, o, hw, k, stride, padding, groups, dtype)
    got = _run_remote(aarch64_remote, _compile(mod, preset), x, preset, tmp_path / "conv.so")
    np.testing.assert_array_equal(got, run_reference(mod, x))


@pytest.mark.slow
@pytest.mark.parametrize("preset", [DOTPROD, NEON])
def test_transposed_convs_bit_exact_on_board(aarch64_remote, tmp_path, preset):
    """Transposed convs as packed convs of their zero-inserted input (plain, grouped, depthwise)."""
    for i, geometry in enumerate(TRANSPOSED[:3] + TRANSPOSED[5:]):
        for dtype in ("int8", "uint8"):
            mod, x = _transposed_module(*geometry, dtype)
            got = _run_remote(aarch64_remote, _compile(mod, preset), x, preset, tmp_path / f"t{i}_{dtype}.so")
            np.testing.assert_array_equal(got, run_reference(mod, x))


@pytest.mark.slow
@pytest.mark.parametrize("preset", [DOTPROD, NEON])
def test_extreme_values_and_dilation_bit_exact_on_board(aarch64_remote, tmp_path, preset):
    """Saturated inputs (-128/127 and 0/255) and weights, dilation 2: the -128 offset and its padding are exact."""
    for dtype, lo, hi in (("int8", -128, 127), ("uint8", 0, 255)):
        mod, _ = _conv_module(6, 16, 9, 3, 1, 2, 1, dtype, dilation=2)
        x = np.where(np.random.default_rng(3).random((2, 6, 9, 9)) < 0.5, lo, hi).astype(dtype)
        got = _run_remote(aarch64_remote, _compile(mod, preset), x, preset, tmp_path / f"ext_{dtype}.so")
        np.testing.assert_array_equal(got, run_reference(mod, x))


@pytest.mark.slow
@pytest.mark.parametrize("preset", [DOTPROD, NEON])
def test_depthwise_dense_pool_bit_exact_on_board(aarch64_remote, tmp_path, preset):
    cases = [_depthwise_module(24, 7, 2, "int8"), _depthwise_module(5, 7, 1, "uint8"), _dense_module("uint8"),
             _dense_module("int8", m=10), _pool_module()]
    for i, (mod, x) in enumerate(cases):
        got = _run_remote(aarch64_remote, _compile(mod, preset), x, preset, tmp_path / f"k{i}.so")
        np.testing.assert_array_equal(got, run_reference(mod, x))


@pytest.mark.slow
@pytest.mark.parametrize("preset", [DOTPROD, NEON])
def test_bundled_model_bit_exact_on_board(aarch64_remote, tmp_path, bundled_int8, fmnist, preset):
    """The bundled model on the board equals the numpy reference and the x86 build, at batch 1 and 3."""
    _, test_x, _ = fmnist
    ex = gwq_tvm.build(bundled_int8, resolve_target(preset))
    host = gwq_tvm.build(bundled_int8)
    for batch in (1, 3):
        x = test_x[:batch]
        got = _run_remote(aarch64_remote, ex, x, preset, tmp_path / f"model{batch}.so")
        np.testing.assert_array_equal(got, run_reference(bundled_int8.mod, x))
        np.testing.assert_array_equal(got, _run_local(host, x))


if __name__ == "__main__":
    tvm.testing.main()
