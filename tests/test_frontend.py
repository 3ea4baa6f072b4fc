"""Frontend workarounds: what TVM 0.27's importers produce that gwq-tvm has to reshape."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import gwq_tvm
from gwq_tvm import QuantConfig


def _conv_clip_model(opset: int, lo=0.0, hi=6.0, dynamic_bound=False):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w")
    inits = [w]
    if opset >= 11:
        inits += [numpy_helper.from_array(np.array(lo, np.float32), "lo")]
        hi_name = "hi"
        if dynamic_bound:  # an upper bound computed from the data: not a constant
            extra = [helper.make_node("ReduceMax", ["c"], ["hi"], keepdims=0)]
        else:
            extra = []
            inits += [numpy_helper.from_array(np.array(hi, np.float32), "hi")]
        clip = helper.make_node("Clip", ["c", "lo", hi_name], ["y"])
    else:
        extra, clip = [], helper.make_node("Clip", ["c"], ["y"], min=lo, max=hi)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])] + extra + [clip]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [10, 13, 17])
def test_onnx_clip_imports_as_relax_clip(opset):
    """TVM 0.27 imports ONNX Clip as opaque call_tir kernels; gwq-tvm's converter keeps it a relax.clip,
    so ReLU6 fuses into the conv and the program is integer-only (this fails if the workaround breaks)."""
    fm = gwq_tvm.load_model(_conv_clip_model(opset))
    ops = [b.value.op.name for b in fm.mod["main"].body.blocks[0].bindings if hasattr(b.value.op, "name")]
    assert "relax.call_tir" not in ops and "relax.clip" in ops
    graph = gwq_tvm.extract_graph(fm.mod)
    assert graph.nodes["conv2d_0"].act == (0.0, 6.0)
    x = np.random.default_rng(1).normal(size=(16, 1, 8, 8)).astype(np.float32)
    q = gwq_tvm.quantize(fm, x, QuantConfig())
    assert q.integer_only.ok and not q.float_ops


def test_onnx_clip_with_data_dependent_bound_still_imports():
    fm = gwq_tvm.load_model(_conv_clip_model(13, dynamic_bound=True))
    assert fm.mod["main"] is not None  # TVM's own converter handles it (kept in float by gwq-tvm)


def test_old_ir_initializers_listed_as_inputs_stay_weights_when_folded(tmp_path):
    """Graphs before IR version 4 list every initializer in ``graph.input``.  When import folds a computation on
    one (here the opset upgrade makes ``Unsqueeze``'s axes an input, and shape folding evaluates the Unsqueeze of
    the weight), the dropped initializer's ``graph.input`` entry goes with it.  Left behind, it became a model
    input with no value: the onnx wheel's DenseNet-121 and Inception-v2 were refused as 5- and 27-input models."""
    w = np.arange(1, 5, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["w"], ["u"], axes=[1, 2]), helper.make_node("Mul", ["x", "u"], ["y"])],
        "old_ir",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    path = tmp_path / "old_ir.onnx"
    path.write_bytes(model.SerializeToString())
    fm = gwq_tvm.load_model(path)
    assert fm.input_shape == (1, 4, 2, 2) and len(fm.mod["main"].params) == 1
    x = np.random.default_rng(0).standard_normal((1, 4, 2, 2)).astype(np.float32)
    from tvm import relax
    import tvm
    from gwq_tvm.schedules.float import compile_float

    got = relax.VirtualMachine(compile_float(fm.mod), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, x * w.reshape(4, 1, 1), rtol=1e-6)


@pytest.mark.parametrize("width_scale", [False, True])
def test_caffe2_style_bn_with_unsqueezed_constants(tmp_path, width_scale):
    """``Mul``/``Add`` by (C, 1, 1) constants after a conv (the ONNX zoo's DenseNet-121 / Inception-v2 batch
    norm) are per-channel: they fold into the conv and the program is integer-only.  A (W,) constant scales
    the width axis even when W == C: it must not be taken for a per-channel one (it stays a float op,
    and the program still computes the float model's function)."""
    import warnings

    import onnx

    from gwq_tvm.fidelity import sqnr_db

    from conftest import compile_and_run
    from onnx_nets import unsqueezed_bn

    path = tmp_path / "m.onnx"
    onnx.save(unsqueezed_bn(width_scale=width_scale), str(path))
    x = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    fm = gwq_tvm.load_model(str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = gwq_tvm.quantize(str(path), x, QuantConfig())
    assert q.integer_only.ok is not width_scale
    if width_scale:
        assert any("relax.multiply" in str(c.message) or "Mul" in str(c.message) for c in caught)
    else:
        assert not [n for n in gwq_tvm.extract_graph(fm.mod).float_nodes()]
    ref = compile_and_run(fm.mod, x)
    got = compile_and_run(q.mod, x)
    assert float(np.median(sqnr_db(ref, got))) > 25
