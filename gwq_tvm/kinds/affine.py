"""Per-channel integer affine ``y = a_c * x + b_c``: a batch norm that cannot be folded into a layer.

It appears where a batch norm follows a ReLU or a concat (DenseNet's
pre-activation blocks, Keras Conv -> ReLU -> BatchNorm stacks): the chain of
per-channel ``subtract/divide/multiply/add`` by constants that batch-norm
decomposition leaves is one node, with a fused ReLU when one follows.  One
without a ReLU that only an unpadded conv1d/conv2d/dense reads, with scales of
little spread, is no node at all: it folds forward into that layer's weights
(:meth:`~gwq_tvm.extract.Walker.fold_input_affine`).

Integer program: the node is a depthwise 1x1 layer.  ``a`` is its weight
(one value per channel, quantized per channel at :attr:`Affine.weight_bits`
bits: with per-channel max scaling ``q_a = ±qmax`` exactly), ``b`` its bias::

    acc_c = q_in,c * q_a,c + q_b,c                   (int32, scale s_in * s_a,c)
    q_out = clip(SFC(acc, M_c = s_in * s_a,c / s_out))

so calibration, GWQ (its ``acc -> out`` SFC edge), QAT and the reports treat
it like any layer.
"""

from __future__ import annotations

import numpy as np

from . import register
from .layer import LayerKind


def _channel_shape(node) -> tuple:
    """Broadcast shape of a per-channel constant on ``node``'s output: ``(1, C, 1, ...)``."""
    return (1, node.shape[1]) + (1,) * (len(node.shape) - 2)


class Affine(LayerKind):
    name = "affine"
    ops = ("relax.subtract", "relax.add", "relax.multiply", "relax.divide")
    #: the bits of ``a``: one value per channel costs nothing to store, and pot weight scales
    #: (GWQ) would otherwise round ``a`` by up to 1/qmax
    weight_bits = 8
    #: an affine after an affine is one node already (:meth:`~gwq_tvm.extract.Walker.fuse_affine`)
    folds_input_affine = False
    #: ``q_a,c * (q_in - z) + q_b,c = q_a,c * q_in + (q_b,c - z * q_a,c)``: the zero point folds into the bias
    input_zero_point = True

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..extract import channel_constant
        from ..ir import static_shape

        x = next((a for a in call.args if isinstance(a, relax.Var) and a in w.var_node), None)
        shape = static_shape(x) if x is not None else ()
        if len(shape) < 2 or shape[1] < 1:
            return False
        channels, ndim = shape[1], len(shape)
        found = channel_constant(call, x, channels, ndim)
        if found is None:
            return False
        op, c = found
        weight, bias = np.ones((channels, 1)), None
        if op in ("relax.multiply", "relax.divide"):
            weight = weight * (c if op == "relax.multiply" else 1.0 / c).reshape(-1, 1)
        else:
            bias = c if op == "relax.add" else -c
        node = self.add_layer(w, i, x, weight, bias=bias)
        if node.bias is None:
            node.bias = np.zeros(channels, np.float32)
        return True

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        acc = self.accumulator(em.graph, node, em.plan)
        x = em.emit(R.astype(em.as_int(node.inputs[0]), "int32"))
        q_a = em.const(acc.weight.astype(np.int32).reshape(_channel_shape(node)), "int32")
        em.finish_acc(node, em.emit(R.multiply(x, q_a)), acc)

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        a = em.const(em.weight(node).reshape(_channel_shape(node)))
        em.finish(node, em.bias(node, em.emit(R.multiply(em.values[node.inputs[0]], a)), len(node.shape)))

    def torch_layer(self, x, w, b, node):
        shape = _channel_shape(node)
        y = x * w.reshape(shape)
        return y if b is None else y + b.reshape(shape)

    def to_onnx(self, writer, node, raw):
        n = node.name
        shape = _channel_shape(node)
        a = writer.const(f"{n}_w", writer.weights[n].reshape(shape))
        b = writer.const(f"{n}_b", writer.biases[n].reshape(shape))
        writer.node("Mul", [node.inputs[0], a], f"{n}_mul")
        writer.node("Add", [f"{n}_mul", b], raw)


register(Affine())
