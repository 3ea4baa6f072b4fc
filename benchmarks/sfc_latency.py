"""Latency of the compiled integer program: per-layer (multiply SFCs) vs pot vs GWQ (shift SFCs).

The trade-off benchmark times each row once; this one compiles the bundled
model W8A8 three ways and measures them *interleaved* (A, B, C, A, B, C, ...)
so that machine drift hits all alike, at batch 1 and batch 64, and reports
medians and ratios.  Untuned default schedules (tuning is issue 5).

Writes ``benchmarks/results/sfc_latency/sfc_latency.{json,md}``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm.config import QuantConfig
from gwq_tvm.data import bundled_model, fashion_mnist
from gwq_tvm.runtime import host_target

OUT = Path(__file__).resolve().parent / "results" / "sfc_latency"
ROUNDS = 15


def main():
    calib, _ = fashion_mnist("calib")
    plans = {"per-layer": QuantConfig(), "pot": QuantConfig(mode="pot"), "gwq": QuantConfig(mode="gwq")}
    vms, sfc = {}, {}
    for name, cfg in plans.items():
        q = gwq_tvm.quantize(bundled_model(), calib[:512], cfg)
        vms[name] = relax.VirtualMachine(gwq_tvm.build(q), tvm.cpu())
        sfc[name] = q.sfc
    fp = gwq_tvm.load_model(bundled_model())
    vms["fp32"] = relax.VirtualMachine(tvm.compile(fp.mod, host_target()), tvm.cpu())
    results = {}
    for batch in (1, 64):
        x = tvm.runtime.tensor(np.ascontiguousarray(calib[:batch]))
        timers = {n: vm.time_evaluator("main", tvm.cpu(), number=10, repeat=1, min_repeat_ms=50) for n, vm in vms.items()}
        samples = {n: [] for n in vms}
        for _ in range(ROUNDS):
            for n, t in timers.items():
                samples[n].append(t(x).mean * 1e3)
        results[batch] = {n: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)} for n, v in samples.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sfc_latency.json").write_text(json.dumps({"target": str(host_target()), "rounds": ROUNDS, "sfc": sfc,
                                                      "latency": results}, indent=1) + "\n")
    lines = ["| program | SFC multiply elements | shift share | batch 1 median (ms) | vs per-layer | batch 64 median (ms) | vs per-layer |",
             "|---|---|---|---|---|---|---|"]
    for n in vms:
        s = sfc.get(n)
        b1, b64 = results[1][n]["median_ms"], results[64][n]["median_ms"]
        r1, r64 = b1 / results[1]["per-layer"]["median_ms"], b64 / results[64]["per-layer"]["median_ms"]
        mult = str(s["multiply_elements"]) if s else "-"
        share = f"{s['shift_share'] * 100:.1f}%" if s else "-"
        lines.append(f"| {n} | {mult} | {share} | {b1:.3f} | {r1:.2f}x | {b64:.2f} | {r64:.2f}x |")
    text = ("# SFC latency: multiply (per-layer) vs shift (GWQ) programs\n\n"
            f"Bundled model W8A8, untuned default schedules, {ROUNDS} interleaved rounds (each >= 50 ms), "
            f"target `{host_target()}`\n\n" + "\n".join(lines) + "\n")
    (OUT / "sfc_latency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
