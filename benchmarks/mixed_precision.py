"""Mixed precision on the bundled ResNet: uniform policies against LIMPQ's ILP at three size budgets.

Every row is quantized from the bundled calibration images (512), compiled
(integer-only) and evaluated on the bundled 10k Fashion-MNIST test images.
Columns: top-1 accuracy of the compiled program, packed weight size
(``bits * count / 8`` bytes, :func:`gwq_tvm.plan.mixed_precision.weight_bytes`)
and BitOps per sample (``MACs * w_bits * a_bits`` of each layer's input
tensor), both also in % of W8A8, the ILP solve time and the proxy-importance
time (post-training: no QAT here).  No latency: the machine is shared and
loaded, so timings of the compiled programs would mean nothing.

Writes ``benchmarks/results/mixed_precision/mixed_precision.{json,md}``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm.atomic import write_text
from gwq_tvm.calibration.mixed_precision import layer_macs
from gwq_tvm.data import bundled_model, fashion_mnist

OUT = Path(__file__).parent / "results" / "mixed_precision"
ROWS = {
    "W8A8": dict(),
    "W4A8": dict(weight_bits=4),
    "W4A8, ends 8": dict(weight_bits=4, end_bits=8),
    "W4A4": dict(weight_bits=4, act_bits=4),
    "ILP size 40%": dict(mixed_precision=True, size_budget="40%"),
    "ILP size 50%": dict(mixed_precision=True, size_budget="50%"),
    "ILP size 60%": dict(mixed_precision=True, size_budget="60%"),
}


def figures(q) -> dict:
    """Packed weight bytes and BitOps of a quantized model's plan, absolute and in % of W8A8."""
    g, plan = q.graph, q.plan
    size = sum(g.nodes[n].weight.size * w.bits / 8 for n, w in plan.layers.items())
    bitops = sum(layer_macs(g.nodes[n]) * w.bits * plan.tensors[g.tensor_of(g.nodes[n].inputs[0])].bits
                 for n, w in plan.layers.items())
    size8 = sum(g.nodes[n].weight.size for n in plan.layers)
    bitops8 = sum(layer_macs(g.nodes[n]) * 64 for n in plan.layers)
    return {"size_bytes": size, "size_percent": 100 * size / size8, "bitops": bitops, "bitops_percent": 100 * bitops / bitops8}


def main():
    calib, _ = fashion_mnist("calib")
    test_x, test_y = fashion_mnist("test")
    calib = calib[:512]
    rows = {}
    for label, kw in ROWS.items():
        t0 = time.time()
        q = gwq_tvm.quantize(bundled_model(), calib, gwq_tvm.QuantConfig(**kw))
        plan_s = time.time() - t0
        assert q.integer_only.ok
        vm = relax.VirtualMachine(gwq_tvm.build(q), tvm.cpu())
        logits = gwq_tvm.predict(vm, test_x, q.float_model.input_shape)
        mp = q.plan.provenance.get("mixed_precision")
        rows[label] = {"config": kw, "accuracy": gwq_tvm.accuracy(logits, test_y), **figures(q),
                       "weight_bits": {n: w.bits for n, w in q.plan.layers.items()},
                       "act_bits": ({t: q.plan.tensors[t].bits for t in mp["act_bits"]} if mp else None),
                       "solve_seconds": mp["solve_seconds"] if mp else None,
                       "importance_seconds": mp["importance_seconds"] if mp else None, "plan_seconds_loaded": plan_s}
        print(label, f"{rows[label]['accuracy'] * 100:.2f}%", f"{rows[label]['size_percent']:.1f}% size",
              f"{rows[label]['bitops_percent']:.1f}% BitOps", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    write_text(OUT / "mixed_precision.json", json.dumps({"model": "fmnist_resnet", "test_images": len(test_x),
                                                          "calib_images": len(calib), "rows": rows}, indent=1) + "\n")
    lines = ["Bundled ResNet, Fashion-MNIST 10k test images, compiled integer programs (post-training; proxy importance).",
             "Size = packed weight bytes (bits x count / 8); BitOps = MACs x w_bits x a_bits per sample. "
             "Timings were taken on a shared, loaded machine (plan time includes calibration).", "",
             "| policy | accuracy | size (bytes) | size (% W8A8) | BitOps (% W8A8) | ILP solve (ms) | importance (s, loaded) | weight bits |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        solve = f"{r['solve_seconds'] * 1000:.1f}" if r["solve_seconds"] is not None else "-"
        imp = f"{r['importance_seconds']:.1f}" if r["importance_seconds"] is not None else "-"
        bits = " ".join(str(b) for b in r["weight_bits"].values())
        lines.append(f"| {label} | {r['accuracy'] * 100:.2f}% | {r['size_bytes']:.0f} | {r['size_percent']:.1f}% | "
                     f"{r['bitops_percent']:.1f}% | {solve} | {imp} | {bits} |")
    write_text(OUT / "mixed_precision.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
