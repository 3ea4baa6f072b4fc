"""Scale-factor conversion (SFC) decisions: a shift where the ratio allows, else a multiply.

An SFC rescales integers from scale ``s_from`` to ``s_to`` by the ratio
``M = s_from / s_to`` (per channel where the source is per channel):

* ``identity``: ``M == 1`` everywhere; nothing is emitted.
* ``shift``: every ``M_c`` is ``2**(-k_c)``:
  ``q = (x << max(-k, 0) + 2**(k-1)) >> max(k, 0)``, no multiply.
* ``multiply``: ``M_c ~= m_c * 2**(-n_c)`` with a Q31 ``m_c``:
  ``q = (int64(x) * m_c + 2**(n_c - 1)) >> n_c``.

A requantizing multiply (an SFC followed by a clip to ``[qmin, qmax]``) runs
in int32 instead where :func:`int32_multiply` finds a ``Q<b>`` mantissa,
``b >= INT32_MIN_BITS``, for which no intermediate can leave int32:

* ``x_c`` is first clipped to ``[lo_c, hi_c]``, the widest range outside of which
  the result clips anyway: ``lo_c = floor(((qmin+1) * 2**n_c - 2**(n_c-1) - 1) / m_c)``,
  ``hi_c = ceil((qmax * 2**n_c - 2**(n_c-1)) / m_c)``.  As
  ``x -> (x * m + 2**(n-1)) >> n`` is monotone, this changes no result; it is
  only emitted where it is tighter than the accumulator bound ``B``;
* then ``max_c(min(B, max(|lo_c|, |hi_c|)) * m_c + 2**(n_c-1)) <= 2**31 - 1``.

The clip bounds ``|x| * m`` by about ``(|qmax| + 1) * 2**n``, so ``n <= 23`` for
int8 outputs and ``b ~= 23 + log2(M)`` mantissa bits remain.  The fewer mantissa
bits change ``M``'s dyadic approximation by a relative ``2**-b`` at most (an output
of magnitude ``y`` moves by ``y * 2**-b`` before rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import scales as S

INT32_MAX = (1 << 31) - 1
#: Fewest mantissa bits an int32 requantizing multiply may keep (else it stays a Q31 multiply in int64).
#: An output ``|y| <= 128`` moves by at most ``128 * 2**-12 = 1/32`` of a step before rounding.  Measured on
#: the bundled models (10k Fashion-MNIST test images, per-layer and GWQ plans): SQNR against fp32 within
#: +-0.02 dB of the Q31 program's, top-1 changed by at most 2 images in 10k.
INT32_MIN_BITS = 12


@dataclass(frozen=True)
class SFC:
    """One scale-factor conversion with its integer constants (arrays of shape ``(C,)``).

    For ``shift``: ``left`` and ``right`` are the per-channel shift amounts.
    For ``multiply``: ``multiplier`` and ``right`` (total right shift).
    """

    kind: str
    ratio: np.ndarray
    multiplier: np.ndarray | None = None
    left: np.ndarray | None = None
    right: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return int(self.ratio.size)


def make_sfc(ratio) -> SFC:
    """Choose the cheapest exact integer form of the ratio(s) ``M``.

    >>> make_sfc([0.25, 2.0]).kind, make_sfc([0.3]).kind, make_sfc(1.0).kind
    ('shift', 'multiply', 'identity')
    """
    r = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    if np.all(r == 1.0):
        return SFC("identity", r)
    if np.all(S.is_power_of_two(r)):
        k = -S.exact_log2(r)
        return SFC("shift", r, left=np.maximum(-k, 0), right=np.maximum(k, 0))
    m, n = S.quantize_multiplier(r)
    return SFC("multiply", r, multiplier=m, right=n)


def apply_sfc(x: np.ndarray, sfc: SFC, axis: int = 1) -> np.ndarray:
    """Numpy semantics of an SFC on integer ``x`` (returns int64, unclipped).

    Mirrors exactly what :mod:`gwq_tvm.passes.realize` emits; used by tests and
    by the plan-level simulation.
    """
    x = np.asarray(x, dtype=np.int64)
    shape = [1] * x.ndim
    if sfc.channels > 1:
        shape[axis] = sfc.channels

    def c(a):
        return np.asarray(a, dtype=np.int64).reshape(shape) if sfc.channels > 1 else np.int64(a[0])

    if sfc.kind == "identity":
        return x
    if sfc.kind == "shift":
        return S.round_shift(x << c(sfc.left), c(sfc.right))
    return S.round_shift(x * c(sfc.multiplier), c(sfc.right))


def _clip_bounds(m: np.ndarray, n: np.ndarray, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the widest ``[lo, hi]`` with ``f(lo) <= qmin`` and ``f(hi) >= qmax`` for
    ``f(x) = (x * m + 2**(n-1)) >> n`` (exact Python integers; channels with ``m == 0`` get ``[0, 0]``)."""
    lo, hi = [], []
    for mc, nc in zip(m.tolist(), n.tolist()):
        if mc == 0:
            lo.append(0)
            hi.append(0)
            continue
        half = 1 << (nc - 1)
        lo.append(((qmin + 1) * (1 << nc) - half - 1) // mc)
        hi.append(-((half - qmax * (1 << nc)) // mc))
    return np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64)


def int32_multiply(sfc: SFC, bound: int, qmin: int, qmax: int,
                   min_bits: int = INT32_MIN_BITS) -> tuple[SFC, tuple[np.ndarray, np.ndarray] | None] | None:
    """The int32 form of a requantizing multiply: ``(sfc', pre_clip)``, or ``None`` (stay Q31 in int64).

    Each channel ``c`` of ``sfc'`` has the most mantissa bits ``b_c <= 31`` for which
    ``B_c * m_c + 2**(n_c - 1) <= 2**31 - 1``, where ``B_c`` is ``bound`` or, if
    smaller, the magnitude bound ``max(|lo_c|, |hi_c|)`` of the result-preserving
    pre-clip (see the module docstring); ``None`` when some channel would keep
    fewer than ``min_bits``.  ``pre_clip`` is ``(lo, hi)`` when some channel needs
    it, else ``None``.

    >>> s, clip = int32_multiply(make_sfc([0.3, 0.01]), 400, -128, 127)  # small bound: no clip
    >>> s.multiplier.tolist(), s.right.tolist(), clip
    ([5033165, 2684355], [24, 28], None)
    >>> s, clip = int32_multiply(make_sfc([0.3, 0.01]), 2**20, -128, 127)  # Q23 and Q17 mantissas after a clip
    >>> s.multiplier.tolist(), s.right.tolist(), [b.tolist() for b in clip]
    ([2516582, 83886], [23, 23], [[-426, -12751], [422, 12651]])
    >>> int32_multiply(make_sfc([0.3, 0.0001]), 2**24, 0, 255) is None  # 0.0001 would keep < 12 bits
    True
    """
    if sfc.kind != "multiply":
        raise ValueError("int32_multiply takes a multiply SFC")
    m = np.zeros(sfc.channels, dtype=np.int64)
    n = np.ones(sfc.channels, dtype=np.int64)
    lo, hi = np.zeros_like(m), np.zeros_like(m)
    done = np.zeros(sfc.channels, dtype=bool)
    for bits in range(S.Q_BITS, min_bits - 1, -1):
        try:
            mb, nb = S.quantize_multiplier(sfc.ratio, bits)
        except ValueError:
            return None
        lob, hib = _clip_bounds(mb, nb, qmin, qmax)
        eff = np.minimum(np.maximum(np.abs(lob), np.abs(hib)), bound)
        fits = np.array([int(e) * int(mc) + (1 << (int(nc) - 1)) <= INT32_MAX for e, mc, nc in zip(eff, mb, nb)])
        new = fits & ~done
        m[new], n[new], lo[new], hi[new] = mb[new], nb[new], lob[new], hib[new]
        done |= fits
        if done.all():
            narrow = SFC("multiply", sfc.ratio, multiplier=m, right=n)
            needs_clip = np.any(np.maximum(np.abs(lo), np.abs(hi)) < bound)
            return narrow, ((lo, hi) if needs_clip else None)
    return None
