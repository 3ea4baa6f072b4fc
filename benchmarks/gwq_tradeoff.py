"""Accuracy vs SFC shift share of GWQ on the bundled model, post-training (issue 3).

For each bit setting (W8A8, W4A4, W4A3, W4A2) one calibration (512 images)
feeds every plan; each plan is realized, checked integer-only, compiled with
TVM and run on the Fashion-MNIST test images.  Rows:

* ``per-layer``: every tensor its own scale (dyadic multiplies).
* ``pot``: naive power-of-two (calibrated scale rounded up to ``2**k``, weights too).
* ``gwq K=k``: GWQ, at most ``k`` groups, joint objective (``sfc_cost`` default).
* ``gwq tol=f``: GWQ tolerance mode, ``f`` times the added error of one group.
* ``gwq tol=err K=k``: GWQ tolerance mode at the added error of ``error-only K=k``
  (the same error budget: the row shows how many multiplies GWQ saves for it).
* ``gwq share>=err K=k``: GWQ ``min_shift_share`` at the shift share of
  ``error-only K=k``: of the groupings the search visits with at least that
  share, the one of least calibration loss (softmax KL on the 1024 unlabelled
  calibration images; :mod:`gwq_tvm.qat.select`).
* ``error-only K=k``: the same grouping with ``sfc_cost = 0`` (clustering by error alone,
  on the same sensitivity-weighted curves, so the rows differ only in the graph term).

Every row follows the usual low-bit protocol: the model input (the image) and
the first and last weight layers (stem conv, classifier) stay at 8 bits
(``--all-layers`` quantizes them too).  Without it, 4-bit power-of-two weights
in the stem (9 weights per filter) alone cost about 18 pt at W4A8.
Latency is the median per-image time at batch 1 (untuned default schedules).

With ``--refine-steps N`` every row's plan (all rows alike) is refined on the
1024 calibration images before it is compiled: ``N`` Adam steps on the group
mantissas, tensor exponents and weight-scale exponents against the float
model's softmax, weights frozen, groups unchanged
(:func:`gwq_tvm.qat.refine.refine_plan`).  The refined tables go to their own
files (tag ``_refined`` by default) and show the unrefined accuracy of the same
row (from ``gwq_tradeoff.json``) beside the refined one.

Usage::

    python benchmarks/gwq_tradeoff.py                 # all 10k test images (about 45 min on 2 cores)
    python benchmarks/gwq_tradeoff.py --limit 2000    # quicker look
    python benchmarks/gwq_tradeoff.py --refine-steps 100 --no-tolerance --settings W4A2

Writes ``benchmarks/results/gwq_tradeoff/gwq_tradeoff.{json,md,png}`` and, bit-packed, every
row's per-image correctness (``gwq_tradeoff_correct.npz``): under each table a
line says whether GWQ dominates error-only (for every error-only point a GWQ
point with as high a shift share and accuracy), with the paired standard error
of each shortfall where both rows' images were kept.

Beside accuracy every row has its **test KL**: the mean KL divergence of the
integer program's softmax from the fp32 model's on the same test images
(per-image values in ``gwq_tradeoff_kl.npz``).  Where plans sit within a few
tenths of a point of each other, top-1 accuracy on 10k images cannot order
them (its paired standard error is 0.1-0.2 pt), while this continuous
fidelity measure can; a second dominance line compares the curves on it
(lower is better).  It is reported beside the issue's accuracy criterion,
never in its place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

import gwq_tvm

import _plot  # benchmarks/_plot.py: the script's own folder is on sys.path
from gwq_tvm.calibration.sensitivity import tensor_sensitivity
from gwq_tvm.config import DEFAULT_SFC_COST, QuantConfig
from gwq_tvm.data import bundled_model, fashion_mnist
from gwq_tvm.plan.planner import gwq_grouping
from gwq_tvm.plan.program import sfc_sites, sfc_summary
from gwq_tvm.runtime import host_target

OUT = Path(__file__).resolve().parent / "results" / "gwq_tradeoff"
SETTINGS = {"W8A8": (8, 8), "W4A4": (4, 4), "W4A3": (4, 3), "W4A2": (4, 2)}
TARGETS = {"W8A8": (0.90, 0.5), "W4A4": (0.90, 1.0), "W4A2": (0.75, 2.0)}  # shift share >=, within pt of per-layer
TOL_FRACTIONS = (0.5, 0.25, 0.1)


@dataclass(frozen=True)
class Metric:
    """A per-row quantity the dominance verdict can compare curves on.

    Attributes
    ----------
    key : str
        The row's field (its per-image values are what the standard errors use).
    higher_is_better : bool
    name : str
        How the verdict names it.
    scale : float
        Factor from the field's unit to the unit values and gaps are quoted in.
    spec : str
        Format spec of a value and of a gap, after ``scale``.
    suffix, gap_suffix : str
        Unit after a value and after a gap.
    """

    key: str
    higher_is_better: bool
    name: str
    scale: float
    spec: str
    suffix: str
    gap_suffix: str

    def at_least_as_good(self, a, b) -> bool:
        return a >= b if self.higher_is_better else a <= b

    def show(self, value) -> str:
        return f"{value * self.scale:{self.spec}}{self.suffix}"

    def show_gap(self, gap) -> str:
        """``gap`` is already in the quoted unit (a difference times ``scale``, or a standard error)."""
        return f"{gap:{self.spec}}{self.gap_suffix}"


ACCURACY = Metric("accuracy", True, "accuracy", 100.0, ".2f", "%", " pt")
TEST_KL = Metric("test_kl", False, "test KL", 1.0, "#.3g", "", "")  # three significant digits: W8A8's are about 5e-4


def kl_per_image(reference, logits) -> np.ndarray:
    """``KL(softmax(reference) || softmax(logits))`` of every row (float64, nats)."""
    def log_softmax(z):
        z = np.asarray(z, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    ref = log_softmax(reference)
    return (np.exp(ref) * (ref - log_softmax(logits))).sum(axis=1)


def end_layers(graph, abits):
    """Bit overrides of the usual protocol: input, first and last weight layers at 8 bits."""
    weighted = [n for n, node in graph.nodes.items() if node.weight is not None]
    return {"input": (8, 8), weighted[0]: (8, abits), weighted[-1]: (8, abits)}


def rows_for(base, graph, stats, sfc_cost, sens, tolerance=True):
    rows = [("per-layer", base), ("pot", base.replace(mode="pot"))]
    for k in (1, 2, 3, 4):
        rows.append((f"gwq K={k}", base.replace(mode="gwq", groups=k, sfc_cost=sfc_cost)))
    _, one = gwq_grouping(graph, stats, base.replace(mode="gwq", groups=1), sensitivity=sens)
    for f in TOL_FRACTIONS if tolerance else ():
        rows.append((f"gwq tol={f:g}", base.replace(mode="gwq", tolerance=f * one.added_error)))
    for k in (2, 3, 4):
        rows.append((f"error-only K={k}", base.replace(mode="gwq", groups=k, sfc_cost=0.0)))
    for k in (2, 3, 4) if tolerance else ():
        _, err = gwq_grouping(graph, stats, base.replace(mode="gwq", groups=k, sfc_cost=0.0), sensitivity=sens)
        rows.append((f"gwq tol=err K={k}", base.replace(mode="gwq", tolerance=err.added_error)))
        rows.append((f"gwq share>=err K={k}", base.replace(mode="gwq", min_shift_share=err.shift_share)))
    return rows


def load_correct(stem, n) -> dict:
    """The per-image correctness an earlier run saved beside ``stem`` (``{"W4A4|label": bool array}``)."""
    path = Path(f"{stem}_correct.npz")
    if not path.is_file():
        return {}
    with np.load(path) as f:
        return {k: np.unpackbits(f[k])[:n].astype(bool) for k in f.files}


def load_kl(stem) -> dict:
    """The per-image test KL an earlier run saved beside ``stem`` (``{"W4A4|label": float array}``)."""
    path = Path(f"{stem}_kl.npz")
    if not path.is_file():
        return {}
    with np.load(path) as f:
        return {k: f[k].astype(np.float64) for k in f.files}


def latency_ms(ex, shape):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = tvm.runtime.tensor(np.zeros((1,) + tuple(shape[1:]), dtype="float32"))
    res = vm.time_evaluator("main", tvm.cpu(), number=20, repeat=7)(x)
    return float(np.median(res.results) * 1e3)


def plan_key(plan):
    return hashlib.sha1(json.dumps({k: v for k, v in plan.to_dict().items() if k != "config"}, sort_keys=True).encode()).hexdigest()


def evaluate(label, fm, graph, stats, sens, cfg, test_x, test_y, fp_logits, cache, calib, refine=None):
    """Measure one row; ``refine`` = (calibration images, steps) refines the plan first.

    ``fp_logits`` are the fp32 model's logits on ``test_x`` (the test KL's reference).

    ``min_shift_share`` rows pick their grouping by the calibration loss on ``calib``.
    """
    sens = sens if cfg.mode.value == "gwq" else None
    chosen = None
    if cfg.min_shift_share is not None:
        from gwq_tvm.qat.select import select_plan

        plan, candidates = select_plan(graph, stats, cfg, calib, fm.input_shape, sens)
        chosen = candidates[0].grouping
    else:
        plan = gwq_tvm.build_plan(graph, stats, cfg, fm.input_shape, sens)
    key = plan_key(plan)  # refinement is deterministic: equal plans refine to equal plans
    extra = {}
    if key in cache:
        plan, extra = cache[key]["plan"], cache[key]["extra"]
    elif refine is not None:
        from gwq_tvm.qat.refine import calibration_loss, refine_plan

        images, steps, seed = refine
        t = time.time()
        before = calibration_loss(graph, plan, images)
        plan = refine_plan(graph, plan, images, steps, seed=seed)
        extra = {"calib_kl_before": before, "calib_kl_after": calibration_loss(graph, plan, images),
                 "refine_seconds": time.time() - t}
    s = sfc_summary(sfc_sites(graph, plan))
    row = {"groups": len(plan.groups), "multiply_elements": s["multiply_elements"], "shift_elements": s["shift_elements"],
           "multiply_sites": s["multiply_sites"], "shift_sites": s["shift_sites"], "shift_share": s["shift_share"], **extra}
    if cfg.mode.value == "gwq":
        grouping = chosen or gwq_grouping(graph, stats, cfg, sensitivity=sens)[1]
        row["added_error"] = grouping.added_error
        row["mantissas"] = [round(plan.groups[f"g{g}"], 4) for g in range(len(grouping.mantissas))]
    if key in cache:
        hit = cache[key]
        return {**row, **{k: hit[k] for k in ("accuracy", "test_kl", "latency_ms", "correct", "kl")}, "same_plan_as": hit["row"]}
    mod = gwq_tvm.RealizeIntegerProgram(plan)(fm.mod)
    assert gwq_tvm.check_integer_only(mod).ok
    ex = gwq_tvm.build(mod)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    logits = gwq_tvm.predict(vm, test_x, fm.input_shape)
    kl = kl_per_image(fp_logits, logits)
    measured = {"accuracy": gwq_tvm.accuracy(logits, test_y), "test_kl": float(kl.mean()),
                "latency_ms": latency_ms(ex, fm.input_shape), "correct": np.argmax(logits, axis=1) == test_y, "kl": kl}
    cache[key] = {**measured, "row": label, "plan": plan, "extra": extra}
    return {**row, **measured}


def table(results, fp32, unrefined=None, correct=None, kl=None):
    """Markdown tables; with ``unrefined`` (results of an unrefined run) two more columns compare against it.

    ``correct`` and ``kl`` map a setting to its rows' per-image correctness and
    test KL (for the standard errors of the dominance lines).
    """
    lines = [f"fp32 accuracy: {fp32 * 100:.2f}%", ""]
    for name, rows in results.items():
        ref = rows["per-layer"]["accuracy"]
        old = (unrefined or {}).get(name)
        head = "| plan | groups | accuracy | vs per-layer (pt) | test KL | multiply elements | shift elements | shift share | latency (ms) |"
        if old is not None:
            head += " unrefined accuracy | calib KL unrefined -> refined |"
        lines += [f"### {name}", "", head, "|" + "---|" * (head.count("|") - 1)]
        for label, r in rows.items():
            line = (f"| {label} | {r['groups']} | {r['accuracy'] * 100:.2f}% | {(r['accuracy'] - ref) * 100:+.2f} | "
                    f"{_kl_cell(r)} | {r['multiply_elements']} | {r['shift_elements']} | {r['shift_share'] * 100:.1f}% | {r['latency_ms']:.3f} |")
            if old is not None:
                before = f"{old[label]['accuracy'] * 100:.2f}%" if label in old else "-"
                calib_kl = f"{r['calib_kl_before']:.3f} -> {r['calib_kl_after']:.3f}" if "calib_kl_after" in r else "-"
                line += f" {before} | {calib_kl} |"
            lines.append(line)
        lines += ["", dominance(rows, (correct or {}).get(name)), "", dominance(rows, (kl or {}).get(name), metric=TEST_KL)]
        lines += target_lines(name, rows, ref) + [""]
    return "\n".join(lines)


def _kl_cell(row) -> str:
    return TEST_KL.show(row["test_kl"]) if row.get("test_kl") is not None else "-"


def target_lines(name, rows, ref) -> list[str]:
    """The issue's target line for setting ``name`` (none without a target or a per-layer accuracy ``ref``)."""
    if name not in TARGETS or ref is None:
        return []
    share, pts = TARGETS[name]
    ok = [label for label, r in rows.items() if label.startswith("gwq") and r["shift_share"] >= share and (ref - r["accuracy"]) * 100 <= pts]
    return ["", f"Target (shift share >= {share:.0%} within {pts} pt of per-layer): " + (f"met by {', '.join(ok)}" if ok else "**not met**")]


def paired_se(a, b, scale=100.0) -> float | None:
    """Standard error of the mean difference of two rows' per-image values on the same images, or None.

    ``scale`` converts it to the unit quoted (100: correctness to points).
    """
    if a is None or b is None or len(a) != len(b):
        return None
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(d.std(ddof=1) / np.sqrt(len(d)) * scale)


def dominance(rows, per_image=None, se=None, metric=ACCURACY) -> str:
    """Whether every error-only point has a GWQ point at an equal or higher shift share and as good a ``metric``.

    ``per_image`` maps row labels to the metric's per-image values (correctness
    for accuracy); with it each gap states its standard error, by ``se``
    (default :func:`paired_se`: the rows share the test images).  A "no" names
    every error-only point GWQ does not reach; a "yes" names the closest one
    (GWQ's smallest lead), so a win by a hair reads as one.  Rows without the
    metric (older runs) make the verdict "not measured" rather than a guess.
    """
    se_of, se_name = (se, "SE over images and draws") if se else (paired_se, "paired SE")
    head = "GWQ dominates error-only" + ("" if metric is ACCURACY else f" on {metric.name}")
    missing = [label for label, r in rows.items() if label.startswith(("gwq", "error-only")) and r.get(metric.key) is None]
    if missing:
        return f"{head}: not measured ({', '.join(missing)} without {metric.name})"
    per_image = per_image or {}
    gwq = [(label, r) for label, r in rows.items() if label.startswith("gwq")]
    sign = 1 if metric.higher_is_better else -1
    beaten, leads = [], []
    for label, r in rows.items():
        if not label.startswith("error-only"):
            continue
        point = f"{label} ({metric.name} {metric.show(r[metric.key])} at {r['shift_share'] * 100:.1f}% shift; best GWQ at that share or more: "
        cover = [(g_label, g) for g_label, g in gwq if g["shift_share"] >= r["shift_share"] - 1e-9]
        best = max(cover, key=lambda c: sign * c[1][metric.key], default=None)
        if best is None:
            beaten.append((None, point + "none)"))
            continue
        lead = sign * (best[1][metric.key] - r[metric.key])
        gap_se = se_of(per_image.get(label), per_image.get(best[0]), scale=metric.scale)
        text = (point + f"{best[0]}, {metric.show(best[1][metric.key])}, {'lead' if lead >= 0 else 'gap'} "
                f"{metric.show_gap(abs(lead) * metric.scale)}" + (f", {se_name} {metric.show_gap(gap_se)}" if gap_se is not None else "")
                + (", the same plan" if label == best[1].get("same_plan_as") or best[0] == r.get("same_plan_as") else "") + ")")
        (leads if lead >= 0 else beaten).append((lead, text))
    if not beaten:
        closest = min(leads, key=lambda c: c[0], default=(None, "no error-only point"))[1]
        return (f"{head}: **yes**, every error-only point has a GWQ point with as many shifts and as "
                + ("high an accuracy" if metric.higher_is_better else f"low a {metric.name}") + f"; closest: {closest}")
    return f"{head}: **no**, not at " + "; ".join(text for _, text in beaten)


def by_setting(per_image: dict) -> dict:
    """``{"W4A4|label": values}`` as ``{"W4A4": {"label": values}}``."""
    out = {}
    for key, v in per_image.items():
        setting, label = key.split("|", 1)
        out.setdefault(setting, {})[label] = v
    return out


def refine_images(calib, draw):
    """The unlabelled images refinement draw ``draw`` refines on.

    Draw 0 is the bundled 1024 calibration images; draw ``d > 0`` is 1024
    training images picked with seed ``d`` from the 60k training set (Debian's
    ``dataset-fashion-mnist``).  Different draws measure how much a refined
    plan's test accuracy depends on which images (and batch order) refinement
    happened to see.
    """
    if draw == 0:
        return calib
    try:
        train, _ = fashion_mnist("train")
    except gwq_tvm.GwqError as e:
        raise SystemExit(f"--refine-draw {draw}: {e}") from None
    return train[np.sort(np.random.default_rng(draw).choice(len(train), len(calib), replace=False))]


def draw_se(a, b, scale=100.0) -> float | None:
    """Standard error (pt) of the mean accuracy gap ``a - b`` over refinement draws.

    ``a`` and ``b`` are per-draw, per-image correctness (``draws x images``).
    Two sources add: the test images (the paired SE of the draw-averaged
    per-image difference) and the refinement draws (the spread of the per-draw
    gaps over ``sqrt(draws)``; the draws share the test images, so this term
    holds only the refinement's own variation).
    """
    if a is None or b is None or a.shape != b.shape:
        return None
    d = a.astype(np.float64) - b.astype(np.float64)
    images = d.mean(0).std(ddof=1) / np.sqrt(d.shape[1])
    draws = d.mean(1).std(ddof=1) / np.sqrt(d.shape[0]) if d.shape[0] > 1 else 0.0
    return float(np.hypot(images, draws) * scale)


def aggregate():
    """Average the refined runs of every draw into ``gwq_tradeoff_refined_mean.{json,md,png}``.

    Every setting is averaged over the draws that measured it (at least two,
    with equal protocols apart from the draw), and over the rows all of those
    draws have; each row's accuracy is the mean over draws, with the per-draw
    accuracies beside it, and the dominance line uses the mean with
    :func:`draw_se`.  The test KL is averaged over the draws whose runs
    measured it (runs before it existed did not), which the table names.
    """
    files = sorted(OUT.glob("gwq_tradeoff_refined_d*.json"), key=lambda f: int(f.stem.rsplit("_d", 1)[1]))
    runs = [(f, json.loads(f.read_text())) for f in (OUT / "gwq_tradeoff_refined.json", *files) if f.is_file()]
    if len(runs) < 2:
        raise SystemExit("--aggregate needs gwq_tradeoff_refined.json and at least one gwq_tradeoff_refined_d<d>.json")
    keys = ("test_images", "ends_at_8_bits", "sfc_cost", "loss_aware", "refine_steps", "refine_images")
    first = runs[0][1]["meta"]
    for f, run in runs[1:]:
        if any(run["meta"].get(k) != first.get(k) for k in keys):
            raise SystemExit(f"{f.name} has another protocol than {runs[0][0].name}: " + ", ".join(
                f"{k} {run['meta'].get(k)} vs {first.get(k)}" for k in keys if run["meta"].get(k) != first.get(k)))
    n = first["test_images"]
    correct = [load_correct(f.with_suffix(""), n) for f, _ in runs]
    kls = [load_kl(f.with_suffix("")) for f, _ in runs]
    results, stacked_correct, stacked_kl, draws_of, kl_draws_of = {}, {}, {}, {}, {}
    for name in SETTINGS:
        have = [i for i, (_, run) in enumerate(runs) if name in run["results"]]
        if len(have) < 2:
            continue
        draws_of[name] = [runs[i][1]["meta"].get("refine_draw", 0) for i in have]
        tables = [runs[i][1]["results"][name] for i in have]
        labels = [lb for lb in tables[0] if all(lb in t for t in tables)]
        with_kl = [j for j, t in enumerate(tables) if all(t[lb].get("test_kl") is not None for lb in labels)]
        kl_draws_of[name] = [draws_of[name][j] for j in with_kl]
        rows = {}
        for label in labels:
            per = [t[label] for t in tables]
            rows[label] = {**per[0], "accuracy": float(np.mean([r["accuracy"] for r in per])),
                           "accuracy_draws": [r["accuracy"] for r in per],
                           "test_kl": float(np.mean([per[j]["test_kl"] for j in with_kl])) if with_kl else None,
                           "calib_kl_after_draws": [r.get("calib_kl_after") for r in per]}
            stacked = [correct[i].get(f"{name}|{label}") for i in have]
            if all(c is not None for c in stacked):
                stacked_correct.setdefault(name, {})[label] = np.stack(stacked)
            stacked = [kls[have[j]].get(f"{name}|{label}") for j in with_kl]
            if with_kl and all(k is not None for k in stacked):
                stacked_kl.setdefault(name, {})[label] = np.stack(stacked)
        results[name] = rows
    stem = OUT / "gwq_tradeoff_refined_mean"
    meta = {**first, "refine_draws": draws_of, "test_kl_draws": kl_draws_of, "seconds": None}
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    lines = [f"# GWQ trade-off, refined ({first['refine_steps']} steps), mean over refinement draws, bundled model, "
             f"{n} test images", "",
             "Each accuracy is the mean over the setting's draws (the per-draw accuracies beside it): draw 0 refines "
             "on the bundled calibration images, draw d > 0 on 1024 other training images (seed d, also the batch "
             "order's seed).  Calibration, grouping and selection are the same in every draw; only refinement "
             "differs.  Shortfalls carry the standard error of the test images and the draws together.  The test "
             "KL (the integer program's softmax against the fp32 model's, lower is better) is the mean over the "
             "draws the heading names.", ""]
    for name, rows in results.items():
        ref = rows["per-layer"]["accuracy"] if "per-layer" in rows else None
        kl_draws = ", ".join(map(str, kl_draws_of[name])) or "none"
        lines += [f"### {name} (draws {', '.join(map(str, draws_of[name]))}; test KL: draws {kl_draws})", "",
                  "| plan | groups | mean accuracy | vs per-layer (pt) | per draw | test KL | shift share |",
                  "|---|---|---|---|---|---|---|"]
        for label, r in rows.items():
            vs = f"{(r['accuracy'] - ref) * 100:+.2f}" if ref is not None else "-"
            each = " / ".join(f"{a * 100:.2f}" for a in r["accuracy_draws"])
            lines.append(f"| {label} | {r['groups']} | {r['accuracy'] * 100:.2f}% | {vs} | {each} | {_kl_cell(r)} | "
                         f"{r['shift_share'] * 100:.1f}% |")
        lines += ["", dominance(rows, stacked_correct.get(name), se=draw_se), "",
                  dominance(rows, stacked_kl.get(name), se=draw_se, metric=TEST_KL)]
        lines += target_lines(name, rows, ref) + [""]
    md = "\n".join(lines)
    stem.with_suffix(".md").write_text(md + "\n")
    plot(results, stem.with_suffix(".png"))
    print(md)


def plot(results, path):
    made = _plot.panels(len(results))
    if made is None:
        return
    fig, axes = made
    for ax, (name, rows) in zip(axes, results.items()):
        def pts(prefix):
            sel = sorted((r["shift_share"] * 100, r["accuracy"] * 100) for label, r in rows.items() if label.startswith(prefix))
            return [p[0] for p in sel], [p[1] for p in sel]

        def envelope(xs, ys):
            """Best accuracy at this shift share or more: the curve 'dominates' compares."""
            best, out = -1.0, []
            for x, y in sorted(zip(xs, ys), reverse=True):
                best = max(best, y)
                out.append((x, best))
            out.append((0.0, best))  # defined for every share below the family's largest
            return [p[0] for p in out], [p[1] for p in out]

        for prefix, marker, style, family in (("gwq", "o", "-", "GWQ (joint)"), ("error-only", "s", "--", "error-only")):
            xs, ys = pts(prefix)
            line, = ax.plot(xs, ys, marker, linestyle="none", alpha=0.6)
            ax.step(*envelope(xs, ys), where="post", linestyle=style, color=line.get_color(), label=f"{family}, best at >= share")
        for label, marker in (("per-layer", "*"), ("pot", "x")):
            if label not in rows:  # a --rows run without it
                continue
            r = rows[label]
            ax.plot([r["shift_share"] * 100], [r["accuracy"] * 100], marker, markersize=10, label=label)
        _plot.style_accuracy_axis(ax, name)
    _plot.save(fig, axes, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all 10k)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, e.g. W4A2,W4A3")
    ap.add_argument("--all-layers", action="store_true", help="quantize input, stem and classifier to the low bits too")
    ap.add_argument("--sfc-cost", type=float, default=DEFAULT_SFC_COST)
    ap.add_argument("--no-loss-aware", action="store_true", help="GWQ error curves without output-sensitivity weights")
    ap.add_argument("--refine-steps", type=int, default=0,
                    help="refine every plan on the calibration images for this many steps (needs torch)")
    ap.add_argument("--refine-draw", type=int, default=0,
                    help="0: refine on the bundled calibration images (batch order seed 0); d > 0: on 1024 other "
                         "training images drawn with seed d (batch order seed d), results tagged '_refined_d<d>'")
    ap.add_argument("--report", action="store_true",
                    help="only rewrite the table and plot of the run the other options name, from its saved results")
    ap.add_argument("--aggregate", action="store_true",
                    help="only average the refined runs of every draw into gwq_tradeoff_refined_mean.{json,md,png}")
    ap.add_argument("--no-tolerance", action="store_true", help="skip the 'gwq tol=' rows")
    ap.add_argument("--rows", default=None, help="only these rows (comma-separated labels), merged into an earlier run's table")
    ap.add_argument("--tag", default=None, help="suffix of the output files (default '' or '_refined')")
    args = ap.parse_args()
    if args.aggregate:
        return aggregate()
    if args.refine_draw < 0:
        raise SystemExit(f"--refine-draw must be 0 or more, got {args.refine_draw}")
    if args.refine_draw and not args.refine_steps:
        raise SystemExit("--refine-draw needs --refine-steps")
    tag = args.tag if args.tag is not None else (
        "" if not args.refine_steps else "_refined" + (f"_d{args.refine_draw}" if args.refine_draw else ""))
    if args.report:
        stem = OUT / f"gwq_tradeoff{tag}"
        if not stem.with_suffix(".json").is_file():
            raise SystemExit(f"--report: no results at {stem.with_suffix('.json')}")
        return report(stem)
    refine = None
    if args.refine_steps:
        import torch

        torch.set_num_threads(1)

    t0 = time.time()
    calib, _ = fashion_mnist("calib")
    if args.refine_steps:  # first, so a missing training set fails before the setup
        refine = (refine_images(calib, args.refine_draw), args.refine_steps, args.refine_draw)
    test_x, test_y = fashion_mnist("test")
    if args.limit:
        test_x, test_y = test_x[: args.limit], test_y[: args.limit]
    fm = gwq_tvm.load_model(bundled_model())
    graph = gwq_tvm.extract_graph(fm.mod)
    stats = gwq_tvm.calibrate(fm, calib[:512])
    fp_vm = relax.VirtualMachine(tvm.compile(fm.mod, host_target()), tvm.cpu())
    fp_logits = gwq_tvm.predict(fp_vm, test_x, fm.input_shape)
    fp32 = gwq_tvm.accuracy(fp_logits, test_y)

    results = {}
    for name in args.settings.split(","):
        wbits, abits = SETTINGS[name]
        cache, rows = {}, {}
        overrides = {} if args.all_layers else end_layers(graph, abits)
        base = QuantConfig(weight_bits=wbits, act_bits=abits, bits=overrides, loss_aware=not args.no_loss_aware)
        sens = None
        if not args.no_loss_aware:
            sens = tensor_sensitivity(fm, graph, stats, base.replace(mode="gwq"), calib[:512])
        for label, cfg in rows_for(base, graph, stats, args.sfc_cost, sens, tolerance=not args.no_tolerance):
            if args.rows and label not in args.rows.split(","):
                continue
            r = evaluate(label, fm, graph, stats, sens, cfg, test_x, test_y, fp_logits, cache, calib, refine)
            rows[label] = r
            print(f"{name} {label:18s} acc {r['accuracy'] * 100:6.2f}%  test KL {r['test_kl']:.4f}  shift {r['shift_share'] * 100:5.1f}%  "
                  f"groups {r['groups']}  lat {r['latency_ms']:.3f} ms  "
                  + (f"KL {r['calib_kl_before']:.3f}->{r['calib_kl_after']:.3f}  " if "calib_kl_after" in r else "")
                  + f"({time.time() - t0:.0f}s)", flush=True)
        results[name] = rows

    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"gwq_tradeoff{tag}"
    # per-image correctness (for the paired standard errors) goes to its own file, bit-packed
    correct = {f"{k}|{label}": r.pop("correct") for k, rows in results.items() for label, r in rows.items()}
    kl = {f"{k}|{label}": r.pop("kl") for k, rows in results.items() for label, r in rows.items()}
    meta = {"test_images": len(test_x), "calibration_images": 512, "ends_at_8_bits": not args.all_layers, "sfc_cost": args.sfc_cost, "loss_aware": not args.no_loss_aware,
            "refine_steps": args.refine_steps, "refine_images": len(refine[0]) if refine else 0,
            "refine_draw": args.refine_draw,
            "fp32_accuracy": fp32, "target": str(host_target()), "seconds": time.time() - t0}
    if stem.with_suffix(".json").is_file():  # keep the other settings of an earlier run with the same protocol
        prev = json.loads(stem.with_suffix(".json").read_text())
        protocol = {"test_images": None, "ends_at_8_bits": None, "sfc_cost": None, "loss_aware": None, "refine_steps": 0,
                    "refine_draw": 0}
        same = all(prev["meta"].get(k, default) == meta[k] for k, default in protocol.items())
        if args.rows and not same:
            raise SystemExit(f"--rows merges into {stem.with_suffix('.json')}, whose protocol differs "
                             f"({ {k: prev['meta'].get(k, d) for k, d in protocol.items()} }); not overwriting it")
        if same:
            merged = {k: {**prev["results"].get(k, {}), **rows} for k, rows in results.items()}  # row by row (--rows)
            merged = {**prev["results"], **merged}
            results = {k: merged[k] for k in SETTINGS if k in merged}
            correct = {**load_correct(stem, len(test_x)), **correct}
            kl = {**load_kl(stem), **kl}
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    np.savez_compressed(f"{stem}_correct.npz", **{k: np.packbits(v) for k, v in correct.items()})
    # float16 keeps 3 significant digits, plenty for standard errors (the means in the JSON are float64)
    np.savez_compressed(f"{stem}_kl.npz", **{k: v.astype(np.float16) for k, v in kl.items()})
    report(stem)


def report(stem):
    """Write ``stem``'s table (``.md``) and plot (``.png``) from its saved results and per-image files."""
    run = json.loads(stem.with_suffix(".json").read_text())
    meta, results = run["meta"], run["results"]
    n = meta["test_images"]
    unrefined = None
    if meta["refine_steps"] and (OUT / "gwq_tradeoff.json").is_file():
        old = json.loads((OUT / "gwq_tradeoff.json").read_text())
        if old["meta"]["test_images"] == n:
            unrefined = old["results"]
    md = table(results, meta["fp32_accuracy"], unrefined, by_setting(load_correct(stem, n)), by_setting(load_kl(stem)))
    stem.with_suffix(".md").write_text(f"# GWQ trade-off, bundled model, {n} test images\n\n{md}\n")
    plot(results, stem.with_suffix(".png"))
    print(md)


if __name__ == "__main__":
    main()
