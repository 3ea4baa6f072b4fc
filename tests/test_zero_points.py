"""Asymmetric uint8 activations: per-tensor zero points (``r = s * (q - z)``).

The plan carries them (validated, serialized), the W8A8 planner chooses them for asymmetric tensors
whose readers take them, and every kind that accepts one stays bit-exact against the numpy reference
(which interprets the realized Relax and shares no code with the recipes).
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import PlanError, UnsupportedOpError
from gwq_tvm.graph import kind_of
from gwq_tvm.plan.program import zero_point_blocker
from gwq_tvm.plan.quantplan import QuantPlan
from gwq_tvm.reference import run_reference

from conftest import compile_and_run

SHAPE = (None, 1, 28, 28)


class SwishNet(nn.Module):
    """EfficientNet/MobileNetV3-style: swish and hardswish outputs read by padded, strided and depthwise convs,
    a squeeze-excitation (global average pool, product with a sigmoid gate), an explicit pad, max pool, flatten, dense."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, 2, 1), nn.BatchNorm2d(c), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c), nn.BatchNorm2d(c), nn.Hardswish())
        self.se1, self.se2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.pw = nn.Sequential(nn.Conv2d(c, 12, 3, 1, (1, 2)), nn.BatchNorm2d(12), nn.SiLU())
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(12 * 3 * 4, 10)

    def forward(self, x):
        y = self.dw(self.stem(x))
        g = torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        y = self.pw(y * g)
        y = self.pool(F.pad(y, (0, 1, 1, 0)))
        return self.fc(torch.flatten(y[:, :, :3, :4], 1))


def _settle(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def net(fmnist):
    calib, test_x, _ = fmnist
    torch.manual_seed(0)
    return _settle(SwishNet()), calib[:64], test_x[:16]


@pytest.fixture(scope="module")
def quantized(net):
    model, calib, _ = net
    return {mode: gwq_tvm.quantize(model, calib, QuantConfig(mode=mode), input_shape=SHAPE) for mode in ("per-layer", "gwq")}


# --- the plan ------------------------------------------------------------------------
def _plan_dict(**tensor):
    t = {"bits": 8, "signed": False, "group": "g", "exponent": -4, **tensor}
    return {"format": "gwq-tvm/quantplan", "version": 2, "fingerprint": "f", "groups": {"g": 1.5}, "tensors": {"x": t}}


def test_plan_round_trip_keeps_the_zero_point(tmp_path):
    plan = QuantPlan.from_dict(_plan_dict(zero_point=37))
    assert plan.tensors["x"].zero_point == 37
    plan.save(tmp_path / "p.json")
    assert QuantPlan.load(tmp_path / "p.json") == plan
    assert "zero_point" not in QuantPlan.from_dict(_plan_dict()).to_dict()["tensors"]["x"]  # 0 is not written
    assert QuantPlan.from_dict(_plan_dict()).tensors["x"].zero_point == 0


@pytest.mark.parametrize("edit,message", [
    (dict(zero_point=256), r"tensors\.x\.zero_point: 256 is outside the 8-bit unsigned range 0\.\.255"),
    (dict(zero_point=-1), r"tensors\.x\.zero_point: -1 is outside"),
    (dict(zero_point=8, bits=3), r"tensors\.x\.zero_point: 8 is outside the 3-bit unsigned range 0\.\.7"),
    (dict(zero_point=3, signed=True), r"tensors\.x\.zero_point: 3 on a signed tensor"),
    (dict(zero_point="3"), r"tensors\.x\.zero_point: expected an integer"),
    (dict(zero_point=True), r"tensors\.x\.zero_point: expected an integer"),
])
def test_a_bad_zero_point_is_one_plan_error_line(tmp_path, edit, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_plan_dict(**edit)))
    with pytest.raises(PlanError, match=message) as err:
        QuantPlan.load(path)
    assert "\n" not in str(err.value)


def test_symmetric_activations_is_written_only_when_set():
    assert "symmetric_activations" not in QuantConfig().to_dict()
    assert QuantConfig.from_dict(QuantConfig(symmetric_activations=True).to_dict()).symmetric_activations


# --- planning ----------------------------------------------------------------------------
def test_w8a8_plans_swish_outputs_unsigned_with_zero_points(quantized, net):
    model, calib, _ = net
    for mode, q in quantized.items():
        zp = {n: t for n, t in q.plan.tensors.items() if t.zero_point}
        luts = {n for n, node in q.graph.nodes.items() if node.kind == "lut"}
        # the swish / hardswish outputs (GWQ halves a group's step only where that clips little of the top)
        assert len(luts & set(zp)) >= (3 if mode == "per-layer" else 1), zp
        assert all(not t.signed for t in zp.values())
        for name in zp:  # only where the producer and every reader take a zero point
            assert zero_point_blocker(q.graph, q.graph.tensor_of(name), q.plan.layers) is None
    sym = gwq_tvm.quantize(model, calib, QuantConfig(symmetric_activations=True), input_shape=SHAPE)
    assert not any(t.zero_point for t in sym.plan.tensors.values())
    low = gwq_tvm.quantize(model, calib, QuantConfig(weight_bits=4), input_shape=SHAPE)  # zero points are W8A8's
    assert not any(t.zero_point for t in low.plan.tensors.values())


def test_gwq_zero_points_keep_the_group_mantissa_and_the_shifts(quantized, net):
    model, calib, _ = net
    q = quantized["gwq"]
    sym = gwq_tvm.quantize(model, calib, QuantConfig(mode="gwq", symmetric_activations=True), input_shape=SHAPE)
    assert q.plan.groups == sym.plan.groups
    for name, t in q.plan.tensors.items():
        if t.zero_point:  # the same group, half the step
            assert (t.group, t.exponent) == (sym.plan.tensors[name].group, sym.plan.tensors[name].exponent - 1)
    assert q.sfc["shift_share"] == sym.sfc["shift_share"]


# --- the integer program ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
def test_planned_zero_points_are_bit_exact_and_integer_only(quantized, net, mode):
    q = quantized[mode]
    x = net[2]
    assert q.integer_only.ok, q.integer_only
    np.testing.assert_array_equal(compile_and_run(q.mod, x), run_reference(q.mod, x))


def _with_random_zero_points(q, seed: int):
    """``q.plan`` with every tensor that can hold one given a random zero point and a random step (hand-edited)."""
    rng = np.random.default_rng(seed)
    tensors, groups, edited = dict(q.plan.tensors), dict(q.plan.groups), set()
    for name in q.graph.tensors():
        t = tensors[name]
        if name == q.graph.input or t.bits != 8 or zero_point_blocker(q.graph, name, q.plan.layers) is not None:
            continue
        tensors[name] = dataclasses.replace(t, signed=False, zero_point=int(rng.integers(0, 256)), group=name,
                                            exponent=t.exponent + int(rng.integers(-1, 2)))
        groups[name] = float(rng.uniform(1.0, 2.0))
        edited.add(name)
    for name in q.graph.nodes:
        tensors[name] = tensors[q.graph.tensor_of(name)]
    return q.plan.replace(tensors=tensors, groups=groups), edited


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_kind_taking_zero_points_is_bit_exact_over_a_sweep(net, seed):
    """Random zero points (0-255) and steps on every tensor whose producer and readers take one: conv2d (padded,
    strided, depthwise, uneven padding), dense, lookup tables (in and out), global average pool, product,
    pad, max pool, slice-free reshape; the compiled program equals the reference."""
    model, calib, x = net
    q = gwq_tvm.quantize(model, calib, QuantConfig(symmetric_activations=True), input_shape=SHAPE)
    plan, edited = _with_random_zero_points(q, seed)
    readers = {kind_of(c).name for t in edited for c in q.graph.consumers(t)}
    assert {"conv2d", "lut", "global_avgpool", "mul", "pad"} <= readers, readers
    mod = _realize(q, plan)
    np.testing.assert_array_equal(compile_and_run(mod, x), run_reference(mod, x))


def _realize(q, plan):
    from gwq_tvm.passes.realize import RealizeIntegerProgram

    return RealizeIntegerProgram(plan)(q.float_model.mod)


def _conv_reading(q, plan):
    return next(n for n, node in q.graph.nodes.items()
                if node.kind == "conv2d" and any(node.attrs["padding"]) and plan.tensors[node.inputs[0]].zero_point)


def _calls(mod, op):
    from tvm import relax

    return [b for blk in mod["main"].body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == op]


def test_conv_bias_absorbs_minus_z_sum_w_and_pads_with_z(quantized):
    """Before (zero point 0) / after (z): the conv's bias constant moves by ``-z * sum(q_w,c)`` of the IR's own weight
    constant, and the conv reads an explicit pad by ``z`` with no padding of its own."""
    q = quantized["per-layer"]
    name = _conv_reading(q, q.plan)
    src = q.graph.tensor_of(q.graph.nodes[name].inputs[0])
    z = q.plan.tensors[src].zero_point
    zero = {n: dataclasses.replace(t, zero_point=0) if q.graph.tensor_of(n) == src else t for n, t in q.plan.tensors.items()}
    before, after = _realize(q, q.plan.replace(tensors=zero)), _realize(q, q.plan)

    def conv_and_bias(mod):
        convs = _calls(mod, "relax.nn.conv2d")
        bias_of = {}
        for b in _calls(mod, "relax.add"):
            for k, c in enumerate(convs):  # keyed by position: the same convs in the same order before and after
                if b.value.args[0].same_as(c.var):
                    bias_of[k] = (c, b.value.args[1].value.numpy())
        return bias_of

    b0, b1 = conv_and_bias(before), conv_and_bias(after)
    pads = [p for p in _calls(after, "relax.nn.pad") if float(p.value.attrs.pad_value) == z]
    assert pads, "no pad by the zero point"
    moved = 0
    for key, (conv, bias) in b1.items():
        if not any(conv.value.args[0].same_as(p.var) for p in pads):
            continue
        assert all(int(v) == 0 for v in conv.value.attrs.padding)
        w = conv.value.args[1].value.numpy().astype(np.int64)
        old = b0[key][1].astype(np.int64)
        np.testing.assert_array_equal(bias.astype(np.int64).reshape(-1), (old.reshape(-1) - z * w.reshape(w.shape[0], -1).sum(1)))
        moved += 1
    assert moved >= 1
    assert not _calls(before, "relax.nn.pad") or all(float(p.value.attrs.pad_value) != z for p in _calls(before, "relax.nn.pad"))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, 1, 1), nn.Conv2d(4, 4, 3, 1, 1)

    def forward(self, x):
        y = F.silu(self.a(x))
        return (y + self.b(y)).mean((2, 3))


def test_a_zero_point_on_a_tensor_a_kind_cannot_take_is_one_line(fmnist):
    """The residual add takes no zero points: the planner keeps its input symmetric, and a hand-edited plan that
    gives it one is refused naming the tensor and the node."""
    calib = fmnist[0][:32]
    q = gwq_tvm.quantize(_settle(Residual()), calib, QuantConfig(), input_shape=SHAPE)
    lut = next(n for n, node in q.graph.nodes.items() if node.kind == "lut")
    assert q.plan.tensors[lut].zero_point == 0 and zero_point_blocker(q.graph, lut, q.plan.layers) is not None
    tensors = {**q.plan.tensors, lut: dataclasses.replace(q.plan.tensors[lut], signed=False, zero_point=5)}
    with pytest.raises(PlanError, match=rf"tensors\.{lut}\.zero_point: 5, but add node add_0 does not take zero points") as err:
        _realize(q, q.plan.replace(tensors=tensors))
    assert "\n" not in str(err.value)


def test_qat_refuses_zero_points_in_one_line(quantized):
    from gwq_tvm.qat import QATModel

    q = quantized["per-layer"]
    with pytest.raises(UnsupportedOpError, match=r"QAT keeps activations symmetric; tensors\.\S+ has zero point \d+: "
                                                  r"plan with symmetric_activations=True"):
        QATModel(q.graph, q.plan)


@pytest.mark.parametrize("preset", [None, "x86-avx2", "x86-64"], ids=["host-vnni", "avx2", "x86-64"])
def test_zero_point_program_is_bit_exact_on_the_x86_kernel_families(quantized, net, preset):
    """The packed kernels on this host (AVX-512 VNNI: the uint8 codes as they are, the zero points in the folded
    bias), AVX2 (widened to int16) and plain x86-64."""
    import tvm
    from tvm import relax

    from gwq_tvm.schedules.targets import resolve_target

    q, x = quantized["per-layer"], net[2]
    vm = relax.VirtualMachine(gwq_tvm.build(q, resolve_target(preset)) if preset else gwq_tvm.build(q), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(out.numpy(), run_reference(q.mod, x))


@pytest.mark.slow
def test_zero_point_program_is_bit_exact_on_the_emulated_aarch64_board(aarch64_remote, quantized, net, tmp_path):
    from test_arm_kernels import _run_remote

    from gwq_tvm.schedules.targets import resolve_target

    q, x = quantized["gwq"], net[2][:3]
    for preset in ("aarch64-dotprod", "rpi4"):
        got = _run_remote(aarch64_remote, gwq_tvm.build(q, resolve_target(preset)), x, preset, tmp_path / f"zp_{preset}.so")
        np.testing.assert_array_equal(got, run_reference(q.mod, x))


class DenseBlock(nn.Module):
    """DenseNet-style: two pre-activation conv outputs joined by a concat, then batch norm + ReLU (an affine node,
    the BN cannot fold across the concat) and a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.stem, self.c1 = nn.Conv2d(1, 4, 3, 1, 1), nn.Conv2d(4, 4, 3, 1, 1)
        self.bn, self.c2, self.fc = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), nn.Linear(4, 10)

    def forward(self, x):
        y = self.stem(x)
        z = torch.cat([y, self.c1(y)], 1)
        return self.fc(self.c2(torch.relu(self.bn(z))).mean((2, 3)))


@pytest.fixture(scope="module")
def dense(fmnist):
    torch.manual_seed(1)
    calib, test_x, _ = fmnist
    model = _settle(DenseBlock())
    return gwq_tvm.quantize(model, calib[:32], QuantConfig(symmetric_activations=True), input_shape=SHAPE), test_x[:8]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concat_and_affine_take_zero_points_bit_exact(dense, seed):
    """Random zero points on the concat's inputs and output and on the affine node's input: the compiled program
    equals the reference, and stays integer-only."""
    q, x = dense
    plan, edited = _with_random_zero_points(q, seed)
    concat = next(n for n, node in q.graph.nodes.items() if node.kind == "concat")
    assert concat in edited and set(q.graph.nodes[concat].inputs) <= edited
    assert {kind_of(c).name for c in q.graph.consumers(concat)} == {"affine"}
    mod = _realize(q, plan)
    assert gwq_tvm.check_integer_only(mod).ok
    np.testing.assert_array_equal(compile_and_run(mod, x), run_reference(mod, x))


def test_concat_with_zero_points_subtracts_z_in_and_adds_z_out(dense):
    """Before (symmetric) / after (zero points on the concat's inputs and output): each requantized input gains
    ``- z_in`` before its SFC and ``+ z_out`` after it."""
    q, _ = dense
    plan, _ = _with_random_zero_points(q, 0)
    before, after = _realize(q, q.plan), _realize(q, plan)
    concat = next(n for n, node in q.graph.nodes.items() if node.kind == "concat")
    z_ins = sorted(plan.tensors[s].zero_point for s in q.graph.nodes[concat].inputs)
    z_out = plan.tensors[concat].zero_point
    from tvm.ir.expr import Constant

    consts = lambda mod, op: sorted(int(b.value.args[1].value.numpy()) for b in _calls(mod, op)  # noqa: E731
                                    if isinstance(b.value.args[1], Constant) and b.value.args[1].value.numpy().size == 1)
    assert not consts(before, "relax.subtract")
    assert [z for z in z_ins if z] == [z for z in consts(after, "relax.subtract") if z in z_ins]
    assert consts(after, "relax.add").count(z_out) >= 2 > consts(before, "relax.add").count(z_out)
