"""POST weight lookup against the plain int8 conv/dense of the same shape (issue 24).

Each layer is a realized integer program ``conv2d(x_uint8, W) -> int32`` (or
a dense) compiled with :func:`gwq_tvm.schedules.build.compile_integer` for
this CPU (the VNNI packed kernels here), in three forms:

* ``int8``: ``W`` a stored int8 constant (uniform weights);
* ``post-lut``: ``W = take(table, codes)``, the POST layer as gwq-tvm emits it,
  compiled as the fused int4 lookup-table kernel: the codes stored two per
  byte and looked up in registers (``vpshufb`` / ``tbl`` over the 16-entry
  table) right before the dot product, no weight materialized
  (:func:`gwq_tvm.schedules.compute.int4_weight`);
* ``post-take``: the previous path, kept for comparison: the lookup
  ``take(table, codes)`` run per call into a full int8 weight, then the
  packed int8 kernel (the family's int4 step switched off);
* ``post-shift`` (the alternative, weight decode only): the int8 weights made
  from the signed index ``j`` by ``sign(j) * ((64 >> e) * q) >> 6`` with
  ``e = (|j|-1) >> 1`` and ``q = 45`` (Q6 ``1/sqrt 2``) for odd ``|j|-1``, else 64:
  a shift plus one multiply by the Q-format ``1/sqrt 2``.  Measured as the
  decode kernel alone against the decode by ``take`` (the conv after it is
  the same); its integers differ from the rounded table (``(32*45)>>6 = 22``, not 23).

Batch 1, 1 and 2 threads (each in a fresh subprocess: TVM's pool size is fixed
at start-up), median of ``--runs`` calls after warm-up.  Writes
``benchmarks/results/post_kernel/post_kernel.{json,md}``.  Figures taken on a
shared, loaded machine are marked so by ``--loaded``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from _timing import interleaved, median_ms

OUT = Path(__file__).parent / "results" / "post_kernel"
#: (name, C_in, C_out, H=W, k, stride) of the convs; a dense is ("dense", K, N, 0, 0, 0)
SHAPES = [("conv 64x64 14x14 3x3", 64, 64, 14, 3, 1), ("conv 128x128 7x7 3x3", 128, 128, 7, 3, 1),
          ("conv 256x256 7x7 1x1", 256, 256, 7, 1, 1), ("dense 512x1000", 512, 1000, 0, 0, 0)]


def _module(shape, form: str, seed: int = 0):
    from tvm import relax
    from tvm.relax import op as R

    from gwq_tvm.plan import post

    name, c, o, hw, k, stride = shape
    rng = np.random.default_rng(seed)
    dense = name.startswith("dense")
    wshape = (o, c) if dense else (o, c, k, k)
    j = rng.integers(-7, 8, wshape)
    codes = post.codes(j, 4)
    table = post.code_table(4)
    x = relax.Var("x", relax.TensorType((1, c) if dense else (1, c, hw, hw), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            if form == "int8":  # "post": the lookup take(table, codes)
                w = relax.const(np.ascontiguousarray(table[codes].T if dense else table[codes]), "int8")
            else:
                w = bb.emit(R.take(relax.const(table, "int8"), relax.const(np.ascontiguousarray(codes.T if dense else codes),
                                                                                 "uint8"), axis=0, mode="clip"))
            y = R.matmul(x, w, out_dtype="int32") if dense else R.nn.conv2d(
                x, w, strides=[stride, stride], padding=[k // 2] * 4, out_dtype="int32")
            out = bb.emit_output(bb.emit(y))
        bb.emit_func_output(out)
    return bb.get(), rng.integers(0, 256, (1, c) if dense else (1, c, hw, hw)).astype("uint8")


def _decode_module(shape, form: str):
    """The weight decode alone: ``take(table, codes)`` or the shift-and-multiply of the signed indices."""
    from tvm import relax
    from tvm.relax import op as R

    from gwq_tvm.plan import post

    name, c, o, hw, k, stride = shape
    wshape = (o, c) if name.startswith("dense") else (o, c, k, k)
    j = np.random.default_rng(0).integers(-7, 8, wshape)
    # a runtime input, so that nothing folds: the codes (uint8) or the signed indices (int8)
    x = relax.Var("x", relax.TensorType(wshape, "uint8" if form == "lut" else "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            if form == "lut":
                w = bb.emit(R.take(relax.const(post.code_table(4), "int8"), x, axis=0, mode="clip"))
            else:
                i32 = lambda v: relax.const(np.int32(v), "int32")  # noqa: E731
                a = bb.emit(R.astype(x, "int32"))
                mag = bb.emit(R.subtract(R.abs(a), i32(1)))
                e = bb.emit(R.right_shift(mag, i32(1)))
                q = bb.emit(R.where(R.equal(R.bitwise_and(mag, i32(1)), i32(1)), i32(45), i32(64)))
                v = bb.emit(R.right_shift(R.multiply(R.right_shift(i32(64), e), q), i32(6)))
                v = bb.emit(R.where(R.equal(a, i32(0)), i32(0), R.multiply(v, R.sign(a))))
                w = bb.emit(R.astype(v, "int8"))
            out = bb.emit_output(w)
        bb.emit_func_output(out)
    return bb.get(), (post.codes(j, 4) if form == "lut" else j.astype("int8"))


def worker(threads: int, runs: int, out: Path) -> None:
    import tvm
    from tvm import relax

    from gwq_tvm.reference import run_reference
    from gwq_tvm.runtime import host_target
    import dataclasses

    from gwq_tvm.schedules.build import compile_packed
    from gwq_tvm.schedules.spec import kernel_spec

    target = host_target()
    spec = kernel_spec(target)
    rows = {}
    for shape in SHAPES:
        row, calls = {}, {}
        ref = None
        for form in ("int8", "post-lut", "post-take"):
            mod, x = _module(shape, "int8" if form == "int8" else "post")
            use = dataclasses.replace(spec, int4_intrinsic=None) if form == "post-take" else spec
            vm = relax.VirtualMachine(compile_packed(mod, target, use), tvm.cpu())
            arg = tvm.runtime.tensor(np.ascontiguousarray(x))
            got = vm["main"](arg).numpy()
            ref = run_reference(mod, x) if ref is None else ref
            row[f"{form} exact"] = bool(np.array_equal(got, ref))
            calls[form] = lambda vm=vm, arg=arg: vm["main"](arg)
        for form in ("lut", "shift"):
            mod, x = _decode_module(shape, form)
            vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
            arg = tvm.runtime.tensor(np.ascontiguousarray(x))
            calls[f"decode {form}"] = lambda vm=vm, arg=arg: vm["main"](arg)
        # all forms of a shape interleaved (10 calls each per round, after 2 untimed): they share the machine's load
        row.update(median_ms(interleaved(calls, max(runs // 10, 1), per_round=10, warmup=5, rewarm=2)))
        rows[shape[0]] = row
        print(f"threads={threads} {shape[0]}: {row}", file=sys.stderr, flush=True)
    out.write_text(json.dumps(rows))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--loaded", action="store_true", help="mark the figures as taken on a loaded machine")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.runs, Path(args.worker_out))
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    for t in args.threads:
        part = OUT / f".threads{t}.json"
        env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
        subprocess.run([sys.executable, __file__, "--worker", str(t), "--worker-out", str(part), "--runs", str(args.runs)],
                       check=True, env=env)
        results[str(t)] = json.loads(part.read_text())
        part.unlink()
    meta = {"batch": 1, "runs": args.runs, "loaded_machine": args.loaded, "cpu": os.cpu_count()}
    from gwq_tvm.atomic import write_text

    write_text(OUT / "post_kernel.json", json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    note = ("**Taken on a shared machine under heavy load from other jobs: the ratios, not the absolute "
            "figures, are the information.**\n\n" if args.loaded else "")
    lines = ["# POST lookup kernel vs int8 (batch 1, median ms)", "", note + "`post-lut`: the fused int4 lookup-table "
             "kernel (codes two per byte, vpshufb/tbl in registers, then the dot product); `post-take`: the old path, "
             "take(table, codes) per call then the packed int8 kernel; `decode lut`/`decode shift`: the weight decode "
             "alone (as take / as shift and multiply).", ""]
    for t, rows in results.items():
        lines += [f"## {t} thread(s)", "", "| layer | int8 | post-lut | ratio | post-take | ratio | decode lut "
                  "| decode shift | exact |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            exact = r['int8 exact'] and r['post-lut exact'] and r['post-take exact']
            lines.append(f"| {name} | {r['int8']:.4f} | {r['post-lut']:.4f} | {r['post-lut'] / r['int8']:.2f} | "
                         f"{r['post-take']:.4f} | {r['post-take'] / r['int8']:.2f} | "
                         f"{r['decode lut']:.4f} | {r['decode shift']:.4f} | {exact} |")
        lines.append("")
    write_text(OUT / "post_kernel.md", "\n".join(lines))


if __name__ == "__main__":
    main()
