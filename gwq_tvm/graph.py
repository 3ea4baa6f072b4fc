"""A read-only view of a canonical fp32 Relax ``main`` as quantizable nodes.

Each :class:`Node` is one unit of the integer program and owns one output
tensor (one scale): a convolution or dense layer together with its bias add
and ReLU/clip, a residual add with its ReLU, a pooling op, a concat, a
reshape, or a ``float`` node (an op gwq-tvm cannot quantize, kept in float).
Node names (``conv2d_0``, ``add_1``, ...) are deterministic for a given
module, so a :class:`~gwq_tvm.plan.quantplan.QuantPlan` made for it applies
to the same module later.

Calibration observes node outputs, the planner gives each a scale, and the
realize pass emits each node's integer ops.  Ops are recognised through the
``_MATCHERS`` registry keyed by Relax op name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .errors import ModelError

#: Node kinds whose output keeps the input's scale (no SFC, no new statistics needed).
PASSTHROUGH = frozenset({"maxpool", "reshape", "relu"})


@dataclass
class Node:
    """One quantizable unit; ``var`` is its fp32 output in the canonical module."""

    name: str
    kind: str
    inputs: list[str]
    var: relax.Var
    shape: tuple
    attrs: dict = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    #: fused activation as real-valued clip bounds ``(lo, hi)``; ``None`` when absent
    act: tuple | None = None
    #: the original call, for ``float`` nodes
    call: relax.Call | None = None

    @property
    def elements(self) -> int:
        """Output elements per sample (batch dimension excluded)."""
        return int(np.prod([d for d in self.shape[1:]], dtype=np.int64))


@dataclass
class Graph:
    """Nodes in topological order, the input node and the output node names."""

    nodes: dict[str, Node]
    input: str
    outputs: list[str]
    fingerprint: str

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes.values() if name in n.inputs]

    def tensor_of(self, name: str) -> str:
        """The node whose quantized tensor ``name`` reuses (passthrough nodes share their input's)."""
        while self.nodes[name].kind in PASSTHROUGH:
            name = self.nodes[name].inputs[0]
        return name

    def tensors(self) -> list[str]:
        """Names of the nodes that own a quantized tensor, in topological order."""
        return [n for n, node in self.nodes.items() if node.kind not in PASSTHROUGH]

    def float_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "float"]


def float_call(graph: Graph, node: Node, value_of) -> relax.Call:
    """``node.call`` (a ``float`` node) with each graph input replaced by ``value_of(input_name)``.

    Used by every pass that re-emits an unsupported op on its own float values.
    """
    by_var = {graph.nodes[n].var: n for n in node.inputs}

    def remap(arg):
        if isinstance(arg, relax.Var) and arg in by_var:
            return value_of(by_var[arg])
        if isinstance(arg, relax.Tuple):
            return relax.Tuple([remap(f) for f in arg.fields])
        return arg

    call = node.call
    return relax.Call(call.op, [remap(a) for a in call.args], call.attrs, call.ty_args)


def _const(expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def _shape(var) -> tuple:
    ty = var.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return ()
    return tuple(int(v) if isinstance(v, tvm.tirx.IntImm) else -1 for v in ty.shape.values)


def _ints(arr) -> list[int]:
    return [int(v) for v in arr]


class _Walker:
    """Turns the bindings of ``main`` into nodes (one pass, with look-ahead for fusion)."""

    def __init__(self, func: relax.Function):
        body = func.body
        if len(body.blocks) != 1:
            raise ModelError("expected a single dataflow block in main after canonicalization")
        self.bindings = list(body.blocks[0].bindings)
        self.func = func
        self.users: dict = {}
        for i, b in enumerate(self.bindings):
            for v in _vars_in(b.value):
                self.users.setdefault(v, []).append(i)
        self.out_vars = set(_vars_in(body.body))
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
        idx = self.counts.get(kind, 0)
        self.counts[kind] = idx + 1
        node = Node(f"{kind}_{idx}", kind, [self.var_node[v] for v in inputs], var, _shape(var), **kw)
        self.nodes[node.name] = node
        self.var_node[var] = node.name
        return node

    def fuse_activation(self, var, index: int):
        """Absorb a following relu / clip(lo<=0) into the node ending at ``var``."""
        j, b = self.single_user(var, index)
        if b is None or not isinstance(b.value, relax.Call) or not b.value.args[0].same_as(var):
            return var, index, None
        name = b.value.op.name
        if name == "relax.nn.relu":
            act = (0.0, float("inf"))
        elif name == "relax.clip":
            lo, hi = (float(a.value) for a in b.value.args[1:3])
            if lo > 0:
                return var, index, None
            act = (lo, hi)
        else:
            return var, index, None
        self.absorbed.add(j)
        return b.var, j, act

    def fuse_affine(self, var, index: int, weight: np.ndarray, ndim: int):
        """Fold following per-channel ``+ - * /`` by constants (bias, decomposed batch norm) into the layer.

        Returns the new output var and index, the folded weight (channels first)
        and bias (``None`` when no add was folded).
        """
        channels = weight.shape[0]
        shapes = {(channels,), (1, channels)} | ({(1, channels) + (1,) * (ndim - 2)} if ndim > 2 else set())
        bias = None
        while True:
            j, b = self.single_user(var, index)
            if b is None or not isinstance(b.value, relax.Call) or b.value.op.name not in _AFFINE:
                break
            lhs, rhs = b.value.args
            const = _const(rhs) if lhs.same_as(var) else None
            if const is None and rhs.same_as(var) and b.value.op.name in ("relax.add", "relax.multiply"):
                const = _const(lhs)
            if const is None or (const.shape not in shapes and const.size != 1):
                break
            c = np.broadcast_to(const.reshape(-1), (channels,)).astype(np.float64)
            op = b.value.op.name
            if op in ("relax.multiply", "relax.divide"):
                factor = c if op == "relax.multiply" else 1.0 / c
                weight = weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
                bias = None if bias is None else bias * factor
            else:
                bias = (np.zeros(channels) if bias is None else bias) + (c if op == "relax.add" else -c)
            self.absorbed.add(j)
            var, index = b.var, j
        return var, index, weight.astype(np.float32), None if bias is None else bias.astype(np.float32)


_AFFINE = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.divide"})


def _vars_in(expr) -> list:
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in _vars_in(f)]
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in _vars_in(a)]
    if isinstance(expr, relax.TupleGetItem):
        return _vars_in(expr.tuple_value)
    return []


# --- matchers: (walker, binding index, call) -> bool (True when the binding was turned into a node)


def _match_conv2d(w: _Walker, i, call) -> bool:
    weight = _const(call.args[1])
    a = call.attrs
    if (
        weight is None
        or not isinstance(call.args[0], relax.Var)
        or a.data_layout != "NCHW"
        or a.kernel_layout != "OIHW"
        or a.out_layout != "NCHW"
    ):
        return False
    var, j, weight, bias = w.fuse_affine(w.bindings[i].var, i, weight, 4)
    var, j, act = w.fuse_activation(var, j)
    attrs = dict(strides=_ints(a.strides), padding=_ints(a.padding), dilation=_ints(a.dilation), groups=int(a.groups))
    w.add("conv2d", var, [call.args[0]], attrs=attrs, weight=weight, bias=bias, act=act)
    return True


def _match_matmul(w: _Walker, i, call) -> bool:
    weight = _const(call.args[1])
    x = call.args[0]
    if weight is None or weight.ndim != 2 or not isinstance(x, relax.Var) or len(_shape(x)) != 2:
        return False
    var, j, weight_t, bias = w.fuse_affine(w.bindings[i].var, i, np.ascontiguousarray(weight.T), 2)
    var, j, act = w.fuse_activation(var, j)
    w.add("dense", var, [x], weight=weight_t, bias=bias, act=act)
    return True


def _match_add(w: _Walker, i, call) -> bool:
    lhs, rhs = call.args
    if not (isinstance(lhs, relax.Var) and isinstance(rhs, relax.Var)) or _shape(lhs) != _shape(rhs):
        return False
    var, _, act = w.fuse_activation(w.bindings[i].var, i)
    w.add("add", var, [lhs, rhs], act=act)
    return True


def _match_relu(w: _Walker, i, call) -> bool:
    if call.op.name == "relax.clip":
        lo, hi = (float(a.value) for a in call.args[1:3])
        if lo > 0:
            return False
        act = (lo, hi)
    else:
        act = (0.0, float("inf"))
    w.add("relu", w.bindings[i].var, [call.args[0]], act=act)
    return True


def _match_maxpool(w: _Walker, i, call) -> bool:
    a = call.attrs
    if a.layout != "NCHW" or a.out_layout != "NCHW":
        return False
    attrs = dict(
        pool_size=_ints(a.pool_size), strides=_ints(a.strides), padding=_ints(a.padding),
        dilation=_ints(a.dilation), ceil_mode=bool(a.ceil_mode),
    )
    w.add("maxpool", w.bindings[i].var, [call.args[0]], attrs=attrs)
    return True


def _match_avgpool(w: _Walker, i, call) -> bool:
    a = call.attrs
    padded = any(int(p) for p in a.padding)
    if a.layout != "NCHW" or a.ceil_mode or any(int(d) != 1 for d in a.dilation) or (padded and not a.count_include_pad):
        return False
    attrs = dict(pool_size=_ints(a.pool_size), strides=_ints(a.strides), padding=_ints(a.padding))
    w.add("avgpool", w.bindings[i].var, [call.args[0]], attrs=attrs)
    return True


def _match_mean(w: _Walker, i, call) -> bool:
    x = call.args[0]
    shape = _shape(x)
    axes = sorted(int(v) % 4 for v in (call.attrs.axis or [])) if len(shape) == 4 else None
    if axes != [2, 3] or -1 in shape[2:]:
        return False
    w.add("global_avgpool", w.bindings[i].var, [x], attrs=dict(keepdims=bool(call.attrs.keepdims)))
    return True


def _match_adaptive_avg(w: _Walker, i, call) -> bool:
    x = call.args[0]
    size = call.attrs.output_size
    if len(_shape(x)) != 4 or size is None or any(int(s) != 1 for s in size) or -1 in _shape(x)[2:]:
        return False
    w.add("global_avgpool", w.bindings[i].var, [x], attrs=dict(keepdims=True))
    return True


def _match_reshape(w: _Walker, i, call) -> bool:
    x = call.args[0]
    if not isinstance(x, relax.Var):
        return False
    w.add("reshape", w.bindings[i].var, [x])
    return True


def _match_concat(w: _Walker, i, call) -> bool:
    fields = call.args[0]
    if not isinstance(fields, relax.Tuple) or not all(isinstance(f, relax.Var) for f in fields.fields):
        return False
    axis = int(call.attrs.axis) if call.attrs.axis is not None else 0
    w.add("concat", w.bindings[i].var, list(fields.fields), attrs=dict(axis=axis % len(_shape(fields.fields[0]))))
    return True


_MATCHERS = {
    "relax.nn.conv2d": _match_conv2d,
    "relax.matmul": _match_matmul,
    "relax.add": _match_add,
    "relax.nn.relu": _match_relu,
    "relax.clip": _match_relu,
    "relax.nn.max_pool2d": _match_maxpool,
    "relax.nn.avg_pool2d": _match_avgpool,
    "relax.mean": _match_mean,
    "relax.nn.adaptive_avg_pool2d": _match_adaptive_avg,
    "relax.reshape": _match_reshape,
    "relax.flatten": _match_reshape,
    "relax.concat": _match_concat,
}


def extract_graph(mod: tvm.IRModule) -> Graph:
    """Read ``mod["main"]`` (canonical fp32) into a :class:`Graph`.

    Raises
    ------
    ModelError
        If ``main`` is not in the canonical form (one input, one dataflow block,
        tensor-valued bindings).
    """
    func = mod["main"]
    w = _Walker(func)
    param = func.params[0]
    w.var_node[param] = "input"
    w.nodes["input"] = Node("input", "input", [], param, _shape(param))
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
        matcher = _MATCHERS.get(value.op.name)
        if matcher is not None and matcher(w, i, value):
            continue
        args = [v for v in _vars_in(value) if v in w.var_node]
        w.add("float", b.var, args, call=value, attrs=dict(op=value.op.name))
    if outputs is None:
        out = func.body.body
        outputs = [w.var_node[out]] if isinstance(out, relax.Var) else [w.var_node[f] for f in out.fields]
    return Graph(w.nodes, "input", outputs, _fingerprint(w.nodes, outputs))


def _fingerprint(nodes: dict[str, Node], outputs: list[str]) -> str:
    """Hash of the node structure and weights: a plan applies only to the graph it was made for."""
    h = hashlib.sha256()
    for n in nodes.values():
        h.update(f"{n.name}|{n.kind}|{n.inputs}|{n.shape}|{sorted(n.attrs.items())}|{n.act}".encode())
        for arr in (n.weight, n.bias):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr(outputs).encode())
    return h.hexdigest()[:16]
