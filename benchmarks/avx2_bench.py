"""The x86-avx2 kernel family against ONNX Runtime int8 (QDQ) and fp32, and gwq-tvm's scheduled fp32.

Batch 1, 1 and 2 threads, each thread count in ``--processes`` fresh worker
processes (TVM's pool size is fixed at start-up), 1- and 2-thread workers
alternating.  Within a worker the columns of a model are timed interleaved
round by round (:func:`_timing.interleaved`, as :mod:`kernels_bench` does:
every engine sees the same load and the same hypervisor steal, recorded per
model); a cell is the median over the workers, every worker's value kept in
the JSON.  Models and the ORT int8 model are prepared as :mod:`kernels_bench`
prepares them (cached in ``benchmarks/.cache``).

Columns:

* ``gwq-tvm int8 avx2``: per-layer W8A8 plan, ``gwq_tvm.build`` with the
  ``x86-avx2`` family (this CPU's target when it is an AVX2-only CPU, else
  the ``x86-avx2`` preset, forcing it);
* ``gwq-tvm GWQ avx2``: the GWQ plan, same kernels;
* ``gwq-tvm W7A8 avx2``: the per-layer plan at 7 weight bits (``--weight-bits 7``,
  what ORT calls ``reduce_range``): every conv's weights lie in [-64, 64], so
  the family runs them on its exact ``vpmaddubsw`` step (:mod:`gwq_tvm.schedules.avx2`)
  instead of widening to int16; its accuracy cost is measured on the bundled
  model (``bundled_w7_accuracy`` in the JSON);
* ``gwq-tvm fp32``: :func:`gwq_tvm.schedules.float.compile_float` (what
  calibration and the sensitivity analysis run);
* ``ORT fp32``, ``ORT int8`` (QDQ, per-channel, u8 activations x s8 weights).

Peaks (one core): the ``vpmaddwd`` and ``vpmaddubsw`` intrinsics of the family as TVM builds them
(:func:`kernels_bench.intrinsic_peak_gmacs`), and the raw instruction
sequences of ``avx2_peak.c`` (``vpmaddwd``; ``vpmaddubsw + vpmaddwd``, the
saturating u8 x s8 sequence; fp32 FMA).  ORT picks its int8 kernels from
the CPU it runs on (:func:`ort_int8_isa`): on an AVX2-only CPU the
``vpmaddubsw`` sequence, so the ratio overstates the cost of exactness only by
the difference of those two peaks; on a CPU with AVX-512 VNNI or AVX-VNNI ORT
uses ``vpdpbusd`` while our kernels are forced onto AVX2, and the ratio
overstates the handicap the family would have on an AVX2-only CPU.

Writes ``benchmarks/results/avx2_bench/avx2_bench.{json,md}``.

Usage::

    python benchmarks/avx2_bench.py [--models bundled resnet18] [--threads 1 2] [--runs 50] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "avx2_bench"
sys.path.insert(0, str(HERE))

import kernels_bench as KB  # noqa: E402

COLUMNS = ["gwq-tvm int8 avx2", "gwq-tvm GWQ avx2", "gwq-tvm W7A8 avx2", "gwq-tvm fp32", "ORT fp32", "ORT int8"]

W7_PLAN = "w7.plan.json"
"""The per-layer plan at 7 weight bits, next to :func:`kernels_bench._paths`' plans."""


def prepare_w7(name: str) -> Path:
    """Quantize ``name`` per layer at 7 weight bits (from the cached calibration images) once; return the plan path."""
    import gwq_tvm
    from gwq_tvm.config import QuantConfig

    path = KB._paths(name)["plan"].with_name(W7_PLAN)
    if not path.exists():
        onnx_path, calib, _ = KB._model_data(name)
        gwq_tvm.quantize(str(onnx_path), calib, QuantConfig(weight_bits=7)).plan.save(path)
    return path


def bundled_w7_accuracy() -> dict:
    """Test accuracy (10k Fashion-MNIST images) of the bundled model's compiled AVX2 programs at W8A8 and W7A8."""
    import tvm
    from tvm import relax

    import gwq_tvm
    from gwq_tvm.api import accuracy, predict
    from gwq_tvm.config import QuantConfig
    from gwq_tvm.data import bundled_model, fashion_mnist

    calib, _ = fashion_mnist("calib")
    test_x, test_y = fashion_mnist("test")
    out = {}
    for label, bits in (("W8A8", 8), ("W7A8", 7)):
        q = gwq_tvm.quantize(str(bundled_model()), calib[:512], QuantConfig(weight_bits=bits))
        vm = relax.VirtualMachine(gwq_tvm.build(q, avx2_target()), tvm.cpu())
        out[label] = accuracy(predict(vm, test_x, q.float_model.input_shape), test_y)
    return out


def avx2_target():
    """This CPU when its family is x86-avx2, else the ``x86-avx2`` preset (forcing the family)."""
    from gwq_tvm.runtime import host_target
    from gwq_tvm.schedules.spec import X86_AVX2, kernel_spec
    from gwq_tvm.schedules.targets import resolve_target

    host = host_target()
    return host if kernel_spec(host) is X86_AVX2 else resolve_target("x86-avx2")


def _candidates(name: str, x, threads: int) -> dict:
    import gwq_tvm
    from gwq_tvm.plan.quantplan import QuantPlan
    from gwq_tvm.schedules.float import compile_float

    p = KB._paths(name)
    target = avx2_target()
    q = lambda key: gwq_tvm.quantize(str(p["onnx"]), plan=QuantPlan.load(p[key]))  # noqa: E731
    return {
        "gwq-tvm int8 avx2": lambda: KB._tvm_runner(gwq_tvm.build(q("plan"), target), x),
        "gwq-tvm GWQ avx2": lambda: KB._tvm_runner(gwq_tvm.build(q("plan_gwq"), target), x),
        "gwq-tvm W7A8 avx2": lambda: KB._tvm_runner(gwq_tvm.build(gwq_tvm.quantize(
            str(p["onnx"]), plan=QuantPlan.load(p["plan"].with_name(W7_PLAN))), target), x),
        "gwq-tvm fp32": lambda: KB._tvm_runner(compile_float(gwq_tvm.load_model(str(p["onnx"])).mod), x),
        **KB._ort_candidates(name, x, threads),
    }


def worker(threads: int, runs: int, models, out_path: Path) -> None:
    """Measure every column of ``models`` with ``threads`` threads, the columns interleaved round by round;
    write ``model -> column -> ms`` (``None`` for a failed column) and each model's load and steal to ``out_path``."""
    results = {"_load": {}, "_steal": {}}
    for name in models:
        _, _, x = KB._model_data(name)
        timed = KB.time_engines(_candidates(name, x, threads), runs, f"threads={threads} {name:9s}")
        results[name] = timed["row"]
        results["_load"][name], results["_steal"][name] = timed["load"], timed["steal"]
    out_path.write_text(json.dumps(results))


def ort_int8_isa(cpuinfo: str) -> str:
    """The instruction ONNX Runtime's int8 GEMM dispatches to on a CPU with these ``/proc/cpuinfo`` flags.

    MLAS picks the widest u8 x s8 kernel the CPU has: AVX-512 VNNI, then AVX-VNNI
    (both ``vpdpbusd``), then AVX-512BW or AVX2 (``vpmaddubsw`` + ``vpmaddwd``).
    """
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
    flags = set(line.split(":", 1)[-1].split())
    if "avx512_vnni" in flags:
        return "avx512-vnni"
    if "avx_vnni" in flags:
        return "avx-vnni"
    if "avx512bw" in flags:
        return "avx512bw"
    return "avx2"


def sequence_peaks() -> dict:
    """GMAC/s of the raw instruction sequences of ``avx2_peak.c`` on one core (empty without a C compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return {}
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "avx2_peak"
        subprocess.run([cc, "-O2", "-mavx2", "-mfma", str(HERE / "avx2_peak.c"), "-o", str(exe)], check=True)
        pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
        lines = subprocess.run(pin + [str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    return {ln.split()[0]: float(ln.split()[1]) for ln in lines if ln.strip()}


def intrinsic_peak(narrow: bool = False) -> float:
    """Single-core GMAC/s of the family's ``vpmaddwd`` intrinsic (``narrow``: its ``vpmaddubsw`` step) as TVM
    builds it (a 1-thread subprocess)."""
    from gwq_tvm.schedules.avx2 import OPERAND_DTYPE

    env = dict(os.environ, TVM_NUM_THREADS="1")
    call = ("register_avx2_narrow_intrinsic as r; print(KB.intrinsic_peak_gmacs(r(), 'uint8', 'int8', 4, "
            if narrow else "register_avx2_intrinsic as r; print(KB.intrinsic_peak_gmacs(r(), %r, %r, 2, "
            % (OPERAND_DTYPE, OPERAND_DTYPE))
    code = ("import sys; sys.path.insert(0, %r); import kernels_bench as KB, avx2_bench as A; "
            "from gwq_tvm.schedules.avx2 import " % str(HERE)) + call + "A.avx2_target(), rows=6, blocks=1, slots=8))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


#: what ORT's int8 GEMM runs on, per :func:`ort_int8_isa`
_ORT_KERNEL = {"avx512-vnni": "`vpdpbusd` on 512 bits", "avx-vnni": "`vpdpbusd` on 256 bits",
               "avx512bw": "`vpmaddubsw` + `vpmaddwd` on 512 bits"}


def _ort_caveat(isa: str) -> str:
    if isa == "avx2":
        return ("ORT's AVX2 int8 kernel uses the saturating `vpmaddubsw` sequence, so part of the ratio is the price of "
                "exactness (see the peaks below), not of the schedules.")
    return (f"**On this CPU ORT int8 runs its {isa} kernels ({_ORT_KERNEL[isa]}) while ours are forced onto the AVX2 "
            "family**: the ratio overstates the handicap the family has on an AVX2-only CPU, where ORT too has only "
            "the 256-bit `vpmaddubsw` sequence.")


def _steal_range(meta: dict) -> str:
    shares = [v for per_t in meta["all_processes"].values() for proc in per_t
              for v in proc.get("_steal", {}).values() if v is not None]
    return f"{100 * min(shares):.0f}-{100 * max(shares):.0f}%" if shares else "not available"


def write_report(results: dict, meta: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "avx2_bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    peaks = meta["sequence_peaks_gmacs"]
    lines = [
        "# x86-avx2 kernels: latency (ms, median, batch 1)",
        "",
        f"Machine: {meta['cpu']} ({meta['mcpu']}), target {meta['target']}; {meta['runs']} timed calls per cell, "
        f"the engines of a model interleaved round by round in each of {meta['processes']} worker processes per thread "
        f"count (1- and 2-thread workers alternating); a cell is the median over the processes (every process's value "
        f"in the JSON). Load average {meta['load_avg'][0]:.1f} at the start; hypervisor steal per worker "
        f"{_steal_range(meta)}.",
        "",
        "Ratio = latency / ORT int8 latency. Ours is exact: `vpmaddwd` on int16-widened operands for 8-bit weights; "
        "at 7 weight bits (W7A8: every weight in [-64, 64]) `vpmaddubsw`, which cannot saturate there. "
        + _ort_caveat(meta["ort_int8_isa"]),
        "",
        "W7A8's accuracy cost, bundled model on the 10k Fashion-MNIST test images (its AVX2 programs): "
        + ", ".join(f"{k} {100 * v:.2f}%" for k, v in meta["bundled_w7_accuracy"].items()) + ".",
        "",
    ]
    for threads, per_model in results.items():
        lines += [f"## {threads} thread(s)", "", "| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for name, row in per_model.items():
            ort = row.get("ORT int8")
            cells = ["n/a" if row.get(c) is None else (f"{row[c]:.3f} ({row[c] / ort:.2f}x)" if ort else f"{row[c]:.3f}")
                     for c in COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Throughput",
        "",
        f"Single-core peaks, GMAC/s: our `vpmaddwd` intrinsic built by TVM {meta['intrinsic_peak_gmacs']:.1f}, our "
        f"`vpmaddubsw` (W7) intrinsic {meta['narrow_intrinsic_peak_gmacs']:.1f}; raw "
        f"sequences (avx2_peak.c): `vpmaddwd` {peaks.get('wd', float('nan')):.1f}, `vpmaddubsw+vpmaddwd` "
        f"{peaks.get('ubsw', float('nan')):.1f}, fp32 FMA {peaks.get('fma', float('nan')):.1f}.",
        "",
        "| model | GMAC | threads | int8 avx2 GMAC/s | % of 1-core vpmaddwd peak | W7A8 avx2 GMAC/s | % of 1-core "
        "vpmaddubsw peak | ORT int8 GMAC/s | gwq-tvm fp32 GMAC/s | % of 1-core FMA peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for threads, per_model in results.items():
        for name, row in per_model.items():
            g = meta["gmacs"][name]
            rate = lambda v: g / (v / 1e3) if v else None  # noqa: E731
            fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
            pct = lambda v, peak: "n/a" if v is None or not peak else f"{100 * v / peak / int(threads):.0f}%"  # noqa: E731
            i8, f32, w7 = (rate(row.get(c)) for c in ("gwq-tvm int8 avx2", "gwq-tvm fp32", "gwq-tvm W7A8 avx2"))
            lines.append(f"| {name} | {g:.3f} | {threads} | {fmt(i8)} | {pct(i8, meta['intrinsic_peak_gmacs'])} | "
                         f"{fmt(w7)} | {pct(w7, meta['narrow_intrinsic_peak_gmacs'])} | "
                         f"{fmt(rate(row.get('ORT int8')))} | {fmt(f32)} | {pct(f32, peaks.get('fma'))} |")
    (OUT / "avx2_bench.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--processes", type=int, default=2, help="worker processes per thread count (median over them)")
    ap.add_argument("--models", nargs="+", default=list(KB.MODELS), choices=KB.MODELS)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.runs, args.models, args.worker_out)
        return
    load = os.getloadavg()
    for name in args.models:
        KB.prepare(name)
        prepare_w7(name)
    processes: dict = {str(t): [] for t in args.threads}
    for r in range(args.processes):
        for threads in args.threads:
            out = KB.CACHE / f"avx2_worker_{threads}_{r}.json"
            env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
            subprocess.run([sys.executable, __file__, "--worker", str(threads), "--worker-out", str(out),
                            "--runs", str(args.runs), "--models", *args.models], check=True, env=env)
            processes[str(threads)].append(json.loads(out.read_text()))
    results = {threads: KB.combine_processes([{n: p[n] for n in args.models} for p in procs])[0]
               for threads, procs in processes.items()}
    from gwq_tvm.runtime import host_target
    from gwq_tvm.schedules.amx import read_cpuinfo

    meta = {"cpu": platform.processor() or platform.machine(), "mcpu": str(host_target().attrs.get("mcpu", "")),
            "target": str(avx2_target()), "runs": args.runs, "processes": args.processes, "load_avg": load,
            "ort_int8_isa": ort_int8_isa(read_cpuinfo()), "all_processes": processes,
            "intrinsic_peak_gmacs": intrinsic_peak(), "narrow_intrinsic_peak_gmacs": intrinsic_peak(narrow=True),
            "sequence_peaks_gmacs": sequence_peaks(), "bundled_w7_accuracy": bundled_w7_accuracy(),
            "gmacs": {name: KB.model_gmacs(name) for name in args.models}}
    write_report(results, meta)
    print((OUT / "avx2_bench.md").read_text())


if __name__ == "__main__":
    main()
