"""Post-training refinement of a plan's scales on calibration data (issue 3): loss, groups, round trip, bit-exactness."""

import sys

import numpy as np
import pytest

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.cli import main
from gwq_tvm.data import bundled_model
from gwq_tvm.errors import ConfigError
from gwq_tvm.plan import strategies
from gwq_tvm.plan.program import sfc_sites
from gwq_tvm.plan.quantplan import QuantPlan
from gwq_tvm.reference import run_reference
from gwq_tvm.qat.refine import calibration_loss, refine_plan

from conftest import compile_and_run

#: low activation bits, where the planner's per-tensor MSE proxy is weakest and refinement has something to fix
W4A2_K2 = QuantConfig(weight_bits=4, act_bits=2, mode="gwq", groups=2, end_bits=8, loss_aware=False)
STEPS = 20


@pytest.fixture(scope="module")
def refined(fmnist):
    """(calibration images, unrefined QuantizedModel, refined QuantizedModel) of the bundled model."""
    calib = fmnist[0][:128]
    plain = gwq_tvm.quantize(bundled_model(), calib, W4A2_K2)
    q = gwq_tvm.quantize(bundled_model(), calib, W4A2_K2.replace(refine_steps=STEPS))
    return calib, plain, q


def test_refinement_lowers_the_calibration_loss(refined):
    """The returned plan is the best one measured, so the loss it optimises never rises (here it falls)."""
    calib, plain, q = refined
    before = calibration_loss(plain.graph, plain.plan, calib)
    after = calibration_loss(q.graph, q.plan, calib)
    assert after < before


def test_refinement_keeps_the_start_plan_when_nothing_better_is_found(refined):
    """With a learning rate too small to change any rounded exponent, no worse plan is ever returned."""
    calib, plain, _ = refined
    out = refine_plan(plain.graph, plain.plan, calib, 2, lr=1e-12)
    assert calibration_loss(plain.graph, out, calib) <= calibration_loss(plain.graph, plain.plan, calib)


def test_refinement_keeps_groups_bits_and_shift_sites(refined):
    """Only mantissas and exponents move: every tensor keeps its group, bits and signedness; shifts stay shifts."""
    _, plain, q = refined
    assert q.plan.diff(plain.plan)  # something was refined
    assert set(q.plan.groups) == set(plain.plan.groups)
    for name, t in plain.plan.tensors.items():
        r = q.plan.tensors[name]
        assert (r.group, r.bits, r.signed) == (t.group, t.bits, t.signed), name
    for name, layer in q.plan.layers.items():
        assert layer.weight_bits == plain.plan.layers[name].weight_bits
        assert np.all(np.log2(layer.weight_scales) == np.round(np.log2(layer.weight_scales))), name  # still powers of two
    multiplies = lambda plan: {(s.node, s.port) for s in sfc_sites(q.graph, plan) if s.kind == "multiply"}  # noqa: E731
    assert multiplies(plain.plan)  # K=2: there are cross-group multiplies to keep
    assert multiplies(q.plan) == multiplies(plain.plan)


def test_refined_plan_round_trips_and_compiles_bit_exact(refined, fmnist, tmp_path):
    calib, _, q = refined
    path = tmp_path / "refined.plan.json"
    q.plan.save(path)
    loaded = QuantPlan.load(path)
    assert loaded == q.plan and loaded.config.refine_steps == STEPS
    again = gwq_tvm.quantize(bundled_model(), plan=loaded)
    assert again.integer_only.ok
    x = fmnist[1][:32]
    np.testing.assert_array_equal(compile_and_run(again.mod, x), run_reference(again.mod, x))


@pytest.mark.parametrize("value", [-1, 1.5, True, "10", None, 10**9])
def test_bad_refine_steps(value):
    with pytest.raises(ConfigError, match="refine_steps must be an integer"):
        QuantConfig(refine_steps=value)


def test_cli_bad_refine_steps(capsys):
    assert main(["--quiet", "plan", str(bundled_model()), "-o", "p.json", "--refine-steps", "-3", "--calib-samples", "64"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("gwq-tvm: error:") == 1 and "refine_steps must be an integer" in err, err


def test_refinement_without_torch_names_the_extra(refined, monkeypatch):
    calib, plain, _ = refined
    for name in [m for m in sys.modules if m.startswith("gwq_tvm.qat")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.delitem(strategies._REGISTRY, "refine", raising=False)  # as in a fresh process
    with pytest.raises(ConfigError, match=r"pip install 'gwq-tvm\[torch\]'"):
        gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:64], W4A2_K2.replace(refine_steps=5))


def test_per_layer_refinement_moves_free_weight_scales_and_lowers_the_loss(refined):
    """Per-layer plans keep free weight scales; they are refined too (a step relative to their size), not left behind."""
    calib, plain, _ = refined
    per_layer = gwq_tvm.build_plan(plain.graph, plain.stats, W4A2_K2.replace(mode="per-layer", groups=None), plain.plan.input_shape)
    out = refine_plan(plain.graph, per_layer, calib, STEPS)
    assert calibration_loss(plain.graph, out, calib) < calibration_loss(plain.graph, per_layer, calib)
    moved = [n for n, layer in out.layers.items() if layer.weight_scales != per_layer.layers[n].weight_scales]
    assert moved and all(np.all(np.asarray(out.layers[n].weight_scales) > 0) for n in moved)
