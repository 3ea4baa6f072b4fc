"""ASQ's adapter (seed 004): the integer side branch that computes a tensor's per-sample step multiplier.

Not a graph node (no Relax op matches it): a tensor whose plan entry is
``dynamic`` gets one, and its producer's requantization calls the branch.
The arithmetic is :func:`gwq_tvm.plan.program.adapter_recipe` /
:func:`~gwq_tvm.plan.program.adapter_beta`; here are its Relax and torch
lowerings::

    g = clip(SFC(sum_hw q0))                  8-bit mean of the tensor's static integers q0
    h = clip(SFC(W1q @ g + b1q), 0, 255)      uint8 hidden layer (ReLU)
    B = clip(SFC(w2q . h) + b2q, B_MIN, B_MAX)   beta = B * 2**-F  (ReLU, and beta >= 2**-4)

The dense layers run on int32 operands (int8 weights, int32 accumulators):
they are ``C x C/4`` per sample, nothing to tune.
"""

from __future__ import annotations

import numpy as np

from ..plan import program as P
from . import register
from .base import Kind


class Adapter(Kind):
    name = "adapter"
    ops = ()

    def realize_branch(self, em, r: P.AdapterRecipe, q0):
        """Emit the branch on ``q0`` (the tensor's static integers, N x C x ...); returns ``B`` (int64, ``(N,)``)."""
        from tvm.relax import op as R

        x = em.emit(R.astype(q0, "int32"))
        g = em.emit(R.sum(x, axis=list(range(2, x.ty.ndim))))  # (N, C), also for a 1x1 map (window 1)
        g = em.clip_cast(em.apply_sfc(g, r.gap, 2, "int64"), *r.gap_range, "int32")
        acc1 = em.emit(R.matmul(g, em.const(np.ascontiguousarray(r.w1.T), "int32"), out_dtype="int32"))
        acc1 = em.emit(R.add(acc1, em.const(r.b1.reshape(1, -1), "int32")))
        h = em.clip_cast(em.apply_sfc(acc1, r.sfc1, 2, "int64"), 0, 255, "int32")
        acc2 = em.emit(R.matmul(h, em.const(r.w2.reshape(-1, 1), "int32"), out_dtype="int32"))
        b = em.emit(R.add(em.apply_sfc(acc2, r.sfc2, 2, "int64"), em.const(r.b2, "int64")))
        b = em.emit(R.clip(b, __import__("tvm").relax.prim_value(P.B_MIN), __import__("tvm").relax.prim_value(P.B_MAX)))
        return em.emit(R.reshape(b, [-1]))

    def qat_branch(self, q0, x0, r: P.AdapterRecipe, params):
        """The branch in torch: integers ``B`` (int64, exact: the compiled program's) and the differentiable
        ``beta`` (float, value ``B * 2**-F``; LSQ/STE gradients through the fake-quantized layers).

        ``x0`` is the tensor's fake-quantized value at its static step (``s_t * q0``), ``params`` the adapter's
        :class:`torch.nn.Module` (``w1``, ``b1``, ``w2``, ``b2``, ``hidden_scale``).
        """
        import torch

        from ..qat.fakequant import apply_sfc, fake_quant, grad_scale, ste

        s_g, s1, s_h, s2 = r.scales
        dt = x0.dtype
        # integers
        g = q0.reshape(q0.shape[0], q0.shape[1], -1).sum(2)
        g = torch.clamp(apply_sfc(g, r.gap), *r.gap_range)
        acc1 = (g[:, None, :] * torch.from_numpy(r.w1.astype(np.int64))[None]).sum(2) + torch.from_numpy(r.b1.astype(np.int64))
        h = torch.clamp(apply_sfc(acc1, r.sfc1), 0, 255)
        acc2 = (h * torch.from_numpy(r.w2.astype(np.int64))).sum(1, keepdim=True)
        b = torch.clamp(apply_sfc(acc2, r.sfc2)[:, 0] + r.b2, P.B_MIN, P.B_MAX)
        # differentiable twin
        gv = fake_quant(x0.reshape(x0.shape[0], x0.shape[1], -1).mean(2), torch.tensor(s_g, dtype=dt), g, *r.gap_range)
        w1s = torch.from_numpy(s1).to(dt)[:, None]
        w1 = w1s * ste(params.w1.to(dt) / w1s, torch.from_numpy(r.w1.astype(np.float64)).to(dt))
        u1 = s_g * w1s[:, 0]
        b1 = u1 * ste(params.b1.to(dt) / u1, torch.from_numpy(r.b1.astype(np.float64)).to(dt))
        hs = grad_scale(params.hidden_scale.to(dt).abs(), 1.0 / np.sqrt(max(h.shape[1], 1) * 255.0))
        hv = fake_quant(gv @ w1.T + b1, hs, h, 0, 255)
        w2 = s2 * ste(params.w2.to(dt) / s2, torch.from_numpy(r.w2.astype(np.float64)).to(dt))
        one = float(1 << P.BETA_FRAC_BITS)
        beta = torch.clamp(hv @ w2 + params.b2.to(dt), P.B_MIN / one, P.B_MAX / one)
        return b, ste(beta, b.to(dt) / one)


#: the registered instance (the realize pass and the QAT model call its branch methods)
ADAPTER = register(Adapter())
