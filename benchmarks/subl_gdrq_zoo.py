"""PTQ-SL and GDRQ plans on every model-zoo architecture: integer-only and bit-exact wherever W8A8 is (issue 19).

For each row of the model-zoo benchmark (:mod:`model_zoo`: the torch-defined
architectures and the onnx wheel's zoo graphs with seeded weights), W4A8 with
the usual low-bit protocol (model input, first and last weight layers at 8
bits) is planned four ways:

* ``blocks 4x4 +reorder``: PTQ-SL output and input blocks (``gcd`` fit), channels
  reordered into the output blocks;
* ``G=4 +scale-clip``: GDRQ filter groups with Scale-Clip (``k * std(W)``);

each in ``per-layer`` mode and under GWQ (``gwq``, default grouping).  Every plan
is realized, compiled by TVM and checked:

* **integer-only**, or, on a model that keeps ops in float at W8A8, keeping
  *no other* float op than the W8A8 per-layer program of the same model
  (``float ops`` column: what the plan keeps in float; ``new float ops`` must be empty);
* **bit-exact**: the compiled module against the numpy reference
  (:func:`gwq_tvm.run_reference`) on ``--exact`` seeded inputs;
* **fidelity**: SQNR of the outputs against the fp32 model (TVM-compiled), pooled over
  ``--samples`` seeded N(0, 1) inputs, next to the plain per-channel W4A8 plan.
  Those are logits, except on a model ending in Softmax (``softmax_head``),
  where they are probabilities: the table marks those cells ``p``.  Unlike
  :mod:`model_zoo`, this sweep does not build every plan a second time without
  the Softmax; a probability SQNR is led by the few samples whose top classes
  nearly tie, and is ``inf`` where every output saturates to one-hot.

Seeded weights and random inputs: the SQNR says how much a plan perturbs the
function, not what accuracy a trained model would keep.  Each row runs in its own
process with a time-out.  Writes ``benchmarks/results/subl_gdrq_zoo/subl_gdrq_zoo.{json,md}``.
Usage::

    python benchmarks/subl_gdrq_zoo.py                         # every row
    python benchmarks/subl_gdrq_zoo.py --models mobilenet_v2,light:squeezenet --merge
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_zoo  # noqa: E402  (the row list, the seeded ONNX files and their input shapes)

OUT = Path(__file__).resolve().parent / "results" / "subl_gdrq_zoo"
PLANS = {
    "per-channel": {},
    "blocks 4x4 +reorder": dict(weight_blocks=(4, 4), weight_blocks_fit="gcd", reorder_channels=True),
    "G=4 +scale-clip": dict(weight_groups=4, weight_blocks_fit="gcd", scale_clip="std"),
}
MODES = {"per-layer": {}, "gwq": dict(mode="gwq")}


def run_row(name: str, samples: int, calib_n: int, exact_n: int) -> dict:
    """Every plan of one model (runs in a child process; see :func:`main`)."""
    import tvm
    from tvm import relax

    import gwq_tvm
    from gwq_tvm.api import compile_float
    from gwq_tvm.config import QuantConfig
    from gwq_tvm.fidelity import pooled_sqnr_db

    warnings.filterwarnings("ignore")
    path = model_zoo.onnx_path(name)
    shape = model_zoo.input_shape_of(path, name)
    calib = np.random.default_rng(0).standard_normal((calib_n, *shape[1:]), dtype=np.float32)
    xs = np.random.default_rng(1).standard_normal((samples, *shape[1:]), dtype=np.float32)
    fm = gwq_tvm.load_model(str(path), input_shape=shape)
    fvm = compile_float(fm)
    ref = [model_zoo._outputs(fvm["main"](tvm.runtime.tensor(x[None]))) for x in xs]
    w8a8 = gwq_tvm.quantize(fm, calib, QuantConfig())
    base_float = set(w8a8.float_ops)
    row = {"model": name, "input_shape": list(shape), "w8a8_float_ops": sorted(base_float),
           "softmax_head": model_zoo.logits_model(path) is not None, "plans": {}}
    for mode, mode_cfg in MODES.items():
        for label, changes in PLANS.items():
            key = f"{mode}|{label}"
            t0 = time.time()
            try:
                cfg = QuantConfig(weight_bits=4, act_bits=8, end_bits=8, **mode_cfg, **changes)
                q = gwq_tvm.quantize(fm, calib, cfg)
                vm = relax.VirtualMachine(gwq_tvm.build(q), tvm.cpu())
            except Exception as err:  # noqa: BLE001 - the row records what gwq-tvm said
                row["plans"][key] = {"error": f"{type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}"[:300]}
                continue
            outs = [model_zoo._outputs(vm["main"](tvm.runtime.tensor(x[None]))) for x in xs]
            exact, ref_error = True, None
            try:
                for i in range(min(exact_n, samples)):
                    r = gwq_tvm.run_reference(q.mod, xs[i : i + 1])
                    r = [np.asarray(v) for v in (r if isinstance(r, (list, tuple)) else [r])]
                    exact &= len(r) == len(outs[i]) and all(np.array_equal(a, b) for a, b in zip(r, outs[i]))
            except Exception as err:  # noqa: BLE001 - a reference that cannot run this program is a finding
                exact, ref_error = False, f"{type(err).__name__}: {err}"[:300]
            blocks = {}
            for w in q.plan.layers.values():
                grid = "x".join(map(str, w.block)) if w.block else w.granularity
                blocks[grid] = blocks.get(grid, 0) + 1
            float_ops = set(q.float_ops)
            row["plans"][key] = {
                "integer_only": bool(q.integer_only.ok), "float_ops": sorted(float_ops),
                "new_float_ops": sorted(float_ops - base_float), "bit_exact": bool(exact), "exact_inputs": exact_n,
                "reference_error": ref_error, "sqnr_db": pooled_sqnr_db(model_zoo._flat(ref), model_zoo._flat(outs)),
                "shift_share": float(q.sfc["shift_share"]), "fitted": blocks,
                "reordered": sum(1 for w in q.plan.layers.values() if w.permutation is not None),
                "seconds": time.time() - t0}
    return row


def _softmax_head(row: dict) -> bool:
    """Does the row's model end in Softmax (rows run before ``softmax_head`` was recorded: read the cached ONNX)?"""
    if "softmax_head" in row:
        return row["softmax_head"]
    path = model_zoo.CACHE / f"{row['model'].replace(':', '_')}.onnx"
    if path.is_file():
        return model_zoo.logits_model(path) is not None
    return "relax.nn.softmax" in row.get("w8a8_float_ops", [])


def table(result: dict) -> str:
    rows = result["rows"]
    s = result["settings"]
    lines = ["# PTQ-SL and GDRQ plans on the model zoo (W4A8, first/last layer and input at 8 bits)", "",
             f"Seeded weights, {s['calib']} seeded calibration inputs, SQNR of the logits against the fp32 model pooled "
             f"over {s['samples']} seeded inputs (`p`: of the probabilities, on a model ending in Softmax; a noisy "
             f"figure, `inf` where every output saturates to one-hot); bit-exact: compiled module against the numpy reference on "
             f"{s['exact']} inputs.  `int-only`, or `float:` the ops kept in float (each also kept by the model's W8A8 "
             "program unless listed as new).  Written by `benchmarks/subl_gdrq_zoo.py`.", ""]
    header = "| model | " + " | ".join(f"{m} {p}" for m in MODES for p in PLANS) + " |"
    lines += [header, "|---|" + "---|" * (len(MODES) * len(PLANS))]
    n_ok = n_all = 0
    for r in rows:
        cells = []
        if "error" in r:
            lines.append(f"| {r['model']} | {r['error']} |")
            continue
        for m in MODES:
            for p in PLANS:
                c = r["plans"].get(f"{m}|{p}")
                if c is None:
                    cells.append("—")
                    continue
                n_all += 1
                if "error" in c:
                    cells.append(f"error: {c['error']}")
                    continue
                ok = c["bit_exact"] and not c["new_float_ops"]
                n_ok += ok
                io = "int-only" if c["integer_only"] else ("float: " + ", ".join(o.replace("relax.", "") for o in c["float_ops"]))
                new = f" **new float: {', '.join(c['new_float_ops'])}**" if c["new_float_ops"] else ""
                ex = "bit-exact" if c["bit_exact"] else f"**not bit-exact** {c['reference_error'] or ''}"
                shift = f", shift {c['shift_share'] * 100:.0f}%" if m == "gwq" else ""
                unit = " dB p" if _softmax_head(r) else " dB"
                cells.append(f"{c['sqnr_db']:.1f}{unit}{shift}; {ex}; {io}{new}")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    lines += ["", f"{n_ok}/{n_all} plans compile bit-exact with no float op beyond their model's W8A8 program."]
    missing = [n for n in model_zoo.row_names() if n not in {r["model"] for r in rows}]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)} (`--models ... --merge` adds them)."]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated rows (default: every model-zoo row)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--exact", type=int, default=2, help="inputs checked bit-exact against the numpy reference")
    p.add_argument("--timeout", type=float, default=2400.0, help="seconds per row")
    p.add_argument("--merge", action="store_true", help="keep the stored rows this run does not re-run")
    p.add_argument("--table-only", action="store_true", help="rewrite the .md from the JSON and stop")
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--row-json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.row:
        args.row_json.write_text(json.dumps(run_row(args.row, args.samples, args.calib, args.exact)))
        return
    path = OUT / "subl_gdrq_zoo.json"
    if args.table_only:
        (OUT / "subl_gdrq_zoo.md").write_text(table(json.loads(path.read_text())))
        return
    names = args.models.split(",") if args.models else model_zoo.row_names()
    rows = []
    if args.merge and path.is_file():
        rows = json.loads(path.read_text())["rows"]  # a stored row stays until its re-run replaces it
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names:
        row = model_zoo.run_row_process(__file__, name, ["--samples", str(args.samples), "--calib", str(args.calib),
                                                         "--exact", str(args.exact)], args.timeout)
        rows = model_zoo.replace_row(rows, row)
        print(json.dumps({k: v for k, v in row.items() if k != "plans"}), flush=True)
        result = {"settings": {"samples": args.samples, "calib": args.calib, "exact": args.exact, "bits": "W4A8"},
                  "rows": rows}
        path.write_text(json.dumps(result, indent=1) + "\n")
        (OUT / "subl_gdrq_zoo.md").write_text(table(result))


if __name__ == "__main__":
    main()
