"""Does ``report --layer-error`` point at the tensor worth promoting?  W4A2, bundled model.

The bundled model is quantized per-layer at W4A2 (``QuantConfig(weight_bits=4,
act_bits=2)``, 512 calibration images) and
:func:`gwq_tvm.layer_error.layer_error` ranks its tensors on 256 calibration
images.  Then one tensor at a time is promoted to 8-bit activations (``bits``
override, weights unchanged, the plan re-calibrated) and the compiled program's
accuracy is measured on the 10k test images: the top-ranked tensor against the
bottom-ranked one (``--all``: every ranked tensor, and the rank correlation).

Writes ``benchmarks/results/layer_error_promotion/layer_error_promotion.{json,md}`` (``_all`` with ``--all``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


import gwq_tvm
from gwq_tvm.config import QuantConfig
from gwq_tvm.data import bundled_model, fashion_mnist
from gwq_tvm.export_qdq import program_logits
from gwq_tvm.layer_error import layer_error

OUT = Path(__file__).resolve().parent / "results" / "layer_error_promotion"
BASE = QuantConfig(weight_bits=4, act_bits=2)


def _accuracy(cfg, calib, x, y) -> float:
    q = gwq_tvm.quantize(bundled_model(), calib, cfg)
    return gwq_tvm.accuracy(program_logits(q, x), y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--all", action="store_true", help="promote every ranked tensor, not only the top and bottom one")
    args = ap.parse_args()
    calib, _ = fashion_mnist("calib")
    calib = calib[:512]
    x, y = fashion_mnist("test")
    q = gwq_tvm.quantize(bundled_model(), calib, BASE)
    ranking = layer_error(q, calib, samples=256)
    ranked = [r for r in ranking["tensors"] if r["alone_kl"] is not None]
    chosen = ranked if args.all else [ranked[0], ranked[-1]]
    base_acc = gwq_tvm.accuracy(program_logits(q, x), y)
    fp_acc = gwq_tvm.accuracy(gwq_tvm.api.predict(gwq_tvm.api.compile_float(bundled_model()), x, (None, 1, 28, 28)), y)
    rows = []
    for r in chosen:
        cfg = BASE.replace(bits={r["name"]: (BASE.weight_bits_for(r["name"]), 8)})
        acc = _accuracy(cfg, calib, x, y)
        rows.append({"tensor": r["name"], "rank": ranked.index(r) + 1, "alone_kl": r["alone_kl"], "sqnr_db": r["sqnr_db"],
                     "accuracy": acc, "recovered_pt": 100 * (acc - base_acc)})
        print(rows[-1], flush=True)
    result = {"config": BASE.to_dict(), "test_images": len(x), "fp32_accuracy": fp_acc, "w4a2_accuracy": base_acc,
              "layer_error": ranking, "promotions": rows}
    if len(rows) > 2:
        from scipy.stats import spearmanr

        result["spearman_alone_kl_vs_recovery"] = float(spearmanr([r["alone_kl"] for r in rows],
                                                                   [r["recovered_pt"] for r in rows]).statistic)
        result["best_promotion"] = max(rows, key=lambda r: r["accuracy"])["tensor"]
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "layer_error_promotion_all" if args.all else "layer_error_promotion"
    tmp = OUT / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, OUT / f"{stem}.json")
    lines = [f"Bundled model, per-layer W4A2 ({len(x)} test images): fp32 {fp_acc * 100:.2f}%, W4A2 {base_acc * 100:.2f}%. "
             "One tensor promoted to 8-bit activations at a time; rank from `report --layer-error` (alone KL, 256 "
             "calibration images).", "",
             "| rank | tensor | alone KL | accumulated SQNR (dB) | accuracy promoted | recovered (pt) |", "|---|---|---|---|---|---|"]
    for r in rows:
        sq = "inf" if r["sqnr_db"] is None else f"{r['sqnr_db']:.2f}"
        lines.append(f"| {r['rank']} | {r['tensor']} | {r['alone_kl']:.4g} | {sq} | {r['accuracy'] * 100:.2f}% | "
                     f"{r['recovered_pt']:+.2f} |")
    if "spearman_alone_kl_vs_recovery" in result:
        lines += ["", f"Spearman rank correlation of alone KL with recovered accuracy: "
                      f"{result['spearman_alone_kl_vs_recovery']:.2f}; best single promotion: {result['best_promotion']}."]
    (OUT / f"{stem}.md").write_text("# Layer error ranking: promoting the worst vs the best tensor to 8 bits\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
