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

import dataclasses

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
#: calibration images the search uses
SEARCH_SAMPLES = 64
#: output positions per layer the errors are measured on (a fixed random subset when there are more)
MAX_ROWS = 4096


def _rows(m: int) -> np.ndarray | slice:
    """The rows kept of ``m`` (the same for every input of that size: quantized and float rows align)."""
    if m <= MAX_ROWS:
        return slice(None)
    return np.sort(np.random.default_rng(m).choice(m, MAX_ROWS, replace=False))


def columns(x: np.ndarray, node: Node) -> list[np.ndarray]:
    """The layer's input as matmul rows, one ``(M, K)`` array per group (conv: im2col in OIHW order;
    at most :data:`MAX_ROWS` rows)."""
    if node.kind == "dense":
        x = x.reshape(len(x), -1).astype(np.float64)
        return [x[_rows(len(x))]]
    a = node.attrs
    kh, kw = node.weight.shape[2:]
    top, left, bottom, right = (int(p) for p in a["padding"])
    (sh, sw), (dh, dw) = a["strides"], a["dilation"]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    n, c, ho, wo = win.shape[:4]
    rows = np.arange(n * ho * wo)[_rows(n * ho * wo)]
    cols = win[rows // (ho * wo), :, (rows // wo) % ho, rows % wo].reshape(len(rows), c, kh * kw)
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
        """Use ``cols_q`` (the quantized input's rows per group) from now on; blocks kept contiguous for BLAS."""
        self.x = cols_q
        self.xb = [[np.ascontiguousarray(x[:, j * self.cols:(j + 1) * self.cols]) for j in range(self.n_in)] for x in cols_q]
        self.grams = {}

    def gram(self, g: int, j: int) -> np.ndarray:
        if (g, j) not in self.grams:
            self.grams[g, j] = self.xb[g][j].T @ self.xb[g][j]
        return self.grams[g, j]

    def _matmul(self, cols: list, w: np.ndarray) -> np.ndarray:
        """``(M, C_out)`` outputs of weights ``w`` (``(C_out, K)``) on per-group rows ``cols``."""
        g = self.per_group
        return np.concatenate([cols[i] @ w[i * g:(i + 1) * g].T for i in range(self.groups)], axis=1)

    def quantized(self, grid: np.ndarray | None = None) -> np.ndarray:
        grid = self.grid if grid is None else grid
        return self._quantize(self.w, np.repeat(grid, self.cols, axis=1))

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
        """Pick the best ``alpha`` for block ``(chans, j)``; returns the updated output ``out``.

        The candidates change the output by ``D_a = X_J @ d_a`` (``d_a`` the change of the block's
        quantized weights), so every error is a quadratic form in ``d_a``: with ``r = out - Y``,
        ``l2(a) = const + sum_c 2 d_ac . X_J^T r_c + d_ac^T X_J^T X_J d_ac`` (the Gram matrix
        weighted by ``|Y_c|`` for ``weighted-l2``; the cosine of the whole layer output from the
        same dot products).  No
        candidate output is formed.
        """
        lo, hi = j * self.cols, (j + 1) * self.cols
        base = self.grid[chans[0], j]
        w = self.w[chans, lo:hi]
        cur = self._quantize(w, self.grid[chans, j][:, None])
        cand = np.stack([self._quantize(w, base * a) for a in alphas])  # (A, c, k)
        d = cand - cur[None]
        lin = np.zeros((len(alphas),))
        quad = np.zeros((len(alphas),))
        dot_ref = np.zeros((len(alphas),))
        gidx = chans // self.per_group
        for g in np.unique(gidx):
            sel = np.nonzero(gidx == g)[0]
            xj = self.xb[g][j]
            ref, o = self.ref[:, chans[sel]], out[:, chans[sel]]
            ds = d[:, sel]  # (A, s, k)
            if metric == "weighted-l2":
                wts = np.abs(ref)
                lin += 2 * np.einsum("ask,ks->a", ds, xj.T @ (wts * (o - ref)))
                for i in range(len(sel)):
                    gram = (xj * wts[:, i:i + 1]).T @ xj
                    quad += np.einsum("ak,kl,al->a", ds[:, i], gram, ds[:, i])
                continue
            gram = self.gram(g, j)
            quad += np.einsum("ask,kl,asl->a", ds, gram, ds)
            if metric == "l2":
                lin += 2 * np.einsum("ask,ks->a", ds, xj.T @ (o - ref))
            else:  # cosine: ||out + D||^2 and (out + D) . Y
                lin += 2 * np.einsum("ask,ks->a", ds, xj.T @ o)
                dot_ref += np.einsum("ask,ks->a", ds, xj.T @ ref)
        if metric == "cosine":  # of the whole layer output: a block's own cosine would ignore its magnitude
            err = -(float((out * self.ref).sum()) + dot_ref) / np.sqrt(np.maximum(float((out * out).sum()) + lin + quad, 1e-30))
        else:
            err = lin + quad
        best = int(np.argmin(err))
        self.grid[chans, j] = base * alphas[best]
        out = out.copy()
        for g in np.unique(gidx):
            sel = np.nonzero(gidx == g)[0]
            out[:, chans[sel]] += self.xb[g][j] @ d[best, sel].T
        return out

    def _quantize(self, w: np.ndarray, s) -> np.ndarray:
        return np.clip(np.rint(w / s), -self.qmax, self.qmax) * s

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
                pot: bool = False, samples: int = SEARCH_SAMPLES, acts: dict | None = None) -> QuantPlan:
    """``plan`` with every conv/dense layer's block scales searched (see the module docstring).

    ``acts`` (every node's fp32 output on the images, :func:`node_outputs`) skips running the model.
    """
    if acts is None:
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
            tensors[t] = dataclasses.replace(tensors[t], group=t, exponent=exponent)
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
