"""Compiled TVM integer programs equal the numpy reference exactly, and are integer-only."""

import numpy as np
import pytest
import torch
from torch import nn

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.reference import run_reference

from conftest import compile_and_run


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


class DepthwiseNet(nn.Module):
    """Depthwise + grouped conv, ReLU6, window average pool, dense head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(8, 12, 3, 1, 1, groups=4), nn.ReLU())
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(12 * 7 * 7, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.grouped(self.dw(self.stem(x)))), 1))


class ConcatNet(nn.Module):
    """Inception-style branches joined by concat, padded max pool, signed (no-ReLU) tensors."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, 1, 1), nn.ReLU())
        self.b1 = nn.Conv2d(6, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(6, 5, 3, 1, 1), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv = nn.Sequential(nn.Conv2d(9, 7, 3, 2, 1), nn.BatchNorm2d(7), nn.ReLU())
        self.fc = nn.Linear(7, 10)

    def forward(self, x):
        y = self.stem(x)
        y = self.conv(self.pool(torch.cat([self.b1(y), self.b2(y)], dim=1)))
        return self.fc(y.mean(dim=(2, 3)))


class DenseNet(nn.Module):
    """A pure dense (MLP) classifier on flattened images."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def _check(q, x):
    assert q.integer_only.ok, str(q.integer_only)
    tvm_out = compile_and_run(q.mod, x)
    ref = run_reference(q.mod, x)
    np.testing.assert_array_equal(tvm_out, ref)
    return tvm_out


@pytest.mark.parametrize("net", [DepthwiseNet, ConcatNet, DenseNet])
def test_torch_architectures_bit_exact(net, fmnist):
    calib, test_x, _ = fmnist
    torch.manual_seed(0)
    model = _randomize_bn(net())
    q = gwq_tvm.quantize(model, calib[:64], QuantConfig(), input_shape=(None, 1, 28, 28))
    kinds = {n.kind for n in q.graph.nodes.values()}
    expected = {DepthwiseNet: {"avgpool", "dense"}, ConcatNet: {"concat", "maxpool", "global_avgpool"}, DenseNet: {"dense"}}[net]
    assert expected <= kinds and "float" not in kinds
    out = _check(q, test_x[:16])
    with torch.no_grad():
        ref = model(torch.from_numpy(test_x[:16])).numpy()
    # the int8 program approximates the float model (sanity, not the subject here)
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.98


def test_depthwise_groups_are_kept(fmnist):
    calib, _, _ = fmnist
    q = gwq_tvm.quantize(_randomize_bn(DepthwiseNet()), calib[:32], input_shape=(None, 1, 28, 28))
    groups = sorted(n.attrs["groups"] for n in q.graph.nodes.values() if n.kind == "conv2d")
    assert groups == [1, 4, 8]


def test_bundled_model_bit_exact_w8a8(bundled_int8, fmnist):
    _, test_x, _ = fmnist
    _check(bundled_int8, test_x[:64])


@pytest.mark.parametrize("bits", [(4, 4), (8, 2)])
def test_bundled_model_bit_exact_low_bits(bits, fmnist):
    calib, test_x, _ = fmnist
    cfg = QuantConfig(weight_bits=bits[0], act_bits=bits[1])
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:128], cfg)
    _check(q, test_x[:32])
    assert max(t.bits for t in q.plan.tensors.values()) == bits[1]


def test_pot_mode_is_all_shifts_and_bit_exact(fmnist):
    calib, test_x, _ = fmnist
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:128], QuantConfig(mode="pot"))
    from gwq_tvm.plan.program import sfc_sites

    sites = sfc_sites(q.graph, q.plan)
    # every conv and residual-add SFC is a shift; only the 7x7 mean (a division by 49) keeps a multiply
    assert {s.node for s in sites if s.kind == "multiply"} == {"global_avgpool_0"}
    assert sum(s.kind == "shift" for s in sites) == 9 + 2 * 3
    _check(q, test_x[:16])
