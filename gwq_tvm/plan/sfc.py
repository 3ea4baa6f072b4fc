"""Scale-factor conversion (SFC) decisions: a shift where the ratio allows, else a multiply.

An SFC rescales integers from scale ``s_from`` to ``s_to`` by the ratio
``M = s_from / s_to`` (per channel where the source is per channel):

* ``identity``: ``M == 1`` everywhere; nothing is emitted.
* ``shift``: every ``M_c`` is ``2**(-k_c)``:
  ``q = (x << max(-k, 0) + 2**(k-1)) >> max(k, 0)``, no multiply.
* ``multiply``: ``M_c ~= m_c * 2**(-n_c)`` with a Q31 ``m_c``:
  ``q = (int64(x) * m_c + 2**(n_c - 1)) >> n_c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import scales as S


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
