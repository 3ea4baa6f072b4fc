"""PTQ-SL (sub-layerwise weight blocks, channel reordering) and GDRQ (Scale-Clip, filter groups), post-training (issue 19).

On the bundled ResNet (Fashion-MNIST), for W4A8, W4A4 and W3A8, one
calibration (512 images) feeds every plan; each plan is realized, checked
integer-only, compiled with TVM (``gwq_tvm.build``) and run on the test
images.  Every row follows the usual low-bit protocol (the model input and the
first and last weight layers at 8 bits), and is measured in ``per-layer``
mode and with GWQ ``K=1`` (one shared activation mantissa: every SFC inside the
program a shift; weight and block steps powers of two).

Rows:

* ``per-tensor``, ``per-channel``: max-calibrated weight scales.
* ``per-channel +search``: every channel's scale searched on the layer-output
  L2 error (:mod:`gwq_tvm.plan.block_search`), the fair baseline of the block rows.
* ``blocks NxM [+reorder] +search``: PTQ-SL blocks (``gcd`` fit: a layer the
  shape does not divide uses the gcd), searched, with and without reordering.
* ``scale-clip``: GDRQ Scale-Clip (``std``, ``k`` chosen per tensor), per-channel.
* ``G=g [+scale-clip]``: GDRQ filter groups.

Columns: accuracy, its paired standard error against ``per-channel`` of the
same mode, the SFC shift share, the weight size (bits of every weight plus
32 bits per stored scale), and the batch-1 latency (median of the compiled program).

Usage::

    python benchmarks/subl_gdrq.py --limit 10000

Writes ``benchmarks/results/subl_gdrq/subl_gdrq.{json,md}`` after every row
(rows already measured are kept on a rerun with the same ``--limit``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.calibration import calibrate
from gwq_tvm.data import bundled_model, fashion_mnist
from gwq_tvm.extract import extract_graph
from gwq_tvm.frontend import load_model
from gwq_tvm.plan.block_search import node_outputs, search_plan
from gwq_tvm.api import compile_float
from gwq_tvm.plan.program import sfc_sites, sfc_summary

OUT = Path(__file__).parent / "results" / "subl_gdrq"
SETTINGS = {"W4A8": (4, 8), "W4A4": (4, 4), "W3A8": (3, 8)}
BLOCKS = ((4, 1), (8, 1), (4, 4), (8, 2))


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


def table(results: dict, limit: int, fp32: float) -> str:
    lines = [f"# PTQ-SL and GDRQ, post-training, bundled ResNet, {limit} Fashion-MNIST test images", "",
             f"fp32 accuracy {fp32 * 100:.2f}%.  Input, first and last weight layers at 8 bits.  "
             "SE: paired standard error (pt) of the difference to `per-channel` of the same mode and setting.", ""]
    for setting in SETTINGS:
        for mode in ("per-layer", "gwq K=1"):
            keyed = {k.split("|")[2]: v for k, v in results.items() if k.startswith(f"{setting}|{mode}|")}
            if not keyed:
                continue
            lines += [f"## {setting}, {mode}", "",
                      "| plan | accuracy | vs per-channel (pt) | SE (pt) | shift share | weights (KiB) | latency (ms) |",
                      "|---|---|---|---|---|---|---|"]
            base = keyed.get("per-channel")
            for label, r in keyed.items():
                gap = se = "-"
                if base is not None and label != "per-channel":
                    gap = f"{(r['accuracy'] - base['accuracy']) * 100:+.2f}"
                    se = f"{paired_se(np.array(r['correct']), np.array(base['correct'])):.2f}"
                lines.append(f"| {label} | {r['accuracy'] * 100:.2f} | {gap} | {se} | {r['shift_share'] * 100:.1f}% | "
                             f"{r['weight_bits'] / 8192:.1f} | {r['latency_ms']:.3f} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=10000, help="test images (default all 10k)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, e.g. W4A8,W4A4")
    ap.add_argument("--search-rounds", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "subl_gdrq.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    results = saved.get("rows", {}) if saved.get("limit") == args.limit else {}
    fm = load_model(bundled_model())
    graph = extract_graph(fm.mod)
    test_x, test_y = fashion_mnist("test")
    test_x, test_y = test_x[:args.limit], test_y[:args.limit]
    calib = fashion_mnist("calib")[0][:512]
    stats = calibrate(fm, calib)
    acts = node_outputs(fm, graph, calib[:64])
    fp32 = gwq_tvm.accuracy(gwq_tvm.predict(compile_float(fm), test_x, fm.input_shape), test_y)
    for setting in args.settings.split(","):
        wb, ab = SETTINGS[setting]
        for mode, extra in (("per-layer", {}), ("gwq K=1", dict(mode="gwq", groups=1))):
            for label, changes, search in rows():
                key = f"{setting}|{mode}|{label}"
                if key in results:
                    continue
                t0 = time.time()
                cfg = QuantConfig(weight_bits=wb, act_bits=ab, end_bits=8, loss_aware=False, **extra, **changes)
                plan = gwq_tvm.build_plan(graph, stats, cfg, fm.input_shape)
                if search:
                    plan = search_plan(fm, graph, plan, calib, acts=acts, rounds=args.search_rounds,
                                       pot=cfg.mode.value != "per-layer")
                mod = gwq_tvm.RealizeIntegerProgram(plan)(fm.mod)
                assert gwq_tvm.check_integer_only(mod).ok
                ex = gwq_tvm.build(mod)
                logits = gwq_tvm.predict(relax.VirtualMachine(ex, tvm.cpu()), test_x, fm.input_shape)
                correct = np.argmax(logits, axis=1) == test_y
                s = sfc_summary(sfc_sites(graph, plan))
                results[key] = {"accuracy": float(correct.mean()), "shift_share": s["shift_share"],
                                "multiply_elements": s["multiply_elements"], "shift_elements": s["shift_elements"],
                                "weight_bits": weight_bits(graph, plan), "latency_ms": latency_ms(ex, fm.input_shape),
                                "seconds": time.time() - t0, "correct": correct.astype(int).tolist(),
                                "blocks": {n: list(w.block) if w.block else w.granularity for n, w in plan.layers.items()}}
                print(f"{key}: {correct.mean() * 100:.2f}%  shift {s['shift_share'] * 100:.1f}%  "
                      f"{time.time() - t0:.0f}s", flush=True)
                from gwq_tvm.atomic import write_text

                write_text(path, json.dumps({"limit": args.limit, "fp32": fp32, "rows": results}) + "\n")
                write_text(OUT / "subl_gdrq.md", table(results, args.limit, fp32))


if __name__ == "__main__":
    main()
