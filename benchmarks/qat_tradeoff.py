"""PTQ vs QAT accuracy of GWQ plans on the bundled model (issue 4).

For each setting (W8A8, W4A4, W4A2) and each group count K (1, 2, 4):

1. PTQ: calibrate (512 images) and plan GWQ with at most K groups (loss-aware);
2. QAT: :class:`gwq_tvm.qat.QATModel` from that plan, fine-tuned on the 60k
   Fashion-MNIST training images (Debian ``dataset-fashion-mnist``) for
   ``--epochs`` epochs, exported to ONNX + QuantPlan;
3. both programs are realized, checked integer-only, **compiled with TVM** and
   run on the 10k test images: the accuracies in the table are those of the
   compiled integer programs, not of the torch simulation.

Every row follows the usual low-bit protocol (``end_bits=8``: the input and the
first and last layers' weights at 8 bits).  Shift share is the share of SFC
elements per inference done by a shift (the 1/49 global average pool stays a
multiply of 64 elements unless it gets its own group).

Results are appended row by row to ``benchmarks/results/qat_tradeoff/qat_tradeoff.json``; a
rerun skips finished rows (and training itself resumes from its checkpoints).

Usage::

    python benchmarks/qat_tradeoff.py                       # 9 rows, 2 epochs of 60k each (about 1.5 h on 2 idle cores)
    python benchmarks/qat_tradeoff.py --train-limit 20000   # 2 epochs of a fixed 20k subset
    python benchmarks/qat_tradeoff.py --settings W4A2 --groups 2 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

import gwq_tvm

import _plot  # benchmarks/_plot.py: the script's own folder is on sys.path
from gwq_tvm.data import bundled_model, fashion_mnist
from gwq_tvm.plan.program import sfc_sites, sfc_summary
from gwq_tvm.qat import QATModel, TrainConfig, export_qat, train
from gwq_tvm.runtime import host_target

OUT = Path(__file__).resolve().parent / "results" / "qat_tradeoff"
WORK = Path(__file__).resolve().parent / "work" / "qat"
SETTINGS = {"W8A8": (8, 8), "W4A4": (4, 4), "W4A2": (4, 2)}
#: issue 4 targets: (setting, predicate on the row, points within fp32)
TARGETS = [("W4A4", "K=1 (all shifts but the 1/49 pool)", lambda r: r["groups"] == 1, 0.5),
           ("W4A2", "shift share >= 75%", lambda r: r["shift_share"] >= 0.75, 2.0)]


def compiled_accuracy(q, test_x, test_y) -> float:
    assert q.integer_only.ok, str(q.integer_only)
    vm = relax.VirtualMachine(gwq_tvm.build(q), tvm.cpu())
    return gwq_tvm.accuracy(gwq_tvm.predict(vm, test_x, q.float_model.input_shape), test_y)


def run_row(name, k, args, data, log):
    calib, train_x, train_y, test_x, test_y = data
    wbits, abits = SETTINGS[name]
    cfg = gwq_tvm.QuantConfig(weight_bits=wbits, act_bits=abits, mode="gwq", groups=k, end_bits=8)
    t0 = time.time()
    q = gwq_tvm.quantize(str(bundled_model()), calib[:512], cfg)
    ptq = compiled_accuracy(q, test_x, test_y)
    model = QATModel(q.graph, q.plan)
    tcfg = TrainConfig(epochs=args.epochs, lr=args.lr, scale_lr=args.scale_lr, distill=args.distill, threads=args.threads)
    work = WORK / f"{name}_K{k}_e{args.epochs}_n{len(train_x)}"
    history = train(model, train_x, train_y, tcfg, work_dir=work, show_progress=args.progress, log=log)
    onnx_path, plan_path = export_qat(model, work / "model.onnx")
    q2 = gwq_tvm.quantize(str(onnx_path), plan=gwq_tvm.QuantPlan.load(plan_path))
    qat = compiled_accuracy(q2, test_x, test_y)
    before, after = sfc_summary(sfc_sites(q.graph, q.plan)), sfc_summary(sfc_sites(q2.graph, q2.plan))
    return {
        "setting": name, "groups": len(q.plan.groups), "max_groups": k, "ptq_accuracy": ptq, "qat_accuracy": qat,
        "shift_share": after["shift_share"], "ptq_shift_share": before["shift_share"],
        "multiply_elements": after["multiply_elements"], "shift_elements": after["shift_elements"],
        "multiply_sites": after["multiply_sites"], "shift_sites": after["shift_sites"],
        "mantissas_ptq": [round(v, 4) for v in q.plan.groups.values()], "mantissas_qat": [round(v, 4) for v in q2.plan.groups.values()],
        "epochs": args.epochs, "train_images": len(train_x), "train_seconds": sum(h["seconds"] for h in history), "row_seconds": time.time() - t0,
        "integer_only": bool(q2.integer_only.ok),
    }


def table(rows, fp32) -> str:
    lines = [f"fp32 accuracy: {fp32 * 100:.2f}% (10k test images; every accuracy below is of the compiled integer program)", "",
             "| setting | K | groups | PTQ | QAT | QAT vs fp32 (pt) | shift share | multiply / shift elements | epochs x images | train time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['max_groups']} | {r['groups']} | {r['ptq_accuracy'] * 100:.2f}% | {r['qat_accuracy'] * 100:.2f}% | "
            f"{(r['qat_accuracy'] - fp32) * 100:+.2f} | {r['shift_share'] * 100:.1f}% | {r['multiply_elements']} / {r['shift_elements']} | "
            f"{r['epochs']} x {r['train_images']} | {r['train_seconds'] / 60:.1f} min |"
        )
    lines.append("")
    for setting, what, pred, pts in TARGETS:
        cands = [r for r in rows if r["setting"] == setting and pred(r)]
        if not cands:
            lines.append(f"- Target {setting}, {what}, within {pts} pt of fp32: no row measured")
            continue
        best = max(cands, key=lambda r: r["qat_accuracy"])
        gap = (fp32 - best["qat_accuracy"]) * 100
        verdict = "met" if gap <= pts else "**not met**"
        lines.append(f"- Target {setting}, {what}, within {pts} pt of fp32: {verdict} "
                     f"(best K={best['max_groups']}: {best['qat_accuracy'] * 100:.2f}%, {gap:.2f} pt below fp32)")
    return "\n".join(lines)


def plot(rows, fp32, path):
    settings = sorted({r["setting"] for r in rows}, key=list(SETTINGS).index)
    made = _plot.panels(len(settings))
    if made is None:
        return
    fig, axes = made
    for ax, s in zip(axes, settings):
        sel = sorted((r for r in rows if r["setting"] == s), key=lambda r: r["shift_share"])
        share = [r["shift_share"] * 100 for r in sel]
        ax.plot(share, [r["ptq_accuracy"] * 100 for r in sel], "o--", label="PTQ")
        ax.plot(share, [r["qat_accuracy"] * 100 for r in sel], "o-", label="QAT")
        ax.axhline(fp32 * 100, color="gray", lw=0.8, label="fp32")
        _plot.style_accuracy_axis(ax, s)
    _plot.save(fig, axes, path)


def _merge(path: Path, rows: list, key) -> list:
    """``rows`` plus the rows another run wrote to ``path`` (by key; ours win)."""
    theirs = json.loads(path.read_text())["rows"] if path.is_file() else []
    merged = {key(r): r for r in theirs}
    merged.update({key(r): r for r in rows})
    return list(merged.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--groups", default="1,2,4", help="comma-separated K values")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=None,
                    help="train on a fixed random subset of this many of the 60k images (every epoch sees the same subset)")
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--scale-lr", type=float, default=TrainConfig.scale_lr)
    ap.add_argument("--distill", type=float, default=TrainConfig.distill)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    t0 = time.time()
    calib, _ = fashion_mnist("calib")
    test_x, test_y = fashion_mnist("test")
    train_x, train_y = fashion_mnist("train")
    if args.train_limit:
        keep = np.sort(np.random.default_rng(0).permutation(len(train_x))[: args.train_limit])
        train_x, train_y = train_x[keep], train_y[keep]
    fm = gwq_tvm.load_model(bundled_model())
    fp_vm = relax.VirtualMachine(tvm.compile(fm.mod, host_target()), tvm.cpu())
    fp32 = gwq_tvm.accuracy(gwq_tvm.predict(fp_vm, test_x, fm.input_shape), test_y)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"qat_tradeoff{args.tag}"
    done = json.loads(stem.with_suffix(".json").read_text())["rows"] if stem.with_suffix(".json").is_file() else []
    key = lambda r: (r["setting"], r["max_groups"], r["epochs"], r["train_images"])  # noqa: E731
    for name in args.settings.split(","):
        for k in (int(v) for v in args.groups.split(",")):
            if any(key(r) == (name, k, args.epochs, len(train_x)) for r in done):
                continue
            row = run_row(name, k, args, (calib, train_x, train_y, test_x, test_y), lambda line: print(f"  {name} K={k} {line}", flush=True))
            done.append(row)
            print(f"{name} K={k}: PTQ {row['ptq_accuracy'] * 100:.2f}%  QAT {row['qat_accuracy'] * 100:.2f}%  "
                  f"shift {row['shift_share'] * 100:.1f}%  ({time.time() - t0:.0f}s)", flush=True)
            meta = {"fp32_accuracy": fp32, "test_images": len(test_x), "train_images": len(train_x), "calibration_images": 512,
                    "end_bits": 8, "torch_threads": torch.get_num_threads(), "target": str(host_target())}
            done = _merge(stem.with_suffix(".json"), done, key)  # another run may have added rows meanwhile
            tmp = stem.with_name(stem.name + ".json.tmp")
            tmp.write_text(json.dumps({"meta": meta, "rows": done}, indent=1) + "\n")
            tmp.replace(stem.with_suffix(".json"))
    done = _merge(stem.with_suffix(".json"), done, key)
    order = {s: i for i, s in enumerate(SETTINGS)}
    done.sort(key=lambda r: (order[r["setting"]], r["max_groups"], r["epochs"], r["train_images"]))
    md = table(done, fp32)
    stem.with_suffix(".md").write_text(f"# GWQ post-training vs quantization-aware training, bundled model\n\n{md}\n")
    plot(done, fp32, stem.with_suffix(".png"))
    print(md)


if __name__ == "__main__":
    main()
