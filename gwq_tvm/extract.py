"""Read a canonical fp32 Relax ``main`` into a :class:`~gwq_tvm.graph.Graph` with the kinds' matchers.

The walker goes through the bindings of ``main`` once.  For each call it
tries the matchers of the kinds registered for that Relax op
(:func:`gwq_tvm.kinds.matchers_for`); a matcher may absorb the bindings that
follow (a bias add, a decomposed batch norm, a ReLU) into its node.  A call
no kind takes becomes a ``float`` node, kept in float by every backend.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .errors import ModelError
from .graph import Graph, Node, fingerprint
from .ir import const_value, static_shape, vars_in
from .kinds import matchers_for

#: per-channel affine ops a layer absorbs when their other operand is a constant
AFFINE_OPS = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.divide"})

#: the largest ``max|a_c| / min|a_c|`` over the input channels of one group that
#: :meth:`Walker.fold_input_affine` folds.  Weights are quantized per *output*
#: channel, so folding scales ``a_c`` into the input channels of one kernel costs
#: its weakest channel ``log2`` of this spread in bits (8: three); the affine
#: requantization it saves is one rounding.  Measured on the Keras-style zoo
#: model (W8A8, logit SQNR on 512 inputs): no fold 20.4 dB; folding its BN of
#: spread 4.1 21.1 dB; folding also the one of spread 47 16.7 dB.
FORWARD_FOLD_MAX_SPREAD = 8.0


class Walker:
    """The bindings of ``main`` with their users; matchers turn them into nodes (with look-ahead for fusion)."""

    def __init__(self, func: relax.Function):
        body = func.body
        if len(body.blocks) != 1:
            raise ModelError("expected a single dataflow block in main after canonicalization")
        self.bindings = list(body.blocks[0].bindings)
        self.func = func
        self.users: dict = {}
        for i, b in enumerate(self.bindings):
            for v in vars_in(b.value):
                self.users.setdefault(v, []).append(i)
        self.out_vars = set(vars_in(body.body))
        self.absorbed: set[int] = set()
        self.var_node: dict = {}
        self.nodes: dict[str, Node] = {}
        self.counts: dict[str, int] = {}

    def single_user(self, var, index: int):
        """The binding that is ``var``'s only use, if ``var`` is not also an output."""
        users = self.users.get(var, [])
        if len(users) == 1 and var not in self.out_vars and users[0] > index:
            return users[0], self.bindings[users[0]]
        return None, None

    def add(self, kind: str, var, inputs, **kw) -> Node:
        """Create the next node of ``kind`` whose output is ``var``, reading the nodes of ``inputs`` (vars)."""
        idx = self.counts.get(kind, 0)
        self.counts[kind] = idx + 1
        node = Node(f"{kind}_{idx}", kind, [self.var_node[v] for v in inputs], var, static_shape(var), **kw)
        self.nodes[node.name] = node
        self.var_node[var] = node.name
        return node

    def fuse_activation(self, var, index: int):
        """Absorb a following relu / clip(lo<=0) into the node ending at ``var``."""
        j, b = self.single_user(var, index)
        if b is None or not isinstance(b.value, relax.Call) or not b.value.args[0].same_as(var):
            return var, index, None
        act = activation_bounds(b.value)
        if act is None:
            return var, index, None
        self.absorbed.add(j)
        return b.var, j, act

    def fold_input_affine(self, x, index: int, weight: np.ndarray, groups: int = 1, padding=()):
        """Fold an ``affine`` node that only feeds this layer into its weight and bias (the forward batch-norm fold).

        A per-channel affine ``x = a_c * u + b_c`` (a batch norm after a ReLU,
        Keras' Conv -> ReLU -> BatchNorm; no fused activation of its own) read
        only by a layer with weight ``W`` (output channels first, input channel
        ``c`` of output ``o`` at ``W[o, c - g(o) * C_in/groups]``) is exact to fold::

            W'[o, c, k] = W[o, c, k] * a_c
            b'[o] = sum_{c, k} W[o, c, k] * b_c

        (``b'`` is the bias the layer starts from; its own bias add and batch
        norm are added by :meth:`fuse_affine`).  Only without padding: every
        output then sums all its taps over real inputs, while a zero pad would
        have to become ``-b_c / a_c`` for the fold to hold.  And only when the
        ``|a_c|`` of one group's input channels spread by at most
        :data:`FORWARD_FOLD_MAX_SPREAD` (exact in float, the fold is not free
        for per-output-channel weight quantization; a depthwise conv, one input
        channel per output, always folds).  The affine node is removed and the
        layer reads ``u``.

        Returns ``(x, weight, bias)``: ``x`` unchanged, ``weight`` as given and
        ``bias`` ``None`` when there is nothing to fold.
        """
        name = self.var_node.get(x)
        node = self.nodes.get(name)
        cg = weight.shape[1]
        if (
            node is None
            or node.kind != "affine"
            or node.act is not None
            or any(int(p) for p in padding)
            or x in self.out_vars
            or set(self.users.get(x, [])) != {index}
            or node.weight.size != groups * cg
        ):
            return x, weight, None
        scale = np.abs(node.weight.reshape(groups, cg).astype(np.float64))
        if scale.min() == 0 or (scale.max(axis=1) / scale.min(axis=1)).max() > FORWARD_FOLD_MAX_SPREAD:
            return x, weight, None
        out = weight.shape[0]
        chan = (np.arange(out) // (out // groups))[:, None] * cg + np.arange(cg)[None, :]  # input channel of W[o, c]
        taps = (1,) * (weight.ndim - 2)
        a = node.weight.reshape(-1).astype(np.float64)[chan].reshape((out, cg) + taps)
        b = node.bias.astype(np.float64)[chan].reshape((out, cg) + taps)
        del self.nodes[name], self.var_node[x]
        return self.nodes[node.inputs[0]].var, weight * a, (weight * b).sum(axis=tuple(range(1, weight.ndim)))

    def fuse_affine(self, var, index: int, weight: np.ndarray, ndim: int, bias: np.ndarray | None = None):
        """Fold following per-channel ``+ - * /`` by constants (bias, decomposed batch norm) into the layer.

        Returns the new output var and index, the folded weight (channels first)
        and bias (``None`` when no add was folded and none was given).
        """
        channels = weight.shape[0]
        while True:
            j, b = self.single_user(var, index)
            if b is None:
                break
            found = channel_constant(b.value, var, channels, ndim)
            if found is None:
                break
            op, c = found
            if op in ("relax.multiply", "relax.divide"):
                factor = c if op == "relax.multiply" else 1.0 / c
                weight = weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
                bias = None if bias is None else bias * factor
            else:
                bias = (np.zeros(channels) if bias is None else bias) + (c if op == "relax.add" else -c)
            self.absorbed.add(j)
            var, index = b.var, j
        return var, index, weight.astype(np.float32), None if bias is None else bias.astype(np.float32)


def activation_bounds(call) -> tuple | None:
    """``(lo, hi)`` of a ``relu`` or of a ``clip`` with ``lo <= 0`` (a ReLU-like activation), else ``None``."""
    name = call.op.name
    if name == "relax.nn.relu":
        return (0.0, float("inf"))
    if name == "relax.clip":
        lo, hi = (float(a.value) for a in call.args[1:3])
        return None if lo > 0 else (lo, hi)
    return None


def is_channel_shape(shape: tuple, channels: int, ndim: int) -> bool:
    """Does a constant of ``shape`` broadcast along axis 1 only of a rank-``ndim`` tensor with ``channels`` channels?

    Right-aligned as broadcasting aligns it, it must read ``(1, C, 1, ..., 1)``:
    ``(C, 1, 1)`` (an ONNX ``Unsqueeze(axes=[1, 2])`` of a BN scale) and
    ``(1, C, 1, 1)`` are per-channel of an NCHW tensor, ``(C,)`` is per-channel
    of an ``(N, C)`` one only: against NCHW it scales the width axis.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) > ndim:
        return False
    return (1,) * (ndim - len(shape)) + shape == (1, channels) + (1,) * (ndim - 2)


def channel_constant(value, var, channels: int, ndim: int):
    """``(op, c)`` when ``value`` is ``var (+ - * /) c`` with ``c`` a per-channel (or scalar) constant.

    ``c`` is returned as float64 of shape ``(channels,)``; ``c (+ *) var`` is
    accepted too.  ``None`` when ``value`` is anything else.
    """
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or value.op.name not in AFFINE_OPS:
        return None
    lhs, rhs = value.args
    const = const_value(rhs) if lhs.same_as(var) else None
    if const is None and rhs.same_as(var) and value.op.name in ("relax.add", "relax.multiply"):
        const = const_value(lhs)
    if const is None or (const.size != 1 and not is_channel_shape(const.shape, channels, ndim)):
        return None
    return value.op.name, np.broadcast_to(const.reshape(-1), (channels,)).astype(np.float64)


def is_float_tensor(var) -> bool:
    """Is ``var`` a float tensor (what the integer kinds quantize; a bool mask or int64 index is not)?"""
    ty = var.ty
    return isinstance(ty, relax.TensorType) and str(ty.dtype).startswith(("float", "bfloat"))


def extract_graph(mod: tvm.IRModule) -> Graph:
    """Read ``mod["main"]`` (canonical fp32) into a :class:`Graph`.

    Raises
    ------
    ModelError
        If ``main`` is not in the canonical form (one input, one dataflow block,
        tensor-valued bindings).
    """
    func = mod["main"]
    w = Walker(func)
    param = func.params[0]
    w.var_node[param] = "input"
    w.nodes["input"] = Node("input", "input", [], param, static_shape(param))
    outputs = None
    for i, b in enumerate(w.bindings):
        if i in w.absorbed:
            continue
        value = b.value
        if isinstance(value, relax.Tuple) and b.var in w.out_vars:
            outputs = [w.var_node[f] for f in value.fields]
            continue
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            raise ModelError(f"unsupported binding in main: {type(value).__name__} {b.var.name}")
        args = [v for v in vars_in(value) if v in w.var_node]
        if all(is_float_tensor(v) for v in args) and any(match(w, i, value) for match in matchers_for(value.op.name)):
            continue
        w.add("float", b.var, args, call=value, attrs=dict(op=value.op.name))
    if outputs is None:
        out = func.body.body
        outputs = [w.var_node[out]] if isinstance(out, relax.Var) else [w.var_node[f] for f in out.fields]
    nodes, outputs = _renumber(w.nodes, outputs)
    return Graph(nodes, "input", outputs, fingerprint(nodes, outputs))


def _renumber(nodes: dict, outputs: list):
    """Name the nodes ``<kind>_<i>`` consecutively in order (a forward fold removed an ``affine`` node mid-count)."""
    counts: dict[str, int] = {}
    names = {"input": "input"}
    for name, node in nodes.items():
        if name != "input":
            names[name] = f"{node.kind}_{counts.get(node.kind, 0)}"
            counts[node.kind] = counts.get(node.kind, 0) + 1
    renamed = {}
    for name, node in nodes.items():
        node.name, node.inputs = names[name], [names[i] for i in node.inputs]
        renamed[node.name] = node
    return renamed, [names[o] for o in outputs]
