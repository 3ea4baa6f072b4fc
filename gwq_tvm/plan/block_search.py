"""PTQ-SL post-training search of the weight block scales on the layer-output error (numpy).

For each conv/dense layer, with its input ``X`` (float, from the fp32 model on
the calibration images) and its output ``Y = W * X`` (no bias: the bias is
exact up to its rounding), every block scale ``delta_ij`` is replaced by the
best of the candidates ``delta_ij * alpha``, ``alpha`` in :data:`ALPHAS`
(``[0.1, 2.0]``; in ``pot``/``gwq`` plans only the powers of two there, so
every SFC that was a shift stays one), minimising

* ``l2``: ``sum (Y - Yq)**2`` over the block's output channels,
* ``cosine``: ``1 - cos(Y, Yq)``,
* ``weighted-l2``: ``sum |Y| * (Y - Yq)**2`` (large outputs count more),

where ``Yq = Q_w(W) * Q_a(X)`` uses the planned activation scale of ``X``.
Blocks are visited one at a time with the others fixed (coordinate descent);
all candidates of a block are one batched matmul.  In ``per-layer`` plans the
search alternates with the activation scale of every tensor read only by
layers (candidates ``s * beta``, :data:`BETAS`, on the summed output error of
its consumer layers), for ``search_rounds`` rounds.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..config import ScaleMode
from ..graph import Graph, Node
from . import scales as S
from . import strategies
from .program import out_range
from .quantplan import QuantPlan, TensorQuant, WeightQuant

#: weight-scale multipliers tried per block
ALPHAS = tuple(float(a) for a in np.round(np.linspace(0.1, 2.0, 20), 3))
#: activation-scale multipliers tried per tensor (per-layer plans)
BETAS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
#: calibration images the search uses (its cost is linear in them)
SEARCH_SAMPLES = 64


def columns(x: np.ndarray, node: Node) -> list[np.ndarray]:
    """The layer's input as matmul rows, one ``(M, K)`` array per group (conv: im2col in OIHW order)."""
    if node.kind == "dense":
        return [x.reshape(len(x), -1).astype(np.float64)]
    a = node.attrs
    kh, kw = node.weight.shape[2:]
    top, left, bottom, right = (int(p) for p in a["padding"])
    (sh, sw), (dh, dw) = a["strides"], a["dilation"]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    n, c, ho, wo = win.shape[:4]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c, kh * kw)
    groups = int(a["groups"])
    cg = c // groups
    return [np.ascontiguousarray(cols[:, g * cg:(g + 1) * cg].reshape(len(cols), -1)) for g in range(groups)]


def _error(ref: np.ndarray, out: np.ndarray, metric: str) -> np.ndarray:
    """Error of each candidate ``out[..., a, :]`` against ``ref[..., :]`` (sum over rows and channels)."""
    d = out - ref[:, None, :]
    if metric == "l2":
        return (d * d).sum(axis=(0, 2))
    if metric == "weighted-l2":
        return (np.abs(ref)[:, None, :] * d * d).sum(axis=(0, 2))
    dot = (out * ref[:, None, :]).sum(axis=(0, 2))
    norms = np.sqrt((out * out).sum(axis=(0, 2)) * (ref * ref).sum()) + 1e-30
    return 1.0 - dot / norms


class LayerProblem:
    """One layer's block-scale search: its rows, reference output and current block scales."""

    def __init__(self, node: Node, layer: WeightQuant, cols_q: list, cols_f: list):
        self.node, self.layer = node, layer
        c_out = node.weight.shape[0]
        self.w = node.weight.reshape(c_out, -1).astype(np.float64)
        self.groups = len(cols_f)
        self.per_group = c_out // self.groups
        self.grid = layer.block_scales(c_out).copy()  # (C_out, n_in), a view per channel
        self.n_in = self.grid.shape[1]
        self.cols = self.w.shape[1] // self.n_in
        self.qmax = S.weight_qmax(layer.bits)
        self.set_input(cols_q)
        self.ref = self._matmul(cols_f, self.w)

    def set_input(self, cols_q: list) -> None:
        self.x = cols_q

    def _matmul(self, cols: list, w: np.ndarray) -> np.ndarray:
        """``(M, C_out)`` outputs of weights ``w`` (``(C_out, K)``) on per-group rows ``cols``."""
        g = self.per_group
        return np.concatenate([cols[i] @ w[i * g:(i + 1) * g].T for i in range(self.groups)], axis=1)

    def quantized(self, grid: np.ndarray | None = None) -> np.ndarray:
        grid = self.grid if grid is None else grid
        s = np.repeat(grid, self.cols, axis=1)
        return np.clip(np.rint(self.w / s), -self.qmax, self.qmax) * s

    def output(self) -> np.ndarray:
        return self._matmul(self.x, self.quantized())

    def blocks(self):
        """``(channels, j)`` of every block: the output channels sharing a scale, the input block."""
        n_out = self.layer.block[0] if self.layer.granularity == "block" else (1 if self.layer.granularity == "tensor" else len(self.grid))
        order = np.asarray(self.layer.permutation) if self.layer.permutation is not None else np.arange(len(self.grid))
        for chans in np.split(order, n_out):
            for j in range(self.n_in):
                yield chans, j

    def search_block(self, chans: np.ndarray, j: int, alphas, metric: str, out: np.ndarray) -> np.ndarray:
        """Pick the best ``alpha`` for block ``(chans, j)``; returns the updated output ``out``."""
        lo, hi = j * self.cols, (j + 1) * self.cols
        base = self.grid[chans[0], j]
        wq = self.quantized()
        w = self.w[np.ix_(chans, np.arange(lo, hi))]
        cand = np.stack([np.clip(np.rint(w / (base * a)), -self.qmax, self.qmax) * (base * a) for a in alphas])  # (A, c, k)
        delta = cand - wq[np.ix_(chans, np.arange(lo, hi))][None]
        gidx = chans // self.per_group
        change = np.zeros((out.shape[0], len(alphas), len(chans)))
        for g in np.unique(gidx):
            sel = np.nonzero(gidx == g)[0]
            d = delta[:, sel].reshape(-1, hi - lo)  # (A * |sel|, k)
            change[:, :, sel] = (self.x[g][:, lo:hi] @ d.T).reshape(len(out), len(alphas), len(sel))
        trial = out[:, chans][:, None, :] + change
        best = int(np.argmin(_error(self.ref[:, chans], trial, metric)))
        self.grid[chans, j] = base * alphas[best]
        out = out.copy()
        out[:, chans] = trial[:, best]
        return out

    def search(self, alphas, metric: str) -> None:
        out = self.output()
        for chans, j in list(self.blocks()):
            out = self.search_block(chans, j, alphas, metric, out)

    def error(self, metric: str) -> float:
        out = self.output()
        return float(_error(self.ref, out[:, None, :], metric)[0])

    def result(self) -> WeightQuant:
        """The layer's :class:`WeightQuant` with the searched scales (stored in its granularity's order)."""
        import dataclasses

        scales = [float(self.grid[chans[0], j]) for chans, j in self.blocks()]  # row-major, as stored
        return dataclasses.replace(self.layer, scales=tuple(scales))


def _fake_quant(x: np.ndarray, scale: float, qmin: int, qmax: int) -> np.ndarray:
    return np.clip(np.floor(x / scale + 0.5), qmin, qmax) * scale


def node_outputs(model, graph: Graph, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every node's fp32 output on ``images`` (the float model on TVM)."""
    import tvm
    from tvm import relax

    from ..calibration import with_node_outputs
    from ..runtime import host_target
    from ..schedules.float import compile_float

    vm = relax.VirtualMachine(compile_float(with_node_outputs(model.mod, graph), host_target()), tvm.cpu())
    fixed = model.input_shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else len(images)
    usable = len(images) - len(images) % step
    outs = [vm["main"](tvm.runtime.tensor(np.ascontiguousarray(images[i:i + step]))) for i in range(0, usable, step)]
    return {n: np.concatenate([o[k].numpy() for o in outs]) for k, n in enumerate(graph.nodes)}


def search_plan(model, graph: Graph, plan: QuantPlan, images: np.ndarray, *, metric: str = "l2", rounds: int = 2,
                pot: bool = False, samples: int = SEARCH_SAMPLES) -> QuantPlan:
    """``plan`` with every conv/dense layer's block scales searched (see the module docstring)."""
    acts = node_outputs(model, graph, np.asarray(images[:samples], np.float32))
    alphas = tuple(a for a in (0.125, 0.25, 0.5, 1.0, 2.0)) if pot else ALPHAS
    names = [n for n, node in graph.nodes.items() if node.kind in ("conv2d", "dense") and n in plan.layers
             and plan.layers[n].codebook == "uniform"]

    def inputs(p: QuantPlan, src: str, scale: float | None = None):
        owner = graph.tensor_of(src)
        qmin, qmax = out_range(graph.nodes[owner], p)
        return _fake_quant(acts[src], scale or p.scale(owner), qmin, qmax)

    problems = {n: LayerProblem(graph.nodes[n], plan.layers[n], columns(inputs(plan, graph.nodes[n].inputs[0]), graph.nodes[n]),
                                columns(acts[graph.nodes[n].inputs[0]], graph.nodes[n])) for n in names}
    tensors = dict(plan.tensors)
    groups = dict(plan.groups)
    current = plan
    for _ in range(rounds):
        for prob in problems.values():
            prob.search(alphas, metric)
        if pot:
            continue
        current = current.replace(tensors=tensors, groups=groups)
        for t in graph.tensors():  # per-layer plans: each tensor is its own group
            readers = [c for c in graph.consumers(t)]
            if not readers or any(c.name not in problems for c in readers) or groups.get(t) is None:
                continue
            s0 = current.scale(t)
            errs = []
            for b in BETAS:
                total = 0.0
                for c in readers:
                    prob = problems[c.name]
                    prob.set_input(columns(inputs(current, c.inputs[0], s0 * b), c))
                    total += prob.error(metric) / (np.square(prob.ref).sum() + 1e-30)
                errs.append(total)
            best = BETAS[int(np.argmin(errs))]
            mantissa, exponent = S.split_scale(s0 * best)
            groups[t] = mantissa
            tensors[t] = TensorQuant(tensors[t].bits, tensors[t].signed, t, exponent, tensors[t].dynamic)
            for name, tq in list(tensors.items()):  # passthrough nodes share their owner's entry
                if graph.tensor_of(name) == t and name != t:
                    tensors[name] = tensors[t]
            current = current.replace(tensors=tensors, groups=groups)
            for c in readers:
                problems[c.name].set_input(columns(inputs(current, c.inputs[0]), c))
    layers = {**plan.layers, **{n: prob.result() for n, prob in problems.items()}}
    return current.replace(layers=layers)


@strategies.register("subl_search")
def _block_search_strategy(ctx: strategies.PlanContext) -> QuantPlan:
    """The ``subl_search`` strategy: :func:`search_plan` of ``ctx.plan`` with the config's metric and rounds."""
    cfg = ctx.config
    return search_plan(ctx.model, ctx.graph, ctx.plan, ctx.images, metric=cfg.search_metric, rounds=cfg.search_rounds,
                       pot=cfg.mode is not ScaleMode.PER_LAYER)
