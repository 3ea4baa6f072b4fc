"""ONNX Runtime on gwq-tvm's QDQ export against the compiled integer program, on the 10k test images.

The bundled model is quantized W8A8 per-layer (dyadic SFCs) and GWQ (shared
mantissas, shift SFCs), exported with ``gwq-tvm export-qdq`` in both weight
containers, and run on ONNX Runtime's CPU executor with its QDQ fusions
(QLinearConv, QLinearAdd, QGemm) and without any optimization (plain
DequantizeLinear -> float op -> QuantizeLinear).  Figures are those of
:func:`gwq_tvm.fidelity.fidelity` with the integer program as the reference.

Writes ``benchmarks/results/qdq_agreement/qdq_agreement.{json,md}``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import gwq_tvm
from gwq_tvm.config import QuantConfig
from gwq_tvm.data import bundled_model, fashion_mnist
from gwq_tvm.export_qdq import export_qdq, host_has_vnni, ort_agreement, program_logits

OUT = Path(__file__).resolve().parent / "results" / "qdq_agreement"


def main():
    calib, _ = fashion_mnist("calib")
    x, y = fashion_mnist("test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in {"per-layer": QuantConfig(), "gwq": QuantConfig(mode="gwq")}.items():
            q = gwq_tvm.quantize(bundled_model(), calib[:512], cfg)
            ours = program_logits(q, x)
            for wtype in ("int8", "uint8"):
                path = export_qdq(q.plan, bundled_model(), Path(tmp) / f"{name}_{wtype}.onnx", q.graph, weight_type=wtype)
                for optimize in (True, False):
                    fid = ort_agreement(q, path, x, y, optimize=optimize, program=ours)
                    rows.append({"plan": name, "weight_type": wtype, "ort_optimized": optimize, **fid.to_dict()})
                    print(rows[-1])
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"images": len(x), "host_vnni": host_has_vnni(), "cpu": _cpu()}
    tmp = OUT / "qdq_agreement.json.tmp"
    tmp.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    os.replace(tmp, OUT / "qdq_agreement.json")
    lines = [f"ONNX Runtime (CPU) on the QDQ export vs the gwq-tvm integer program, bundled model W8A8, {len(x)} test images; "
             f"CPU: {meta['cpu']} (VNNI: {'yes' if meta['host_vnni'] else 'no'}).", "",
             "| plan | weights | ORT optimizations | top-1 agreement | logit SQNR (dB) | KL (nats) | gwq-tvm acc. | ORT acc. |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sq = "inf" if r["sqnr_db"] is None else f"{r['sqnr_db']:.2f}"
        lines.append(f"| {r['plan']} | {r['weight_type']} | {'QDQ fusions' if r['ort_optimized'] else 'none'} | "
                     f"{r['top1_agreement'] * 100:.2f}% | {sq} | {r['kl']:.2e} | {r['float_accuracy'] * 100:.2f}% | "
                     f"{r['quantized_accuracy'] * 100:.2f}% |")
    (OUT / "qdq_agreement.md").write_text("# QDQ export: ONNX Runtime vs the gwq-tvm integer program\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
