"""Import ONNX ``Pad`` as ``relax.nn.pad`` (a TVM 0.27 frontend workaround, applied in one place: here).

Cause: TVM 0.27's ONNX ``Pad`` converter emits ``topi.nn.pad``,
``topi.nn.mirror_pad`` or ``topi.nn.replicate_pad`` through ``emit_te``: an
opaque ``call_tir`` to a PrimFunc of the imported module, which no node kind
can read (so a reflect or non-zero pad before a conv could not be quantized)
and which the rewritten ``main`` of the integer program no longer finds (an
``InternalError: There is no definition of I.GlobalVar("mirror_pad")``).
For the duration of one import this swaps in a converter that emits
``relax.nn.pad`` for the constant, reflect and edge modes with constant pads,
deferring to TVM's converter otherwise (``wrap``, dynamic pads).  Tested by
``tests/test_import_coverage.py::test_onnx_pad_imports_as_relax_pad``.
"""

from __future__ import annotations

import contextlib

from .converters import override_converter

#: ONNX Pad mode -> relax.nn.pad mode
PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@contextlib.contextmanager
def onnx_pad_as_relax_pad():
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as of

    class Pad(of.Pad):
        @classmethod
        def _lower_pad(cls, bb, inputs, attr, params, allowed_modes):
            mode = attr.get("mode", b"constant").decode("utf-8")
            try:
                before, after, value = cls._parse_pads_and_axes(inputs, params)
            except ValueError:
                return super()._lower_pad(bb, inputs, attr, params, allowed_modes)
            if mode not in PAD_MODES:
                return super()._lower_pad(bb, inputs, attr, params, allowed_modes)
            width = [int(v) for pair in zip(before, after) for v in pair]
            return relax.op.nn.pad(inputs[0], width, PAD_MODES[mode], float(value))

    with override_converter("Pad", Pad):
        yield
