"""Transposed convolution (U-Net decoders): an integer accumulating layer like conv2d.

Compiled by real TVM, run, and compared bit for bit with the numpy reference
(which scatters each kernel tap's products itself); checked integer-only, in
GWQ mode, through the QAT twin, the ONNX re-export and the zoo's U-Net.
"""

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.kinds.conv_transpose import input_major, output_major
from gwq_tvm.plan.program import sfc_edges, sfc_sites, sfc_summary
from gwq_tvm.qat import QATModel
from gwq_tvm.reference import run_reference

from test_kinds_edge import _bit_exact, _kinds, _quantize, _randomize_bn, _sqnr

GWQ = QuantConfig(mode="gwq", groups=2, loss_aware=False)


class Decoder(nn.Module):
    """conv-ReLU, ConvTranspose2d-BN-ReLU (the BN folds into the transposed conv's output channels), conv."""

    def __init__(self, cin=8, cout=6, k=3, stride=2, pad=1, out_pad=1, groups=1, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(3, cin, 3, padding=1)
        self.up = nn.ConvTranspose2d(cin, cout, k, stride, pad, out_pad, groups=groups, dilation=dilation)
        self.bn, self.head = nn.BatchNorm2d(cout), nn.Conv2d(cout, 4, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.up(torch.relu(self.conv(x))))))


# (cin, cout, k, stride, pad, out_pad, groups, dilation)
GEOMETRIES = {
    "k3s2p1op1": (8, 6, 3, 2, 1, 1, 1, 1),
    "k2s2": (8, 6, 2, 2, 0, 0, 1, 1),
    "grouped": (8, 6, 3, 2, 1, 0, 2, 1),
    "dilated-s1": (8, 6, 3, 1, 2, 0, 1, 2),
    "k4s3": (4, 5, 4, 3, 1, 2, 1, 1),
}


def test_weight_layout_round_trips():
    w = np.arange(8 * 3 * 2 * 2).reshape(8, 3, 2, 2)  # IOHW, 2 groups: C_out = 6
    o = output_major(w, 2)
    assert o.shape == (6, 4, 2, 2)
    assert np.array_equal(o[4, 1], w[5, 1])  # group 1, output 1 (=4), its input 1 (=5)
    assert np.array_equal(input_major(o, 2), w)
    assert torch.equal(input_major(torch.from_numpy(o), 2), torch.from_numpy(w))


@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_conv_transpose_is_bit_exact(geometry, mode):
    torch.manual_seed(11)
    model = _randomize_bn(Decoder(*GEOMETRIES[geometry]))
    x = np.random.default_rng(11).normal(size=(20, 3, 5, 6)).astype(np.float32)
    q = _quantize(model, x[:16], QuantConfig() if mode == "per-layer" else GWQ)
    assert _kinds(q) == ["input", "conv2d", "conv2d_transpose", "conv2d"]
    node = q.graph.nodes["conv2d_transpose_0"]
    assert node.act is not None and node.bias is not None  # BN and ReLU folded into the layer
    assert q.stats["conv2d_transpose_0"].min >= 0  # observed in calibration, after its ReLU
    got = _bit_exact(q, x[16:])
    with torch.no_grad():  # a BN folded along the wrong weight axis would wreck this
        assert _sqnr(got, model(torch.from_numpy(x[16:])).numpy()) > 25
    edges = [e for e in sfc_edges(q.graph) if e.node == "conv2d_transpose_0"]
    assert [(e.src, e.dst) for e in edges] == [("conv2d_0", "conv2d_transpose_0")]
    if mode == "gwq":
        assert sfc_summary(sfc_sites(q.graph, q.plan))["shift_sites"] > 0


def test_conv_transpose_from_onnx_with_uneven_pads():
    """An ONNX ConvTranspose (onnx.helper) with pads torch cannot express: imported, integer, bit-exact,
    and within quantization noise of ONNX's own definition (the torch lowering crops the pads)."""
    rng = np.random.default_rng(12)
    w = (rng.normal(size=(3, 4, 3, 3)) * 0.3).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32) * 0.1
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 0, 1],
                            output_padding=[1, 0])
    relu = helper.make_node("Relu", ["y"], ["z"])
    graph = helper.make_graph([node, relu], "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 11, 10])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(20, 3, 5, 5)).astype(np.float32)
    q = gwq_tvm.quantize(model, x[:16], QuantConfig())
    assert _kinds(q) == ["input", "conv2d_transpose"]
    got = _bit_exact(q, x[16:])
    from gwq_tvm.kinds import get_kind

    with torch.no_grad():
        want = get_kind("conv2d_transpose").float_torch(q.graph.nodes["conv2d_transpose_0"], [torch.from_numpy(x[16:])])
    want = np.maximum(want.numpy(), 0)
    assert got.shape == want.shape == (4, 4, 11, 10)
    assert _sqnr(got, want) > 25
    import onnxruntime as ort

    ort_out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x[16:]})[0]
    np.testing.assert_allclose(want, ort_out, rtol=1e-4, atol=1e-4)


class DecoderHead(Decoder):
    """The decoder with a pooled dense head (the QAT comparison reads a dense layer's logits)."""

    def __init__(self, *geometry):
        super().__init__(*geometry)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(super().forward(x).mean(dim=(2, 3)))


def test_qat_integers_of_conv_transpose_equal_the_compiled_program():
    from test_qat import _compiled_ints, _qat_ints

    torch.manual_seed(13)
    model = _randomize_bn(DecoderHead(*GEOMETRIES["grouped"]))
    x = np.random.default_rng(13).normal(size=(20, 3, 5, 6)).astype(np.float32)
    q = _quantize(model, x[:16], GWQ)
    _, want = _compiled_ints(q, q.plan, q.graph, x[16:])
    _, got = _qat_ints(QATModel(q.graph, q.plan), x[16:])
    np.testing.assert_array_equal(got, want)


def test_conv_transpose_exports_to_onnx_and_reimports(tmp_path):
    from gwq_tvm.qat.export import export_qat

    torch.manual_seed(14)
    model = _randomize_bn(Decoder(*GEOMETRIES["grouped"]))
    x = np.random.default_rng(14).normal(size=(20, 3, 5, 6)).astype(np.float32)
    q = _quantize(model, x[:16])
    onnx_path, plan_path = export_qat(QATModel(q.graph, q.plan), tmp_path / "m.onnx")  # re-import checked inside
    assert "ConvTranspose" in {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    q2 = gwq_tvm.quantize(str(onnx_path), plan=gwq_tvm.QuantPlan.load(plan_path))
    np.testing.assert_array_equal(_bit_exact(q2, x[16:]), _bit_exact(q, x[16:]))


def test_conv_transpose_through_the_default_x86_build():
    """gwq_tvm.build's pipeline (packing, default schedules) runs the transposed conv bit-exact, every kernel scheduled."""
    torch.manual_seed(15)
    model = _randomize_bn(Decoder())
    x = np.random.default_rng(15).normal(size=(20, 3, 5, 6)).astype(np.float32)
    q = _quantize(model, x[:16], GWQ)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a kernel left unscheduled warns
        ex = gwq_tvm.build(q)
    from tvm import relax
    import tvm

    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x[16:])).numpy()
    np.testing.assert_array_equal(got, run_reference(q.mod, x[16:]))


def _unet_q(cfg):
    from gwq_tvm.models import zoo

    torch.manual_seed(0)
    model = zoo.zoo()["unet_small"].build()
    zoo.settle_batch_norm(model, (1, 3, 32, 32), 0)
    x = np.random.default_rng(16).normal(size=(10, 3, 32, 32)).astype(np.float32)
    return model, x, _quantize(model, x[:8], cfg)


@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
def test_zoo_unet_is_integer_only_and_bit_exact(mode):
    model, x, q = _unet_q(QuantConfig() if mode == "per-layer" else GWQ)
    assert _kinds(q).count("conv2d_transpose") == 2 and not q.graph.float_nodes(), _kinds(q)
    got = _bit_exact(q, x[8:])
    with torch.no_grad():
        assert _sqnr(got, model(torch.from_numpy(x[8:])).numpy()) > 20


@pytest.mark.parametrize("preset", ["aarch64-dotprod", "rpi4"])
def test_conv_transpose_builds_for_aarch64_without_unscheduled_kernels(preset):
    import shutil

    from gwq_tvm.schedules.targets import resolve_target

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("apt-get install gcc-aarch64-linux-gnu")
    torch.manual_seed(17)
    x = np.random.default_rng(17).normal(size=(16, 3, 5, 6)).astype(np.float32)
    q = _quantize(_randomize_bn(Decoder()), x, GWQ)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gwq_tvm.build(q, resolve_target(preset))


@pytest.mark.slow
def test_conv_transpose_bit_exact_on_the_aarch64_board(aarch64_remote, tmp_path):
    from gwq_tvm.schedules.targets import resolve_target
    from test_arm_kernels import _run_remote

    torch.manual_seed(18)
    x = np.random.default_rng(18).normal(size=(19, 3, 5, 6)).astype(np.float32)
    q = _quantize(_randomize_bn(Decoder(*GEOMETRIES["grouped"])), x[:16], GWQ)
    ex = gwq_tvm.build(q, resolve_target("aarch64-dotprod"))
    got = _run_remote(aarch64_remote, ex, x[16:], "aarch64-dotprod", tmp_path / "ct.so")
    np.testing.assert_array_equal(got, run_reference(q.mod, x[16:]))
