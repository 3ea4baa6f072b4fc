"""A channel whose weights are tiny next to its bias (a batch norm with gamma ~ 0 folded into its conv).

Max-calibrated weight scales make ``s_w,c`` tiny and ``q_b = b_c / (s_in s_w,c)`` leaves int32: the ONNX zoo's
DenseNet-121 failed with "bias does not fit the int32 accumulator".  The planner raises such a channel's scale to
``|b_c| / (s_in * BIAS_LIMIT)`` (:func:`gwq_tvm.plan.planner.fit_bias_scales`); a hand-edited plan that lowers it
again gets one line naming the layer and the channel.
"""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import PlanError
from gwq_tvm.plan import scales as S
from gwq_tvm.reference import run_reference

from conftest import compile_and_run

DEAD = 2  # the channel whose batch-norm gamma is ~0


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(),
                      nn.Linear(3 * 6 * 6, 5))
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([1.0, 0.7, 1e-9, 1.2]))
        m[1].bias.copy_(torch.tensor([0.1, -0.2, 0.8, 0.3]))
    return m.eval()


@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
def test_a_nearly_dead_channel_keeps_its_bias(mode):
    model, x = _model(), np.random.default_rng(0).standard_normal((16, 2, 8, 8)).astype(np.float32)
    q = gwq_tvm.quantize(model, x, QuantConfig(mode=mode), input_shape=(None, 2, 8, 8))
    conv = q.graph.layers()[0]
    wq = q.plan.layers[conv]
    s_in = q.plan.scale(q.graph.nodes[conv].inputs[0])
    bias = q.graph.nodes[conv].bias
    assert abs(bias[DEAD]) / (s_in * wq.scales[DEAD]) <= S.BIAS_LIMIT  # raised: the bias fits
    assert wq.scales[0] == S.weight_scales(q.graph.nodes[conv].weight, 8, True)[0] or mode == "gwq"  # others untouched
    if mode == "gwq":
        assert S.is_power_of_two(np.asarray(wq.scales)).all()
    assert q.integer_only.ok
    got = compile_and_run(q.mod, x)
    np.testing.assert_array_equal(got, run_reference(q.mod, x))
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_a_hand_edited_scale_the_bias_does_not_fit_is_one_line():
    model, x = _model(), np.random.default_rng(0).standard_normal((16, 2, 8, 8)).astype(np.float32)
    q = gwq_tvm.quantize(model, x, QuantConfig(), input_shape=(None, 2, 8, 8))
    conv = q.graph.layers()[0]
    wq = q.plan.layers[conv]
    low = list(wq.scales)
    low[DEAD] = 1e-11  # inside the plan checker's bounds, far below what the bias needs
    plan = dataclasses.replace(q.plan, layers={**q.plan.layers, conv: dataclasses.replace(wq, scales=tuple(low))})
    with pytest.raises(PlanError, match=rf"layers\.{conv}: channel {DEAD}'s bias .* does not fit the int32 accumulator"):
        gwq_tvm.quantize(model, plan=plan, input_shape=(None, 2, 8, 8))


def test_a_hand_edited_scale_no_requantizer_applies_is_one_line():
    """The opposite edit: a weight scale inside the checker's bounds (1e12) whose requantize ratio
    ``s_in * s_w / s_out`` (~1e11) has no Q31 multiplier: the plan's error at that site, not a ValueError."""
    model, x = _model(), np.random.default_rng(0).standard_normal((16, 2, 8, 8)).astype(np.float32)
    q = gwq_tvm.quantize(model, x, QuantConfig(), input_shape=(None, 2, 8, 8))
    conv = q.graph.layers()[1]
    wq = q.plan.layers[conv]
    plan = dataclasses.replace(q.plan, layers={**q.plan.layers, conv: dataclasses.replace(wq, scales=(1e12,) * len(wq.scales))})
    with pytest.raises(PlanError, match=rf"{conv}: requantize: SFC ratio too large for a Q31 multiplier") as err:
        gwq_tvm.quantize(model, plan=plan, input_shape=(None, 2, 8, 8))
    assert "\n" not in str(err.value)
