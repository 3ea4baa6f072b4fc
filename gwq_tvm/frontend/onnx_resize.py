"""Import an ONNX ``Resize`` whose ``sizes`` carry the symbolic batch (TVM 0.27 workaround).

PyTorch's dynamo exporter writes ``F.interpolate(x, size=(h, w))`` on a
dynamic batch as ``Resize(x, sizes=Concat(Shape(x)[0:2], [h, w]))``.  TVM
folds that to the shape ``(n, c, h, w)`` and its converter then reads *every*
entry as an integer, ``int(val.value)``, although it uses only the spatial ones
(``sizes[2:]``): the import failed with "'Var' object has no attribute
'value'" on the symbolic ``n``.  Within :func:`onnx_resize_symbolic_batch`
the converter is given ``(1, 1, h, w)`` in that case: the leading entries are
never read (TVM's ``resize2d`` keeps batch and channels), so the op is the
same.
"""

from __future__ import annotations

import contextlib

import tvm
from tvm import relax

from .converters import override_converter


def _spatial_only(sizes):
    """``sizes`` with its non-constant leading (batch, channel) entries replaced by 1, when its spatial ones are
    constant; otherwise ``sizes`` unchanged."""
    if not isinstance(sizes, relax.ShapeExpr) or len(sizes.values) < 3:
        return sizes
    lead, spatial = sizes.values[:2], sizes.values[2:]
    if all(isinstance(v, tvm.tirx.IntImm) for v in lead) or not all(isinstance(v, tvm.tirx.IntImm) for v in spatial):
        return sizes
    return relax.ShapeExpr([1, 1, *spatial])


@contextlib.contextmanager
def onnx_resize_symbolic_batch():
    """Within the block, TVM's ONNX importer converts ``Resize`` with :func:`_spatial_only` sizes."""
    from tvm.relax.frontend.onnx import onnx_frontend as of

    class Resize(of.Resize):
        @classmethod
        def _impl_v18(cls, bb, inputs, attr, params):
            if len(inputs) > 3 and inputs[3] is not None:
                inputs = of.onnx_input([*inputs[:3], _spatial_only(inputs[3]), *inputs[4:]])
            return super()._impl_v18(bb, inputs, attr, params)

    with override_converter("Resize", Resize):
        yield
