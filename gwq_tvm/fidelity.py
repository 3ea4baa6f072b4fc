"""How closely a quantized program's outputs follow the float model's (pure numpy).

Labels are optional: most users have none for their own data, so every
figure except accuracy compares the integer program with the float model
sample by sample.  For ``N`` samples with float logits ``r_i`` and
quantized logits ``q_i`` (each flattened to a vector):

* top-1 agreement: ``mean_i [argmax r_i == argmax q_i]``;
* logit SQNR (dB): ``mean_i 10 log10(sum(r_i**2) / sum((r_i - q_i)**2))``,
  the per-sample signal-to-quantization-noise ratio averaged over samples
  (a sample whose logits match exactly has an infinite SQNR, and then so has
  the mean);
* softmax KL: ``mean_i KL(softmax(r_i) || softmax(q_i))`` in nats
  (:func:`gwq_tvm.calibration.sensitivity.kl_divergence`);
* accuracy of both, when labels are given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .calibration.sensitivity import kl_divergence


def _flat(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return logits.reshape(len(logits), -1)


def sqnr_db(ref, test) -> np.ndarray:
    """Per-sample ``10 log10(sum(ref**2) / sum((ref - test)**2))`` (``inf`` where they are equal).

    Parameters
    ----------
    ref, test : array_like of shape (N, ...)
        Reference (float) and quantized values; each sample is flattened.
    """
    ref, test = _flat(ref), _flat(test)
    if ref.shape != test.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {test.shape}")
    signal = (ref ** 2).sum(axis=1)
    noise = ((ref - test) ** 2).sum(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * (np.log10(signal) - np.log10(noise))


def pooled_sqnr_db(ref, test) -> float:
    """SQNR over all samples at once: ``10 log10(sum_i sum(r_i**2) / sum_i sum((r_i - q_i)**2))``.

    Unlike the mean of :func:`sqnr_db`, one exactly matched sample does not make it infinite
    (it is ``inf`` only when every sample matches).
    """
    ref, test = _flat(ref), _flat(test)
    if ref.shape != test.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {test.shape}")
    signal, noise = float((ref ** 2).sum()), float(((ref - test) ** 2).sum())
    return math.inf if noise == 0 else 10.0 * math.log10(signal / noise)


@dataclass(frozen=True)
class Fidelity:
    """Agreement of quantized outputs with the float model's (see the module docstring)."""

    samples: int
    top1_agreement: float
    sqnr_db: float
    kl: float
    float_accuracy: float | None = None
    quantized_accuracy: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready: an infinite SQNR (outputs equal) is written as ``null``."""
        d = asdict(self)
        d["sqnr_db"] = self.sqnr_db if math.isfinite(self.sqnr_db) else None
        d["formulas"] = {
            "top1_agreement": "mean_i [argmax ref_i == argmax q_i]",
            "sqnr_db": "mean_i 10*log10(sum(ref_i^2) / sum((ref_i - q_i)^2))",
            "kl": "mean_i KL(softmax(ref_i) || softmax(q_i)), nats",
        }
        return d

    def summary(self, ref_name: str = "float", test_name: str = "integer") -> str:
        """A few lines for the terminal."""
        lines = [f"top-1 agreement with the {ref_name} model: {self.top1_agreement * 100:.2f}% ({self.samples} samples)",
                 f"mean logit SQNR: {self.sqnr_db:.2f} dB",
                 f"mean softmax KL({ref_name} || {test_name}): {self.kl:.5f} nats"]
        if self.float_accuracy is not None:
            lines.append(f"accuracy: {ref_name} {self.float_accuracy * 100:.2f}%, {test_name} {self.quantized_accuracy * 100:.2f}% "
                         f"(delta {100 * (self.quantized_accuracy - self.float_accuracy):+.2f} pt)")
        return "\n".join(lines)


def fidelity(ref_logits, logits, labels=None) -> Fidelity:
    """Compare quantized ``logits`` with the float model's ``ref_logits`` (same samples, same order).

    Parameters
    ----------
    ref_logits, logits : array_like of shape (N, C)
    labels : array_like of shape (N,), optional
        Class labels; when given, both accuracies are reported.
    """
    ref, q = _flat(ref_logits), _flat(logits)
    if ref.shape != q.shape:
        raise ValueError(f"the outputs differ in shape: {ref.shape} vs {q.shape}")
    if len(ref) == 0:
        raise ValueError("no samples to compare")
    agree = float((ref.argmax(axis=1) == q.argmax(axis=1)).mean())
    acc_ref = acc_q = None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        acc_ref, acc_q = float((ref.argmax(axis=1) == labels).mean()), float((q.argmax(axis=1) == labels).mean())
    return Fidelity(len(ref), agree, float(np.mean(sqnr_db(ref, q))), kl_divergence(ref, q), acc_ref, acc_q)
