"""aarch64 i8mm kernels: ``usmmla`` packed convs (two-pixel and one-pixel steps), presets, tuning records.

Fast tests cross-compile for aarch64 with real TVM and read the assembly
(``usmmla`` on i8mm targets), check which step each conv width gets, and run
the i8mm layout (``k = 8``, +128 for int8 inputs) on this x86 host without
the ARM intrinsic against the numpy reference.  Board tests (``slow``) run
the cross-compiled programs on the emulated aarch64 board (qemu-user, whose
default ``max`` CPU implements FEAT_I8MM) and compare bit for bit.
"""

import dataclasses
import re
import warnings

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

import gwq_tvm
from gwq_tvm.reference import run_reference
from gwq_tvm.remote.bench import upload
from gwq_tvm.runtime import host_target
from gwq_tvm.schedules import layout as L
from gwq_tvm.schedules.arm import register_usmmla_pair_intrinsic
from gwq_tvm.schedules.build import compile_integer, compile_packed, packed_fused_module
from gwq_tvm.schedules.default import apply_default_schedule
from gwq_tvm.schedules.spec import AARCH64_I8MM, AARCH64_SDOT, kernel_spec
from gwq_tvm.schedules.targets import PRESETS, export_compiler, resolve_target

from conftest import tensorized_dot_16x4
from test_arm_kernels import (SDOT, _compile, _dense_module, _depthwise_module, _pool_module, _run_local, _run_remote,
                              needs_cross_gcc)
from test_schedules import SHAPES, _asm, _conv_module

I8MM = "aarch64-i8mm"
USMMLA = re.compile(r"\tusmmla\tv\d+\.4s, v\d+\.16b, v\d+\.16b")


# --- dispatch ------------------------------------------------------------------
@pytest.mark.parametrize("preset,family", [
    ("aarch64-i8mm", AARCH64_I8MM), ("cortex-a710", AARCH64_I8MM), ("neoverse-n2", AARCH64_I8MM),
    ("graviton3", AARCH64_I8MM), ("cortex-a78", AARCH64_SDOT), ("rpi5", AARCH64_SDOT),
])
def test_kernel_family_of_each_preset(preset, family):
    """i8mm -> usmmla; a core with dotprod but no i8mm (Cortex-A78, A76) keeps sdot."""
    assert kernel_spec(resolve_target(preset)) is family


def test_kernel_family_from_mcpu_or_mattr_alone():
    aarch64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
    assert kernel_spec(tvm.target.Target({**aarch64, "mcpu": "neoverse-v1"})) is AARCH64_I8MM
    assert kernel_spec(tvm.target.Target({**aarch64, "mcpu": "cortex-x1"})) is AARCH64_SDOT
    assert kernel_spec(tvm.target.Target({**aarch64, "mattr": ["+dotprod", "+i8mm"]})) is AARCH64_I8MM


def test_i8mm_reads_uint8_and_packs_eight_deep():
    """usmmla is uint8 x int8: uint8 activations as they are, int8 ones +128; thin inputs get an 8-channel block."""
    assert (AARCH64_I8MM.input_offset("uint8"), AARCH64_I8MM.input_offset("int8")) == (0, 128)
    assert AARCH64_I8MM.k_block == 8
    assert [L.channel_block(c, 8) for c in (1, 3, 8, 9, 12, 13)] == [8, 8, 8, 16, 16, 16]
    assert [L.channel_block(c) for c in (1, 3, 8, 9, 12)] == [4, 4, 8, 12, 12]


# --- the intrinsics ---------------------------------------------------------------
def _pair_kernel(stride: int):
    """A standalone ``C[p, 16] += A[p * stride, 8] . B[16, 8]`` (p < 2) tensorized with the two-pixel step."""
    a = te.placeholder((stride + 1, 8), "uint8", name="a")
    b = te.placeholder((16, 8), "int8", name="b")
    r = te.reduce_axis((0, 8), "k")
    c = te.compute((2, 16), lambda p, i: te.sum(a[p * stride, r].astype("int32") * b[i, r].astype("int32"), axis=r),
                   name="c")
    sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("c")
    sch.decompose_reduction(block, sch.get_loops(block)[0])
    sch.tensorize(sch.get_loops(block)[0], register_usmmla_pair_intrinsic(stride))
    return tvm.compile(sch.mod, resolve_target(I8MM))


def _one_pixel_kernel():
    return tensorized_dot_16x4(AARCH64_I8MM.intrinsic(), "uint8", resolve_target(I8MM), k=8)


def test_usmmla_steps_build_with_eight_usmmla():
    """Both steps build with the wheel's LLVM, each as exactly eight usmmla (one per output-channel pair)."""
    assert len(USMMLA.findall(_one_pixel_kernel().mod.inspect_source("asm"))) == 8
    for stride in (1, 2, 3):
        assert len(USMMLA.findall(_pair_kernel(stride).mod.inspect_source("asm"))) == 8


def _conv_trace(mod, target):
    """The default schedule traces of the packed convs of ``mod`` for ``target``."""
    fused = packed_fused_module(mod, target)
    traces = []
    for _, func in fused.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and "gwq_conv2d_nchwc" in func.script():
            sch = s_tir.Schedule(tvm.IRModule({"main": func}))
            apply_default_schedule(sch, kernel_spec(target))
            traces.append(str(sch.trace))
    return traces


@pytest.mark.parametrize("hw,stride,step", [(8, 1, "gwq_dot_2x16x8_usmmla_s1"), (12, 2, "gwq_dot_2x16x8_usmmla_s2"),
                                            (7, 1, "gwq_dot_16x8_usmmla")])
def test_even_widths_take_pixel_pairs(hw, stride, step):
    """An output width with an even tile is tensorized two pixels at a time (per stride), an odd one pixel by pixel."""
    mod, _ = _conv_module(16, 16, hw, 3, stride, 1, 1, "uint8")
    traces = _conv_trace(mod, resolve_target(I8MM))
    assert len(traces) == 2 and any(f'"{step}"' in t for t in traces)
    if hw % 2:  # both convs of an odd width go one pixel at a time
        assert not any("gwq_dot_2x16x8" in t for t in traces)


# --- assembly ------------------------------------------------------------------
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_conv_sweep_emits_usmmla(c, o, hw, k, stride, padding, groups, dtype):
    """Every packed conv of the sweep (strides, paddings, groups, odd channels, int8/uint8) is tensorized to usmmla."""
    mod, _ = _conv_module(c, o, hw, k, stride, padding, groups, dtype)
    asm = _asm(_compile(mod, I8MM))
    assert USMMLA.search(asm) and not SDOT.search(asm)


@pytest.mark.parametrize("m", [24, 10])
def test_dense_uses_usmmla(m):
    mod, _ = _dense_module("uint8", m=m)
    assert USMMLA.search(_asm(_compile(mod, I8MM)))


# --- the i8mm layout, run on this host ----------------------------------------------
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_i8mm_layout_bit_exact_on_host(c, o, hw, k, stride, padding, groups, dtype):
    """The i8mm layout (8-deep packed weights, int8 inputs offset by +128 and compensated) equals numpy.

    Run here with the lanes vectorized instead of tensorized; the usmmla
    steps themselves are checked on the emulated board.
    """
    mod, x = _conv_module(c, o, hw, k, stride, padding, groups, dtype)
    family = dataclasses.replace(AARCH64_I8MM, intrinsic=None, pair_intrinsic=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = compile_packed(mod, host_target(), family)
    np.testing.assert_array_equal(_run_local(ex, x), run_reference(mod, x))


def test_i8mm_packed_program_is_integer_only(bundled_int8):
    from gwq_tvm.passes.check import check_integer_only
    from gwq_tvm.schedules.pack_layout import PackInt8Layout

    report = check_integer_only(PackInt8Layout(AARCH64_I8MM)(bundled_int8.mod))
    assert report.ok, str(report)


@needs_cross_gcc
@pytest.mark.parametrize("preset", [I8MM, "graviton3"])
def test_bundled_model_cross_compiles_with_usmmla(bundled_int8, preset, tmp_path):
    """The bundled model through build(): an AArch64 shared object whose convs use usmmla."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = gwq_tvm.build(bundled_int8, resolve_target(preset))
    assert len(USMMLA.findall(_asm(ex))) >= 16
    out = tmp_path / "m.so"
    ex.export_library(str(out), fcompile=export_compiler(resolve_target(preset)))
    assert out.read_bytes()[:4] == b"\x7fELF"


# --- tuning --------------------------------------------------------------------------
def test_tuning_tasks_extract_for_i8mm():
    """MetaSchedule tasks of an i8mm target: each conv task's default schedule builds with usmmla."""
    from gwq_tvm.schedules import tune as T

    target = tvm.target.Target({**PRESETS[I8MM], "num-cores": 1})
    mod, _ = _conv_module(16, 32, 10, 3, 1, 1, 1, "uint8")
    convs = [t for t in T.extract_tuning_tasks(mod, target) if "gwq_conv2d" in t.task_name]
    assert len(convs) == 2
    for task in convs:
        sch = T._default_schedule(task.dispatched[0], T._spec(target))
        assert sch is not None
        assert USMMLA.search(T.build_candidate(sch.mod, target).inspect_source("asm"))


@pytest.mark.slow
def test_metaschedule_design_spaces_tensorize_i8mm_tasks_with_usmmla(tmp_path):
    """MetaSchedule searches i8mm tasks with usmmla: the family's design space (TVM's stock aarch64 rules know only
    sdot) tensorizes every space of a packed conv task with our one-pixel step, and each builds to usmmla."""
    from gwq_tvm.schedules import tune as T

    target = tvm.target.Target({**PRESETS[I8MM], "num-cores": 1})
    mod, _ = _conv_module(16, 32, 10, 3, 1, 1, 1, "uint8")
    task = next(t for t in T.extract_tuning_tasks(mod, target) if t.task_name.startswith("fused_gwq_conv2d"))
    (ctx,), _ = T.tune_contexts([task], tmp_path, seed=1)
    spaces = ctx.generate_design_space()
    assert spaces
    for space in spaces:
        assert f'"{AARCH64_I8MM.intrinsic()}"' in str(space.trace)
        assert all(postproc.apply(space) for postproc in ctx.space_generator.postprocs)  # RewriteTensorize
        assert USMMLA.search(T.build_candidate(space.mod, target).inspect_source("asm"))


@pytest.mark.slow
def test_compile_with_an_i8mm_tuning_database(tmp_path):
    """compile_integer applies i8mm records (the default schedules committed as records) and keeps usmmla.

    The records name our usmmla steps; opening the database registers them
    (a fresh process replaying a database needs no other import).
    """
    from tvm.s_tir import meta_schedule as ms

    from gwq_tvm.schedules import tune as T

    target = tvm.target.Target({**PRESETS[I8MM], "num-cores": 1})
    mod, _ = _conv_module(16, 32, 12, 3, 2, 1, 1, "uint8")  # output width 6: pixel pairs at stride 2
    database = T.open_database(tmp_path)
    for task in T.extract_tuning_tasks(mod, target):
        tmod = task.dispatched[0]
        sch = T._default_schedule(tmod, T._spec(target))
        args = ms.arg_info.ArgInfo.from_prim_func(tmod["main"])
        database.commit_tuning_record(ms.database.TuningRecord(sch.trace, database.commit_workload(tmod), [1e-4],
                                                               target, args))
    text = (tmp_path / T.RECORD_FILE).read_text()
    assert "gwq_dot_2x16x8_usmmla_s2" in text
    ex = compile_integer(mod, target, database=T.open_database(tmp_path))
    assert USMMLA.search(_asm(ex))


# --- on the emulated board ----------------------------------------------------------
def _load_on_board(remote, lib, tmp_path, name):
    path = tmp_path / f"{name}.so"
    lib.export_library(str(path), fcompile=export_compiler(resolve_target(I8MM)))
    return remote.load_module(upload(remote, path))


@pytest.mark.slow
def test_usmmla_steps_exact_on_board(aarch64_remote, tmp_path):
    """Both steps compute their sums exactly on the board, extremes (255 x -128, 0, 127) included.

    The standalone kernels zero their output first (their reduction's init), so ``C`` starts from anything.
    """
    dev = aarch64_remote.cpu()
    rng = np.random.default_rng(0)
    bv = rng.integers(-128, 128, (16, 8)).astype("int8")
    bv[0] = -128
    c0 = rng.integers(-2**20, 2**20, (16,)).astype("int32")
    av = np.array([255, 0, 255, 127, 1, 255, 128, 3], "uint8")
    out = tvm.runtime.tensor(c0, device=dev)
    fn = _load_on_board(aarch64_remote, _one_pixel_kernel(), tmp_path, "one")
    fn(tvm.runtime.tensor(av, device=dev), tvm.runtime.tensor(bv, device=dev), out)
    np.testing.assert_array_equal(out.numpy(), bv.astype(np.int64) @ av.astype(np.int64))
    for stride in (1, 2):
        a2 = rng.integers(0, 256, (stride + 1, 8)).astype("uint8")
        a2[0] = 255
        c2 = rng.integers(-2**20, 2**20, (2, 16)).astype("int32")
        out = tvm.runtime.tensor(c2, device=dev)
        fn = _load_on_board(aarch64_remote, _pair_kernel(stride), tmp_path, f"pair{stride}")
        fn(tvm.runtime.tensor(a2, device=dev), tvm.runtime.tensor(bv, device=dev), out)
        want = a2[[0, stride]].astype(np.int64) @ bv.astype(np.int64).T
        np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.slow
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_conv_sweep_bit_exact_on_board(aarch64_remote, tmp_path, c, o, hw, k, stride, padding, groups, dtype):
    mod, x = _conv_module(c, o, hw, k, stride, padding, groups, dtype)
    got = _run_remote(aarch64_remote, _compile(mod, I8MM), x, I8MM, tmp_path / "conv.so")
    np.testing.assert_array_equal(got, run_reference(mod, x))


@pytest.mark.slow
def test_pairs_extremes_and_dilation_bit_exact_on_board(aarch64_remote, tmp_path):
    """Even widths (pixel pairs, strides 1 and 2), saturated inputs and weights, dilation 2: exact on the board."""
    cases = [(6, 16, 10, 3, 1, 2, 1, "int8", 2), (6, 16, 10, 3, 1, 2, 1, "uint8", 2), (16, 32, 12, 3, 2, 1, 1, "uint8", 1),
             (20, 16, 8, 1, 1, 0, 1, "int8", 1)]
    for i, (c, o, hw, k, stride, padding, groups, dtype, dilation) in enumerate(cases):
        mod, _ = _conv_module(c, o, hw, k, stride, padding, groups, dtype, dilation=dilation)
        info = np.iinfo(dtype)
        x = np.where(np.random.default_rng(i).random((2, c, hw, hw)) < 0.5, info.min, info.max).astype(dtype)
        got = _run_remote(aarch64_remote, _compile(mod, I8MM), x, I8MM, tmp_path / f"ext{i}.so")
        np.testing.assert_array_equal(got, run_reference(mod, x))


@pytest.mark.slow
def test_depthwise_dense_pool_bit_exact_on_board(aarch64_remote, tmp_path):
    cases = [_depthwise_module(24, 7, 2, "int8"), _depthwise_module(5, 7, 1, "uint8"), _dense_module("uint8"),
             _dense_module("int8", m=10), _pool_module()]
    for i, (mod, x) in enumerate(cases):
        got = _run_remote(aarch64_remote, _compile(mod, I8MM), x, I8MM, tmp_path / f"k{i}.so")
        np.testing.assert_array_equal(got, run_reference(mod, x))


@pytest.mark.slow
def test_bundled_model_bit_exact_on_board(aarch64_remote, tmp_path, bundled_int8, fmnist):
    """The bundled model built with usmmla equals the numpy reference and the x86 build on the board, batch 1 and 3."""
    _, test_x, _ = fmnist
    ex = gwq_tvm.build(bundled_int8, resolve_target(I8MM))
    assert USMMLA.search(_asm(ex))
    host = gwq_tvm.build(bundled_int8)
    for batch in (1, 3):
        x = test_x[:batch]
        got = _run_remote(aarch64_remote, ex, x, I8MM, tmp_path / f"model{batch}.so")
        np.testing.assert_array_equal(got, run_reference(bundled_int8.mod, x))
        np.testing.assert_array_equal(got, _run_local(host, x))
