"""Relax pass: rewrite a canonical fp32 ``main`` into the integer-only program of a QuantPlan.

Run it on the canonical module (after :func:`gwq_tvm.frontend.canonicalize`),
before ``LegalizeOps``/``tvm.compile``.  The new ``main`` takes the same float
input, quantizes it once (``clip(floor(x / s + 1/2))``), runs every node in
integers (int8/uint8 activations, int8 weights, int32 accumulators, SFCs as
shifts or Q31 multiplies) and dequantizes only the outputs.  Ops the graph
marks ``float`` stay float behind explicit dequantize/quantize boundaries.

All integer constants come from :mod:`gwq_tvm.plan.program`; this module only
emits ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from ..errors import PlanError
from ..graph import Graph, Node, extract_graph, float_call
from ..plan import program as P
from ..plan.quantplan import QuantPlan
from ..plan.scales import qrange
from ..plan.sfc import SFC


def _const(value, dtype: str):
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def _channel_const(values: np.ndarray, ndim: int, dtype: str):
    """A per-channel constant broadcastable along axis 1 (a scalar when all channels agree).

    GWQ relies on the scalar case: with power-of-two weight scales, a
    cross-group SFC has the same Q31 multiplier on every channel, so it is
    emitted as one constant per group pair.
    """
    values = np.asarray(values)
    if values.size == 1 or np.all(values == values.reshape(-1)[0]):
        return _const(values.reshape(-1)[:1].reshape(()), dtype)
    shape = [1] * ndim
    shape[1] = values.size
    return _const(values.reshape(shape), dtype)


@dataclass
class _Value:
    """How a node's output is available: integers, float, or an int32 accumulator."""

    int_expr: relax.Expr | None = None
    float_expr: relax.Expr | None = None
    acc_expr: relax.Expr | None = None
    acc: P.Accumulator | None = None


class _Emitter:
    """Emits the integer program node by node into a BlockBuilder."""

    def __init__(self, bb: relax.BlockBuilder, graph: Graph, plan: QuantPlan):
        self.bb, self.graph, self.plan = bb, graph, plan
        self.values: dict[str, _Value] = {}

    def emit(self, expr):
        return self.bb.emit(expr)

    # --- representation changes --------------------------------------
    def as_int(self, name: str):
        v = self.values[name]
        if v.int_expr is None:
            node = self.graph.nodes[name]
            if v.acc_expr is not None:
                v.int_expr = self.requantize(v.acc_expr, P.requant(node, v.acc, self.plan), node)
            else:
                v.int_expr = self.quantize(v.float_expr, name)
        return v.int_expr

    def as_float(self, name: str):
        v = self.values[name]
        if v.float_expr is None:
            node = self.graph.nodes[name]
            if v.acc_expr is not None:
                ndim = len(node.shape)
                x = self.emit(R.multiply(R.astype(v.acc_expr, "float32"), _channel_const(v.acc.scale, ndim, "float32")))
                if node.act is not None:
                    x = self.emit(R.clip(x, relax.prim_value(node.act[0]), relax.prim_value(min(node.act[1], 3.0e38))))
            else:
                scale = _const(self.plan.scale(name), "float32")
                x = self.emit(R.multiply(R.astype(v.int_expr, "float32"), scale))
            v.float_expr = x
        return v.float_expr

    def quantize(self, x, name: str):
        """``clip(floor(x / s + 1/2), qmin, qmax)`` into the tensor's container (a float boundary)."""
        tq = self.plan.tensors[name]
        qmin, qmax = qrange(tq.bits, tq.signed)
        y = R.floor(R.add(R.divide(x, _const(self.plan.scale(name), "float32")), _const(0.5, "float32")))
        y = R.clip(y, relax.prim_value(qmin), relax.prim_value(qmax))
        return self.emit(R.astype(y, P.container(tq)))

    def apply_sfc(self, x, sfc: SFC, ndim: int, work_dtype: str):
        """Rescale integer ``x`` by ``sfc`` (see :mod:`gwq_tvm.plan.sfc`); result in ``work_dtype``."""
        x = self.emit(R.astype(x, work_dtype))
        if sfc.kind == "identity":
            return x
        if sfc.kind == "multiply":
            x = self.emit(R.multiply(x, _channel_const(sfc.multiplier, ndim, work_dtype)))
        elif np.any(sfc.left > 0):
            x = self.emit(R.left_shift(x, _channel_const(sfc.left, ndim, work_dtype)))
        if np.any(sfc.right > 0):
            rounding = (np.int64(1) << sfc.right.astype(np.int64)) >> 1
            x = self.emit(R.add(x, _channel_const(rounding, ndim, work_dtype)))
            x = self.emit(R.right_shift(x, _channel_const(sfc.right, ndim, work_dtype)))
        return x

    def clip_cast(self, x, qmin: int, qmax: int, dtype: str):
        x = self.emit(R.clip(x, relax.prim_value(qmin), relax.prim_value(qmax)))
        return self.emit(R.astype(x, dtype))

    def requantize(self, acc, rq: P.Requant, node: Node):
        x = self.apply_sfc(acc, rq.sfc, len(node.shape), rq.work_dtype)
        return self.clip_cast(x, rq.qmin, rq.qmax, rq.dtype)

    # --- node handlers -------------------------------------------------
    def node_input(self, node: Node, param):
        self.values[node.name] = _Value(float_expr=param)

    def node_conv2d(self, node: Node):
        acc = P.accumulator(node, self.graph, self.plan)
        a = node.attrs
        y = self.emit(
            R.nn.conv2d(
                self.as_int(node.inputs[0]), _const(acc.weight, "int8"), strides=a["strides"], padding=a["padding"],
                dilation=a["dilation"], groups=a["groups"], out_dtype="int32",
            )
        )
        self._finish_acc(node, y, acc)

    def node_dense(self, node: Node):
        acc = P.accumulator(node, self.graph, self.plan)
        weight_t = np.ascontiguousarray(acc.weight.T)
        y = self.emit(R.matmul(self.as_int(node.inputs[0]), _const(weight_t, "int8"), out_dtype="int32"))
        self._finish_acc(node, y, acc)

    def node_global_avgpool(self, node: Node):
        acc = P.accumulator(node, self.graph, self.plan)
        x = self.emit(R.astype(self.as_int(node.inputs[0]), "int32"))
        y = self.emit(R.sum(x, axis=[2, 3], keepdims=node.attrs["keepdims"]))
        self._finish_acc(node, y, acc)

    def node_avgpool(self, node: Node):
        acc = P.accumulator(node, self.graph, self.plan)
        channels = node.shape[1]
        kh, kw = node.attrs["pool_size"]
        ones = np.ones((channels, 1, kh, kw), dtype="int8")
        y = self.emit(
            R.nn.conv2d(
                self.as_int(node.inputs[0]), _const(ones, "int8"), strides=node.attrs["strides"],
                padding=node.attrs["padding"], groups=channels, out_dtype="int32",
            )
        )
        self._finish_acc(node, y, acc)

    def _finish_acc(self, node: Node, y, acc: P.Accumulator):
        if acc.bias is not None:
            y = self.emit(R.add(y, _channel_const(acc.bias, len(node.shape), "int32")))
        self.values[node.name] = _Value(acc_expr=y, acc=acc)

    def node_add(self, node: Node):
        p = self.plan.config.add_precision_bits
        ndim = len(node.shape)
        terms = []
        for src, sfc in zip(node.inputs, P.add_inputs(node, self.plan)):
            work = "int64" if sfc.kind == "multiply" else "int32"
            t = self.apply_sfc(self.as_int(src), sfc, ndim, work)
            terms.append(self.emit(R.astype(t, "int32")) if work != "int32" else t)
        y = self.emit(R.add(terms[0], terms[1]))
        if p > 0:
            y = self.emit(R.right_shift(R.add(y, _const(1 << (p - 1), "int32")), _const(p, "int32")))
        qmin, qmax = P.out_range(node, self.plan)
        self.values[node.name] = _Value(int_expr=self.clip_cast(y, qmin, qmax, P.container(self.plan.tensors[node.name])))

    def node_concat(self, node: Node):
        qmin, qmax = P.out_range(node, self.plan)
        dtype = P.container(self.plan.tensors[node.name])
        parts = []
        for src, sfc in zip(node.inputs, P.concat_inputs(node, self.plan)):
            x = self.as_int(src)
            if sfc.kind == "identity" and self.plan.tensors[src] == self.plan.tensors[node.name]:
                parts.append(x)
                continue
            work = "int64" if sfc.kind == "multiply" else "int32"
            parts.append(self.clip_cast(self.apply_sfc(x, sfc, len(node.shape), work), qmin, qmax, dtype))
        self.values[node.name] = _Value(int_expr=self.emit(R.concat(parts, axis=node.attrs["axis"])))

    def node_maxpool(self, node: Node):
        a = node.attrs
        y = R.nn.max_pool2d(
            self.as_int(node.inputs[0]), pool_size=a["pool_size"], strides=a["strides"], padding=a["padding"],
            dilation=a["dilation"], ceil_mode=a["ceil_mode"],
        )
        self.values[node.name] = _Value(int_expr=self.emit(y))

    def node_reshape(self, node: Node):
        y = R.reshape(self.as_int(node.inputs[0]), node.var.ty.shape)
        self.values[node.name] = _Value(int_expr=self.emit(y))

    def node_relu(self, node: Node):
        x = self.as_int(node.inputs[0])
        qmin, qmax = P.out_range(node, self.plan)
        y = R.clip(x, relax.prim_value(qmin), relax.prim_value(qmax))
        self.values[node.name] = _Value(int_expr=self.emit(y))

    def node_float(self, node: Node):
        """Re-emit an unsupported op on dequantized inputs (a float region)."""
        new = float_call(self.graph, node, self.as_float)
        self.values[node.name] = _Value(float_expr=self.emit(new))


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
        func = mod["main"]
        old = func.params[0]
        bb = relax.BlockBuilder()
        param = relax.Var(old.name, old.ty)
        attrs = dict(func.attrs.items()) if func.attrs is not None else None
        with bb.function("main", [param], attrs=attrs):
            with bb.dataflow():
                em = _Emitter(bb, graph, self.plan)
                for node in graph.nodes.values():
                    if node.kind == "input":
                        em.node_input(node, param)
                    else:
                        getattr(em, f"node_{node.kind}")(node)
                outs = [em.as_float(n) for n in graph.outputs]
                result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
            bb.emit_func_output(result)
        new_mod = bb.get()
        for gv, f in mod.functions_items():
            if gv.name_hint != "main":
                new_mod[gv] = f
        return new_mod
