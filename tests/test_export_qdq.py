"""QDQ ONNX export: the plan's scales exactly, ONNX Runtime runs it and agrees with the compiled program; clear refusals."""

import dataclasses
import subprocess
import sys
import types

import numpy as np
import onnx
import pytest

import gwq_tvm
from gwq_tvm.data import BUNDLED_MODEL
from gwq_tvm.export_qdq import QdqExportError, check_expressible, export_qdq, exported_scales, map_units, ort_agreement, run_ort
from gwq_tvm.plan.program import accumulator

from onnx_nets import NETS

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def bundled_gwq(fmnist):
    calib, _, _ = fmnist
    return gwq_tvm.quantize(BUNDLED_MODEL, calib[:256], gwq_tvm.QuantConfig(mode="gwq", loss_aware=False))


def _check_scales(q, path):
    """Every exported scale is the plan's (as the float32 ONNX stores it); a test fails on any difference."""
    acts, weights = exported_scales(path)
    expected = {t for t in q.graph.nodes if not (q.graph.nodes[t].kind in ("conv2d", "dense", "global_avgpool", "avgpool")
                                                  and not any(c.kind != "float" for c in q.graph.consumers(t)))}
    assert set(acts) == expected
    for t, s in acts.items():
        assert s == np.float32(q.plan.scale(t)), t
    assert set(weights) == set(q.plan.layers)
    for name, layer in q.plan.layers.items():
        np.testing.assert_array_equal(weights[name], np.asarray(layer.weight_scales, np.float32))
    m = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    for name in q.plan.layers:
        acc = accumulator(q.graph.nodes[name], q.graph, q.plan)
        np.testing.assert_array_equal(inits[f"{name}_bias_scale"], acc.scale.astype(np.float32))
        # the export's DQ input is s (q - z): its bias is q_b, without the program's folded -z sum(q_w)
        np.testing.assert_array_equal(inits[f"{name}_bias_q"], acc.plain_bias)
        assert inits[f"{name}_bias_q"].dtype == np.int32
        w = inits[f"{name}_weight_q"].astype(np.int16) - (128 if inits[f"{name}_weight_q"].dtype == np.uint8 else 0)
        np.testing.assert_array_equal(w, acc.weight)
    return acts


@pytest.mark.parametrize("which", ["per-layer", "gwq"])
def test_exported_scales_are_the_plans(which, bundled_int8, bundled_gwq, tmp_path):
    q = bundled_int8 if which == "per-layer" else bundled_gwq
    acts = _check_scales(q, export_qdq(q.plan, BUNDLED_MODEL, tmp_path / "m.onnx", q.graph))
    if which == "gwq":  # inside a group every ratio of exported scales is an exact power of two: shift SFCs
        for t, s in acts.items():
            for u, v in acts.items():
                if q.plan.tensors[t].group == q.plan.tensors[u].group:
                    assert np.frexp(np.float64(s) / np.float64(v))[0] == 0.5


def test_a_changed_scale_is_caught(bundled_int8, tmp_path):
    """The scale check above fails when the export does not hold the plan's scales."""
    import dataclasses

    q = bundled_int8
    path = export_qdq(q.plan, BUNDLED_MODEL, tmp_path / "m.onnx", q.graph)
    other = dataclasses.replace(q.plan, groups={**q.plan.groups, "conv2d_1": min(q.plan.groups["conv2d_1"] * 1.01, 1.99)})
    with pytest.raises(AssertionError):
        _check_scales(types.SimpleNamespace(graph=q.graph, plan=other), path)


def _ort_ops(path, tmp_path):
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}


@pytest.mark.slow
@pytest.mark.parametrize("which", ["per-layer", "gwq"])
def test_ort_runs_the_export_and_agrees_with_the_program(which, bundled_int8, bundled_gwq, fmnist, tmp_path):
    _, test_x, test_y = fmnist
    q = bundled_int8 if which == "per-layer" else bundled_gwq
    x, y = test_x[:1000], test_y[:1000]
    path = export_qdq(q.plan, BUNDLED_MODEL, tmp_path / "m.onnx", q.graph, weight_type="uint8")
    assert {"QLinearConv", "QLinearAdd"} <= _ort_ops(path, tmp_path)  # ORT's QDQ executor took the integer kernels
    fused = ort_agreement(q, path, x, y)
    assert fused.top1_agreement >= 0.99 and fused.sqnr_db > 35
    # the int8-weight file holds the same values: ORT's reference path (no fusion) agrees as well
    path8 = export_qdq(q.plan, BUNDLED_MODEL, tmp_path / "m8.onnx", q.graph)
    plain = ort_agreement(q, path8, x, y, optimize=False)
    assert plain.top1_agreement >= 0.99 and plain.sqnr_db > 35


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("net", sorted(NETS))
def test_small_onnx_models_export_and_run(net, bits, fmnist, tmp_path):
    calib, test_x, _ = fmnist
    model = NETS[net]()
    q = gwq_tvm.quantize(model, calib[:64], gwq_tvm.QuantConfig(weight_bits=bits, act_bits=bits))
    path = export_qdq(q.plan, model, tmp_path / "q.onnx", q.graph)
    _check_scales(q, path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ("Clip" in ops) == (bits < 8 or net == "convnet")  # narrow ranges are a Clip before QuantizeLinear
    fid = ort_agreement(q, path, test_x[:300], optimize=False)
    assert fid.top1_agreement >= 0.97 and fid.sqnr_db > 25


def test_low_bit_range_is_exact_in_an_8_bit_container(fmnist, tmp_path):
    """A 2-bit unsigned tensor holds only 0..3 in ORT too: Clip to [0, 3 s] then QuantizeLinear."""
    calib, test_x, _ = fmnist
    model = NETS["resnet"]()
    q = gwq_tvm.quantize(model, calib[:64], gwq_tvm.QuantConfig(act_bits=2))
    path = export_qdq(q.plan, model, tmp_path / "q.onnx", q.graph)
    m = onnx.load(str(path))
    m.graph.output.append(onnx.helper.make_tensor_value_info("conv2d_1_q", onnx.TensorProto.UINT8, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ints = sess.run(["conv2d_1_q"], {"x": test_x[:32]})[0]
    assert not q.plan.tensors["conv2d_1"].signed and ints.max() == 3 and ints.min() == 0


def test_mapping_checks_the_graph(bundled_int8):
    with pytest.raises(QdqExportError, match="cannot map the ONNX graph to the plan"):
        map_units(NETS["resnet"](), bundled_int8.graph)
    units = map_units(onnx.load(str(BUNDLED_MODEL)), bundled_int8.graph)
    assert [u.name for u in units] == [n for n in bundled_int8.graph.nodes if n != "input"]
    assert units[0].output == "/stem/stem.2/Relu_output_0"  # conv2d_0 is the stem Conv with its Relu


@pytest.mark.parametrize("change, message", [
    (dict(codebook="post", bits=4), "post weight codebook"),  # a valid POST entry (2-5 bits) export cannot express
    (dict(granularity="block", block=(2, 2), scales=(0.01,) * 4), "block weight scales"),
    (dict(storage="int4", bits=4), "int4 storage"),
])
def test_inexpressible_features_are_named(bundled_int8, change, message):
    plan = bundled_int8.plan
    edited = plan.replace(layers={**plan.layers, "conv2d_0": dataclasses.replace(plan.layers["conv2d_0"], **change)})
    with pytest.raises(QdqExportError, match=message):
        check_expressible(edited)


def test_dynamic_steps_are_named(bundled_int8):
    plan = bundled_int8.plan
    from gwq_tvm.plan.quantplan import AdapterQuant

    adapter = AdapterQuant(((0.0,),), (0.0,), (0.0,), 1.0, 1.0)  # a dynamic step names one of the plan's adapters
    edited = plan.replace(tensors={**plan.tensors, "add_0": dataclasses.replace(plan.tensors["add_0"], dynamic="a")},
                          adapters={"a": adapter})
    with pytest.raises(QdqExportError, match="dynamic"):
        check_expressible(edited)


def _cli(*argv):
    proc = subprocess.run([sys.executable, "-m", "gwq_tvm.cli", "--quiet", *argv], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.slow
def test_cli_export_qdq_reports_agreement(bundled_int8, tmp_path):
    plan = tmp_path / "m.plan.json"
    bundled_int8.plan.save(plan)
    rc, out, err = _cli("export-qdq", str(plan), str(BUNDLED_MODEL), "-o", str(tmp_path / "q.onnx"), "--limit", "200",
                        "--weight-type", "uint8")
    assert rc == 0, err
    agreement = float(out.split("top-1 agreement with the gwq-tvm integer model:")[1].split("%")[0])
    assert agreement >= 99.0 and "rounds half to even" in out
    run_ort(tmp_path / "q.onnx", np.zeros((2, 1, 28, 28), np.float32))


def test_cli_refusals(bundled_int8, fmnist, tmp_path):
    plan = tmp_path / "m.plan.json"
    bundled_int8.plan.save(plan)
    other = tmp_path / "other.onnx"
    onnx.save(NETS["resnet"](), str(other))
    for argv, match in [
        (["export-qdq", str(plan), str(other), "-o", str(tmp_path / "q.onnx")], "was made for graph"),
        (["export-qdq", str(plan), str(BUNDLED_MODEL), "-o", str(BUNDLED_MODEL), "--no-check"], "overwrite the input"),
    ]:
        rc, _, err = _cli(*argv)
        assert rc == 2 and "Traceback" not in err and err.startswith("gwq-tvm: error:") and match in err, err
    assert onnx.load(str(BUNDLED_MODEL)).graph.node  # the input is intact


def test_float_fallback_ops_are_refused(fmnist, tmp_path):
    calib, _, _ = fmnist
    model = NETS["resnet"]()
    g = model.graph
    relu = next(n for n in g.node if n.output[0] == "r1")
    relu.op_type = "Floor"  # (Sigmoid, the old example, is a lookup table now)
    with pytest.warns(UserWarning, match="kept in float"):
        q = gwq_tvm.quantize(model, calib[:16], gwq_tvm.QuantConfig())
    assert q.graph.float_nodes()
    with pytest.raises(QdqExportError, match="floor"):
        export_qdq(q.plan, model, tmp_path / "q.onnx", q.graph)


@pytest.mark.parametrize("op", ["GlobalMaxPool", "ReduceMax"])
def test_global_max_pool_exports_as_a_passthrough(op, tmp_path):
    """A global max pool is the ``maxpool`` kind on the whole map: the QDQ export maps the ONNX op to it and ORT
    computes the same program."""
    from import_nets import global_max_pool

    model = global_max_pool(op)
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    q = gwq_tvm.quantize(model, x[:32])
    path = export_qdq(q.plan, model, tmp_path / "q.onnx", q.graph)
    _check_scales(q, path)
    fid = ort_agreement(q, path, x[32:], optimize=False)
    assert fid.top1_agreement >= 0.97 and fid.sqnr_db > 25
