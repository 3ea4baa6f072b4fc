"""Per-tensor statistics and clipping rules (pure numpy).

A :class:`TensorStats` is filled in one pass over the calibration data:
:meth:`TensorStats.observe` keeps the exact min/max and a strided sample of
``|x|`` (at most ``SAMPLES_PER_BATCH`` values a batch); :meth:`TensorStats.finalize`
turns the sample into a histogram of ``|x|`` over ``[0, absmax]``.  :func:`choose_clip` turns it into a clipping
value with the rule of :class:`~gwq_tvm.config.Calibration`; :func:`quantization_error`
is the exact expected error of a quantization grid on that histogram.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import Calibration
from .plan.scales import qrange

HIST_BINS = 2048
SAMPLES_PER_BATCH = 1 << 16


@dataclass
class TensorStats:
    """Running statistics of one tensor.

    Attributes
    ----------
    min, max : float
        Extremes seen.
    hist : numpy.ndarray
        Counts of ``|x|`` in ``HIST_BINS`` equal bins over ``[0, absmax]``.
    """

    min: float = float("inf")
    max: float = float("-inf")
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    count: int = 0
    _samples: list = field(default_factory=list, repr=False)

    @property
    def absmax(self) -> float:
        return float(max(abs(self.min), abs(self.max))) if self.count else 0.0

    @property
    def signed(self) -> bool:
        return self.min < 0

    @property
    def bin_edges(self) -> np.ndarray:
        return np.linspace(0.0, self.absmax, HIST_BINS + 1)

    def observe(self, x: np.ndarray) -> None:
        """Record one batch (exact extremes, strided sample of magnitudes)."""
        if x.size == 0:
            return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += x.size
        flat = x.reshape(-1)
        step = max(1, flat.size // SAMPLES_PER_BATCH)
        self._samples.append(np.abs(flat[::step]).astype(np.float32))

    def finalize(self) -> "TensorStats":
        """Build the histogram from the samples seen so far."""
        if self._samples and self.absmax > 0:
            h, _ = np.histogram(np.concatenate(self._samples), bins=HIST_BINS, range=(0.0, self.absmax))
            self.hist = h.astype(np.int64)
        self._samples = []
        return self

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "count": self.count, "hist": self.hist.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorStats":
        return cls(float(d["min"]), float(d["max"]), np.asarray(d["hist"], dtype=np.int64), int(d["count"]))


def _cumulative_moments(stats: TensorStats):
    """``C_k(x) = integral_0^x t**k f(t) dt`` for k = 0, 1, 2, with ``f`` uniform inside each bin.

    Returns a function of an array of points ``x`` (clamped to ``[0, absmax]``)
    giving an array of shape ``(3,) + x.shape``.
    """
    edges = stats.bin_edges
    width = edges[1] - edges[0]
    dens = stats.hist / max(stats.hist.sum(), 1) / width
    k = np.arange(3)[:, None]
    per_bin = dens[None, :] * (edges[1:][None, :] ** (k + 1) - edges[:-1][None, :] ** (k + 1)) / (k + 1)
    cum = np.concatenate([np.zeros((3, 1)), np.cumsum(per_bin, axis=1)], axis=1)

    def at(x):
        x = np.clip(x, 0.0, edges[-1])
        i = np.minimum((x / width).astype(np.int64), len(dens) - 1)
        lo = edges[i]
        kk = np.arange(3).reshape((3,) + (1,) * x.ndim)
        return cum[:, i] + dens[i] * (x ** (kk + 1) - lo ** (kk + 1)) / (kk + 1)

    return at


def quantization_error(stats: TensorStats, scales, qmax: int) -> np.ndarray:
    """Expected squared error of quantizing the tensor on the grid ``s * {0, 1, ..., qmax}``.

    Exact for a density that is uniform inside each histogram bin: level ``q``
    receives the magnitudes in ``[(q - 1/2) s, (q + 1/2) s)`` and the top level
    everything above (clipping), so the error is a sum over levels of
    ``M2 - 2 q s M1 + (q s)**2 M0`` with ``M_k`` the level's moments, read from
    cumulative moments of the histogram (cost: scales x levels, not x bins).

    Parameters
    ----------
    stats : TensorStats
        A finalized tensor (histogram of ``|x|``).
    scales : array_like
        Candidate scales, shape ``(S,)``.
    qmax : int
        Largest level (``qrange(bits, signed)[1]``).

    Returns
    -------
    numpy.ndarray
        Shape ``(S,)``: mean squared error per element.
    """
    s = np.asarray(scales, dtype=np.float64)[:, None]
    if stats.absmax == 0:
        return np.zeros(s.shape[0])
    levels = np.arange(qmax + 1, dtype=np.float64)[None, :]
    bounds = np.concatenate([(levels - 0.5) * s, np.full_like(s, np.inf)], axis=1)
    m0, m1, m2 = np.diff(_cumulative_moments(stats)(bounds), axis=2)
    value = levels * s
    return np.maximum((m2 - 2.0 * value * m1 + value * value * m0).sum(axis=1), 0.0)


def signal_power(stats: TensorStats) -> float:
    """``E[x**2]`` of the histogram (uniform inside each bin)."""
    edges = stats.bin_edges
    lo, hi = edges[:-1], edges[1:]
    p = stats.hist / max(stats.hist.sum(), 1)
    return float(((lo * lo + lo * hi + hi * hi) / 3.0 * p).sum())


def choose_clip(stats: TensorStats, method: Calibration, bits: int, signed: bool, percentile: float = 99.99) -> float:
    """Clipping magnitude for ``stats`` under ``method`` at ``bits`` bits."""
    amax = stats.absmax
    if amax == 0:
        return 0.0
    method = Calibration(method)
    if method is Calibration.MAX:
        return amax
    cdf = np.cumsum(stats.hist) / max(stats.hist.sum(), 1)
    edges = stats.bin_edges
    if method is Calibration.PERCENTILE:
        idx = int(np.searchsorted(cdf, percentile / 100.0))
        return float(edges[min(idx + 1, len(edges) - 1)])
    qmax = qrange(bits, signed)[1]
    # candidates: the top edges of bins from the 50th-percentile bin up to absmax
    start = int(np.searchsorted(cdf, 0.5))
    candidates = edges[max(start, 1):]
    candidates = candidates[np.unique(np.linspace(0, len(candidates) - 1, 512).astype(np.int64))]
    err = quantization_error(stats, candidates / qmax, qmax)
    return float(candidates[int(np.argmin(err))])
