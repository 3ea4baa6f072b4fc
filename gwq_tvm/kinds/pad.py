"""Padding of a quantized tensor (constant, reflect, edge): the integers are padded, the scale kept (passthrough).

Reflect and edge padding copy input elements, so they commute with
quantization exactly.  A constant pad value ``v`` is written as the integer
of the input's tensor::

    q_v = clip(floor(v / s + 1/2), qmin, qmax)

which is ``0`` exactly for ``v = 0`` (zero points are 0), and otherwise the
nearest representable value (as any activation is).  The node is
``relax.nn.pad`` (TVM's ONNX ``Pad`` is imported as that op by
:mod:`gwq_tvm.frontend.onnx_pad`; the torch importer emits it directly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import register
from .base import Kind

#: relax.nn.pad mode -> (numpy.pad mode, torch F.pad mode, ONNX Pad mode)
MODES = {"constant": ("constant", "constant", "constant"), "reflect": ("reflect", "reflect", "reflect"),
         "replicate": ("edge", "replicate", "edge")}


@dataclass(frozen=True)
class PadRecipe:
    """The integer pad value ``q_v`` (0 for reflect/edge)."""

    value_code: int


class Pad(Kind):
    name = "pad"
    ops = ("relax.nn.pad",)
    passthrough = True

    def accepts_zero_point(self, graph, node, layers) -> bool:
        return True  # the pad value's code includes the zero point (PadRecipe)

    def match(self, w, i, call) -> bool:
        from tvm import relax

        x = call.args[0]
        a = call.attrs
        if not isinstance(x, relax.Var) or x not in w.var_node or str(a.pad_mode) not in MODES:
            return False
        width = [int(v) for v in a.pad_width]
        if any(v < 0 for v in width) or any(width[:2]):  # no batch padding (the batch stays dynamic)
            return False
        attrs = dict(pad_width=width, mode=str(a.pad_mode), value=float(a.pad_value))
        w.add("pad", w.bindings[i].var, [x], attrs=attrs)
        return True

    def recipe(self, graph, node, plan) -> PadRecipe:
        from ..plan.scales import qrange

        tq = plan.tensors[graph.tensor_of(node.name)]
        if node.attrs["mode"] != "constant" or node.attrs["value"] == 0.0:
            return PadRecipe(tq.zero_point)
        qmin, qmax = qrange(tq.bits, tq.signed)
        code = math.floor(node.attrs["value"] / plan.scale(graph.tensor_of(node.name)) + 0.5) + tq.zero_point
        return PadRecipe(int(min(max(code, qmin), qmax)))

    @staticmethod
    def _pad(R, x, node, value: float):
        return R.nn.pad(x, node.attrs["pad_width"], node.attrs["mode"], float(value))

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        code = self.recipe(em.graph, node, em.plan).value_code
        em.set_int(node, em.emit(self._pad(R, em.as_int(node.inputs[0]), node, code)))

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        em.values[node.name] = em.emit(self._pad(R, em.values[node.inputs[0]], node, node.attrs["value"]))

    def _torch_pad(self, node, t, value: float):
        import torch.nn.functional as F

        width = node.attrs["pad_width"]
        pairs = [width[k : k + 2] for k in range(0, len(width), 2)]
        flat = [v for pair in reversed(pairs[2:]) for v in pair]  # F.pad: last dimension first
        mode = MODES[node.attrs["mode"]][1]
        return F.pad(t, flat, mode=mode, value=value) if mode == "constant" else F.pad(t, flat, mode=mode)

    def qat(self, run, node) -> None:
        import torch

        src = node.inputs[0]
        code = self.recipe(run.graph, node, run.plan).value_code
        run.x[node.name] = self._torch_pad(node, run.x[src], node.attrs["value"])
        q = run.q[src].to(torch.float64)
        run.q[node.name] = self._torch_pad(node, q, float(code)).to(torch.int64)

    def float_torch(self, node, ins):
        return self._torch_pad(node, ins[0], node.attrs["value"])

    def to_onnx(self, writer, node, raw):
        width = node.attrs["pad_width"]
        pads = np.array(width[0::2] + width[1::2], np.int64)
        args = list(node.inputs) + [writer.const(f"{node.name}_pads", pads)]
        if node.attrs["mode"] == "constant":
            args.append(writer.const(f"{node.name}_value", np.array(node.attrs["value"], np.float32)))
        writer.node("Pad", args, raw, mode=MODES[node.attrs["mode"]][2])


register(Pad())
