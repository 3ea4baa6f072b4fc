"""LIMPQ's measured-latency budget on the bundled ResNet and MobileNetV3-Small (issue 23, must-show 1).

For each model (``--models``):

1. the latency table (:mod:`gwq_tvm.schedules.latency`) is measured once on
   this machine: every conv/dense layer's integer kernel with int8 and with
   packed int4 weights, and the whole compiled W8A8 program, batch 1, one
   process, TVM's default thread pool;
2. policies from the ILP on the **learned** indicators
   (``results/mixed_precision/<model>.learned.importance.json``, one joint QAT
   run): a size budget alone, and the same size budget with latency budgets
   (percentages of the measured W8A8 program), plus size-only rows for reference;
3. every policy is quantized from 512 calibration images (post-training),
   compiled, evaluated on the 10k test images and **timed as a compiled program**
   next to the W8A8 program: ``--rounds`` alternating rounds, each the median
   of 30 runs (``time_evaluator``), so both see the same machine state; the
   measured ratio is the median over rounds of policy / W8A8.

A policy meets its budget when the measured ratio is at most the budget's
percentage.  The prediction is ``T_w8a8 + sum_l (t_l[storage] - t_l[int8])``.
``--qat MODEL`` then fine-tunes each feasible policy of that model from the
float weights with QAT (``benchmarks/mixed_precision.py``'s schedule: 1 epoch
on 10k (ResNet) / 5k (MobileNetV3) training images), exports, compiles and
evaluates it ("QAT top-1"), into ``<model>.qat.json`` (one process per model);
``--table`` rewrites the table from the JSON files.
Writes ``benchmarks/results/latency_budget/latency_budget.{json,md}``
(``--loaded`` marks figures taken beside other work).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "latency_budget"
MP = HERE / "results" / "mixed_precision"
MODELS = ("fmnist_resnet", "fmnist_mobilenetv3")
#: (size budget, latency budget or None)
POLICIES = (("50%", None), ("50%", "100%"), ("50%", "102%"), ("40%", None), ("40%", "100%"), ("40%", "105%"))
CALIB = 512


def _time(vm, dev, x, repeat=30) -> float:
    from gwq_tvm.schedules.latency import time_vm

    return time_vm(vm, dev, x, repeat)


def run_model(name: str, rounds: int) -> dict:
    import tvm
    from tvm import relax

    import gwq_tvm
    from gwq_tvm import QuantConfig
    from gwq_tvm.data import bundled_model, fashion_mnist
    from gwq_tvm.errors import GwqError

    sys_path = str(HERE)
    import sys

    sys.path.insert(0, sys_path)
    from mixed_precision import compiled_accuracy, figures

    OUT.mkdir(parents=True, exist_ok=True)
    calib = fashion_mnist("calib")[0][:CALIB]
    test = fashion_mnist("test")
    model = bundled_model(name)
    table = OUT / f"{name}.latency.json"
    dev = tvm.cpu()
    x1 = test[0][:1]
    w8a8 = gwq_tvm.quantize(model, calib, QuantConfig())
    vm8 = relax.VirtualMachine(gwq_tvm.build(w8a8), dev)
    rows = {"W8A8": {"ptq_accuracy": compiled_accuracy(w8a8, *test), **figures(w8a8)}}
    for size, lat in POLICIES:
        label = _label(size, lat)
        cfg = _config(name, size, lat)
        t0 = time.time()
        try:
            q = gwq_tvm.quantize(model, calib, cfg)
        except GwqError as err:
            rows[label] = {"infeasible": str(err)}
            print(f"{name} {label}: {err}", flush=True)
            continue
        mp = q.plan.provenance["mixed_precision"]
        vm = relax.VirtualMachine(gwq_tvm.build(q), dev)
        ratios, ours, base = [], [], []
        for _ in range(rounds):
            a, b = _time(vm, dev, x1), _time(vm8, dev, x1)
            ours.append(a)
            base.append(b)
            ratios.append(a / b)
        row = {"ptq_accuracy": compiled_accuracy(q, *test), **figures(q),
               "weight_bits": {n: w.bits for n, w in q.plan.layers.items()},
               "measured_ms": 1e3 * statistics.median(ours), "w8a8_measured_ms": 1e3 * statistics.median(base),
               "measured_ratio": statistics.median(ratios), "solve_seconds": mp["solve_seconds"],
               "plan_seconds": time.time() - t0}
        if lat:
            budget = float(lat.rstrip("%")) / 100
            row.update(latency_budget=lat, predicted_ms=1e3 * mp["latency"]["predicted_s"],
                       table_w8a8_ms=1e3 * mp["latency"]["w8a8_program_s"],
                       predicted_ratio=mp["latency"]["predicted_s"] / mp["latency"]["w8a8_program_s"],
                       meets_budget=statistics.median(ratios) <= budget)
        rows[label] = row
        print(f"{name} {label}: {json.dumps({k: v for k, v in row.items() if k != 'weight_bits'})}", flush=True)
    rec = json.loads(table.read_text()) if table.exists() else None
    return {"rows": rows, "table": rec}


def _config(name: str, size: str, lat: str | None):
    from gwq_tvm import QuantConfig

    return QuantConfig(mixed_precision=True, size_budget=size, importance="learned",
                       importance_file=str(MP / f"{name}.learned.importance.json"),
                       **({"latency_budget": lat, "latency_table": str(OUT / f"{name}.latency.json")} if lat else {}))


def _label(size: str, lat: str | None) -> str:
    return f"size {size}" + (f" + latency {lat}" if lat else "")


def qat_model(name: str) -> None:
    """QAT accuracy of every feasible policy of ``name`` (the same plans: the table and indicators are files)."""
    import sys

    import torch

    import gwq_tvm
    from gwq_tvm.atomic import write_text
    from gwq_tvm.data import bundled_model, fashion_mnist

    sys.path.insert(0, str(HERE))
    import mixed_precision as MPB

    torch.set_num_threads(1)
    rows = json.loads((OUT / "latency_budget.json").read_text())["models"][name]["rows"]
    out = OUT / f"{name}.qat.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    calib, test, train = fashion_mnist("calib")[0][:CALIB], fashion_mnist("test"), fashion_mnist("train")
    for size, lat in POLICIES:
        label = _label(size, lat)
        if label in done or "infeasible" in rows.get(label, {"infeasible": ""}):
            continue
        # QAT keeps activations symmetric (it refuses zero points); the ILP's widths do not depend on them
        q = gwq_tvm.quantize(bundled_model(name), calib, _config(name, size, lat).replace(symmetric_activations=True))
        assert {n: w.bits for n, w in q.plan.layers.items()} == rows[label]["weight_bits"], label
        done[label] = MPB.qat_accuracy(q, OUT / "work" / name / label.replace(" ", "_").replace("%", ""), train, test,
                                       MPB.QAT_IMAGES[name])
        write_text(out, json.dumps(done, indent=1) + "\n")
        print(f"{name} {label}: QAT {100 * done[label]['qat_accuracy']:.2f}%", flush=True)


def write(results: dict, loaded: bool) -> None:
    from gwq_tvm.atomic import write_text
    from gwq_tvm.runtime import host_target

    payload = {"machine": platform.processor() or platform.machine(), "target": str(host_target()),
               "cpus": os.cpu_count(), "loaded": loaded, "models": results}
    write_text(OUT / "latency_budget.json", json.dumps(payload, indent=1) + "\n")
    lines = ["# Latency budgets (LIMPQ ILP, learned indicators, PTQ and QAT; batch 1, this machine)", "",
             f"Target `{payload['target']}`" + (" — **measured beside other work (loaded)**" if loaded else "") + ".", ""]
    for name, res in results.items():
        qat_file = OUT / f"{name}.qat.json"
        qat = json.loads(qat_file.read_text()) if qat_file.exists() else {}
        lines += [f"## {name}", "", "| policy | PTQ top-1 | QAT top-1 | size % | predicted / W8A8 | measured / W8A8 | meets | "
                  "measured ms | W8A8 ms (same rounds) | solve s | bits |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, r in res["rows"].items():
            if "infeasible" in r:
                lines.append(f"| {label} | — | — | — | — | — | infeasible | — | — | — | {r['infeasible']} |")
                continue
            if label == "W8A8":
                lines.append(f"| W8A8 | {100 * r['ptq_accuracy']:.2f} | — | 100.0 | 1 | 1 | — | — | — | — | all 8 |")
                continue
            q_acc = f"{100 * qat[label]['qat_accuracy']:.2f}" if label in qat else "—"
            pred = f"{r['predicted_ratio']:.3f}" if "predicted_ratio" in r else "—"
            meas = f"{r['measured_ratio']:.3f}" if "measured_ratio" in r else "1"
            meets = ("yes" if r["meets_budget"] else "**no**") if "meets_budget" in r else "—"
            bits = " ".join(str(b) for b in r.get("weight_bits", {}).values()) if len(r.get("weight_bits", {})) <= 12 else \
                ", ".join(f"{list(r['weight_bits'].values()).count(b)}x{b}" for b in sorted(set(r["weight_bits"].values()), reverse=True))
            lines.append(f"| {label} | {100 * r['ptq_accuracy']:.2f} | {q_acc} | {r['size_percent']:.1f} | {pred} | {meas} | {meets} | "
                         f"{r.get('measured_ms', float('nan')):.3f} | {r.get('w8a8_measured_ms', float('nan')):.3f} | "
                         f"{r.get('solve_seconds') or 0:.3f} | {bits} |")
        t = res.get("table")
        if t:
            faster = [n for n, v in t["layers"].items() if v["int4"] < v["int8"]]
            lines += ["", f"Latency table: W8A8 program {1e3 * t['program_w8a8_s']:.3f} ms, measured in {t['seconds']:.0f} s; "
                      f"int4 kernel faster than int8 on {len(faster)} of {len(t['layers'])} layers"
                      + (f" ({', '.join(faster)})" if faster and len(faster) <= 8 else "") + ".", ""]
    write_text(OUT / "latency_budget.md", "\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--loaded", action="store_true", help="the machine runs other work: say so in the results")
    ap.add_argument("--qat", choices=MODELS, help="fine-tune this model's feasible policies (after the PTQ run)")
    ap.add_argument("--table", action="store_true", help="rewrite the table from the JSON files")
    args = ap.parse_args(argv)
    if args.qat:
        qat_model(args.qat)
        return
    if args.table:
        payload = json.loads((OUT / "latency_budget.json").read_text())
        write(payload["models"], payload["loaded"])
    else:
        write({m: run_model(m, args.rounds) for m in args.models}, args.loaded)
    print((OUT / "latency_budget.md").read_text())


if __name__ == "__main__":
    main()
