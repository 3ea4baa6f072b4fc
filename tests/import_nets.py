"""Small ONNX graphs in the shapes real exporters write (Paddle, Keras, Caffe2 zoo, multi-output), seeded weights.

Each builder returns an ``onnx.ModelProto`` for a small image input; :func:`zoo_light` loads one of the onnx
wheel's ``backend/test/data/light`` zoo graphs with its placeholder weights replaced by seeded ones.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _w(rng, *shape):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _b(rng, n):
    return (rng.standard_normal(n) * 0.1).astype(np.float32)


def make(nodes, inits, in_shape, outs, *, opset=13, name="net"):
    """A checked model with input ``x`` of ``in_shape`` and outputs ``outs`` (name -> shape)."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in outs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    return model


def bn_inits(rng, prefix, c):
    return {f"{prefix}_s": (rng.random(c) + 0.5).astype(np.float32), f"{prefix}_b": (rng.random(c) - 0.5).astype(np.float32),
            f"{prefix}_m": (rng.random(c) - 0.5).astype(np.float32), f"{prefix}_v": (rng.random(c) + 0.5).astype(np.float32)}


def bn(prefix, x, y):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in "sbmv"], [y], name=prefix)


def paddle_style(seed=0, dynamic_hw=True):
    """Paddle-style export: dynamic N/H/W, conv + HardSigmoid squeeze-excitation, Shape->Slice->Concat->Reshape flatten."""
    rng = np.random.default_rng(seed)
    inits = {"w0": _w(rng, 8, 3, 3, 3), "b0": _b(rng, 8), "wse": _w(rng, 8, 8, 1, 1), "bse": _b(rng, 8),
             "wf": _w(rng, 8, 10), "bf": _b(rng, 10),
             "st": np.array([0], np.int64), "en": np.array([1], np.int64), "minus1": np.array([-1], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("GlobalAveragePool", ["r0"], ["g"], name="gap"),
        helper.make_node("Conv", ["g", "wse", "bse"], ["se"], name="se_conv"),
        helper.make_node("HardSigmoid", ["se"], ["hs"], alpha=0.2, beta=0.5, name="se_gate"),
        helper.make_node("Mul", ["g", "hs"], ["gm"], name="se_mul"),
        helper.make_node("Shape", ["gm"], ["shp"], name="shape"),
        helper.make_node("Slice", ["shp", "st", "en"], ["n"], name="slice"),
        helper.make_node("Concat", ["n", "minus1"], ["newshape"], axis=0, name="concat_shape"),
        helper.make_node("Reshape", ["gm", "newshape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "wf"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "bf"], ["y"], name="fc_bias"),
    ]
    hw = ["H", "W"] if dynamic_hw else [16, 16]
    return make(nodes, inits, ["N", 3] + hw, {"y": ["N", 10]}, name="paddle_style")


def shape_flatten(seed=0, product=False):
    """Conv -> Relu -> Shape -> Gather(0) -> Unsqueeze -> Concat([n, -1]) -> Reshape -> Gemm on a dynamic batch.

    With ``product`` the target is ``[-1, C*H*W]`` computed from the gathered dims with ``Mul``
    (torch's ``x.view(-1, x.size(1) * x.size(2) * x.size(3))``), which TVM's importer cannot take on shapes.
    """
    rng = np.random.default_rng(seed)
    inits = {"w0": _w(rng, 4, 1, 3, 3), "b0": _b(rng, 4), "wf": _w(rng, 10, 4 * 14 * 14), "bf": _b(rng, 10),
             "zero": np.array(0, np.int64), "ax": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
             "one": np.array(1, np.int64), "two": np.array(2, np.int64), "three": np.array(3, np.int64)}
    if product:
        shape_nodes = [
            helper.make_node("Shape", ["r0"], ["shp"], name="shape"),
            *[helper.make_node("Gather", ["shp", k], [f"d{k}"], axis=0, name=f"gather_{k}") for k in ("one", "two", "three")],
            helper.make_node("Mul", ["done", "dtwo"], ["p12"], name="mul_12"),
            helper.make_node("Mul", ["p12", "dthree"], ["p123"], name="mul_123"),
            helper.make_node("Unsqueeze", ["p123", "ax"], ["n"], name="unsqueeze_n"),
            helper.make_node("Concat", ["minus1", "n"], ["newshape"], axis=0, name="concat_shape"),
        ]
    else:
        shape_nodes = [
            helper.make_node("Shape", ["r0"], ["shp"], name="shape"),
            helper.make_node("Gather", ["shp", "zero"], ["n0"], axis=0, name="gather_n"),
            helper.make_node("Unsqueeze", ["n0", "ax"], ["n"], name="unsqueeze_n"),
            helper.make_node("Concat", ["n", "minus1"], ["newshape"], axis=0, name="concat_shape"),
        ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        *shape_nodes,
        helper.make_node("Reshape", ["r0", "newshape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    return make(nodes, inits, ["N", 1, 28, 28], {"y": ["N", 10]}, name="shape_flatten")


def dropout_identity(seed=0, opset=13):
    """Conv -> Relu -> Dropout (mask output too) -> Identity -> Flatten -> Gemm: what zoo exports carry."""
    rng = np.random.default_rng(seed)
    inits = {"w0": _w(rng, 4, 1, 3, 3), "b0": _b(rng, 4), "wf": _w(rng, 10, 4 * 14 * 14), "bf": _b(rng, 10)}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Dropout", ["r0"], ["d0", "mask"], name="drop0", **({"ratio": 0.5} if opset < 12 else {})),
        helper.make_node("Identity", ["d0"], ["i0"], name="ident0"),
        helper.make_node("Flatten", ["i0"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    return make(nodes, inits, ["N", 1, 28, 28], {"y": ["N", 10]}, opset=opset, name="dropout_identity")


def two_outputs(seed=0):
    """A shared trunk with two heads: class logits (Gemm) and an auxiliary feature map output."""
    rng = np.random.default_rng(seed)
    inits = {"w0": _w(rng, 4, 1, 3, 3), "b0": _b(rng, 4), "w1": _w(rng, 6, 4, 3, 3), "b1": _b(rng, 6),
             "wf": _w(rng, 10, 4 * 14 * 14), "bf": _b(rng, 10)}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Flatten", ["r0"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1, name="fc"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["aux"], pads=[1, 1, 1, 1], name="aux_conv"),
    ]
    return make(nodes, inits, ["N", 1, 28, 28], {"logits": ["N", 10], "aux": ["N", 6, 14, 14]}, name="two_outputs")


def float_island(op: str, seed=0):
    """Conv -> Relu -> ``op`` (an op no integer kind takes) -> Conv -> GAP -> Flatten -> Gemm on 1x16x16 inputs."""
    rng = np.random.default_rng(seed)
    c = 4
    inits = {"w0": _w(rng, c, 1, 3, 3), "b0": _b(rng, c), "w1": _w(rng, 6, c, 3, 3), "b1": _b(rng, 6),
             "wf": _w(rng, 10, 6), "bf": _b(rng, 10)}
    mid = {
        "LRN": [helper.make_node("LRN", ["r0"], ["m"], size=3, alpha=1e-2, beta=0.75, bias=1.0, name="lrn0")],
        "Softmax": [helper.make_node("Softmax", ["r0"], ["m"], axis=1, name="softmax0")],
        "LayerNormalization": [helper.make_node("LayerNormalization", ["r0", "ln_s", "ln_b"], ["m"], axis=-1, name="ln0")],
        "Pow": [helper.make_node("Pow", ["r0", "two"], ["m"], name="pow0")],
        "Sqrt": [helper.make_node("Sqrt", ["r0"], ["m"], name="sqrt0")],
        "Exp": [helper.make_node("Exp", ["r0"], ["m"], name="exp0")],
        "ReduceMean": [helper.make_node("ReduceMean", ["r0"], ["rm"], axes=[1], keepdims=1, name="mean0"),
                       helper.make_node("Sub", ["r0", "rm"], ["m"], name="center0")],
        "Erf": [helper.make_node("Erf", ["r0"], ["m"], name="erf0")],
    }[op]
    if op == "LayerNormalization":
        inits["ln_s"] = (rng.random(16) + 0.5).astype(np.float32)
        inits["ln_b"] = _b(rng, 16)
    if op == "Pow":
        inits["two"] = np.array(2.0, np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        *mid,
        helper.make_node("Conv", ["m", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    opset = 17 if op == "LayerNormalization" else 13
    return make(nodes, inits, ["N", 1, 16, 16], {"y": ["N", 10]}, opset=opset, name=f"island_{op}")


def softmax_tail(seed=0):
    """SqueezeNet 1.0's head as the ONNX zoo has it (opset 11): Conv -> Relu -> GlobalAveragePool -> Softmax(axis=1)
    on the 4-D (N, 10, 1, 1) map, which TVM imports as reshape -> softmax -> reshape."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
        helper.make_node("Softmax", ["g"], ["y"], axis=1, name="prob"),
    ]
    inits = {"w0": _w(rng, 8, 1, 3, 3), "b0": _b(rng, 8), "w1": _w(rng, 10, 8, 1, 1), "b1": _b(rng, 10)}
    return make(nodes, inits, ["N", 1, 8, 8], {"y": ["N", 10, 1, 1]}, opset=11, name="softmax_tail")


def argmax_head(seed=0):
    """A segmentation head as exporters end it: Conv -> Relu -> Conv to 5 class maps -> ArgMax(axis=1, keepdims=1),
    an int64 label map (N, 1, H, W) as the model's output."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="classifier"),
        helper.make_node("ArgMax", ["c1"], ["y"], axis=1, keepdims=1, name="labels"),
    ]
    inits = {"w0": _w(rng, 8, 1, 3, 3), "b0": _b(rng, 8), "w1": _w(rng, 5, 8, 1, 1), "b1": _b(rng, 5)}
    model = make(nodes, inits, ["N", 1, 8, 8], {"y": ["N", 1, 8, 8]}, name="argmax_head")
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    return model


def mask_gather(seed=0):
    """Index arithmetic on data: a channel mean thresholded to a 0/1 int64 index (Greater -> Cast), shifted by an
    int64 Add, gathers rows of an embedding table that a Gemm reads (as ``nn.Embedding`` on computed ids)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("GlobalAveragePool", ["c0"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Greater", ["f", "zero"], ["m"], name="positive"),
        helper.make_node("Cast", ["m"], ["i"], to=onnx.TensorProto.INT64, name="ids"),
        helper.make_node("Add", ["i", "one"], ["j"], name="shift"),
        helper.make_node("Gather", ["table", "j"], ["e"], axis=0, name="embed"),
        helper.make_node("ReduceSum", ["e", "axis1"], ["s"], keepdims=0, name="pool_ids"),
        helper.make_node("Gemm", ["s", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = {"w0": _w(rng, 4, 1, 3, 3), "b0": _b(rng, 4), "zero": np.zeros(1, np.float32), "one": np.ones(1, np.int64),
             "table": _w(rng, 3, 6), "axis1": np.array([1], np.int64), "wf": _w(rng, 10, 6), "bf": _b(rng, 10)}
    return make(nodes, inits, ["N", 1, 8, 8], {"y": ["N", 10]}, name="mask_gather")


def max_min_clamps(seed=0):
    """PyTorch's dynamo exporter's ``clamp``: ``Max(x, 0.0)`` after the first conv and ``Min(x, [6.0])`` after the
    second (a scalar and a one-element bound), then GlobalAveragePool -> Flatten (opset 18)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Max", ["c0", "zero"], ["r0"], name="clamp_min"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Min", ["six", "c1"], ["r1"], name="clamp_max"),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["y"], name="flat"),
    ]
    inits = {"w0": _w(rng, 8, 1, 3, 3), "b0": _b(rng, 8), "w1": _w(rng, 6, 8, 3, 3), "b1": _b(rng, 6),
             "zero": np.array(0.0, np.float32), "six": np.array([6.0], np.float32)}
    return make(nodes, inits, ["N", 1, 8, 8], {"y": ["N", 6]}, opset=18, name="max_min_clamps")


def resize_to_shape(seed=0):
    """PyTorch's dynamo export of ``F.interpolate(x, size=(12, 12), mode="bilinear")`` on a dynamic batch:
    ``Resize(x, sizes=Concat(Shape(x, end=2), [12, 12]))`` (opset 18) between two convs."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Shape", ["r0"], ["nc"], start=0, end=2, name="shape"),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0, name="sizes"),
        helper.make_node("Resize", ["r0", "", "", "sizes"], ["up"], mode="linear",
                         coordinate_transformation_mode="half_pixel", name="upsample"),
        helper.make_node("Conv", ["up", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("GlobalAveragePool", ["c1"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["y"], name="flat"),
    ]
    inits = {"w0": _w(rng, 6, 1, 3, 3), "b0": _b(rng, 6), "w1": _w(rng, 5, 6, 3, 3), "b1": _b(rng, 5),
             "hw": np.array([12, 12], np.int64)}
    return make(nodes, inits, ["N", 1, 8, 8], {"y": ["N", 5]}, opset=18, name="resize_to_shape")


def global_max_pool(op="GlobalMaxPool", seed=0):
    """Conv -> Relu -> global max over H, W (``GlobalMaxPool``, or ``ReduceMax`` axes [2, 3] keepdims=1) -> Flatten
    -> Gemm."""
    rng = np.random.default_rng(seed)
    pool = (helper.make_node("GlobalMaxPool", ["r0"], ["g"], name="gmp") if op == "GlobalMaxPool" else
            helper.make_node("ReduceMax", ["r0"], ["g"], axes=[2, 3], keepdims=1, name="gmp"))
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        pool,
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = {"w0": _w(rng, 8, 1, 3, 3), "b0": _b(rng, 8), "wf": _w(rng, 10, 8), "bf": _b(rng, 10)}
    return make(nodes, inits, ["N", 1, 8, 8], {"y": ["N", 10]}, opset=13, name="global_max_pool")


def keras_style(seed=0):
    """Keras export: NHWC input transposed to NCHW, Conv(valid) -> Relu -> BatchNorm twice, NHWC flatten, Dense."""
    rng = np.random.default_rng(seed)
    inits = {"w0": _w(rng, 6, 1, 3, 3), "b0": _b(rng, 6), "w1": _w(rng, 8, 6, 3, 3), "b1": _b(rng, 8),
             **bn_inits(rng, "bn0", 6), **bn_inits(rng, "bn1", 8),
             "wf": _w(rng, 8 * 12 * 12, 10), "bf": _b(rng, 10), "shape": np.array([-1, 8 * 12 * 12], np.int64)}
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["xt", "w0", "b0"], ["c0"], name="conv2d"),
        helper.make_node("Relu", ["c0"], ["r0"], name="re_lu"),
        bn("bn0", "r0", "n0"),
        helper.make_node("Conv", ["n0", "w1", "b1"], ["c1"], name="conv2d_1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="re_lu_1"),
        bn("bn1", "r1", "n1"),
        helper.make_node("Transpose", ["n1"], ["nt"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Reshape", ["nt", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "wf"], ["mm"], name="dense"),
        helper.make_node("Add", ["mm", "bf"], ["y"], name="dense_bias"),
    ]
    return make(nodes, inits, ["N", 16, 16, 1], {"y": ["N", 10]}, name="keras_style")


def densenet_preact(seed=0):
    """DenseNet block: conv stem, then BN -> Relu -> Conv on the concat of the stem and a branch (pre-activation)."""
    rng = np.random.default_rng(seed)
    inits = {"w0": _w(rng, 6, 1, 3, 3), "b0": _b(rng, 6), "w1": _w(rng, 4, 6, 3, 3), "w2": _w(rng, 8, 10, 1, 1),
             **bn_inits(rng, "bn1", 6), **bn_inits(rng, "bn2", 10), "wf": _w(rng, 10, 8), "bf": _b(rng, 10)}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        bn("bn1", "c0", "n1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Concat", ["c0", "c1"], ["cat"], axis=1, name="concat"),
        bn("bn2", "cat", "n2"),
        helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    return make(nodes, inits, ["N", 1, 16, 16], {"y": ["N", 10]}, opset=9, name="densenet_preact")


def pad_pool(mode="reflect", value=0.0, pool="avg", pool_kw=None, seed=0):
    """Conv -> Relu -> Pad(mode, value) -> Conv -> Relu -> pool(**pool_kw) -> GAP -> Flatten -> Gemm on 1x15x15."""
    rng = np.random.default_rng(seed)
    inits = {"w0": _w(rng, 4, 1, 3, 3), "b0": _b(rng, 4), "w1": _w(rng, 6, 4, 3, 3), "b1": _b(rng, 6),
             "wf": _w(rng, 10, 6), "bf": _b(rng, 10), "pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
             "pv": np.array(value, np.float32)}
    kw = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]) if pool_kw is None else pool_kw
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Pad", ["r0", "pads"] + (["pv"] if mode == "constant" else []), ["p"], mode=mode, name="pad0"),
        helper.make_node("Conv", ["p", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("AveragePool" if pool == "avg" else "MaxPool", ["r1"], ["pl"], name="pool0", **kw),
        helper.make_node("GlobalAveragePool", ["pl"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    return make(nodes, inits, ["N", 1, 15, 15], {"y": ["N", 10]}, name=f"pad_{mode}")


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def zoo_light(name: str, seed=0, hw=None) -> onnx.ModelProto:
    """``light_<name>.onnx`` from the onnx wheel with each ``ConstantOfShape`` weight replaced by a seeded initializer.

    Batch-norm variances and scales are drawn positive; ``hw`` rewrites the input's spatial size (valid only for
    graphs that do not hard-code it in a Reshape).
    """
    model = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    users = {}
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            users.setdefault(i, []).append((n.op_type, k))
    keep, new = [], []
    for n in model.graph.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in inits:
            shape = tuple(int(d) for d in inits[n.input[0]])
            use = users.get(n.output[0], [("", 0)])[0]
            if use[0] in ("BatchNormalization", "SpatialBN") and use[1] in (1, 4):
                v = (rng.random(shape) + 0.5).astype(np.float32)
            elif use[0] in ("BatchNormalization", "SpatialBN"):
                v = ((rng.random(shape) - 0.5) * 0.2).astype(np.float32)
            elif len(shape) > 1:
                v = _w(rng, *shape)
            else:
                v = _b(rng, shape[0] if shape else 1).reshape(shape)
            new.append(numpy_helper.from_array(v, n.output[0]))
        else:
            keep.append(n)
    used = {i for n in keep for i in n.input}
    kept_inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits + new)
    graph_inputs = [i for i in model.graph.input if i.name in used]
    del model.graph.input[:]
    model.graph.input.extend(graph_inputs)
    model.ir_version = max(model.ir_version, 7)  # initializers need not be graph inputs (IR >= 4)
    if hw is not None:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = hw
        for o in model.graph.output:
            o.type.tensor_type.ClearField("shape")
    return model
