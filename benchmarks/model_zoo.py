"""Model-zoo coverage: does every public architecture compile integer-only, bit-exact, and how well?

Rows are the architectures of :mod:`gwq_tvm.models.zoo` (built from their
published layer tables, seeded weights, settled batch-norm statistics,
exported to ONNX here; nothing is downloaded) and the onnx wheel's old-opset
zoo graphs with seeded weights in place of their placeholders
(``light:<name>``).  Each row runs in its own process (a crash or a time-out
is that row's result, not the benchmark's) and measures, at W8A8:

* **imports / compiles**: gwq-tvm's per-layer and GWQ programs, or the one
  line gwq-tvm printed when it refused the model;
* **integer-only** (:func:`gwq_tvm.check_integer_only`) and the ops kept in float;
* **bit-exact**: the compiled module against the numpy reference on 4 inputs;
* **fidelity** against the fp32 ONNX model run by ONNX Runtime, on ``--samples``
  seeded N(0, 1) inputs (calibration uses a disjoint seeded set):
  top-1 agreement of output 0 (per pixel for dense-prediction outputs) and the
  logit SQNR over all outputs, pooled over the samples
  (:func:`gwq_tvm.fidelity.pooled_sqnr_db`: ``10 log10(sum signal**2 / sum noise**2)``,
  not a mean of per-sample values, which is ``inf`` once one sample is exact).
  A model whose output is a trailing Softmax is scored on its logits: every
  program (ours and ORT's) is built a second time from a copy without that
  Softmax (:func:`logits_model`).  The SQNR of the probabilities is kept too
  (``prob_sqnr_db``); it is a noisy figure, dominated by the few samples whose
  top two classes nearly tie (``dp = p1 p2 d(z1 - z2)``);
* the per-layer program with **symmetric activations** (``symmetric_activations``:
  no zero points), for comparison with the default asymmetric W8A8 plan;
* the same for **ONNX Runtime int8** (``quantize_static``, QDQ, per-channel,
  u8 activations / s8 weights, the same calibration inputs);
* **latency** at batch 1 (median of ``--runs`` interleaved rounds, one call of
  each program per round, ``--threads`` threads for every runtime) of gwq-tvm
  per-layer and GWQ, ORT int8 and ORT fp32;
* **compile time**: import + calibration + planning + realization + build.

Writes ``benchmarks/results/model_zoo/model_zoo.{json,md}``.  Usage::

    python benchmarks/model_zoo.py                      # every row
    python benchmarks/model_zoo.py --models mobilenet_v2,light:squeezenet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _timing import error_line, interleaved, median_ms

OUT = Path(__file__).resolve().parent / "results" / "model_zoo"
CACHE = Path(tempfile.gettempdir()) / "gwq_model_zoo"

#: rows whose outputs are not class scores: agreement is per-pixel (segmentation) or not meaningful (detection)
DENSE_AGREEMENT = {"unet_small": "per-pixel", "tiny_yolo": None}


def row_names() -> list[str]:
    from gwq_tvm.models import zoo

    return list(zoo.zoo()) + [f"light:{n}" for n in zoo.light_zoo_names()]


def onnx_path(name: str) -> Path:
    """The row's seeded ONNX file (exported once into the cache)."""
    import onnx

    from gwq_tvm.models import zoo

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name.replace(':', '_')}.onnx"
    if not path.is_file():
        tmp = path.with_suffix(".tmp.onnx")
        if name.startswith("light:"):
            onnx.save(zoo.light_zoo_model(name.split(":", 1)[1]), str(tmp))
        else:
            zoo.export_onnx(name, tmp)
        os.replace(tmp, path)
    return path


def logits_model(path: Path) -> Path | None:
    """A copy of ``path`` without its trailing Softmax (output = the Softmax's input), or ``None`` when the model
    does not end in one.  Softmax keeps its input's shape, so the new output takes the old output's type."""
    import onnx

    out = path.with_suffix(".logits.onnx")
    if out.is_file():
        return out
    model = onnx.load(str(path))
    g = model.graph
    if len(g.output) != 1:
        return None
    last = next((n for n in g.node if g.output[0].name in n.output), None)
    if last is None or last.op_type != "Softmax":
        return None
    if any(last.output[0] in n.input for n in g.node):
        return None
    value = onnx.ValueInfoProto()
    value.CopyFrom(g.output[0])
    value.name = last.input[0]
    g.node.remove(last)
    del g.output[:]
    g.output.append(value)
    tmp = path.with_suffix(".logits.tmp.onnx")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out


def input_shape_of(path: Path, name: str) -> tuple:
    import onnx

    if not name.startswith("light:"):
        from gwq_tvm.models import zoo

        return tuple(zoo.zoo()[name].input_shape)
    g = onnx.load(str(path)).graph
    inits = {i.name for i in g.initializer}
    inp = next(i for i in g.input if i.name not in inits)
    return tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)


def _outputs(value) -> list[np.ndarray]:
    """A VM result (tensor or tuple of tensors) as a list of numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [v for item in value for v in _outputs(item)]


def _flat(outs_per_sample: list[list[np.ndarray]]) -> np.ndarray:
    return np.stack([np.concatenate([o.reshape(-1) for o in outs]) for outs in outs_per_sample])


def _agreement(ref: list[list[np.ndarray]], test: list[list[np.ndarray]], kind) -> float | None:
    if kind is None and any(o.ndim > 2 for o in ref[0]):
        return None
    a = np.concatenate([r[0].argmax(axis=1).reshape(-1) for r in ref])
    b = np.concatenate([t[0].argmax(axis=1).reshape(-1) for t in test])
    return float((a == b).mean())


def run_row(name: str, samples: int, calib_n: int, runs: int, threads: int) -> dict:
    """Everything for one row (runs in a child process; see :func:`main`)."""
    import onnx
    import onnxruntime as ort
    import tvm
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from tvm import relax

    import gwq_tvm
    from gwq_tvm.config import QuantConfig
    from gwq_tvm.fidelity import pooled_sqnr_db

    row: dict = {"model": name, "load_average": os.getloadavg()[0]}  # latencies below are only idle figures when ~0
    path = onnx_path(name)
    shape = input_shape_of(path, name)
    row["input_shape"] = list(shape)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((calib_n, *shape[1:]), dtype=np.float32)
    xs = np.random.default_rng(1).standard_normal((samples, *shape[1:]), dtype=np.float32)
    agree_kind = DENSE_AGREEMENT.get(name, "top-1")

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    fp = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    in_name = fp.get_inputs()[0].name
    ref = [fp.run(None, {in_name: x[None]}) for x in xs]
    x1 = xs[:1]
    timers: dict = {("ort_fp32_ms",): lambda: fp.run(None, {in_name: x1})}  # row keys -> the call to time

    def score(outs):
        return {"agreement": _agreement(ref, outs, agree_kind),
                "sqnr_db": pooled_sqnr_db(_flat(ref), _flat(outs)), "sqnr": "pooled"}

    logits_path = logits_model(path)
    if logits_path is not None:
        fz = ort.InferenceSession(str(logits_path), so, providers=["CPUExecutionProvider"])
        ref_logits = [fz.run(None, {in_name: x[None]}) for x in xs]

    def score_logits(res: dict, outs_of) -> None:
        """With a Softmax head: the probabilities' SQNR moves to ``prob_sqnr_db``, ``sqnr_db`` is the logits'."""
        if logits_path is not None:
            res["prob_sqnr_db"] = res["sqnr_db"]
            res["sqnr_db"] = pooled_sqnr_db(_flat(ref_logits), _flat(outs_of(logits_path)))
            res["sqnr"] = "pooled logits"

    for mode in ("per_layer", "gwq", "per_layer_symmetric"):
        t0 = time.time()
        try:
            with __import__("warnings").catch_warnings(record=True):
                cfg = QuantConfig(mode="gwq" if mode == "gwq" else "per-layer",
                                  symmetric_activations=mode == "per_layer_symmetric")
                q = gwq_tvm.quantize(str(path), calib, cfg, input_shape=shape)
            ex = gwq_tvm.build(q)
        except Exception as err:  # noqa: BLE001 - the row records what gwq-tvm said
            row[mode] = {"error": f"{type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}"[:300]}
            continue
        vm = relax.VirtualMachine(ex, tvm.cpu())
        run = lambda x: _outputs(vm["main"](tvm.runtime.tensor(x)))  # noqa: E731
        outs = [run(x[None]) for x in xs]
        compile_s = time.time() - t0
        exact, ref_error = True, None
        try:
            for i in range(min(4, samples)):
                r = gwq_tvm.run_reference(q.mod, xs[i : i + 1])
                r = [np.asarray(v) for v in (r if isinstance(r, (list, tuple)) else [r])]
                exact &= len(r) == len(outs[i]) and all(np.array_equal(a, b) for a, b in zip(r, outs[i]))
        except Exception as err:  # noqa: BLE001 - a reference that cannot run this program is a finding
            exact, ref_error = False, f"{type(err).__name__}: {err}"[:300]
        res = {"compile_s": compile_s, "integer_only": bool(q.integer_only.ok),
               "float_ops": sorted(set(q.float_ops)), "bit_exact": bool(exact), "reference_error": ref_error,
               **score(outs)}
        timers[(mode, "latency_ms")] = lambda run=run: run(x1)
        res["zero_points"] = sum(1 for t in q.plan.tensors.values() if t.zero_point)

        def ours_on(model_path, cfg=cfg):
            with __import__("warnings").catch_warnings(record=True):
                vz = relax.VirtualMachine(gwq_tvm.build(gwq_tvm.quantize(str(model_path), calib, cfg, input_shape=shape)),
                                          tvm.cpu())
            return [_outputs(vz["main"](tvm.runtime.tensor(x[None]))) for x in xs]

        score_logits(res, ours_on)
        if mode == "gwq":
            res["shift_share"] = float(q.sfc["shift_share"])
            res["groups"] = len(q.plan.groups)
        row[mode] = res

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {in_name: x[None]}

    def ort_int8(model_path):
        model = onnx.load(str(model_path))
        if model.opset_import[0].version < 13:  # ORT's QDQ quantizer needs opset >= 10; upgrade old zoo files
            model = onnx.version_converter.convert_version(model, 13)
        with tempfile.TemporaryDirectory() as d:
            src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
            onnx.save(model, str(src))
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            return ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])

    t0 = time.time()
    try:
        s8 = ort_int8(path)
        outs = [s8.run(None, {in_name: x[None]}) for x in xs]
        row["ort_int8"] = {"quantize_s": time.time() - t0, **score(outs)}
        timers[("ort_int8", "latency_ms")] = lambda: s8.run(None, {in_name: x1})
        score_logits(row["ort_int8"], lambda p: [z.run(None, {in_name: x[None]}) for z in [ort_int8(p)] for x in xs])
    except Exception as err:  # noqa: BLE001
        row["ort_int8"] = {"error": error_line(err)}
    row["load_average_timing"] = os.getloadavg()[0]
    for key, ms in median_ms(interleaved(timers, runs)).items():
        (row[key[0]] if len(key) == 2 else row)[key[-1]] = ms
    row["latency"] = f"interleaved, {runs} rounds"
    return row


def _fmt(v, spec="{:.1f}"):
    return "—" if v is None else spec.format(v)


def _sqnr(res: dict) -> str:
    """The logit SQNR, and for a Softmax head the probabilities' after it: ``34.3 (p 18.7)``."""
    if res.get("prob_sqnr_db") is None:
        return _fmt(res.get("sqnr_db"))
    return f"{_fmt(res.get('sqnr_db'))} (p {_fmt(res['prob_sqnr_db'])})"


def table(rows: list[dict]) -> str:
    head = ("| model | per-layer | int-only | float ops | bit-exact | agree % | SQNR dB | sym SQNR dB | GWQ agree % | GWQ SQNR dB "
            "| shift % | ORT int8 agree % | ORT SQNR dB | ms pl / gwq / ORT8 / ORT32 | compile s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        pl, g, o = r.get("per_layer", {}), r.get("gwq", {}), r.get("ort_int8", {})
        if "error" in r or "error" in pl:
            err = r.get("error") or pl.get("error")
            lines.append(f"| {r['model']} | **fails**: {err} |" + " |" * 14)
            continue
        lat = " / ".join(_fmt(v, "{:.2f}") for v in (pl.get("latency_ms"), g.get("latency_ms"), o.get("latency_ms"),
                                                    r.get("ort_fp32_ms")))
        load = r.get("load_average_timing", r.get("load_average", 0))
        if load > 1.0:  # other work was running: the latencies are not idle figures
            lat += f" (load {load:.1f})"
        if "latency" not in r:  # timed one program after the other, before interleaved rounds
            lat += " ‡"
        pct = lambda v: _fmt(None if v is None else 100 * v)  # noqa: E731
        sym = r.get("per_layer_symmetric", {})
        old = "" if pl.get("sqnr") in ("pooled", "pooled logits") else " †"
        lines.append(
            f"| {r['model']} | ok | {'yes' if pl['integer_only'] else 'no'} | {', '.join(pl['float_ops']) or '—'} "
            f"| {'yes' if pl['bit_exact'] and g.get('bit_exact', False) else 'NO'} | {pct(pl['agreement'])} "
            f"| {_sqnr(pl)}{old} | {_sqnr(sym)} | {pct(g.get('agreement'))} | {_sqnr(g)}{old} "
            f"| {pct(g.get('shift_share'))} "
            f"| {pct(o.get('agreement')) if 'error' not in o else 'fails'} | {_sqnr(o)}{old} | {lat} "
            f"| {_fmt(pl['compile_s'], '{:.0f}')} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated rows (default: all; with --merge, those not yet run)")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per row")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of the existing model_zoo.json in --out that this run does not re-run")
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--row-json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.row:
        row = run_row(args.row, args.samples, args.calib, args.runs, args.threads)
        args.row_json.write_text(json.dumps(row))
        return
    names = args.models.split(",") if args.models else row_names()
    if args.merge and not args.models and (args.out / "model_zoo.json").is_file():
        done = {r["model"] for r in json.loads((args.out / "model_zoo.json").read_text())["rows"]}
        names = [n for n in names if n not in done]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.merge and (args.out / "model_zoo.json").is_file():
        rows = json.loads((args.out / "model_zoo.json").read_text())["rows"]  # a stored row stays until its re-run replaces it
    for name in names:
        env = dict(os.environ, TVM_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        row = run_row_process(__file__, name, ["--samples", str(args.samples), "--calib", str(args.calib),
                                               "--runs", str(args.runs), "--threads", str(args.threads)],
                              args.timeout, env=env)
        rows = replace_row(rows, row)
        print(json.dumps(row), flush=True)
        result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                              "cpu_flags": _cpu_flags()},
                  "settings": {"samples": args.samples, "calib": args.calib, "runs": args.runs, "bits": "W8A8"},
                  "rows": rows}
        (args.out / "model_zoo.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "model_zoo.md").write_text(_report(result))


def replace_row(rows: list[dict], row: dict) -> list[dict]:
    """``rows`` with ``row`` in place of the stored row of its model (appended when there is none), so an
    interrupted ``--merge`` run keeps every row it has not re-run yet."""
    if any(r["model"] == row["model"] for r in rows):
        return [row if r["model"] == row["model"] else r for r in rows]
    return [*rows, row]


def run_row_process(script: str, name: str, extra: list, timeout: float, env=None) -> dict:
    """Row ``name`` of ``script`` (``--row NAME --row-json F`` + ``extra``) in a child process: its JSON row, or
    ``{"model", "error"}`` when the child died or ran past ``timeout`` seconds; with its ``wall_s``."""
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "row.json"
        cmd = [sys.executable, script, "--row", name, "--row-json", str(out), *extra]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            if out.is_file():
                row = json.loads(out.read_text())
            else:
                tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                row = {"model": name, "error": f"row process died (exit {proc.returncode}): {tail[:300]}"}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timed out after {timeout:.0f} s"}
    row["wall_s"] = time.time() - t0
    return row


def _cpu_flags() -> list[str]:
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"} & set(flags))


def _report(result: dict) -> str:
    rows = result["rows"]
    ok = [r for r in rows if "error" not in r and "error" not in r.get("per_layer", {"error": 1})]
    s = result["settings"]
    return (f"# Model-zoo coverage ({s['bits']}, {s['samples']} seeded inputs, {s['calib']} calibration inputs)\n\n"
            f"Machine: {result['machine']['cpu']}, flags {', '.join(result['machine']['cpu_flags'])}, "
            f"{result['machine']['threads']} thread(s).  Written by `benchmarks/model_zoo.py`.\n\n"
            f"{len(ok)}/{len(rows)} rows compile; "
            f"{sum(r['per_layer']['integer_only'] for r in ok)} integer-only; "
            f"{sum(r['per_layer']['bit_exact'] and r.get('gwq', {}).get('bit_exact', False) for r in ok)} bit-exact "
            f"(per-layer and GWQ).  Agreement and SQNR are against the fp32 ONNX model on ONNX Runtime; ORT int8 is "
            f"`quantize_static` QDQ per-channel u8/s8.  W8A8 plans give asymmetric tensors (swish outputs) uint8 with a "
            f"zero point; *sym SQNR* is the per-layer program with `symmetric_activations`.  SQNR is pooled over the "
            f"samples (10 log10 of summed signal over summed noise power); † marks rows last run before that change "
            f"(mean of per-sample values) and before zero points.  Models ending in Softmax are scored on their "
            f"logits (every program built again from a copy without the Softmax); *(p x)* is the SQNR of the "
            f"probabilities, a noisy figure led by the few samples whose top two classes nearly tie.  Rows without "
            f"*(p x)* on a Softmax model were run before logits were scored.  Latencies: median of interleaved "
            f"rounds (one call of each program per round); ‡ marks rows timed one program after the other, "
            f"before that change, and *(load x)* the 1-minute load average while a row was timed, when other work "
            f"ran (above 1).\n\n" + table(rows))


if __name__ == "__main__":
    main()
