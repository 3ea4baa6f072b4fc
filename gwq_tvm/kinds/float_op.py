"""An op gwq-tvm cannot quantize: kept in float between explicit dequantize/quantize boundaries.

Its inputs are dequantized (``(q - z) * s``), the original Relax call is re-emitted
on them, and a consumer that needs integers quantizes its output again.
"""

from __future__ import annotations

from . import register
from .base import Kind


class FloatOp(Kind):
    name = "float"
    #: inputs dequantize as ``(q - z) * s``, the output quantizes as ``floor(x / s + 1/2) + z``
    zero_point_out = True

    def accepts_zero_point(self, graph, node, layers) -> bool:
        return True

    def realize(self, em, node) -> None:
        from ..ir import float_call

        em.set_float(node, em.emit(float_call(em.graph, node, em.as_float)))

    def simulate(self, em, node) -> None:
        """The op in the model's own dtypes: the simulator's (float64) values are cast to each input's dtype and
        the result back, so the op's own constants (float32 exponents, LayerNorm scales) meet operands of their
        dtype (Relax refuses mixed float64/float32 binary ops)."""
        from tvm import relax
        from tvm.relax import op as R

        from ..ir import float_call

        def value(name):
            ty = em.graph.nodes[name].var.ty
            v = em.values[name]
            return em.emit(R.astype(v, str(ty.dtype))) if isinstance(ty, relax.TensorType) else v

        y = em.emit(float_call(em.graph, node, value))
        if isinstance(node.var.ty, relax.TensorType):
            y = em.emit(R.astype(y, em.dtype))
        em.finish(node, y)


register(FloatOp())
