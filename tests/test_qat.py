"""QAT (issue 4): the torch twin computes the compiled program's integers, learns scales, resumes, exports."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.cli import main
from gwq_tvm.errors import CalibrationDataError, ConfigError, GwqError
from gwq_tvm.plan.quantplan import QuantPlan, TensorQuant
from gwq_tvm.qat import QATModel, TrainConfig, export_qat, train
from gwq_tvm.qat.fakequant import apply_sfc as torch_sfc, fake_quant
from gwq_tvm.plan.sfc import apply_sfc as numpy_sfc, make_sfc
from gwq_tvm.runtime import host_target, run_batched

from test_bitexact import ConcatNet, DepthwiseNet, _randomize_bn

W4A4_K2 = QuantConfig(weight_bits=4, act_bits=4, mode="gwq", groups=2, end_bits=8, loss_aware=False)


def _toy(net, calib, cfg):
    torch.manual_seed(0)
    return gwq_tvm.quantize(_randomize_bn(net()), calib[:64], cfg, input_shape=(None, 1, 28, 28))


def _compiled_ints(q_or_mod, plan, graph, x):
    """The compiled program's integer output: logits divided by the output accumulator's unit."""
    mod = q_or_mod.mod if hasattr(q_or_mod, "mod") else q_or_mod
    vm = relax.VirtualMachine(tvm.compile(mod, host_target()), tvm.cpu())
    logits = run_batched(vm, x, 500)
    out = graph.outputs[0]
    src = graph.tensor_of(graph.nodes[out].inputs[0])
    unit = plan.scale(src) * np.asarray(plan.layers[out].weight_scales)
    return logits, np.rint(logits / unit).astype(np.int64)


def _qat_ints(model, x, batch=500):
    """The float64 fake-quant model's logits and integer outputs, ``batch`` images at a time (each image is
    computed alone in eval mode; all 10k test images in one float64 call peaked at 17.6 GB)."""
    model.set_dtype(torch.float64).eval()
    logits, ints = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            lo, it = model(torch.from_numpy(x[i : i + batch]).double(), return_int=True)
            logits.append(lo.numpy())
            ints.append(it.numpy())
    model.set_dtype(torch.float32)
    return np.concatenate(logits), np.concatenate(ints)


# --- arithmetic -------------------------------------------------------------
@pytest.mark.parametrize("ratio", [[0.25], [2.0, 0.5, 1 / 8], [0.3], [0.7, 1.3e-3], [1.0]])
def test_torch_sfc_equals_the_numpy_sfc(ratio):
    x = np.random.default_rng(0).integers(-(1 << 20), 1 << 20, size=(3, len(ratio), 5))
    sfc = make_sfc(ratio)
    np.testing.assert_array_equal(torch_sfc(torch.from_numpy(x), sfc).numpy(), numpy_sfc(x, sfc))


def test_qat_model_starts_from_the_calibrated_plan(fmnist):
    calib, _, _ = fmnist
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:128], W4A4_K2)
    m = QATModel(q.graph, q.plan)
    assert m.plan().to_dict() == q.plan.to_dict()
    assert len(m.mantissa) == 2 and set(m.exponent) == set(q.graph.tensors()) - {"dense_0"}  # the logits stay int32


@pytest.mark.parametrize("net", [DepthwiseNet, ConcatNet])
def test_qat_integers_equal_the_compiled_program(net, fmnist):
    """ReLU6, depthwise/grouped conv, window avg-pool, concat, padded max-pool, signed tensors."""
    calib, test_x, _ = fmnist
    q = _toy(net, calib, QuantConfig(weight_bits=4, act_bits=4, mode="gwq", groups=2, loss_aware=False))
    m = QATModel(q.graph, q.plan)
    _, want = _compiled_ints(q, q.plan, q.graph, test_x[:200])
    _, got = _qat_ints(m, test_x[:200])
    np.testing.assert_array_equal(got, want)


# --- export ------------------------------------------------------------------
@pytest.mark.parametrize("net", [None, DepthwiseNet, ConcatNet])
def test_untrained_export_reimports_to_the_same_graph(net, fmnist, tmp_path):
    calib, _, _ = fmnist
    q = (gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:64], W4A4_K2) if net is None
         else _toy(net, calib, QuantConfig(mode="gwq", groups=2, loss_aware=False)))
    onnx_path, plan_path = export_qat(QATModel(q.graph, q.plan), tmp_path / "m.onnx")
    again = QuantPlan.load(plan_path)
    assert again.fingerprint == q.plan.fingerprint  # same structure, same weights
    assert again.diff(q.plan) == []


# --- the STE gradient path ----------------------------------------------------
def test_gradients_reach_mantissas_exponents_and_weight_exponents(fmnist):
    """An ordinary torch module (conv/BN/ReLU6/pool/linear) wrapped without rewriting it."""
    calib, _, _ = fmnist
    torch.manual_seed(0)
    m = gwq_tvm.qat.prepare_qat(_randomize_bn(DepthwiseNet()), calib[:64],
                                QuantConfig(weight_bits=4, act_bits=4, mode="gwq", groups=2, loss_aware=False), input_shape=(None, 1, 28, 28))
    m(torch.from_numpy(calib[:32])).square().mean().backward()
    for kind in ("mantissa", "exponent", "weight_scale", "weight"):
        grads = [p.grad for p in getattr(m, kind).values()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), kind
        assert sum(float(g.abs().sum()) for g in grads) > 0, kind


def test_lsq_step_gradient_finds_the_mse_step_of_a_gaussian():
    """The STE/LSQ path alone: a scale 8x too coarse for 4-bit Gaussian data shrinks to the MSE-optimal step."""
    v = torch.from_numpy(np.random.default_rng(0).normal(size=20000))
    log2_s = torch.nn.Parameter(torch.tensor(np.log2(8 * 0.34), dtype=torch.float64))  # 0.34: the MSE-optimal 4-bit step
    opt = torch.optim.Adam([log2_s], lr=0.05)
    for _ in range(400):
        s = torch.exp2(log2_s)
        q = torch.clamp(torch.floor(v.detach() / s.detach() + 0.5), -8, 7)
        loss = (fake_quant(v, s, q, -8, 7) - v).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(torch.exp2(log2_s.detach())) / 0.34 - 1) < 0.1


@pytest.mark.parametrize("weights", ["uniform", "post"])
def test_one_adam_step_moves_every_scale_by_a_relative_amount(fmnist, weights):
    """Per-layer plans store free weight scales (POST units ~1e-3): the first Adam step (``lr`` per element, whatever
    the gradient's size) must change each of them by the same small relative amount, not by 100% as it did when the
    scales themselves were the parameters (per-layer MobileNetV3 W3A3 POST QAT collapsed to 75%)."""
    calib, _, _ = fmnist
    cfg = QuantConfig(weight_bits=3, act_bits=3, mode="per-layer", loss_aware=False, weights=weights)
    q = _toy(DepthwiseNet, calib, cfg)
    m = QATModel(q.graph, q.plan, adaptive_step="all")
    assert not any(m.pot_weights.values()) and len(m.adapter) > 0
    before = m.plan()
    # untrained, the free scales are the plan's own, bit for bit
    assert all(before.layers[n].scales == q.plan.layers[n].scales for n in q.plan.layers)
    h0 = {t: abs(float(a.hidden_scale)) for t, a in m.adapter.items()}
    lr = 1e-2
    opt = torch.optim.Adam(m.scale_param_groups(lr))
    m(torch.from_numpy(calib[:32])).square().mean().backward()
    opt.step()
    after = m.plan()
    ratios = np.concatenate([np.asarray(after.layers[n].scales) / np.asarray(before.layers[n].scales) for n in q.plan.layers])
    moved = np.abs(np.log2(ratios))
    assert moved.max() <= lr * 1.001 and moved.max() > lr / 2
    for t, a in m.adapter.items():
        assert abs(abs(float(a.hidden_scale)) / h0[t] - 1) <= lr * 1.001


def test_training_moves_a_bad_exponent_back_and_tunes_the_mantissas(fmnist):
    """The bundled model with one tensor's exponent 3 too high (8x too coarse): QAT lowers it and moves the mantissas."""
    calib, test_x, test_y = fmnist
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:128], W4A4_K2)
    victim = "conv2d_4"
    tensors = dict(q.plan.tensors)
    t = tensors[victim]
    tensors[victim] = TensorQuant(t.bits, t.signed, t.group, t.exponent + 3)
    bad = q.plan.replace(tensors=tensors)
    m = QATModel(q.graph, bad)
    acc_bad = gwq_tvm.qat.evaluate(m, test_x[:1000], test_y[:1000])
    train(m, calib[:512], fmnist_labels(512), TrainConfig(epochs=4, batch_size=64, scale_lr=0.1))
    after = m.plan()
    assert after.scale(victim) < bad.scale(victim) / 2
    assert any(abs(after.groups[g] - bad.groups[g]) > 1e-3 for g in bad.groups)
    assert gwq_tvm.qat.evaluate(m, test_x[:1000], test_y[:1000]) > acc_bad
    # still a GWQ plan: the group structure is untouched
    assert {n: tq.group for n, tq in after.tensors.items()} == {n: tq.group for n, tq in bad.tensors.items()}


# --- checkpoints ----------------------------------------------------------------
def _small_setup(fmnist):
    calib, _, _ = fmnist
    q = _toy(DepthwiseNet, calib, QuantConfig(weight_bits=4, act_bits=4, mode="gwq", groups=2, loss_aware=False))
    x = calib[:256]
    y = np.arange(256) % 10
    return q, x, y


def test_resume_after_interrupt_equals_an_uninterrupted_run(fmnist, tmp_path):
    q, x, y = _small_setup(fmnist)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-3, scale_lr=1e-2)
    whole = QATModel(q.graph, q.plan)
    train(whole, x, y, cfg, work_dir=tmp_path / "a")

    part = QATModel(q.graph, q.plan)
    with pytest.raises(KeyboardInterrupt):  # interrupted in the middle of epoch 2
        train(part, x, y, cfg, work_dir=tmp_path / "b", stop_after_steps=6)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed = QATModel(q.graph, q.plan)  # a fresh process: only the checkpoint survives
    lines = []
    history = train(resumed, x, y, cfg, work_dir=tmp_path / "b", log=lines.append)
    assert lines[0].startswith("resumed") and [h["epoch"] for h in history] == [1, 2, 3]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert not (tmp_path / "b" / "checkpoint.pt.tmp").exists()


def test_bad_checkpoints_are_named(fmnist, tmp_path):
    q, x, y = _small_setup(fmnist)
    (tmp_path / "checkpoint.pt").write_bytes(b"torn")
    with pytest.raises(GwqError, match="unreadable checkpoint"):
        train(QATModel(q.graph, q.plan), x, y, TrainConfig(epochs=1), work_dir=tmp_path)
    (tmp_path / "checkpoint.pt").unlink()
    train(QATModel(q.graph, q.plan), x, y, TrainConfig(epochs=1), work_dir=tmp_path)
    with pytest.raises(GwqError, match="other training settings"):
        train(QATModel(q.graph, q.plan), x, y, TrainConfig(epochs=1, lr=TrainConfig.lr / 2), work_dir=tmp_path)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.zeros((0, 1, 28, 28), np.float32), np.zeros(0, np.int64), "empty"),
        (np.full((4, 1, 28, 28), np.nan, np.float32), np.zeros(4, np.int64), "NaN"),
        (np.zeros((4, 1, 20, 20), np.float32), np.zeros(4, np.int64), "shape"),
        (np.zeros((4, 1, 28, 28), np.float32), None, "labels"),
        (np.zeros((4, 1, 28, 28), np.float32), np.array([0, 1, 2, 99]), "labels must be integers"),
        (np.zeros((4, 1, 28, 28), np.float32), np.zeros(3, np.int64), "labels of shape"),
    ],
)
def test_bad_training_data(images, labels, match, fmnist):
    q, _, _ = _small_setup(fmnist)
    with pytest.raises(CalibrationDataError, match=match):
        train(QATModel(q.graph, q.plan), images, labels, TrainConfig(epochs=1))


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"lr": 0.0}, {"scale_lr": 2.0}, {"distill": 1.5}, {"batch_size": -1}])
def test_bad_train_config(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_end_bits(fmnist):
    calib, _, _ = fmnist
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:64], QuantConfig(weight_bits=4, act_bits=3, end_bits=8))
    assert q.plan.tensors["input"].bits == 8 and q.plan.tensors["conv2d_1"].bits == 3
    assert q.plan.layers["conv2d_0"].weight_bits == 8 and q.plan.layers["dense_0"].weight_bits == 8
    assert q.plan.layers["conv2d_1"].weight_bits == 4
    with pytest.raises(ConfigError, match="end_bits"):
        QuantConfig(end_bits=1)


# --- the command line ------------------------------------------------------------
def test_cli_train_then_compile(fmnist, tmp_path, capsys):
    calib, test_x, test_y = fmnist
    np.savez(tmp_path / "train.npz", images=calib[:256], labels=fmnist_labels(256))
    np.savez(tmp_path / "test.npz", images=test_x[:500], labels=test_y[:500])
    out = tmp_path / "m.onnx"
    args = ["--quiet", "train", str(gwq_tvm.data.bundled_model()), "--data", str(tmp_path / "train.npz"), "--epochs", "1",
            "--weight-bits", "4", "--act-bits", "4", "--groups", "2", "--end-bits", "8", "--no-loss-aware",
            "--calib-samples", "128", "--test", str(tmp_path / "test.npz"), "-o", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "QAT accuracy (fake-quant)" in text and (tmp_path / "m.qat" / "checkpoint.pt").is_file()
    qat_acc = float(text.split("QAT accuracy (fake-quant): ")[1].split("%")[0])
    plan_bytes = out.with_suffix(".plan.json").read_bytes()  # also the plan output of this compile: kept as it is
    assert main(["--quiet", "compile", str(out), "--plan", str(out.with_suffix(".plan.json")), "-o", str(tmp_path / "m.so")]) == 0
    assert out.with_suffix(".plan.json").read_bytes() == plan_bytes
    assert "integer-only: yes" in capsys.readouterr().out
    assert main(["--quiet", "eval", str(tmp_path / "m.so"), "--data", str(tmp_path / "test.npz")]) == 0
    compiled_acc = float(capsys.readouterr().out.split("accuracy: ")[1].split("%")[0])
    assert abs(compiled_acc - qat_acc) <= 0.2 + 1e-9  # one image of 500 may sit on a float32 rounding edge
    # rerunning the finished command resumes from its checkpoint: no epoch is trained again
    assert main(args) == 0
    assert "resumed" in capsys.readouterr().out


def fmnist_labels(n):
    from gwq_tvm.data import fashion_mnist

    return fashion_mnist("calib")[1][:n]


@pytest.mark.parametrize(
    "extra, match",
    [(["--epochs", "0"], "must be >= 1"), (["--lr", "5"], "lr must be"), (["--groups", "0"], "groups must be")],
)
def test_cli_train_bad_values(extra, match, tmp_path, capsys):
    args = ["--quiet", "train", str(gwq_tvm.data.bundled_model()), "--data", "bundled:calib", "-o", str(tmp_path / "m.onnx"),
            "--calib-samples", "64", "--no-loss-aware"]
    try:
        rc = main(args + extra)
    except SystemExit as exc:  # argparse-level errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_train_without_labels(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((8, 1, 28, 28), np.float32))
    args = ["--quiet", "train", str(gwq_tvm.data.bundled_model()), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "m.onnx"),
            "--calib-samples", "64", "--no-loss-aware"]
    assert main(args) == 2
    assert "needs labels" in capsys.readouterr().err


# --- fidelity on the bundled model (issue 4, must-show 1) ------------------------------
@pytest.mark.slow
def test_fidelity_trained_bundled_model_vs_compiled_program(fmnist, tmp_path):
    """Fine-tune briefly, export, compile; on all 10k test images the compiled program and the
    float64 fake-quant model agree on >= 99.9% of argmaxes and within 1 LSB on every integer output."""
    calib, test_x, test_y = fmnist
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:256], W4A4_K2)
    m = QATModel(q.graph, q.plan)
    train(m, calib, fmnist_labels(len(calib)), TrainConfig(epochs=1, batch_size=128, scale_lr=1e-2))
    learned = m.plan()
    assert learned.diff(q.plan)  # training moved something: the test is not of the PTQ plan
    onnx_path, plan_path = export_qat(m, tmp_path / "m.onnx")
    q2 = gwq_tvm.quantize(str(onnx_path), plan=QuantPlan.load(plan_path))
    assert q2.integer_only.ok
    logits, want = _compiled_ints(q2, q2.plan, q2.graph, test_x)
    qat_logits, got = _qat_ints(m, test_x)
    assert (logits.argmax(1) == qat_logits.argmax(1)).mean() >= 0.999
    assert np.abs(got - want).max() <= 1


def test_missing_training_set_names_the_debian_package(monkeypatch, tmp_path):
    import gwq_tvm.data as data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path)
    with pytest.raises(GwqError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist("train")
