"""Per-layer profile of a compiled gwq-tvm int8 program next to ONNX Runtime's (issue 22).

TVM 0.27's Relax VM has no profiler (``VirtualMachine(..., profile=True)`` is
gone), so this tool times the kernels itself: it builds the module exactly as
:func:`gwq_tvm.schedules.build.compile_packed` does up to the scheduled TIR
(packed layout, fusion, default schedules), compiles all its PrimFuncs into one
TIR library, and times every ``call_tir`` of ``main`` with its real argument
shapes at batch 1 (the constants the program passes, random tensors for
activations) with ``time_evaluator``.  The sum over kernels is printed next to
the end-to-end VM latency of the same program; the difference is the VM's own
cost (allocation, argument marshalling, shape checks).

ONNX Runtime's side is its own per-node profile (``SessionOptions.enable_profiling``)
of the QDQ int8 model (``model_int8.onnx``), averaged over the timed runs.

Both sides are grouped by layer kind: ``conv kxk`` (full convs with spatial
output), ``conv 1x1``, ``dense/1x1@1x1`` (1x1 convs on a 1x1 map: squeeze-excitation
FCs and classifier), ``depthwise kxk sS``, ``pool``, ``elementwise/requantize``,
``lookup`` (int8 table lookups: hardswish/hardsigmoid), ``layout`` (NCHW <-> NCHW16c
for us; Transpose/reorder and (De)QuantizeLinear for ORT), ``other``.

Usage::

    PYTHONPATH=$PWD python benchmarks/layer_profile.py --models mobilenet_v2 mobilenet_v3_small

Writes ``benchmarks/results/layer_profile/<model>_<plan>_t<threads>.{json,md}`` (``--tag`` adds a suffix).
The models' caches come from ``kernels_bench.py`` (``benchmarks/.cache/<model>/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "layer_profile"
CACHE = HERE / ".cache"

KINDS = ("conv kxk", "conv 1x1", "dense/1x1@1x1", "depthwise 3x3 s1", "depthwise 3x3 s2", "depthwise 5x5 s1",
         "depthwise 5x5 s2", "pool", "elementwise/requantize", "lookup", "layout", "other")


# --- our side -----------------------------------------------------------------
def scheduled_module(onnx_path: Path, plan_path: Path, target):
    """The realized program of ``onnx_path`` under ``plan_path``, packed, fused and scheduled (as compile_packed)."""
    import gwq_tvm
    from gwq_tvm.plan.quantplan import QuantPlan
    from gwq_tvm.schedules.build import packed_fused_module
    from gwq_tvm.schedules.default import ScheduleIntegerKernels
    from gwq_tvm.schedules.spec import X86_VNNI, kernel_spec

    q = gwq_tvm.quantize(str(onnx_path), plan=QuantPlan.load(plan_path))
    spec = kernel_spec(target) or X86_VNNI
    if spec.intrinsic is not None:
        spec.intrinsic()
    fused = packed_fused_module(q.mod, target, spec)
    with target:
        return q, ScheduleIntegerKernels(spec)(fused)


def _shape(ty, batch: int) -> tuple:
    return tuple(batch if not hasattr(d, "value") else int(d.value) for d in ty.shape.values)


def _kernel_kind(name: str, in_shapes: list, out_shape: tuple) -> str:
    """Layer kind of one fused kernel from its name and argument shapes."""
    if "gwq_dwconv2d" in name:
        _, kh, kw, _ = in_shapes[1]
        stride = in_shapes[0][2] // out_shape[2] if out_shape[2] else 1
        return f"depthwise {kh}x{kw} s{min(stride, 2)}"
    if "gwq_conv2d" in name:
        kh, kw = in_shapes[1][2], in_shapes[1][3]
        if (kh, kw) != (1, 1):
            return "conv kxk"
        return "dense/1x1@1x1" if out_shape[2] * out_shape[3] == 1 else "conv 1x1"
    if name.startswith(("take", "gwq_lookup")) or "_take" in name:
        return "lookup"
    if "sum" in name or "pool" in name:
        return "pool"
    if "conv" in name or "matmul" in name or "dense" in name:
        return "other"
    if name.startswith("gwq_pack") or name.startswith("gwq_unpack") or name in ("reshape", "squeeze", "expand_dims"):
        return "layout"
    return "elementwise/requantize"


def kernel_calls(mod, batch: int = 1) -> list:
    """``[(kernel name, [(shape, dtype, constant or None)...], [(out shape, dtype)...])]`` for every call_tir of main."""
    import tvm
    from tvm import relax

    from gwq_tvm.ir import const_value

    calls = []
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            v = b.value
            if not (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.call_tir"):
                continue
            args = []
            for a in v.args[1].fields:
                const = const_value(a)
                args.append((_shape(a.ty, batch), str(a.ty.dtype), const))
            oty = b.var.ty
            outs = [(_shape(t, batch), str(t.dtype)) for t in (oty.fields if isinstance(oty, relax.TupleType) else [oty])]
            calls.append((v.args[0].name_hint, args, outs))
    return calls


def _random(shape, dtype, rng):
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -128), min(info.max, 255)
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


def _time_ms(f, name: str, args, dev, min_ms: float = 30.0, repeat: int = 5) -> float:
    """Median ms of ``repeat`` rounds of ``f[name](*args)``, each round at least ``min_ms`` long."""
    te = f.time_evaluator(name, dev, number=1, repeat=1)
    first = te(*args).mean
    number = max(1, int(min_ms / 1e3 / max(first, 1e-7)))
    te = f.time_evaluator(name, dev, number=number, repeat=repeat)
    return 1e3 * statistics.median(te(*args).results)


def profile_ours(mod, target, batch: int = 1) -> list:
    """Time each call_tir of ``mod`` (scheduled) at ``batch``: list of per-call rows."""
    import tvm

    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    calls = kernel_calls(mod, batch)
    names = sorted({name for name, _, _ in calls})
    lib = tvm.compile(tvm.IRModule({n: mod[n].with_attr("global_symbol", n) for n in names}), target).jit()
    cache: dict = {}
    rows = []
    for name, args, outs in calls:
        key = (name, tuple((s, d) for s, d, _ in args))
        if key not in cache:
            targs = [tvm.runtime.tensor(c if c is not None else _random(s, d, rng), dev) for s, d, c in args]
            if name.startswith("take"):  # indices within the table
                targs[1] = tvm.runtime.tensor(rng.integers(0, args[0][0][0], size=args[1][0]).astype(args[1][1]), dev)
            touts = [tvm.runtime.empty(s, d, dev) for s, d in outs]
            cache[key] = _time_ms(lib, name, targs + touts, dev)
        kind = _kernel_kind(name, [s for s, _, _ in args], outs[0][0])
        macs = _macs(name, [s for s, _, _ in args], outs[0][0])
        rows.append({"kernel": name, "kind": kind, "ms": cache[key], "in": [list(s) for s, _, _ in args[:1]],
                     "out": list(outs[0][0]), "mmac": macs / 1e6})
    return rows


def _macs(name: str, shapes: list, out: tuple) -> float:
    if "gwq_dwconv2d" in name:
        return float(np.prod(out)) * shapes[1][1] * shapes[1][2]
    if "gwq_conv2d" in name:
        occ, icc, kh, kw, rb, oc, k4 = shapes[1]
        return float(np.prod(out)) * icc * kh * kw * rb * k4
    return 0.0


def end_to_end_ms(q, x: np.ndarray, runs: int = 50) -> float:
    import tvm
    from tvm import relax

    import gwq_tvm

    vm = relax.VirtualMachine(gwq_tvm.build(q), tvm.cpu())
    arg = tvm.runtime.tensor(np.ascontiguousarray(x))
    for _ in range(5):
        vm["main"](arg)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        vm["main"](arg)
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


# --- ONNX Runtime side ----------------------------------------------------------
def _conv_geometry(onnx_path: Path) -> dict:
    """Conv node name -> (kh, kw, groups, stride, out channels) from the float model (ORT prepacks the weights,
    so its profile has no weight shapes; its node names keep the model's, with a ``_token_N`` suffix)."""
    import onnx

    m = onnx.load(str(onnx_path))
    inits = {i.name: tuple(i.dims) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        w = inits.get(n.input[1])
        kh, kw = a.get("kernel_shape", w[2:] if w else (0, 0))
        out[n.name] = (int(kh), int(kw), int(a.get("group", 1)), int(a.get("strides", [1, 1])[0]), w[0] if w else 0)
    return out


def _ort_kind(op: str, node: str, out_shapes: list, geometry: dict) -> str:
    """Layer kind of one ORT node from its op type, its model node's conv geometry and its output shape."""
    if op in ("QLinearConv", "Conv", "ConvInteger", "NhwcFusedConv", "FusedConv"):
        g = geometry.get(re.sub(r"_token_\d+$", "", node))
        if g is None:
            return "other"
        kh, kw, groups, stride, cout = g
        if groups > 1 and groups == cout:
            return f"depthwise {kh}x{kw} s{min(stride, 2)}"
        if (kh, kw) != (1, 1):
            return "conv kxk"
        y = out_shapes[0] if out_shapes else []
        spatial = int(np.prod([d for d in y[1:] if d != cout])) if y else 0
        return "dense/1x1@1x1" if spatial == 1 else "conv 1x1"
    if op in ("QLinearMatMul", "MatMul", "MatMulInteger", "Gemm", "QGemm", "DynamicQuantizeMatMul"):
        return "dense/1x1@1x1"
    if "Pool" in op or op in ("ReduceMean",):
        return "pool"
    if op in ("QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput", "Reshape",
              "Flatten", "Squeeze", "Unsqueeze"):
        return "layout"
    if op in ("QLinearLookup",):
        return "lookup"
    if op in ("Add", "Mul", "QLinearAdd", "QLinearMul", "Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid",
              "QLinearSigmoid", "QLinearLeakyRelu", "Sum", "Div", "Sub"):
        return "elementwise/requantize"
    return "other"


def profile_ort(model: Path, float_model: Path, x: np.ndarray, threads: int = 1, runs: int = 50) -> tuple[list, float]:
    """ORT per-node rows (mean ms per run) and the end-to-end median ms of ``model``."""
    import onnx
    import onnxruntime as ort

    name = onnx.load(str(model)).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        feed = {name: x}
        plain = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        for _ in range(5):
            plain.run(None, feed)
        ts = []
        for _ in range(runs):  # end to end without the profiler's own cost
            t0 = time.perf_counter()
            plain.run(None, feed)
            ts.append(time.perf_counter() - t0)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        s = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 5):
            s.run(None, feed)
        events = json.loads(Path(s.end_profiling()).read_text())
    total_runs = runs + 5
    agg: dict = defaultdict(lambda: {"us": 0.0, "count": 0})
    meta = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        a = e.get("args", {})
        agg[node]["us"] += e["dur"]
        agg[node]["count"] += 1
        meta[node] = (a.get("op_name", "?"), [list(d.values())[0] for d in a.get("input_type_shape", [])],
                      [list(d.values())[0] for d in a.get("output_type_shape", [])])
    geometry = _conv_geometry(float_model)
    rows = []
    for node, v in agg.items():
        op, ins, outs = meta[node]
        rows.append({"node": node, "op": op, "kind": _ort_kind(op, node, outs, geometry), "ms": v["us"] / 1e3 / total_runs,
                     "in": ins[:1], "out": outs[:1]})
    return rows, 1e3 * statistics.median(ts)


# --- report ---------------------------------------------------------------------
def by_kind(rows: list) -> dict:
    out = {k: {"ms": 0.0, "count": 0} for k in KINDS}
    for r in rows:
        d = out.setdefault(r["kind"], {"ms": 0.0, "count": 0})
        d["ms"] += r["ms"]
        d["count"] += 1
    return {k: v for k, v in out.items() if v["count"]}


def write(model: str, result: dict, tag: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"{model}_{result['plan']}_t{result['threads']}{'_' + tag if tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    ours, ort_ = result["ours_by_kind"], result["ort_by_kind"]
    lines = [f"# Per-layer profile: {model} ({result['plan']}, batch 1, {result['threads']} thread)", "",
             f"Machine: {result['machine']}, load average {result['load']:.1f} at start (timings are pessimistic "
             "under load; ratios within one run hold).", "",
             f"End to end: gwq-tvm {result['ours_e2e_ms']:.2f} ms (sum of kernels {result['ours_sum_ms']:.2f} ms, "
             f"VM overhead {result['ours_e2e_ms'] - result['ours_sum_ms']:.2f} ms), "
             f"ORT int8 {result['ort_e2e_ms']:.2f} ms (sum of nodes {result['ort_sum_ms']:.2f} ms).", "",
             "| layer kind | gwq-tvm ms | kernels | ORT int8 ms | nodes | ours / ORT |", "|---|---:|---:|---:|---:|---:|"]
    for k in list(dict.fromkeys([*KINDS, *ours, *ort_])):
        a, b = ours.get(k), ort_.get(k)
        if not a and not b:
            continue
        am, bm = (a or {}).get("ms", 0.0), (b or {}).get("ms", 0.0)
        ratio = f"{am / bm:.2f}" if bm > 1e-4 and am else "-"
        lines.append(f"| {k} | {am:.3f} | {(a or {}).get('count', 0)} | {bm:.3f} | {(b or {}).get('count', 0)} | {ratio} |")
    lines += ["", "Top 15 gwq-tvm kernels:", "", "| kernel | kind | input | output | MMAC | ms | GMAC/s |",
              "|---|---|---|---|---:|---:|---:|"]
    for r in sorted(result["ours"], key=lambda r: -r["ms"])[:15]:
        gmacs = f"{r['mmac'] / r['ms']:.1f}" if r["mmac"] else "-"
        lines.append(f"| {r['kernel'][:60]} | {r['kind']} | {r['in'][0] if r['in'] else ''} | {r['out']} | "
                     f"{r['mmac']:.1f} | {r['ms']:.3f} | {gmacs} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem


def run(model: str, plan: str, threads: int, tag: str) -> dict:
    from gwq_tvm.runtime import host_target

    d = CACHE / model
    x = np.load(d / "input.npy")
    target = host_target()
    load = os.getloadavg()[0]
    q, mod = scheduled_module(d / "model.onnx", d / f"{plan}.plan.json", target)
    ours = profile_ours(mod, target)
    e2e = end_to_end_ms(q, x)
    ort_rows, ort_e2e = profile_ort(d / "model_int8.onnx", d / "model.onnx", x, threads)
    return {"model": model, "plan": plan, "threads": threads, "load": load,
            "machine": f"{platform.machine()} {target.attrs.get('mcpu', '')}",
            "ours_e2e_ms": e2e, "ours_sum_ms": sum(r["ms"] for r in ours), "ort_e2e_ms": ort_e2e,
            "ort_sum_ms": sum(r["ms"] for r in ort_rows), "ours_by_kind": by_kind(ours), "ort_by_kind": by_kind(ort_rows),
            "ours": ours, "ort": ort_rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "mobilenet_v3_small"])
    ap.add_argument("--plan", default="int8", choices=["int8", "gwq"], help="which cached plan (per-layer int8 or GWQ)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TVM_NUM_THREADS", "1")))
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    for model in args.models:
        if not (CACHE / model / "model_int8.onnx").exists():
            print(f"layer_profile: no cache for {model}; run benchmarks/kernels_bench.py --models {model} first")
            return 1
        result = run(model, args.plan, args.threads, args.tag)
        stem = write(model, result, args.tag)
        print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
