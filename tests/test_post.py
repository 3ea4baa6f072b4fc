"""POST (power-of-sqrt-2) weights, post-training: the level table, the lookup kernel, bit-exactness (ASQ, issue 24)."""

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import ConfigError, PlanError
from gwq_tvm.plan import post
from gwq_tvm.plan.program import sfc_sites, sfc_summary
from gwq_tvm.plan.quantplan import QuantPlan
from gwq_tvm.reference import run_reference
from gwq_tvm.runtime import host_target
from gwq_tvm.schedules.build import compile_integer, compile_packed, packed_fused_module
from gwq_tvm.schedules.spec import AARCH64_NEON, AARCH64_SDOT, X86_VNNI, kernel_spec
from gwq_tvm.schedules.targets import export_compiler, resolve_target


# --- the level set -----------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_level_table_and_index_round_trip(bits):
    """2**b - 1 levels {0, ±T[i]}, T[i] = rint(2**(6 - i/2)) in int8; exact levels quantize to their own index."""
    L = post.magnitudes(bits)
    t = post.level_table(bits)
    assert L == 2 ** (bits - 1) - 1 and t.size == L and t[0] == 64 and np.all(np.diff(t) <= 0)
    np.testing.assert_array_equal(t, np.rint(np.sqrt(2.0) ** -np.arange(L) * 64))
    table = post.code_table(bits)
    assert table.dtype == np.int8 and table.size == 2 ** bits and table[0] == 0
    j = np.arange(-L, L + 1)
    u = post.codes(j, bits)
    assert u.dtype == np.uint8 and u.max() < 2 ** bits
    np.testing.assert_array_equal(post.indices_of_codes(u, bits), j)
    w = post.integer_weights(j, bits)
    np.testing.assert_array_equal(w, np.sign(j) * np.concatenate([[0], t])[np.abs(j)])
    # the distinct levels at a unit of 0.01 come back to the same level (5 bits: duplicates map to the smaller |j|)
    vals, idx = post.signed_levels(bits)
    got = post.quantize_indices(vals * 0.01, np.array(0.01), bits)
    np.testing.assert_array_equal(got, idx)
    np.testing.assert_array_equal(post.integer_weights(got, bits), vals)
    assert len(vals) == (2 ** bits - 1 if bits <= 4 else 2 * len(np.unique(t[t > 0])) + 1)


def test_nearest_level_ties_and_zero():
    """Nearest level of w / s; a tie goes to the smaller magnitude, so half the smallest level is 0."""
    s = np.array(1.0)
    assert post.quantize_indices(np.array([4.0, -4.0, 4.01, 27.5, 27.51, 300.0, -300.0]), s, 4).tolist() == \
        [0, 0, 7, 4, 3, 1, -1]  # 8/2 -> 0 (8 is j=7); (23+32)/2 -> 23 (j=4); beyond 64 clips to ±alpha


def test_units_are_powers_of_two_under_pot_and_fit_the_percentile():
    w = np.random.default_rng(0).normal(size=(8, 4, 3, 3))
    pot = post.choose_units(w, 4, pot=True)
    assert np.all(np.frexp(pot)[0] == 0.5)
    free = post.choose_units(w, 4, pot=False)
    p = np.percentile(np.abs(w.reshape(8, -1)), post.ALPHA_PERCENTILE, axis=1)
    assert np.all((free * 64 >= 0.5 * p - 1e-12) & (free * 64 <= 1.25 * p + 1e-12))


# --- small models: the lookup in the program, bit-exact ------------------------------
class Net(nn.Module):
    """Convs of several shapes (3x3 s1/s2, 1x1, depthwise) and a dense head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, 1, 1)
        self.b = nn.Conv2d(16, 20, 3, 2, 1)
        self.c = nn.Conv2d(20, 20, 3, 1, 1, groups=20)
        self.d = nn.Conv2d(20, 12, 1)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        x = torch.relu(self.d(torch.relu(self.c(x))))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    x = np.random.default_rng(1).normal(size=(4, 3, 8, 8)).astype("float32")
    return Net().eval(), x


def _quantize(model, x, bits=4, mode="per-layer"):
    return gwq_tvm.quantize(model, x, QuantConfig(weights="post", weight_bits=bits, act_bits=8, mode=mode),
                            input_shape=(None, 3, 8, 8))


def _run(ex, x):
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def _lookups(mod):
    return [b for blk in mod["main"].body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op) and b.value.op.name == "relax.take"]


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_post_layers_bit_exact_default_and_vnni(small, bits):
    """Every conv/dense holds codes and looks its int8 weights up in the program; the compiled module equals the
    reference on the plain default build (generic x86) and on the VNNI packed kernels."""
    model, x = small
    q = _quantize(model, x, bits)
    assert all(w.codebook == "post" and w.bits == bits for w in q.plan.layers.values()) and len(q.plan.layers) == 5
    assert not q.float_ops and len(_lookups(q.mod)) == 5
    ref = run_reference(q.mod, x)
    targets = [resolve_target("x86-64")]  # no kernel family: the plain default build
    if kernel_spec(host_target()) == X86_VNNI:
        targets.append(host_target())
    for target in targets:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a kernel left unscheduled warns
            ex = compile_integer(q.mod, target)
        np.testing.assert_array_equal(_run(ex, x), ref)


def test_compiled_program_keeps_the_lookup(small):
    """The packed program never stores int8 weights of a POST layer (FoldConstant would): at 4 bits the convs and
    the dense are fused lookup-table kernels on packed codes (tests/test_int4_kernels.py), the depthwise conv
    looks its codes up per call; at 5 bits (32 levels: no 16-entry table) every layer looks its codes up per call."""
    model, x = small
    for bits, takes, fused_lut in ((4, 1, 4), (5, 5, 0)):
        fused = packed_fused_module(_quantize(model, x, bits).mod, host_target(), X86_VNNI)
        text = fused["main"].script()
        int4 = sum("gwq_conv2d_int4" in gv.name_hint for gv in fused.functions.keys())
        assert (text.count("R.call_tir(take"), int4) == (takes, fused_lut), bits


def test_post_gwq_is_bit_exact_with_shift_sfcs(small):
    """GWQ mode: power-of-two units keep the SFCs inside a group shifts, as with uniform weights."""
    model, x = small
    q = _quantize(model, x, 4, mode="gwq")
    assert all(np.all(np.frexp(w.scales)[0] == 0.5) for w in q.plan.layers.values())
    uni = gwq_tvm.quantize(model, x, QuantConfig(weight_bits=4, act_bits=8, mode="gwq"), input_shape=(None, 3, 8, 8))
    share = lambda m: sfc_summary(sfc_sites(m.graph, m.plan))["shift_share"]  # noqa: E731
    assert share(q) >= share(uni)
    np.testing.assert_array_equal(_run(gwq_tvm.build(q), x), run_reference(q.mod, x))


# the sdot layout without its instructions (int4 steps included: tbl/sdot do not run here; the int4 sdot kernels
# are checked on the emulated board, tests/test_int4_kernels.py)
@pytest.mark.parametrize("family", [dataclasses.replace(AARCH64_SDOT, intrinsic=None, int4_intrinsic=None),
                                    AARCH64_NEON], ids=["sdot-layout", "neon"])
def test_aarch64_layouts_bit_exact_on_host(small, family):
    """The aarch64 packings of the codes (int8 sdot, int8 NEON lanes) with the lookup, run here, equal the reference."""
    model, x = small
    q = _quantize(model, x, 4)
    np.testing.assert_array_equal(_run(compile_packed(q.mod, host_target(), family), x), run_reference(q.mod, x))


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="apt-get install gcc-aarch64-linux-gnu")
def test_aarch64_cross_compiles(small, tmp_path):
    model, x = small
    q = _quantize(model, x, 4)
    target = resolve_target("aarch64-dotprod")
    ex = gwq_tvm.build(q, target)
    out = tmp_path / "post.so"
    ex.export_library(str(out), fcompile=export_compiler(target))
    header = out.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183


# --- the bundled ResNet ----------------------------------------------------------------
@pytest.mark.slow
def test_bundled_resnet_post_w4_integer_only_bit_exact_and_gwq_shifts(fmnist):
    calib, test_x, _ = fmnist
    model = gwq_tvm.data.bundled_model()
    q = gwq_tvm.quantize(model, calib[:256], QuantConfig(weights="post", weight_bits=4, act_bits=8))
    assert not q.float_ops and sum(w.codebook == "post" for w in q.plan.layers.values()) == len(q.plan.layers)
    x = test_x[:16]
    np.testing.assert_array_equal(_run(gwq_tvm.build(q), x), run_reference(q.mod, x))
    share = lambda m: sfc_summary(sfc_sites(m.graph, m.plan))["shift_share"]  # noqa: E731
    pg = gwq_tvm.quantize(model, calib[:256], QuantConfig(weights="post", weight_bits=4, act_bits=8, mode="gwq"))
    ug = gwq_tvm.quantize(model, calib[:256], QuantConfig(weight_bits=4, act_bits=8, mode="gwq"))
    assert not pg.float_ops and share(pg) >= share(ug)


# --- bad input ---------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,msg", [
    (dict(weights="post", weight_bits=8), "weight_bits 2-5"),
    (dict(weights="pot"), "weights must be one of"),
    (dict(weights="post", weight_bits=4, weight_blocks=(2, 1)), "drop weight_blocks"),
    (dict(weights="post", weight_bits=4, weight_granularity="per-tensor"), "per-channel"),
    (dict(weights="post", weight_bits=4, refine_steps=5), "post-training only"),
])
def test_bad_config(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        QuantConfig(**kwargs)


def test_cli_bad_weights_is_one_line(capsys):
    from gwq_tvm.cli import main

    assert main(["plan", str(gwq_tvm.data.bundled_model()), "--weights", "post", "--weight-bits", "7",
                 "-o", "/nonexistent/x.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gwq-tvm: error:") and "weight_bits 2-5" in err[0]


def test_hand_edited_post_plan_names_the_json_path(small, tmp_path):
    model, x = small
    d = _quantize(model, x, 4).plan.to_dict()
    d["layers"]["conv2d_0"]["bits"] = 7
    with pytest.raises(PlanError, match=r"^layers\.conv2d_0\.bits: post weights take 2-5 bits"):
        QuantPlan.from_dict(json.loads(json.dumps(d)))
    d["layers"]["conv2d_0"].update(bits=4, granularity="block", block=[2, 1], scales=[0.1, 0.1])
    with pytest.raises(PlanError, match=r"^layers\.conv2d_0\.granularity: post weights"):
        QuantPlan.from_dict(d)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="apt-get install gcc-aarch64-linux-gnu")
def test_post_bit_exact_on_emulated_board(small, aarch64_remote, tmp_path):
    """The cross-compiled POST program (sdot kernels, lookup per call) on the emulated aarch64 board equals the reference."""
    from test_arm_kernels import _run_remote

    model, x = small
    q = _quantize(model, x, 4)
    ex = gwq_tvm.build(q, resolve_target("aarch64-dotprod"))
    np.testing.assert_array_equal(_run_remote(aarch64_remote, ex, x, "aarch64-dotprod", tmp_path / "post.so"),
                                  run_reference(q.mod, x))
