"""Pure-numpy scale arithmetic of the integer program (no TVM, no torch).

Conventions, used everywhere in gwq-tvm:

* A real value is ``r = s * q``; an asymmetric activation tensor (uint8 with a
  plan zero point ``z``, :class:`~gwq_tvm.plan.quantplan.TensorQuant`) is
  ``r = s * (q - z)`` (:mod:`gwq_tvm.plan.program` says how each kind keeps it exact).
* An unsigned ``b``-bit tensor holds ``q`` in ``[0, 2**b - 1]`` (``uint8``
  container); a signed one holds ``q`` in ``[-2**(b-1), 2**(b-1) - 1]`` (``int8``).
  Weights are narrow-symmetric: ``[-(2**(b-1) - 1), 2**(b-1) - 1]``.
* A scale is stored as ``s = mantissa * 2**exponent`` with ``mantissa`` in ``[1, 2)``.
* ``round_half_up(x) = floor(x + 1/2)``, the rounding of every shift below.
"""

from __future__ import annotations

import math

import numpy as np

#: Number of fractional bits of the fixed-point SFC multiplier (Q31).
Q_BITS = 31
#: Largest right shift used in an int64 SFC (keeps ``acc * m + 2**(shift-1)`` in int64).
MAX_SHIFT = 62


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of an activation tensor.

    >>> qrange(8, False), qrange(8, True), qrange(2, True)
    ((0, 255), (-128, 127), (-2, 1))
    """
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def weight_qmax(bits: int) -> int:
    """Largest weight magnitude of narrow-symmetric ``bits``-bit weights (127 for 8)."""
    return (1 << (bits - 1)) - 1


def split_scale(scale: float) -> tuple[float, int]:
    """Split ``scale > 0`` into ``(mantissa, exponent)`` with ``mantissa`` in [1, 2).

    >>> split_scale(0.375)
    (1.5, -2)
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite; got {scale}")
    m, e = math.frexp(scale)  # scale = m * 2**e, m in [0.5, 1)
    return m * 2.0, e - 1


def activation_scale(clip: float, bits: int, signed: bool) -> float:
    """Scale mapping the clipping range ``[-clip, clip]`` (or ``[0, clip]``) onto the grid.

    The positive end of the grid, ``qmax``, represents ``clip``.  A zero or
    non-finite ``clip`` (a tensor that is always 0) gets scale 1.
    """
    qmax = qrange(bits, signed)[1]
    if not (clip > 0 and math.isfinite(clip)):
        return 1.0
    return float(clip) / qmax


def weight_scales(weight: np.ndarray, bits: int, per_channel: bool) -> np.ndarray:
    """Symmetric max-calibrated weight scales, shape ``(C_out,)``.

    ``weight`` has the output channels on axis 0 (OIHW conv weights, or
    ``(out, in)`` dense weights).  All-zero channels get scale 1.
    """
    w = np.abs(weight.reshape(weight.shape[0], -1).astype(np.float64))
    amax = w.max(axis=1) if per_channel else np.full(weight.shape[0], w.max())
    scales = amax / weight_qmax(bits)
    return np.where(scales > 0, scales, 1.0)


def pot_weight_scales(weight: np.ndarray, bits: int, per_channel: bool) -> np.ndarray:
    """Max-calibrated weight scales rounded *up* to powers of two (no weight is clipped).

    Measured on the bundled model at W4A8: rounding up loses 0.7 pt against
    free scales, choosing the power of two of least weight MSE (which clips the
    largest weights) loses 2.5 pt.
    """
    return np.exp2(np.ceil(np.log2(weight_scales(weight, bits, per_channel))))


def quantize_weight(weight: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """``clip(rint(w / s))`` as int8, channels on axis 0.

    ``scales`` is one scale per output channel, or a scale map with the
    weight's rank (broadcastable to it: block granularity).
    """
    scales = np.asarray(scales, dtype=np.float64)
    if scales.ndim != weight.ndim:
        scales = scales.reshape((-1,) + (1,) * (weight.ndim - 1))
    q = np.rint(weight.astype(np.float64) / scales)
    qmax = weight_qmax(bits)
    return np.clip(q, -qmax, qmax).astype(np.int8)


#: Largest ``|q_b|`` a bias takes in the int32 accumulator: half its range, the products get the rest.
BIAS_LIMIT = np.iinfo(np.int32).max // 2


def quantize_bias(bias: np.ndarray, acc_scales: np.ndarray) -> np.ndarray:
    """``rint(b / (s_in * s_w,c))`` as int32; raises ``OverflowError`` when some ``|q_b| >`` :data:`BIAS_LIMIT`."""
    q = np.rint(bias.astype(np.float64) / acc_scales)
    if np.any(np.abs(q) > BIAS_LIMIT):
        raise OverflowError("bias does not fit the int32 accumulator at this scale")
    return q.astype(np.int32)


def is_power_of_two(x: np.ndarray) -> np.ndarray:
    """Elementwise: is ``x`` exactly ``2**k`` for an integer ``k`` (x > 0)?"""
    x = np.asarray(x, dtype=np.float64)
    m, _ = np.frexp(x)
    return (x > 0) & (m == 0.5)


def exact_log2(x: np.ndarray) -> np.ndarray:
    """``log2(x)`` as int64 for exact powers of two (check with :func:`is_power_of_two`)."""
    _, e = np.frexp(np.asarray(x, dtype=np.float64))
    return (e - 1).astype(np.int64)


def quantize_multiplier(ratio: np.ndarray, bits: int = Q_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Dyadic form ``ratio ~= m * 2**-shift`` with a Q31 (or ``Q<bits>``) mantissa ``m``.

    Returns int64 arrays ``(m, shift)`` with ``m`` in ``[2**(bits-1), 2**bits)``
    (relative error of ``m * 2**-shift`` at most ``2**-bits``) and
    ``1 <= shift <= MAX_SHIFT`` (``m == 0`` for a zero ratio).  Ratios so
    small that ``shift`` would exceed ``MAX_SHIFT`` lose low mantissa bits.

    >>> quantize_multiplier(np.array([0.5, 0.1]))
    (array([1073741824, 1717986918]), array([31, 34]))
    """
    r = np.asarray(ratio, dtype=np.float64)
    if np.any(r < 0) or not np.all(np.isfinite(r)):
        raise ValueError("SFC ratios must be finite and non-negative")
    frac, exp = np.frexp(r)  # r = frac * 2**exp, frac in [0.5, 1)
    m = np.rint(frac * (1 << bits)).astype(np.int64)
    shift = (bits - exp).astype(np.int64)
    carry = m == (1 << bits)  # rounding up to 1.0
    m = np.where(carry, m >> 1, m)
    shift = np.where(carry, shift - 1, shift)
    if np.any((shift < 1) & (m > 0)):
        raise ValueError(f"SFC ratio too large for a Q{bits} multiplier: {r.max()}")
    excess = np.maximum(shift - MAX_SHIFT, 0)
    m = m >> np.minimum(excess, 62)
    shift = shift - excess
    zero = m == 0
    return np.where(zero, 0, m), np.where(zero, 1, shift)


def round_shift(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``floor(x / 2**shift + 1/2)`` for integer ``x`` (numpy int64), ``shift >= 0``."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    rounding = (np.int64(1) << shift) >> 1
    return (x + rounding) >> shift
