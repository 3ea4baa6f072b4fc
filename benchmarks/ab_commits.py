"""End-to-end latency of two commits' compiled programs, interleaved in one process (issue 22).

A kernel change is judged on whole models, but two benchmark runs minutes apart on a shared machine
differ by more than the change (the host's speed drifts).  This builds each model of
``benchmarks/.cache`` (made by ``kernels_bench.py``) under each plan with the code of commit ``A``
and of commit ``B`` (``git worktree``, a subprocess per commit, exported ``.so``), then loads all of
them into one process and times them in alternating rounds: every round times each program for
``--calls`` calls after a warm-up and keeps the median, and the figure is the median over rounds of
each program and of the per-round ratio B/A (with its min-max).

Usage::

    python benchmarks/ab_commits.py 478155a HEAD --threads 1 2

Writes ``benchmarks/results/ab_commits/<A>_<B>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _timing import interleaved

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
OUT = HERE / "results" / "ab_commits"
MODELS = ("mobilenet_v2", "resnet18", "mobilenet_v3_small")
PLANS = ("int8", "gwq")

_BUILD = """
import sys
from pathlib import Path
import gwq_tvm
from gwq_tvm.plan.quantplan import QuantPlan
cache, out = Path(sys.argv[1]), Path(sys.argv[2])
for spec in sys.argv[3:]:
    model, plan = spec.split(":")
    q = gwq_tvm.quantize(str(cache / model / "model.onnx"), plan=QuantPlan.load(cache / model / f"{plan}.plan.json"))
    gwq_tvm.build(q).export_library(str(out / f"{model}_{plan}.so"))
"""


def build(commit: str, work: Path, specs: list[str]) -> tuple[str, Path]:
    """Export every ``model:plan`` of ``specs`` with the code of ``commit``; returns ``(full hash, folder)``."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], check=True, capture_output=True,
                         text=True).stdout.strip()
    tree, out = work / f"tree_{sha[:12]}", work / f"so_{sha[:12]}"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), sha], check=True,
                   capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, "-c", _BUILD, str(CACHE), str(out), *specs], check=True, env=env, cwd=work)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return sha, out


def time_pair(model: str, plan: str, folders: dict, rounds: int, calls: int) -> dict:
    """Median ms of A and B and the median/min/max of the per-round ratio B/A, A and B alternating."""
    import tvm
    from tvm import relax

    x = tvm.runtime.tensor(np.load(CACHE / model / "input.npy"))
    vms = {k: relax.VirtualMachine(tvm.runtime.load_module(str(d / f"{model}_{plan}.so")), tvm.cpu())
           for k, d in folders.items()}
    per = interleaved({k: (lambda vm=vm: vm["main"](x)) for k, vm in vms.items()}, rounds, per_round=calls, warmup=0,
                      rewarm=3)
    ratios = [b / a for a, b in zip(per["A"], per["B"])]
    return {"A_ms": statistics.median(per["A"]), "B_ms": statistics.median(per["B"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # thread count of a timing subprocess
    ap.add_argument("--folders", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        rows = {f"{m}:{p}": time_pair(m, p, dict(zip("AB", args.folders)), args.rounds, args.calls)
                for m in args.models for p in PLANS}
        print(json.dumps(rows))
        return 0
    missing = [m for m in args.models if not (CACHE / m / "model.onnx").exists()]
    if missing:
        print(f"ab_commits: no cache for {', '.join(missing)}; run benchmarks/kernels_bench.py --models {' '.join(missing)} first")
        return 1
    for commit in (args.a, args.b):
        if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                          capture_output=True).returncode:
            print(f"ab_commits: {commit!r} is not a commit of {ROOT}")
            return 2
    specs = [f"{m}:{p}" for m in args.models for p in PLANS]
    with tempfile.TemporaryDirectory() as tmp:
        (sha_a, dir_a), (sha_b, dir_b) = build(args.a, Path(tmp), specs), build(args.b, Path(tmp), specs)
        result = {"A": sha_a, "B": sha_b, "load_at_start": os.getloadavg()[0], "rounds": args.rounds,
                  "calls": args.calls, "threads": {}}
        for t in args.threads:
            env = {**os.environ, "TVM_NUM_THREADS": str(t)}
            out = subprocess.run([sys.executable, __file__, "x", "x", "--worker", str(t), "--rounds", str(args.rounds),
                                  "--calls", str(args.calls), "--models", *args.models, "--folders", str(dir_a),
                                  str(dir_b)], check=True, capture_output=True, text=True, env=env)
            result["threads"][str(t)] = json.loads(out.stdout.strip().splitlines()[-1])
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"{sha_a[:7]}_{sha_b[:7]}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# {sha_a[:7]} (A) against {sha_b[:7]} (B): end-to-end ms, batch 1", "",
             f"Each program built by its commit's `gwq_tvm.build`, all loaded in one process and timed in "
             f"{args.rounds} alternating rounds of {args.calls} calls (medians); ratio = B/A per round, median "
             f"[min-max]. Load average {result['load_at_start']:.1f} at start.", "",
             "| model | plan | threads | A ms | B ms | B/A |", "|---|---|---|---:|---:|---|"]
    for t, rows in result["threads"].items():
        for key, r in rows.items():
            m, p = key.split(":")
            lines.append(f"| {m} | {'per-layer' if p == 'int8' else p} | {t} | {r['A_ms']:.3f} | {r['B_ms']:.3f} | "
                         f"{r['ratio']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}] |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
