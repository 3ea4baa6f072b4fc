"""ASQ (seed 004) on the bundled models: uniform LSQ vs POST weights, each with and without the adaptive step.

Rows (per model and bit-width W{b}A{b}): ``uniform`` (LSQ steps), ``post`` (POST weights, per-channel
clip learned), ``uniform+adapter``, ``post+adapter``; each in per-layer mode and in GWQ K=1 (power-of-two
weight units, one shared mantissa).  Every row is QAT from the float weights (``gwq_tvm.qat``, the
``gwq-tvm train`` flow: distillation 0.5, cosine Adam), exported, compiled by TVM and evaluated on the
10k Fashion-MNIST test images: the accuracy column is the **compiled integer program**'s.  Columns: fp32
accuracy of the float model compiled by TVM, shift share of the SFC elements, latency at batch 1 (default
schedules, median of ``LAT_RUNS``, machine shared and loaded: indicative only), and for adapter rows the
adapter branch's overhead = (latency - latency of the same plan without its adapters) / latency.

QAT is expensive here (2 shared cores), so each row is cached in ``results/asq/rows/<row>.json`` and its
training checkpoint in ``results/asq/work/<row>/``: rerunning resumes.  ``--epochs`` and ``--images`` set the
QAT schedule; the table records the schedule each row ran with.

Usage: ``python benchmarks/asq.py --rows resnet:4:uniform:gwq,resnet:4:post+adapter:gwq --epochs 1 --images 20000``
then ``python benchmarks/asq.py --table``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "asq"
MODELS = {"resnet": "fmnist_resnet", "mobilenetv3": "fmnist_mobilenetv3"}
VARIANTS = ("uniform", "post", "uniform+adapter", "post+adapter")
MODES = ("per-layer", "gwq")
LAT_RUNS = 30
#: rows trained before c016c22 (relative scale steps in QAT), kept for the comparison column
BEFORE_FIX = "rows_before_c016c22"


def row_key(model: str, bits: int, variant: str, mode: str, epochs: int = 1) -> str:
    """The row's cache name; a QAT schedule other than one epoch is a row of its own (``_e<epochs>``)."""
    return f"{model}_W{bits}A{bits}_{variant.replace('+', '-')}_{mode}" + (f"_e{epochs}" if epochs != 1 else "")


def config(bits: int, variant: str, mode: str):
    from gwq_tvm import QuantConfig

    extra = {"groups": 1} if mode == "gwq" else {}
    return QuantConfig(weight_bits=bits, act_bits=bits, end_bits=8, mode=mode, loss_aware=False,
                       weights="post" if variant.startswith("post") else "uniform", **extra)


def latency_ms(mod, x1) -> float:
    """Median milliseconds at batch 1 of ``mod`` built as ``gwq_tvm.build`` builds it (packed kernels, default
    schedules).  Rows cached before ``latency_build`` was recorded were timed from plain ``tvm.compile``."""
    import tvm
    from tvm import relax

    import gwq_tvm

    vm = relax.VirtualMachine(gwq_tvm.build(mod), tvm.cpu())
    arg = tvm.runtime.tensor(np.ascontiguousarray(x1))
    vm["main"](arg)
    times = []
    for _ in range(LAT_RUNS):
        t0 = time.perf_counter()
        vm["main"](arg)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def fp32_accuracy(name: str, test) -> float:
    import gwq_tvm
    from gwq_tvm.data import bundled_model

    path = OUT / f"fp32_{name}.json"
    if path.is_file():
        return json.loads(path.read_text())["fp32_accuracy"]
    from gwq_tvm.api import compile_float

    vm = compile_float(str(bundled_model(MODELS[name])))
    acc = gwq_tvm.accuracy(gwq_tvm.predict(vm, test[0], (None, 1, 28, 28)), test[1])
    path.write_text(json.dumps({"fp32_accuracy": acc}))
    return acc


def run_row(model: str, bits: int, variant: str, mode: str, epochs: int, images: int, threads: int = 2) -> dict:
    import gwq_tvm
    from gwq_tvm.data import bundled_model, fashion_mnist
    from gwq_tvm.plan.quantplan import QuantPlan
    from gwq_tvm.qat import QATModel, TrainConfig, export_qat, train

    key = row_key(model, bits, variant, mode, epochs)
    path = OUT / "rows" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    calib, _ = fashion_mnist("calib")
    tx, ty = fashion_mnist("train")
    test = fashion_mnist("test")
    cfg = config(bits, variant, mode)
    q = gwq_tvm.quantize(str(bundled_model(MODELS[model])), calib[:256], cfg)
    qat = QATModel(q.graph, q.plan, adaptive_step="all" if variant.endswith("adapter") else None)
    resumed = (OUT / "work" / key / "checkpoint.pt").exists()  # its QAT time below is then only the remainder's
    t0 = time.time()
    hist = train(qat, tx[:images], ty[:images], TrainConfig(epochs=epochs, threads=threads), work_dir=OUT / "work" / key,
                 log=lambda line: print(key, line, flush=True))
    seconds = time.time() - t0
    onnx_path, plan_path = export_qat(qat, OUT / "work" / key / "qat.onnx")
    plan = QuantPlan.load(plan_path)
    q2 = gwq_tvm.quantize(str(onnx_path), plan=plan)
    vm_acc = gwq_tvm.accuracy(gwq_tvm.predict(__import__("tvm").relax.VirtualMachine(gwq_tvm.build(q2), __import__("tvm").cpu()),
                                              test[0], q2.float_model.input_shape), test[1])
    row = {"row": key, "model": model, "bits": bits, "variant": variant, "mode": mode, "accuracy": vm_acc,
           "fp32_accuracy": fp32_accuracy(model, test), "shift_share": q2.sfc["shift_share"], "sfc": q2.sfc,
           "epochs": epochs, "images": images, "qat_seconds_loaded": seconds, "qat_resumed": resumed, "final_loss": hist[-1]["loss"] if hist else None,
           "adapters": sorted(plan.adapters)}
    time_row(row, q2, plan, test[0][:1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


def time_row(row: dict, q2, plan, x1) -> None:
    """Time the row's compiled program (and, for adapter rows, the same plan without its adapters) into ``row``."""
    from gwq_tvm.passes.realize import RealizeIntegerProgram

    row["latency_load"] = os.getloadavg()[0]
    row["latency_ms"] = latency_ms(q2.mod, x1)
    row["latency_build"] = "gwq_tvm.build"
    if plan.adapters:  # the same plan with its adapters removed: the branch's share of the latency
        tensors = {n: (t if t.dynamic is None else type(t)(t.bits, t.signed, t.group, t.exponent)) for n, t in plan.tensors.items()}
        plain = RealizeIntegerProgram(plan.replace(tensors=tensors, adapters={}))(q2.float_model.mod)
        row["latency_without_adapters_ms"] = latency_ms(plain, x1)
        row["adapter_overhead"] = 1 - row["latency_without_adapters_ms"] / row["latency_ms"]


def retime_row(key: str) -> dict:
    """Re-time a cached row from its exported QAT model and plan (``work/<key>/qat.*``); accuracy is kept."""
    import gwq_tvm
    from gwq_tvm.data import fashion_mnist
    from gwq_tvm.plan.quantplan import QuantPlan

    path = OUT / "rows" / f"{key}.json"
    row = json.loads(path.read_text())
    plan = QuantPlan.load(OUT / "work" / key / "qat.plan.json")
    q2 = gwq_tvm.quantize(str(OUT / "work" / key / "qat.onnx"), plan=plan)
    time_row(row, q2, plan, fashion_mnist("test")[0][:1])
    path.write_text(json.dumps(row, indent=1))
    return row


def table() -> None:
    rows = [json.loads(p.read_text()) for p in sorted((OUT / "rows").glob("*.json"))]
    (OUT / "asq.json").write_text(json.dumps(rows, indent=1))
    # the same rows trained before c016c22 (free weight scales and adapter hidden steps then took absolute Adam steps)
    before = {p.stem: json.loads(p.read_text())["accuracy"] for p in sorted((OUT / BEFORE_FIX).glob("*.json"))}
    lines = ["# ASQ: POST weights and the adaptive step (bundled models, Fashion-MNIST)", "",
             "Accuracy of the **compiled integer program** on the 10k test images after QAT (schedule per row); fp32 is "
             "the float model compiled by TVM.  Latency: batch 1, `gwq_tvm.build` (packed kernels, default schedules), "
             f"median of {LAT_RUNS} runs on a shared, loaded 2-core machine (indicative); *§* marks rows timed before "
             "that, from TVM's plain `tvm.compile` (naive loops: comparable only with each other); a load average in brackets "
             "is the one-minute load when the row was timed (rows timed since `time_row` recorded it).  Adapter overhead: "
             "latency share of the "
             "adapter branch (same plan compiled without its adapters).  QAT schedule: epochs x images, and in brackets the "
             "wall minutes of the QAT on the shared machine, including any time the job was paused (not a training cost).  "
             "Only the rows listed ran.  *before c016c22*: the same row trained before that commit, when per-layer free "
             "weight scales and adapter hidden steps took Adam's absolute steps (100% of a POST unit per step); rows not "
             "trained again since are listed there only (`" + BEFORE_FIX + "/`).", "",
             "| model | bits | weights | mode | accuracy | before c016c22 | fp32 | shift share | latency (ms) | adapter overhead | QAT schedule |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ov = f"{r['adapter_overhead'] * 100:.1f}%" if "adapter_overhead" in r else "-"
        load = f" (load {r['latency_load']:.1f})" if "latency_load" in r else ""
        old = f"{before[r['row']] * 100:.2f}%" if r["row"] in before else "-"
        lines.append(f"| {r['model']} | W{r['bits']}A{r['bits']} | {r['variant']} | {r['mode']} | {r['accuracy'] * 100:.2f}% | {old} | "
                     f"{r['fp32_accuracy'] * 100:.2f}% | {r['shift_share'] * 100:.1f}% | {r['latency_ms']:.2f}"
                     f"{'' if r.get('latency_build') else ' §'}"
                     f"{load} | {ov} | "
                     f"{r['epochs']} x {r['images']} images ("
                     + ("resumed from a checkpoint" if r.get("qat_resumed") else f"{r['qat_seconds_loaded'] / 60:.0f} min")
                     + ") |")
    (OUT / "asq.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="resnet:4:uniform:gwq,resnet:4:post+adapter:gwq",
                    help="comma list of model:bits:variant:mode")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the QAT (1 beside other jobs: spinning "
                    "threads on a shared core slow it several times)")
    ap.add_argument("--table", action="store_true", help="only rebuild the table from the cached rows")
    ap.add_argument("--retime", action="store_true", help="re-time the cached --rows (on a quiet machine) and rebuild "
                    "the table; accuracies are kept")
    args = ap.parse_args()
    if args.retime:
        for spec in args.rows.split(","):
            model, bits, variant, mode = spec.split(":")
            key = row_key(model, int(bits), variant, mode, args.epochs)
            if not (OUT / "work" / key / "qat.plan.json").is_file():
                print(f"{key}: no exported QAT model in work/{key}; not re-timed", flush=True)
                continue
            r = retime_row(key)
            print(f"{r['row']}: {r['latency_ms']:.3f} ms (load {r['latency_load']:.1f})", flush=True)
    elif not args.table:
        for spec in args.rows.split(","):
            model, bits, variant, mode = spec.split(":")
            assert model in MODELS and variant in VARIANTS and mode in MODES, spec
            r = run_row(model, int(bits), variant, mode, args.epochs, args.images, args.threads)
            print(f"{r['row']}: {r['accuracy'] * 100:.2f}% (fp32 {r['fp32_accuracy'] * 100:.2f}%)", flush=True)
    table()


if __name__ == "__main__":
    main()
