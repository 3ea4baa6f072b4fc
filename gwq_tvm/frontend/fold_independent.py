"""Evaluate at import the bindings that do not depend on the model's input.

A torch ``forward`` that builds a constant tensor (``torch.linspace`` or
``torch.arange`` scales, a position table) is exported as ops on prim values:
``R.arange(0, 8, 1)`` followed by arithmetic on it.  Relax's ``FoldConstant``
evaluates only calls whose arguments are all constant *tensors*, so the chain
stays in the program.  Every kind then sees a computed operand where a
constant was written (the per-channel ``x * c`` is no affine layer any more),
and the chain runs as a float island on every call.

:class:`FoldDataIndependent` finds the bindings whose value depends on no
function parameter and no symbolic dimension::

    independent(b) = b is a call of an op, every variable it reads is independent,
                     and its result and every shape or prim value it is given are static

compiles them together as one parameterless function, runs it once on this
CPU, and substitutes each result a dependent binding (or the output) reads by
a constant.  The independent bindings are then dead, and the pipeline's
``FoldConstant`` and ``DeadCodeElimination`` finish the job.  Run after a
first ``FoldConstant``, it compiles nothing for a model that has no such chain.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ir import vars_in


def _static(binding) -> bool:
    """Neither the value nor the result type of ``binding`` mentions a symbolic dimension (the batch)."""
    return not relax.analysis.free_symbolic_vars(binding.value) and not relax.analysis.tir_vars_in_type(binding.var.ty)


def independent_bindings(func: relax.Function) -> list[int]:
    """Indices of the bindings of ``func``'s single block that :func:`fold_data_independent` can evaluate,
    other than constants already (none when ``func`` has several blocks)."""
    if len(func.body.blocks) != 1:
        return []
    dependent = set(func.params)
    found = []
    for i, b in enumerate(func.body.blocks[0].bindings):
        value = b.value
        if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and isinstance(b.var.ty, relax.TensorType)
                and _static(b) and not any(v in dependent for v in vars_in(value))):
            found.append(i)
        else:
            dependent.add(b.var)
    return found


@relax.expr_functor.mutator
class _Substitute(relax.PyExprMutator):
    """Replace the uses of some variables by constants."""

    def __init__(self, consts: dict):
        super().__init__()
        self.consts = consts

    def visit_var_(self, op):
        return self.consts.get(op, op)

    def visit_dataflow_var_(self, op):
        return self.consts.get(op, op)


def fold_data_independent(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """``mod`` with every independent binding that a dependent one reads replaced by its value (see module doc)."""
    func = mod["main"]
    found = independent_bindings(func)
    if not found:
        return mod
    bindings = func.body.blocks[0].bindings
    chosen = set(found)
    read_by_rest = {v for i, b in enumerate(bindings) if i not in chosen for v in vars_in(b.value)}
    read_by_rest |= set(vars_in(func.body.body))
    needed = [i for i in found if bindings[i].var in read_by_rest]
    if not needed:
        return mod
    # the same bindings in plain variables (a dataflow variable cannot leave its block)
    plain = relax.transform.ToNonDataflow()(tvm.IRModule({"main": func}))["main"].body.blocks[0].bindings
    body = relax.SeqExpr([relax.BindingBlock([plain[i] for i in found])], relax.Tuple([plain[i].var for i in needed]))
    evaluate = tvm.IRModule({"main": relax.Function([], body, relax.TupleType([plain[i].var.ty for i in needed]))})
    evaluate = relax.transform.Normalize()(evaluate)
    vm = relax.VirtualMachine(tvm.compile(evaluate, target), tvm.cpu())
    values = vm["main"]()
    consts = {bindings[i].var: relax.const(np.asarray(values[k].numpy()), str(bindings[i].var.ty.dtype))
              for k, i in enumerate(needed)}
    new = _Substitute(consts).visit_expr(func)
    out = mod.clone()
    out["main"] = new
    return out


@tvm.transform.module_pass(opt_level=0, name="FoldDataIndependent")
class FoldDataIndependent:
    """:func:`fold_data_independent` as a pass (evaluated on this CPU's target)."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from ..runtime import host_target

        return fold_data_independent(mod, host_target())
