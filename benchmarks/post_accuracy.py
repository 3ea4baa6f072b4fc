"""Accuracy of POST weights (post-training) against uniform weights on the bundled ResNet (issue 24).

The bundled Fashion-MNIST ResNet quantized with 512 ``bundled:calib`` images,
W4A8 and W3A8, per-layer and GWQ mode, uniform vs ``--weights post``; each
compiled for this CPU and run on the first ``--images`` ``bundled:test`` images
(the first 32 also checked bit-exact against the numpy reference).  Writes
``benchmarks/results/post_kernel/post_accuracy.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.api import compile_float
from gwq_tvm.atomic import write_text
from gwq_tvm.data import bundled_model, fashion_mnist
from gwq_tvm.plan.program import sfc_sites, sfc_summary
from gwq_tvm.reference import run_reference

OUT = Path(__file__).parent / "results" / "post_kernel"
ROWS = [("uniform W4A8 per-channel", dict(weight_bits=4)), ("POST W4A8", dict(weights="post", weight_bits=4)),
        ("uniform W4A8 gwq", dict(weight_bits=4, mode="gwq")), ("POST W4A8 gwq", dict(weights="post", weight_bits=4, mode="gwq")),
        ("uniform W3A8 per-channel", dict(weight_bits=3)), ("POST W3A8", dict(weights="post", weight_bits=3))]


def _predict(vm, x):
    return np.concatenate([vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[i:i + 250]))).numpy()
                           for i in range(0, len(x), 250)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args(argv)
    calib, _ = fashion_mnist("calib")
    tx, ty = fashion_mnist("test")
    tx, ty = tx[:args.images], ty[:args.images]
    res = {"fp32": {"accuracy": float((_predict(compile_float(bundled_model()), tx).argmax(1) == ty).mean())}}
    for name, kw in ROWS:
        q = gwq_tvm.quantize(bundled_model(), calib[:512], QuantConfig(act_bits=8, **kw))
        out = _predict(relax.VirtualMachine(gwq_tvm.build(q), tvm.cpu()), tx)
        res[name] = {"accuracy": float((out.argmax(1) == ty).mean()),
                     "bit_exact_32": bool(np.array_equal(out[:32], run_reference(q.mod, tx[:32]))),
                     "integer_only": not q.float_ops,
                     "shift_share": sfc_summary(sfc_sites(q.graph, q.plan))["shift_share"],
                     "post_layers": f"{sum(w.codebook == 'post' for w in q.plan.layers.values())}/{len(q.plan.layers)}"}
        print(name, res[name], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    write_text(OUT / "post_accuracy.json", json.dumps({"images": args.images, "results": res}, indent=1) + "\n")
    lines = [f"# POST vs uniform weights, bundled ResNet, post-training, {args.images} test images", "",
             "| program | accuracy | shift share | POST layers | integer-only | bit-exact (32) |", "|---|---|---|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r.get('shift_share', float('nan')):.3f} | {r.get('post_layers', '')} | "
                     f"{r.get('integer_only', '')} | {r.get('bit_exact_32', '')} |")
    write_text(OUT / "post_accuracy.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
