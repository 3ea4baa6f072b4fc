"""Bilinear resize (ONNX Resize ``linear``, torch ``interpolate(mode="bilinear")``) with fixed-point weights.

Along one axis of ``n`` inputs and ``m`` outputs, output ``o`` reads source
coordinate ``c(o)`` (``half_pixel``: ``(o + 1/2) n/m - 1/2``, torch's
``align_corners=False``; ``pytorch_half_pixel``: the same, ``0`` when ``m = 1``;
``asymmetric``: ``o n/m``; ``align_corners``: ``o (n-1)/(m-1)``), computed
exactly in rationals at compile time.  With ``i = floor(c)`` and
``f = c - i``, the taps are ``clamp(i)`` and ``clamp(i + 1)`` (clamped into
``[0, n)``, as TVM and ONNX do) with integer weights::

    w1 = floor(f * 2**F + 1/2),  w0 = 2**F - w1          (F = FRACTION_BITS)

The 2-D resize is separable; both passes stay in int32 and share the one
denominator ``2**(2F)``, and the output keeps the input's scale (a
passthrough-scale kind like nearest resize)::

    t[.., y, o] = w0_W[o] * q[.., y, i0_W[o]] + w1_W[o] * q[.., y, i1_W[o]]
    acc[.., p, o] = w0_H[p] * t[.., i0_H[p], o] + w1_H[p] * t[.., i1_H[p], o]
    q_out = (acc + 2**(2F-1)) >> 2F                        (round half up)

A convex combination of codes stays inside the code range, so no clip is
needed; ``|acc| <= 128 * 2**(2F) < 2**31``.

**Error bound.**  The fixed-point weights are the only approximation: each
``|w1 / 2**F - f| <= 2**-(F+1)``, so one pass is off by at most
``2**-(F+1) * R`` (``R = qmax - qmin``, the largest tap difference) and the
two passes by at most ``R * 2**-F`` codes before the final rounding: with
``F = 11`` and 8 bits, ``255 / 2048 < 0.125`` of an output step, i.e. the result
is within ``0.5 + 0.125`` steps of float bilinear on the same input codes.
When every ``f * 2**F`` is an integer (factor-2 and factor-4 upsampling in
every mode but ``align_corners``) the weights are exact and only the final
round-half-up remains.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..plan import program as P
from . import register
from .base import Kind

#: fractional bits of each axis's weights (the two passes share the denominator 2**(2F))
FRACTION_BITS = 11

#: coordinate_transformation_mode -> source coordinate of output o (n inputs, m outputs), exact
COORDINATES = {
    "half_pixel": lambda o, n, m: (o + Fraction(1, 2)) * Fraction(n, m) - Fraction(1, 2),
    "pytorch_half_pixel": lambda o, n, m: (o + Fraction(1, 2)) * Fraction(n, m) - Fraction(1, 2) if m > 1 else Fraction(0),
    "asymmetric": lambda o, n, m: o * Fraction(n, m),
    "align_corners": lambda o, n, m: o * Fraction(n - 1, m - 1) if m > 1 else Fraction(0),
}


def linear_taps(n: int, m: int, mode: str, bits: int | None = FRACTION_BITS) -> tuple:
    """``(i0, i1, w0, w1)`` arrays of length ``m``: the two taps and integer weights (sum ``2**bits``) per output.

    ``bits=None`` gives the exact float weights ``1 - f, f`` (float bilinear, the QAT teacher).
    """
    i0, i1, w1 = [], [], []
    for o in range(m):
        c = COORDINATES[mode](o, n, m)
        i = c.numerator // c.denominator
        f = c - i  # in [0, 1)
        w1.append(float(f) if bits is None else int(f * (1 << bits) + Fraction(1, 2)))  # floor(f * 2**bits + 1/2)
        i0.append(min(max(i, 0), n - 1))
        i1.append(min(max(i + 1, 0), n - 1))
    w1 = np.array(w1, dtype=np.float64 if bits is None else np.int64)
    return np.array(i0, dtype=np.int64), np.array(i1, dtype=np.int64), (1 if bits is None else 1 << bits) - w1, w1


class ResizeBilinear(Kind):
    name = "resize_bilinear"
    ops = ("relax.image.resize2d",)
    passthrough = True

    def match(self, w, i, call) -> bool:
        from tvm import relax

        from ..ir import static_shape

        x, a = call.args[0], call.attrs
        mode = str(a.coordinate_transformation_mode)
        if not isinstance(x, relax.Var) or x not in w.var_node or a.layout != "NCHW":
            return False
        if a.method != "linear" or mode not in COORDINATES:
            return False
        (_, _, h, wd), (_, _, oh, ow) = static_shape(x), static_shape(w.bindings[i].var)
        if min(h, wd, oh, ow) < 1:
            return False
        w.add(self.name, w.bindings[i].var, [x], attrs=dict(size=(oh, ow), in_size=(h, wd), mode=mode))
        return True

    @staticmethod
    def taps(node, in_shape, bits: int | None = FRACTION_BITS) -> list:
        """``[(i0, i1, w0, w1)]`` of the H and W axes (the recipe; exact float weights for ``bits=None``)."""
        (oh, ow), mode = node.attrs["size"], node.attrs["mode"]
        return [linear_taps(in_shape[2], oh, mode, bits), linear_taps(in_shape[3], ow, mode, bits)]

    # --- the two passes, written once per array library ----------------------------
    def _relax(self, em, x, node, in_shape, integer: bool):
        from tvm.relax import op as R

        y = em.emit(R.astype(x, "int32")) if integer else x
        for axis, (i0, i1, w0, w1) in zip((2, 3), self.taps(node, in_shape)):
            shape = (-1, 1) if axis == 2 else (-1,)
            if integer:
                c0, c1 = (em.const(v.reshape(shape), "int32") for v in (w0, w1))
            else:  # the simulator: the same fixed-point weights, in its float dtype
                c0, c1 = (em.const(v.reshape(shape) * 2.0**-FRACTION_BITS) for v in (w0, w1))
            a = em.emit(R.multiply(R.take(y, em.const(i0, "int64"), axis=axis), c0))
            b = em.emit(R.multiply(R.take(y, em.const(i1, "int64"), axis=axis), c1))
            y = em.emit(R.add(a, b))
        return y

    def realize(self, em, node) -> None:
        from tvm.relax import op as R

        src = node.inputs[0]
        acc = self._relax(em, em.as_int(src), node, em.graph.nodes[src].shape, True)
        shift = 2 * FRACTION_BITS
        acc = em.emit(R.right_shift(R.add(acc, em.const(1 << (shift - 1), "int32")), em.const(shift, "int32")))
        em.set_int(node, em.emit(R.astype(acc, P.container(em.plan.tensors[em.graph.tensor_of(src)]))))

    def simulate(self, em, node) -> None:
        src = node.inputs[0]
        em.values[node.name] = self._relax(em, em.values[src], node, em.graph.nodes[src].shape, False)

    def _torch(self, t, node, in_shape, bits: int | None = FRACTION_BITS):
        """The two passes in torch: integer weights on int64 codes, or (``bits=None``) exact float bilinear."""
        import torch

        for axis, (i0, i1, w0, w1) in zip((2, 3), self.taps(node, in_shape, bits)):
            shape = (-1, 1) if axis == 2 else (-1,)
            c0, c1 = (torch.from_numpy(v.reshape(shape)) for v in (w0, w1))
            if t.is_floating_point():
                c0, c1 = c0.to(t.dtype), c1.to(t.dtype)
            t = t.index_select(axis, torch.from_numpy(i0)) * c0 + t.index_select(axis, torch.from_numpy(i1)) * c1
        return t

    def qat(self, run, node) -> None:
        import torch

        from ..qat.fakequant import ste

        src = node.inputs[0]
        shape = run.graph.nodes[src].shape
        shift = 2 * FRACTION_BITS
        q = (self._torch(run.q[src].to(torch.int64), node, shape) + (1 << (shift - 1))) >> shift
        v = self._torch(run.x[src], node, shape, None)
        run.q[node.name] = q
        run.x[node.name] = ste(v, q.to(v.dtype) * run.s(node.name))

    def float_torch(self, node, ins):
        return self._torch(ins[0], node, (None, None) + tuple(ins[0].shape[2:]), None)

    def to_onnx(self, writer, node, raw):
        (oh, ow), (h, w) = node.attrs["size"], node.attrs["in_size"]
        scales = writer.const(f"{node.name}_scales", np.array([1, 1, oh / h, ow / w], np.float32))
        writer.node("Resize", [node.inputs[0], "", scales], raw, mode="linear",
                    coordinate_transformation_mode=node.attrs["mode"])


register(ResizeBilinear())
