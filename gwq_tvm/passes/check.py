"""Prove a realized program is integer-only between its input quantize and output dequantize.

Two levels, both on the compiled path:

* **Relax**: a float-typed binding is allowed only *before* the first integer
  tensor (the input quantize) or *after* the last one (the output
  dequantize).  A float binding that both depends on an integer tensor and
  feeds one is a float op inside the integer program.
* **TIR**: after ``LegalizeOps``, every kernel whose inputs and outputs are
  all integer tensors must contain no float expression at all (no float
  cast, constant or arithmetic hidden inside an "integer" op).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import tvm
from tvm import relax

from ..ir import vars_in


def _is_float(var) -> bool:
    ty = var.ty
    return isinstance(ty, relax.TensorType) and ty.dtype is not None and str(ty.dtype).startswith(("float", "bfloat"))


def _is_int(var) -> bool:
    ty = var.ty
    return isinstance(ty, relax.TensorType) and str(ty.dtype).startswith(("int", "uint"))


@dataclass
class IntegerOnlyReport:
    """Result of :func:`check_integer_only`.

    Attributes
    ----------
    float_ops : list of str
        ``"var = op"`` for every float binding inside the integer region.
    float_kernels : list of str
        Integer-typed TIR kernels that still compute in float.
    """

    float_ops: list = field(default_factory=list)
    float_kernels: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.float_ops and not self.float_kernels

    def __str__(self) -> str:
        if self.ok:
            return "integer-only: yes"
        parts = self.float_ops + [f"kernel {k}" for k in self.float_kernels]
        return "integer-only: no (" + ", ".join(parts) + ")"


def _bindings(func: relax.Function):
    return [b for blk in func.body.blocks for b in blk.bindings]


def _op_name(value) -> str:
    if isinstance(value, relax.Call):
        op = value.op
        if isinstance(op, tvm.ir.Op):
            return op.name
        if hasattr(op, "name_hint"):
            return op.name_hint
    return type(value).__name__


def float_ops_in_integer_region(func: relax.Function) -> list[str]:
    """Float bindings that have an integer ancestor and an integer descendant."""
    bindings = _bindings(func)
    int_before = {p: _is_int(p) for p in func.params}
    for b in bindings:
        deps = vars_in(b.value)
        int_before[b.var] = _is_int(b.var) or any(int_before.get(v, False) for v in deps)
    int_after = {}
    for b in reversed(bindings):
        for v in vars_in(b.value):
            int_after[v] = int_after.get(v, False) or _is_int(b.var) or int_after.get(b.var, False)
    bad = []
    for b in bindings:
        if _is_float(b.var) and int_after.get(b.var, False) and any(int_before.get(v, False) for v in vars_in(b.value)):
            bad.append(f"{b.var.name} = {_op_name(b.value)}")
    return bad


_FLOAT_TYPE = re.compile(r"\b(b?float(8|16|32|64)|T\.float|e4m3|e5m2)")


def _primfunc_has_float(func) -> bool:
    """Does the kernel mention any float type (buffer, cast, constant, variable)?

    The 0.27 wheel exposes no Python TIR expression visitor, so this reads the
    TVMScript of the kernel: every float-typed buffer, cast or literal prints
    its dtype there.
    """
    return bool(_FLOAT_TYPE.search(func.script()))


def float_kernels(mod: tvm.IRModule) -> list[str]:
    """Integer-in, integer-out TIR kernels of ``main`` that compute in float."""
    lowered = relax.transform.LegalizeOps()(mod)
    bad = []
    for b in _bindings(lowered["main"]):
        value = b.value
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.call_tir"):
            continue
        gv, args = value.args[0], vars_in(value.args[1])
        if not _is_int(b.var) or not all(_is_int(a) for a in args):
            continue
        if _primfunc_has_float(lowered[gv]):
            bad.append(gv.name_hint)
    return sorted(set(bad))


def check_integer_only(mod: tvm.IRModule) -> IntegerOnlyReport:
    """Check ``mod["main"]`` (a realized, not yet legalized module) at Relax and TIR level."""
    return IntegerOnlyReport(float_ops_in_integer_region(mod["main"]), float_kernels(mod))
