"""The node kinds edge models need: lookup-table activations, PReLU, products of tensors, data movement.

Every kind here is compiled by real TVM, run, and compared bit for bit with
the numpy reference, and the programs are checked integer-only; the lookup
tables are checked entry by entry against the float function over every
input code.
"""

import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.kinds import get_kind
from gwq_tvm.plan.program import sfc_edges, sfc_sites, sfc_summary
from gwq_tvm.qat import QATModel
from gwq_tvm.reference import run_reference

from conftest import compile_and_run


def _onnx(model, shape):
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.zeros(shape),), buf, opset_version=17, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}})
    return onnx.load_from_string(buf.getvalue())


def _quantize(model, calib, cfg=QuantConfig(), frontend="torch"):
    shape = (None,) + calib.shape[1:]
    src = _onnx(model, (1,) + calib.shape[1:]) if frontend == "onnx" else model
    return gwq_tvm.quantize(src, calib, cfg, input_shape=shape if frontend == "torch" else None)


def _bit_exact(q, x):
    assert q.integer_only.ok, q.integer_only
    got = compile_and_run(q.mod, x)
    np.testing.assert_array_equal(got, run_reference(q.mod, x))
    return got


def _kinds(q):
    return [n.kind for n in q.graph.nodes.values()]


def _sqnr(got, ref):
    return 10 * np.log10((ref**2).sum() / ((got - ref) ** 2).sum())


class Act(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _silu_by_hand(x):
    return x * torch.sigmoid(x)


# name -> (torch activation, float64 numpy reference)
LUTS = {
    "hardswish": (nn.Hardswish(), lambda x: x * np.clip(x + 3, 0, 6) / 6),
    "hardsigmoid": (nn.Hardsigmoid(), lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    "sigmoid": (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    "silu": (nn.SiLU(), lambda x: x / (1 + np.exp(-x))),
    "x*sigmoid(x)": (Act(_silu_by_hand), lambda x: x / (1 + np.exp(-x))),
    "tanh": (nn.Tanh(), np.tanh),
    "gelu": (nn.GELU(), lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))),
    "elu": (nn.ELU(), lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
    "leaky_relu": (nn.LeakyReLU(0.1), lambda x: np.where(x >= 0, x, 0.1 * x)),
}


# --- lookup tables -----------------------------------------------------------------
@pytest.mark.parametrize("frontend", ["torch", "onnx"])
@pytest.mark.parametrize("name", list(LUTS))
def test_lut_over_every_input_code(name, frontend):
    """act(input): one lut node; over all 256 input codes the compiled program equals the reference and is
    within half an output step of the float function at the quantized input."""
    module, ref = LUTS[name]
    calib = np.linspace(-6, 6, 4 * 256, dtype=np.float32).reshape(4, 1, 16, 16)
    q = _quantize(Act(module), calib, frontend=frontend)
    # ONNX's HardSigmoid imports as multiply, add, clip: the affine kind's exact per-channel arithmetic
    want = "affine" if (name, frontend) == ("hardsigmoid", "onnx") else "lut"
    assert _kinds(q) == ["input", want], _kinds(q)
    s_in, s_out = q.plan.scale("input"), q.plan.scale(q.graph.outputs[0])
    assert q.plan.tensors["input"].signed
    codes = np.arange(-128, 128)
    x = (codes * s_in).astype(np.float32).reshape(1, 1, 16, 16)
    got = _bit_exact(q, x).reshape(-1)
    x_code = np.clip(np.floor(x.reshape(-1) / np.float32(s_in) + np.float32(0.5)), -128, 127)
    np.testing.assert_array_equal(x_code, codes)
    err = np.abs(got.astype(np.float64) - ref(codes * s_in))
    assert err.max() <= s_out / 2 + 1e-6, (err.max(), s_out)  # + the float32 dequantize
    assert sfc_edges(q.graph) == []  # a table, not a scale conversion


def test_lut_names_the_function_it_computes():
    calib = np.linspace(-6, 6, 256, dtype=np.float32).reshape(1, 1, 16, 16)
    names = {n: _quantize(Act(LUTS[n][0]), calib).graph.nodes["lut_0"].attrs["function"] for n in
             ("hardswish", "sigmoid", "x*sigmoid(x)", "leaky_relu")}
    assert names == {"hardswish": "hardswish", "sigmoid": "sigmoid", "x*sigmoid(x)": "silu",
                     "leaky_relu": "leaky_relu(0.1)"}


def test_affine_chains_and_plain_relus_stay_with_their_kinds():
    """A region of ``+ - * /`` by constants and a final clip is no table (exact per-channel arithmetic instead)."""
    calib = np.linspace(-6, 6, 256, dtype=np.float32).reshape(1, 1, 16, 16)
    q = _quantize(Act(lambda x: torch.clamp(x * 0.5 + 1.0, 0, 6)), calib)
    assert "lut" not in _kinds(q) and q.integer_only.ok


class ConvAct(nn.Module):
    def __init__(self, act, c=6):
        super().__init__()
        self.conv1, self.act, self.conv2 = nn.Conv2d(3, c, 3, padding=1), act, nn.Conv2d(c, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


@pytest.mark.parametrize("name", ["hardswish", "silu", "gelu", "elu"])
@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(mode="gwq", groups=2, loss_aware=False),
                                 QuantConfig(act_bits=6, weight_bits=6)], ids=["w8a8", "gwq", "w6a6"])
def test_lut_between_convs_is_bit_exact(name, cfg):
    torch.manual_seed(1)
    x = np.random.default_rng(1).normal(size=(24, 3, 12, 12)).astype(np.float32)
    model = ConvAct(LUTS[name][0])
    q = _quantize(model, x[:16], cfg)
    assert "lut" in _kinds(q) and not q.graph.float_nodes()
    got = _bit_exact(q, x[16:])
    with torch.no_grad():
        assert _sqnr(got, model(torch.from_numpy(x[16:])).numpy()) > (25 if cfg.act_bits == 8 else 12)


# --- PReLU -------------------------------------------------------------------------
@pytest.mark.parametrize("frontend", ["torch", "onnx"])
@pytest.mark.parametrize("channels,slopes", [(6, "per-channel"), (6, "one"), (3, "negative")])
def test_prelu_is_bit_exact(frontend, channels, slopes):
    torch.manual_seed(2)
    prelu = nn.PReLU(channels if slopes != "one" else 1)
    with torch.no_grad():
        if slopes == "per-channel":
            prelu.weight.copy_(torch.linspace(0.05, 0.6, channels))
        elif slopes == "negative":
            prelu.weight.copy_(torch.tensor([-0.3, 0.2, 1.5]))
    model = ConvAct(prelu, channels)
    x = np.random.default_rng(2).normal(size=(24, 3, 10, 10)).astype(np.float32)
    for cfg in (QuantConfig(), QuantConfig(mode="gwq", groups=1, loss_aware=False)):
        q = _quantize(model, x[:16], cfg, frontend)
        assert "prelu" in _kinds(q) and not q.graph.float_nodes(), _kinds(q)
        got = _bit_exact(q, x[16:])
        with torch.no_grad():
            assert _sqnr(got, model(torch.from_numpy(x[16:])).numpy()) > 25


# --- squeeze-excitation: products of two tensors -------------------------------------
class SE(nn.Module):
    def __init__(self, c, gate):
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(c, max(c // 4, 2), 1), nn.Conv2d(max(c // 4, 2), c, 1), gate

    def forward(self, x):
        return x * self.gate(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))


class MobileNetV3Block(nn.Module):
    """conv-bn-hardswish, depthwise-bn-hardswish, SE with a hardsigmoid gate, 1x1 projection, residual add."""

    def __init__(self, c=16, gate=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c), nn.BatchNorm2d(c), nn.Hardswish())
        self.se = SE(c, gate or nn.Hardsigmoid())
        self.project = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        y = self.stem(x)
        return self.head((self.project(self.se(self.dw(y))) + y).mean(dim=(2, 3)))


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def mbv3():
    torch.manual_seed(3)
    model = _randomize_bn(MobileNetV3Block())
    x = np.random.default_rng(3).normal(size=(40, 3, 16, 16)).astype(np.float32)
    return model, x[:32], x[32:]


@pytest.mark.parametrize("frontend", ["torch", "onnx"])
@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
def test_mobilenetv3_block_is_integer_only_and_bit_exact(mbv3, frontend, mode):
    model, calib, x = mbv3
    cfg = QuantConfig(mode=mode) if mode == "per-layer" else QuantConfig(mode="gwq", groups=2, loss_aware=False)
    q = _quantize(model, calib, cfg, frontend)
    kinds = _kinds(q)
    assert not q.graph.float_nodes() and kinds.count("lut") >= 2 and "mul" in kinds, kinds
    got = _bit_exact(q, x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert _sqnr(got, ref) > 25
    if mode == "gwq":
        summary = sfc_summary(sfc_sites(q.graph, q.plan))
        assert summary["shift_sites"] > 0, summary


def test_se_gate_broadcasts_over_the_feature_map(mbv3):
    model, calib, _ = mbv3
    q = _quantize(model, calib)
    mul = next(n for n in q.graph.nodes.values() if n.kind == "mul")
    a, b = (q.graph.nodes[i] for i in mul.inputs)
    assert a.shape[1:] == mul.shape[1:] and b.shape[2:] == (1, 1)
    assert [e.node for e in sfc_edges(q.graph)].count(mul.name) == 1


def test_calibration_observes_each_node_even_when_var_names_repeat(mbv3):
    """torch.export names several vars alike (lv21 and lv21_1); calibration must observe the node's own var.
    The SE gate conv carries a fused ReLU (clip(0, inf)), so what it observes cannot be negative."""
    model, calib, _ = mbv3
    q = _quantize(model, calib)
    relu_convs = [n for n, node in q.graph.nodes.items() if node.kind == "conv2d" and node.act == (0.0, float("inf"))]
    assert relu_convs and all(q.stats[n].min >= 0 for n in relu_convs)


def test_qat_integers_of_the_new_kinds_equal_the_compiled_program(mbv3):
    """The QAT twin (torch) produces the compiled program's integers through lut, mul and prelu nodes."""
    from test_qat import _compiled_ints, _qat_ints

    torch.manual_seed(4)
    model = _randomize_bn(MobileNetV3Block())
    model.dw[2] = nn.PReLU(16)
    _, calib, x = mbv3
    q = _quantize(model, calib, QuantConfig(mode="gwq", groups=2, loss_aware=False))
    assert {"lut", "mul", "prelu"} <= set(_kinds(q))
    _, want = _compiled_ints(q, q.plan, q.graph, x)
    _, got = _qat_ints(QATModel(q.graph, q.plan), x)
    np.testing.assert_array_equal(got, want)


def test_new_kinds_export_to_onnx_and_reimport_to_the_same_graph(mbv3, tmp_path):
    from gwq_tvm.qat.export import export_qat

    torch.manual_seed(5)
    model = _randomize_bn(MobileNetV3Block(gate=nn.Sigmoid()))
    model.dw[2] = nn.GELU()
    _, calib, x = mbv3
    q = _quantize(model, calib, QuantConfig(symmetric_activations=True))  # QAT keeps activations symmetric
    onnx_path, plan_path = export_qat(QATModel(q.graph, q.plan), tmp_path / "m.onnx")  # re-import checked inside
    q2 = gwq_tvm.quantize(str(onnx_path), plan=gwq_tvm.QuantPlan.load(plan_path))
    assert _kinds(q2) == _kinds(q)
    np.testing.assert_array_equal(_bit_exact(q2, x), _bit_exact(q, x))


# --- data movement ------------------------------------------------------------------
class Movement(nn.Module):
    """split, channel shuffle (reshape -> transpose -> reshape), strided slice, unsqueeze/squeeze, NHWC flatten."""

    def __init__(self):
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        a, b = y.split(4, dim=1)
        n, _, h, w = b.shape
        shuffled = b.reshape(n, 2, 2, h, w).transpose(1, 2).reshape(n, 4, h, w)
        z = self.conv2(torch.cat([shuffled, a], 1))
        top = z[:, :, 1:9:2, :].unsqueeze(1).squeeze(1)
        return top.permute(0, 2, 3, 1).flatten(1)


@pytest.mark.parametrize("frontend", ["torch", "onnx"])
@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
def test_data_movement_is_passthrough_and_bit_exact(frontend, mode):
    torch.manual_seed(6)
    model = Movement().eval()
    x = np.random.default_rng(6).normal(size=(20, 3, 10, 10)).astype(np.float32)
    cfg = QuantConfig(mode=mode) if mode == "per-layer" else QuantConfig(mode="gwq", groups=2, loss_aware=False)
    q = _quantize(model, x[:16], cfg, frontend)
    kinds = _kinds(q)
    assert {"slice", "permute", "reshape"} <= set(kinds) and not q.graph.float_nodes(), kinds
    for name, node in q.graph.nodes.items():
        if node.kind in ("slice", "permute"):
            assert get_kind(node.kind).passthrough and q.plan.tensors[name] == q.plan.tensors[q.graph.tensor_of(name)]
    got = _bit_exact(q, x[16:])
    with torch.no_grad():
        assert _sqnr(got, model(torch.from_numpy(x[16:])).numpy()) > 25


# --- aarch64 ---------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["aarch64-dotprod", "rpi4"])
def test_new_kinds_build_for_aarch64_without_unscheduled_kernels(mbv3, preset):
    import shutil
    import warnings

    from gwq_tvm.schedules.targets import resolve_target

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("apt-get install gcc-aarch64-linux-gnu")
    model, calib, _ = mbv3
    q = _quantize(model, calib, QuantConfig(mode="gwq", groups=2, loss_aware=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a kernel left unscheduled warns
        gwq_tvm.build(q, resolve_target(preset))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["aarch64-dotprod", "rpi4"])
def test_mobilenetv3_block_bit_exact_on_the_aarch64_board(aarch64_remote, tmp_path, mbv3, preset):
    """conv-hardswish, depthwise-PReLU, SE (hardsigmoid gate, product), split/shuffle-free block on the emulated board."""
    from gwq_tvm.schedules.targets import resolve_target
    from test_arm_kernels import _run_remote

    torch.manual_seed(7)
    model = _randomize_bn(MobileNetV3Block())
    model.dw[2] = nn.PReLU(16)
    _, calib, x = mbv3
    for cfg in (QuantConfig(), QuantConfig(mode="gwq", groups=2, loss_aware=False)):
        q = _quantize(model, calib, cfg)
        assert {"lut", "mul", "prelu"} <= set(_kinds(q)) and q.integer_only.ok
        ex = gwq_tvm.build(q, resolve_target(preset))
        got = _run_remote(aarch64_remote, ex, x[:3], preset, tmp_path / f"mbv3_{cfg.mode.value}.so")
        np.testing.assert_array_equal(got, run_reference(q.mod, x[:3]))


class Upsample(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.conv, self.conv2, self.factor = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(12, 4, 3, padding=1), factor

    def forward(self, x):
        y = torch.relu(self.conv(x))
        up = nn.functional.interpolate(y, scale_factor=self.factor, mode="nearest")
        return self.conv2(torch.cat([up, up * 0.5 + 0.25], 1))


@pytest.mark.parametrize("frontend", ["torch", "onnx"])
@pytest.mark.parametrize("factor", [2, 3])
def test_nearest_upsampling_is_a_passthrough_repeat(frontend, factor):
    """torch imports half_pixel/round, ONNX asymmetric/floor: both repeat each row and column ``factor`` times."""
    torch.manual_seed(8)
    model = Upsample(factor).eval()
    x = np.random.default_rng(8).normal(size=(20, 3, 6, 6)).astype(np.float32)
    q = _quantize(model, x[:16], QuantConfig(), frontend)
    assert "resize" in _kinds(q) and not q.graph.float_nodes(), _kinds(q)
    got = _bit_exact(q, x[16:])
    with torch.no_grad():
        assert _sqnr(got, model(torch.from_numpy(x[16:])).numpy()) > 25


class EveryKind(nn.Module):
    """GELU (lut), PReLU, nearest upsampling, strided slices, then the data-movement block."""

    def __init__(self):
        super().__init__()
        self.conv, self.gelu, self.prelu, self.tail = nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.PReLU(8), Movement()

    def forward(self, x):
        y = self.prelu(self.gelu(self.conv(x)))
        return self.tail(nn.functional.interpolate(y, scale_factor=2, mode="nearest")[:, :3, ::2, ::2])


def test_loss_aware_gwq_simulates_every_new_kind():
    """The fake-quant simulator (output sensitivities) emits lut, prelu, resize, slice and permute nodes."""
    torch.manual_seed(9)
    x = np.random.default_rng(9).normal(size=(20, 3, 10, 10)).astype(np.float32)
    q = _quantize(EveryKind().eval(), x[:16], QuantConfig(mode="gwq", groups=2))
    assert {"lut", "prelu", "resize", "slice", "permute"} <= set(_kinds(q)) and q.sensitivity
    _bit_exact(q, x[16:])
