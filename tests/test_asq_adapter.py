"""ASQ (issue 24): the adaptive per-sample step as an integer side branch, POST units learned in QAT.

What "within 1 LSB" means here: the integer per-sample requantization ``q = clip((acc * mb + r) >> n)``
is within one output code of the ideal ``clip(round(acc * M * beta_in / beta_out))`` with
``beta = B * 2**-F`` (the fixed-point beta the branch computes); and the QAT model's integers (float64
forward, the torch twin of the same recipe) equal the compiled program's exactly (0 LSB).
"""

import dataclasses

import numpy as np
import pytest
import torch

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.cli import main
from gwq_tvm.errors import PlanError
from gwq_tvm.passes.check import check_integer_only
from gwq_tvm.passes.realize import RealizeIntegerProgram
from gwq_tvm.plan import program as P
from gwq_tvm.plan.quantplan import AdapterQuant, QuantPlan
from gwq_tvm.plan.sfc import make_sfc
from gwq_tvm.qat import QATModel, TrainConfig, export_qat, train
from gwq_tvm.qat.fakequant import apply_dynamic as torch_dynamic
from gwq_tvm.reference import run_reference

from conftest import compile_and_run
from test_qat import _compiled_ints, _qat_ints

W4A4_GWQ = QuantConfig(weight_bits=4, act_bits=4, mode="gwq", groups=1, end_bits=8, loss_aware=False)


@pytest.fixture(scope="module")
def resnet_w4a4(fmnist):
    calib, _, _ = fmnist
    return gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:128], W4A4_GWQ)


def _with_adapters(q, trained: bool):
    """``q.plan`` with an adapter on every candidate tensor: random weights, or ``w2 = 0, b2 = 1`` (beta == 1)."""
    rng = np.random.default_rng(0)
    tensors, adapters = dict(q.plan.tensors), {}
    for t in P.adaptive_candidates(q.graph):
        c = q.graph.nodes[t].shape[1]
        h = c // 4
        w2 = rng.normal(0, 0.3, h) if trained else np.zeros(h)
        adapters[t] = AdapterQuant.from_arrays(rng.normal(0, 0.3, (h, c)), rng.normal(0, 0.1, h), w2, 0.7 if trained else 1.0, 0.05)
        tensors[t] = dataclasses.replace(tensors[t], dynamic=t)
    return q.plan.replace(tensors=tensors, adapters=adapters)


# --- arithmetic --------------------------------------------------------------
def test_dynamic_requant_within_one_lsb_and_exact_at_beta_one():
    rng = np.random.default_rng(1)
    ratio = np.array([0.013, 0.25, 3.1e-3, 0.07])
    m, n = P.S.quantize_multiplier(ratio)
    d = P.DynamicRequant(m, n, "a", "b")
    acc = rng.integers(-(1 << 20), 1 << 20, size=(64, 4, 5))
    b_in = rng.integers(P.B_MIN, P.B_MAX + 1, size=64)
    b_out = rng.integers(P.B_MIN, P.B_MAX + 1, size=64)
    got = P.apply_dynamic(acc, d, b_in, b_out)
    ideal = np.rint(acc * ratio[None, :, None] * (b_in / b_out)[:, None, None])
    assert np.abs(np.clip(got, -128, 127) - np.clip(ideal, -128, 127)).max() <= 1
    np.testing.assert_array_equal(torch_dynamic(torch.from_numpy(acc), d, torch.from_numpy(b_in), torch.from_numpy(b_out)).numpy(), got)
    one = np.full(64, 1 << P.BETA_FRAC_BITS)
    static = P.apply_sfc(acc, make_sfc(ratio))
    np.testing.assert_array_equal(P.apply_dynamic(acc, d, one, one), static)
    np.testing.assert_array_equal(P.apply_dynamic(acc, d, None, None), static)
    np.testing.assert_array_equal(P.dynamic_bias(np.array([-7, 0, 5, 1 << 20]), one), [[-7, 0, 5, 1 << 20]] * 64)


class PooledHead(torch.nn.Module):
    """conv -> ReLU -> global pool -> 1x1 conv -> ReLU -> 1x1 conv on the 1x1 map -> dense (MobileNetV3's last
    stage): the 1x1 convs' outputs are adapter candidates whose map has one pixel."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, 2, 1)
        self.a, self.b = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean((2, 3), keepdim=True)
        return self.fc(torch.flatten(self.b(torch.relu(self.a(y))), 1))


def test_adapter_on_a_one_pixel_map_is_bit_exact(fmnist):
    """An adapter on a 1x1 map (window 1) averages nothing: its branch still reads (N, C).  Realizing one ended in
    a Relax shape error (a (N, C, 1, 1) tensor fed to the branch's dense) on the bundled MobileNetV3."""
    calib, test_x, _ = fmnist
    torch.manual_seed(0)
    q = gwq_tvm.quantize(PooledHead().eval(), calib[:64], W4A4_GWQ, input_shape=(None, 1, 28, 28))
    plan = _with_adapters(q, trained=True)
    assert any(q.graph.nodes[t].shape[2:] == (1, 1) for t in plan.adapters), plan.adapters
    mod = RealizeIntegerProgram(plan)(q.float_model.mod)
    np.testing.assert_array_equal(compile_and_run(mod, test_x[:8]), run_reference(mod, test_x[:8]))


# --- plan ------------------------------------------------------------------------
def test_plan_round_trip_and_bad_entries(resnet_w4a4):
    plan = _with_adapters(resnet_w4a4, trained=True)
    d = plan.to_dict()
    again = QuantPlan.from_dict(d)
    assert again.to_dict() == d and set(again.adapters) == set(P.adaptive_candidates(resnet_w4a4.graph))
    t = next(iter(again.adapters))
    for edit, msg in [
        (lambda d: d["adapters"][t].__setitem__("w2", d["adapters"][t]["w2"][:-1]), f"adapters.{t}: w1 has"),
        (lambda d: d["adapters"][t].__setitem__("hidden_scale", 0), f"adapters.{t}.hidden_scale"),
        (lambda d: d["adapters"][t].__setitem__("gain", 1), f"adapters.{t}.gain: unknown key"),
        (lambda d: d["tensors"][t].__setitem__("dynamic", "nope"), f"tensors.{t}.dynamic: no adapter 'nope'"),
        (lambda d: d["adapters"][t].__setitem__("hidden_scale", 1e-300), rf"adapters.{t}.hidden_scale: 1e-300 is outside \[1e-12"),
        # an entry no tensor names would be silently ignored
        (lambda d: d["tensors"][t].pop("dynamic"), f"adapters.{t}: no tensor's 'dynamic' names this adapter"),
    ]:
        bad = QuantPlan.from_dict(d).to_dict()
        edit(bad)
        with pytest.raises(PlanError, match=msg) as err:
            QuantPlan.from_dict(bad)
        assert "\n" not in str(err.value)
    # in-range numbers whose SFC no Q31 multiplier applies (here w1 to the hidden scale: ratio ~1e27) are the
    # plan's error at that site, in one line, not a ValueError from the arithmetic
    w1 = np.asarray(plan.adapters[t].w1)
    w1[0, 0] = 1e30
    huge = plan.replace(adapters={**plan.adapters, t: dataclasses.replace(plan.adapters[t], w1=tuple(map(tuple, w1)))})
    with pytest.raises(PlanError, match=f"adapters.{t}: w1 to hidden_scale: SFC ratio too large") as err:
        P.adapter_recipe(resnet_w4a4.graph, t, huge)
    assert "\n" not in str(err.value)
    # an adapter on a tensor that an add reads is refused when realizing, in one line
    bad = plan.replace(tensors={**plan.tensors, "conv2d_0": dataclasses.replace(plan.tensors["conv2d_0"], dynamic=t)})
    with pytest.raises(PlanError, match="tensors.conv2d_0.dynamic: the adapted tensor must be a conv2d output"):
        RealizeIntegerProgram(bad)(resnet_w4a4.float_model.mod)


# --- compiled program ----------------------------------------------------------
def test_untrained_adapter_reproduces_the_plain_program(resnet_w4a4, fmnist):
    _, x, _ = fmnist
    plan = _with_adapters(resnet_w4a4, trained=False)
    mod = RealizeIntegerProgram(plan)(resnet_w4a4.float_model.mod)
    np.testing.assert_array_equal(compile_and_run(mod, x[:32]), compile_and_run(resnet_w4a4.mod, x[:32]))


def test_adapter_program_is_integer_only_bit_exact_and_counted(resnet_w4a4, fmnist):
    _, x, _ = fmnist
    plan = _with_adapters(resnet_w4a4, trained=True)
    mod = RealizeIntegerProgram(plan)(resnet_w4a4.float_model.mod)
    assert check_integer_only(mod).ok
    out = compile_and_run(mod, x[:32])
    np.testing.assert_array_equal(out, run_reference(mod, x[:32]))
    assert not np.array_equal(out, compile_and_run(resnet_w4a4.mod, x[:32]))  # the adapters do something
    sites = {(s.node, s.port): s.kind for s in P.sfc_sites(resnet_w4a4.graph, plan)}
    for t in plan.adapters:  # the producer and every reader of an adapted tensor take a per-sample multiply
        assert sites[(t, "out")] == "multiply"
        for c in resnet_w4a4.graph.consumers(t):
            assert sites[(c.name, "out")] == "multiply"
    assert P.sfc_summary(P.sfc_sites(resnet_w4a4.graph, plan))["multiply_sites"] > resnet_w4a4.sfc["multiply_sites"]


# --- QAT ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("weights", ["uniform", "post"])
def test_qat_adapter_integers_equal_the_compiled_program(weights, fmnist, tmp_path):
    calib, x, y = fmnist
    cfg = dataclasses.replace(W4A4_GWQ, weights=weights)
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:128], cfg)
    m = QATModel(q.graph, q.plan, adaptive_step="all")
    start = {n: p.detach().clone() for n, p in m.weight_scale.items()}
    train(m, x[:256], y[:256], TrainConfig(epochs=1, batch_size=64, lr=1e-3, scale_lr=2e-2, distill=0.0))
    if weights == "post":  # the per-channel clip is learned, its units stay powers of two (gwq)
        assert any(not torch.equal(start[n], p.detach()) for n, p in m.weight_scale.items())
        plan = m.plan()
        assert all(np.all(P.S.is_power_of_two(np.asarray(w.scales))) for w in plan.layers.values() if w.codebook == "post")
    onnx_path, plan_path = export_qat(m, tmp_path / "asq.onnx")
    plan = QuantPlan.load(plan_path)
    assert set(plan.adapters) == set(P.adaptive_candidates(q.graph))
    q2 = gwq_tvm.quantize(str(onnx_path), plan=plan)
    logits, want = _compiled_ints(q2, q2.plan, q2.graph, x[:200])
    _, got = _qat_ints(m, x[:200])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(run_reference(q2.mod, x[:20]), logits[:20])


# --- CLI ---------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_train_adaptive_step_post_gwq(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    args = ["--quiet", "train", str(gwq_tvm.data.bundled_model()), "-o", str(out), "--limit", "128", "--epochs", "1",
            "--calib-samples", "64", "--weight-bits", "4", "--act-bits", "4", "--mode", "gwq", "--groups", "1",
            "--weights", "post", "--no-loss-aware"]
    assert main(args + ["--adaptive-step", "dense_0"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("gwq-tvm: error: --adaptive-step dense_0") and "\n" not in err
    # a list that names nothing is refused before any work, not trained without adapters
    assert main(args + ["--adaptive-step", " , "]) == 2
    assert capsys.readouterr().err.strip() == ("gwq-tvm: error: --adaptive-step ' , ' names no layer (give the flag "
                                               "alone for every candidate tensor, or a comma list of conv layers)")
    assert not out.exists()
    assert main(args + ["--adaptive-step", "conv2d_2"]) == 0
    plan = QuantPlan.load(out.with_suffix(".plan.json"))
    assert list(plan.adapters) == ["conv2d_1"] and plan.tensors["conv2d_1"].dynamic == "conv2d_1"
    assert {w.codebook for w in plan.layers.values()} >= {"post"}
    assert main(args + ["-o", str(tmp_path / "all.onnx"), "--adaptive-step"]) == 0
    assert len(QuantPlan.load(tmp_path / "all.plan.json").adapters) == 3
