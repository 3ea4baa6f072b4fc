"""An op gwq-tvm cannot quantize: kept in float between explicit dequantize/quantize boundaries.

Its inputs are dequantized (``q * s``), the original Relax call is re-emitted
on them, and a consumer that needs integers quantizes its output again.
"""

from __future__ import annotations

from . import register
from .base import Kind


class FloatOp(Kind):
    name = "float"

    def realize(self, em, node) -> None:
        from ..ir import float_call

        em.set_float(node, em.emit(float_call(em.graph, node, em.as_float)))

    def simulate(self, em, node) -> None:
        from ..ir import float_call

        em.finish(node, em.emit(float_call(em.graph, node, em.values.__getitem__)))


register(FloatOp())
