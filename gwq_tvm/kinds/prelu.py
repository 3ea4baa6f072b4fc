"""PReLU ``y = x`` for ``x >= 0``, ``alpha_c * x`` below, one slope per channel (or one for all).

Recognised as ONNX's ``nn.prelu`` and as torch's ``where(x > 0, x, alpha * x)``.
Integer program (:func:`gwq_tvm.plan.program.prelu_accumulator`), with
``q_alpha,c = rint(alpha_c * 2**12)``::

    acc = max(q, 0) * 2**12 + min(q, 0) * q_alpha,c        (int32, scale s_in * 2**-12)
    q_out = clip(SFC(acc, s_in * 2**-12 / s_out))

no comparison or select in the program, one SFC (a shift when ``s_in / s_out``
is a power of two, so GWQ treats it as the ``in -> out`` edge of any layer).
A scalar leaky ReLU is a lookup table (:mod:`.lut`).
"""

from __future__ import annotations

import numpy as np

from ..plan import program as P
from . import register
from .layer import AccumulatingKind


def slopes(node) -> np.ndarray:
    """The node's slopes, float64, broadcastable along axis 1 (a scalar for one slope)."""
    alpha = np.asarray(node.attrs["slopes"], dtype=np.float64)
    return alpha.reshape((1, alpha.size) + (1,) * (len(node.shape) - 2)) if alpha.size > 1 else alpha.reshape(())


def _slopes(value, channels: int):
    """``alpha`` as float64 of shape ``(channels,)`` when ``value`` is a per-channel or scalar constant."""
    from ..ir import const_value

    c = const_value(value)
    if c is None or c.dtype.kind != "f" or c.size not in (1, channels) or (c.size > 1 and c.reshape(-1).size != max(c.shape)):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64)


def _op(binding) -> str:
    op = getattr(binding.value, "op", None)
    return getattr(op, "name", "")


def _torch_prelu(w, i: int, x, channels: int):
    """torch's PReLU at binding ``i``: ``c = greater(x, 0); n = multiply(alpha, x); y = where(c, x, n)``.

    Returns ``(alpha, absorbed binding indices, y)`` or ``None``.
    """
    from ..ir import const_value

    cond = w.bindings[i]
    zero = const_value(cond.value.args[1])
    users = w.users.get(cond.var, [])
    if zero is None or zero.size != 1 or float(zero.reshape(-1)[0]) != 0.0 or len(users) != 1:
        return None
    j = users[0]
    where = w.bindings[j]
    if _op(where) != "relax.where" or not where.value.args[0].same_as(cond.var) or not where.value.args[1].same_as(x):
        return None
    neg = where.value.args[2]
    k = next((k for k in w.users.get(x, []) if w.bindings[k].var.same_as(neg)), None)
    if k is None or w.users.get(neg, []) != [j] or _op(w.bindings[k]) != "relax.multiply":
        return None
    lhs, rhs = w.bindings[k].value.args
    other = rhs if lhs.same_as(x) else lhs
    alpha = _slopes(other, channels)
    return None if alpha is None else (alpha, (j, k), where.var)


class PRelu(AccumulatingKind):
    name = "prelu"
    ops = ("relax.nn.prelu", "relax.greater")

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import static_shape

        x = call.args[0]
        shape = static_shape(x) if isinstance(x, relax.Var) else ()
        if x not in w.var_node or len(shape) < 2 or shape[1] < 1:
            return False
        var = w.bindings[i].var
        if call.op.name == "relax.nn.prelu":
            alpha = _slopes(call.args[1], shape[1])  # TVM's importer puts one slope on the last axis
            if alpha is not None and int(call.attrs.axis) % len(shape) != 1 and np.unique(alpha).size > 1:
                alpha = None
        else:
            found = _torch_prelu(w, i, x, shape[1])
            if found is None:
                return False
            alpha, absorbed, var = found
            w.absorbed.update(absorbed)
        if alpha is None:
            return False
        var, _, act = w.fuse_activation(var, i)
        slopes = tuple(float(a) for a in (alpha if np.unique(alpha).size > 1 else alpha[:1]))
        w.add("prelu", var, [x], attrs=dict(slopes=slopes), act=act)
        return True

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        return P.prelu_accumulator(node, plan)

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        acc = self.accumulator(em.graph, node, em.plan)
        x = em.emit(R.astype(em.as_int(node.inputs[0]), "int32"))
        zero = em.const(0, "int32")
        pos = em.emit(R.multiply(R.maximum(x, zero), em.const(1 << P.SLOPE_BITS, "int32")))
        q_alpha = em.const(acc.weight.reshape(slopes(node).shape), "int32")
        neg = em.emit(R.multiply(em.emit(R.minimum(x, zero)), q_alpha))
        em.finish_acc(node, em.emit(R.add(pos, neg)), acc)

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        x = em.values[node.inputs[0]]
        zero = em.const(0.0)
        alpha = em.const(slopes(node))
        em.finish(node, em.emit(R.add(R.maximum(x, zero), R.multiply(R.minimum(x, zero), alpha))))

    def qat(self, run, node) -> None:
        import torch

        acc = self.accumulator(run.graph, node, run.plan)
        src = node.inputs[0]
        q = run.q[src]
        q_alpha = torch.from_numpy(acc.weight.astype(np.int64).reshape(slopes(node).shape))
        acc_int = torch.clamp(q, min=0) * (1 << P.SLOPE_BITS) + torch.clamp(q, max=0) * q_alpha
        unit = run.s(src) * 2.0**-P.SLOPE_BITS
        run.finish_acc(node, self.float_torch(node, [run.x[src]]), acc_int, acc.scale, unit)

    def float_torch(self, node, ins):
        import torch

        alpha = torch.from_numpy(slopes(node)).to(ins[0].dtype)
        return torch.clamp(ins[0], min=0) + torch.clamp(ins[0], max=0) * alpha

    def to_onnx(self, writer, node, raw):
        alpha = slopes(node).astype(np.float32)
        writer.node("PRelu", [node.inputs[0], writer.const(f"{node.name}_slope", alpha.reshape(alpha.shape[1:] or (1,)))], raw)


register(PRelu())
