"""What PTQ-SL's blocks cost in latency: per-channel against output and input blocks, interleaved (issue 19).

Output blocks (``NOUTx1``) only change the per-channel SFC constants, so their
program has the op list of per-channel quantization.  Input blocks
(``NIN > 1``) need one int32 partial accumulator per block, each on its
input-channel slice (or its taps, for a depthwise conv), rescaled by its own
SFC and added in integer: ``NIN`` convs, ``NIN`` rescales and ``NIN - 1`` adds
where per-channel has one conv.  This script compiles the bundled models at
W4A8 (input, first and last layer at 8 bits; no block-scale search: latency
does not depend on the scale values) with the default schedules a user gets
from ``gwq-tvm compile``, per-layer and GWQ ``K=1``, and times the programs
interleaved (A, B, C, ..., A, B, C, ...) at batch 1 so machine drift hits all
alike.  The thread count is TVM's pool: run it under ``TVM_NUM_THREADS=1`` and
``=2``.

Writes ``benchmarks/results/input_block_latency/input_block_latency.{json,md}``
(rows of other thread counts are kept).  Usage::

    TVM_NUM_THREADS=1 python benchmarks/input_block_latency.py
    TVM_NUM_THREADS=2 python benchmarks/input_block_latency.py
"""

from __future__ import annotations

import json
import os
import statistics
import warnings
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm.config import QuantConfig
from gwq_tvm.data import bundled_model, fashion_mnist

OUT = Path(__file__).resolve().parent / "results" / "input_block_latency"
ROUNDS = int(os.environ.get("ROUNDS", "15"))
MODELS = {"fmnist_resnet": "bundled ResNet", "fmnist_mobilenetv3": "bundled MobileNetV3-Small"}
PLANS = {"per-channel": {}, "blocks 8x1": dict(weight_blocks=(8, 1)), "blocks 4x4": dict(weight_blocks=(4, 4)),
         "blocks 8x2": dict(weight_blocks=(8, 2))}
MODES = {"per-layer": {}, "gwq K=1": dict(mode="gwq", groups=1)}


def op_counts(mod) -> dict:
    """``{op: count}`` of the realized program's ``main``."""
    counts: dict = {}
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            if hasattr(b.value, "op") and hasattr(b.value.op, "name"):
                counts[b.value.op.name] = counts.get(b.value.op.name, 0) + 1
    return counts


def measure(model: str, calib, x1) -> list[dict]:
    vms, rows = {}, []
    for mode, mcfg in MODES.items():
        for label, changes in PLANS.items():
            cfg = QuantConfig(weight_bits=4, act_bits=8, end_bits=8, loss_aware=False, weight_blocks_fit="gcd",
                              **mcfg, **changes)
            q = gwq_tvm.quantize(str(bundled_model(model)), calib, cfg)
            ops = op_counts(q.mod)
            vms[(mode, label)] = relax.VirtualMachine(gwq_tvm.build(q), tvm.cpu())
            rows.append({"model": model, "mode": mode, "plan": label, "convs": ops.get("relax.nn.conv2d", 0),
                         "ops": sum(ops.values()), "integer_only": bool(q.integer_only.ok),
                         "input_blocks": sum(1 for w in q.plan.layers.values() if w.block and w.block[1] > 1)})
    arg = tvm.runtime.tensor(np.ascontiguousarray(x1))
    timers = {k: vm.time_evaluator("main", tvm.cpu(), number=20, repeat=1, min_repeat_ms=50) for k, vm in vms.items()}
    samples: dict = {k: [] for k in vms}
    for _ in range(ROUNDS):
        for k, t in timers.items():
            samples[k].append(t(arg).mean * 1e3)
    for r in rows:
        r["median_ms"] = statistics.median(samples[(r["mode"], r["plan"])])
        base = statistics.median(samples[(r["mode"], "per-channel")])
        r["vs_per_channel"] = r["median_ms"] / base
    return rows


def main():
    warnings.filterwarnings("ignore")
    threads = int(os.environ.get("TVM_NUM_THREADS", "0")) or os.cpu_count()
    calib, _ = fashion_mnist("calib")
    x1 = fashion_mnist("test")[0][:1]
    load0 = os.getloadavg()[0]
    rows = [dict(r, threads=threads) for m in MODELS for r in measure(m, calib[:256], x1)]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "input_block_latency.json"
    old = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    runs = [r for r in old["runs"] if r["threads"] != threads]
    runs.append({"threads": threads, "load_before": load0, "load_after": os.getloadavg()[0], "rows": rows})
    path.write_text(json.dumps({"runs": sorted(runs, key=lambda r: r["threads"])}, indent=1) + "\n")
    lines = ["# Latency of PTQ-SL blocks against per-channel (W4A8, batch 1, default schedules)", "",
             f"Median of {ROUNDS} interleaved rounds (each >= 50 ms of calls).  Input blocks (`NIN > 1`) emit one conv "
             "per block plus its rescale and add; output blocks change constants only.  Written by "
             "`benchmarks/input_block_latency.py`.", ""]
    for run in json.loads(path.read_text())["runs"]:
        lines += [f"## {run['threads']} thread(s) (1-minute load average {run['load_before']:.1f} before, "
                  f"{run['load_after']:.1f} after)", "",
                  "| model | mode | plan | layers with input blocks | convs | ops | ms | vs per-channel |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            lines.append(f"| {MODELS[r['model']]} | {r['mode']} | {r['plan']} | {r['input_blocks']} | {r['convs']} | "
                         f"{r['ops']} | {r['median_ms']:.3f} | {r['vs_per_channel']:.2f}x |")
        lines.append("")
    (OUT / "input_block_latency.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
