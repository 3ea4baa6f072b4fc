"""Window average pooling with any padding, ``count_include_pad`` and ``ceil_mode`` (no dilation).

``acc = sum_window q_in`` in int32 (a depthwise conv by ones over the
zero-padded input; zero points are 0), scale ``s_in / (kh*kw)``, then the SFC
into the output.

When the divisor differs between output positions (padding not counted, or a
ceil-mode window running past the input) each position ``(i, j)`` divides by
its own count ``n_ij = r_i * c_j`` (rows times columns of the window inside
the counted region).  The sums are brought to one denominator
``L = lcm_ij(n_ij)`` with an integer factor per position::

    acc_ij = (sum_window q_in)_ij * (L / n_ij)          scale s_in / L

so one SFC still serves the whole tensor and the arithmetic stays exact.
Pools with ``L * qmax`` beyond :data:`MAX_DENOMINATOR_RANGE` are left in
float.  The window counts follow PyTorch/ONNX (and TVM's ``avg_pool2d``): a
ceil-mode window that would start in the trailing padding is dropped.
"""

from __future__ import annotations

import math

import numpy as np

from ..plan import program as P
from . import register
from .layer import AccumulatingKind, pads

#: the largest ``L * 255`` accepted (the int32 accumulator keeps headroom)
MAX_DENOMINATOR_RANGE = 1 << 28


def window_counts(n: int, k: int, s: int, before: int, after: int, ceil: bool, include_pad: bool) -> list[int]:
    """Elements each output position of a 1-D pool divides by.

    ``out = floor_or_ceil((n + before + after - k) / s) + 1``, less one when a
    ceil-mode last window starts at or past ``n + before``; the window
    ``[i*s - before, i*s - before + k)`` is clipped to ``[-before, n + after)``,
    and to ``[0, n)`` when padding is not counted.
    """
    span = n + before + after - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + before:
        out -= 1
    counts = []
    for i in range(out):
        lo, hi = i * s - before, min(i * s - before + k, n + after)
        if not include_pad:
            lo, hi = max(lo, 0), min(hi, n)
        counts.append(hi - lo)
    return counts


def adaptive_windows(size: tuple, out: tuple) -> tuple | None:
    """``(pool_size, strides)`` of an adaptive average pool from ``size`` (H, W) to ``out``, when it is one.

    PyTorch's adaptive window ``i`` spans ``[floor(i*H/oh), ceil((i+1)*H/oh))``;
    where ``oh`` divides ``H`` these are the disjoint windows of an average pool
    with kernel and stride ``H / oh`` (``out == size``: windows of one element).
    Otherwise windows differ in size or overlap: ``None``.
    """
    if any(o < 1 or n % o for n, o in zip(size, out)):
        return None
    k = [n // o for n, o in zip(size, out)]
    return k, k


class AvgPool(AccumulatingKind):
    name = "avgpool"
    ops = ("relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")

    def match(self, w, i, call) -> bool:
        from ..ir import static_shape

        if call.op.name == "relax.nn.adaptive_avg_pool2d":
            return self._match_adaptive(w, i, call)
        a = call.attrs
        if a.layout != "NCHW" or any(int(d) != 1 for d in a.dilation):
            return False
        ints = lambda v: [int(x) for x in v]  # noqa: E731
        attrs = dict(pool_size=ints(a.pool_size), strides=ints(a.strides), padding=ints(a.padding))
        (kh, kw), (sh, sw), (top, left, bottom, right) = attrs["pool_size"], attrs["strides"], attrs["padding"]
        shape = static_shape(call.args[0])
        if len(shape) != 4 or min(shape[2:]) < 1:
            return False
        ceil, include = bool(a.ceil_mode), bool(a.count_include_pad)
        rows = window_counts(shape[2], kh, sh, top, bottom, ceil, include)
        cols = window_counts(shape[3], kw, sw, left, right, ceil, include)
        if set(rows) != {kh} or set(cols) != {kw}:
            denominator = math.lcm(*{r * c for r in rows for c in cols})
            if denominator * 255 > MAX_DENOMINATOR_RANGE:
                return False
            # the zero padding the window sums need: enough for the last window, no rows a dropped one would read
            bottom_sum = max(0, (len(rows) - 1) * sh + kh - shape[2] - top)
            right_sum = max(0, (len(cols) - 1) * sw + kw - shape[3] - left)
            attrs.update(window_rows=rows, window_cols=cols, sum_padding=[top, left, bottom_sum, right_sum],
                         ceil_mode=ceil, count_include_pad=include)
        w.add("avgpool", w.bindings[i].var, [call.args[0]], attrs=attrs)
        return True

    def _match_adaptive(self, w, i, call) -> bool:
        """``adaptive_avg_pool2d`` to a size dividing the input's (a VGG/AlexNet head's ``AdaptiveAvgPool2d(7)``
        on a 7x7 map, an identity): the uniform pool of :func:`adaptive_windows`.  Pools to 1x1 are left to
        :mod:`.global_avgpool`."""
        from ..ir import static_shape

        shape = static_shape(call.args[0])
        if call.attrs.layout != "NCHW" or len(shape) != 4 or min(shape[2:]) < 1:
            return False
        out = tuple(int(v) for v in call.attrs.output_size) if call.attrs.output_size is not None else shape[2:]
        out = out * 2 if len(out) == 1 else out
        windows = adaptive_windows(shape[2:], out)
        if windows is None or out == (1, 1):
            return False
        kernel, strides = windows
        w.add("avgpool", w.bindings[i].var, [call.args[0]], attrs=dict(pool_size=kernel, strides=strides, padding=[0, 0, 0, 0]))
        return True

    @staticmethod
    def _counts(node) -> np.ndarray | None:
        """``n_ij`` (rows x columns), ``None`` for a uniform pool."""
        if "window_rows" not in node.attrs:
            return None
        return np.outer(node.attrs["window_rows"], node.attrs["window_cols"]).astype(np.int64)

    def window(self, graph, node) -> int:
        counts = self._counts(node)
        if counts is None:
            return int(np.prod(node.attrs["pool_size"]))
        return math.lcm(*np.unique(counts).tolist())

    def accumulator(self, graph, node, plan) -> P.Accumulator:
        return P.pool_accumulator(node, plan, self.window(graph, node))

    @staticmethod
    def _sum_padding(node) -> list:
        return node.attrs.get("sum_padding", node.attrs["padding"])

    @classmethod
    def _window_conv(cls, R, x, node, ones, **kw):
        """The window sum (or mean) as a depthwise conv by a constant window."""
        return R.nn.conv2d(x, ones, strides=node.attrs["strides"], padding=cls._sum_padding(node),
                           groups=node.shape[1], **kw)

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        acc = self.accumulator(em.graph, node, em.plan)
        kh, kw = node.attrs["pool_size"]
        ones = em.const(np.ones((node.shape[1], 1, kh, kw), dtype="int8"), "int8")
        y = em.emit(self._window_conv(R, em.as_int(node.inputs[0]), node, ones, out_dtype="int32"))
        counts = self._counts(node)
        if counts is not None:
            factors = (acc.window // counts).reshape((1, 1) + counts.shape)
            y = em.emit(R.multiply(y, em.const(factors, "int32")))
        em.finish_acc(node, y, acc)

    def simulate(self, em, node) -> None:
        from tvm.relax import op as R

        kh, kw = node.attrs["pool_size"]
        counts = self._counts(node)
        ones = em.const(np.full((node.shape[1], 1, kh, kw), 1.0 if counts is not None else 1.0 / (kh * kw)))
        y = em.emit(self._window_conv(R, em.values[node.inputs[0]], node, ones))
        if counts is not None:
            y = em.emit(R.multiply(y, em.const((1.0 / counts).reshape((1, 1) + counts.shape))))
        em.finish(node, y)

    def _torch_pool(self, node, t):
        import torch
        import torch.nn.functional as F

        top, left, bottom, right = pads(self._sum_padding(node))
        kh, kw = node.attrs["pool_size"]
        y = F.avg_pool2d(F.pad(t, (left, right, top, bottom)), (kh, kw), tuple(node.attrs["strides"]))
        counts = self._counts(node)
        if counts is not None:
            y = y * torch.from_numpy((kh * kw) / counts).to(y.dtype)
        return y

    def qat(self, run, node) -> None:
        import torch

        src = node.inputs[0]
        window = self.window(run.graph, node)
        v = self._torch_pool(node, run.x[src])
        acc_int = torch.round(self._torch_pool(node, run.q[src].to(torch.float64)) * window).to(torch.int64)
        unit = run.s(src) / window
        run.finish_acc(node, v, acc_int, np.array([run.plan.scale(run.graph.tensor_of(src)) / window]), unit)

    def float_torch(self, node, ins):
        return self._torch_pool(node, ins[0])

    def to_onnx(self, writer, node, raw):
        a = node.attrs
        writer.node("AveragePool", list(node.inputs), raw, kernel_shape=list(a["pool_size"]), strides=list(a["strides"]),
                    pads=list(a["padding"]), count_include_pad=int(a.get("count_include_pad", True)),
                    ceil_mode=int(a.get("ceil_mode", False)))


register(AvgPool())
