"""Models as exporters write them: import rewrites, the float fallback that never crashes, pad and pool kinds.

Every compiled path is checked bit-exact (the fast ``gwq_tvm.build`` module against ``run_reference``) and,
where every op has an integer kind, integer-only (``check_integer_only``).
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import ModelError, UnsupportedOpError
from gwq_tvm.frontend.onnx_prep import drop_inference_noops, fold_shape_subgraphs, upgrade_opset
from gwq_tvm.kinds.avgpool import window_counts
from gwq_tvm.passes.check import check_integer_only
from gwq_tvm.reference import run_reference

import import_nets as N

ROOT = Path(__file__).resolve().parents[1]


def _inputs(model, batch=8, seed=0, shape=None):
    dims = shape or [d.dim_value or 0 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal([batch] + list(dims[1:])).astype(np.float32)


def _run(q, x):
    vm = relax.VirtualMachine(gwq_tvm.build(q), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
    return out.numpy() if hasattr(out, "numpy") else tuple(o.numpy() for o in out)


def _quantize(model, x, config=QuantConfig(), **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = gwq_tvm.quantize(model, x, config, **kw)
    return q, [str(w.message) for w in caught if "kept in float" in str(w.message)]


def assert_bit_exact(q, x):
    got, want = _run(q, x), run_reference(q.mod, x)
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, r in zip(got, want):
            np.testing.assert_array_equal(g, r)
    else:
        np.testing.assert_array_equal(got, want)
    return want


def _float_logits(model, x, input_shape=None):
    fm = gwq_tvm.load_model(model, input_shape=input_shape)
    vm = relax.VirtualMachine(tvm.compile(fm.mod, gwq_tvm.runtime.host_target()), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def _sqnr(ref, got):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - got).astype(np.float64) ** 2), 1e-30))


def _cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gwq_tvm.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def _one_error_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("gwq-tvm: error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# --- import rewrites --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [7, 9, 11, 13])
def test_dropout_and_identity_are_dropped_at_every_opset(opset):
    model = N.dropout_identity(opset=opset)
    x = _inputs(model)
    q, floats = _quantize(model, x)
    assert not floats and q.integer_only.ok, q.integer_only
    assert {n.kind for n in q.graph.nodes.values()} == {"input", "conv2d", "reshape", "dense"}
    assert_bit_exact(q, x)
    np.testing.assert_allclose(run_reference(q.mod, x), _float_logits(model, x), atol=0.35)


def test_old_opsets_are_upgraded_and_the_newest_is_accepted():
    old = N.dropout_identity(opset=7)
    assert upgrade_opset(old, "m").opset_import[0].version == 13
    newest = onnx.defs.onnx_opset_version()
    model = N.dropout_identity(opset=newest)
    assert upgrade_opset(model, "m") is model
    gwq_tvm.load_model(model)  # imports


def test_a_used_dropout_mask_is_named():
    model = N.dropout_identity()
    model.graph.output.append(onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.BOOL, None))
    with pytest.raises(ModelError, match="Dropout node 'drop0' has its mask output 'mask' used"):
        drop_inference_noops(model, "m")


@pytest.mark.parametrize("product", [False, True], ids=["slice-concat", "gather-mul"])
def test_shape_subgraphs_fold_to_constants(product):
    model = N.shape_flatten(product=product)
    fold_shape_subgraphs(model)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Reshape", "Gemm"]
    target = next(i for i in model.graph.initializer if i.name == "newshape")
    # the batch stays dynamic: ONNX's 0 ("copy the dimension") where the shape read the symbolic batch
    assert list(onnx.numpy_helper.to_array(target)) == ([-1, 4 * 14 * 14] if product else [0, -1])
    x = _inputs(model)
    q, floats = _quantize(N.shape_flatten(product=product), x)
    assert not floats and q.integer_only.ok
    assert_bit_exact(q, x)
    assert _run(q, x[:3]).shape == (3, 10)  # still any batch


def test_paddle_style_dynamic_dims_import_with_input_shape(tmp_path):
    model = N.paddle_style(dynamic_hw=True)
    x = _inputs(model, shape=[None, 3, 16, 16])
    q, floats = _quantize(model, x, input_shape=(None, 3, 16, 16))
    assert not floats and q.integer_only.ok  # the HardSigmoid gate is a table, the SE product a mul node
    assert_bit_exact(q, x)
    path = tmp_path / "paddle.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "calib.npy", x)
    line = _one_error_line(_cli("compile", path, "--calib", tmp_path / "calib.npy", "-o", tmp_path / "p.so"))
    assert "dynamic dimensions (H, W)" in line and "--input-shape" in line
    ok = _cli("compile", path, "--calib", tmp_path / "calib.npy", "-o", tmp_path / "p.so", "--input-shape", "N,3,16,16")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "p.so").is_file()


def test_two_outputs_compile_bit_exact_and_eval_takes_the_first(tmp_path, fmnist):
    model = N.two_outputs()
    calib, test_x, _ = fmnist
    q, _ = _quantize(model, calib[:64])
    assert q.integer_only.ok and len(q.graph.outputs) == 2
    logits, aux = assert_bit_exact(q, test_x[:8])
    assert logits.shape == (8, 10) and aux.shape == (8, 6, 14, 14)
    ref = gwq_tvm.load_model(model)
    vm = relax.VirtualMachine(tvm.compile(ref.mod, gwq_tvm.runtime.host_target()), tvm.cpu())
    f_logits, f_aux = (o.numpy() for o in vm["main"](tvm.runtime.tensor(test_x[:8])))
    assert _sqnr(f_logits, logits) > 25 and _sqnr(f_aux, aux) > 25
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    assert _cli("compile", path, "-o", tmp_path / "two.so", "--calib-samples", 64).returncode == 0
    bench = _cli("bench", tmp_path / "two.so", "--repeat", 2)
    assert bench.returncode == 0 and "bit-exact vs host reference: yes" in bench.stdout, bench.stdout + bench.stderr
    ev = _cli("eval", tmp_path / "two.so", "--against", path, "--limit", 64)
    assert ev.returncode == 0 and "mean logit SQNR" in ev.stdout, ev.stderr


def test_caffe2_sum_residuals_become_integer_adds():
    from onnx import helper

    rng = np.random.default_rng(5)
    inits = {"w0": N._w(rng, 4, 1, 3, 3), "b0": N._b(rng, 4), "w1": N._w(rng, 4, 4, 3, 3), "b1": N._b(rng, 4),
             "wf": N._w(rng, 10, 4), "bf": N._b(rng, 10)}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Sum", ["c1", "r0"], ["s2"], name="sum2"),
             helper.make_node("Sum", ["s2", "r0", "c1"], ["s3"], name="sum3"),
             helper.make_node("Relu", ["s3"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    model = N.make(nodes, inits, ["N", 1, 8, 8], {"y": ["N", 10]}, opset=9)
    x = _inputs(model, batch=16)
    q, floats = _quantize(model, x)
    assert not floats and q.integer_only.ok
    assert [n.kind for n in q.graph.nodes.values()].count("add") == 3
    got = assert_bit_exact(q, x)
    assert _sqnr(_float_logits(model, x), got) > 20


def test_an_op_tvm_cannot_import_is_one_line_naming_op_and_node(tmp_path):
    model = N.dropout_identity()
    model.graph.node[1].op_type = "Celu"
    path = tmp_path / "celu.onnx"
    onnx.save(model, path)
    line = _one_error_line(_cli("compile", path, "-o", tmp_path / "c.so"))
    assert "Celu (node 'relu0')" in line
    # a node TVM's converter stops at: a Pad whose pads come from the (batch-dependent) shape
    model = N.pad_pool("reflect")
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    pad.input[1] = "dyn"
    model.graph.node.insert(2, onnx.helper.make_node("Shape", ["r0"], ["s"], name="shape0"))
    model.graph.node.insert(3, onnx.helper.make_node("Concat", ["s", "s"], ["dyn"], axis=0, name="cat0"))
    onnx.save(model, path)
    line = _one_error_line(_cli("compile", path, "-o", tmp_path / "c.so"))
    assert "Pad node 'pad0'" in line, line
    assert not (tmp_path / "c.so").exists()


def test_torch_exported_asymmetric_zero_pad_folds_to_constant_pads(tmp_path):
    # torch.onnx builds F.pad's pads from constants (ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose ->
    # Reshape -> Cast); TVM's Pad converter wants constant pads ("Dynamic pads are not supported yet"), as the
    # zoo's YOLO-tiny (ZeroPad2d((0, 1, 0, 1))) showed
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.ZeroPad2d((0, 1, 0, 1)),
                              torch.nn.MaxPool2d(2, 1), torch.nn.Conv2d(8, 4, 3)).eval()
    path = tmp_path / "zeropad.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 12, 12),), str(path), input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=13, dynamo=False)
    model = onnx.load(path)
    assert any(n.op_type == "ConstantOfShape" for n in model.graph.node)  # the exporter's pattern, still there
    x = _inputs(model)
    q, floats = _quantize(model, x)
    assert not floats and check_integer_only(q.mod).ok
    assert_bit_exact(q, x)


# --- float fallback ----------------------------------------------------------------------------------------------
ISLANDS = {"LRN": "LRN (lrn0)", "Softmax": "Softmax (softmax0)", "LayerNormalization": "LayerNormalization (ln0)",
           "ReduceMean": "ReduceMean (mean0), Sub (center0)"}


@pytest.mark.parametrize("op", ["Erf", "Exp", "Pow"])
def test_elementwise_ops_are_lookup_tables_not_islands(op):
    """Erf, Exp, Pow by a constant on one tensor are tables (kinds/lut.py): integer, no warning, bit-exact."""
    model = N.float_island(op)
    x = _inputs(model, batch=16)
    q, floats = _quantize(model, x)
    assert not floats and q.integer_only.ok
    assert "lut" in {n.kind for n in q.graph.nodes.values()}
    assert_bit_exact(q, x)


@pytest.mark.parametrize("op", sorted(ISLANDS))
def test_float_islands_run_in_the_reference_bit_exact(op):
    model = N.float_island(op)
    x = _inputs(model, batch=32)
    q, floats = _quantize(model, x[:16])
    assert floats == [f"ops kept in float (no integer kind takes them): {ISLANDS[op]}"]
    assert not q.integer_only.ok  # the island is float between a dequantize and a quantize ...
    got = assert_bit_exact(q, x)  # ... and what it feeds requantizes exactly as compiled
    assert _sqnr(_float_logits(model, x), got) > 15


@pytest.mark.parametrize("op", ["Pow", "LayerNormalization", "LRN"])
def test_float_islands_quantize_in_gwq_mode(op):
    """The fake-quant simulator runs a float op in its own float32 (it crashed on float64 x float32 constants)."""
    model = N.float_island(op)
    x = _inputs(model, batch=16)
    q, _ = _quantize(model, x, QuantConfig(mode="gwq", groups=2))
    assert_bit_exact(q, x[:8])


def test_reference_refuses_an_integer_op_without_a_rule():
    from gwq_tvm.reference import Interpreter

    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType([2, 3], "int32"))
    with bb.function("main", [v]):
        out = bb.emit(relax.op.flip(v, axis=0))  # (permute_dims, the first example, has a rule since the kernels branch)
        bb.emit_func_output(out)
    with pytest.raises(NotImplementedError, match="integer op relax.flip"):
        Interpreter(bb.get())(np.zeros((2, 3), np.int32))


def test_strict_refuses_float_ops_in_the_api_and_the_cli(tmp_path):
    model = N.float_island("LRN")
    x = _inputs(model)
    with pytest.raises(UnsupportedOpError, match=r"LRN \(lrn0\)"):
        gwq_tvm.quantize(model, x, strict=True)
    path = tmp_path / "lrn.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "c.npy", x)
    for cmd in (["compile", path, "-o", tmp_path / "l.so"], ["plan", path, "-o", tmp_path / "l.plan.json"]):
        line = _one_error_line(_cli(*cmd, "--calib", tmp_path / "c.npy", "--strict"))
        assert "LRN (lrn0)" in line
    ok = _cli("compile", path, "-o", tmp_path / "l.so", "--calib", tmp_path / "c.npy")
    assert ok.returncode == 0
    assert "gwq-tvm: warning: ops kept in float (no integer kind takes them): LRN (lrn0)" in ok.stderr


def test_a_float_op_followed_only_by_data_movement_ends_the_program_in_float():
    """Before: Softmax over a 4-D map imports as reshape -> softmax -> reshape, and the program quantized the
    softmax's output for the trailing reshape and dequantized it again (not integer-only).  After: the reshape
    moves the float values, the last dequantize comes before the softmax, and the program is integer-only."""
    model = N.softmax_tail()
    x = _inputs(model)
    q, floats = _quantize(model, x)
    assert floats == ["ops kept in float (no integer kind takes them): Softmax (prob)"]
    assert q.integer_only.ok, q.integer_only
    ops = [b.value.op.name for blk in q.mod["main"].body.blocks for b in blk.bindings
           if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)]
    tail = ops[ops.index("relax.nn.softmax"):]
    assert tail == ["relax.nn.softmax", "relax.reshape"], tail  # no floor/clip/astype: nothing requantized
    got = assert_bit_exact(q, x)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_torch_float_ops_are_named_by_their_relax_ops():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(torch.softmax(self.conv(x), dim=1).mean(dim=(2, 3)))  # (exp alone is a table now)

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    q, floats = _quantize(Net(), x, input_shape=(None, 1, 8, 8))
    assert floats == ["ops kept in float (no integer kind takes them): relax.nn.softmax"]
    assert_bit_exact(q, x)


def test_argmax_label_map_output_compiles_integer_only_and_bit_exact():
    """Before: a model ending in ArgMax (segmentation heads) compiled, then failed writing its host reference:
    the numpy reference had no rule for an op with an integer result (an internal error in ``compile``)."""
    model = N.argmax_head()
    x = _inputs(model)
    q, floats = _quantize(model, x)
    assert floats == ["ops kept in float (no integer kind takes them): ArgMax (labels)"]
    # the argmax runs on the dequantized class maps: the checker names that dequantize, and nothing else
    assert [op.split(" = ")[1] for op in q.integer_only.float_ops] == ["relax.astype", "relax.multiply"]
    assert not q.integer_only.float_kernels
    labels = assert_bit_exact(q, x)
    assert labels.dtype == np.int64 and labels.shape == (8, 1, 8, 8) and len(np.unique(labels)) > 1


def test_index_arithmetic_on_data_stays_in_float_and_is_bit_exact():
    """Before: the int64 ``Add`` of an index computation was taken for a per-channel affine layer and quantized
    (an internal error: 'Binary operators must have the same datatype'); integer kinds now take float tensors
    only, and the reference checks the comparison, the mask and the gather."""
    from gwq_tvm.extract import extract_graph

    model = N.mask_gather()
    graph = extract_graph(gwq_tvm.load_model(model).mod)
    assert [n.attrs["op"] for n in graph.float_nodes()] == ["relax.greater", "relax.astype", "relax.add",
                                                           "relax.less", "relax.add", "relax.where", "relax.take",
                                                           "relax.sum"]
    x = _inputs(model)
    q, _ = _quantize(model, x)
    got = assert_bit_exact(q, x)
    assert np.isfinite(got).all() and got.std() > 0


def _assert_integer_and_close(model, x):
    """Quantize ``model`` on ``x``: nothing kept in float, integer-only, bit-exact, within 5% of the float logits."""
    q, floats = _quantize(model, x)
    assert not floats and q.integer_only.ok
    got = assert_bit_exact(q, x)
    want = _float_logits(model, x)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_max_and_min_with_a_constant_bound_are_clips():
    """Before: ``Max(x, 0.0)`` (the dynamo exporter's ``clamp(min=0)``) imported as
    ``max(stack(broadcast_to(...)))`` and stayed in float; now it is a ``Clip``, fused into the conv as its
    activation, and so is ``Min(6.0, x)``."""
    from gwq_tvm.extract import extract_graph

    model = N.max_min_clamps()
    graph = extract_graph(gwq_tvm.load_model(model).mod)
    assert not graph.float_nodes()
    assert [n.act for n in graph.nodes.values() if n.kind == "conv2d"] == [(0.0, float("inf")), (-float("inf"), 6.0)]
    _assert_integer_and_close(model, _inputs(model))


def test_resize_to_sizes_with_the_symbolic_batch_imports():
    """TVM 0.27 bug: its Resize converter reads every entry of ``sizes`` as a constant although it uses only the
    spatial ones, so the dynamo exporter's ``Resize(x, sizes=Concat(Shape(x)[0:2], [h, w]))`` failed to import
    ("'Var' object has no attribute 'value'").  The workaround (``frontend/onnx_resize.py``) passes
    ``(1, 1, h, w)``; the float program matches ONNX Runtime and the integer one is integer-only and bit-exact.
    The last assertion fails once TVM imports such a model itself, and the workaround can go."""
    import onnxruntime as ort
    from tvm.relax.frontend.onnx import from_onnx

    model = N.resize_to_shape()
    x = _inputs(model)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(_float_logits(model, x), want, rtol=1e-4, atol=1e-5)
    q, floats = _quantize(model, x)
    assert not floats and q.integer_only.ok
    assert_bit_exact(q, x)
    with pytest.raises(Exception, match="has no attribute 'value'"):
        from_onnx(model, keep_params_in_input=False)


@pytest.mark.parametrize("op", ["GlobalMaxPool", "ReduceMax"])
def test_global_max_pool_is_an_integer_max_pool(op):
    """Before: ONNX GlobalMaxPool (and ReduceMax over H, W), imported as ``relax.max``, stayed in float between a
    dequantize and a quantize; it is the max pool of the whole map, a passthrough on the integers."""
    from gwq_tvm.extract import extract_graph

    model = N.global_max_pool(op)
    graph = extract_graph(gwq_tvm.load_model(model).mod)
    assert [n.kind for n in graph.nodes.values()] == ["input", "conv2d", "maxpool", "reshape", "dense"]
    _assert_integer_and_close(model, _inputs(model))


def test_gwq_default_group_count_is_at_most_the_tensor_count():
    """Before: GWQ mode without ``groups`` asked the grouping for 4 groups even on a model with 3 quantized tensors
    (this one: input, conv, dense) and failed with 'groups must be from 1 to the number of quantized tensors (3);
    got 4', although the default is documented as *at most* 4.  An explicit ``groups=4`` is still refused."""
    from gwq_tvm.errors import PlanError

    model = N.global_max_pool()
    x = _inputs(model, batch=16)
    q, _ = _quantize(model, x, QuantConfig(mode="gwq"))
    assert 1 <= len(q.plan.groups) <= 3
    assert_bit_exact(q, x)
    with pytest.raises(PlanError, match="groups=4 is more than the model's 3 quantized tensors"):
        gwq_tvm.quantize(model, x, QuantConfig(mode="gwq", groups=4))


def _small_torch_net(dtype=None):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 10))
    return net if dtype is None else net.to(dtype)


def test_torch_import_leaves_the_callers_module_in_training_mode():
    """Before: import called ``module.eval()`` on the user's own module, so a model quantized mid-training
    went on training with frozen batch-norm statistics."""
    net = _small_torch_net().train()
    gwq_tvm.load_model(net, input_shape=(None, 1, 8, 8))
    assert net.training and all(m.training for m in net.modules())


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_torch_module_of_another_float_dtype_imports_as_float32(dtype):
    """Before: a half or double module failed inside torch.export ('Input type (float) and bias type
    (c10::Half) should be the same'); it is imported as a float32 copy, the caller's module unchanged."""
    import torch

    net = _small_torch_net(getattr(torch, dtype))
    fm = gwq_tvm.load_model(net, input_shape=(None, 1, 8, 8))
    assert fm.mod["main"].params[0].ty.dtype == "float32"
    assert next(net.parameters()).dtype == getattr(torch, dtype)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e35])
def test_torch_parameter_with_nan_inf_or_huge_values_is_refused_by_name(value):
    """Before: a NaN weight imported silently and compiled to a program whose channel computed garbage
    (the ONNX path already refused such an initializer)."""
    net = _small_torch_net()
    with __import__("torch").no_grad():
        net[0].weight[1, 0, 0, 0] = value
    with pytest.raises(ModelError, match=r"torch: parameter '0.weight' holds"):
        gwq_tvm.load_model(net, input_shape=(None, 1, 8, 8))


@pytest.mark.parametrize("out, integer", [(8, True), (4, True), (3, False)], ids=["identity", "2x2-windows", "uneven"])
def test_torch_adaptive_average_pool_is_an_integer_pool_where_its_windows_are_uniform(out, integer):
    """Before: every ``AdaptiveAvgPool2d`` but the 1x1 one stayed in float, so a VGG/AlexNet-style head
    (``AdaptiveAvgPool2d(7)`` on a 7x7 map, an identity) was not integer-only.  Where the output size divides
    the input's it is the average pool of kernel = stride = H/oh; uneven windows stay in float."""
    from torch import nn

    import torch

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(out), nn.Flatten(),
                        nn.Linear(4 * out * out, 10))
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    q, floats = _quantize(net, x, input_shape=(None, 1, 8, 8))
    kinds = [n.kind for n in q.graph.nodes.values()]
    assert ("avgpool" in kinds) == integer and bool(floats) != integer
    assert q.integer_only.ok == integer
    got = assert_bit_exact(q, x)
    want = net(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_reference_evaluates_shapes_written_with_the_symbolic_batch():
    """A torch float island that reshapes through ``n * 4`` rows and broadcasts a parameter to ``(n, 4, 8, 8)``
    (``n`` the dynamic batch).  Before: the numpy reference failed on both ('Mul' object has no attribute
    'name'; the one-op function of ``broadcast_to`` had no value for ``n``), an internal error when
    ``compile`` wrote the host reference."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 10)
            self.gain = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            n = y.shape[0]
            z = torch.softmax(y.reshape(n * 4, 64), -1).reshape(n, 4, 8, 8)
            return self.fc((z * self.gain.expand(n, 4, 8, 8)).mean((2, 3)))

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    q, floats = _quantize(Net(), x, input_shape=(None, 1, 8, 8))
    assert floats == ["ops kept in float (no integer kind takes them): relax.broadcast_to, relax.nn.softmax"]
    assert_bit_exact(q, x)


def test_torch_avg_pool_with_divisor_override_is_refused():
    """TVM 0.27 bug: ``from_exported_program`` drops ``divisor_override`` and imports a plain average pool (the
    model then computed sum/4 where torch computes sum/3, silently).  The workaround in
    ``frontend._check_exported`` refuses it; if TVM starts honouring it, the second half of this test fails
    and the workaround can go."""
    import torch
    import torch.nn.functional as F
    from tvm.relax.frontend.torch import from_exported_program

    class Pool(torch.nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x, 2, divisor_override=3)

    with pytest.raises(ModelError, match=r"^torch: avg_pool2d with divisor_override=3 .* TVM 0\.27 drops"):
        gwq_tvm.load_model(Pool(), input_shape=(None, 1, 4, 4))
    x = torch.rand(1, 1, 4, 4)
    mod = from_exported_program(torch.export.export(Pool(), (x,)), keep_params_as_input=False)
    ex = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    got = ex["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()
    np.testing.assert_allclose(got, F.avg_pool2d(x, 2).numpy(), rtol=1e-6)  # the bug: divided by 4, not 3


def _ops(func):
    return [b.value.op.name for blk in func.body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)]


def test_fold_data_independent_before_and_after():
    """Before: ``x * astype(arange(0, 8))`` keeps its arange chain (FoldConstant folds calls on constant
    tensors only, and arange takes prim values).  After: one multiply by the constant [0, 1, ..., 7].
    A chain that reads the input is left alone."""
    from tvm.relax import op as R

    from gwq_tvm.frontend.fold_independent import fold_data_independent
    from gwq_tvm.runtime import host_target

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 8], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(R.arange(0, 8, 1, dtype="int64"))
            scale = bb.emit(R.astype(a, "float32"))
            y = bb.emit(R.multiply(x, scale))
            z = bb.emit_output(R.add(y, R.astype(R.arange(0, 8, 1, dtype="int64"), "float32")))
        bb.emit_func_output(z)
    before = relax.transform.Normalize()(bb.get())
    assert _ops(relax.transform.FoldConstant()(before)["main"]) == [
        "relax.arange", "relax.astype", "relax.multiply", "relax.arange", "relax.astype", "relax.add"]
    after = tvm.transform.Sequential([relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()])(
        fold_data_independent(before, host_target()))
    assert _ops(after["main"]) == ["relax.multiply", "relax.add"]
    from gwq_tvm.ir import const_value

    consts = [const_value(a) for b in after["main"].body.blocks[0].bindings for a in b.value.args]
    consts = [c for c in consts if c is not None]
    assert len(consts) == 2
    for c in consts:
        np.testing.assert_array_equal(c, np.arange(8, dtype=np.float32))


def test_torch_constant_built_in_forward_is_a_per_channel_constant():
    """A torch ``forward`` scaling channels by ``torch.linspace(0.5, 1.5, 8)``: before, the linspace chain stayed
    in the program, the product was a float op and the program not integer-only; now it folds at import and the
    scale is an ``affine`` layer."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 10)

        def forward(self, x):
            y = torch.relu(self.conv(x)) * torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1)
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    fm = gwq_tvm.load_model(Net(), input_shape=(None, 1, 8, 8))
    assert "relax.arange" not in _ops(fm.mod["main"])
    q, floats = _quantize(Net(), x, input_shape=(None, 1, 8, 8))
    assert not floats and q.integer_only.ok
    assert "affine" in [n.kind for n in q.graph.nodes.values()]
    assert_bit_exact(q, x)


def test_torch_sort_is_refused_at_import_by_its_op():
    """Before: ``torch.sort`` imported and failed inside calibration's compile ('CodeGenVM cannot emit this
    Relax operator directly ... R.argsort'), an internal error."""
    import torch

    class Sorted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _small_torch_net()

        def forward(self, x):
            return torch.sort(self.net(x), dim=1)[0]

    with pytest.raises(ModelError, match=r"relax\.(arg)?sort needs a sort"):
        gwq_tvm.load_model(Sorted(), input_shape=(None, 1, 8, 8))


# --- pad and pool kinds -------------------------------------------------------------------------------------------
def test_onnx_pad_imports_as_relax_pad():
    """The TVM 0.27 workaround (gwq_tvm/frontend/onnx_pad.py): without it Pad is an opaque call_tir."""
    fm = gwq_tvm.load_model(N.pad_pool("reflect"))
    ops = [b.value.op.name for b in fm.mod["main"].body.blocks[0].bindings if isinstance(b.value.op, tvm.ir.Op)]
    assert "relax.nn.pad" in ops and "relax.call_tir" not in ops


@pytest.mark.parametrize("mode,value,bits", [("constant", 0.0, 8), ("constant", 0.75, 8), ("constant", -1.5, 4),
                                             ("reflect", 0.0, 8), ("reflect", 0.0, 4), ("edge", 0.0, 8)])
def test_pad_before_a_conv_is_integer_and_bit_exact(mode, value, bits):
    model = N.pad_pool(mode, value, "max", dict(kernel_shape=[2, 2], strides=[2, 2]))
    x = _inputs(model, batch=16)
    q, floats = _quantize(model, x, QuantConfig(weight_bits=bits, act_bits=bits))
    assert not floats and q.integer_only.ok, q.integer_only
    assert "pad" in {n.kind for n in q.graph.nodes.values()}
    got = assert_bit_exact(q, x)
    if bits == 8:
        assert _sqnr(_float_logits(model, x), got) > 20


def test_standalone_pad_sweep_is_bit_exact():
    from onnx import helper

    rng = np.random.default_rng(3)
    for mode in ("constant", "reflect", "edge"):
        for hw, pads in (((6, 7), [0, 0, 1, 2, 0, 0, 2, 1]), ((5, 5), [0, 0, 0, 3, 0, 0, 2, 0]), ((9, 4), [0, 0, 2, 1, 0, 0, 2, 1])):
            inits = {"w0": N._w(rng, 3, 1, 3, 3), "b0": N._b(rng, 3), "pads": np.array(pads, np.int64),
                     "pv": np.array(0.3, np.float32)}
            nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
                     helper.make_node("Relu", ["c0"], ["r0"]),
                     helper.make_node("Pad", ["r0", "pads"] + (["pv"] if mode == "constant" else []), ["y"], mode=mode)]
            out = [None, 3, hw[0] + pads[2] + pads[6], hw[1] + pads[3] + pads[7]]
            model = N.make(nodes, inits, ["N", 1, *hw], {"y": out})
            x = _inputs(model, batch=4, shape=[None, 1, *hw])
            q, floats = _quantize(model, x)
            assert not floats and q.integer_only.ok
            assert_bit_exact(q, x)


def test_window_counts_follow_the_ceil_and_padding_rules():
    assert window_counts(5, 3, 2, 1, 1, False, True) == [3, 3, 3]
    assert window_counts(5, 3, 2, 1, 1, False, False) == [2, 3, 2]
    assert window_counts(6, 3, 2, 0, 0, True, True) == [3, 3, 2]  # the last window runs past the input
    assert window_counts(8, 2, 2, 1, 1, True, True) == [2, 2, 2, 2, 2]  # a window starting in the padding is dropped


POOLS = [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
         dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
         dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
         dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
         dict(kernel_shape=[3, 2], strides=[3, 2], pads=[1, 0, 0, 1], ceil_mode=1, count_include_pad=1),
         dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0])]


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("kw", POOLS, ids=[str(i) for i in range(len(POOLS))])
def test_pools_with_every_padding_and_ceil_mode_are_integer_and_bit_exact(pool, kw):
    if pool == "max":
        kw = {k: v for k, v in kw.items() if k != "count_include_pad"}
    model = N.pad_pool("constant", 0.0, pool, kw)
    x = _inputs(model, batch=16)
    q, floats = _quantize(model, x)
    assert not floats and q.integer_only.ok, q.integer_only
    got = assert_bit_exact(q, x)
    assert _sqnr(_float_logits(model, x), got) > 20  # the integer divisors are the float model's


@pytest.mark.parametrize("hw", [(7, 7), (8, 9)])
def test_avg_pool_sweep_of_shapes_and_gwq(hw):
    from onnx import helper

    rng = np.random.default_rng(hw[0])
    for kw in POOLS:
        inits = {"w0": N._w(rng, 3, 1, 3, 3), "b0": N._b(rng, 3)}
        nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c0"], ["r0"]), helper.make_node("AveragePool", ["r0"], ["y"], **kw)]
        model = N.make(nodes, inits, ["N", 1, *hw], {"y": [None, 3, None, None]})
        x = _inputs(model, batch=4, shape=[None, 1, *hw])
        cfg = QuantConfig(mode="gwq", groups=1, loss_aware=False, weight_bits=4, act_bits=4) if hw[0] == 8 else QuantConfig()
        q, floats = _quantize(model, x, cfg)
        assert not floats and q.integer_only.ok
        assert_bit_exact(q, x)


# --- batch norms no conv absorbs -------------------------------------------------------------------------------
def test_keras_style_batch_norms_after_relu_are_affine_and_gwq_compiles():
    model = N.keras_style()
    x = _inputs(model, batch=16)
    for cfg in (QuantConfig(), QuantConfig(mode="gwq", groups=2)):
        q, floats = _quantize(model, x, cfg)
        kinds = [n.kind for n in q.graph.nodes.values()]
        # bn0 feeds the unpadded conv2d_1 and folds into it (forward fold); bn1 feeds the NHWC flatten and stays
        assert kinds.count("affine") == 1 and kinds.count("conv2d") == 2
        assert [c.kind for n in q.graph.nodes.values() if n.kind == "affine" for c in q.graph.consumers(n.name)] == ["permute"]
        assert not floats and q.integer_only.ok  # the NHWC Transposes are permute nodes (kernels branch)
        assert kinds.count("permute") == 2
        got = assert_bit_exact(q, x)
        assert _sqnr(_float_logits(model, x), got) > 15


def test_densenet_pre_activation_batch_norms_are_integer():
    model = N.densenet_preact()
    x = _inputs(model, batch=16)
    q, floats = _quantize(model, x)
    assert not floats and q.integer_only.ok
    assert [n.kind for n in q.graph.nodes.values()].count("affine") == 2
    assert check_integer_only(q.mod).ok
    assert_bit_exact(q, x)


# --- the onnx wheel's zoo graphs -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,floats", [("squeezenet", "Softmax (n65)")])
def test_zoo_light_graphs_compile_bit_exact(name, floats):
    model = N.zoo_light(name)
    x = _inputs(model, batch=2, shape=[None, 3, 224, 224])
    q, warned = _quantize(model, x, QuantConfig(calibration="max"))
    assert warned == [f"ops kept in float (no integer kind takes them): {floats}"]
    assert_bit_exact(q, x[:1])
