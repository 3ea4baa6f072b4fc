"""Pass-level tests: canonical graph, realized IR structure, the integer-only checker, composition."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import PlanError, UnsupportedOpError
from gwq_tvm.passes.check import check_integer_only

from conftest import compile_and_run


def _ops(mod):
    return [b.value.op.name for blk in mod["main"].body.blocks for b in blk.bindings if isinstance(b.value, relax.Call)]


def _conv_module():
    """Before: fp32 conv + bias + relu, as the frontend emits it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 2, 6, 6], "float32"))
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 3, 3)).astype("float32")
    b = rng.normal(size=(1, 3, 1, 1)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.nn.conv2d(x, relax.const(w), padding=[1, 1, 1, 1]))
            y = bb.emit(R.add(y, relax.const(b)))
            y = bb.emit(R.nn.relu(y))
            out = bb.emit_output(R.sum(y, axis=[2, 3]))
        bb.emit_func_output(out)
    return bb.get()


def _conv_quantized(config: QuantConfig):
    mod = _conv_module()
    fm = gwq_tvm.frontend._finish(mod, "test")
    graph = gwq_tvm.extract_graph(fm.mod)
    assert [n.kind for n in graph.nodes.values()] == ["input", "conv2d", "float"]
    assert graph.nodes["conv2d_0"].act == (0.0, float("inf"))
    x = np.random.default_rng(1).normal(size=(1, 2, 6, 6)).astype("float32")
    return gwq_tvm.quantize(fm, x, config), x


def test_realize_conv_bias_relu_structure():
    """After: quantize input, int8 conv to int32 + int32 bias; the float consumer dequantizes the accumulator."""
    q, x = _conv_quantized(QuantConfig(symmetric_activations=True))
    assert _ops(q.mod) == [
        "relax.divide", "relax.add", "relax.floor", "relax.clip", "relax.astype",  # input quantize
        "relax.nn.conv2d", "relax.add",  # int8 x int8 -> int32, + int32 bias
        "relax.astype", "relax.multiply", "relax.clip",  # dequantize (s_in * s_w,c), then the fused ReLU
        "relax.sum",
    ]
    conv = [b.value for b in q.mod["main"].body.blocks[0].bindings if isinstance(b.value, relax.Call)][5]
    assert conv.args[1].ty.dtype == "int8" and conv.attrs.out_dtype == "int32"
    assert q.float_ops == ["relax.sum"]
    assert q.integer_only.ok  # the float sum comes after the output dequantize


def test_realize_conv_structure_with_an_input_zero_point():
    """After, with the (lopsided) input planned uint8 with a zero point z: the quantize adds z, the conv pads
    explicitly with the code z (real 0) and runs unpadded, and its int32 bias holds ``q_b - z * sum(q_w,c)``."""
    q, x = _conv_quantized(QuantConfig())
    z = q.plan.tensors["input"].zero_point
    assert z and not q.plan.tensors["input"].signed
    assert _ops(q.mod) == [
        "relax.divide", "relax.add", "relax.floor", "relax.add", "relax.clip", "relax.astype",  # + z, uint8 codes
        "relax.nn.pad", "relax.nn.conv2d", "relax.add",  # pad by z, uint8 x int8 -> int32, + folded bias
        "relax.astype", "relax.multiply", "relax.clip",
        "relax.sum",
    ]
    calls = [b.value for b in q.mod["main"].body.blocks[0].bindings if isinstance(b.value, relax.Call)]
    pad, conv, bias = calls[6], calls[7], calls[8]
    assert float(pad.attrs.pad_value) == z and conv.args[0].ty.dtype == "uint8"
    assert [int(p) for p in conv.attrs.padding] == [0, 0, 0, 0]
    acc = gwq_tvm.plan.program.accumulator(q.graph.nodes["conv2d_0"], q.graph, q.plan)
    folded = acc.plain_bias.astype(np.int64) - z * acc.weight.reshape(3, -1).astype(np.int64).sum(axis=1)
    np.testing.assert_array_equal(bias.args[1].value.numpy().ravel(), folded)  # plain_bias: what the QDQ export adds
    # the output is a float sum after the dequantize: equal up to float32 summation order (the reference once
    # truncated float sums to integers, which this caught)
    np.testing.assert_allclose(compile_and_run(q.mod, x), gwq_tvm.reference.run_reference(q.mod, x), rtol=1e-6)


def test_checker_flags_float_op_inside_integer_region():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 4], "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            f = bb.emit(R.astype(x, "float32"))
            f = bb.emit(R.sigmoid(f))
            y = bb.emit(R.astype(f, "int32"))
            out = bb.emit_output(R.astype(R.add(y, y), "float32"))
        bb.emit_func_output(out)
    report = check_integer_only(bb.get())
    assert not report.ok
    assert any("relax.sigmoid" in s for s in report.float_ops)
    assert "integer-only: no" in str(report)


def test_checker_flags_float_inside_an_integer_kernel():
    """An int32 -> int32 kernel that computes through float is caught at TIR level."""
    from tvm.script import tirx as T

    @T.prim_func
    def halve(a: T.Buffer((4,), "int32"), b: T.Buffer((4,), "int32")):
        for i in range(4):
            b[i] = T.Cast("int32", T.Cast("float32", a[i]) * T.float32(0.5))

    bb = relax.BlockBuilder()
    gv = bb.add_func(halve, "halve")
    x = relax.Var("x", relax.TensorType([4], "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.call_tir(gv, relax.Tuple([x]), out_ty=relax.TensorType((4,), "int32")))
            out = bb.emit_output(R.astype(y, "float32"))
        bb.emit_func_output(out)
    report = check_integer_only(bb.get())
    assert report.float_ops == [] and report.float_kernels == ["halve"]


def test_unsupported_op_is_named_and_falls_back_or_fails(fmnist):
    import torch
    from torch import nn

    class Ratio(nn.Module):
        """The quotient of two tensors (sigmoid, the old example, is a lookup table now)."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3)
            self.head = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 24 * 24, 10))

        def forward(self, x):
            return self.head(self.a(x) / (torch.relu(self.b(x)) + 1.0))

    calib, test_x, _ = fmnist
    model = Ratio()
    with pytest.warns(UserWarning, match="relax.divide"):
        q = gwq_tvm.quantize(model, calib[:32], input_shape=(None, 1, 28, 28))
    assert q.float_ops == ["relax.divide"]
    assert not q.integer_only.ok and "relax.divide" in str(q.integer_only)
    out = compile_and_run(q.mod, test_x[:4])
    np.testing.assert_array_equal(out, gwq_tvm.run_reference(q.mod, test_x[:4]))
    with pytest.raises(UnsupportedOpError, match="relax.divide"):
        gwq_tvm.quantize(model, calib[:32], QuantConfig(allow_float_fallback=False), input_shape=(None, 1, 28, 28))


def test_plan_for_another_model_is_rejected(bundled_int8, fmnist):
    import torch

    with pytest.raises(PlanError, match="made for graph"):
        gwq_tvm.quantize(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), plan=bundled_int8.plan,
                         input_shape=(None, 1, 28, 28))


def test_passes_compose_in_a_users_tvm_flow(bundled_int8, fmnist):
    """Our passes inside a user's own Sequential + tvm.compile, with a TVM pass after them."""
    _, test_x, _ = fmnist
    pipeline = tvm.transform.Sequential(
        [gwq_tvm.RealizeIntegerProgram(bundled_int8.plan), gwq_tvm.VerifyIntegerOnly(), relax.transform.FoldConstant()]
    )
    mod = pipeline(bundled_int8.float_model.mod)
    out = compile_and_run(mod, test_x[:8])
    np.testing.assert_array_equal(out, compile_and_run(bundled_int8.mod, test_x[:8]))
