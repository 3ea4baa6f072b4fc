"""Small fp32 ONNX classifiers for 1x28x28 inputs, built with onnx.helper (seeded random weights)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _w(rng, *shape):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _model(nodes, inits, name):
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def convnet(seed=0):
    """Conv + BatchNormalization + Relu, MaxPool, depthwise Conv + Clip(0, 6), AveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    inits = {
        "w0": _w(rng, 8, 1, 3, 3), "b0": rng.standard_normal(8).astype(np.float32) * 0.1,
        "bn_s": (rng.random(8) + 0.5).astype(np.float32), "bn_b": (rng.random(8) - 0.5).astype(np.float32),
        "bn_m": (rng.random(8) - 0.5).astype(np.float32), "bn_v": (rng.random(8) + 0.5).astype(np.float32),
        "w1": _w(rng, 8, 1, 3, 3), "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
        "wf": _w(rng, 10, 8 * 7 * 7), "bf": rng.standard_normal(10).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn0"]),
        helper.make_node("Relu", ["bn0"], ["r0"]),
        helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("AveragePool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    return _model(nodes, inits, "convnet")


def resnet(seed=1):
    """Conv + Relu, a residual block (Add + Relu), a strided Conv, GlobalAveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    inits = {
        "w0": _w(rng, 8, 1, 3, 3), "b0": np.zeros(8, np.float32),
        "w1": _w(rng, 8, 8, 3, 3), "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "w2": _w(rng, 8, 8, 3, 3) * 0.5, "b2": rng.standard_normal(8).astype(np.float32) * 0.1,
        "w3": _w(rng, 16, 8, 3, 3), "b3": rng.standard_normal(16).astype(np.float32) * 0.1,
        "wf": _w(rng, 10, 16), "bf": rng.standard_normal(10).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r0"], ["a"]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    return _model(nodes, inits, "resnet")


def mlp_concat(seed=2):
    """Flatten, two MatMul + Add branches (one Relu, one signed) joined by Concat, Gemm."""
    rng = np.random.default_rng(seed)
    inits = {
        "wa": _w(rng, 32, 784).T.copy(), "ba": rng.standard_normal(32).astype(np.float32) * 0.1,
        "wb": _w(rng, 16, 784).T.copy(), "bb": rng.standard_normal(16).astype(np.float32) * 0.1,
        "wf": _w(rng, 10, 48), "bf": rng.standard_normal(10).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "wa"], ["ma"]),
        helper.make_node("Add", ["ma", "ba"], ["aa"]),
        helper.make_node("Relu", ["aa"], ["ra"]),
        helper.make_node("MatMul", ["f", "wb"], ["mb"]),
        helper.make_node("Add", ["mb", "bb"], ["ab"]),
        helper.make_node("Concat", ["ra", "ab"], ["cat"], axis=1),
        helper.make_node("Gemm", ["cat", "wf", "bf"], ["y"], transB=1),
    ]
    return _model(nodes, inits, "mlp_concat")


NETS = {"convnet": convnet, "resnet": resnet, "mlp_concat": mlp_concat}


def unsqueezed_bn(seed=3, width_scale=False):
    """Conv -> Mul(s) -> Add(b) -> Relu -> Conv -> ... with ``s``, ``b`` of shape (C, 1, 1): the Caffe2-era
    batch-norm form of the ONNX zoo's DenseNet-121 / Inception-v2 (``Unsqueeze(axes=[1, 2])`` of a (C,) vector).

    ``width_scale``: also a Mul by a (W,) constant with W == C (8 channels on 8 columns), which scales
    the width axis, not the channels.
    """
    rng = np.random.default_rng(seed)
    inits = {
        "w0": _w(rng, 8, 1, 3, 3), "s": (rng.random((8, 1, 1)) + 0.5).astype(np.float32),
        "b": (rng.random((8, 1, 1)) - 0.5).astype(np.float32), "w1": _w(rng, 8, 8, 3, 3),
        "ws": (rng.random(8) + 0.5).astype(np.float32),
        "wf": _w(rng, 10, 8 * 8 * 8), "bf": rng.standard_normal(10).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c0", "s"], ["m0"]),
        helper.make_node("Add", ["m0", "b"], ["a0"]),
        helper.make_node("Relu", ["a0"], ["r0"]),
        helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[7, 7], strides=[3, 3]),  # 28 -> 8
        helper.make_node("Conv", ["p0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
    ]
    last = "c1"
    if width_scale:
        nodes.append(helper.make_node("Mul", ["c1", "ws"], ["c1w"]))
        last = "c1w"
    nodes += [helper.make_node("Relu", [last], ["r1"]),
              helper.make_node("Flatten", ["r1"], ["f"], axis=1),
              helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    if not width_scale:
        del inits["ws"]
    return _model(nodes, inits, "unsqueezed_bn")
