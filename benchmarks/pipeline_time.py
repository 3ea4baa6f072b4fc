"""Time every stage of quantize + compile, with each stage's peak resident memory.

Stages: import (``load_model``), calibrate, sensitivity (GWQ's output
sensitivity probes), plan, realize (+ integer-only check) and compile
(``gwq_tvm.build``).  Each (model, mode) run is a fresh process, so the peak
resident set of a stage is its own (``VmHWM`` is reset between stages through
``/proc/self/clear_refs``).

Models: the bundled Fashion-MNIST ResNet and a ResNet-18 at 224x224 with
seeded weights (:mod:`resnet18`), each per-layer and GWQ.  Issue 22's targets
on the 2-core machine: ResNet-18 per-layer end to end <= 60 s, GWQ <= 120 s.

Usage::

    python benchmarks/pipeline_time.py [--models bundled,resnet18] [--repeats 2] [--calib 512] [--tag NAME]

``--tag`` names the output (``results/pipeline_time/pipeline_time[_TAG].json`` / ``.md``),
e.g. to record a run of an older checkout (``PYTHONPATH=old/ python ...``).
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "pipeline_time"
STAGES = ("import", "calibrate", "sensitivity", "plan", "realize", "compile")
TARGET_S = {("resnet18", "per-layer"): 60, ("resnet18", "gwq"): 120}


def _reset_peak() -> None:
    """Reset this process's peak RSS (``VmHWM``), Linux >= 4.0."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # pragma: no cover - not Linux
        pass


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # pragma: no cover

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model_and_data(model: str, calib: int):
    if model == "bundled":
        from gwq_tvm.data import bundled_model, fashion_mnist

        return str(bundled_model()), fashion_mnist("calib")[0][:calib]
    sys.path.insert(0, str(HERE))
    import resnet18

    path = resnet18.export_onnx(Path(tempfile.gettempdir()) / "gwq_bench" / "resnet18.onnx")
    return str(path), resnet18.calibration_images(calib)


def one_run(model: str, mode: str, calib: int) -> dict:
    """Seconds and peak MB of each stage of one quantize + build (in this process)."""
    import gwq_tvm
    from gwq_tvm.calibration import check_batch
    from gwq_tvm.calibration.sensitivity import SENSITIVITY_SAMPLES, tensor_sensitivity
    from gwq_tvm.config import QuantConfig
    from gwq_tvm.plan.planner import apply_end_bits

    path, data = _model_and_data(model, calib)
    seconds, peak = {}, {}

    def stage(name, fn):
        _reset_peak()
        t0 = time.perf_counter()
        out = fn()
        seconds[name], peak[name] = time.perf_counter() - t0, _peak_mb()
        return out

    fm = stage("import", lambda: gwq_tvm.load_model(path))
    graph = gwq_tvm.extract_graph(fm.mod)
    config = apply_end_bits(graph, QuantConfig(mode="gwq") if mode == "gwq" else QuantConfig())
    sens = None
    if mode == "gwq" and config.loss_aware:  # as gwq_tvm.quantize: calibration keeps the fp32 logits sensitivity needs
        stats, ref = stage("calibrate", lambda: gwq_tvm.calibrate(fm, data, config, keep_outputs=SENSITIVITY_SAMPLES))
        sens = stage("sensitivity", lambda: tensor_sensitivity(fm, graph, stats, config, check_batch(data, fm.input_shape),
                                                               reference=ref))
    else:
        stats = stage("calibrate", lambda: gwq_tvm.calibrate(fm, data, config))
    plan = stage("plan", lambda: gwq_tvm.build_plan(graph, stats, config, fm.input_shape, sens))

    def realize():
        mod = gwq_tvm.RealizeIntegerProgram(plan)(fm.mod)
        assert gwq_tvm.check_integer_only(mod).ok
        return mod

    mod = stage("realize", realize)
    stage("compile", lambda: gwq_tvm.build(mod))
    seconds["total"] = sum(seconds.values())
    return {"seconds": seconds, "peak_mb": peak}


def _in_subprocess(model: str, mode: str, calib: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import pipeline_time as p; "
            f"print('RESULT' + json.dumps(p.one_run({model!r}, {mode!r}, {calib})))")
    # -P: no current directory on sys.path, so the child imports the gwq_tvm the parent did (PYTHONPATH, install)
    out = subprocess.run([sys.executable, "-P", "-c", code], check=True, capture_output=True, text=True, env=os.environ.copy())
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bundled,resnet18")
    ap.add_argument("--modes", default="per-layer,gwq")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    import gwq_tvm

    rows, raw = [], {}
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            runs = [_in_subprocess(model, mode, args.calib) for _ in range(args.repeats)]
            med = {k: statistics.median(r["seconds"][k] for r in runs) for k in runs[0]["seconds"]}
            peak = {k: max(r["peak_mb"][k] for r in runs) for k in runs[0]["peak_mb"]}
            raw[f"{model}/{mode}"] = {"runs": runs, "median_s": med, "peak_mb": peak,
                                      "target_s": TARGET_S.get((model, mode))}
            rows.append((model, mode, med, peak))
            print(model, mode, {k: round(v, 2) for k, v in med.items()}, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "pipeline_time" + (f"_{args.tag}" if args.tag else "")
    meta = {"gwq_tvm": str(Path(gwq_tvm.__file__).parent),  # the children's too (they run with -P)
            "calib_images": args.calib, "repeats": args.repeats, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_avg_start": os.getloadavg()}
    (OUT / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": raw}, indent=2) + "\n")
    head = "| model | mode | " + " | ".join(STAGES) + " | total | target |"
    lines = [head, "|" + "---|" * (len(STAGES) + 4)]
    for model, mode, med, peak in rows:
        cells = [f"{med[s]:.2f} s / {peak[s]:.0f} MB" if s in med else "-" for s in STAGES]
        target = TARGET_S.get((model, mode))
        lines.append(f"| {model} | {mode} | " + " | ".join(cells) + f" | {med['total']:.1f} s | {f'<= {target} s' if target else '-'} |")
    text = ("# Pipeline time: seconds and peak memory of each stage of quantize + compile\n\n"
            f"{args.calib} calibration images, median of {args.repeats} runs (each a fresh process), "
            f"seconds / peak resident MB per stage; the CPU is shared with other jobs (load {meta['load_avg_start'][0]:.1f} at start).\n\n"
            + "\n".join(lines) + "\n")
    (OUT / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
