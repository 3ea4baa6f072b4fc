"""Fast integer kernels: packed VNNI layout, default schedules, the intrinsic workaround.

Every numeric test compiles with real TVM and compares against the numpy
reference interpreter (:mod:`gwq_tvm.reference`) bit for bit.
"""

import shutil
import warnings

import numpy as np
import pytest
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm.passes.check import check_integer_only
from gwq_tvm.schedules.pack_layout import PackInt8Layout
from gwq_tvm.reference import run_reference
from gwq_tvm.runtime import host_target
from gwq_tvm.schedules import layout as L
from gwq_tvm.schedules.build import compile_integer, packed_fused_module
from gwq_tvm.schedules.default import ScheduleIntegerKernels
from gwq_tvm.schedules.spec import X86_VNNI, kernel_spec
from gwq_tvm.schedules.vnni import has_vnni, register_vnni_intrinsic

from conftest import tensorized_dot_16x4

VNNI = has_vnni(host_target())
needs_vnni = pytest.mark.skipif(not VNNI, reason="host CPU has no AVX-512 VNNI")


def _run(ex, x):
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def _asm(ex) -> str:
    return "".join(m.inspect_source("asm") for m in ex.mod.imports if m.kind == "llvm")


def _call_tir_names(mod) -> list[str]:
    main = mod["main"]
    return [b.value.args[0].name_hint for blk in main.body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"]


def _compile_strict(mod):
    """compile_integer where a kernel left unscheduled (a warning) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return compile_integer(mod, host_target())


def _to_int8(y, shift: int):
    """``clip(y >> shift, -128, 127)`` as int8: the requantize between two convs of the test modules."""
    return relax.op.astype(relax.op.clip(relax.op.right_shift(y, relax.const(np.int32(shift))), relax.prim_value(-128),
                                         relax.prim_value(127)), "int8")


def _assert_vnni_bit_exact(mod, x, dot: bool = True):
    """Compiled strictly for this host, ``mod`` holds ``vpdpbusd`` (when ``dot``) and equals the numpy reference."""
    ex = _compile_strict(mod)
    if dot:
        assert "vpdpbusd" in _asm(ex)
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


def _conv_module(c, o, hw, k, stride, padding, groups, dtype, dilation=1, seed=0, weight_range=(-128, 127)):
    """x -> conv -> +bias -> (>>7, clip, int8) -> conv 1x1 -> + residual-free epilogue -> int32 output.

    Two convs in a row check that the packed layout flows from one to the next
    (the second conv has a signed int8 input, so it takes the +128 path).
    Both weights are drawn from ``weight_range`` (inclusive), and hold both its ends.
    """
    rng = np.random.default_rng(seed)
    lo, hi = weight_range

    def weight(shape):
        w = rng.integers(lo, hi + 1, shape)
        w.flat[:2] = lo, hi
        return w.astype("int8")

    w1 = weight((o, c // groups, k, k))
    w2 = weight((7, o, 1, 1))
    bias = rng.integers(-5000, 5000, (1, o, 1, 1)).astype("int32")
    x = relax.Var("x", relax.TensorType((2, c, hw, hw), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), strides=stride, padding=padding, dilation=dilation,
                                           groups=groups, out_dtype="int32"))
            y = bb.emit(relax.op.add(y, relax.const(bias)))
            y = bb.emit(relax.op.right_shift(y, relax.const(np.int32(7))))
            y = bb.emit(relax.op.astype(relax.op.clip(y, relax.prim_value(-128), relax.prim_value(127)), "int8"))
            z = bb.emit(relax.op.nn.conv2d(y, relax.const(w2), out_dtype="int32"))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max + 1, (2, c, hw, hw)).astype(dtype)
    return bb.get(), data


def test_vnni_intrinsic_builds_and_is_exact():
    """The re-registered intrinsic tensorizes, builds with LLVM 22, emits vpdpbusd and computes u8 x s8 exactly."""
    lib = tensorized_dot_16x4(register_vnni_intrinsic(), "uint8", tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"}))
    assert "vpdpbusd" in lib.mod.inspect_source("asm")
    if VNNI:
        av = np.array([255, 0, 128, 7], "uint8")
        bv = np.random.default_rng(0).integers(-128, 128, (16, 4)).astype("int8")
        out = tvm.runtime.tensor(np.zeros(16, "int32"))
        lib(tvm.runtime.tensor(av), tvm.runtime.tensor(bv), out)
        np.testing.assert_array_equal(out.numpy(), bv.astype(np.int64) @ av.astype(np.int64))


def test_vnni_detection():
    assert has_vnni(tvm.target.Target({"kind": "llvm", "mcpu": "znver4"}))
    assert not has_vnni(tvm.target.Target("llvm"))
    assert not has_vnni(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}))


def test_weight_packing_layout():
    """Packed weight element [o//16, c//cb, y, x, (c%cb)//4, o%16, c%4] is w[o, c, y, x]; padding is zero."""
    w = np.random.default_rng(0).integers(-128, 128, (17, 5, 3, 2)).astype("int8")
    p = L.pack_conv_weight(w, in_block=8)
    assert p.shape == (2, 1, 3, 2, 2, 16, 4)
    for o, c, y, x in [(0, 0, 0, 0), (16, 4, 2, 1), (3, 2, 1, 0)]:
        assert p[o // 16, c // 8, y, x, (c % 8) // 4, o % 16, c % 4] == w[o, c, y, x]
    assert not p[1, :, :, :, :, 1:].any() and not p[:, :, :, :, 1, :, 1:].any()
    assert L.channel_block(1) == 4 and L.channel_block(5) == 8 and L.channel_block(17) == 16


def test_signed_compensation_identity():
    """conv(x, w) == conv(x + 128 padded with 128, w) - 128 * sum(w), in numpy."""
    from gwq_tvm.reference import _conv2d

    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (1, 3, 5, 5))
    w = rng.integers(-128, 128, (4, 3, 3, 3)).astype("int8")

    class A:
        padding, strides, dilation, groups = (1, 1, 1, 1), (1, 1), (1, 1), 1

    class A0(A):
        padding = (0, 0, 0, 0)

    shifted = np.pad(x + 128, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=128)
    got = _conv2d(shifted, w, A0) - L.signed_input_compensation(w).reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(got, _conv2d(x, w, A))


SHAPES = [  # c, o, hw, k, stride, padding, groups, dtype
    (3, 16, 9, 3, 1, 1, 1, "int8"),
    (5, 17, 8, 3, 2, 1, 1, "uint8"),
    (17, 5, 7, 1, 1, 0, 1, "int8"),
    (16, 32, 10, 3, 2, 0, 1, "uint8"),
    (1, 8, 11, 5, 2, (2, 1, 0, 2), 1, "int8"),
    (8, 8, 9, 3, 1, 1, 8, "int8"),
    (24, 24, 6, 3, 2, 1, 24, "uint8"),
    (8, 12, 7, 3, 1, 1, 4, "uint8"),
    (32, 32, 8, 3, 1, 1, 2, "int8"),  # grouped, whole output blocks per group: one packed kernel
    (24, 48, 6, 3, 2, 1, 3, "uint8"),  # ... with 8 inputs per group (blocks of 8)
    (48, 60, 6, 1, 1, 0, 3, "int8"),  # ShuffleNet's grouped 1x1: 20 outputs per group, concatenated in NCHW
    (64, 64, 6, 3, 2, 1, 16, "uint8"),  # ResNeXt-style groups of 4: merged by 4 into one packed kernel
    (32, 48, 5, 3, 1, 1, 4, "int8"),  # groups of 8 inputs -> 12 outputs: merged by 4 (48 outputs, 32 inputs)
]


@needs_vnni
@pytest.mark.parametrize("c,o,hw,k,stride,padding,groups,dtype", SHAPES)
def test_conv_sweep_bit_exact(c, o, hw, k, stride, padding, groups, dtype):
    """Packed + default-scheduled convs equal the numpy reference (strides, paddings, groups, odd channels)."""
    _assert_vnni_bit_exact(*_conv_module(c, o, hw, k, stride, padding, groups, dtype))


@needs_vnni
def test_dilated_and_extreme_values_bit_exact():
    """Saturated int8 inputs (-128/127) and weights, dilation 2, zero padding in the shifted domain."""
    mod, _ = _conv_module(6, 16, 9, 3, 1, 2, 1, "int8", dilation=2)
    x = np.where(np.random.default_rng(3).random((2, 6, 9, 9)) < 0.5, -128, 127).astype("int8")
    np.testing.assert_array_equal(_run(_compile_strict(mod), x), run_reference(mod, x))


def test_pack_pass_structure():
    """Eligible convs become packed kernels; a grouped conv of many groups that do not fill whole output blocks
    stays NCHW; edges get pack/unpack."""
    mod, _ = _conv_module(5, 17, 8, 3, 2, 1, 1, "int8")
    names = _call_tir_names(PackInt8Layout()(mod))
    assert names[0].startswith("gwq_pack") and names[-1].startswith("gwq_unpack")
    assert sum(n.startswith("gwq_conv2d") for n in names) == 2
    assert sum(n.startswith("gwq_pack") for n in names) == 1  # no transform between the two convs
    grouped, _ = _conv_module(32, 32, 5, 3, 1, 1, 16, "uint8")  # 16 groups of 2 channels: kept
    packed = PackInt8Layout()(grouped)
    assert any(b.value.op.name == "relax.nn.conv2d" for blk in packed["main"].body.blocks for b in blk.bindings
               if isinstance(b.value, relax.Call))


def _grouped_after_conv_module(c=32, o=32, groups=2, seed=0):
    """x -> conv -> epilogue (int8) -> grouped 3x3 conv: the grouped conv reads a packed input."""
    rng = np.random.default_rng(seed)
    w1 = rng.integers(-128, 128, (c, 3, 3, 3)).astype("int8")
    w2 = rng.integers(-128, 128, (o, c // groups, 3, 3)).astype("int8")
    x = relax.Var("x", relax.TensorType((1, 3, 6, 6), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), padding=1, out_dtype="int32"))
            y = bb.emit(_to_int8(y, 8))
            z = bb.emit(relax.op.nn.conv2d(y, relax.const(w2), padding=1, groups=groups, out_dtype="int32"))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    return bb.get(), rng.integers(0, 256, (1, 3, 6, 6)).astype("uint8")


def _bindings(mod) -> list:
    return [b.value for blk in mod["main"].body.blocks for b in blk.bindings if isinstance(b.value, relax.Call)]


def _op_names(mod) -> list[str]:
    return [v.op.name if v.op.name != "relax.call_tir" else v.args[0].name_hint for v in _bindings(mod)]


@pytest.mark.parametrize("c,groups", [(32, 2), (64, 16)], ids=["2-groups-of-16", "16-groups-of-4-merged"])
def test_grouped_conv_with_whole_output_blocks_is_one_packed_kernel(c, groups):
    """Before: one ``nn.conv2d`` with groups=2 (16 outputs per group), or 16 groups of 4 (merged by 4 into
    blocks of 16).  After: one packed kernel whose output blocks read their group's input blocks; no slice,
    no concat, one unpack at the output."""
    mod, x = _grouped_after_conv_module(c, c, groups)
    assert [int(v.attrs.groups) for v in _bindings(mod) if v.op.name == "relax.nn.conv2d"] == [1, groups]
    ops = _op_names(PackInt8Layout()(mod))
    assert "relax.nn.conv2d" not in ops and sum(o.startswith("gwq_conv2d") for o in ops) == 2
    assert "relax.strided_slice" not in ops and "relax.concat" not in ops
    assert sum(o.startswith("gwq_unpack") for o in ops) == 1
    if VNNI:
        np.testing.assert_array_equal(_run(_compile_strict(mod), x), run_reference(mod, x))


def test_grouped_conv_split_per_group_slices_its_packed_input():
    """Before: one ``nn.conv2d`` with groups=3 and 20 outputs per group (ShuffleNet).  After: the packed input
    sliced along its block axis per group, one packed conv each, their outputs unpacked and concatenated."""
    mod, x = _grouped_after_conv_module(c=48, o=60, groups=3)
    packed = PackInt8Layout()(mod)
    ops = _op_names(packed)
    assert "relax.nn.conv2d" not in ops
    assert sum(o.startswith("gwq_conv2d") for o in ops) == 4 and ops.count("relax.strided_slice") == 3
    assert ops.count("relax.concat") == 1
    slices = [v for v in _bindings(packed) if v.op.name == "relax.strided_slice"]
    assert all(v.args[0].ty.ndim == 5 for v in slices)  # sliced packed, never unpacked first
    if VNNI:
        np.testing.assert_array_equal(_run(_compile_strict(mod), x), run_reference(mod, x))


# (c, o, hw, k, stride, padding, output_padding, groups, dilation)
TRANSPOSED = [
    (16, 16, 5, 3, 2, 1, 1, 1, 1),
    (8, 6, 5, 2, 2, 0, 0, 1, 1),  # U-Net's k2s2 up-sampling
    (32, 32, 4, 3, 2, 1, 0, 2, 1),  # grouped
    (8, 6, 5, 3, 1, 2, 0, 1, 2),  # stride 1, dilated
    (4, 5, 5, 4, 3, 1, 2, 1, 1),
    (16, 16, 6, 3, 2, 1, 1, 16, 1),  # depthwise
]


def _transposed_module(c, o, hw, k, stride, padding, output_padding, groups, dilation, dtype, seed=0):
    """x -> conv -> epilogue (int8) -> ``conv2d_transpose`` for an int8 ``x``; the transposed conv alone,
    on the network input, for a uint8 one."""
    rng = np.random.default_rng(seed)
    w0 = rng.integers(-128, 128, (c, c, 3, 3)).astype("int8")
    wt = rng.integers(-128, 128, (c, o // groups, k, k)).astype("int8")
    x = relax.Var("x", relax.TensorType((2, c, hw, hw), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = x
            if dtype == "int8":
                y = bb.emit(relax.op.nn.conv2d(x, relax.const(w0), padding=1, out_dtype="int32"))
                y = bb.emit(_to_int8(y, 9))
            z = bb.emit(relax.op.nn.conv2d_transpose(y, relax.const(wt), strides=stride, padding=padding,
                                                     output_padding=output_padding, dilation=dilation, groups=groups,
                                                     out_dtype="int32"))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    info = np.iinfo(dtype)
    return bb.get(), rng.integers(info.min, info.max + 1, (2, c, hw, hw)).astype(dtype)


def test_transposed_conv_becomes_a_packed_conv_of_its_zero_inserted_input():
    """Before: ``nn.conv2d_transpose``.  After: ``gwq_dilate`` (stride 2) feeding a packed conv; a transposed
    conv that crops (padding beyond ``d * (k - 1)``) is kept as it is."""
    mod, _ = _transposed_module(*TRANSPOSED[0], "int8")
    ops = _op_names(PackInt8Layout()(mod))
    assert "relax.nn.conv2d_transpose" not in ops
    assert ops.index("gwq_dilate") < max(i for i, o in enumerate(ops) if o.startswith("gwq_conv2d"))
    cropping, _ = _transposed_module(8, 8, 7, 3, 1, 3, 0, 1, 1, "uint8")
    assert "relax.nn.conv2d_transpose" in [v.op.name for v in _bindings(PackInt8Layout()(cropping))]


def test_merged_groups_weight_is_block_diagonal():
    w = np.arange(1, 8 * 2 * 1 * 1 + 1).reshape(8, 2, 1, 1)  # 4 groups of 2 inputs -> 2 outputs
    m = L.merge_groups(w, 4, 2)
    assert m.shape == (8, 4, 1, 1)
    assert np.array_equal(m[2, 2:4], w[2]) and not m[2, :2].any()  # group 1 = second of merged group 0
    assert np.array_equal(m[4, 0:2], w[4]) and not m[4, 2:].any()  # group 2 = first of merged group 1
    assert np.array_equal(m[7, 2:4], w[7]) and not m[7, :2].any()


def test_transposed_conv_weight_is_the_flipped_output_major_kernel():
    w = np.arange(4 * 3 * 2 * 2).reshape(4, 3, 2, 2)  # IOHW, 2 groups: 2 inputs and 3 outputs per group
    wc = L.transposed_conv_as_conv(w, 2)
    assert wc.shape == (6, 2, 2, 2)
    assert wc[4, 1, 0, 1] == w[3, 1, 1, 0]  # group 1, output 1, its input 1, taps flipped


@needs_vnni
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("geometry", TRANSPOSED, ids=lambda g: "x".join(map(str, g)))
def test_transposed_conv_sweep_bit_exact(geometry, dtype):
    _assert_vnni_bit_exact(*_transposed_module(*geometry, dtype), dot=geometry[7] != geometry[0])  # depthwise: lanes


def _conv1d_module(c, o, length, k, stride, padding, groups, dilation, dtype, seed=0):
    """conv1d -> per-channel bias (1, O, 1) -> shift/clip to int8 -> conv1d (the second reads int8)."""
    rng = np.random.default_rng(seed)
    w1 = rng.integers(-128, 128, (o, c // groups, k)).astype("int8")
    w2 = rng.integers(-128, 128, (5, o, 3)).astype("int8")
    bias = rng.integers(-5000, 5000, (1, o, 1)).astype("int32")
    x = relax.Var("x", relax.TensorType((2, c, length), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv1d(x, relax.const(w1), strides=stride, padding=padding, dilation=dilation,
                                           groups=groups, out_dtype="int32"))
            y = bb.emit(relax.op.add(y, relax.const(bias)))
            y = bb.emit(_to_int8(y, 8))
            out = bb.emit_output(bb.emit(relax.op.nn.conv1d(y, relax.const(w2), padding=1, out_dtype="int32")))
        bb.emit_func_output(out)
    info = np.iinfo(dtype)
    return bb.get(), rng.integers(info.min, info.max + 1, (2, c, length)).astype(dtype)


CONV1D = [  # c, o, length, k, stride, padding, groups, dilation
    (3, 16, 40, 5, 1, 2, 1, 1),
    (16, 32, 33, 3, 2, (1, 0), 1, 1),
    (32, 32, 20, 3, 1, 2, 2, 2),  # grouped, dilated
    (16, 16, 25, 5, 1, 2, 16, 1),  # depthwise
]


def test_conv1d_becomes_a_packed_conv_of_one_row():
    """Before: ``nn.conv1d``.  After: ``expand_dims`` to (N, C, 1, L), a packed conv2d, unpack, ``squeeze``."""
    mod, _ = _conv1d_module(*CONV1D[0], "uint8")
    ops = _op_names(PackInt8Layout()(mod))
    assert "relax.nn.conv1d" not in ops and sum(o.startswith("gwq_conv2d") for o in ops) == 2
    assert ops.count("relax.expand_dims") == 2 and ops.count("relax.squeeze") == 2


@needs_vnni
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("geometry", CONV1D, ids=lambda g: "x".join(map(str, g)))
def test_conv1d_sweep_bit_exact(geometry, dtype):
    _assert_vnni_bit_exact(*_conv1d_module(*geometry, dtype))


def _lookup_se_module(seed=0):
    """conv -> hardswish-style table lookup -> squeeze-excitation gate (x * gate[N, C, 1, 1]) -> conv.

    The MobileNetV3 pattern: the lookup (``take`` of a constant table, :mod:`gwq_tvm.kinds.lut`) and the
    gate multiply by an ``(N, C, 1, 1)`` tensor, as realized.
    """
    rng = np.random.default_rng(seed)
    c, o, hw = 5, 20, 6
    w1 = rng.integers(-128, 128, (o, c, 3, 3)).astype("int8")
    w2 = rng.integers(-128, 128, (7, o, 1, 1)).astype("int8")
    table = rng.integers(-128, 128, 256).astype("int8")
    x = relax.Var("x", relax.TensorType((2, c, hw, hw), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), padding=1, out_dtype="int32"))
            y = bb.emit(relax.op.add(relax.op.right_shift(y, relax.const(np.int32(9))), relax.const(np.int32(128))))
            idx = bb.emit(relax.op.clip(y, relax.prim_value(0), relax.prim_value(255)))
            a = bb.emit(relax.op.take(relax.const(table), idx, axis=0, mode="clip"))  # int8 [2, o, hw, hw]
            g = bb.emit(relax.op.sum(relax.op.astype(a, "int32"), axis=[2, 3], keepdims=True))
            g = bb.emit(relax.op.clip(relax.op.right_shift(g, relax.const(np.int32(5))), relax.prim_value(0),
                                      relax.prim_value(15)))
            z = bb.emit(relax.op.multiply(relax.op.astype(a, "int32"), g))  # gate broadcast over the map
            z = bb.emit(relax.op.astype(relax.op.clip(relax.op.right_shift(z, relax.const(np.int32(4))),
                                                      relax.prim_value(-128), relax.prim_value(127)), "int8"))
            out = bb.emit_output(bb.emit(relax.op.nn.conv2d(z, relax.const(w2), out_dtype="int32")))
        bb.emit_func_output(out)
    return bb.get(), rng.integers(0, 256, (2, c, hw, hw)).astype("uint8")


def test_lookup_and_gate_stay_packed_and_bit_exact():
    """A table lookup and an ``(N, C, 1, 1)`` gate multiply stay in NCHW16c (no unpack/pack around them,
    the lookup fused into the conv's epilogue), and the program is bit-exact.

    Before: ``unpack -> take -> pack`` around every lookup activation and an unpack/pack inside every
    gate kernel cost MobileNetV3-Small ~40 % of its kernel time (benchmarks/results/layer_profile).
    """
    mod, x = _lookup_se_module()
    names = _call_tir_names(PackInt8Layout()(mod))
    assert sum(n.startswith("gwq_pack") for n in names) == 1 and sum(n.startswith("gwq_unpack") for n in names) == 1
    fused = _call_tir_names(packed_fused_module(mod, host_target()))
    assert not any(n.startswith(("gwq_lookup", "take")) for n in fused)
    assert any("gwq_conv2d" in n and "gwq_lookup" in n for n in fused)  # fused into the conv kernel
    np.testing.assert_array_equal(_run(_compile_strict(mod), x), run_reference(mod, x))


def _scheduled_kernels(mod) -> dict:
    """Kernel name -> scheduled TIR script of ``mod`` packed, fused and default-scheduled for the host."""
    fused = packed_fused_module(mod, host_target())
    with host_target():
        done = ScheduleIntegerKernels(kernel_spec(host_target()) or X86_VNNI)(fused)
    return {gv.name_hint: f.script() for gv, f in done.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_parallel_grain_keeps_small_kernels_serial():
    """A kernel below ``PARALLEL_MIN_US`` gets no parallel loop (no thread-pool launch); a large conv keeps one.

    Before, every kernel was parallel: MobileNetV3-Small's ~75 kernels, most a few microseconds long, each
    paid a launch and a barrier, and 2 threads ran slower than 1 (benchmarks/results/layer_profile).
    """
    small, _ = _conv_module(16, 16, 4, 3, 1, 1, 1, "uint8")  # 16x4x4 maps: ~0.04 MMAC per conv
    large, _ = _conv_module(64, 64, 56, 3, 1, 1, 1, "uint8")  # 64x56x56: ~116 MMAC
    for mod, parallel in ((small, False), (large, True)):
        kernels = _scheduled_kernels(mod)
        conv3x3 = next(s for n, s in kernels.items() if "gwq_conv2d_" in n)  # the first conv, with its epilogue
        assert ("T.parallel" in conv3x3) == parallel
        assert "T.vectorized" in conv3x3


def _one_conv_module(c: int, o: int, hw: int, dtype: str, seed: int = 0):
    """x -> 1x1 conv -> (>>7, clip 0..255, uint8): a conv whose input needs no staging in any family but AVX2."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (o, c, 1, 1)).astype("int8")
    x = relax.Var("x", relax.TensorType((1, c, hw, hw), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), out_dtype="int32"))
            y = bb.emit(relax.op.right_shift(y, relax.const(np.int32(7))))
            y = bb.emit(relax.op.astype(relax.op.clip(y, relax.prim_value(0), relax.prim_value(255)), "uint8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _workspace_calls(asm: str) -> int:
    """Instructions of ``asm`` that reach ``TVMBackendAllocWorkspace`` (x86 GOT loads, aarch64 adrp/ldr pairs)."""
    return sum(1 for line in asm.splitlines()
               if "TVMBackendAllocWorkspace" in line and not line.strip().startswith((".", "_")))


@pytest.mark.parametrize("target, dtype, staged", [
    ({"kind": "llvm", "mcpu": "cascadelake"}, "uint8", 0),  # x86-vnni
    ("alderlake", "uint8", 0),  # x86-avxvnni
    ("cortex-a76", "int8", 0),  # aarch64-sdot
    ("neoverse-n2", "uint8", 0),  # aarch64-i8mm
    ("x86-avx2", "uint8", 1),  # x86-avx2 widens its input to int16 in one staged buffer (one allocation)
])
def test_conv_register_tile_stays_on_the_stack(target, dtype, staged):
    """A packed conv's accumulators and its tensor intrinsic's operands live on the stack, not in TVM's workspace.

    TVM 0.27 serves a scratch buffer of 1024 bytes or more, or of ``local`` scope, with a
    ``TVMBackendAllocWorkspace``/``Free`` pair per iteration of the parallel loop, and LLVM then keeps the
    accumulators in memory.  Two causes, both fixed in one place each: an 8-pixel x 2-block VNNI tile is exactly
    1024 bytes (:func:`gwq_tvm.schedules.default.conv_register_tile` keeps tiles below it), and a TVMScript
    ``name = expr`` inside a tensor intrinsic declares a ``local`` buffer in 0.27 (the intrinsics alias
    with ``T.meta_var``).  Width 56 took the 8 x 2 tile before.  Compiled only, so every family is checked here.
    """
    from gwq_tvm.schedules.build import compile_packed
    from gwq_tvm.schedules.targets import resolve_target

    tgt = resolve_target(target)
    ex = compile_packed(_one_conv_module(32, 64, 56, dtype), tgt, kernel_spec(tgt))
    asm = "".join(m.inspect_source("asm") for m in ex.mod.imports if m.kind == "llvm")
    assert _workspace_calls(asm) == staged


def test_conv_register_tile_holds_fewer_than_1024_bytes_of_accumulators():
    """The VNNI tile: 7 pixels x 2 blocks where 8 x 2 (1024 bytes) would have been taken; one block when pairs
    would leave fewer accumulators; families without channel pairs keep their own tile."""
    from gwq_tvm.schedules.default import STACK_BYTES, conv_register_tile
    from gwq_tvm.schedules.spec import AARCH64_SDOT

    assert conv_register_tile(112, 6, X86_VNNI) == (7, 2)
    assert conv_register_tile(32, 4, X86_VNNI) == (4, 2)
    assert conv_register_tile(13, 4, X86_VNNI) == (13, 1)
    assert conv_register_tile(56, 3, X86_VNNI) == (8, 1)  # an odd number of output blocks: no pairs
    assert conv_register_tile(56, 4, AARCH64_SDOT) == (4, 1)
    for width in range(1, 300):
        owi, oci = conv_register_tile(width, 8, X86_VNNI)
        assert width % owi == 0 and owi * oci * 16 * 4 < STACK_BYTES


@needs_vnni
@pytest.mark.parametrize("dtype, batch, k, n", [("uint8", 3, 17, 24), ("int8", 3, 17, 24), ("uint8", 1, 64, 10),
                                               ("int8", 2, 3, 5), ("uint8", 1, 512, 1000)])
def test_dense_is_a_tensorized_packed_kernel_and_bit_exact(dtype, batch, k, n):
    """A dense by a constant runs as the packed 1x1 conv (vpdpbusd), odd K/N included; the result is unpacked at once."""
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (k, n)).astype("int8")
    x = relax.Var("x", relax.TensorType((batch, k), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(w), out_dtype="int32"))
            out = bb.emit_output(bb.emit(relax.op.add(y, relax.const(np.arange(n, dtype="int32")))))
        bb.emit_func_output(out)
    mod = bb.get()
    packed = PackInt8Layout()(mod)
    names = _call_tir_names(packed)
    assert sum(n.startswith("gwq_conv2d") for n in names) == 1
    assert not any(b.value.op.name == "relax.matmul" for blk in packed["main"].body.blocks for b in blk.bindings
                   if isinstance(b.value, relax.Call))
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max + 1, (batch, k)).astype(dtype)
    ex = _compile_strict(mod)
    assert "vpdpbusd" in _asm(ex)
    np.testing.assert_array_equal(_run(ex, data), run_reference(mod, data))


def test_without_vnni_falls_back_to_plain_compile():
    """A generic x86 target takes the plain path: no packed kernels, still exact."""
    mod, x = _conv_module(5, 17, 8, 3, 2, 1, 1, "int8")
    ex = compile_integer(mod, tvm.target.Target("llvm"))
    assert "vpdpbusd" not in _asm(ex)
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


def test_aarch64_target_compiles_to_an_aarch64_object(tmp_path):
    """compile_integer for an aarch64 target emits AArch64 code (ELF e_machine 183); its kernels: test_arm_kernels.py."""
    mod, _ = _conv_module(5, 17, 8, 3, 2, 1, 1, "int8")
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]})
    ex = compile_integer(mod, target)
    (llvm_mod,) = [m for m in ex.mod.imports if m.kind == "llvm"]
    obj = tmp_path / "kernels.o"
    llvm_mod.write_to_file(str(obj))
    header = obj.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183


@needs_vnni
def test_bundled_model_fast_path_bit_exact_and_vnni(bundled_int8, fmnist):
    """The whole bundled model through build(): bit-exact at batch 1 and 5, vpdpbusd in its assembly."""
    _, test_x, _ = fmnist
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = gwq_tvm.build(bundled_int8)
    assert _asm(ex).count("vpdpbusd") > 0
    for batch in (1, 5):
        np.testing.assert_array_equal(_run(ex, test_x[:batch]), run_reference(bundled_int8.mod, test_x[:batch]))


def test_packed_program_is_integer_only(bundled_int8):
    """Packing keeps the program integer-only (Relax bindings and every TIR kernel)."""
    report = check_integer_only(PackInt8Layout()(bundled_int8.mod))
    assert report.ok, str(report)


if __name__ == "__main__":
    tvm.testing.main()


@pytest.mark.parametrize("preset", ["rpi4", "cortex-a76", "neoverse-n1", "aarch64-dotprod"])
def test_target_presets_are_aarch64_llvm_targets(preset):
    from gwq_tvm.schedules.targets import resolve_target

    t = resolve_target(preset)
    assert t.kind.name == "llvm" and str(t.attrs["mtriple"]).startswith("aarch64")


def test_bad_target_names_the_presets():
    from gwq_tvm.errors import GwqError
    from gwq_tvm.schedules.targets import resolve_target

    with pytest.raises(GwqError, match="rpi4"):
        resolve_target("raspberry-pi-99")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="apt-get install gcc-aarch64-linux-gnu (.ci/run does)")
def test_cli_cross_compiles_and_exports_an_aarch64_shared_library(tmp_path, capsys):
    """gwq-tvm compile --target rpi4: the exported .so is an AArch64 ELF shared object (e_type 3, e_machine 183)."""
    from gwq_tvm.cli import main

    out = tmp_path / "m.so"
    rc = main(["--quiet", "compile", str(gwq_tvm.data.bundled_model()), "--target", "rpi4", "--calib-samples", "32", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    header = out.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[16:18], "little") == 3
    assert int.from_bytes(header[18:20], "little") == 183


def test_missing_cross_compiler_is_named(tmp_path, capsys, monkeypatch):
    import gwq_tvm.schedules.targets as targets
    from gwq_tvm.cli import main

    monkeypatch.setattr(targets.shutil, "which", lambda exe: None)
    rc = main(["--quiet", "compile", str(gwq_tvm.data.bundled_model()), "--target", "cortex-a76", "--calib-samples", "16",
               "--no-loss-aware", "-o", str(tmp_path / "m.so")])
    err = capsys.readouterr().err
    assert rc == 2 and "apt-get install gcc-aarch64-linux-gnu" in err and "Traceback" not in err


def test_layout_pass_lives_beside_the_schedules_without_an_import_cycle():
    """PackInt8Layout is defined in gwq_tvm.schedules (re-exported by gwq_tvm and gwq_tvm.passes); schedules never import passes."""
    import ast
    from pathlib import Path

    import gwq_tvm.passes
    import gwq_tvm.schedules

    assert gwq_tvm.PackInt8Layout is gwq_tvm.passes.PackInt8Layout is gwq_tvm.schedules.PackInt8Layout is PackInt8Layout
    assert PackInt8Layout.__module__ == "gwq_tvm.schedules.pack_layout"
    for path in Path(gwq_tvm.schedules.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert not target.startswith("..passes") and not target.startswith("gwq_tvm.passes"), (path.name, target)
