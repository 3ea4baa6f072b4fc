"""The model zoo builds offline: torch definitions export to ONNX that ONNX Runtime runs like torch does."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from gwq_tvm.models import zoo  # noqa: E402


def test_the_zoo_has_the_architectures_the_benchmark_promises():
    names = set(zoo.zoo())
    assert len(names) >= 16
    assert {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0", "efficientnet_b0",
            "shufflenet_v2", "squeezenet1_1", "densenet121", "googlenet_lrn", "vgg16", "alexnet", "resnet50_softmax",
            "resnext50_32x4d", "keras_cnn", "paddle_lcnet", "tiny_yolo", "unet_small"} <= names
    assert len(zoo.light_zoo_names()) >= 8


def test_settled_batch_norm_normalises_what_it_sees():
    """After settling, a BN's running statistics are the statistics of its input on the settling data."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    zoo.settle_batch_norm(m, (1, 3, 16, 16), seed=3)
    bn = m[1]
    assert not torch.allclose(bn.running_var, torch.ones(8)) and not torch.allclose(bn.weight, torch.ones(8))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((8, 3, 16, 16), generator=gen)  # the first settling batch: the same seed and shape
    y = m[0](x)
    assert torch.allclose(bn.running_mean, y.mean((0, 2, 3)), rtol=0.3, atol=0.05)


@pytest.mark.parametrize("name", ["keras_cnn", "squeezenet1_1", "paddle_lcnet", "tiny_yolo"])
def test_zoo_entry_exports_and_matches_torch_on_onnxruntime(name, tmp_path):
    entry = zoo.zoo()[name]
    path = zoo.export_onnx(name, tmp_path / f"{name}.onnx", seed=1)
    torch.manual_seed(1)
    m = entry.build()
    zoo.settle_batch_norm(m, entry.input_shape, 1)
    x = np.random.default_rng(0).standard_normal((2, *entry.input_shape[1:]), dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})
    with torch.no_grad():
        want = m(torch.from_numpy(x))
    want = [w.numpy() for w in (want if isinstance(want, tuple) else (want,))]
    if name == "paddle_lcnet":  # the export's HardSigmoid is Paddle's (slope 0.2), torch's is 1/6: only shapes agree
        assert [g.shape for g in got] == [w.shape for w in want]
        ops = {n.op_type: n for n in onnx.load(str(path)).graph.node}
        assert {a.name: a.f for a in ops["HardSigmoid"].attribute} == pytest.approx({"alpha": 0.2, "beta": 0.5})
        assert "Shape" in ops  # the Shape-based flatten a Paddle export carries
        return
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3 * float(np.abs(w).max()))


def test_googlenet_exports_one_onnx_lrn_per_published_lrn(tmp_path):
    model = onnx.load(str(zoo.export_onnx("googlenet_lrn", tmp_path / "g.onnx")))
    assert [n.op_type for n in model.graph.node].count("LRN") == 2


def test_light_zoo_weights_are_seeded_not_placeholders():
    """The wheel's graphs fill every weight with ConstantOfShape; ours carry seeded initializers instead."""
    from onnx import numpy_helper

    name = "squeezenet"
    orig = onnx.load(str(zoo.light_zoo_dir() / f"light_{name}.onnx"))
    placeholders = [n.output[0] for n in orig.graph.node if n.op_type == "ConstantOfShape"]
    a, b = zoo.light_zoo_model(name, seed=0), zoo.light_zoo_model(name, seed=0)
    assert placeholders and not any(n.op_type == "ConstantOfShape" for n in a.graph.node)
    wa = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    wb = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    assert set(placeholders) <= set(wa)
    for p in placeholders:
        assert np.array_equal(wa[p], wb[p]) and np.isfinite(wa[p]).all() and wa[p].std() > 0
    assert not np.array_equal(wa[placeholders[0]], numpy_helper.to_array(zoo.light_zoo_model(name, 1).graph.initializer[-len(placeholders)]))
    sess = ort.InferenceSession(a.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32)
    out = sess.run(None, {inp.name: x})
    assert np.isfinite(out[0]).all() and out[0].std() > 0


def test_shufflenet_export_imports_with_its_chained_shape_reshapes(tmp_path):
    """ShuffleNetV2's export computes each channel shuffle's Reshape target from ``Shape`` of the previous
    Reshape's output, which shape inference cannot see until that target is folded.  Shape folding repeats its
    rounds until nothing folds: before, import stopped at the first such ``Gather`` (``shape_of expects a
    tensor input``).  Every shuffle becomes an integer permute, with a dynamic batch and with a fixed one."""
    import gwq_tvm

    path = zoo.export_onnx("shufflenet_v2", tmp_path / "shufflenet_v2.onnx", seed=1)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Shape") > 16 and ops.count("Transpose") == 16
    for shape in (None, (2, 3, 64, 64)):
        graph = gwq_tvm.extract_graph(gwq_tvm.load_model(path, input_shape=shape).mod)
        kinds = [n.kind for n in graph.nodes.values()]
        assert kinds.count("permute") == 16 and "float" not in kinds
