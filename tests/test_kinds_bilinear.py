"""Bilinear resize with fixed-point weights: integer-only, bit-exact, and within its stated bound of float bilinear."""

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.kinds import get_kind
from gwq_tvm.kinds.bilinear import FRACTION_BITS
from gwq_tvm.plan.program import sfc_edges
from gwq_tvm.qat import QATModel

from test_kinds_edge import _bit_exact, _kinds, _quantize, _sqnr

GWQ = QuantConfig(mode="gwq", groups=2, loss_aware=False)


class Up(nn.Module):
    def __init__(self, align_corners=False, factor=2, size=None):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)
        self.ac, self.factor, self.size = align_corners, factor, size

    def forward(self, x):
        y = torch.relu(self.conv(x))
        kw = dict(size=self.size) if self.size else dict(scale_factor=self.factor)
        return self.head(nn.functional.interpolate(y, mode="bilinear", align_corners=self.ac, **kw))


class _Node:
    def __init__(self, size, in_size, mode):
        self.attrs = dict(size=size, in_size=in_size, mode=mode)


@pytest.mark.parametrize("size", [(10, 12), (15, 18), (7, 9), (3, 4)], ids=["x2", "x3", "general-up", "down"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_fixed_point_weights_are_within_the_stated_bound_of_torch_bilinear(size, align_corners):
    """The integer recipe on every 8-bit code pattern vs torch's own float bilinear on the same codes:
    off by at most 1/2 (the final rounding) + 255 * 2**-F; exactly round(float) where the weights are exact."""
    kind = get_kind("resize_bilinear")
    node = _Node(size, (5, 6), "align_corners" if align_corners else "half_pixel")
    q = torch.from_numpy(np.random.default_rng(20).integers(0, 256, size=(64, 1, 5, 6)))
    shift = 2 * FRACTION_BITS
    got = ((kind._torch(q, node, q.shape) + (1 << (shift - 1))) >> shift).numpy()
    want = nn.functional.interpolate(q.double(), size=size, mode="bilinear", align_corners=align_corners).numpy()
    err = np.abs(got - want)
    assert err.max() <= 0.5 + 255 * 2.0**-FRACTION_BITS + 1e-9, err.max()
    assert got.min() >= 0 and got.max() <= 255
    if size == (10, 12) and not align_corners:  # weights 1/4, 3/4: exact, only round-half-up remains
        np.testing.assert_array_equal(got, np.floor(want + 0.5))
    exact = kind._torch(q.double(), node, q.shape, None).numpy()  # the float teacher is float bilinear itself
    np.testing.assert_allclose(exact, want, atol=1e-9)


@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
@pytest.mark.parametrize("case", ["half_pixel-x2", "half_pixel-x3", "align_corners-x2", "general-size"])
def test_bilinear_resize_is_passthrough_and_bit_exact(case, mode):
    torch.manual_seed(21)
    model = {"half_pixel-x2": Up(), "half_pixel-x3": Up(factor=3), "align_corners-x2": Up(True),
             "general-size": Up(size=(7, 9))}[case].eval()
    x = np.random.default_rng(21).normal(size=(20, 3, 5, 6)).astype(np.float32)
    q = _quantize(model, x[:16], QuantConfig() if mode == "per-layer" else GWQ)
    assert _kinds(q) == ["input", "conv2d", "resize_bilinear", "conv2d"], _kinds(q)
    assert q.plan.tensors["resize_bilinear_0"] == q.plan.tensors["conv2d_0"]  # the scale is kept: no SFC
    assert not [e for e in sfc_edges(q.graph) if e.node == "resize_bilinear_0"]
    got = _bit_exact(q, x[16:])
    with torch.no_grad():
        assert _sqnr(got, model(torch.from_numpy(x[16:])).numpy()) > 25


def test_onnx_linear_resize_asymmetric_matches_onnxruntime():
    """ONNX Resize(mode=linear, asymmetric) built with onnx.helper: integer, bit-exact, close to ONNX Runtime."""
    import onnxruntime as ort

    rng = np.random.default_rng(22)
    w = (rng.normal(size=(4, 3, 3, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Resize", ["r", "", "s"], ["y"], mode="linear", coordinate_transformation_mode="asymmetric")]
    graph = helper.make_graph(nodes, "bl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 10, 12])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(20, 3, 5, 6)).astype(np.float32)
    q = gwq_tvm.quantize(model, x[:16], QuantConfig())
    assert _kinds(q) == ["input", "conv2d", "resize_bilinear"]
    assert q.graph.nodes["resize_bilinear_0"].attrs["mode"] == "asymmetric"
    got = _bit_exact(q, x[16:])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x[16:]})[0]
    assert _sqnr(got, want) > 30


class UpHead(Up):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(super().forward(x).mean(dim=(2, 3)))


def test_qat_integers_of_bilinear_resize_equal_the_compiled_program():
    from test_qat import _compiled_ints, _qat_ints

    torch.manual_seed(23)
    model = UpHead(factor=3).eval()
    x = np.random.default_rng(23).normal(size=(20, 3, 5, 6)).astype(np.float32)
    q = _quantize(model, x[:16], GWQ)
    assert "resize_bilinear" in _kinds(q)
    _, want = _compiled_ints(q, q.plan, q.graph, x[16:])
    _, got = _qat_ints(QATModel(q.graph, q.plan), x[16:])
    np.testing.assert_array_equal(got, want)


def test_bilinear_resize_exports_to_onnx_and_reimports(tmp_path):
    from gwq_tvm.qat.export import export_qat

    torch.manual_seed(24)
    model = Up(align_corners=True).eval()
    x = np.random.default_rng(24).normal(size=(20, 3, 5, 6)).astype(np.float32)
    q = _quantize(model, x[:16])
    onnx_path, plan_path = export_qat(QATModel(q.graph, q.plan), tmp_path / "m.onnx")  # re-import checked inside
    assert "Resize" in {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    q2 = gwq_tvm.quantize(str(onnx_path), plan=gwq_tvm.QuantPlan.load(plan_path))
    np.testing.assert_array_equal(_bit_exact(q2, x[16:]), _bit_exact(q, x[16:]))


@pytest.mark.parametrize("preset", [None, "aarch64-dotprod"])
def test_bilinear_resize_builds_without_unscheduled_kernels(preset):
    import shutil

    from gwq_tvm.schedules.targets import resolve_target

    if preset and shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("apt-get install gcc-aarch64-linux-gnu")
    torch.manual_seed(25)
    x = np.random.default_rng(25).normal(size=(16, 3, 5, 6)).astype(np.float32)
    q = _quantize(Up(factor=3).eval(), x, GWQ)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gwq_tvm.build(q, resolve_target(preset) if preset else None)


class Both(nn.Module):
    """A transposed conv, then bilinear upsampling: the two kinds of this branch in one decoder."""

    def __init__(self):
        super().__init__()
        self.conv, self.up = nn.Conv2d(3, 6, 3, padding=1), nn.ConvTranspose2d(6, 6, 2, 2)
        self.head = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.up(torch.relu(self.conv(x))))
        return self.head(nn.functional.interpolate(y, scale_factor=2, mode="bilinear"))


def test_loss_aware_gwq_simulates_conv_transpose_and_bilinear():
    """The fake-quant simulator (output sensitivities of loss-aware GWQ) emits both new kinds."""
    torch.manual_seed(26)
    x = np.random.default_rng(26).normal(size=(20, 3, 5, 6)).astype(np.float32)
    q = _quantize(Both().eval(), x[:16], QuantConfig(mode="gwq", groups=2))
    assert {"conv2d_transpose", "resize_bilinear"} <= set(_kinds(q)) and q.sensitivity
    _bit_exact(q, x[16:])
