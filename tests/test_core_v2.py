"""Core v2 contracts: v1 plans still compile to the same outputs, defects fixed (each test fails without its fix)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm.api import write_reference
from gwq_tvm.plan.quantplan import QuantPlan
from gwq_tvm.reference import run_reference

from conftest import compile_and_run

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["per_layer", "gwq_w4a4"])
def test_v1_plans_load_and_compile_to_the_outputs_they_had(name):
    """Plans written by the v1 code (commit b62899a) and its reference outputs on 8 test images."""
    v1 = json.loads((DATA / f"bundled_v1_{name}.plan.json").read_text())
    assert v1["version"] == 1
    plan = QuantPlan.load(DATA / f"bundled_v1_{name}.plan.json")
    assert plan.provenance["upgraded_from"] == 1 and plan.config.to_dict() == v1["config"]
    assert plan.arithmetic.add_precision_bits == v1["config"]["add_precision_bits"]
    with np.load(DATA / "bundled_v1_outputs.npz") as f:
        x, want = f["images"], f[name]
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), plan=plan)
    np.testing.assert_array_equal(run_reference(q.mod, x), want)
    np.testing.assert_array_equal(compile_and_run(q.mod, x), want)
    again = QuantPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.to_dict()["version"] == 2


def test_the_compiler_reads_arithmetic_not_provenance(bundled_int8):
    """A plan's search settings are provenance: changing them changes nothing the compiler emits."""
    plan = bundled_int8.plan
    edited = plan.replace(provenance={**plan.provenance, "config": {**plan.provenance["config"], "add_precision_bits": 2}})
    a = gwq_tvm.RealizeIntegerProgram(plan)(bundled_int8.float_model.mod)
    b = gwq_tvm.RealizeIntegerProgram(edited)(bundled_int8.float_model.mod)
    tvm.ir.assert_structural_equal(a, b)
    c = gwq_tvm.RealizeIntegerProgram(plan.replace(arithmetic=dataclasses.replace(plan.arithmetic, add_precision_bits=2)))(
        bundled_int8.float_model.mod)
    assert a.script() != c.script()


def test_write_reference_without_a_plan_input_shape(bundled_int8, tmp_path):
    """Defect: write_reference read ``qmodel.fm`` (the field is ``float_model``)."""
    q = dataclasses.replace(bundled_int8, plan=bundled_int8.plan.replace(input_shape=None))
    path = write_reference(tmp_path / "m.so", q)
    with np.load(path) as f:
        assert f["inputs"].shape[1:] == (1, 28, 28)


def test_reference_catches_int64_overflow():
    """Defect: the int64 overflow check compared wrapped int64 values with the int64 range, so it never fired."""
    x = relax.Var("x", relax.TensorType((1, 4), "int64"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.multiply(x, relax.const(np.int64(1 << 40), "int64")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    ok = np.array([[1, -1, 3, 1 << 20]], np.int64)
    np.testing.assert_array_equal(run_reference(mod, ok), ok * (1 << 40))
    with pytest.raises(OverflowError, match="int64"):
        run_reference(mod, np.array([[1 << 30, 0, 0, 0]], np.int64))


@pytest.mark.parametrize("change, message", [
    # post is realized since ASQ (tests/test_post.py); pot is not
    (dict(codebook="pot"), "codebook pot is not realized"),
    # storage int4 is realized since the packed int4 kernels (tests/test_int4_kernels.py)
    # permutations and input blocks are realized since PTQ-SL (tests/test_subl_gdrq.py); 2 input blocks
    # cannot split conv2d_0's 1*3*3 weight columns
    (dict(granularity="block", block=(2, 2), scales=(0.01,) * 4), "do not divide the 9 weight columns"),
])
def test_plan_features_the_compiler_cannot_realize_yet_are_named(bundled_int8, change, message):
    plan = bundled_int8.plan
    layer = plan.layers["conv2d_0"]
    edited = plan.replace(layers={**plan.layers, "conv2d_0": dataclasses.replace(layer, **change)},
                          # symmetric tensors, so that the zero-point check (input blocks take none) does not speak first
                          tensors={k: dataclasses.replace(t, zero_point=0) for k, t in plan.tensors.items()})
    with pytest.raises(gwq_tvm.errors.PlanError, match=message):
        gwq_tvm.RealizeIntegerProgram(edited)(bundled_int8.float_model.mod)


def test_output_channel_blocks_realize_as_repeated_channel_scales(bundled_int8):
    """``block n_out x 1`` is per-channel with one scale per block of channels: realized exactly so."""
    plan = bundled_int8.plan
    layer = plan.layers["conv2d_0"]
    channels = len(layer.scales)
    block = plan.replace(layers={**plan.layers, "conv2d_0": dataclasses.replace(
        layer, granularity="block", block=(2, 1), scales=(max(layer.scales[: channels // 2]), max(layer.scales[channels // 2:])))})
    chan = plan.replace(layers={**plan.layers, "conv2d_0": dataclasses.replace(
        layer, scales=(block.layers["conv2d_0"].scales[0],) * (channels // 2) + (block.layers["conv2d_0"].scales[1],) * (channels - channels // 2))})
    a = gwq_tvm.RealizeIntegerProgram(block)(bundled_int8.float_model.mod)
    b = gwq_tvm.RealizeIntegerProgram(chan)(bundled_int8.float_model.mod)
    tvm.ir.assert_structural_equal(a, b)


def test_gwq_errors_keep_their_type_through_a_pass(bundled_int8):
    """TVM 0.27 turns unknown exceptions raised inside a module pass into RuntimeError (gwq_tvm/ir.py registers ours)."""
    plan = bundled_int8.plan
    edited = plan.replace(layers={**plan.layers, "conv2d_0": dataclasses.replace(plan.layers["conv2d_0"], codebook="pot")})
    with pytest.raises(gwq_tvm.errors.PlanError) as info:
        gwq_tvm.RealizeIntegerProgram(edited)(bundled_int8.float_model.mod)
    assert type(info.value) is gwq_tvm.errors.PlanError
