"""PTQ-SL (sub-layerwise weight blocks, channel reordering) and GDRQ (Scale-Clip, filter groups), post-training (issue 19).

On a bundled Fashion-MNIST model (``--model``: the ResNet ``fmnist_resnet``
or the MobileNetV3-Small ``fmnist_mobilenetv3``), for W4A8, W4A4 and W3A8, one
calibration (512 images) feeds every plan; each plan is realized, checked
integer-only, compiled with TVM (``gwq_tvm.build``), checked bit-exact against
the numpy reference (:func:`gwq_tvm.reference.run_reference`) on the first
``--exact`` test images, and run on the test images.  A row that is not
integer-only or not bit-exact stops the script (a bug, not a row).  Every row follows the usual low-bit protocol (the model input and the
first and last weight layers at 8 bits), and is measured in ``per-layer``
mode and with GWQ ``K=1`` (one shared activation mantissa: every SFC inside the
program a shift; weight and block steps powers of two).

Rows:

* ``per-tensor``, ``per-channel``: max-calibrated weight scales.
* ``per-channel +search``: every channel's scale searched on the layer-output
  L2 error (:mod:`gwq_tvm.plan.block_search`), the fair baseline of the block rows.
* ``blocks NxM [+reorder] +search``: PTQ-SL blocks (``gcd`` fit: a layer the
  shape does not divide uses the gcd), searched, with and without reordering.
  The blocks apply to conv2d and dense layers.  A depthwise conv's ``K`` is its
  ``kh*kw`` taps (one input channel per filter); with the odd 3x3 and 5x5
  kernels of the MobileNetV3 the gcd fit gives it ``NIN = 1``, so its blocks
  split the output channels only.  The table's ``fitted`` column counts the
  layers at each grid actually used, so a label never claims input blocks a
  layer did not get.
* ``scale-clip``: GDRQ Scale-Clip (``std``, ``k`` chosen per tensor), per-channel.
* ``G=g [+scale-clip]``: GDRQ filter groups.

Columns: accuracy, its paired standard error against ``per-channel`` of the
same mode, the SFC shift share, the weight size (bits of every weight plus
32 bits per stored scale), the batch-1 latency (median of the compiled
program, with the 1-minute load average when it was measured) and the fitted
block grids.

Usage::

    python benchmarks/subl_gdrq.py --limit 10000 --model fmnist_mobilenetv3 --settings W4A8,W4A4

Writes ``benchmarks/results/subl_gdrq/subl_gdrq.{json,md}`` after every row
(rows already measured are kept on a rerun with the same ``--limit``; every
model's rows share the one table, one section per model x setting x mode).
The hand-written notes below the table live in ``subl_gdrq_notes.md`` and are
appended to the generated ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.calibration import calibrate
from gwq_tvm.atomic import write_text
from gwq_tvm.data import BUNDLED_MODELS, bundled_model, fashion_mnist
from gwq_tvm.extract import extract_graph
from gwq_tvm.frontend import load_model
from gwq_tvm.plan.block_search import node_outputs, search_plan
from gwq_tvm.api import compile_float
from gwq_tvm.plan.program import sfc_sites, sfc_summary
from gwq_tvm.reference import run_reference

OUT = Path(__file__).parent / "results" / "subl_gdrq"
SETTINGS = {"W4A8": (4, 8), "W4A4": (4, 4), "W3A8": (3, 8)}
BLOCKS = ((4, 1), (8, 1), (4, 4), (8, 2))
MODES = {"per-layer": {}, "gwq K=1": dict(mode="gwq", groups=1)}
TITLES = {"fmnist_resnet": "bundled ResNet", "fmnist_mobilenetv3": "bundled MobileNetV3-Small"}


def rows():
    """``(label, config changes, search)`` of every row."""
    out = [("per-tensor", dict(weight_granularity="per-tensor"), False), ("per-channel", {}, False),
           ("per-channel +search", {}, True)]
    for b in BLOCKS:
        for reorder in (False, True):
            out.append((f"blocks {b[0]}x{b[1]}{' +reorder' if reorder else ''} +search",
                        dict(weight_blocks=b, weight_blocks_fit="gcd", reorder_channels=reorder), True))
    out.append(("scale-clip", dict(scale_clip="std"), False))
    for g in (2, 4, 8):
        out.append((f"G={g}", dict(weight_groups=g, weight_blocks_fit="gcd"), False))
        out.append((f"G={g} +scale-clip", dict(weight_groups=g, weight_blocks_fit="gcd", scale_clip="std"), False))
    return out


def weight_bits(graph, plan) -> int:
    """Bits of the stored weights: every weight at its layer's bits, 32 per scale."""
    return sum(graph.nodes[n].weight.size * w.bits + 32 * len(w.scales) for n, w in plan.layers.items())


def latency_ms(ex, shape) -> float:
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = tvm.runtime.tensor(np.zeros((1,) + tuple(shape[1:]), dtype="float32"))
    return float(np.median(vm.time_evaluator("main", tvm.cpu(), number=10, repeat=5)(x).results) * 1e3)


def paired_se(a, b) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(d.std(ddof=1) / np.sqrt(len(d)) * 100)


def fitted(blocks: dict) -> str:
    """The block grids a row's layers got, most common first: ``4x4 x8, 4x1 x1`` (``channel``/``tensor`` as named)."""
    names = [f"{b[0]}x{b[1]}" if isinstance(b, list) else b for b in blocks.values()]
    return ", ".join(f"{n} x{names.count(n)}" for n in sorted(set(names), key=lambda n: (-names.count(n), n)))


def migrate(saved: dict) -> dict:
    """Rows of the first (ResNet-only) JSON, keyed ``setting|mode|label``, under the ``fmnist_resnet`` model."""
    rows = {(k if k.count("|") == 3 else f"fmnist_resnet|{k}"): v for k, v in saved.get("rows", {}).items()}
    fp32 = saved.get("fp32", {})
    return {"limit": saved.get("limit"), "fp32": fp32 if isinstance(fp32, dict) else {"fmnist_resnet": fp32}, "rows": rows}


def claim(results: dict, fp32: dict) -> list[str]:
    """The "sub-layerwise + reordering beats per-channel" check: every ``blocks NxM +reorder +search`` row's gap to
    ``per-channel`` and to ``per-channel +search`` of its section, ``gap (paired SE)`` in pt, ``*`` beyond 2 SE."""
    shapes = [f"{b[0]}x{b[1]}" for b in BLOCKS]
    lines = ["## Sub-layerwise + reordering against per-channel", "",
             "Each cell: accuracy gap (pt) of `blocks NxM +reorder +search` to the baseline of the same section, "
             "its paired SE in brackets; `*` marks |gap| > 2 SE.", "",
             "| model | setting | mode | baseline | " + " | ".join(shapes) + " |", "|---|---|---|---|" + "---|" * len(shapes)]
    for model in fp32:
        for setting in SETTINGS:
            for mode in MODES:
                pre = f"{model}|{setting}|{mode}|"
                for base in ("per-channel", "per-channel +search"):
                    b = results.get(pre + base)
                    if b is None:
                        continue
                    cells = []
                    for shape in shapes:
                        r = results.get(f"{pre}blocks {shape} +reorder +search")
                        if r is None:
                            cells.append("-")
                            continue
                        gap = (r["accuracy"] - b["accuracy"]) * 100
                        se = paired_se(np.array(r["correct"]), np.array(b["correct"]))
                        cells.append(f"{gap:+.2f} ({se:.2f}){'*' if abs(gap) > 2 * se else ''}")
                    lines.append(f"| {TITLES.get(model, model)} | {setting} | {mode} | {base} | " + " | ".join(cells) + " |")
    return lines + [""]


def table(results: dict, limit: int, fp32: dict, out: Path = OUT) -> str:
    lines = [f"# PTQ-SL and GDRQ, post-training, {limit} Fashion-MNIST test images", "",
             "fp32 accuracy: " + ", ".join(f"{TITLES.get(m, m)} {a * 100:.2f}%" for m, a in fp32.items()) + ".  "
             "Input, first and last weight layers at 8 bits.  "
             "SE: paired standard error (pt) of the difference to `per-channel` of the same model, mode and setting.  "
             "exact: bit-exact against the numpy reference on the first N test images (`-`: row measured on 2026-12-02, "
             "before the script checked it; `rechecked, a/b same`: such a row rebuilt later, checked, and its "
             "correct/wrong agreeing with the stored row on a of the first b test images).  "
             "latency: batch-1 median (ms) at the 1-minute load average given (`-`: not recorded); see the notes.", ""]
    for model in fp32:
        for setting in SETTINGS:
            for mode in MODES:
                keyed = {k.split("|")[3]: v for k, v in results.items() if k.startswith(f"{model}|{setting}|{mode}|")}
                if not keyed:
                    continue
                lines += [f"## {TITLES.get(model, model)}, {setting}, {mode}", "",
                          "| plan | accuracy | vs per-channel (pt) | SE (pt) | shift share | weights (KiB) | latency (ms) "
                          "| load | exact | fitted |",
                          "|---|---|---|---|---|---|---|---|---|---|"]
                base = keyed.get("per-channel")
                for label, r in keyed.items():
                    gap = se = "-"
                    if base is not None and label != "per-channel":
                        gap = f"{(r['accuracy'] - base['accuracy']) * 100:+.2f}"
                        se = f"{paired_se(np.array(r['correct']), np.array(base['correct'])):.2f}"
                    load = f"{r['load']:.1f}" if "load" in r else "-"
                    exact = (f"{'yes' if r['bit_exact'] else 'NO'} ({r['exact_images']})" if "bit_exact" in r else "-")
                    if "recheck" in r:
                        exact += f" rechecked, {r['recheck']['same_correctness']}/{r['recheck']['images']} same"
                    lines.append(f"| {label} | {r['accuracy'] * 100:.2f} | {gap} | {se} | {r['shift_share'] * 100:.1f}% | "
                                 f"{r['weight_bits'] / 8192:.1f} | {r['latency_ms']:.3f} | {load} | {exact} | "
                                 f"{fitted(r['blocks'])} |")
                lines.append("")
    lines += claim(results, fp32)
    notes = out / "subl_gdrq_notes.md"
    return "\n".join(lines) + "\n" + ("\n" + notes.read_text() if notes.is_file() else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=BUNDLED_MODELS[0], choices=BUNDLED_MODELS, help="bundled model")
    ap.add_argument("--limit", type=int, default=10000, help="test images (default all 10k)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, e.g. W4A8,W4A4")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    ap.add_argument("--labels", default=None, help="only these row labels (comma-separated; default all)")
    ap.add_argument("--search-rounds", type=int, default=1)
    ap.add_argument("--exact", type=int, default=16, help="test images checked bit-exact against the numpy reference")
    ap.add_argument("--recheck", type=int, default=0, metavar="IMAGES",
                    help="also rebuild rows measured before the bit-exact check, check them bit-exact and compare "
                         "their correct/wrong on the first IMAGES test images with the stored row")
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md from the JSON and stop")
    ap.add_argument("--merge", type=Path, nargs="*", default=(),
                    help="add the rows of these subl_gdrq.json files (same --limit; e.g. a run in another --out) and stop")
    ap.add_argument("--out", type=Path, default=OUT, help="results directory (default benchmarks/results/subl_gdrq)")
    args = ap.parse_args()
    for name, given, known in (("setting", args.settings, SETTINGS), ("mode", args.modes, MODES)):
        bad = [v for v in given.split(",") if v not in known]
        if bad:
            raise SystemExit(f"subl_gdrq: unknown {name} {', '.join(bad)}; choose from {', '.join(known)}")
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "subl_gdrq.json"
    saved = migrate(json.loads(path.read_text())) if path.is_file() else {}
    same = saved.get("limit") == args.limit
    if saved.get("rows") and not same:
        raise SystemExit(f"subl_gdrq: {path} holds rows on {saved['limit']} test images, not {args.limit}; "
                         "give another --out")
    results = saved["rows"] if same else {}
    fp32s = saved["fp32"] if same else {}
    for other in map(migrate, (json.loads(Path(m).read_text()) for m in args.merge)):
        if other["limit"] != args.limit:
            raise SystemExit(f"subl_gdrq: --merge rows are on {other['limit']} test images, not {args.limit}")
        results.update({k: v for k, v in other["rows"].items()  # new rows, and rows the other run rechecked
                        if k not in results or ("bit_exact" in v and "bit_exact" not in results[k])})
        fp32s.update({k: v for k, v in other["fp32"].items() if k not in fp32s})
    if args.merge:
        write_text(path, json.dumps({"limit": args.limit, "fp32": fp32s, "rows": results}) + "\n")
    if args.table_only or args.merge:
        write_text(args.out / "subl_gdrq.md", table(results, args.limit, fp32s, args.out))
        return
    fm = load_model(bundled_model(args.model))
    graph = extract_graph(fm.mod)
    test_x, test_y = fashion_mnist("test")
    test_x, test_y = test_x[:args.limit], test_y[:args.limit]
    calib = fashion_mnist("calib")[0][:512]
    stats = calibrate(fm, calib)
    acts = node_outputs(fm, graph, calib[:64])
    if args.model not in fp32s:
        fp32s[args.model] = gwq_tvm.accuracy(gwq_tvm.predict(compile_float(fm), test_x, fm.input_shape), test_y)
    for setting in args.settings.split(","):
        wb, ab = SETTINGS[setting]
        for mode in args.modes.split(","):
            for label, changes, search in rows():
                if args.labels is not None and label not in args.labels.split(","):
                    continue
                key = f"{args.model}|{setting}|{mode}|{label}"
                if key in results and not (args.recheck and "bit_exact" not in results[key]):
                    continue
                t0 = time.time()
                cfg = QuantConfig(weight_bits=wb, act_bits=ab, end_bits=8, loss_aware=False, **MODES[mode], **changes)
                plan = gwq_tvm.build_plan(graph, stats, cfg, fm.input_shape)
                if search:
                    plan = search_plan(fm, graph, plan, calib, acts=acts, rounds=args.search_rounds,
                                       pot=cfg.mode.value != "per-layer")
                mod = gwq_tvm.RealizeIntegerProgram(plan)(fm.mod)
                check = gwq_tvm.check_integer_only(mod)
                if not check.ok:
                    raise SystemExit(f"subl_gdrq: {key}: the realized program is not integer-only: {check}")
                ex = gwq_tvm.build(mod)
                images = min(args.recheck, len(test_x)) if key in results else len(test_x)
                logits = gwq_tvm.predict(relax.VirtualMachine(ex, tvm.cpu()), test_x[:images], fm.input_shape)
                n = min(args.exact, len(test_x))
                if not np.array_equal(logits[:n], np.asarray(run_reference(mod, test_x[:n]))):
                    raise SystemExit(f"subl_gdrq: {key}: the compiled program differs from the numpy reference "
                                     f"on the first {n} test images")
                correct = np.argmax(logits, axis=1) == test_y[:images]
                if key in results:  # a row measured before the bit-exact check: check it, keep its measurement
                    agree = int((np.array(results[key]["correct"][:images], dtype=bool) == correct).sum())
                    results[key].update(integer_only=True, bit_exact=True, exact_images=n,
                                        recheck={"images": images, "same_correctness": agree})
                    print(f"{key}: rechecked, bit-exact on {n}, same correct/wrong on {agree}/{images}", flush=True)
                else:
                    s = sfc_summary(sfc_sites(graph, plan))
                    results[key] = {"accuracy": float(correct.mean()), "shift_share": s["shift_share"],
                                    "multiply_elements": s["multiply_elements"], "shift_elements": s["shift_elements"],
                                    "weight_bits": weight_bits(graph, plan), "latency_ms": latency_ms(ex, fm.input_shape),
                                    "load": os.getloadavg()[0], "integer_only": True, "bit_exact": True,
                                    "exact_images": n, "seconds": time.time() - t0, "correct": correct.astype(int).tolist(),
                                    "blocks": {name: list(w.block) if w.block else w.granularity
                                               for name, w in plan.layers.items()}}
                    print(f"{key}: {correct.mean() * 100:.2f}%  shift {s['shift_share'] * 100:.1f}%  "
                          f"{time.time() - t0:.0f}s  load {os.getloadavg()[0]:.1f}", flush=True)
                write_text(path, json.dumps({"limit": args.limit, "fp32": fp32s, "rows": results}) + "\n")
                write_text(args.out / "subl_gdrq.md", table(results, args.limit, fp32s, args.out))


if __name__ == "__main__":
    main()
