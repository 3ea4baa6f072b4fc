"""Elementwise functions of one tensor as a lookup table on its integer codes.

Hardswish, hardsigmoid, sigmoid, SiLU/swish (``x * sigmoid(x)``), tanh, GELU,
ELU, leaky ReLU, ...: whatever chain of elementwise ops an importer lowered
them to (TVM's ONNX importer writes HardSwish as ``add, clip, divide,
multiply``), the chain computes ``y = f(x)`` of one quantized tensor ``x``.
An 8-bit ``x`` has 256 codes, so the integer program is one gather::

    q_out = table[q_in - qmin_in]          (relax.take on an int8/uint8 constant)
    table[q - qmin_in] = clip(floor(f(q * s_in) / s_out + 1/2))

computed at compile time from the two scales (:func:`gwq_tvm.plan.program.lookup_table`),
exact by construction: every entry is the correctly rounded output code.

**Matching.**  The node is a *region* of bindings (:func:`find_region`): the
backward slice of one output var through elementwise ops whose operands are
scalar constants or earlier values of the region, rooted at one node output
``x``, with no intermediate value used outside it.  The region is kept as
plain data (``steps``), evaluated by one interpreter over three op tables
(numpy for the table, Relax for the fake-quant simulator, torch for QAT).  A
region that is only ``+ - * /`` by constants and a final ReLU/clip is left to
the affine and relu kinds (exact per-channel arithmetic, no table).

**GWQ.**  The output is a tensor of its own (observed in calibration, its own
scale); input to output is a table, not a scale conversion, so the node has
no SFC edge: its two tensors may take any mantissas at no cost.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from ..plan import program as P
from . import register
from .base import Kind

#: Relax op -> step name of the one-operand ops a region may hold
UNARY = {
    "relax.sigmoid": "sigmoid", "relax.tanh": "tanh", "relax.exp": "exp", "relax.erf": "erf",
    "relax.negative": "negative", "relax.abs": "abs", "relax.nn.relu": "relu", "relax.nn.silu": "silu",
    "relax.nn.gelu": "gelu", "relax.nn.gelu_tanh": "gelu_tanh", "relax.nn.leakyrelu": "leaky_relu",
    "relax.clip": "clip",
}
#: Relax op -> step name of the two-operand ops (each operand a region value or a scalar constant)
BINARY = {
    "relax.add": "add", "relax.subtract": "subtract", "relax.multiply": "multiply", "relax.divide": "divide",
    "relax.maximum": "maximum", "relax.minimum": "minimum", "relax.power": "power",
}
#: steps that are affine in their region operand when the other operand is a constant
_AFFINE = {"add", "subtract", "multiply", "divide"}
_CLIPS = {"relu", "clip"}
#: the most bindings one region absorbs (bounds the search at every elementwise binding)
MAX_STEPS = 32


# --- the function as data ---------------------------------------------------------
def _scalar(expr) -> float | None:
    from ..ir import const_value

    c = const_value(expr)
    return float(c.reshape(-1)[0]) if c is not None and c.size == 1 and c.dtype.kind == "f" else None


def _step(call, index: dict):
    """``(name, operands, params)`` of binding value ``call`` over the region values ``index`` (var -> k).

    Operands are ``("v", k)`` (region value ``k``, 0 being ``x``) or ``("c", value)``.
    ``None`` when ``call`` is not a region op on region values and scalar constants.
    """
    from tvm import relax

    if not isinstance(call, relax.Call) or not hasattr(call.op, "name"):
        return None
    op = call.op.name
    if op in UNARY:
        x = call.args[0]
        if not isinstance(x, relax.Var) or x not in index:
            return None
        params = ()
        if op == "relax.clip":
            params = (("lo", float(call.args[1].value)), ("hi", float(call.args[2].value)))
        elif op == "relax.nn.leakyrelu":
            params = (("alpha", float(call.attrs.alpha)),)
        return UNARY[op], (("v", index[x]),), params
    if op in BINARY:
        operands = []
        for a in call.args:
            if isinstance(a, relax.Var):
                if a not in index:
                    return None
                operands.append(("v", index[a]))
            else:
                c = _scalar(a)
                if c is None:
                    return None
                operands.append(("c", c))
        if all(kind == "c" for kind, _ in operands):
            return None
        return BINARY[op], tuple(operands), ()
    return None


def is_nonlinear(steps) -> bool:
    """Does the function need a table (more than affine-by-constants ops and a final ReLU/clip)?"""
    for k, (name, operands, params) in enumerate(steps):
        region_operands = sum(kind == "v" for kind, _ in operands)
        if name in _AFFINE and region_operands == 1:
            continue
        if name in _CLIPS and k == len(steps) - 1 and dict(params).get("lo", 0.0) <= 0:
            continue
        return True
    return False


def find_region(w, i: int):
    """The elementwise region starting at binding ``i``: ``(x, binding indices, steps)`` or ``None``.

    Bindings are taken in order from ``i`` through users of region values (and
    of ``x``); each one taken is a candidate output.  A candidate's region is its
    backward slice; it is *closed* when no value of the slice but the output is
    used outside it (or returned).  The largest closed slice that contains
    ``i`` and needs a table (:func:`is_nonlinear`) is the region.
    """
    from tvm import relax

    first = w.bindings[i].value
    roots = {a for a in getattr(first, "args", ()) if isinstance(a, relax.Var)}
    if len(roots) != 1:
        return None
    x = roots.pop()
    if x not in w.var_node or _step(first, {x: 0}) is None:
        return None
    index, taken, deps = {x: 0}, [], {}
    heap, seen = [i] + [u for u in w.users.get(x, []) if u > i], set()
    heapq.heapify(heap)
    best = None
    while heap and len(taken) < MAX_STEPS:
        j = heapq.heappop(heap)
        if j in seen or j in w.absorbed:
            continue
        seen.add(j)
        b = w.bindings[j]
        step = _step(b.value, index)
        if step is None:
            continue
        index[b.var] = len(taken) + 1
        taken.append((j, b.var, step))
        deps[j] = {taken[k - 1][0] for kind, k in step[1] if kind == "v" and k > 0}
        for u in w.users.get(b.var, []):
            heapq.heappush(heap, u)
        found = _closed_slice(w, j, taken, deps)
        if found is not None and i in found:
            steps = _renumber(taken, found)
            if is_nonlinear(steps):
                best = (x, sorted(found), steps)
    return best


def _closed_slice(w, out: int, taken, deps):
    """The backward slice of binding ``out`` if no value in it but ``out``'s escapes, else ``None``."""
    slice_, todo = set(), [out]
    while todo:
        j = todo.pop()
        if j not in slice_:
            slice_.add(j)
            todo.extend(deps[j])
    var_of = {j: v for j, v, _ in taken}
    for j in slice_:
        if j == out:
            continue
        v = var_of[j]
        if v in w.out_vars or any(u not in slice_ for u in w.users.get(v, [])):
            return None
    return slice_


def _renumber(taken, slice_) -> tuple:
    """The steps of the bindings in ``slice_``, their value operands renumbered within the slice."""
    old_to_new, steps = {0: 0}, []
    for k, (j, _, (name, operands, params)) in enumerate(taken, start=1):
        if j not in slice_:
            continue
        ops = tuple((kind, old_to_new[v]) if kind == "v" else (kind, v) for kind, v in operands)
        steps.append((name, ops, params))
        old_to_new[k] = len(steps)
    return tuple(steps)


def evaluate(steps, x, ops: dict, const=lambda c: c):
    """The region's output on ``x`` with the op table ``ops`` (step name -> callable); ``const`` wraps constants."""
    values = [x]
    for name, operands, params in steps:
        args = [values[v] if kind == "v" else const(v) for kind, v in operands]
        values.append(ops[name](*args, **dict(params)))
    return values[-1]


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


_np_erf = np.vectorize(math.erf, otypes=[np.float64])

#: the step semantics in float64 numpy (the table is computed with these)
NUMPY_OPS = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "maximum": np.maximum, "minimum": np.minimum, "power": np.power,
    "sigmoid": _np_sigmoid, "tanh": np.tanh, "exp": np.exp, "erf": _np_erf, "negative": np.negative,
    "abs": np.abs, "relu": lambda x: np.maximum(x, 0.0), "silu": lambda x: x * _np_sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1.0 + _np_erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "leaky_relu": lambda x, alpha: np.where(x >= 0, x, alpha * x), "clip": lambda x, lo, hi: np.clip(x, lo, hi),
}

#: known functions a region is named after (reports, warnings): name -> float64 numpy function
KNOWN = {
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hardsigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "hardsigmoid(0.2)": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
    "sigmoid": _np_sigmoid,
    "silu": NUMPY_OPS["silu"],
    "tanh": np.tanh,
    "gelu": NUMPY_OPS["gelu"],
    "gelu_tanh": NUMPY_OPS["gelu_tanh"],
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
}


def function_name(steps) -> str:
    """The name of the function the steps compute (``leaky_relu(a)``, ``hardswish``, ...), else ``elementwise``."""
    grid = np.linspace(-8.0, 8.0, 161)
    with np.errstate(all="ignore"):
        y = evaluate(steps, grid, NUMPY_OPS)
        for name, fn in KNOWN.items():
            if np.allclose(y, fn(grid), rtol=1e-5, atol=1e-6):
                return name
        alpha = -y[0] / 8.0
        if np.allclose(y, np.where(grid >= 0, grid, alpha * grid), rtol=1e-5, atol=1e-6):
            return f"leaky_relu({alpha:.4g})"
    return "elementwise"


# --- the kind -----------------------------------------------------------------------
class Lut(Kind):
    name = "lut"
    ops = tuple(UNARY) + tuple(BINARY)

    def match(self, w, i, call) -> bool:
        found = find_region(w, i)
        if found is None:
            return False
        x, region, steps = found
        w.absorbed.update(j for j in region if j != i)
        w.add("lut", w.bindings[region[-1]].var, [x], attrs=dict(function=function_name(steps), steps=steps))
        return True

    @staticmethod
    def function(node):
        """``f`` of the node in float64 numpy."""
        return lambda x: evaluate(node.attrs["steps"], x, NUMPY_OPS)

    zero_point_out = True

    def accepts_zero_point(self, graph, node, layers) -> bool:
        """The table is indexed by the code; the zero points only change its values."""
        return True

    def recipe(self, graph, node, plan) -> P.Table:
        return P.lookup_table(node, plan, self.function(node))

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        table = self.recipe(em.graph, node, em.plan)
        idx = em.emit(R.astype(em.as_int(node.inputs[0]), "int32"))
        if table.offset:
            idx = em.emit(R.add(idx, em.const(table.offset, "int32")))
        # mode "clip": the indices are in range by construction, and "fast" makes TVM warn of segfaults at every build
        em.set_int(node, em.emit(R.take(em.const(table.values, table.dtype), idx, axis=0, mode="clip")))

    def simulate(self, em, node) -> None:
        ops = _relax_ops(em)
        y = evaluate(node.attrs["steps"], em.values[node.inputs[0]], ops, lambda c: em.const(c))
        em.finish(node, y)

    def qat(self, run, node) -> None:
        import torch

        table = self.recipe(run.graph, node, run.plan)
        src = node.inputs[0]
        values = torch.from_numpy(table.values.astype(np.int64))
        q = values[run.q[src] + table.offset]
        qmin, qmax = P.out_range(node, run.plan)
        run.store(node, self.float_torch(node, [run.x[src]]), q, qmin, qmax)

    def float_torch(self, node, ins):
        import torch

        x = ins[0]
        return evaluate(node.attrs["steps"], x, _torch_ops(), lambda c: torch.tensor(c, dtype=x.dtype))

    def to_onnx(self, writer, node, raw):
        steps = node.attrs["steps"]
        names = [node.inputs[0]]
        for k, (name, operands, params) in enumerate(steps, start=1):
            out = raw if k == len(steps) else f"{node.name}_s{k}"
            args = [names[v] if kind == "v" else writer.const(f"{node.name}_c{k}_{a}", np.array(v, np.float32))
                    for a, (kind, v) in enumerate(operands)]
            _onnx_step(writer, name, args, dict(params), out)
            names.append(out)


def _relax_ops(em) -> dict:
    """The step semantics as Relax ops, in the simulator's dtype."""
    from tvm import relax
    from tvm.relax import op as R

    def emit(fn):
        return lambda *a, **k: em.emit(fn(*a, **k))

    def clip(x, lo, hi):
        return R.clip(x, relax.prim_value(max(lo, -3.0e38)), relax.prim_value(min(hi, 3.0e38)))

    table = {"add": R.add, "subtract": R.subtract, "multiply": R.multiply, "divide": R.divide,
             "maximum": R.maximum, "minimum": R.minimum, "power": R.power, "sigmoid": R.sigmoid, "tanh": R.tanh,
             "exp": R.exp, "erf": R.erf, "negative": R.negative, "abs": R.abs, "relu": R.nn.relu,
             "silu": R.nn.silu, "gelu": R.nn.gelu, "gelu_tanh": R.nn.gelu_tanh,
             "leaky_relu": lambda x, alpha: R.nn.leakyrelu(x, alpha), "clip": clip}
    return {k: emit(f) for k, f in table.items()}


def _torch_ops() -> dict:
    """The step semantics in torch (differentiable)."""
    import torch
    import torch.nn.functional as F

    return {"add": torch.add, "subtract": torch.sub, "multiply": torch.mul, "divide": torch.div,
            "maximum": torch.maximum, "minimum": torch.minimum, "power": torch.pow, "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "exp": torch.exp, "erf": torch.erf, "negative": torch.neg, "abs": torch.abs,
            "relu": torch.relu, "silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
            "leaky_relu": lambda x, alpha: F.leaky_relu(x, alpha), "clip": lambda x, lo, hi: torch.clamp(x, lo, hi)}


#: step -> ONNX op of the steps that are one ONNX op
_ONNX = {"add": "Add", "subtract": "Sub", "multiply": "Mul", "divide": "Div", "maximum": "Max", "minimum": "Min",
         "power": "Pow", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "erf": "Erf", "negative": "Neg",
         "abs": "Abs", "relu": "Relu"}


def _onnx_step(writer, name: str, args: list, params: dict, out: str) -> None:
    """Append the ONNX ops of one step (GELU and SiLU decomposed: opset 17 has no Gelu)."""
    if name in _ONNX:
        writer.node(_ONNX[name], args, out)
    elif name == "leaky_relu":
        writer.node("LeakyRelu", args, out, alpha=params["alpha"])
    elif name == "clip":
        lo, hi = params["lo"], params["hi"]
        if math.isinf(lo) == math.isinf(hi):
            writer.relu(out, args[0], lo, hi)
        else:  # an infinite Clip bound is no valid initializer, and TVM imports Min/Max as stack + reduce:
            # min(x, hi) = hi - relu(hi - x), max(x, lo) = lo + relu(x - lo)
            bound = writer.const(f"{out}_bound", np.array(hi if math.isinf(lo) else lo, np.float32))
            writer.node("Sub", [bound, args[0]] if math.isinf(lo) else [args[0], bound], f"{out}_d")
            writer.node("Relu", [f"{out}_d"], f"{out}_r")
            writer.node("Sub" if math.isinf(lo) else "Add", [bound, f"{out}_r"], out)
    elif name == "silu":
        writer.node("Sigmoid", args, f"{out}_sig")
        writer.node("Mul", [args[0], f"{out}_sig"], out)
    else:  # gelu, gelu_tanh: 0.5 * x * (1 + erf(x / sqrt 2)) resp. (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        c = lambda n, v: writer.const(f"{out}_{n}", np.array(v, np.float32))  # noqa: E731
        if name == "gelu":
            writer.node("Div", [args[0], c("sqrt2", math.sqrt(2.0))], f"{out}_u")
            writer.node("Erf", [f"{out}_u"], f"{out}_t")
        else:
            writer.node("Pow", [args[0], c("three", 3.0)], f"{out}_x3")
            writer.node("Mul", [f"{out}_x3", c("k", 0.044715)], f"{out}_kx3")
            writer.node("Add", [args[0], f"{out}_kx3"], f"{out}_in")
            writer.node("Mul", [f"{out}_in", c("a", math.sqrt(2.0 / math.pi))], f"{out}_u")
            writer.node("Tanh", [f"{out}_u"], f"{out}_t")
        writer.node("Add", [f"{out}_t", c("one", 1.0)], f"{out}_1t")
        writer.node("Mul", [args[0], f"{out}_1t"], f"{out}_x1t")
        writer.node("Mul", [f"{out}_x1t", c("half", 0.5)], out)


register(Lut())
