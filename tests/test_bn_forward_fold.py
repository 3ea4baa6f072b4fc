"""The forward batch-norm fold: a per-channel affine read only by an unpadded conv / dense folds into its weights.

``x = a_c * u + b_c`` feeding a layer ``W`` without padding is that layer with
``W'[o, c, k] = W[o, c, k] * a_c`` and bias ``b'[o] = b[o] + sum_{c, k} W[o, c, k] * b_c``
(:meth:`gwq_tvm.extract.Walker.fold_input_affine`).  With zero padding it is not exact
(the pad would have to read ``-b_c / a_c``) and the affine node must stay.  Nor does it fold when
the scales ``|a_c|`` over one group's input channels spread by more than
:data:`gwq_tvm.extract.FORWARD_FOLD_MAX_SPREAD` (weights are quantized per output channel).
"""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.extract import extract_graph
from gwq_tvm.qat.model import float_forward
from gwq_tvm.reference import run_reference

from conftest import compile_and_run


def _random_bn(bn: nn.Module, gen: torch.Generator) -> nn.Module:
    """Scales of both signs (a negative ``a_c`` must fold too), shifts far from zero."""
    c = bn.num_features
    bn.weight.data = (torch.rand(c, generator=gen) + 0.5) * torch.where(torch.rand(c, generator=gen) < 0.3, -1.0, 1.0)
    bn.bias.data = torch.randn(c, generator=gen)
    bn.running_mean = torch.rand(c, generator=gen)
    bn.running_var = torch.rand(c, generator=gen) + 0.25
    return bn


def _net(case: str, pad: int = 0, seed: int = 0):
    """Layer -> ReLU -> BN -> layer (padding ``pad``) for ``case``; the input shape."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if case == "conv2d":
        layers, shape = [nn.Conv2d(2, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 3, padding=pad)], (2, 9, 9)
    elif case == "grouped":  # groups 2 (3 outputs per group), stride 2, dilation 2
        layers = [nn.Conv2d(2, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),
                  nn.Conv2d(4, 6, 3, stride=2, dilation=2, groups=2, padding=pad)]
        shape = (2, 12, 12)
    elif case == "depthwise":
        layers, shape = [nn.Conv2d(2, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, groups=4, padding=pad)], (2, 9, 9)
    elif case == "conv1d":
        layers, shape = [nn.Conv1d(2, 4, 3), nn.ReLU(), nn.BatchNorm1d(4), nn.Conv1d(4, 3, 3, padding=pad)], (2, 16)
    elif case == "dense":
        layers, shape = [nn.Linear(5, 6), nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3)], (5,)
    else:
        raise ValueError(case)
    _random_bn(layers[2], gen)
    return nn.Sequential(*layers).eval(), (None, *shape)


class SharedBN(nn.Module):
    """One BN read by two unpadded convs: folding it into one would leave the other without it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), _random_bn(nn.BatchNorm2d(4), torch.Generator().manual_seed(1)))
        self.a, self.b = nn.Conv2d(4, 3, 3), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.a(y) + self.b(y)[:, :, 1:-1, 1:-1]


def _inputs(shape, n=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape[1:])).astype(np.float32)


def _graph(model, shape):
    return extract_graph(gwq_tvm.load_model(model, input_shape=shape).mod)


def _kinds(graph):
    return [n.kind for n in graph.nodes.values()]


def _assert_same_float_function(model, graph, x):
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
        got = float_forward(graph, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("case", ["conv2d", "grouped", "depthwise", "conv1d", "dense"])
def test_a_batch_norm_before_an_unpadded_layer_folds_exactly(case):
    model, shape = _net(case)
    x = _inputs(shape)
    graph = _graph(model, shape)
    assert "affine" not in _kinds(graph), _kinds(graph)
    first, second = graph.layers()
    assert graph.nodes[second].inputs == [first]  # the second layer reads the first's (ReLU) output directly
    _assert_same_float_function(model, graph, x)
    q = gwq_tvm.quantize(model, x, QuantConfig(), input_shape=shape)
    assert q.integer_only.ok, q.integer_only
    np.testing.assert_array_equal(compile_and_run(q.mod, x), run_reference(q.mod, x))


@pytest.mark.parametrize("case", ["conv2d", "grouped", "depthwise", "conv1d"])
def test_a_batch_norm_before_a_padded_conv_does_not_fold(case):
    model, shape = _net(case, pad=1)
    graph = _graph(model, shape)
    assert _kinds(graph).count("affine") == 1, _kinds(graph)
    _assert_same_float_function(model, graph, _inputs(shape))


@pytest.mark.parametrize("case, folds", [("conv2d", False), ("depthwise", True)])
def test_a_batch_norm_of_widely_spread_scales_folds_only_into_a_depthwise_conv(case, folds):
    """|a_c| spread 40x: a dense kernel would lose 5 bits on its weakest input channel; a depthwise one loses none."""
    model, shape = _net(case)
    with torch.no_grad():
        bn = model[2]
        bn.weight.copy_(torch.linspace(0.05, 2.0, 4) * torch.tensor([1.0, -1.0, 1.0, 1.0]))
        bn.running_var.fill_(1.0 - bn.eps)
    graph = _graph(model, shape)
    assert _kinds(graph).count("affine") == (0 if folds else 1), _kinds(graph)
    _assert_same_float_function(model, graph, _inputs(shape))


def test_a_batch_norm_read_by_two_convs_does_not_fold():
    model, shape = SharedBN().eval(), (None, 2, 10, 10)
    graph = _graph(model, shape)
    assert _kinds(graph).count("affine") == 1, _kinds(graph)
    _assert_same_float_function(model, graph, _inputs(shape))


def _ops(func) -> list:
    """``(op, dtype)`` of each call binding of ``func``, in order."""
    from tvm import relax

    return [(b.value.op.name.removeprefix("relax."), str(b.var.ty.dtype)) for blk in func.body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call)]


def _between_convs(ops) -> list:
    first, second = (i for i, (op, _) in enumerate(ops) if op == "nn.conv2d")
    return ops[first + 1:second]


@pytest.mark.parametrize("pad", [0, 1])
def test_ir_before_and_after_the_fold(pad):
    """Before: the float module applies the BN between the convs; after: the integer program does not, unless padded."""
    model, shape = _net("conv2d", pad)
    x = _inputs(shape, n=4)
    before = _between_convs(_ops(gwq_tvm.load_model(model, input_shape=shape).mod["main"]))
    assert [op for op, _ in before] == ["add", "nn.relu", "subtract", "divide", "multiply", "add"]  # bias, ReLU, BN
    q = gwq_tvm.quantize(model, x, QuantConfig(), input_shape=shape)
    after = _between_convs(_ops(q.mod["main"]))
    affine = [("multiply", "int32")]  # the affine node's q_in * q_a (its bias add and requantization follow)
    # the int32 requantize (plan.arithmetic.int32_requantize): bias add, the result-preserving pre-clip of the
    # accumulator, the Q<b> multiply with its rounding shift, and the clip to the output codes; no int32 -> int32 cast
    requant = [("add", "int32"), ("maximum", "int32"), ("minimum", "int32"),
               ("multiply", "int32"), ("add", "int32"), ("right_shift", "int32"), ("clip", "int32")]
    if pad:
        assert after[:len(requant) + 3] == requant + [("astype", "uint8"), ("astype", "int32")] + affine
        # the BN's output is planned unsigned with a zero point: + z before the clip, and the padded conv pads by z
        assert q.plan.tensors["affine_0"].zero_point and after[-4:] == [("add", "int32"), ("clip", "int32"),
                                                                         ("astype", "uint8"), ("nn.pad", "uint8")]
    else:
        assert after == requant + [("astype", "uint8")]  # the second conv reads the ReLU's codes
    np.testing.assert_array_equal(compile_and_run(q.mod, x), run_reference(q.mod, x))


@pytest.mark.slow  # about 12 s: the export, a 4-conv model's calibration, compile and reference
def test_keras_style_zoo_model_folds_the_batch_norm_it_can(tmp_path):
    """Keras' Conv -> ReLU -> BN: of the two BNs before an unpadded conv, the one of |a_c| spread 4.1 folds; the one
    of spread 47 (FORWARD_FOLD_MAX_SPREAD) and the two before a max pool stay."""
    from gwq_tvm.models import zoo

    onnx = pytest.importorskip("onnx")
    path = zoo.export_onnx("keras_cnn", tmp_path / "keras.onnx", seed=1)
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("BatchNormalization") == 4
    fm = gwq_tvm.load_model(str(path))
    graph = extract_graph(fm.mod)
    kinds = _kinds(graph)
    assert kinds.count("affine") == 3 and kinds.count("conv2d") == 4
    assert [[c.kind for c in graph.consumers(n)] for n, node in graph.nodes.items() if node.kind == "affine"] == [
        ["maxpool"], ["conv2d"], ["maxpool"]]
    assert graph.nodes["conv2d_1"].inputs == ["conv2d_0"]  # the first BN folded forward
    x = _inputs((None, 3, 32, 32), n=8)
    vm = relax.VirtualMachine(tvm.compile(fm.mod, gwq_tvm.runtime.host_target()), tvm.cpu())
    want = vm["main"](tvm.runtime.tensor(x)).numpy()
    got = float_forward(graph, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    q = gwq_tvm.quantize(str(path), x, QuantConfig())
    assert q.integer_only.ok, q.integer_only
    np.testing.assert_array_equal(compile_and_run(q.mod, x), run_reference(q.mod, x))
