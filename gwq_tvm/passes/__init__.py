"""Relax passes of gwq-tvm (each IRModule -> IRModule, usable in a ``tvm.transform.Sequential``).

* :class:`RealizeIntegerProgram` (``realize.py``): fp32 canonical ``main`` -> integer program of a QuantPlan.
* :class:`PackInt8Layout` (``gwq_tvm/schedules/pack_layout.py``, beside the kernels it serves; re-exported here): integer convs -> packed NCHW[x]c kernels of the target's family (VNNI, AVX2, sdot, NEON; before LegalizeOps).
* :class:`VerifyIntegerOnly` (``check.py``): raises if the program holds float ops inside its integer region.
"""

import tvm

from ..errors import IntegerOnlyError
from .check import IntegerOnlyReport, check_integer_only
from ..schedules.pack_layout import PackInt8Layout
from .realize import RealizeIntegerProgram


@tvm.transform.module_pass(opt_level=0, name="VerifyIntegerOnly")
class VerifyIntegerOnly:
    """Identity pass that raises :class:`~gwq_tvm.errors.IntegerOnlyError` on any float op
    between the input quantize and the output dequantize. Run it right after realization."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        report = check_integer_only(mod)
        if not report.ok:
            raise IntegerOnlyError(str(report))
        return mod


__all__ = ["PackInt8Layout", "RealizeIntegerProgram", "VerifyIntegerOnly", "IntegerOnlyReport", "check_integer_only"]
