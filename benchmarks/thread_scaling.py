"""2-thread speed-up of our compiled programs alone, one engine per process (issue 22's threads target).

``kernels_bench.py`` times our programs interleaved with ONNX Runtime and
PyTorch in the same worker process, which is the right protocol for ratios
against those engines but lets their thread pools and our pauses share the
process with ours.  A deployment runs one engine per process, so this tool
measures that case too: each model's per-layer (``int8``) and GWQ programs
are built once (the plans cached by ``kernels_bench.py`` under
``benchmarks/.cache/<model>/``) and exported; then ``--processes`` fresh
processes per thread count, alternating 1 and 2 threads, each load one
``.so`` and time ``main`` on the cached input with ``time_evaluator``
(``--number`` calls per repeat, median of ``--repeat`` repeats).  The
speed-up of pair ``i`` is ``t1[i] / t2[i]``; the table gives every pair and
the medians, and the host's steal share during each 2-thread process.

Usage::

    PYTHONPATH=$PWD python benchmarks/thread_scaling.py --models resnet18 mobilenet_v2

Writes ``benchmarks/results/thread_scaling/thread_scaling.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CACHE = HERE / ".cache"
OUT = HERE / "results" / "thread_scaling"
PLANS = {"int8": "int8.plan.json", "gwq": "gwq.plan.json"}


def build(model: str, plan: str, out: Path) -> None:
    """Quantize ``model`` with its cached ``plan`` and export the program built for this CPU to ``out``."""
    import gwq_tvm
    from gwq_tvm.plan.quantplan import QuantPlan

    d = CACHE / model
    q = gwq_tvm.quantize(str(d / "model.onnx"), plan=QuantPlan.load(d / PLANS[plan]))
    gwq_tvm.build(q).export_library(str(out))


def time_module(so: str, model: str, number: int, repeat: int) -> float:
    """Median ms of ``main`` of ``so`` on ``model``'s cached input, in this process (its ``TVM_NUM_THREADS``)."""
    import numpy as np
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(so), tvm.cpu())
    x = tvm.runtime.tensor(np.ascontiguousarray(np.load(CACHE / model / "input.npy")[:1].astype("float32")))
    f = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
    return statistics.median(f(x).results) * 1e3


def _worker(so: str, model: str, threads: int, number: int, repeat: int) -> dict:
    """One fresh process at ``threads`` threads; its median ms and the host's steal share meanwhile."""
    from _timing import cpu_jiffies, steal_share

    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    before = cpu_jiffies()
    out = subprocess.run([sys.executable, __file__, "--worker", so, model, str(number), str(repeat)], env=env,
                         capture_output=True, text=True, check=True)
    return {"ms": float(out.stdout.strip().splitlines()[-1]), "steal": steal_share(before, cpu_jiffies())}


def measure(models, processes: int, number: int, repeat: int, work: Path) -> dict:
    results = {}
    for model in models:
        for plan in PLANS:
            so = work / f"{model}_{plan}.so"
            build(model, plan, so)
            runs = {1: [], 2: []}
            for _ in range(processes):
                for threads in (1, 2):
                    runs[threads].append(_worker(str(so), model, threads, number, repeat))
            pairs = [a["ms"] / b["ms"] for a, b in zip(runs[1], runs[2])]
            results[f"{model} {plan}"] = {
                "ms_1_thread": [r["ms"] for r in runs[1]], "ms_2_threads": [r["ms"] for r in runs[2]],
                "steal_2_threads": [r["steal"] for r in runs[2]], "pair_speedups": pairs,
                "median_1_thread": statistics.median(r["ms"] for r in runs[1]),
                "median_2_threads": statistics.median(r["ms"] for r in runs[2]),
                "median_pair_speedup": statistics.median(pairs)}
            r = results[f"{model} {plan}"]
            print(f"{model} {plan}: {r['median_1_thread']:.3f} -> {r['median_2_threads']:.3f} ms, pairs "
                  + ", ".join(f"{p:.2f}x" for p in pairs), flush=True)
    return results


def write(results: dict, meta: dict) -> None:
    from gwq_tvm.atomic import write_text

    OUT.mkdir(parents=True, exist_ok=True)
    write_text(OUT / "thread_scaling.json", json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    lines = ["# 2-thread speed-up, one engine per process", "",
             f"Machine: {meta['machine']}; {meta['processes']} fresh processes per thread count, alternating 1 and 2 "
             f"threads; each times `main` of the exported module with `time_evaluator` ({meta['number']} calls per "
             f"repeat, median of {meta['repeat']} repeats), batch 1, default schedules. Speed-up per pair = "
             "1-thread ms / 2-thread ms of consecutive processes. `kernels_bench.py` measures the same programs "
             "interleaved with ONNX Runtime and PyTorch in one process (its table is the comparison with them).", "",
             "| model | plan | 1 thread ms (median) | 2 threads ms (median) | speed-up per pair | median | steal (2 threads) |",
             "|---|---|---:|---:|---|---:|---|"]
    for key, r in results.items():
        model, plan = key.split()
        steal = ", ".join("-" if s is None else f"{s:.1%}" for s in r["steal_2_threads"])
        lines.append(f"| {model} | {plan} | {r['median_1_thread']:.3f} | {r['median_2_threads']:.3f} | "
                     + ", ".join(f"{p:.2f}x" for p in r["pair_speedups"])
                     + f" | **{r['median_pair_speedup']:.2f}x** | {steal} |")
    notes = OUT / "notes.md"
    if notes.exists():
        lines += ["", notes.read_text()]
    write_text(OUT / "thread_scaling.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(time_module(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18"], help="models cached by kernels_bench.py")
    ap.add_argument("--processes", type=int, default=5, help="processes per thread count")
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args(argv)
    missing = [m for m in args.models if not all((CACHE / m / f).exists() for f in ("model.onnx", "input.npy", *PLANS.values()))]
    if missing:
        sys.exit(f"thread_scaling: no kernels_bench cache for {', '.join(missing)}: run kernels_bench.py --models ... first")
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(args.models, args.processes, args.number, args.repeat, Path(tmp))
    from gwq_tvm.runtime import host_target

    mcpu = str(host_target().attrs.get("mcpu", ""))
    meta = {"machine": f"{platform.machine()} {mcpu}, {os.cpu_count()} CPUs", "processes": args.processes,
            "number": args.number, "repeat": args.repeat}
    write(results, meta)


if __name__ == "__main__":
    main()
