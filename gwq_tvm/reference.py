"""A numpy interpreter of the realized integer program: the bit-exact reference.

It executes ``main`` of a realized (not legalized) module binding by binding
with numpy, in the same dtypes and with the same rounding as the Relax ops
define, independently of TVM's kernels and code generation.  Integer
arithmetic is checked for overflow of its dtype (an overflow here means the
planner's bounds are wrong, and raises).  A compiled TVM module must match it
exactly.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from numpy.lib.stride_tricks import sliding_window_view



def _const(expr) -> np.ndarray | None:
    """The value of a Relax constant (read here, not through the extractor: the reference shares no code
    with what it checks)."""
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _int_info(dtype):
    return np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None


def _checked(value: np.ndarray, dtype: str, what: str) -> np.ndarray:
    """Cast exact results (int64, float64 or Python integers) to ``dtype``, raising on integer overflow."""
    info = _int_info(dtype)
    if info is not None and np.size(value) and (int(np.min(value)) < info.min or int(np.max(value)) > info.max):
        raise OverflowError(f"{what}: result leaves {dtype} range")
    return np.asarray(value).astype(dtype)


def _conv2d(x, w, attrs):
    pt, pl, pb, pr = (int(v) for v in attrs.padding)
    sh, sw = (int(v) for v in attrs.strides)
    dh, dw = (int(v) for v in attrs.dilation)
    groups = int(attrs.groups)
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    o, cg, kh, kw = w.shape
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # N, C, Ho, Wo, kh, kw
    w = w.astype(np.float64)
    og = o // groups
    if groups == 1:
        out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    elif cg == 1 and og == 1:
        out = np.einsum("nchwij,cij->nchw", win, w[:, 0])
    else:
        parts = [
            np.tensordot(win[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og], axes=([1, 4, 5], [1, 2, 3]))
            for g in range(groups)
        ]
        out = np.concatenate(parts, axis=3).transpose(0, 3, 1, 2)
    return out


def _conv1d(x, w, attrs):
    """``relax.nn.conv1d`` (NCW, OIW): ``out[n, o, t] = sum_{c in group(o), k} x_pad[n, c, t*s + k*d] * w[o, c, k]``."""
    left, right = (int(v) for v in attrs.padding)
    s, d, groups = int(attrs.strides[0]), int(attrs.dilation[0]), int(attrs.groups)
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (left, right)))
    o, cg, k = w.shape
    og, span = o // groups, (k - 1) * d + 1
    win = sliding_window_view(x, span, axis=2)[:, :, ::s, ::d]  # N, C, T, k
    w = w.astype(np.float64)
    parts = [np.einsum("nctk,ock->not", win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og]) for g in range(groups)]
    return np.concatenate(parts, axis=1)


def _conv2d_transpose(x, w, attrs):
    """``relax.nn.conv2d_transpose`` (NCHW, IOHW kernel) by scattering each kernel tap's products.

    ``full[n, g*og + o, i*s_h + a*d_h, j*s_w + b*d_w] += x[n, g*cg + c, i, j] * w[g*cg + c, o, a, b]`` on a
    ``((H-1)*s_h + (kh-1)*d_h + 1 + output_padding_h)``-row canvas, then ``padding`` cropped from its sides.
    """
    pt, pl, pb, pr = (int(v) for v in attrs.padding)
    sh, sw = (int(v) for v in attrs.strides)
    dh, dw = (int(v) for v in attrs.dilation)
    oph, opw = (int(v) for v in attrs.output_padding)
    groups = int(attrs.groups)
    n, ci, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = ci // groups
    fh, fw = (h - 1) * sh + (kh - 1) * dh + 1 + oph, (wd - 1) * sw + (kw - 1) * dw + 1 + opw
    full = np.zeros((n, og * groups, fh, fw))
    x, w = x.astype(np.float64), w.astype(np.float64)
    for g in range(groups):
        xg, wg = x[:, g * cg:(g + 1) * cg], w[g * cg:(g + 1) * cg]
        for a in range(kh):
            for b in range(kw):
                part = np.einsum("nchw,co->nohw", xg, wg[:, :, a, b])
                full[:, g * og:(g + 1) * og, a * dh:a * dh + (h - 1) * sh + 1:sh, b * dw:b * dw + (wd - 1) * sw + 1:sw] += part
    return full[:, :, pt:fh - pb, pl:fw - pr]


def _pool_out(n: int, window: int, stride: int, before: int, after: int, ceil: bool) -> int:
    """Output length of a pool: ``floor`` (or ``ceil``) ``((n + before + after - window) / stride) + 1``; in ceil
    mode less one when the last window would start at or past ``n + before`` (TOPI's and PyTorch's rule)."""
    span = n + before + after - window
    out = (-(-span // stride) if ceil else span // stride) + 1
    return out - 1 if ceil and (out - 1) * stride >= n + before else out


def _max_pool2d(x, attrs):
    pt, pl, pb, pr = (int(v) for v in attrs.padding)
    kh, kw = (int(v) for v in attrs.pool_size)
    sh, sw = (int(v) for v in attrs.strides)
    dh, dw = (int(v) for v in attrs.dilation)
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    oh = _pool_out(x.shape[2], eh, sh, pt, pb, bool(attrs.ceil_mode))
    ow = _pool_out(x.shape[3], ew, sw, pl, pr, bool(attrs.ceil_mode))
    # a ceil-mode window running past the padded input sees only what is inside: pad further with the lowest value
    pb, pr = max(pb, (oh - 1) * sh + eh - x.shape[2] - pt), max(pr, (ow - 1) * sw + ew - x.shape[3] - pl)
    lowest = _int_info(x.dtype).min if _int_info(x.dtype) is not None else -np.inf
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=lowest)
    win = sliding_window_view(x, (eh, ew), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw].max(axis=(4, 5))[:, :, :oh, :ow]


#: relax.nn.pad mode -> numpy.pad mode
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _pad(x, attrs):
    """``relax.nn.pad``: ``pad_width`` is ``[before_0, after_0, before_1, ...]``."""
    width = [int(v) for v in attrs.pad_width]
    pairs = [(width[k], width[k + 1]) for k in range(0, len(width), 2)]
    mode = _PAD_MODES[str(attrs.pad_mode)]
    if mode == "constant":
        return np.pad(x, pairs, constant_values=np.asarray(float(attrs.pad_value)).astype(x.dtype))
    return np.pad(x, pairs, mode=mode)


class Interpreter:
    """Evaluate ``mod["main"]`` with numpy.

    Parameters
    ----------
    mod : tvm.IRModule
        A realized module (the output of ``RealizeIntegerProgram``), before legalization.
    """

    def __init__(self, mod: tvm.IRModule):
        self.func = mod["main"]
        self.bindings = [b for blk in self.func.body.blocks for b in blk.bindings]

    def __call__(self, x: np.ndarray):
        param = self.func.params[0]
        env = {param: np.asarray(x, dtype=str(param.ty.dtype))}
        self.sym = {}
        for dim, size in zip(param.ty.shape.values, env[param].shape):
            if isinstance(dim, tvm.tirx.Var):
                self.sym[dim.name] = size
        for b in self.bindings:
            env[b.var] = self.eval(b.value, env, b.var)
        return self.eval(self.func.body.body, env, None)

    def eval(self, expr, env, var):
        if isinstance(expr, relax.Var):
            return env[expr]
        c = _const(expr)
        if c is not None:
            return c
        if isinstance(expr, relax.Tuple):
            return [self.eval(f, env, None) for f in expr.fields]
        if isinstance(expr, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):  # relax.prim_value in 0.27
            return expr.value
        if isinstance(expr, relax.ShapeExpr):
            return tuple(self.dim(v) for v in expr.values)
        if not isinstance(expr, relax.Call):
            raise NotImplementedError(f"reference: {type(expr).__name__}")
        name = expr.op.name
        fn = _OPS.get(name)
        args = [self.eval(a, env, None) for a in expr.args]
        if fn is None:
            return self.float_op(expr, args, name)
        out_dtype = str(var.ty.dtype) if var is not None and isinstance(var.ty, relax.TensorType) else None
        return fn(args, expr.attrs, out_dtype, name)


    #: the arithmetic a shape dimension is written with (``s * 1024``, ``(s * 49) // 7``)
    _DIM_OPS = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
                "FloorDiv": lambda a, b: a // b, "FloorMod": lambda a, b: a % b}

    def dim(self, v) -> int:
        """The value of shape dimension ``v``: a constant, the input's symbolic batch, or arithmetic of them."""
        if isinstance(v, tvm.tirx.IntImm):
            return int(v)
        if isinstance(v, tvm.tirx.Var):
            return self.sym[v.name]
        op = self._DIM_OPS.get(type(v).__name__)
        if op is None:
            raise NotImplementedError(f"reference: shape dimension {v}")
        return op(self.dim(v.a), self.dim(v.b))

    @staticmethod
    def float_op(call, args, name: str):
        """An op without a numpy rule: allowed on float values only (a float island, evaluated by TVM).

        Raises
        ------
        NotImplementedError
            If any array argument or the result is an integer: integer ops are what this reference checks, so
            each has its own numpy rule.
        """
        from .reference_float import run_float_op

        arrays = [a for arg in args for a in (arg if isinstance(arg, list) else [arg]) if isinstance(a, np.ndarray)]
        if any(not np.issubdtype(a.dtype, np.floating) for a in arrays):
            raise NotImplementedError(f"the numpy reference has no rule for the integer op {name}")
        out = run_float_op(call, args)
        if any(not np.issubdtype(o.dtype, np.floating) for o in (out if isinstance(out, list) else [out])):
            raise NotImplementedError(f"the numpy reference has no rule for {name} (an integer result)")
        return out


#: |x| below which an int64 result computed in float64 cannot have wrapped (float64 error << 2**62 margin)
_SAFE_INT64 = float(1 << 62)


def _exact_int(np_fn, a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """``np_fn(a, b)`` on integers without wrap-around: int64 where a float64 estimate shows it fits,
    else exactly in Python integers (so that the dtype check sees the true value)."""
    a, b = np.asarray(a), np.asarray(b)
    af, bf = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if np_fn is np.left_shift:
            est = af * np.exp2(bf)
        elif np_fn is np.right_shift:
            est = af
        else:
            est = np_fn(af, bf)
    if est.size == 0 or np.all(np.abs(est) < _SAFE_INT64):
        return np_fn(a.astype(np.int64), b.astype(np.int64))
    return np_fn(a.astype(object), b.astype(object))


def _binary(np_fn):
    def run(args, attrs, dtype, name):
        a, b = args
        if _int_info(dtype) is not None:
            return _checked(_exact_int(np_fn, a, b, name), dtype, name)
        return np_fn(a, b).astype(dtype)

    return run


def _astype(args, attrs, dtype, name):
    x = args[0]
    if _int_info(dtype) is not None and np.issubdtype(x.dtype, np.floating):
        if not np.all(x == np.trunc(x)):
            raise ValueError("reference: float-to-int cast of a non-integral value")
    return _checked(x, dtype, name) if _int_info(dtype) is not None else x.astype(dtype)


def _clip(args, attrs, dtype, name):
    return np.clip(args[0], args[1], args[2]).astype(dtype)


def _conv(args, attrs, dtype, name):
    return _checked(_conv2d(args[0], args[1], attrs), dtype, name)


def _matmul(args, attrs, dtype, name):
    return _checked(args[0].astype(np.float64) @ args[1].astype(np.float64), dtype, name)


def _sum(args, attrs, dtype, name):
    """Integers sum exactly in int64 (overflow-checked); a float tensor (a sum kept in float) sums in its own dtype,
    as TVM's reduction does, not truncated to integers."""
    axes = tuple(int(a) for a in attrs.axis)
    x = args[0]
    acc = np.int64 if _int_info(x.dtype) is not None else x.dtype
    return _checked(x.astype(acc).sum(axis=axes, keepdims=bool(attrs.keepdims)), dtype, name)


def _take(table, idx, attrs):
    """``table[idx]`` along ``attrs.axis``, out-of-range indices as ``attrs.mode`` says (an error for "fast")."""
    axis = int(attrs.axis) if attrs.axis is not None else 0
    mode = str(attrs.mode)
    if mode == "fast" and np.size(idx) and (int(np.min(idx)) < 0 or int(np.max(idx)) >= table.shape[axis]):
        raise IndexError(f"reference take: index outside the table of {table.shape[axis]} entries")
    return np.take(table, idx, axis=axis, mode="wrap" if mode == "wrap" else "clip")


def _axes(axes, ndim):
    return [int(a) for a in axes] if axes is not None else list(range(ndim))[::-1]


def _strided_slice(x, axes, begin, end, strides=None):
    index = [slice(None)] * x.ndim
    strides = strides if strides is not None else [1] * len(axes)
    for a, b, e, s in zip(axes, begin, end, strides):
        index[int(a)] = slice(int(b), int(e), int(s))
    return x[tuple(index)]


def _arg_reduce(np_fn):
    """``argmax``/``argmin``: the first index of the extreme value (TVM's default), keepdims as asked."""
    def run(args, attrs, dtype, name):
        x = args[0]
        if attrs.axis is None:
            out = np_fn(x.reshape(-1)).reshape((1,) * x.ndim if attrs.keepdims else ())
        else:
            out = np_fn(x, axis=int(attrs.axis), keepdims=bool(attrs.keepdims))
        return np.asarray(out).astype(dtype)

    return run


def _compare(np_fn):
    """A comparison (bool result) of floats or integers: exact in numpy for either."""
    return lambda a, at, dt, n: np_fn(a[0], a[1])


_OPS = {
    "relax.add": _binary(np.add),
    "relax.subtract": _binary(np.subtract),
    "relax.multiply": _binary(np.multiply),
    "relax.divide": lambda a, at, dt, n: np.divide(a[0], a[1]).astype(dt),
    "relax.right_shift": _binary(np.right_shift),
    # ASQ: the per-sample ratio beta_in / beta_out and bias (integer floor division)
    "relax.floor_divide": _binary(np.floor_divide),
    "relax.left_shift": _binary(np.left_shift),
    "relax.floor": lambda a, at, dt, n: np.floor(a[0]).astype(dt),
    "relax.clip": _clip,
    "relax.astype": _astype,
    "relax.nn.conv2d": _conv,
    "relax.matmul": _matmul,
    "relax.sum": _sum,
    "relax.reshape": lambda a, at, dt, n: a[0].reshape(a[1]),
    "relax.concat": lambda a, at, dt, n: np.concatenate(a[0], axis=int(at.axis)),
    "relax.nn.max_pool2d": lambda a, at, dt, n: _max_pool2d(a[0], at),
    "relax.nn.relu": lambda a, at, dt, n: np.maximum(a[0], 0).astype(dt),
    "relax.sigmoid": lambda a, at, dt, n: (1.0 / (1.0 + np.exp(-a[0]))).astype(dt),
    "relax.tanh": lambda a, at, dt, n: np.tanh(a[0]).astype(dt),
    # kernels branch: table lookups, data movement and the PReLU halves
    "relax.take": lambda a, at, dt, n: _take(a[0], a[1], at),
    "relax.permute_dims": lambda a, at, dt, n: np.transpose(a[0], _axes(at.axes, a[0].ndim)),
    "relax.strided_slice": lambda a, at, dt, n: _strided_slice(*a),
    "relax.repeat": lambda a, at, dt, n: np.repeat(a[0], int(at.repeats), axis=int(at.axis)),
    "relax.maximum": _binary(np.maximum),
    "relax.minimum": _binary(np.minimum),
    # branch import: padding
    "relax.nn.pad": lambda a, at, dt, n: _pad(a[0], at),
    # kinds2 branch: transposed and 1-D convolution
    "relax.nn.conv1d": lambda a, at, dt, n: _checked(_conv1d(a[0], a[1], at), dt, n),
    "relax.nn.conv2d_transpose": lambda a, at, dt, n: _checked(_conv2d_transpose(a[0], a[1], at), dt, n),
    # masks and indices a model computes from its data (kept in float, but not float values)
    "relax.argmax": _arg_reduce(np.argmax),
    "relax.argmin": _arg_reduce(np.argmin),
    "relax.greater": _compare(np.greater),
    "relax.greater_equal": _compare(np.greater_equal),
    "relax.less": _compare(np.less),
    "relax.less_equal": _compare(np.less_equal),
    "relax.equal": _compare(np.equal),
    "relax.not_equal": _compare(np.not_equal),
    "relax.logical_and": _compare(np.logical_and),
    "relax.logical_or": _compare(np.logical_or),
    "relax.logical_not": lambda a, at, dt, n: np.logical_not(a[0]),
    "relax.where": lambda a, at, dt, n: np.where(a[0], a[1], a[2]).astype(dt),
}


def run_reference(mod: tvm.IRModule, x: np.ndarray):
    """Run the realized ``mod`` on ``x`` with the numpy interpreter.

    Returns
    -------
    numpy.ndarray, or a tuple of them for a model with several outputs (in the module's output order)
    """
    out = Interpreter(mod)(x)
    return tuple(out) if isinstance(out, list) else out
