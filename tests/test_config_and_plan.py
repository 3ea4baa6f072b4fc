"""QuantConfig validation and QuantPlan JSON round trip / schema checks."""

import json

import pytest

from gwq_tvm import QuantConfig, QuantPlan
from gwq_tvm.errors import ConfigError, PlanError


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight_bits": 9}, {"act_bits": 1}, {"act_bits": 8.0}, {"calibration": "minmax"}, {"mode": "gwq3"},
        {"percentile": 10}, {"calib_batch_size": 0}, {"bits": {"conv2d_0": (4,)}}, {"bits": {"conv2d_0": (4, 12)}},
    ],
)
def test_bad_config_values_raise(kwargs):
    with pytest.raises(ConfigError):
        QuantConfig(**kwargs)


def test_config_round_trip_and_overrides():
    cfg = QuantConfig(weight_bits=4, act_bits=4, bits={"conv2d_0": (8, 8)}, calibration="percentile")
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.weight_bits_for("conv2d_0") == 8 and cfg.act_bits_for("conv2d_1") == 4


def test_plan_round_trip_and_diff(bundled_int8, tmp_path):
    plan = bundled_int8.plan
    path = tmp_path / "p.json"
    plan.save(path)
    again = QuantPlan.load(path)
    assert again == plan and again.diff(plan) == []
    assert again.input_shape == (None, 1, 28, 28)
    data = json.loads(path.read_text())
    name = next(iter(data["tensors"]))
    data["tensors"][name]["exponent"] -= 1
    changed = QuantPlan.from_dict(data)
    assert changed.scale(name) == plan.scale(name) / 2
    assert any(line.startswith(f"tensors.{name}:") for line in plan.diff(changed))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.update(format="other"), "not a gwq-tvm QuantPlan"),
        (lambda d: d["groups"].update({next(iter(d["groups"])): 2.5}), "mantissa"),
        (lambda d: d["tensors"][next(iter(d["tensors"]))].update(bits=12), "bits"),
        (lambda d: d["tensors"][next(iter(d["tensors"]))].pop("exponent"), r"tensors\.input\.exponent: missing"),
        (lambda d: d["tensors"]["input"].update(exponent="7"), r"tensors\.input\.exponent: expected an integer"),
        (lambda d: d["tensors"]["input"].update(sign=True), r"tensors\.input\.sign: unknown key"),
        (lambda d: d["arithmetic"].update(add_precision_bits=40), "add_precision_bits"),
        (lambda d: d["layers"]["conv2d_0"].update(granularity="block"), r"layers\.conv2d_0\.block"),
        (lambda d: d["layers"]["conv2d_0"].update(codebook="lut"), r"layers\.conv2d_0\.codebook"),
        (lambda d: d["layers"]["conv2d_0"].update(storage="int4"), r"layers\.conv2d_0\.storage: int4 holds at most 4 bits"),
        (lambda d: d["layers"]["conv2d_0"].update(scales=[-1.0]), r"layers\.conv2d_0\.scales\[0\]: -1\.0 must be positive"),
        (lambda d: d["layers"]["conv2d_0"].update(permutation=[0, 0]), r"layers\.conv2d_0\.permutation"),
        (lambda d: d.update(input_shape=[1, "x"]), "input_shape"),
    ],
)
def test_malformed_plans_are_rejected(bundled_int8, mutate, message):
    data = bundled_int8.plan.to_dict()
    data = json.loads(json.dumps(data))
    mutate(data)
    with pytest.raises(PlanError, match=message):
        QuantPlan.from_dict(data)


def test_plan_file_errors(tmp_path):
    with pytest.raises(PlanError, match="not found"):
        QuantPlan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not JSON"):
        QuantPlan.load(bad)
