"""Mixed-precision bit-width allocation as one integer linear program (LIMPQ's search; pure numpy/scipy).

LIMPQ (Tang et al., "Mixed-Precision Neural Network Quantization via Learned
Layer-wise Importance") gives every layer an importance value per candidate
bit-width and then picks all bit-widths at once with an ILP (the authors'
``quantization_search/search.py``)::

    minimise   sum_l  alpha * I_w[l, b_w(l)] + I_a[l, b_a(l)]
    subject to one (b_w, b_a) per layer, size <= S, BitOps <= B

In gwq-tvm an activation bit-width belongs to a *tensor*, not to the layer
reading it: every layer reading one tensor must read it at the same width.
So the program here has

* ``x[l, b]`` in {0, 1}: layer ``l``'s weights at ``b`` bits, ``sum_b x[l, b] = 1``;
* ``y[t, a]`` in {0, 1}: activation tensor ``t`` at ``a`` bits, ``sum_a y[t, a] = 1``
  (one variable set per tensor: layers sharing ``t`` agree by construction);
* ``z[l, b, a]`` in {0, 1}: layer ``l`` at ``(b, a)``, tied to both choices by
  ``sum_a z[l, b, a] = x[l, b]`` and ``sum_b z[l, b, a] = y[t(l), a]``.  With
  ``x`` and ``y`` one-hot these marginals leave exactly one non-zero ``z``,
  ``z[l, b, a] = x[l, b] * y[t(l), a]``: the product the BitOps need, linear.

and minimises

    sum_l alpha * I_w[l, b] x[l, b]  +  sum_t I_a[t, a] y[t, a]

(LIMPQ's objective with each activation indicator counted once per tensor)
subject to any of

    size    = sum_l count_l * b / 8 * x[l, b]             <= size budget  (bytes)
    BitOps  = sum_l MACs_l * b * a * z[l, b, a]            <= BitOps budget
    latency = T_w8a8 + sum_l (t_l[b] - t_l[8]) x[l, b]     <= latency budget (seconds)

where ``T_w8a8`` is the measured latency of the whole compiled W8A8 program
and ``t_l[b]`` that of layer ``l``'s kernel with ``b``-bit weights, both
measured on the target (:mod:`gwq_tvm.schedules.latency`: a ``b <= 4`` weight
runs the packed int4 kernel, which is not always the faster one, so the
latency row may rise as widths fall).  Activation widths do not enter it: 4-bit
activations stay in 8-bit containers.

Layers and tensors with a fixed width (the first and last layers and the
model input, as ``end_bits`` does) enter as constants.  ``size`` counts
``bits * count / 8`` bytes of weights, biases excluded.  The compiled
modules store 4-bit weights packed two per byte on the families with an
int4 step (x86 VNNI/AMX, aarch64 sdot; :mod:`gwq_tvm.schedules.pack_layout`),
so 4 and 8 bits are counted as stored there; 2- and 3-bit weights take a
4-bit nibble each and 5- to 7-bit ones an int8 byte, so for those widths
(and on families without an int4 step) this size is below the real one;
:func:`stored_bytes` gives the real one, which the plan records and
``gwq-tvm report`` shows next to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, PlanError

DEFAULT_WEIGHT_BITS = (2, 3, 4, 8)
DEFAULT_ACT_BITS = (4, 8)

LATENCY_UNIT = 1e-6
"""Seconds per unit of the solver's latency row.  scipy's MILP (HiGHS) accepts a constraint violated by up to
1e-6 (its absolute ``mip_feasibility_tolerance``), which is a whole layer's latency in seconds: with the row in
seconds it returned a policy 0.76 us (11%) over a latency budget that no policy met, instead of "infeasible".
In microseconds the tolerance is a picosecond."""


@dataclass(frozen=True)
class Layer:
    """One layer of the allocation problem.

    Attributes
    ----------
    name : str
    tensor : str
        The activation tensor it reads.
    weights : int
        Weight count.
    macs : int
        Multiply-accumulates per sample.
    """

    name: str
    tensor: str
    weights: int
    macs: int


@dataclass(frozen=True)
class Budget:
    """A budget: an absolute value, or ``percent`` of the W8A8 figure."""

    value: float
    percent: bool = False

    def resolve(self, w8a8: float) -> float:
        return self.value / 100.0 * w8a8 if self.percent else self.value

    def __str__(self):
        return f"{self.value:g}%" if self.percent else f"{self.value:g}"


def parse_budget(value, what: str) -> Budget:
    """``"60%"`` (of the W8A8 figure) or an absolute positive number (``"1.5e6"``, ``12000``).

    Raises
    ------
    ConfigError
        If ``value`` is neither.
    """
    if isinstance(value, Budget):
        return value
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        if isinstance(value, bool):
            raise ValueError
        v = float(text[:-1] if percent else text)
    except ValueError:
        raise ConfigError(f"{what} must be a positive number or a percentage of the W8A8 figure (e.g. 60%); got {value!r}") from None
    if not (v > 0 and np.isfinite(v)):
        raise ConfigError(f"{what} must be positive; got {value!r}")
    return Budget(v, percent)


def weight_bytes(count: int, bits: int) -> float:
    """Packed weight bytes: ``count * bits / 8``."""
    return count * bits / 8.0


def stored_bytes(count: int, bits: int, int4_step: bool) -> float:
    """Bytes the compiled module stores: ``count / 2`` (nibbles) for ``bits <= 4`` on a family with an int4 step,
    else ``count`` (an int8 byte each, 5- to 7-bit weights and every width on other families)."""
    return count / 2.0 if bits <= 4 and int4_step else float(count)


@dataclass(frozen=True)
class Policy:
    """A solved allocation.

    Attributes
    ----------
    weight_bits : dict of str to int
        Per layer (the ILP's and the fixed ones).
    act_bits : dict of str to int
        Per activation tensor read by a layer.
    pair_bits : dict of str to (int, int)
        Per layer, the ``(w, a)`` read off its pair variables ``z`` (equals
        ``(weight_bits[l], act_bits[tensor(l)])`` in a consistent solution).
    size_bytes, bitops : float
    size_w8a8, bitops_w8a8 : float
        The same figures with every layer at W8A8.
    objective : float
    solve_seconds : float
        Time in ``scipy.optimize.milp``.
    """

    weight_bits: dict
    act_bits: dict
    pair_bits: dict
    size_bytes: float
    bitops: float
    size_w8a8: float
    bitops_w8a8: float
    objective: float
    solve_seconds: float
    budgets: dict = field(default_factory=dict)
    #: predicted seconds (the latency row) and the measured W8A8 program; ``None`` without a latency table
    latency_s: float | None = None
    latency_w8a8: float | None = None


class Problem:
    """The allocation ILP of ``layers`` (see the module docstring).

    Parameters
    ----------
    layers : list of Layer
    weight_importance : dict of str to dict of int to float
        ``I_w[layer][bits]`` for every layer not in ``fixed_weights``.
    act_importance : dict of str to dict of int to float
        ``I_a[tensor][bits]`` for every tensor not in ``fixed_acts``.
    weight_bits, act_bits : tuple of int
        Candidate widths.
    fixed_weights : dict of str to int
        Layers whose weight width is given.
    fixed_acts : dict of str to int
        Tensors whose width is given.
    alpha : float
        Weight of the weight indicators against the activation ones.
    latency : dict of str to dict of int to float, optional
        ``t_l[b]``, seconds of each layer's kernel at each width it may take and at 8 bits (layers
        missing here cost 0 at every width).
    latency_w8a8 : float, optional
        ``T_w8a8``, seconds of the whole W8A8 program; needed with ``latency``.
    """

    def __init__(self, layers, weight_importance: dict, act_importance: dict, *, weight_bits=DEFAULT_WEIGHT_BITS,
                 act_bits=DEFAULT_ACT_BITS, fixed_weights: dict | None = None, fixed_acts: dict | None = None,
                 alpha: float = 1.0, latency: dict | None = None, latency_w8a8: float | None = None):
        self.layers = list(layers)
        self.wb, self.ab = tuple(sorted(weight_bits)), tuple(sorted(act_bits))
        self.fixed_w, self.fixed_a = dict(fixed_weights or {}), dict(fixed_acts or {})
        self.free_layers = [l for l in self.layers if l.name not in self.fixed_w]
        self.tensors = list(dict.fromkeys(l.tensor for l in self.layers if l.tensor not in self.fixed_a))
        for l in self.free_layers:
            if any(b not in weight_importance.get(l.name, {}) for b in self.wb):
                raise PlanError(f"no weight importance of layer {l.name} at every candidate width {self.wb}")
        for t in self.tensors:
            if any(a not in act_importance.get(t, {}) for a in self.ab):
                raise PlanError(f"no activation importance of tensor {t} at every candidate width {self.ab}")
        self.iw, self.ia, self.alpha = weight_importance, act_importance, float(alpha)
        if (latency is None) != (latency_w8a8 is None):
            raise PlanError("a latency table needs both the layer latencies and the W8A8 program's")
        self.latency, self.latency8 = latency, latency_w8a8
        for l in self.layers if latency is not None else ():
            if l.name in latency and any(b not in latency[l.name] for b in set(self._wbits(l)) | {8}):
                raise PlanError(f"no latency of layer {l.name} at every width {tuple(sorted(set(self._wbits(l)) | {8}))}")
        # variable layout: x (free layer x wb), y (free tensor x ab), z (every layer with a free part x wb' x ab')
        self.index = {}
        for l in self.free_layers:
            for b in self.wb:
                self.index[("x", l.name, b)] = len(self.index)
        for t in self.tensors:
            for a in self.ab:
                self.index[("y", t, a)] = len(self.index)
        for l in self.layers:
            for b in self._wbits(l):
                for a in self._abits(l):
                    self.index[("z", l.name, b, a)] = len(self.index)
        self.n = len(self.index)

    def _wbits(self, layer):
        return (self.fixed_w[layer.name],) if layer.name in self.fixed_w else self.wb

    def _abits(self, layer):
        return (self.fixed_a[layer.tensor],) if layer.tensor in self.fixed_a else self.ab

    # --- the linear forms --------------------------------------------------------------------------------------
    def size_row(self) -> tuple[np.ndarray, float]:
        """``(c, k)``: model size in bytes is ``c @ v + k``."""
        c, k = np.zeros(self.n), 0.0
        for l in self.layers:
            if l.name in self.fixed_w:
                k += weight_bytes(l.weights, self.fixed_w[l.name])
            else:
                for b in self.wb:
                    c[self.index[("x", l.name, b)]] = weight_bytes(l.weights, b)
        return c, k

    def latency_row(self) -> tuple[np.ndarray, float]:
        """``(c, k)``: predicted seconds are ``c @ v + k`` (``T_w8a8`` with each layer's kernel swapped for its width's)."""
        if self.latency is None:
            raise PlanError("a latency budget needs a latency table (gwq_tvm.schedules.latency)")
        c, k = np.zeros(self.n), float(self.latency8)
        for l in self.layers:
            t = self.latency.get(l.name)
            if t is None:
                continue
            k -= t[8]
            if l.name in self.fixed_w:
                k += t[self.fixed_w[l.name]]
            else:
                for b in self.wb:
                    c[self.index[("x", l.name, b)]] = t[b]
        return c, k

    def bitops_row(self) -> np.ndarray:
        """``c``: BitOps per sample are ``c @ v`` (``MACs * w_bits * a_bits`` over the pair variables)."""
        c = np.zeros(self.n)
        for l in self.layers:
            for b in self._wbits(l):
                for a in self._abits(l):
                    c[self.index[("z", l.name, b, a)]] = l.macs * b * a
        return c

    def objective_row(self) -> np.ndarray:
        c = np.zeros(self.n)
        for l in self.free_layers:
            for b in self.wb:
                c[self.index[("x", l.name, b)]] = self.alpha * self.iw[l.name][b]
        for t in self.tensors:
            for a in self.ab:
                c[self.index[("y", t, a)]] = self.ia[t][a]
        return c

    def w8a8(self) -> tuple[float, float]:
        """Size in bytes and BitOps with every layer at 8-bit weights and 8-bit inputs."""
        return (sum(weight_bytes(l.weights, 8) for l in self.layers), float(sum(l.macs * 64 for l in self.layers)))

    def _equalities(self):
        """Rows ``A v = rhs``: one choice per layer and tensor, the pair variables' marginals."""
        rows, rhs = [], []

        def row(entries, value):
            r = np.zeros(self.n)
            for key, coef in entries:
                r[self.index[key]] += coef
            rows.append(r)
            rhs.append(value)

        for l in self.free_layers:
            row([(("x", l.name, b), 1.0) for b in self.wb], 1.0)
        for t in self.tensors:
            row([(("y", t, a), 1.0) for a in self.ab], 1.0)
        for l in self.layers:
            wbits, abits = self._wbits(l), self._abits(l)
            row([(("z", l.name, b, a), 1.0) for b in wbits for a in abits], 1.0)
            if l.name not in self.fixed_w:  # sum_a z[l, b, a] = x[l, b]
                for b in wbits:
                    row([(("z", l.name, b, a), 1.0) for a in abits] + [(("x", l.name, b), -1.0)], 0.0)
            if l.tensor not in self.fixed_a:  # sum_b z[l, b, a] = y[t(l), a]
                for a in abits:
                    row([(("z", l.name, b, a), 1.0) for b in wbits] + [(("y", l.tensor, a), -1.0)], 0.0)
        return np.array(rows), np.array(rhs)

    def _milp(self, c, size_max=None, bitops_max=None, latency_max=None):
        from scipy.optimize import Bounds, LinearConstraint, milp

        a_eq, b_eq = self._equalities()
        cons = [LinearConstraint(a_eq, b_eq, b_eq)]
        if size_max is not None:
            row, k = self.size_row()
            cons.append(LinearConstraint(row[None, :], -np.inf, size_max - k))
        if bitops_max is not None:
            cons.append(LinearConstraint(self.bitops_row()[None, :], -np.inf, bitops_max))
        if latency_max is not None:  # in microseconds: see LATENCY_UNIT
            row, k = self.latency_row()
            cons.append(LinearConstraint(row[None, :] / LATENCY_UNIT, -np.inf, (latency_max - k) / LATENCY_UNIT))
        t0 = time.perf_counter()
        res = milp(c, constraints=cons, integrality=np.ones(self.n), bounds=Bounds(0, 1))
        return res, time.perf_counter() - t0

    def smallest(self, which: str, size_max=None, bitops_max=None, latency_max=None) -> float | None:
        """The smallest ``which`` (``"size"``, ``"bitops"`` or ``"latency"``) any policy meeting the other
        bounds reaches (``None`` when those bounds alone are infeasible)."""
        row, k = {"size": self.size_row, "latency": self.latency_row}.get(which, lambda: (self.bitops_row(), 0.0))()
        res, _ = self._milp(row, size_max, bitops_max, latency_max)
        return float(row @ np.round(res.x) + k) if res.x is not None else None

    def solve(self, size_budget: Budget | None = None, bitops_budget: Budget | None = None,
              latency_budget: Budget | None = None) -> Policy:
        """The minimum-importance policy within the budgets (any may be ``None``: unconstrained).

        Raises
        ------
        PlanError
            One line naming the smallest feasible value of the budget that cannot be met.
        """
        size8, bitops8 = self.w8a8()
        smax = size_budget.resolve(size8) if size_budget is not None else None
        bmax = bitops_budget.resolve(bitops8) if bitops_budget is not None else None
        lmax = latency_budget.resolve(self.latency8) if latency_budget is not None else None
        if lmax is not None:
            self.latency_row()  # no table: one line
        # a little slack: the solver's feasibility tolerance must not turn "exactly the budget" into infeasible
        sbound = smax * (1 + 1e-9) if smax is not None else None
        bbound = bmax * (1 + 1e-9) if bmax is not None else None
        lbound = lmax * (1 + 1e-9) if lmax is not None else None
        res, seconds = self._milp(self.objective_row(), sbound, bbound, lbound)
        if res.x is None:
            if lbound is not None and (sbound is None or self.smallest("size") <= sbound) and \
                    (bbound is None or self.smallest("bitops") <= bbound):
                least = self.smallest("latency", sbound, bbound)
                if least is not None:
                    raise PlanError(f"latency budget {_latency_text(latency_budget)} is infeasible"
                                    + (" with the other budgets" if sbound is not None or bbound is not None else "")
                                    + f": the smallest feasible predicted latency is {_show_seconds(least, latency_budget, self.latency8)}")
            raise PlanError(self._infeasible(size_budget, bitops_budget, smax, bmax, sbound, bbound, size8, bitops8))
        v = np.round(res.x)
        wbits = dict(self.fixed_w)
        for l in self.free_layers:
            wbits[l.name] = next(b for b in self.wb if v[self.index[("x", l.name, b)]] == 1)
        abits = {t: a for t, a in self.fixed_a.items() if any(l.tensor == t for l in self.layers)}
        for t in self.tensors:
            abits[t] = next(a for a in self.ab if v[self.index[("y", t, a)]] == 1)
        pairs = {}
        for l in self.layers:
            pairs[l.name] = next((b, a) for b in self._wbits(l) for a in self._abits(l) if v[self.index[("z", l.name, b, a)]] == 1)
        row, k = self.size_row()
        budgets = {}
        if size_budget is not None:
            budgets["size"] = {"given": str(size_budget), "bytes": smax}
        if bitops_budget is not None:
            budgets["bitops"] = {"given": str(bitops_budget), "bitops": bmax}
        if latency_budget is not None:
            budgets["latency"] = {"given": _latency_text(latency_budget), "seconds": lmax}
        latency = None
        if self.latency is not None:
            lrow, lk = self.latency_row()
            latency = float(lrow @ v + lk)
        return Policy(wbits, abits, pairs, float(row @ v + k), float(self.bitops_row() @ v), size8, bitops8,
                      float(self.objective_row() @ v), seconds, budgets, latency, self.latency8)

    def _policy(self, wbits: dict, abits: dict, objective: float, seconds: float, size_budget, bitops_budget,
                smax, bmax) -> Policy:
        size8, bitops8 = self.w8a8()
        wbits = {**self.fixed_w, **wbits}
        used = {l.tensor for l in self.layers}
        abits = {**{t: a for t, a in self.fixed_a.items() if t in used}, **abits}
        pairs = {l.name: (wbits[l.name], abits[l.tensor]) for l in self.layers}
        size = sum(weight_bytes(l.weights, wbits[l.name]) for l in self.layers)
        bitops = float(sum(l.macs * wbits[l.name] * abits[l.tensor] for l in self.layers))
        budgets = {}
        if size_budget is not None:
            budgets["size"] = {"given": str(size_budget), "bytes": smax}
        if bitops_budget is not None:
            budgets["bitops"] = {"given": str(bitops_budget), "bitops": bmax}
        return Policy(wbits, abits, pairs, size, bitops, size8, bitops8, objective, seconds, budgets)

    def greedy(self, size_budget: Budget | None = None, bitops_budget: Budget | None = None,
               latency_budget: Budget | None = None) -> Policy:
        """The greedy baseline: from every free choice at its widest, repeatedly lower the least sensitive one.

        While a budget is exceeded, among the moves "one free layer's weights (or
        one free tensor) to its next lower candidate width" that reduce an
        exceeded figure, take the one whose importance rises least
        (``alpha * (I_w[l][b'] - I_w[l][b])`` or ``I_a[t][a'] - I_a[t][a]``; ties:
        the larger reduction, then graph order).  No look-ahead: it can stop
        above a budget the ILP meets only if every choice is already at its
        lowest width, which is infeasible for the ILP too.

        Raises
        ------
        PlanError
            As :meth:`solve` for an infeasible budget.
        ConfigError
            For a latency budget: lowering a width can raise the latency (an int4 kernel may be the slower
            one), so this baseline's one-directional moves do not apply; use the ILP.
        """
        if latency_budget is not None:
            raise ConfigError("the greedy baseline takes size and BitOps budgets only; a latency budget needs the ILP")
        t0 = time.perf_counter()
        size8, bitops8 = self.w8a8()
        smax = size_budget.resolve(size8) if size_budget is not None else None
        bmax = bitops_budget.resolve(bitops8) if bitops_budget is not None else None
        sbound = smax * (1 + 1e-9) if smax is not None else None
        bbound = bmax * (1 + 1e-9) if bmax is not None else None
        wbits = {l.name: self.wb[-1] for l in self.free_layers}
        abits = {t: self.ab[-1] for t in self.tensors}

        def figures():
            wb, ab = {**self.fixed_w, **wbits}, {**self.fixed_a, **abits}
            return (sum(weight_bytes(l.weights, wb[l.name]) for l in self.layers),
                    sum(l.macs * wb[l.name] * ab[l.tensor] for l in self.layers))

        while True:
            size, bitops = figures()
            over_size = sbound is not None and size > sbound
            over_bitops = bbound is not None and bitops > bbound
            if not (over_size or over_bitops):
                break
            best = None
            for i, l in enumerate(self.free_layers):
                b = wbits[l.name]
                if b == self.wb[0]:
                    continue
                lower = self.wb[self.wb.index(b) - 1]
                wbits[l.name] = lower
                s2, o2 = figures()
                wbits[l.name] = b
                gain = (size - s2 if over_size else 0.0) + (bitops - o2 if over_bitops else 0.0) / max(bitops8, 1.0) * size8
                if gain > 0:
                    cost = self.alpha * (self.iw[l.name][lower] - self.iw[l.name][b])
                    best = min(best or (np.inf,), (cost, -gain, i, "w", l.name, lower))
            if over_bitops:
                for j, t in enumerate(self.tensors):
                    a = abits[t]
                    if a == self.ab[0]:
                        continue
                    lower = self.ab[self.ab.index(a) - 1]
                    abits[t] = lower
                    _, o2 = figures()
                    abits[t] = a
                    if bitops - o2 > 0:
                        cost = self.ia[t][lower] - self.ia[t][a]
                        best = min(best or (np.inf,), (cost, -(bitops - o2) / max(bitops8, 1.0) * size8, len(self.free_layers) + j, "a", t, lower))
            if best is None:
                raise PlanError(self._infeasible(size_budget, bitops_budget, smax, bmax, sbound, bbound, size8, bitops8))
            _, _, _, what, name, lower = best
            (wbits if what == "w" else abits)[name] = lower
        objective = sum(self.alpha * self.iw[n][b] for n, b in wbits.items()) + sum(self.ia[t][a] for t, a in abits.items())
        return self._policy(wbits, abits, float(objective), time.perf_counter() - t0, size_budget, bitops_budget, smax, bmax)

    def _infeasible(self, size_budget, bitops_budget, smax, bmax, sbound, bbound, size8, bitops8) -> str:
        def show(value, budget, w8a8, unit):
            pct = 100.0 * value / w8a8
            return f"{pct:.4g}% ({value:.6g} {unit})" if budget.percent else f"{value:.6g} {unit} ({pct:.4g}% of W8A8)"

        # every layer and tensor at its lowest width minimises size and BitOps at once, so when the budgets
        # together are infeasible one of them is infeasible alone
        if size_budget is not None:
            alone = self.smallest("size")
            if alone > sbound:
                return f"size budget {size_budget} is infeasible: the smallest feasible size is {show(alone, size_budget, size8, 'bytes')}"
        alone = self.smallest("bitops")
        return (f"BitOps budget {bitops_budget} is infeasible: the smallest feasible BitOps are "
                f"{show(alone, bitops_budget, bitops8, 'BitOps')}")


def _latency_text(budget: Budget) -> str:
    return str(budget) if budget.percent else f"{budget.value * 1e3:.6g} ms"


def _show_seconds(value: float, budget: Budget, w8a8: float) -> str:
    pct = 100.0 * value / w8a8
    return f"{pct:.4g}% ({value * 1e3:.4g} ms)" if budget.percent else f"{value * 1e3:.4g} ms ({pct:.4g}% of W8A8)"


def parse_latency_budget(value) -> Budget:
    """``"0.8ms"``, ``"800us"``, ``"0.0008s"`` or ``"0.0008"`` (seconds), or ``"95%"`` of the measured W8A8 program.

    Raises
    ------
    ConfigError
        If ``value`` is none of these.
    """
    if isinstance(value, Budget):
        return value
    text = str(value).strip().lower()
    for unit, factor in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if text.endswith(unit) and not isinstance(value, bool):
            try:
                v = float(text[:-len(unit)]) * factor
            except ValueError:
                break
            if not (v > 0 and np.isfinite(v)):
                raise ConfigError(f"latency_budget must be positive; got {value!r}")
            return Budget(v)
    try:
        return parse_budget(value, "latency_budget")
    except ConfigError:
        raise ConfigError(f"latency_budget must be a time (0.8ms, 800us, 0.0008s) or a percentage of the measured "
                          f"W8A8 program (e.g. 95%); got {value!r}") from None


def monotone(importance: dict) -> dict:
    """``{bits: value}`` made non-increasing in ``bits``: ``I[b] = max(I[b'] for b' >= b)``.

    A measured indicator that credits a lower width with *less* damage than a
    higher one is noise (LIMPQ erases such points too); the envelope keeps the
    ILP from buying it.
    """
    out, run = {}, -np.inf
    for b in sorted(importance, reverse=True):
        run = max(run, float(importance[b]))
        out[b] = run
    return out
