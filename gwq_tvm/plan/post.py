"""POST (power-of-square-root-of-two) weights, post-training (ASQ, seed 004), as exact integers (numpy).

A b-bit POST layer has ``2**b - 1`` levels per output channel ``c``::

    {0} U {±alpha_c * (sqrt 2)**(-i) : i = 0 .. L-1},   L = 2**(b-1) - 1

with ``alpha_c`` the channel's clip.  The integer program holds each level as
an exact integer of a per-channel fixed-point unit ``s_c = alpha_c * 2**-F``::

    alpha_c * (sqrt 2)**(-i)  ~=  T[i] * s_c,      T[i] = rint((sqrt 2)**(-i) * 2**F)

with :data:`FRAC_BITS` ``F = 6``: ``T[0] = 64`` and every ``|T[i]| <= 64`` is an
int8, so the layer runs on the ordinary int8 x int8 -> int32 conv/dense and its
accumulator bound is at most that of uniform int8 weights.  ``F = 7`` would give
``T[0] = 128``, outside int8.  The levels of the plan ARE ``T[i] * s_c`` (the
program is defined by the integers): at 4 bits ``T = 64, 45, 32, 23, 16, 11, 8``
(each within 1.6 % of the exact power of sqrt 2); at 5 bits the smallest
levels collapse (``T[11..14] = 1, 1, 1, 0``: an int8 table cannot hold
``2**-7`` at ``F = 6``), so a 5-bit layer has fewer distinct levels than 31.  An
int16 table would keep them distinct but would leave the int8 dot-product kernels.

The plan's ``scales`` of a POST layer are the units ``s_c`` (``alpha_c = 2**F * s_c``),
so the SFC absorbs ``s_c`` exactly as for uniform weights: with ``s_c`` a power of
two (``pot``/``gwq`` modes, ``alpha_c = 2**(F+k)``) in-group SFCs stay shifts.

Codes: level ``±(i+1)`` (sign of the weight, magnitude index ``i``) and ``0`` are the
signed index ``j in [-L, L]``; the program stores its b-bit two's-complement
pattern ``u = j mod 2**b`` (uint8), and the weights are ``table[u]`` with the
``2**b``-entry :func:`code_table` (``table[0] = 0``, ``table[2**(b-1)] = 0``
unused).  Quantization picks the nearest level of ``w / s_c``; a tie goes to the
smaller magnitude (zero included: a weight half way between 0 and the
smallest level becomes 0).
"""

from __future__ import annotations

import numpy as np

#: fractional bits of the level table: ``T[i] = rint(2**(-i/2) * 2**FRAC_BITS)``
FRAC_BITS = 6
#: POST bit-widths the plan accepts (a 2-bit layer is ternary: ``{0, ±alpha}``)
MIN_BITS, MAX_BITS = 2, 5
#: the percentile of ``|W_c|`` the clip search starts from
ALPHA_PERCENTILE = 99.5
#: clip candidates, as multiples of that percentile (per-layer mode)
ALPHA_FACTORS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25)


def magnitudes(bits: int) -> int:
    """``L = 2**(bits-1) - 1``: the number of non-zero level magnitudes."""
    return (1 << (bits - 1)) - 1


def level_table(bits: int) -> np.ndarray:
    """``T[i] = rint((sqrt 2)**(-i) * 2**F)``, ``i = 0 .. L-1`` (int64, non-increasing)."""
    i = np.arange(magnitudes(bits), dtype=np.float64)
    return np.rint(np.exp2(FRAC_BITS - i / 2.0)).astype(np.int64)


def code_table(bits: int) -> np.ndarray:
    """The ``2**bits``-entry int8 table indexed by the code ``u = j mod 2**bits`` of signed index ``j``:
    ``table[j] = T[j-1]``, ``table[2**bits - j] = -T[j-1]`` (``j = 1..L``), ``table[0] = 0``."""
    t = level_table(bits)
    out = np.zeros(1 << bits, dtype=np.int8)
    j = np.arange(1, t.size + 1)
    out[j] = t
    out[(1 << bits) - j] = -t
    return out


def signed_levels(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct integer levels in ascending order with the signed index ``j`` each is reached by
    (the smallest ``|j|`` among equal levels, so duplicates at 5 bits are never chosen)."""
    t = level_table(bits)
    vals = np.concatenate([-t, [0], t[::-1]])
    idx = np.concatenate([-np.arange(1, t.size + 1), [0], np.arange(t.size, 0, -1)])
    order = np.lexsort((np.abs(idx), vals))
    vals, idx = vals[order], idx[order]
    keep = np.concatenate([[True], vals[1:] != vals[:-1]])
    return vals[keep], idx[keep]


def quantize_indices(weight: np.ndarray, unit: np.ndarray, bits: int) -> np.ndarray:
    """Signed level indices ``j`` (int8) of ``weight`` at units ``unit`` (broadcastable, channels first).

    ``j = argmin_j |w / s_c - level(j)|``, ties to the smaller magnitude.
    """
    vals, idx = signed_levels(bits)
    x = np.asarray(weight, dtype=np.float64) / np.asarray(unit, dtype=np.float64)
    pos = np.clip(np.searchsorted(vals, x), 1, vals.size - 1)
    lo, hi = vals[pos - 1], vals[pos]
    # the midpoint goes to the smaller |level|: on the positive side the lower, on the negative the upper
    mid = (lo + hi) / 2.0
    take_hi = (x > mid) | ((x == mid) & (np.abs(hi) < np.abs(lo)))
    return np.where(take_hi, idx[pos], idx[pos - 1]).astype(np.int8)


def codes(indices: np.ndarray, bits: int) -> np.ndarray:
    """The stored codes: the b-bit two's-complement pattern ``u = j mod 2**bits`` (uint8)."""
    return (np.asarray(indices, dtype=np.int64) % (1 << bits)).astype(np.uint8)


def indices_of_codes(u: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`codes`: ``j = u - 2**bits`` for ``u >= 2**(bits-1)``, else ``u``."""
    u = np.asarray(u, dtype=np.int64)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u).astype(np.int8)


def integer_weights(indices: np.ndarray, bits: int) -> np.ndarray:
    """``sign(j) * T[|j|-1]`` (0 for ``j = 0``), int8: the integer weights the program computes."""
    return code_table(bits)[codes(indices, bits)]


def choose_units(weight: np.ndarray, bits: int, pot: bool) -> np.ndarray:
    """Per-output-channel units ``s_c = alpha_c * 2**-F`` by weight-quantization MSE (post-training).

    ``alpha_c`` starts at the :data:`ALPHA_PERCENTILE` percentile ``p_c`` of ``|W_c|``; the candidates
    are ``p_c * f`` for ``f`` in :data:`ALPHA_FACTORS`, or with ``pot`` (power-of-two units, so that
    SFCs can be shifts) ``2**k`` for the four ``k`` around ``log2(p_c * 2**-F)``.  Each channel takes
    the candidate minimising ``sum (w - s_c * level)**2``.  An all-zero channel gets ``s_c = 2**-F``.
    """
    w = np.asarray(weight, dtype=np.float64).reshape(weight.shape[0], -1)
    p = np.percentile(np.abs(w), ALPHA_PERCENTILE, axis=1)
    p = np.where(p > 0, p, 1.0)
    base = p * 2.0 ** -FRAC_BITS
    if pot:
        k = np.floor(np.log2(base))
        cands = np.stack([np.exp2(k + d) for d in (-1, 0, 1, 2)], axis=1)
    else:
        cands = base[:, None] * np.asarray(ALPHA_FACTORS)[None, :]
    table = code_table(bits).astype(np.float64)
    err = np.empty(cands.shape)
    for j in range(cands.shape[1]):
        s = cands[:, j:j + 1]
        q = table[codes(quantize_indices(w, s, bits), bits)] * s
        err[:, j] = ((w - q) ** 2).sum(axis=1)
    return cands[np.arange(w.shape[0]), err.argmin(axis=1)]
