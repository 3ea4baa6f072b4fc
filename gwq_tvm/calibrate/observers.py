"""Per-tensor statistics and clipping rules (pure numpy).

A :class:`TensorStats` is filled in one pass over the calibration data:
:meth:`TensorStats.observe` keeps the exact min/max and a strided sample of
``|x|`` (at most ``SAMPLES_PER_BATCH`` values a batch); :meth:`TensorStats.finalize`
turns the sample into a histogram of ``|x|`` over ``[0, absmax]``.  :func:`choose_clip` turns it into a clipping
value with the rule of :class:`~gwq_tvm.config.Calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import Calibration
from ..plan.scales import qrange

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


def quantization_mse(stats: TensorStats, clips: np.ndarray, levels: int) -> np.ndarray:
    """Expected MSE of quantizing the histogram with clip ``c`` and ``levels`` positive steps.

    In-range values contribute the uniform rounding noise ``(c/levels)**2 / 12``,
    clipped ones ``(|x| - c)**2`` (bin centres stand for their bin).
    """
    edges = stats.bin_edges
    centres = 0.5 * (edges[:-1] + edges[1:])
    p = stats.hist / max(stats.hist.sum(), 1)
    c = np.asarray(clips, dtype=np.float64)[:, None]
    clipped = np.maximum(centres[None, :] - c, 0.0) ** 2
    inside = (centres[None, :] <= c) * (c / levels) ** 2 / 12.0
    return ((clipped + inside) * p[None, :]).sum(axis=1)


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
    levels = qrange(bits, signed)[1]
    # candidates: the top edges of bins from the 90th-percentile bin up to absmax
    start = int(np.searchsorted(cdf, 0.9))
    candidates = edges[max(start, 1):]
    mse = quantization_mse(stats, candidates, levels)
    return float(candidates[int(np.argmin(mse))])
