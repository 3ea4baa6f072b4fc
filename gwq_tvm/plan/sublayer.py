"""Weight scales per block (PTQ-SL), per filter group and with Scale-Clip (GDRQ): pure numpy.

A layer's weight is viewed as ``W`` of shape ``(C_out, K)``,
``K = C_in/groups * kh * kw`` for a conv (so a depthwise conv's ``K`` is its
``kh * kw`` taps) and ``in_features`` for a dense layer.  It is cut into
``n_out x n_in`` blocks, each with one scale:

* ``1 x 1`` is per-tensor, ``C_out x 1`` per-channel, anything between
  sub-layerwise (PTQ-SL, seed 001); GDRQ's ``G`` filter groups (seed 002) are
  ``G x 1`` blocks of contiguous filters.
* With **reordering**, output block ``i`` holds the channels
  ``perm[i*b:(i+1)*b]`` of ``perm = argsort(max_k |W_ck|)`` (sort-and-split
  into equal blocks of alike ranges).  The integer program indexes every
  per-channel constant through the permutation statically (see
  :meth:`gwq_tvm.plan.quantplan.WeightQuant.block_scales`), which is the same
  function as physically permuting the conv's filters, its bias and SFC
  constants and its consumers' input channels, without emitting a gather.
* A block's scale is ``clip / qmax`` with ``clip = max |W|`` over the block,
  or with **Scale-Clip** ``clip = min(max |W|, k * sigma)``, ``sigma`` the
  block's standard deviation (``std``) or mean absolute value (``mean-abs``).
  ``k`` is given or picked per tensor from :data:`CLIP_KS` by the weight
  quantization error ``sum (W - Q(W))**2``.
* In ``pot`` and ``gwq`` mode every scale is rounded *up* to a power of two
  (no weight beyond the clip is lost), so that the layer's SFCs inside an
  activation group stay shifts; block and group steps are then powers of two.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import PlanError
from . import scales as S
from .quantplan import WeightQuant

#: the Scale-Clip ``k`` candidates of the post-training search (``inf``: no clip)
CLIP_KS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, float("inf"))


def block_shape(name: str, weight_shape: tuple, blocks, fit: str = "strict") -> tuple[int, int]:
    """The ``(n_out, n_in)`` block grid of a layer's weight.

    Parameters
    ----------
    blocks : (int or "C", int)
        The requested grid (``"C"``: one block per output channel).
    fit : str
        ``strict`` raises when the grid does not divide ``(C_out, K)`` or is
        larger than it; ``gcd`` uses ``(gcd(n_out, C_out), gcd(n_in, K))``.

    Raises
    ------
    PlanError
        One line naming the layer and its ``C_out x K`` weight.
    """
    c_out, k = int(weight_shape[0]), int(np.prod(weight_shape[1:]))
    n_out, n_in = blocks
    n_out = c_out if n_out == "C" else int(n_out)
    if fit == "gcd":
        return math.gcd(n_out, c_out), math.gcd(int(n_in), k)
    hint = "; weight_blocks_fit='gcd' (--weight-blocks-fit gcd) gives such layers the largest grid that divides them"
    if n_out > c_out or n_in > k:
        raise PlanError(f"{name}: weight blocks {n_out}x{n_in} (filter groups x input blocks) are larger than its "
                        f"{c_out}x{k} weight (C_out x C_in/groups*kh*kw){hint}")
    if c_out % n_out or k % n_in:
        raise PlanError(f"{name}: weight blocks {n_out}x{n_in} (filter groups x input blocks) do not divide its "
                        f"{c_out}x{k} weight (C_out x C_in/groups*kh*kw){hint}")
    return n_out, int(n_in)


def reorder_by_range(weight: np.ndarray) -> np.ndarray:
    """The output-channel order that sorts channels by weight range ``max_k |W_ck|`` (stable)."""
    return np.argsort(np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1), kind="stable")


def blocks_of(weight: np.ndarray, n_out: int, n_in: int, perm: np.ndarray | None = None) -> np.ndarray:
    """The weight as ``(n_out, C_out/n_out, n_in, K/n_in)`` blocks, rows in ``perm`` order."""
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    if perm is not None:
        w = w[perm]
    return w.reshape(n_out, w.shape[0] // n_out, n_in, w.shape[1] // n_in)


def sigma(values: np.ndarray, rule: str, axis=None) -> np.ndarray:
    """``std`` (about the mean) or ``mean-abs`` of ``values`` over ``axis``."""
    return values.std(axis=axis) if rule == "std" else np.abs(values).mean(axis=axis)


def block_clips(blocks: np.ndarray, rule: str | None, k: float) -> np.ndarray:
    """Each block's clip: ``max |W|``, or ``min(max |W|, k * sigma)`` with a Scale-Clip ``rule``."""
    amax = np.abs(blocks).max(axis=(1, 3))
    if rule is None or not math.isfinite(k):
        return amax
    return np.minimum(amax, k * sigma(blocks, rule, axis=(1, 3)))


def grid_scales(clips: np.ndarray, bits: int, pot: bool) -> np.ndarray:
    """Block scales ``clip / qmax`` (rounded up to powers of two with ``pot``); an all-zero block gets 1."""
    s = clips / S.weight_qmax(bits)
    s = np.where(s > 0, s, 1.0)
    return np.exp2(np.ceil(np.log2(s))) if pot else s


def expand(grid: np.ndarray, shape: tuple, perm: np.ndarray | None) -> np.ndarray:
    """A ``(n_out, n_in)`` grid of scales as a scale map broadcastable to a weight of ``shape``."""
    wq = WeightQuant(8, tuple(float(v) for v in grid.ravel()), "block", tuple(grid.shape),
                     permutation=tuple(int(p) for p in perm) if perm is not None else None)
    return wq.scale_map(shape)


def weight_error(weight: np.ndarray, scale_map: np.ndarray, bits: int) -> float:
    """``sum (W - s * clip(rint(W / s)))**2`` of ``weight`` at the scales ``scale_map``."""
    q = S.quantize_weight(weight, scale_map, bits).astype(np.float64)
    return float(((weight.astype(np.float64) - q * scale_map) ** 2).sum())


def choose_clip_k(weight: np.ndarray, blocks: np.ndarray, bits: int, pot: bool, rule: str,
                  perm: np.ndarray | None) -> float:
    """The Scale-Clip ``k`` of :data:`CLIP_KS` with the least weight quantization error."""
    errors = [weight_error(weight, expand(grid_scales(block_clips(blocks, rule, k), bits, pot), weight.shape, perm), bits)
              for k in CLIP_KS]
    return CLIP_KS[int(np.argmin(errors))]


def weight_quant(name: str, weight: np.ndarray, bits: int, *, pot: bool, blocks=None, fit: str = "strict",
                 reorder: bool = False, clip_rule: str | None = None, clip_k: float | None = None) -> WeightQuant:
    """The :class:`WeightQuant` of one layer (see the module docstring).

    ``blocks=None`` is per-channel; the result is stored as ``tensor`` for a
    ``1 x 1`` grid, ``channel`` for ``C_out x 1`` and ``block`` otherwise,
    with the permutation only where it changes which channels share a scale.
    """
    n_out, n_in = block_shape(name, weight.shape, blocks, fit) if blocks is not None else (weight.shape[0], 1)
    perm = reorder_by_range(weight) if reorder and 1 < n_out < weight.shape[0] else None
    b = blocks_of(weight, n_out, n_in, perm)
    k = float("inf")
    if clip_rule is not None:
        k = clip_k if clip_k is not None else choose_clip_k(weight, b, bits, pot, clip_rule, perm)
    grid = grid_scales(block_clips(b, clip_rule, k), bits, pot)
    scales = tuple(float(v) for v in grid.ravel())
    if (n_out, n_in) == (1, 1):
        return WeightQuant(bits, scales, granularity="tensor")
    if (n_out, n_in) == (weight.shape[0], 1):
        return WeightQuant(bits, scales, granularity="channel")
    return WeightQuant(bits, scales, granularity="block", block=(n_out, n_in),
                       permutation=tuple(int(p) for p in perm) if perm is not None else None)


def activation_sigma(hist: np.ndarray, edges: np.ndarray, signed: bool, rule: str) -> float:
    """``sigma`` of an activation tensor from its histogram of ``|x|`` over ``edges``.

    ``mean-abs`` is ``E|x|``; ``std`` is ``sqrt(E x**2 - (E x)**2)`` for a
    non-negative tensor and ``sqrt(E x**2)`` (mean taken as 0) for a signed one.
    """
    total = hist.sum()
    if total == 0:
        return 0.0
    mid = (edges[:-1] + edges[1:]) / 2
    p = hist / total
    m1, m2 = float((p * mid).sum()), float((p * mid * mid).sum())
    if rule == "mean-abs":
        return m1
    return math.sqrt(max(m2 - (0.0 if signed else m1 * m1), 0.0))
