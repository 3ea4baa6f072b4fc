"""What the accumulating kinds share: an int32 accumulator that one SFC turns into the output tensor.

* :class:`AccumulatingKind` (the layers and the average pools) declares the
  SFC edge (``acc -> out``, only when the output is consumed as integers: a
  final layer's accumulator is dequantized directly) and the recipe's SFC,
  ``M_c = s_acc,c / s_out``.
* :class:`LayerKind` (dense, the per-channel affine and the convolutions) adds
  what a layer with weights ``W`` (output channels first) and bias shares:
  the matcher's tail (:meth:`LayerKind.add_layer`: the forward and backward
  batch-norm folds, the fused activation), the accumulator
  ``acc = layer(q_in, q_w) + q_b`` (:func:`~gwq_tvm.plan.program.layer_accumulator`),
  and QAT and the float teacher around one torch function of the kind,
  :meth:`LayerKind.torch_layer`.
* :class:`ConvKind` (conv1d, conv2d, conv2d_transpose) matches a Relax
  convolution with a constant kernel in the kind's layouts.
"""

from __future__ import annotations

import numpy as np

from ..plan import program as P
from .base import Kind


class AccumulatingKind(Kind):
    accumulates = True
    #: the requantization adds the output's zero point: ``q = clip(SFC(acc) + z_out)``
    zero_point_out = True

    def window(self, graph, node) -> int:
        """Inputs summed per output element with unit weight (pools); 1 for layers with weights."""
        return 1

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        raise NotImplementedError

    def recipe(self, graph, node, plan) -> P.Accumulator:
        return self.accumulator(graph, node, plan)

    def sfc_edges(self, graph, node) -> list:
        if not P.needs_integer_output(graph, node.name):
            return []
        src = graph.tensor_of(node.inputs[0])
        return [P.SfcEdge(node.name, "out", src, node.name, node.elements, 1.0 / self.window(graph, node))]

    def sfcs(self, graph, node, plan) -> dict:
        acc = self.accumulator(graph, node, plan)
        out = {f"partial{j}": part.sfc for j, part in enumerate(acc.partials)}
        if P.needs_integer_output(graph, node.name):
            out["out"] = P.dynamic_requant(graph, node, acc, plan).sfc  # ASQ: a per-sample multiply
        return out


class LayerKind(AccumulatingKind):
    """A layer with a weight (output channels first), an optional bias and a fused activation."""

    #: does the layer fold an input zero point into its bias (conv2d, dense: ``-z * sum(q_w,c)``)?
    input_zero_point = False

    def accepts_zero_point(self, graph, node, layers) -> bool:
        """Conv2d and dense fold the input zero point into the bias, unless the weight has input blocks."""
        wq = layers.get(node.name)
        return self.input_zero_point and (wq is None or wq.granularity != "block" or wq.block[1] == 1)

    #: may an ``affine`` node that only this layer reads fold into it
    #: (:meth:`~gwq_tvm.extract.Walker.fold_input_affine`, which also requires no padding)?
    folds_input_affine = True

    def add_layer(self, w, i, x, weight: np.ndarray, attrs: dict | None = None, bias: np.ndarray | None = None):
        """The node of binding ``i`` reading var ``x``, with what the walker folds and fuses into it.

        In order: an input ``affine`` folded forward (when :attr:`folds_input_affine`
        and ``bias`` is not given; ``attrs`` ``groups``/``padding`` as the layer
        has them), the per-channel ``+ - * /`` by constants that follow (bias,
        decomposed batch norm, :meth:`~gwq_tvm.extract.Walker.fuse_affine`) and
        a following ReLU/clip.  Returns the new :class:`~gwq_tvm.graph.Node`.
        """
        from ..ir import static_shape

        attrs, ndim = {} if attrs is None else attrs, len(static_shape(x))
        if self.folds_input_affine and bias is None:
            x, weight, bias = w.fold_input_affine(x, i, weight, attrs.get("groups", 1), attrs.get("padding", ()))
        var, j, weight, bias = w.fuse_affine(w.bindings[i].var, i, weight, ndim, bias)
        var, j, act = w.fuse_activation(var, j)
        return w.add(self.name, var, [x], attrs=attrs, weight=weight, bias=bias, act=act)

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        return P.layer_accumulator(node, plan)

    def torch_layer(self, x, w, b, node):
        """The layer in torch: input ``x``, weight ``w`` (as the node holds it), bias ``b`` or ``None``."""
        raise self._unsupported("QAT")

    def qat(self, run, node) -> None:
        wq, b, unit, acc_scale = run.layer(node)
        if b is not None and b.ndim > 1:  # ASQ: a per-sample bias (the input's step is dynamic)
            v = self.torch_layer(run.x[node.inputs[0]], wq, None, node) + b
        else:
            v = self.torch_layer(run.x[node.inputs[0]], wq, b, node)
        run.finish_acc(node, v, run.round_int(v, unit), acc_scale, unit)

    def float_torch(self, node, ins):
        import torch

        w = torch.from_numpy(node.weight.astype(np.float32))
        b = torch.from_numpy(node.bias.astype(np.float32)) if node.bias is not None else None
        return self.torch_layer(ins[0], w, b, node)

    @staticmethod
    def onnx_args(writer, node, weight: np.ndarray | None = None) -> list:
        """ONNX inputs of the exported layer: its data input, the weight (``weight`` if given) and the bias if any."""
        n = node.name
        args = list(node.inputs) + [writer.const(f"{n}_w", writer.weights[n] if weight is None else weight)]
        if n in writer.biases:
            args.append(writer.const(f"{n}_b", writer.biases[n]))
        return args


class ConvKind(LayerKind):
    """A Relax convolution by a constant kernel, in :attr:`layouts`, with its attributes as :meth:`conv_attrs` reads them."""

    #: ``(data, kernel)`` layouts the matcher accepts (the output is in the data layout)
    layouts: tuple = ("NCHW", "OIHW")
    #: integer-list attributes beyond strides/padding/dilation/groups, named alike in Relax and ONNX
    extra_attrs: tuple = ()

    def conv_attrs(self, a) -> dict:
        """The node attributes of the Relax call attributes ``a``."""
        return dict(strides=[int(v) for v in a.strides], padding=[int(v) for v in a.padding],
                    dilation=[int(v) for v in a.dilation], groups=int(a.groups),
                    **{k: [int(v) for v in getattr(a, k)] for k in self.extra_attrs})

    #: the ONNX op :meth:`to_onnx` writes
    onnx_op = "Conv"

    def kernel(self, weight: np.ndarray, groups: int) -> np.ndarray:
        """The Relax kernel as the node stores it: output channels first."""
        return weight

    def relax_kernel(self, weight, groups: int):
        """The inverse of :meth:`kernel`: the node's weight (numpy or torch) in the Relax/ONNX/torch layout."""
        return weight

    def relax_op(self, x, w, node, **kw):
        """The Relax call ``R.nn.<name>`` of the convolution on ``x`` and kernel ``w`` (in :meth:`relax_kernel` layout)."""
        from tvm.relax import op as R

        a = node.attrs
        return getattr(R.nn, self.name)(x, w, strides=a["strides"], padding=a["padding"], dilation=a["dilation"],
                                        groups=a["groups"], **{k: a[k] for k in self.extra_attrs}, **kw)

    def realize(self, em, node) -> None:
        from dataclasses import replace

        groups = node.attrs["groups"]
        acc = self.accumulator(em.graph, node, em.plan)
        conv = node
        if acc.pad_value:  # Emitter.accumulate pads with the input's zero point; the conv itself then pads nothing
            conv = replace(node, attrs={**node.attrs, "padding": [0] * len(node.attrs["padding"])})
        em.accumulate(node, acc, lambda x, w: self.relax_op(x, w, conv, out_dtype="int32"),
                      arrange=lambda w: np.asarray(self.relax_kernel(w, groups)))

    def simulate(self, em, node) -> None:
        """The float convolution by the fake-quantized kernel (:meth:`weight_const`: a run-time input in the
        mixed-precision proxy, :class:`~gwq_tvm.calibration.sensitivity.ProxySimulator`), then the bias."""
        w = em.weight_const(node, lambda w: self.relax_kernel(w, node.attrs["groups"]))
        em.finish(node, em.bias(node, em.emit(self.relax_op(em.values[node.inputs[0]], w, node)), len(node.shape)))

    def to_onnx(self, writer, node, raw):
        a = node.attrs
        w = self.relax_kernel(writer.weights[node.name], a["groups"])
        writer.node(self.onnx_op, self.onnx_args(writer, node, w), raw, strides=list(a["strides"]), pads=list(a["padding"]),
                    dilations=list(a["dilation"]), group=int(a["groups"]), kernel_shape=list(w.shape[2:]),
                    **{k: list(a[k]) for k in self.extra_attrs})

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import const_value

        weight = const_value(call.args[1])
        a = call.attrs
        data, kernel = self.layouts
        if (
            weight is None
            or weight.ndim != len(kernel)
            or not isinstance(call.args[0], relax.Var)
            or a.data_layout != data
            or a.kernel_layout != kernel
            or (a.out_layout or data) != data
        ):
            return False
        attrs = self.conv_attrs(a)
        self.add_layer(w, i, call.args[0], self.kernel(weight, attrs["groups"]), attrs)
        return True


def pads(padding) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of a Relax 4-value padding."""
    top, left, bottom, right = (int(p) for p in padding)
    return top, left, bottom, right
