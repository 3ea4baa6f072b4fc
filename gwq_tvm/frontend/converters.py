"""Swap one converter of TVM's ONNX importer for the duration of an import (the mechanism of our frontend workarounds)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def override_converter(op_type: str, converter):
    """Within the block, TVM's ONNX importer converts ``op_type`` nodes with ``converter`` (restored after)."""
    from tvm.relax.frontend.onnx import onnx_frontend as of

    original = of._get_convert_map

    def convert_map():
        table = original()
        table[op_type] = converter
        return table

    of._get_convert_map = convert_map
    try:
        yield
    finally:
        of._get_convert_map = original
