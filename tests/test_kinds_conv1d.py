"""1-D convolution (torch Conv1d, ONNX Conv on 3-D input): conv2d's integer program on one spatial axis."""

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.plan.program import sfc_summary, sfc_sites
from gwq_tvm.qat import QATModel
from gwq_tvm.reference import run_reference

from test_kinds_edge import _bit_exact, _kinds, _quantize, _sqnr

GWQ = QuantConfig(mode="gwq", groups=2, loss_aware=False)


class Net1d(nn.Module):
    """conv-BN-ReLU, a strided grouped conv with ReLU, a dilated valid conv; optionally a flatten-dense head (24 samples)."""

    def __init__(self, head=False):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.c2, self.c3 = nn.Conv1d(8, 8, 5, stride=2, padding=2, groups=2), nn.Conv1d(8, 4, 3, dilation=2)
        self.fc = nn.Linear(4 * 8, 10) if head else None

    def forward(self, x):
        y = self.c3(torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))))
        return self.fc(y.flatten(1)) if self.fc is not None else y


def _model(head=False, seed=30):
    torch.manual_seed(seed)
    m = Net1d(head)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
    return m.eval()


@pytest.mark.parametrize("frontend", ["torch", "onnx"])
@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
def test_conv1d_is_bit_exact(frontend, mode):
    model = _model()
    x = np.random.default_rng(30).normal(size=(20, 3, 24)).astype(np.float32)
    q = _quantize(model, x[:16], QuantConfig() if mode == "per-layer" else GWQ, frontend)
    assert _kinds(q) == ["input", "conv1d", "conv1d", "conv1d"] and q.graph.nodes["conv1d_0"].bias is not None
    got = _bit_exact(q, x[16:])
    with torch.no_grad():
        assert _sqnr(got, model(torch.from_numpy(x[16:])).numpy()) > 25
    if mode == "gwq":
        assert sfc_summary(sfc_sites(q.graph, q.plan))["shift_sites"] > 0


def test_qat_integers_of_conv1d_equal_the_compiled_program():
    from test_qat import _compiled_ints, _qat_ints

    x = np.random.default_rng(31).normal(size=(20, 3, 24)).astype(np.float32)
    q = _quantize(_model(head=True, seed=31), x[:16], GWQ)
    assert _kinds(q).count("conv1d") == 3
    _, want = _compiled_ints(q, q.plan, q.graph, x[16:])
    _, got = _qat_ints(QATModel(q.graph, q.plan), x[16:])
    np.testing.assert_array_equal(got, want)


def test_conv1d_exports_to_onnx_and_reimports(tmp_path):
    from gwq_tvm.qat.export import export_qat

    x = np.random.default_rng(32).normal(size=(20, 3, 24)).astype(np.float32)
    q = _quantize(_model(seed=32), x[:16])
    onnx_path, plan_path = export_qat(QATModel(q.graph, q.plan), tmp_path / "m.onnx")  # re-import checked inside
    assert "Conv" in {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    q2 = gwq_tvm.quantize(str(onnx_path), plan=gwq_tvm.QuantPlan.load(plan_path))
    np.testing.assert_array_equal(_bit_exact(q2, x[16:]), _bit_exact(q, x[16:]))


@pytest.mark.parametrize("preset", [None, "aarch64-dotprod"])
def test_conv1d_builds_without_unscheduled_kernels(preset):
    import shutil

    import tvm
    from tvm import relax

    from gwq_tvm.schedules.targets import resolve_target

    if preset and shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("apt-get install gcc-aarch64-linux-gnu")
    x = np.random.default_rng(33).normal(size=(19, 3, 24)).astype(np.float32)
    q = _quantize(_model(seed=33), x[:16], GWQ)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = gwq_tvm.build(q, resolve_target(preset) if preset else None)
    if preset is None:  # the host build runs here: bit-exact through the project's pipeline
        got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x[16:])).numpy()
        np.testing.assert_array_equal(got, run_reference(q.mod, x[16:]))


class Swish1d(nn.Module):
    """conv-BN-SiLU (an asymmetric output: -0.28 .. max) read by a padded, strided conv1d and a valid one."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.c2, self.c3 = nn.Conv1d(8, 8, 5, stride=2, padding=(2)), nn.Conv1d(8, 4, 3)

    def forward(self, x):
        return self.c3(nn.functional.silu(self.c2(nn.functional.silu(self.bn(self.c1(x))))))


@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
def test_conv1d_takes_an_input_zero_point_bit_exact(mode):
    """The W8A8 planner gives the SiLU outputs zero points (conv1d folds ``-z * sum(q_w)`` into its bias and pads
    with ``z``; GWQ gives one only where halving its group's step clips little); the compiled program equals the
    reference, and the zero points do not cost accuracy."""
    torch.manual_seed(34)
    model = Swish1d().eval()
    x = np.random.default_rng(34).normal(size=(24, 3, 32)).astype(np.float32)
    cfg = QuantConfig() if mode == "per-layer" else GWQ
    q = _quantize(model, x[:16], cfg)
    conv_inputs = {node.inputs[0] for node in q.graph.nodes.values() if node.kind == "conv1d"}
    with_zp = {n for n in conv_inputs if q.plan.tensors[n].zero_point}
    if mode == "per-layer":
        assert len(with_zp) == 2, with_zp  # both SiLU outputs
    got = _bit_exact(q, x[16:])
    sym = _bit_exact(_quantize(model, x[:16], QuantConfig(**{**cfg.to_dict(), "symmetric_activations": True})), x[16:])
    with torch.no_grad():
        want = model(torch.from_numpy(x[16:])).numpy()
    assert _sqnr(got, want) >= _sqnr(sym, want) - 0.5
