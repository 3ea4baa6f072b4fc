"""Relax pass: rewrite a canonical fp32 ``main`` into the integer-only program of a QuantPlan.

Run it on the canonical module (after :func:`gwq_tvm.frontend.canonicalize`),
before ``LegalizeOps``/``tvm.compile``.  The new ``main`` takes the same float
input, quantizes it once (``clip(floor(x / s + 1/2))``), runs every node in
integers (int8/uint8 activations, int8 weights, int32 accumulators, SFCs as
shifts or Q31 multiplies) and dequantizes only the outputs.  Ops the graph
marks ``float`` stay float behind explicit dequantize/quantize boundaries.

This module is the Relax backend of the node kinds: :class:`Emitter` owns the
representation changes every kind shares (quantize, SFC, clip, accumulator
finish) and each kind's :meth:`~gwq_tvm.kinds.base.Kind.realize` emits its
own ops.  All integer constants come from the kinds' recipes
(:mod:`gwq_tvm.plan.program`); nothing here decides arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from ..errors import PlanError
from ..extract import extract_graph
from ..graph import Graph, Node, kind_of
from ..plan import program as P
from ..plan.quantplan import QuantPlan
from ..plan.scales import qrange
from ..plan.sfc import SFC


def const(value, dtype: str):
    """A Relax constant of ``value`` as ``dtype``."""
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def channel_const(values: np.ndarray, ndim: int, dtype: str):
    """A per-channel constant broadcastable along axis 1 (a scalar when all channels agree).

    GWQ relies on the scalar case: with power-of-two weight scales, a
    cross-group SFC has the same Q31 multiplier on every channel, so it is
    emitted as one constant per group pair.
    """
    values = np.asarray(values)
    if values.size == 1 or np.all(values == values.reshape(-1)[0]):
        return const(values.reshape(-1)[:1].reshape(()), dtype)
    shape = [1] * ndim
    shape[1] = values.size
    return const(values.reshape(shape), dtype)


@dataclass
class Value:
    """How a node's output is available: integers, float, or an int32 accumulator."""

    int_expr: relax.Expr | None = None
    float_expr: relax.Expr | None = None
    acc_expr: relax.Expr | None = None
    acc: P.Accumulator | None = None


class Emitter:
    """Emits the integer program node by node into a BlockBuilder (the kinds' Relax backend)."""

    const = staticmethod(const)
    channel_const = staticmethod(channel_const)

    def __init__(self, bb: relax.BlockBuilder, graph: Graph, plan: QuantPlan, param):
        self.bb, self.graph, self.plan, self.param = bb, graph, plan, param
        self.values: dict[str, Value] = {}
        #: ASQ: each dynamic tensor's per-sample fixed-point ``B`` (int64, shape ``(N,)``)
        self.betas: dict = {}

    def emit(self, expr):
        return self.bb.emit(expr)

    def set_int(self, node: Node, expr) -> None:
        self.values[node.name] = Value(int_expr=expr)

    def set_float(self, node: Node, expr) -> None:
        self.values[node.name] = Value(float_expr=expr)

    def move(self, node: Node, op) -> None:
        """Record ``op(input)`` for a data-movement ``node`` (reshape, transpose: same scale and zero point).

        On integers as a rule; on a value that only a float op produced (a float fallback region's output) in
        float, since quantizing after the move gives the same integers as before it: a float op followed only by
        data movement to the network output (ONNX Softmax's flatten-softmax-reshape) then ends the program
        without a quantize and dequantize around the move.
        """
        v = self.values[node.inputs[0]]
        if v.int_expr is None and v.acc_expr is None and v.float_expr is not None:
            self.set_float(node, self.emit(op(v.float_expr)))
        else:
            self.set_int(node, self.emit(op(self.as_int(node.inputs[0]))))

    # --- representation changes --------------------------------------
    def as_int(self, name: str):
        """``name``'s output as integers (requantizing an accumulator or quantizing a float value once)."""
        v = self.values[name]
        if v.int_expr is None:
            node = self.graph.nodes[name]
            if v.acc_expr is not None:
                rq = P.dynamic_requant(self.graph, node, v.acc, self.plan)
                if rq.dynamic is not None and rq.dynamic.beta_out is not None:  # ASQ: q0, the adapter's B, then q
                    from ..kinds.adapter import ADAPTER

                    q0 = self.requantize(v.acc_expr, P.dynamic_requant(self.graph, node, v.acc, self.plan, static_out=True), node)
                    self.betas[name] = ADAPTER.realize_branch(self, P.adapter_recipe(self.graph, name, self.plan), q0)
                v.int_expr = self.requantize(v.acc_expr, rq, node)
            else:
                v.int_expr = self.quantize(v.float_expr, name)
        return v.int_expr

    def as_float(self, name: str):
        """``name``'s output dequantized: ``acc * s_acc`` (then the fused activation) or ``q * s``."""
        v = self.values[name]
        if v.float_expr is None:
            node = self.graph.nodes[name]
            if v.acc_expr is not None:
                ndim = len(node.shape)
                x = self.emit(R.multiply(R.astype(v.acc_expr, "float32"), channel_const(v.acc.scale, ndim, "float32")))
                if node.act is not None:
                    x = self.emit(R.clip(x, relax.prim_value(node.act[0]), relax.prim_value(min(node.act[1], 3.0e38))))
            else:
                scale = const(self.plan.scale(name), "float32")
                x = self.emit(R.astype(v.int_expr, "float32"))
                z = P.zero_point(self.plan, name)
                if z:
                    x = self.emit(R.subtract(x, const(z, "float32")))
                x = self.emit(R.multiply(x, scale))
            v.float_expr = x
        return v.float_expr

    def quantize(self, x, name: str):
        """``clip(floor(x / s + 1/2) + z, qmin, qmax)`` into the tensor's container (a float boundary)."""
        tq = self.plan.tensors[name]
        qmin, qmax = qrange(tq.bits, tq.signed)
        y = R.floor(R.add(R.divide(x, const(self.plan.scale(name), "float32")), const(0.5, "float32")))
        if tq.zero_point:
            y = R.add(y, const(tq.zero_point, "float32"))
        y = R.clip(y, relax.prim_value(qmin), relax.prim_value(qmax))
        return self.emit(R.astype(y, P.container(tq)))

    def cast(self, x, dtype: str):
        """``x`` as ``dtype``; no op when it already is (the int32 requantize's accumulator is int32)."""
        ty = x.ty
        if isinstance(ty, relax.TensorType) and str(ty.dtype) == dtype:
            return x
        return self.emit(R.astype(x, dtype))

    def apply_sfc(self, x, sfc: SFC, ndim: int, work_dtype: str):
        """Rescale integer ``x`` by ``sfc`` (see :mod:`gwq_tvm.plan.sfc`); result in ``work_dtype``."""
        x = self.cast(x, work_dtype)
        if sfc.kind == "identity":
            return x
        if sfc.kind == "multiply":
            x = self.emit(R.multiply(x, channel_const(sfc.multiplier, ndim, work_dtype)))
        elif np.any(sfc.left > 0):
            x = self.emit(R.left_shift(x, channel_const(sfc.left, ndim, work_dtype)))
        if np.any(sfc.right > 0):
            rounding = (np.int64(1) << sfc.right.astype(np.int64)) >> 1
            x = self.emit(R.add(x, channel_const(rounding, ndim, work_dtype)))
            x = self.emit(R.right_shift(x, channel_const(sfc.right, ndim, work_dtype)))
        return x

    def clip_cast(self, x, qmin: int, qmax: int, dtype: str):
        x = self.emit(R.clip(x, relax.prim_value(qmin), relax.prim_value(qmax)))
        return self.cast(x, dtype)

    def requantize(self, acc, rq: P.Requant, node: Node):
        """``clip(SFC(acc) + z_out)`` into the output's container (:class:`~gwq_tvm.plan.program.Requant`)."""
        if rq.dynamic is not None:
            x = self.apply_dynamic(acc, rq.dynamic, len(node.shape))
        else:
            if rq.pre_clip is not None:  # result-preserving; keeps the int32 multiply from wrapping
                ndim = len(node.shape)
                acc = self.emit(R.maximum(self.cast(acc, rq.work_dtype), channel_const(rq.pre_clip[0], ndim, rq.work_dtype)))
                acc = self.emit(R.minimum(acc, channel_const(rq.pre_clip[1], ndim, rq.work_dtype)))
            x = self.apply_sfc(acc, rq.sfc, len(node.shape), rq.work_dtype)
        if rq.zero_point:
            x = self.emit(R.add(x, const(rq.zero_point, rq.work_dtype)))
        return self.clip_cast(x, rq.qmin, rq.qmax, rq.dtype)

    def beta(self, name):
        """``B`` of dynamic tensor ``name`` as int64 ``(N,)``, or ``None`` (static: ``2**F``)."""
        return None if name is None else self.betas[name]

    def apply_dynamic(self, acc, d: P.DynamicRequant, ndim: int):
        """ASQ's per-sample requantization (:class:`~gwq_tvm.plan.program.DynamicRequant`), unclipped int64."""
        i64 = lambda v: const(v, "int64")  # noqa: E731
        one = i64(1 << P.BETA_FRAC_BITS)
        b_in, b_out = self.beta(d.beta_in), self.beta(d.beta_out)
        num = self.emit(R.multiply(b_in if b_in is not None else one, i64(1 << P.RHO_FRAC_BITS)))
        den = b_out if b_out is not None else one
        rho = self.emit(R.floor_divide(self.emit(R.add(num, self.emit(R.right_shift(den, i64(1))))), den))
        rho = self.emit(R.reshape(rho, [-1] + [1] * (ndim - 1)))  # (N, 1, ...)
        mb = self.emit(R.multiply(rho, channel_const(d.multiplier, ndim, "int64")))
        mb = self.emit(R.right_shift(self.emit(R.add(mb, i64(1 << (P.RHO_FRAC_BITS - 1)))), i64(P.RHO_FRAC_BITS)))
        x = self.emit(R.multiply(self.emit(R.astype(acc, "int64")), mb))
        rounding = (np.int64(1) << d.right.astype(np.int64)) >> 1
        x = self.emit(R.add(x, channel_const(rounding, ndim, "int64")))
        return self.emit(R.right_shift(x, channel_const(d.right, ndim, "int64")))

    def layer_weight(self, acc: P.Accumulator, arrange=np.asarray):
        """The int8 weight of a layer as a Relax value: a constant, or for POST weights the lookup
        ``take(table, codes)`` of the stored codes in the program itself (mode ``clip``: every code indexes the
        table by construction, and ``fast`` would make TOPI warn at every build).  ``arrange`` (numpy: a
        transpose for a matmul, the input-major layout of a transposed conv) is applied to the stored array,
        weights or codes alike, since the lookup is elementwise."""
        if acc.codes is None:
            return const(np.ascontiguousarray(arrange(acc.weight)), "int8")
        codes = np.ascontiguousarray(arrange(acc.codes))
        return self.emit(R.take(const(acc.table, "int8"), const(codes, "uint8"), axis=0, mode="clip"))

    def accumulate(self, node: Node, acc: P.Accumulator, op, arrange=np.asarray) -> None:
        """Emit a layer's int32 accumulator: ``op(q_in, weight)`` (``op`` builds the conv/matmul of the
        int8 weight value :meth:`layer_weight`, its stored array laid out by ``arrange``), or with input blocks the
        sum of each partial, sliced along the input's channels and rescaled by its SFC
        (:func:`gwq_tvm.plan.program.input_block_partials`)."""
        x = self.as_int(node.inputs[0])
        if acc.pad_value:  # the input has a zero point: pad with its code explicitly (the conv itself pads with 0)
            pads = [int(p) for p in node.attrs.get("padding", ())]  # (begin..., end...) per spatial axis
            if any(pads):
                half = len(pads) // 2
                width = [0, 0, 0, 0] + [v for axis in range(half) for v in (pads[axis], pads[half + axis])]
                x = self.emit(R.nn.pad(x, width, "constant", float(acc.pad_value)))
        if not acc.partials:
            return self.finish_acc(node, self.emit(op(x, self.layer_weight(acc, arrange))), acc)
        ndim, y = len(node.shape), None
        for part in acc.partials:
            xj = x
            if part.channels is not None:
                lo, hi = part.channels
                xj = self.emit(R.strided_slice(x, axes=[1], begin=[lo], end=[hi]))
            t = self.apply_sfc(self.emit(op(xj, const(np.ascontiguousarray(arrange(part.weight)), "int8"))), part.sfc,
                               ndim, part.work_dtype)
            t = self.cast(t, "int32")
            y = t if y is None else self.emit(R.add(y, t))
        self.finish_acc(node, y, acc)

    def finish_acc(self, node: Node, y, acc: P.Accumulator) -> None:
        """Record ``y`` (int32) as ``node``'s accumulator, with the recipe's bias added."""
        if acc.bias is not None:
            src = P.dynamic_input(self.graph, node, self.plan)
            if src is None:
                y = self.emit(R.add(y, channel_const(acc.bias, len(node.shape), "int32")))
            else:  # ASQ: the bias at the per-sample unit s_in * beta * s_w (plan.program.dynamic_bias)
                b = self.beta(src)
                bias = self.emit(R.reshape(b, [-1, 1]))
                qb = const(acc.bias.astype(np.int64).reshape(1, -1) * (1 << P.BETA_FRAC_BITS), "int64")
                bias = self.emit(R.floor_divide(self.emit(R.add(qb, self.emit(R.right_shift(bias, const(1, "int64"))))), bias))
                bias = self.emit(R.reshape(bias, [-1, int(acc.bias.size)] + [1] * (len(node.shape) - 2)))
                y = self.emit(R.add(y, self.emit(R.astype(bias, "int32"))))
        self.values[node.name] = Value(acc_expr=y, acc=acc)


@tvm.transform.module_pass(opt_level=0, name="RealizeIntegerProgram")
class RealizeIntegerProgram:
    """Replace ``main`` by the integer program that ``plan`` describes.

    Parameters
    ----------
    plan : QuantPlan
        A plan made for this module's graph (checked by fingerprint).

    Raises
    ------
    PlanError
        If the plan was made for another graph or lacks a tensor's scale.
    """

    def __init__(self, plan: QuantPlan):
        self.plan = plan

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        graph = extract_graph(mod)
        if graph.fingerprint != self.plan.fingerprint:
            raise PlanError(
                f"the QuantPlan was made for graph {self.plan.fingerprint}, this model is {graph.fingerprint}"
            )
        missing = [n for n in graph.nodes if n not in self.plan.tensors]
        if missing:
            raise PlanError(f"the QuantPlan has no entry for tensors {', '.join(missing[:5])}")
        dynamic = [n for n, t in self.plan.tensors.items() if t.dynamic is not None]
        if dynamic:
            P.check_adaptive(graph, dynamic, what="tensors.{}.dynamic")
        for name in graph.tensors():
            z = self.plan.tensors[name].zero_point
            blocker = P.zero_point_blocker(graph, name, self.plan.layers) if z else None
            if blocker is not None:
                raise PlanError(f"tensors.{name}.zero_point: {z}, but {graph.nodes[blocker].kind} node {blocker} "
                                f"does not take zero points (plan the tensor symmetric)")
        func = mod["main"]
        old = func.params[0]
        bb = relax.BlockBuilder()
        param = relax.Var(old.name, old.ty)
        attrs = dict(func.attrs.items()) if func.attrs is not None else None
        with bb.function("main", [param], attrs=attrs):
            with bb.dataflow():
                em = Emitter(bb, graph, self.plan, param)
                for node in graph.nodes.values():
                    kind_of(node).realize(em, node)
                outs = [em.as_float(n) for n in graph.outputs]
                result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
            bb.emit_func_output(result)
        new_mod = bb.get()
        for gv, f in mod.functions_items():
            if gv.name_hint != "main":
                new_mod[gv] = f
        return new_mod
