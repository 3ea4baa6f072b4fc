"""compile_float: the scheduled float32/float64 build gwq-tvm runs its own analyses on.

Against plain ``tvm.compile`` (TOPI's naive loops, the same summation order):
results equal within float rounding (in practice identical), for float32 and
float64, over a conv shape sweep and the bundled model; and the convs really
are the packed, vectorized kernels (not naive loops).
"""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R

import gwq_tvm
from gwq_tvm.data import bundled_model, fashion_mnist
from gwq_tvm.runtime import host_target
from gwq_tvm.schedules.compute import FLOAT_CONV_BLOCK
from gwq_tvm.schedules.float import compile_float, float_kernel_passes, float_lanes
from gwq_tvm.schedules.layout import pack_float_conv_weight


def _conv_module(shape, weight, dtype, **attrs):
    x = relax.Var("x", relax.TensorType(shape, dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.nn.conv2d(x, relax.const(weight, dtype), **attrs))
            y = bb.emit(R.nn.relu(R.add(y, relax.const(np.float64(0.25), dtype))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _run(ex, x):
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _assert_close_to_plain(mod, x):
    got = _run(compile_float(mod, host_target()), x)
    want = _run(tvm.compile(mod, host_target()), x)
    eps = np.finfo(x.dtype).eps
    np.testing.assert_allclose(got, want, rtol=64 * eps, atol=64 * eps * float(np.abs(want).max()))
    return got, want


def test_pack_float_conv_weight_layout():
    w = np.arange(20 * 3 * 2 * 2, dtype=np.float32).reshape(20, 3, 2, 2)
    p = pack_float_conv_weight(w, 16)
    assert p.shape == (2, 3, 2, 2, 16)
    assert p[1, 2, 1, 0, 3] == w[19, 2, 1, 0]
    assert not p[1, :, :, :, 4:].any()  # padded output channels are zero
    assert float_lanes("float32") == 16 and float_lanes("float64") == 8


@pytest.mark.parametrize("mcpu, lanes", [("haswell", 16), ("znver3", 16), ("znver4", 32), ("skylake-avx512", 32)])
def test_float_conv_lanes_are_two_vector_registers_of_the_target(mcpu, lanes):
    """Before/after the float kernel passes: the conv's weight is packed to ``L`` = two vector registers of the
    target (32 float32 lanes with AVX-512, 16 with AVX2), and the scheduled kernel vectorizes those lanes."""
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    assert float_lanes("float32", target) == lanes and float_lanes("float64", target) == lanes // 2
    w = np.random.default_rng(1).standard_normal((40, 8, 3, 3)).astype("float32")
    before = _conv_module((1, 8, 12, 12), w, "float32", padding=(1, 1, 1, 1))
    with target:
        after = tvm.transform.Sequential(float_kernel_passes())(before)
    (conv,) = [f for _, f in after.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and FLOAT_CONV_BLOCK in f.script()]
    text = conv.script()
    assert f"v_i1 // T.int64({lanes})" in text and f"v_i1 % T.int64({lanes})" in text  # the NCHW[L]c unpack
    assert "T.vectorized" in text


CASES = [  # (N, C, H, W), (O, KH, KW), strides, padding, dilation
    ((2, 3, 17, 19), (20, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 16, 14, 14), (32, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    ((3, 8, 12, 10), (16, 3, 3), (2, 1), (0, 1, 2, 1), (1, 1)),
    ((1, 5, 11, 11), (7, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    ((1, 3, 30, 30), (24, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,kernel,strides,padding,dilation", CASES)
def test_conv_sweep_matches_plain(dtype, shape, kernel, strides, padding, dilation):
    rng = np.random.default_rng(hash((shape, kernel)) % 2**32)
    o, kh, kw = kernel
    w = rng.standard_normal((o, shape[1], kh, kw)).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    mod = _conv_module(shape, w, dtype, strides=strides, padding=padding, dilation=dilation)
    got, _ = _assert_close_to_plain(mod, x)
    assert got.dtype == np.dtype(dtype)


def test_grouped_conv_falls_back_to_topi():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 1, 3, 3))
    x = rng.standard_normal((2, 8, 9, 9))
    mod = _conv_module((2, 8, 9, 9), w, "float64", padding=(1, 1, 1, 1), groups=8)
    _assert_close_to_plain(mod, x)


def test_bundled_model_matches_plain_build_with_dynamic_batch():
    fm = gwq_tvm.load_model(bundled_model())
    x, _ = fashion_mnist("calib")
    got, want = _assert_close_to_plain(fm.mod, x[:37])
    assert np.abs(got - want).max() <= 1e-5


def test_convs_are_packed_vectorized_kernels():
    """Every conv of the bundled model becomes a scheduled ``gwq_fconv2d`` kernel with vector lanes."""
    fm = gwq_tvm.load_model(bundled_model())
    with host_target():
        mod = tvm.transform.Sequential(float_kernel_passes())(fm.mod)
    n_convs = fm.mod.script().count("R.nn.conv2d(")
    convs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and FLOAT_CONV_BLOCK in f.script()]
    assert n_convs > 0 and len(convs) == n_convs
    for f in convs:
        text = f.script()
        assert f.attrs.get("tirx.is_scheduled", False)
        assert "T.vectorized" in text and "T.parallel" in text and "T.unroll" in text


def test_calibration_program_keeps_conv_epilogues_fused():
    """The program that returns every node's value (calibration) is still one dataflow block, so each conv is
    fused with its bias and activation: before/after ``FuseOps``, every ``nn.conv2d`` ends in a fused kernel
    that also adds the bias.  Returning the values through ``ToNonDataflow`` left each op its own kernel and
    doubled ResNet-18's calibration time."""
    from gwq_tvm.calibration import with_node_outputs

    fm = gwq_tvm.load_model(bundled_model())
    graph = gwq_tvm.extract_graph(fm.mod)
    before = with_node_outputs(fm.mod, graph)
    assert isinstance(before["main"].body.blocks[0], relax.DataflowBlock)
    assert len(before["main"].ret_ty.fields) == len(graph.nodes)
    with host_target():
        after = tvm.transform.Sequential(float_kernel_passes())(before)
    names = [gv.name_hint for gv, f in after.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    n_convs = fm.mod.script().count("R.nn.conv2d(")
    fused = [n for n in names if n.startswith("fused_gwq_fconv2d") and "_add" in n]
    assert len(fused) == n_convs, names
    x, _ = fashion_mnist("calib")
    outs = relax.VirtualMachine(compile_float(before, host_target()), tvm.cpu())["main"](tvm.runtime.tensor(x[:3]))
    plain = relax.VirtualMachine(compile_float(fm.mod, host_target()), tvm.cpu())["main"](tvm.runtime.tensor(x[:3]))
    np.testing.assert_allclose(outs[len(graph.nodes) - 1].numpy(), plain.numpy(), rtol=1e-5, atol=1e-5)


def test_assembly_uses_vector_fma():
    if not tvm.target.codegen.target_has_features("fma", host_target()):
        pytest.skip("this CPU has no FMA")
    w = np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype("float32")
    ex = compile_float(_conv_module((1, 8, 12, 12), w, "float32", padding=(1, 1, 1, 1)), host_target())
    asm = "".join(m.inspect_source("asm") for m in ex.mod.imports if m.kind == "llvm")
    assert "vfmadd" in asm and ("ymm" in asm or "zmm" in asm)
