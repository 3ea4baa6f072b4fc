"""Differentiable fake-quantization primitives that round exactly like the compiled program (torch).

The QAT forward carries every quantized tensor twice: its real value ``x``
(differentiable) and its integers ``q`` (``int64``, no gradient), computed
with the compiler's own integer arithmetic.  The two are tied together by a
straight-through estimator: the forward *value* is ``s * q`` while the
gradient is that of the continuous ``s * clamp(v / s)`` with the LSQ step-size
gradient ``round(v/s) - v/s`` inside the range and ``qmin``/``qmax`` outside.
"""

from __future__ import annotations

import numpy as np
import torch

from ..plan.sfc import SFC


def ste(cont: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Forward value of ``hard``, gradient of ``cont``."""
    return cont + (hard - cont).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """LSQ gradient scaling: the value of ``x`` with its gradient multiplied by ``g``."""
    return (x - x * g).detach() + x * g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` (half to even) with the identity gradient."""
    return ste(x, torch.round(x))


def fake_quant(v: torch.Tensor, s: torch.Tensor, q: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``s * q`` in value; the LSQ gradient of ``s * clamp(round(v / s), qmin, qmax)`` in ``v`` and ``s``.

    Parameters
    ----------
    v : torch.Tensor
        The real value before quantization (differentiable).
    s : torch.Tensor
        Scalar scale (differentiable).
    q : torch.Tensor
        The integers the compiled program produces for ``v`` (already clipped).
    """
    return s * ste(torch.clamp(v / s, qmin, qmax), q.to(v.dtype))


def lsq(v: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """LSQ fake-quantization ``s * clamp(round(v / s), qmin, qmax)`` (round half to even).

    Gradients (straight-through rounding): ``d/dv`` is 1 inside ``[qmin * s, qmax * s]``
    and 0 outside; ``d/ds`` is ``round(v/s) - v/s`` inside and ``qmin``/``qmax`` outside
    (Esser et al., "Learned Step Size Quantization").  The QAT model's weights
    (:class:`~gwq_tvm.qat.model.Run`) and LIMPQ's candidate quantizers
    (:mod:`gwq_tvm.qat.importance`) both quantize through it.
    """
    return s * torch.clamp(round_ste(v / s), qmin, qmax)


def _channel(values: np.ndarray, ndim: int) -> torch.Tensor | int:
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if values.size == 1 or np.all(values == values[0]):
        return int(values[0])
    shape = [1] * ndim
    shape[1] = values.size
    return torch.from_numpy(values.reshape(shape))


def apply_sfc(x: torch.Tensor, sfc: SFC) -> torch.Tensor:
    """Integer SFC on ``int64`` ``x`` (channels on axis 1), unclipped.

    The torch twin of :func:`gwq_tvm.plan.sfc.apply_sfc` (same constants, same
    round-half-up shifts) so that QAT integers equal the compiled program's.
    """
    if sfc.kind == "identity":
        return x
    if sfc.kind == "shift":
        left, right = _channel(sfc.left, x.ndim), _channel(sfc.right, x.ndim)
        y = x << left if np.any(sfc.left > 0) else x
    else:
        right = _channel(sfc.right, x.ndim)
        y = x * _channel(sfc.multiplier, x.ndim)
        if not np.any(sfc.right > 0):
            return y
    if not np.any(sfc.right > 0):
        return y
    one = torch.ones((), dtype=torch.int64)
    rounding = (one << right) >> 1 if isinstance(right, torch.Tensor) else (1 << right) >> 1
    return (y + rounding) >> right


def apply_dynamic(acc: torch.Tensor, d, b_in=None, b_out=None) -> torch.Tensor:
    """The torch twin of :func:`gwq_tvm.plan.program.apply_dynamic` (ASQ's per-sample requantization;
    ``b_in``/``b_out`` int64 ``(N,)`` or ``None`` for ``2**F``), unclipped int64."""
    from ..plan import program as P

    one = torch.tensor(1 << P.BETA_FRAC_BITS, dtype=torch.int64)
    bi = one if b_in is None else b_in
    bo = one if b_out is None else b_out
    rho = torch.div(bi * (1 << P.RHO_FRAC_BITS) + (bo >> 1), bo, rounding_mode="floor")
    rho = rho.reshape(-1, 1).expand(acc.shape[0], 1)
    m = torch.from_numpy(np.asarray(d.multiplier, dtype=np.int64)).reshape(1, -1)
    mb = (m * rho + (1 << (P.RHO_FRAC_BITS - 1))) >> P.RHO_FRAC_BITS
    tail = (1,) * (acc.ndim - 2)
    mb = mb.reshape(mb.shape + tail)
    right = torch.from_numpy(np.asarray(d.right, dtype=np.int64)).reshape((1, -1) + tail)
    return (acc * mb + ((torch.ones((), dtype=torch.int64) << right) >> 1)) >> right
