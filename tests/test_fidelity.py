"""Fidelity figures against the float model: formulas, `eval --against` (here and on a board), `report --layer-error`."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import gwq_tvm
from gwq_tvm.data import BUNDLED_MODEL
from gwq_tvm.fidelity import fidelity, sqnr_db

import import_nets
from onnx_nets import NETS


def _independent(ref, q, labels=None):
    """The figures computed here from their definitions, without gwq_tvm.fidelity."""
    ref, q = ref.astype(np.float64), q.astype(np.float64)
    per_sample = [10 * np.log10(np.sum(r * r) / np.sum((r - t) ** 2)) for r, t in zip(ref, q)]

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(q)
    out = {"top1_agreement": float(np.mean(ref.argmax(1) == q.argmax(1))), "sqnr_db": float(np.mean(per_sample)),
           "kl": float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))}
    if labels is not None:
        out["float_accuracy"] = float(np.mean(ref.argmax(1) == labels))
        out["quantized_accuracy"] = float(np.mean(q.argmax(1) == labels))
    return out


def _ort(model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _module_logits(so, x):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x))).numpy()


def _assert_same(got: dict, want: dict, n: int):
    # the float model runs on TVM in gwq-tvm and on ONNX Runtime here: float rounding may move a near-tie argmax
    assert abs(got["top1_agreement"] - want["top1_agreement"]) <= 1.0 / n + 1e-12
    assert got["sqnr_db"] == pytest.approx(want["sqnr_db"], abs=0.01)
    assert got["kl"] == pytest.approx(want["kl"], rel=1e-3, abs=1e-9)
    for k in ("float_accuracy", "quantized_accuracy"):
        if k in want:
            assert abs(got[k] - want[k]) <= 1.0 / n + 1e-12


def test_formulas_on_hand_computed_values():
    """SQNR is per sample then averaged; KL is KL(float || quantized); agreement is argmax equality."""
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    q = np.array([[3.0, 5.0], [0.0, 1.0]])
    # sample 0: 25 / 1 -> 13.979 dB; sample 1: 1 / 2 -> -3.010 dB
    np.testing.assert_allclose(sqnr_db(ref, q), [10 * np.log10(25.0), 10 * np.log10(0.5)])
    f = fidelity(ref, q, labels=np.array([1, 1]))
    assert f.top1_agreement == 0.5 and f.float_accuracy == 0.5 and f.quantized_accuracy == 1.0
    assert f.sqnr_db == pytest.approx((10 * np.log10(25.0) + 10 * np.log10(0.5)) / 2)
    p0, q0 = np.exp([3, 4]) / np.exp([3, 4]).sum(), np.exp([3, 5]) / np.exp([3, 5]).sum()
    p1, q1 = np.exp([1, 0]) / np.exp([1, 0]).sum(), np.exp([0, 1]) / np.exp([0, 1]).sum()
    kl = (np.sum(p0 * np.log(p0 / q0)) + np.sum(p1 * np.log(p1 / q1))) / 2
    assert f.kl == pytest.approx(kl, rel=1e-12)
    exact = fidelity(ref, ref)
    assert exact.sqnr_db == np.inf and exact.kl == 0.0 and exact.to_dict()["sqnr_db"] is None
    with pytest.raises(ValueError, match="shape"):
        fidelity(ref, q[:, :1])


@pytest.fixture(scope="module")
def bundled_module(tmp_path_factory):
    out = tmp_path_factory.mktemp("fid") / "m.so"
    proc = subprocess.run([sys.executable, "-m", "gwq_tvm.cli", "--quiet", "compile", str(BUNDLED_MODEL), "-o", str(out),
                           "--calib-samples", "64"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow
def test_eval_against_bundled_model_matches_independent_figures(bundled_module, fmnist, tmp_path):
    _, test_x, test_y = fmnist
    n = 300
    out = tmp_path / "fid.json"
    proc = subprocess.run([sys.executable, "-m", "gwq_tvm.cli", "--quiet", "eval", str(bundled_module), "--against",
                           str(BUNDLED_MODEL), "--limit", str(n), "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "top-1 agreement" in proc.stdout and "SQNR" in proc.stdout and "KL" in proc.stdout
    got = json.loads(out.read_text())
    assert got["samples"] == n and not list(tmp_path.glob("*.tmp"))
    want = _independent(_ort(BUNDLED_MODEL, test_x[:n]), _module_logits(bundled_module, test_x[:n]), test_y[:n])
    _assert_same(got, want, n)
    assert got["top1_agreement"] > 0.97  # W8A8 follows the float model closely


@pytest.mark.slow
@pytest.mark.parametrize("net", sorted(NETS))
def test_eval_against_small_onnx_models(net, fmnist, tmp_path):
    calib, test_x, test_y = fmnist
    model = NETS[net]()
    path = tmp_path / f"{net}.onnx"
    onnx.save(model, str(path))
    q = gwq_tvm.quantize(str(path), calib[:64], gwq_tvm.QuantConfig(act_bits=6))
    so = gwq_tvm.export(gwq_tvm.build(q), tmp_path / f"{net}.so", q.plan)
    n = 200
    got = gwq_tvm.api.eval_against(so, str(path), test_x[:n], test_y[:n]).to_dict()
    want = _independent(_ort(model, test_x[:n]), _module_logits(so, test_x[:n]), test_y[:n])
    _assert_same(got, want, n)


def test_eval_against_another_model_is_refused(bundled_module, tmp_path):
    path = tmp_path / "other.onnx"
    onnx.save(NETS["resnet"](), str(path))
    proc = subprocess.run([sys.executable, "-m", "gwq_tvm.cli", "--quiet", "eval", str(bundled_module), "--against", str(path),
                           "--limit", "4"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("gwq-tvm: error:") and "compiled for graph" in proc.stderr


def test_json_and_rpc_need_against(bundled_module):
    proc = subprocess.run([sys.executable, "-m", "gwq_tvm.cli", "--quiet", "eval", str(bundled_module), "--json", "x.json",
                           "--limit", "4"], capture_output=True, text=True)
    assert proc.returncode == 2 and "need --against" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_eval_against_through_an_rpc_board(bundled_module, fmnist, tmp_path_factory):
    """The module runs on a board registered at a tracker (here: this machine's RPC server), the float model here."""
    from gwq_tvm.remote import board as B

    _, test_x, test_y = fmnist
    n = 100
    running = B.start_board(B.HOST, tracker_port=B.free_port(), key="x86-fid", root=tmp_path_factory.mktemp("board"),
                            timeout=120, log=lambda _: None)
    try:
        remote = gwq_tvm.api.eval_against(bundled_module, str(BUNDLED_MODEL), test_x[:n], test_y[:n],
                                          tracker=running.tracker_address, key=running.key, batch=32)
    finally:
        B.stop_board(running)
    local = gwq_tvm.api.eval_against(bundled_module, str(BUNDLED_MODEL), test_x[:n], test_y[:n])
    assert remote == local  # the integer program is bit-exact wherever it runs


@pytest.mark.slow
def test_layer_error_on_a_residual_net(fmnist, tmp_path):
    """Per-tensor errors: probes leave the program unchanged, the input's accumulated error is its local one, worst first."""
    from gwq_tvm.calibration.sensitivity import kl_divergence
    from gwq_tvm.layer_error import layer_error
    from gwq_tvm.plan.program import sfc_sites
    from gwq_tvm.reference import run_reference

    calib, _, _ = fmnist
    model = NETS["resnet"]()
    q = gwq_tvm.quantize(model, calib[:64], gwq_tvm.QuantConfig(weight_bits=4, act_bits=3))
    n = 48
    result = layer_error(q, calib, samples=n)
    x = calib[:n]
    # the probed program's logits are the program's own (the probes only read tensors)
    assert result["program_kl"] == pytest.approx(kl_divergence(_ort(model, x), run_reference(q.mod, x)), rel=1e-4)
    rows = {r["name"]: r for r in result["tensors"]}
    assert set(rows) == set(q.graph.tensors())
    # nothing upstream of the input; the program divides in float32, the local figure in float64 (a rare tie apart)
    assert rows["input"]["sqnr_db"] == pytest.approx(rows["input"]["local_sqnr_db"], abs=1e-4)
    assert rows["dense_0"]["sfc"] == "dequantize" and rows["dense_0"]["alone_kl"] is None
    assert rows["add_0"]["sfc"] == "+".join(sorted({s.kind for s in sfc_sites(q.graph, q.plan) if s.node == "add_0"}))
    kls = [r["alone_kl"] for r in result["tensors"] if r["alone_kl"] is not None]
    assert kls == sorted(kls, reverse=True) and all(k >= result["weights_only_kl"] * 0.5 for k in kls)
    # error accumulates: a deep tensor is no cleaner in the program than on its own
    assert rows["conv2d_3"]["sqnr_db"] <= rows["conv2d_3"]["local_sqnr_db"] + 0.5


def test_layer_error_on_a_two_output_model():
    """A model with several outputs: the probes join its output tuple (this once stopped at "unsupported binding in
    main: Tuple gv"); every tensor has a row and the program's first output is what program_kl compares."""
    import torch
    from torch import nn

    from gwq_tvm.layer_error import layer_error

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 3), nn.Linear(4, 2)

        def forward(self, x):
            y = torch.relu(self.a(x)).mean(dim=(2, 3))
            return self.b(y), self.c(y)

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype("float32")
    q = gwq_tvm.quantize(Two().eval(), x, input_shape=(None, 1, 8, 8))
    assert q.graph.outputs == ["dense_0", "dense_1"]
    result = layer_error(q, x, samples=8)
    assert {r["name"] for r in result["tensors"]} == set(q.graph.tensors())
    assert result["program_kl"] >= 0


@pytest.mark.slow
def test_cli_report_layer_error(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(NETS["mlp_concat"](), str(path))
    out = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "gwq_tvm.cli", "--quiet", "report", str(path), "--layer-error", "--samples", "32",
                           "--calib-samples", "64", "--act-bits", "4", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "per-tensor error on 32 samples (worst first)" in proc.stdout
    report = json.loads(out.with_suffix(".json").read_text())
    names = [r["name"] for r in report["layer_error"]["tensors"]]
    assert set(names) == {"input", "dense_0", "dense_1", "concat_0", "dense_2"}
    table = proc.stdout.split("alone KL")[1].split()
    assert table.index(names[0]) < table.index(names[1])  # the text is worst first too
    page = out.read_text()
    assert "Per-tensor error" in page and page.count("<svg") >= 2


def test_layer_error_on_a_fixed_batch_model():
    """A model exported for batch 1 whose float island reshapes to that batch (ONNX LRN becomes
    ``reshape(x, (1, 1, C, H, W))``): the reference runs in the model's batches, as the float module does.  This
    once ended in "cannot reshape array of size ... into shape (1,1,64,55,55)" on the ONNX zoo's Inception v1."""
    from gwq_tvm.layer_error import layer_error

    model = import_nets.float_island("LRN")
    x = np.random.default_rng(0).normal(size=(16, 1, 16, 16)).astype("float32")
    with pytest.warns(UserWarning, match="LRN"):
        q = gwq_tvm.quantize(model, x, input_shape=(1, 1, 16, 16))
    result = layer_error(q, x, samples=5)
    assert result["samples"] == 5 and {r["name"] for r in result["tensors"]} == set(q.graph.tensors())
    assert result["program_kl"] >= 0
