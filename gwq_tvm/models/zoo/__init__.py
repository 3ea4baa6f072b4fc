"""Public CNN architectures built from their published layer tables, exported to ONNX offline.

The model-zoo coverage benchmark (``benchmarks/model_zoo.py``) and the
coverage tests compile these.  Nothing is downloaded: every model is a torch
module from :mod:`.mobile`, :mod:`.classic` or :mod:`.exports` with seeded
weights, and :func:`export_onnx` gives it *realistic batch-norm statistics*
before export (see :func:`settle_batch_norm`), so that activations have the
ranges a trained network's have rather than the identity statistics of a
fresh module.  The onnx wheel's old-opset zoo graphs (real topologies with
placeholder weights) are loaded by :func:`light_zoo_model` with seeded
weights in place of the placeholders.

Entries are small-input variants (64 px unless noted) so that the benchmark
fits a 2-core machine; the topologies are unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class ZooEntry:
    """One architecture: how to build it and what it is fed.

    Attributes
    ----------
    build : callable
        ``build() -> torch.nn.Module`` (a fresh, untrained module).
    input_shape : tuple of int
        The NCHW input at batch 1.
    dynamic_dims : tuple of int
        Input axes exported as symbolic (batch always is).
    fixups : tuple of str
        Post-export rewrites of the ONNX graph (``paddle_hardsigmoid``).
    float_ops : tuple of str
        ONNX op types that are expected to stay float (LRN, Softmax, ...).
    """

    build: Callable
    input_shape: tuple = (1, 3, 64, 64)
    dynamic_dims: tuple = ()
    fixups: tuple = ()
    float_ops: tuple = ()
    family: str = field(default="")


def _zoo() -> dict:
    from . import classic, exports, mobile

    return {
        "mobilenet_v2": ZooEntry(lambda: mobile.MobileNetV2(), family="mobile"),
        "mobilenet_v3_small": ZooEntry(lambda: mobile.mobilenet_v3_small(), family="mobile"),
        "mobilenet_v3_large": ZooEntry(lambda: mobile.mobilenet_v3_large(), family="mobile"),
        "efficientnet_lite0": ZooEntry(lambda: mobile.EfficientNet(lite=True), family="mobile"),
        "efficientnet_b0": ZooEntry(lambda: mobile.EfficientNet(), family="mobile"),
        "shufflenet_v2": ZooEntry(lambda: mobile.ShuffleNetV2(), family="mobile"),
        "squeezenet1_1": ZooEntry(lambda: classic.SqueezeNet11(), family="classic"),
        "densenet121": ZooEntry(lambda: classic.DenseNet121(), family="classic"),
        "googlenet_lrn": ZooEntry(lambda: classic.GoogLeNet(), family="classic", float_ops=("LRN",)),
        "vgg16": ZooEntry(lambda: classic.VGG16(image=64), family="classic"),
        "alexnet": ZooEntry(lambda: classic.AlexNet(image=64), family="classic"),
        "resnet50_softmax": ZooEntry(lambda: classic.ResNet50(), family="classic"),
        "resnext50_32x4d": ZooEntry(lambda: classic.ResNet50(softmax=False, cardinality=32, group_width=4),
                                    family="classic"),
        "keras_cnn": ZooEntry(lambda: exports.KerasStyleCNN(image=32), input_shape=(1, 3, 32, 32), family="export"),
        "paddle_lcnet": ZooEntry(lambda: exports.PaddleStyleNet(), dynamic_dims=(2, 3),
                                 fixups=("paddle_hardsigmoid",), family="export"),
        "tiny_yolo": ZooEntry(lambda: exports.TinyYolo(), input_shape=(1, 3, 96, 96), family="dense"),
        "unet_small": ZooEntry(lambda: exports.SmallUNet(), input_shape=(1, 3, 64, 64), family="dense"),
    }


def zoo() -> dict:
    """``name -> ZooEntry`` in the benchmark's row order (built on call: torch is an optional extra)."""
    return _zoo()


def settle_batch_norm(module, input_shape, seed: int = 0, batches: int = 4, batch: int = 8) -> None:
    """Give every BatchNorm seeded affine parameters and the running statistics of the data it sees.

    ``gamma ~ U(0.5, 1.5)`` and ``beta ~ N(0, 0.1^2)``; then the running mean and
    variance are set to the cumulative batch statistics of ``batches`` seeded
    N(0, 1) input batches, layer after layer in one training-mode pass each
    (``momentum=None``), so that each layer's normalised output is zero-mean,
    unit-variance on that data, the way a trained network's are on its own.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.1)
            bn.reset_running_stats()
            bn.momentum = None
        module.train()
        for _ in range(batches if bns else 0):
            module(torch.randn((batch, *input_shape[1:]), generator=gen))
    module.eval()


def seeded_module(name: str, seed: int = 0, input_shape: tuple | None = None):
    """Zoo entry ``name`` built with seed ``seed``, its batch norms settled on ``input_shape``, in eval mode.

    ``input_shape`` defaults to the entry's; a fully convolutional entry
    (global pooling before its classifier) takes any image size, e.g. the
    224-px MobileNets of the kernel benchmark.
    """
    import torch

    entry = zoo()[name]
    torch.manual_seed(seed)
    module = entry.build()
    settle_batch_norm(module, input_shape or entry.input_shape, seed)
    return module


def export_onnx(name: str, path, seed: int = 0, opset: int = 17, input_shape: tuple | None = None) -> Path:
    """Build zoo entry ``name`` with seed ``seed`` (:func:`seeded_module`) and export it to ``path``.

    The batch dimension (and the entry's ``dynamic_dims``) are symbolic in the
    ONNX graph; outputs are named ``output`` or ``output<i>``.
    """
    import onnx
    import torch

    entry = zoo()[name]
    input_shape = tuple(input_shape or entry.input_shape)
    module = seeded_module(name, seed, input_shape)
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        outs = module(example)
    n_out = len(outs) if isinstance(outs, tuple) else 1
    out_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    dims = {0: "batch", **{d: f"d{d}" for d in entry.dynamic_dims}}
    path = Path(path)
    torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=out_names,
                      dynamic_axes={"input": dims, **{o: {0: "batch"} for o in out_names}},
                      opset_version=opset, dynamo=False)
    if entry.fixups:
        model = onnx.load(str(path))
        for fix in entry.fixups:
            _FIXUPS[fix](model)
        onnx.save(model, str(path))
    return path


def _paddle_hardsigmoid(model) -> None:
    """Paddle's hardsigmoid slope: ``HardSigmoid(alpha=0.2, beta=0.5)`` (torch exports alpha=1/6)."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "HardSigmoid":
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("alpha", 0.2), helper.make_attribute("beta", 0.5)])


_FIXUPS = {"paddle_hardsigmoid": _paddle_hardsigmoid}


def light_zoo_dir() -> Path:
    """Where the onnx wheel keeps its ``light_*.onnx`` zoo graphs."""
    import onnx

    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"


def light_zoo_names() -> list[str]:
    """The wheel's zoo graphs (``bvlc_alexnet``, ``densenet121``, ...), sorted."""
    return sorted(p.stem[len("light_"):] for p in light_zoo_dir().glob("light_*.onnx"))


def light_zoo_model(name: str, seed: int = 0):
    """The wheel's ``light_<name>.onnx`` with seeded weights in place of its placeholders.

    The wheel's files carry no weights: each weight is a ``ConstantOfShape``
    node filling its shape with one value.  Each such node is replaced by an
    initializer of that shape whose values follow the weight's role, found from
    the node that reads it: conv / Gemm weights are He-normal
    (``N(0, 2 / fan_in)``), their biases ``N(0, 0.01^2)``; BatchNormalization
    scale and variance ``U(0.5, 1.5)``, bias and mean ``N(0, 0.1^2)``; anything
    else ``N(0, 0.1^2)``.  Returns an ``onnx.ModelProto`` (IR version >= 4, so
    initializers need not be graph inputs).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(light_zoo_dir() / f"light_{name}.onnx"))
    g = model.graph
    rng = np.random.default_rng(seed)
    inits = {i.name: i for i in g.initializer}
    role = {}
    for node in g.node:
        for i, inp in enumerate(node.input):
            role.setdefault(inp, (node.op_type, i))
    keep, used_shapes = [], set()
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        used_shapes.add(node.input[0])
        g.initializer.append(numpy_helper.from_array(_seeded(rng, shape, *role.get(node.output[0], ("", -1))),
                                                     node.output[0]))
    del g.node[:]
    g.node.extend(keep)
    still_read = {i for n in g.node for i in n.input}
    dead = used_shapes - still_read
    kept_inits = [i for i in g.initializer if i.name not in dead]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    kept_inputs = [i for i in g.input if i.name not in dead]
    del g.input[:]
    g.input.extend(kept_inputs)
    model.ir_version = max(model.ir_version, 4)
    onnx.checker.check_model(model)
    return model


def _seeded(rng, shape: tuple, op: str, idx: int) -> np.ndarray:
    """Seeded float32 values for a weight of ``shape`` read as input ``idx`` of an ``op`` node."""
    if op in ("Conv", "Gemm", "MatMul") and idx == 1 and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:])) if op == "Conv" else int(shape[0] if op == "MatMul" else shape[1])
        new = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
    elif op in ("Conv", "Gemm") and idx == 2:
        new = rng.normal(0.0, 0.01, shape)
    elif op == "BatchNormalization" and idx in (1, 4):
        new = rng.uniform(0.5, 1.5, shape)
    else:
        new = rng.normal(0.0, 0.1, shape)
    return new.astype(np.float32)
