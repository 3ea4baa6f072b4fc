"""GDRQ in QAT (issue 19): filter-group steps and Scale-Clip trained with the weights, honoured exactly by the compiler."""

import numpy as np
import pytest
import torch

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.cli import main
from gwq_tvm.errors import ConfigError, UnsupportedOpError
from gwq_tvm.plan import program as P
from gwq_tvm.plan import scales as S
from gwq_tvm.plan.quantplan import QuantPlan
from gwq_tvm.qat import QATModel, TrainConfig, clip_options, export_qat, train

from conftest import compile_and_run
from test_subl_gdrq import _bit_exact, _ops, small_net

GDRQ = dict(weight_bits=4, act_bits=4, weight_groups=2, scale_clip="std", scale_clip_k=1.5, act_clip_k=2.0)
MODES = {"per-layer": {}, "gwq": {"groups": 1, "loss_aware": False}}


@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    return gwq_tvm.load_model(small_net()), x, rng.integers(0, 4, 64)


def _gdrq(net, mode, **extra):
    fm, x, _ = net
    cfg = QuantConfig(mode=mode, **{**GDRQ, **MODES[mode], **extra})
    q = gwq_tvm.quantize(fm, x, cfg)
    return q, QATModel(q.graph, q.plan, **clip_options(cfg))


def _qat_ints(model, x):
    """The float64 fake-quant model's integer outputs (the final layer's int32 accumulators)."""
    model.set_dtype(torch.float64).eval()
    with torch.no_grad():
        _, ints = model(torch.from_numpy(x).double(), return_int=True)
    model.set_dtype(torch.float32)
    return ints.numpy()


def _compiled_ints(q, x):
    """The compiled program's output divided by the final accumulator's unit (input scale x per-channel weight step)."""
    logits = compile_and_run(q.mod, x)
    out = q.graph.outputs[0]
    unit = q.plan.scale(q.graph.tensor_of(q.graph.nodes[out].inputs[0])) * P.weight_scales(q.graph.nodes[out], q.plan)
    return np.rint(logits / unit).astype(np.int64)


@pytest.mark.parametrize("mode", list(MODES))
def test_trained_gdrq_integers_equal_the_compiled_program(net, mode, tmp_path):
    """Two QAT steps move group steps, clipped weights and capped activation ranges; the export, compiled by TVM,
    computes the trained model's integers exactly (and is bit-exact against the numpy reference)."""
    fm, x, y = net
    q, m = _gdrq(net, mode)
    assert q.plan.layers["conv2d_0"].block == (2, 1) and len(m.weight_scale["conv2d_0"]) == 2
    train(m, x, y, TrainConfig(epochs=1, batch_size=32, lr=1e-2, scale_lr=5e-2))
    learned = m.plan()
    assert learned.diff(q.plan)  # training moved the plan: this is not the PTQ plan
    assert np.isfinite(m.act_sigma.numpy()).all()
    clipped = {n for n in m.weight if not torch.equal(m.effective_weight(n), m.weight[n])}
    assert clipped  # Scale-Clip at 1.5 sigma is active somewhere
    if mode == "gwq":  # the one activation group's SFCs stay shifts: every group step a power of two
        assert all(S.is_power_of_two(np.asarray(w.scales)).all() for w in learned.layers.values())
    onnx_path, plan_path = export_qat(m, tmp_path / "m.onnx")
    plan = QuantPlan.load(plan_path)
    assert plan.provenance["qat_scale_clip"]["scale_clip"] == "std"
    q2 = gwq_tvm.quantize(str(onnx_path), plan=plan)
    _bit_exact(q2, x)
    np.testing.assert_array_equal(_compiled_ints(q2, x[:32]), _qat_ints(m, x[:32]))


def test_exported_group_folding_adds_no_op(net, tmp_path):
    """The trained G=2 export compiles to the op list of the per-channel export: the group steps are folded into
    the per-channel SFC constants."""
    fm, x, y = net
    mods = {}
    for name, extra in (("groups", {}), ("channel", {"weight_groups": None})):
        q, m = _gdrq(net, "gwq", **extra)
        train(m, x[:32], y[:32], TrainConfig(epochs=1, batch_size=32))
        onnx_path, plan_path = export_qat(m, tmp_path / name / "m.onnx")
        q2 = gwq_tvm.quantize(str(onnx_path), plan=QuantPlan.load(plan_path))
        assert (q2.plan.layers["conv2d_0"].granularity, name) in {("block", "groups"), ("channel", "channel")}
        mods[name] = q2
    assert _ops(mods["groups"].mod) == _ops(mods["channel"].mod)
    assert mods["groups"].sfc["shift_share"] == mods["channel"].sfc["shift_share"]


def test_group_steps_get_one_lsq_gradient_per_group(net):
    _, m = _gdrq(net, "per-layer")
    fm, x, _ = net
    m(torch.from_numpy(x[:16])).square().mean().backward()
    g = m.weight_scale["conv2d_0"].grad
    assert g.shape == (2,) and torch.isfinite(g).all() and bool((g != 0).all())


def test_weight_scale_clip_is_k_sigma_recomputed_every_step(net):
    """The clip is k * std of each filter group's current weights; weights beyond it get no gradient."""
    _, m = _gdrq(net, "per-layer")
    n = "conv2d_2"
    w = m.weight[n].detach().double().reshape(8, -1).numpy()
    want = np.repeat([1.5 * w[:4].std(), 1.5 * w[4:].std()], 4).astype(np.float32)
    np.testing.assert_array_equal(m.weight_clip(n).reshape(-1).numpy(), want)
    with torch.no_grad():
        m.weight[n][:4] *= 2  # sigma of group 0 doubles, group 1's is unchanged
    np.testing.assert_allclose(m.weight_clip(n).reshape(-1).numpy(), want * np.repeat([2, 1], 4), rtol=1e-6)
    fm, x, _ = net
    m(torch.from_numpy(x[:16])).square().mean().backward()
    outside = m.weight[n].detach().abs() > m.weight_clip(n)
    assert outside.any() and bool((m.weight[n].grad[outside] == 0).all())
    assert bool((m.weight[n].grad[~outside] != 0).any())


def test_activation_ranges_are_capped_at_k_sigma(net):
    """After a training step every clipped tensor's range ``qmax * m * 2**e`` is at most ``sqrt(2) * k * sigma_t``."""
    fm, x, y = net
    q, m = _gdrq(net, "gwq")
    train(m, x[:32], y[:32], TrainConfig(epochs=1, batch_size=32))
    m.train()
    m.cap_activation_exponents_()
    plan = m.plan()
    capped = 0
    for i, t in enumerate(m.act_clipped):
        tq = plan.tensors[t]
        top = S.qrange(tq.bits, tq.signed)[1] * plan.scale(t)
        assert top <= np.sqrt(2) * 2.0 * float(m.act_sigma[i]) * (1 + 1e-9), t
        capped += plan.scale(t) < q.plan.scale(t)
    assert capped  # k = 2 is below the calibrated range somewhere


def test_chosen_k_is_scored_with_the_clip_applied_before_the_starting_steps(net):
    """gwq (power-of-two steps rounded up): each layer's k has the least literal-clip weight error of CLIP_KS,
    computed here independently with numpy; the post-training search's k (scored by the step it implies) is no better."""
    from gwq_tvm.plan import sublayer

    fm, x, _ = net
    q, m = _gdrq(net, "gwq", weight_bits=4, scale_clip_k=None)
    for n, k in m.weight_clip_k.items():
        w = q.graph.nodes[n].weight.astype(np.float64)
        steps = P.weight_scale_map(q.graph.nodes[n], q.plan)
        rows = w.reshape(w.shape[0], -1)
        n_out = q.plan.layers[n].block[0] if q.plan.layers[n].block else w.shape[0]
        sig = rows.reshape(n_out, -1).std(axis=1).repeat(w.shape[0] // n_out).reshape((-1,) + (1,) * (w.ndim - 1))

        def err(kk):
            c = np.minimum(kk * sig, np.abs(rows).reshape(n_out, -1).max(axis=1).repeat(w.shape[0] // n_out).reshape(sig.shape))
            qi = S.quantize_weight(np.clip(w, -c, c), steps, q.plan.layers[n].bits)
            return ((w - qi * steps) ** 2).sum()

        errors = [err(kk) for kk in sublayer.CLIP_KS]
        assert np.isclose(err(k), min(errors), rtol=1e-9), n
        b = sublayer.blocks_of(q.graph.nodes[n].weight, n_out, 1)
        ptq_k = sublayer.choose_clip_k(q.graph.nodes[n].weight, b, q.plan.layers[n].bits, True, "std", None)
        assert err(k) <= err(ptq_k) * (1 + 1e-12), n


def test_a_checkpoint_of_other_clip_settings_is_refused(net, tmp_path):
    from gwq_tvm.errors import GwqError

    fm, x, y = net
    q, m = _gdrq(net, "per-layer")
    train(m, x[:32], y[:32], TrainConfig(epochs=1, batch_size=32), work_dir=tmp_path)
    other = QATModel(q.graph, q.plan, scale_clip="std", scale_clip_k=3.0, act_clip_k=2.0)
    with pytest.raises(GwqError, match="other training settings"):
        train(other, x[:32], y[:32], TrainConfig(epochs=1, batch_size=32), work_dir=tmp_path)


def test_without_scale_clip_nothing_is_clipped(net):
    fm, x, _ = net
    q = gwq_tvm.quantize(fm, x, QuantConfig(weight_bits=4, weight_groups=2))
    m = QATModel(q.graph, q.plan)
    assert all(m.weight_clip(n) is None for n in m.weight) and m.act_clipped == []
    assert "qat_scale_clip" not in m.plan().provenance


@pytest.mark.parametrize("kwargs, match", [
    ({"scale_clip": "max"}, "scale_clip must be one of std, mean-abs"),
    ({"scale_clip": "std", "scale_clip_k": 0.0}, "scale_clip_k must be a positive number"),
    ({"act_clip_k": float("inf")}, "act_clip_k must be a positive number"),
    ({"scale_clip_k": 2.0}, "needs scale_clip"),
])
def test_bad_clip_options(net, kwargs, match):
    fm, x, _ = net
    q = gwq_tvm.quantize(fm, x, QuantConfig(weight_bits=4))
    with pytest.raises(ConfigError, match=match):
        QATModel(q.graph, q.plan, **kwargs)


def test_input_blocks_are_refused_in_one_line(net):
    fm, x, _ = net
    q = gwq_tvm.quantize(fm, x, QuantConfig(weight_bits=4, weight_blocks=(2, 3), weight_blocks_fit="gcd"))
    with pytest.raises(UnsupportedOpError, match="Gx1 filter groups; layers.conv2d_0 is block 2x3"):
        QATModel(q.graph, q.plan)


# --- the command line ----------------------------------------------------------------
def _train_args(tmp_path):
    return ["--quiet", "train", str(gwq_tvm.data.bundled_model()), "--data", "bundled:calib", "--limit", "64",
            "--epochs", "1", "--batch-size", "64", "-o", str(tmp_path / "m.onnx"), "--calib-samples", "64", "--no-loss-aware",
            "--weight-bits", "4", "--act-bits", "4", "--groups", "1"]


def test_cli_train_gdrq(tmp_path, capsys):
    args = _train_args(tmp_path) + ["--weight-groups", "2", "--weight-blocks-fit", "gcd", "--scale-clip", "mean-abs",
                                    "--scale-clip-k", "2", "--act-clip-k", "6"]
    assert main(args) == 0
    plan = QuantPlan.load(tmp_path / "m.plan.json")
    assert plan.layers["conv2d_1"].block == (2, 1)
    rec = plan.provenance["qat_scale_clip"]
    assert rec["scale_clip"] == "mean-abs" and rec["act_clip_k"] == 6 and set(rec["weight_clip_k"].values()) == {2.0}
    from gwq_tvm.report import weight_report

    assert main(["--quiet", "report", str(tmp_path / "m.onnx"), "--plan", str(tmp_path / "m.plan.json"),
                 "-o", str(tmp_path / "r.html")]) == 0
    text = capsys.readouterr().out
    assert "conv2d_1 2x1" in text and "Scale-Clip trained in QAT (mean-abs): weights at k*sigma (conv2d_0 2" in text
    assert "activations capped at 6*sigma" in text
    # a plan fixes the quantization: a quantization option beside it is one line, not silently ignored
    assert main(["--quiet", "report", str(tmp_path / "m.onnx"), "--plan", str(tmp_path / "m.plan.json"),
                 "-o", str(tmp_path / "r.html"), "--weight-groups", "4"]) == 2
    err = capsys.readouterr().err
    assert "--weight-groups cannot be combined with --plan" in err and len(err.strip().splitlines()) == 1
    w = weight_report(plan)["conv2d_1"]
    assert w["block"] == [2, 1] and w["pot_steps"] and w["scale_clip"] == {"rule": "mean-abs", "k": 2.0, "act_k": 6.0, "qat": True}


@pytest.mark.parametrize("extra, match", [
    (["--scale-clip", "max"], "scale_clip must be one of"),
    (["--scale-clip", "std", "--scale-clip-k", "-1"], "scale_clip_k must be a positive number"),
    (["--act-clip-k", "0"], "act_clip_k must be a positive number"),
    (["--weight-groups", "0"], "weight_groups must be a positive integer"),
    (["--weight-groups", "3"], "do not divide"),
    (["--weight-blocks", "2x3", "--weight-blocks-fit", "gcd"], "Gx1 filter groups"),
])
def test_cli_train_bad_gdrq_values(extra, match, tmp_path, capsys):
    try:
        rc = main(_train_args(tmp_path) + extra)
    except SystemExit as exc:  # argparse-level errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
