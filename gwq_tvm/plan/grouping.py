"""GWQ grouping: which activation tensors share a scale mantissa (pure numpy; DESIGN.md section 3).

Every quantized tensor ``t`` gets the scale ``s_t = mu_g * 2**e_t``: ``mu_g`` in
``[1, 2)`` is shared by the tensor's group ``g``, ``e_t`` is its own exponent.
We work with the *phase* ``log2(mu_g)`` in ``[0, 1)``, on a grid of
:data:`PHASES` points (``mu = 2**(k / PHASES)``).

1. **Error curve** (:func:`error_curve`).  ``dE_t(k)`` is the noise the
   tensor gains when its scale must have phase ``k`` (with the best exponent
   for that phase, under the calibration rule), relative to its best phase,
   as a fraction of the tensor's signal power ``E[x**2]``.  It is periodic in
   ``log2`` of the scale, so tensors whose best scales differ by exact powers
   of two have identical curves and share a group at zero added error.
2. **Edge cost**.  An SFC edge (:func:`gwq_tvm.plan.program.sfc_edges`)
   carrying ``n_e`` elements per sample is a shift when both ends share a
   phase (weights have power-of-two scales in GWQ mode) and a multiply
   otherwise, costing ``n_e / N`` (``N``: all SFC elements).  Edges whose fixed
   factor is not a power of two (the ``1/49`` of a 7x7 average pool) are
   multiplies whatever the grouping.
3. **Objective**: ``J = sum_t dE_t(phase(t)) + sfc_cost * sum_e cost_e [phase(src) != phase(dst)]``,
   minimised over at most ``K`` phases and the assignment of tensors to them.
   For fixed phases this is a Potts labelling of the SFC graph, solved by
   alpha-expansion (each move an exact s-t min cut); for a fixed assignment
   each group's best phase is the argmin of its members' summed curves.  Groups
   are added one at a time (each candidate phase a tensor's own best phase)
   while ``J`` drops.  Everything is deterministic (ties go to the lower index).

``sfc_cost = 0`` is clustering by error alone (the baseline the benchmark
compares against); ``tolerance`` mode sweeps ``sfc_cost`` and the number of
groups (at most :data:`TOLERANCE_MAX_GROUPS`) for the plan with the fewest
multiply elements whose total added error is within the tolerance.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..stats import TensorStats, quantization_error, signal_power
from ..errors import PlanError
from .program import SfcEdge

#: Phases per octave: mantissas are ``2**(k / PHASES)`` (steps of 0.54%).
PHASES = 128
#: Octaves of scales searched around the calibrated scale when drawing a curve.
_OCTAVES = 5
#: ``sfc_cost`` values tolerance mode searches (plus 0), largest first.
TOLERANCE_SWEEP = tuple(float(v) for v in np.geomspace(10.0, 1e-5, 31))
#: Most groups tolerance mode uses.
TOLERANCE_MAX_GROUPS = 8
#: Seed phases tried per added group.
CANDIDATE_BINS = 16
_EPS = 1e-12


@dataclass(frozen=True)
class ErrorCurve:
    """Added error of one tensor as a function of its scale's phase.

    Attributes
    ----------
    added : numpy.ndarray
        ``(PHASES,)``: noise added at each phase relative to the best phase, as a
        fraction of the tensor's signal power (0 at the best phase).
    exponent : numpy.ndarray
        ``(PHASES,)`` int: the exponent ``e`` that phase ``k`` uses (scale ``2**(e + k/PHASES)``).
    nsr : float
        Noise-to-signal power at the best phase (the per-tensor optimum).
    weight : float
        1 for tensors the program materializes, 0 for the rest (their scale is never used).
    """

    added: np.ndarray
    exponent: np.ndarray
    nsr: float = 0.0
    weight: float = 1.0

    @property
    def best_phase(self) -> int:
        return int(np.argmin(self.added))

    def scale(self, phase: int) -> float:
        return float(np.ldexp(2.0 ** (phase / PHASES), int(self.exponent[phase])))


def error_curve(stats: TensorStats, scale: float, qmax: int, *, search: bool = True, weight: float = 1.0) -> ErrorCurve:
    """The :class:`ErrorCurve` of a calibrated tensor.

    Parameters
    ----------
    stats : TensorStats
        The tensor's finalized statistics.
    scale : float
        The scale the calibration rule picks for the tensor on its own.
    qmax : int
        Largest integer level of the tensor.
    search : bool
        ``True`` (MSE calibration): each phase takes the exponent of least error.
        ``False`` (max/percentile): each phase takes the smallest scale not below
        ``scale``, so the rule's clipping range is kept.
    weight : float
        See :attr:`ErrorCurve.weight`.
    """
    zero = np.zeros(PHASES)
    power = signal_power(stats)
    if stats.absmax == 0 or power == 0 or not scale > 0:
        return ErrorCurve(zero, np.zeros(PHASES, dtype=np.int64), 0.0, 0.0)
    base = int(np.floor(np.log2(scale))) - 2
    steps = np.arange(_OCTAVES * PHASES)
    log_scales = base + steps / PHASES
    err = quantization_error(stats, np.exp2(log_scales), qmax)
    if not search:
        err = np.where(np.exp2(log_scales) >= scale * (1 - 1e-12), err, np.inf)
    by_phase = err.reshape(_OCTAVES, PHASES)  # row o, column k: scale 2**(base + o + k/PHASES)
    octave = np.argmin(by_phase, axis=0) if search else np.argmax(np.isfinite(by_phase), axis=0)
    best = by_phase[octave, np.arange(PHASES)]
    added = (best - best.min()) / power
    return ErrorCurve(added, (base + octave).astype(np.int64), float(best.min() / power), weight)


@dataclass(frozen=True)
class Grouping:
    """The result of :func:`group_tensors`.

    Attributes
    ----------
    tensors : tuple of str
        Tensor names in graph order.
    phases : tuple of int
        Grid phase of each group (``mantissa = 2**(phase / PHASES)``); groups
        are numbered by their first member in graph order.
    assignment : tuple of int
        Group index of each tensor.
    added_error : float
        Sum over tensors of the added noise-to-signal power.
    multiply_share : float
        Fraction of SFC elements that take a multiply.
    sfc_cost : float
        The weight of the multiply cost that produced this grouping.
    """

    tensors: tuple
    phases: tuple
    assignment: tuple
    added_error: float
    multiply_share: float
    sfc_cost: float

    @property
    def shift_share(self) -> float:
        """Fraction of SFC elements that are shifts."""
        return 1.0 - self.multiply_share

    @property
    def mantissas(self) -> tuple:
        return tuple(2.0 ** (p / PHASES) for p in self.phases)

    def members(self, group: int) -> list[str]:
        return [t for t, g in zip(self.tensors, self.assignment) if g == group]

    def group_of(self, tensor: str) -> int:
        return self.assignment[self.tensors.index(tensor)]


class _Problem:
    """Unary costs ``D`` (tensors x phases) and pairwise Potts weights of the SFC graph."""

    def __init__(self, names: list[str], curves: dict, edges: list[SfcEdge]):
        self.names = names
        index = {n: i for i, n in enumerate(names)}
        self.D = np.stack([curves[n].added * curves[n].weight for n in names])
        total = sum(e.elements for e in edges)
        pair_w: dict = {}
        fixed = 0
        for e in edges:
            if e.src not in index or e.dst not in index:
                raise PlanError(f"SFC edge {e.src} -> {e.dst} names a tensor without an error curve")
            i, j = index[e.src], index[e.dst]
            if not _is_power_of_two(e.factor):
                fixed += e.elements
            elif i != j:
                key = (min(i, j), max(i, j))
                pair_w[key] = pair_w.get(key, 0) + e.elements
        self.total = max(total, 1)
        self.fixed_share = fixed / self.total
        self.pairs = [(i, j, w / self.total) for (i, j), w in sorted(pair_w.items())]
        # seeds for a new group: tensors' own best phases, at most one per 1/CANDIDATE_BINS of an octave
        # (refinement moves a seed to its members' best phase, so a seed only has to land in the basin)
        seeds: dict[int, int] = {}
        for row in self.D:
            best = int(np.argmin(row))
            seeds.setdefault(best * CANDIDATE_BINS // PHASES, best)
        self.candidates = sorted(seeds.values())

    def split(self, assign: np.ndarray, phases: list[int]) -> tuple[float, float]:
        """(added error, multiply share) of an assignment."""
        ph = np.asarray(phases)[assign]
        added = float(self.D[np.arange(len(assign)), ph].sum())
        mult = sum(w for i, j, w in self.pairs if ph[i] != ph[j])
        return added, self.fixed_share + mult

    def energy(self, assign, phases, lam) -> float:
        added, mult = self.split(assign, phases)
        return added + lam * mult


def _is_power_of_two(x: float) -> bool:
    m, _ = np.frexp(x)
    return x > 0 and m == 0.5


def _max_flow_source_side(cap: np.ndarray, s: int, t: int) -> np.ndarray:
    """Edmonds-Karp on a dense capacity matrix; returns the source side of a minimum cut."""
    res = cap.astype(np.float64).copy()
    m = len(res)
    tol = 1e-15 * max(1.0, float(cap.max()))
    while True:
        parent = np.full(m, -1)
        parent[s] = s
        queue = deque([s])
        while queue and parent[t] < 0:
            u = queue.popleft()
            for v in np.nonzero((res[u] > tol) & (parent < 0))[0]:
                parent[v] = u
                queue.append(v)
        if parent[t] < 0:
            return parent >= 0
        path, v = [], t
        while v != s:
            path.append((parent[v], v))
            v = parent[v]
        push = min(res[u, v] for u, v in path)
        for u, v in path:
            res[u, v] -= push
            res[v, u] += push


def _expand(prob: _Problem, assign: np.ndarray, phases: list[int], alpha: int, lam: float) -> np.ndarray:
    """The optimal alpha-expansion move: every tensor keeps its group or moves to ``alpha``.

    The binary move energy is submodular for Potts pairs, so one s-t min cut
    solves it exactly (x = 1, on the sink side, means "move to alpha").
    """
    n = len(assign)
    u0 = prob.D[np.arange(n), np.asarray(phases)[assign]].copy()
    u1 = prob.D[:, phases[alpha]].copy()
    cap = np.zeros((n + 2, n + 2))
    s, t = n, n + 1
    for i, j, w in prob.pairs:
        w = lam * w
        for p, q in ((i, j), (j, i)):  # the Potts weight is symmetric; split it over both directions
            a = 0.5 * w * (assign[p] != assign[q])
            b = 0.5 * w * (assign[p] != alpha)
            c = 0.5 * w * (alpha != assign[q])
            u1[p] += c - a
            u1[q] -= c
            cap[p, q] += b + c - a
    low = np.minimum(u0, u1)
    cap[s, :n] = u1 - low
    cap[:n, t] = u0 - low
    keep = _max_flow_source_side(cap, s, t)[:n]
    out = assign.copy()
    out[~keep] = alpha
    return out


def _refine(prob: _Problem, assign: np.ndarray, phases: list[int], lam: float):
    """Alternate expansion moves and phase updates until the energy stops dropping.

    ``phases`` must be distinct (labels are phases; the Potts cost compares labels).
    """
    phases = list(phases)
    energy = prob.energy(assign, phases, lam)
    for _ in range(100):
        improved = False
        for alpha in range(len(phases)):
            moved = _expand(prob, assign, phases, alpha, lam)
            e = prob.energy(moved, phases, lam)
            if e < energy - _EPS:
                assign, energy, improved = moved, e, True
        # phase update: each group's best phase for its members (the edge cost does not depend on it)
        new_phases = [int(np.argmin(prob.D[assign == g].sum(axis=0))) if (assign == g).any() else p for g, p in enumerate(phases)]
        new_assign, new_phases = _canonical(assign, new_phases)
        e = prob.energy(new_assign, new_phases, lam)
        if e < energy - _EPS or (e <= energy + _EPS and len(new_phases) < len(phases)):
            assign, phases, energy, improved = new_assign, new_phases, e, True
        if not improved:
            break
    return assign, phases, energy


def _canonical(assign: np.ndarray, phases: list[int]):
    """Merge groups with equal phases, drop empty ones, number groups by first member."""
    order, new_phases, remap = [], [], {}
    for g in assign:
        p = phases[g]
        if p not in remap:
            remap[p] = len(new_phases)
            new_phases.append(p)
        order.append(remap[p])
    return np.asarray(order, dtype=np.int64), new_phases


def _solve(prob: _Problem, k_max: int, lam: float) -> list:
    """Greedy group addition for weight ``lam``: every state it passes through, the last one the answer.

    State ``i`` is what the search returns with ``k_max`` set to its number of
    groups, so tolerance mode gets the answers for every ``k <= k_max`` from one run.
    """
    n = len(prob.names)
    assign = np.zeros(n, dtype=np.int64)
    phases = [int(np.argmin(prob.D.sum(axis=0)))]
    energy = prob.energy(assign, phases, lam)
    states = [_canonical(assign, phases)]
    while len(phases) < k_max:
        best = None
        for cand in prob.candidates:
            if cand in phases:
                continue
            a, ph, e = _refine(prob, assign, phases + [cand], lam)
            if best is None or e < best[2] - _EPS:
                best = (a, ph, e)
        if best is None or best[2] >= energy - _EPS:
            break
        assign, phases, energy = best
        states.append(_canonical(assign, phases))
    return states


#: GWQ's group count when neither ``groups`` nor ``tolerance`` is given (fewer when the model has fewer tensors)
DEFAULT_GROUPS = 4


def group_tensors(curves: dict, edges: list[SfcEdge], *, groups: int | None = None, tolerance: float | None = None,
                  sfc_cost: float = 0.05) -> Grouping:
    """Group tensors minimising added error plus ``sfc_cost`` times the multiply share.

    Parameters
    ----------
    curves : dict of str to ErrorCurve
        One curve per quantized tensor, in graph order.
    edges : list of SfcEdge
        The program's SFC edges (between tensors of ``curves``).
    groups : int, optional
        At most this many groups (``1 <= groups <= len(curves)``); default
        ``min(DEFAULT_GROUPS, len(curves))``.
    tolerance : float, optional
        Instead of ``groups``: the grouping with the smallest multiply share whose
        added error is at most ``tolerance`` (``sfc_cost`` is then swept).
    sfc_cost : float
        Weight of the multiply share (ignored with ``tolerance``).

    Raises
    ------
    PlanError
        If ``groups`` is out of range.
    """
    names = list(curves)
    if not names:
        raise PlanError("no quantized tensors to group")
    prob = _Problem(names, curves, edges)

    def result(sol, lam):
        assign, phases = sol
        added, mult = prob.split(assign, phases)
        return Grouping(tuple(names), tuple(phases), tuple(int(a) for a in assign), added, mult, lam)

    if tolerance is None:
        k = min(DEFAULT_GROUPS, len(names)) if groups is None else groups  # the default: at most 4, as documented
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(names):
            raise PlanError(f"groups must be from 1 to the number of quantized tensors ({len(names)}); got {k!r}")
        return result(_solve(prob, k, sfc_cost)[-1], sfc_cost)
    seen = sweep_groupings(curves, edges)
    feasible = [g for g in seen if g.added_error <= tolerance + _EPS]
    if not feasible:
        raise PlanError(f"no grouping with at most {TOLERANCE_MAX_GROUPS} groups adds error <= {tolerance:g} "
                        f"(the least found: {min(g.added_error for g in seen):.4g}); use --groups or a larger tolerance")
    return min(feasible, key=lambda g: (g.multiply_share, g.added_error, len(g.phases)))


def sweep_groupings(curves: dict, edges: list[SfcEdge]) -> list[Grouping]:
    """Every distinct grouping of the ``sfc_cost`` sweep, for every number of groups up to the cap.

    The candidates of tolerance mode (and of the loss-based choice in
    :mod:`gwq_tvm.qat.select`): the added error is monotone neither in
    ``sfc_cost`` nor in the number of groups alone (a smaller cost with fewer
    groups can beat a larger cost with more), so all pairs are kept.  Ordered
    by the sweep (largest ``sfc_cost`` first, fewer groups first); a grouping
    reached twice keeps its first ``sfc_cost``.
    """
    names = list(curves)
    if not names:
        raise PlanError("no quantized tensors to group")
    prob = _Problem(names, curves, edges)
    k_max = min(len(names), TOLERANCE_MAX_GROUPS)
    out, keys = [], set()
    for lam in TOLERANCE_SWEEP + (0.0,):
        for assign, phases in _solve(prob, k_max, lam):
            key = (tuple(int(a) for a in assign), tuple(phases))
            if key not in keys:
                keys.add(key)
                added, mult = prob.split(assign, phases)
                out.append(Grouping(tuple(names), key[1], key[0], added, mult, lam))
    return out


def similarity(curves: dict) -> np.ndarray:
    """Pairwise added error of making two tensors share a mantissa: ``min_k dE_i(k) + dE_j(k)``."""
    d = np.stack([c.added * c.weight for c in curves.values()])
    return (d[:, None, :] + d[None, :, :]).min(axis=2)
