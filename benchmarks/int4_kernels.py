"""Packed int4 weight kernels against int8 ones of the same shapes (issues 23 and 24), batch 1.

Each layer is a realized integer program ``conv2d(x_uint8, W) -> int32`` (or
a dense ``x[1, K] @ W[K, N]``) compiled with the packed kernels of this CPU
(x86 VNNI here), in four forms:

* ``int8``: ``W`` a stored int8 constant (full range: the int8 kernel);
* ``int4``: ``W`` in [-8, 7] (a uniform weight at 4 bits): stored as packed
  nibble codes, two per byte (:func:`gwq_tvm.schedules.layout.pack_conv_weight_int4`),
  decoded in registers (with GFNI one ``vgf2p8affineqb`` that splits and
  sign-extends both nibble halves; without, mask, shift and ``vpshufb``
  over the sign extension table) and fed to the same ``vpdpbusd``;
* ``post``: a POST weight ``take(table, codes)`` at 4 bits, fused the same
  way (``vpshufb`` over the POST level table): no weight is materialized;
* ``post-take``: the previous POST path, the lookup ``take(table, codes)``
  run per call into a full int8 weight, then the int8 kernel (the family's
  int4 step switched off).

Each form is timed warm (the same call repeated: weights stay in cache) and
cold (a 64 MiB buffer written before each call: weights come from memory,
as in a batch-1 network whose earlier layers evicted them).
Every form is checked bit for bit against :func:`gwq_tvm.reference.run_reference`
and its weight bytes (the packed constant the module stores) are recorded.
1 and 2 threads, each in a fresh subprocess (TVM's pool size is fixed at
start-up), median of ``--runs`` calls after warm-up.  Writes
``benchmarks/results/int4_kernels/int4_kernels.{json,md}``; ``--loaded``
marks figures taken on a shared, loaded machine.

``--target x86-avx2`` (any preset or target string) builds for that family
instead of this CPU's and writes ``int4_kernels_<family>.{json,md}``.  In the
AVX2 family ``int8`` widens to int16 for ``vpmaddwd`` while ``int4`` and
``post`` take the exact ``vpmaddubsw`` step of weights within [-64, 64],
decoded from nibbles by ``vpshufb`` (:mod:`gwq_tvm.schedules.avx2`): there
the ratio measures that step and the packing together.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _timing import interleaved, median_ms

OUT = Path(__file__).parent / "results" / "int4_kernels"
#: (name, C_in, C_out, H=W, k, stride); a dense is ("dense ...", K, N, 0, 0, 0)
SHAPES = [("conv 64x64 56x56 3x3 (ResNet-18 s1)", 64, 64, 56, 3, 1),
          ("conv 128x128 28x28 3x3 (ResNet-18 s2)", 128, 128, 28, 3, 1),
          ("conv 256x256 14x14 3x3 (ResNet-18 s3)", 256, 256, 14, 3, 1),
          ("conv 512x512 7x7 3x3 (ResNet-18 s4)", 512, 512, 7, 3, 1),
          ("conv 256x1024 14x14 1x1 (ResNet-50 s3)", 256, 1024, 14, 1, 1),
          ("conv 96x576 7x7 1x1 (MobileNetV3-S late)", 96, 576, 7, 1, 1),
          ("conv 160x960 7x7 1x1 (MobileNetV3-L late)", 160, 960, 7, 1, 1),
          ("dense 512x1000 (ResNet-18 fc)", 512, 1000, 0, 0, 0),
          ("dense 1024x1000 (MobileNetV3-S fc)", 1024, 1000, 0, 0, 0)]
FORMS = ("int8", "int4", "post", "post-take")

#: What the forms run on, per family (the report's legend)
FORMS_TEXT = {
    "x86-vnni": "`int4`: uniform weights in [-8, 7] stored two per byte, decoded in registers (GFNI vgf2p8affineqb on "
                "this CPU) into vpdpbusd; `post`: POST 4-bit codes, same kernel with the POST table; `post-take`: the old "
                "POST path (take(table, codes) per call, then the int8 kernel).",
    "x86-avx2": "Forced x86-avx2 family: `int8` is widened to int16 for vpmaddwd; `int4` (weights in [-8, 7]) is "
                "stored two per byte, decoded by vpshufb and fed to the exact vpmaddubsw step that every weight within "
                "[-64, 64] takes, so int4/int8 measures that step and the packing together; `post`: POST 4-bit codes, "
                "same kernel with the POST table (levels within +-64); `post-take`: the family's int4 step switched off, "
                "take(table, codes) per call into int8 weights, then the vpmaddubsw step.",
}


def _module(shape, form: str, seed: int = 0):
    from tvm import relax
    from tvm.relax import op as R

    from gwq_tvm.plan import post

    name, c, o, hw, k, stride = shape
    rng = np.random.default_rng(seed)
    dense = name.startswith("dense")
    wshape = (c, o) if dense else (o, c, k, k)
    x = relax.Var("x", relax.TensorType((1, c) if dense else (1, c, hw, hw), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            if form == "int8":
                w = relax.const(rng.integers(-128, 128, wshape).astype("int8"))
            elif form == "int4":
                w = relax.const(rng.integers(-8, 8, wshape).astype("int8"))
            else:
                codes = post.codes(rng.integers(-7, 8, wshape), 4)
                w = bb.emit(R.take(relax.const(post.code_table(4), "int8"), relax.const(codes, "uint8"), axis=0,
                                   mode="clip"))
            y = R.matmul(x, w, out_dtype="int32") if dense else R.nn.conv2d(
                x, w, strides=[stride, stride], padding=[k // 2] * 4, out_dtype="int32")
            out = bb.emit_output(bb.emit(y))
        bb.emit_func_output(out)
    return bb.get(), rng.integers(0, 256, (1, c) if dense else (1, c, hw, hw)).astype("uint8")


def _cold_median_ms(fn, runs: int, scratch: np.ndarray) -> float:
    """Median of ``runs`` calls, each after writing ``scratch`` (larger than the last-level cache share), so
    that the call reads its weights from memory, as a batch-1 network does once earlier layers evicted them."""
    fn()
    times = []
    for _ in range(runs):
        scratch += 1
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _weight_bytes(mod, spec) -> int:
    """Bytes of the constants the packed module stores (the packed weight, plus any table)."""
    from tvm import relax

    from gwq_tvm.ir import const_value
    from gwq_tvm.schedules.pack_layout import PackInt8Layout

    found = []
    relax.analysis.post_order_visit(PackInt8Layout(spec)(mod)["main"],
                                    lambda e: found.append(const_value(e)) if const_value(e) is not None else None)
    return int(sum(v.nbytes for v in found))


def _target(name: str | None):
    from gwq_tvm.runtime import host_target
    from gwq_tvm.schedules.targets import resolve_target

    return host_target() if name is None else resolve_target(name)


def worker(threads: int, runs: int, out: Path, target_name: str | None = None) -> None:
    import tvm
    from tvm import relax

    from gwq_tvm.reference import run_reference
    from gwq_tvm.schedules.build import compile_packed
    from gwq_tvm.schedules.spec import kernel_spec

    target = _target(target_name)
    spec = kernel_spec(target)
    no_int4 = dataclasses.replace(spec, int4_intrinsic=None, narrow=spec.narrow and dataclasses.replace(
        spec.narrow, int4_intrinsic=None))  # (AVX2: the int4 step is its narrow kernels')
    rows = {}
    scratch = np.zeros(64 << 20, np.uint8)  # 64 MiB: twice the L3 of this Zen 4
    for shape in SHAPES:
        row, calls = {}, {}
        for form in FORMS:
            mod, x = _module(shape, "post" if form == "post-take" else form)
            use = no_int4 if form == "post-take" else spec
            vm = relax.VirtualMachine(compile_packed(mod, target, use), tvm.cpu())
            arg = tvm.runtime.tensor(np.ascontiguousarray(x))
            row[f"{form} exact"] = bool(np.array_equal(vm["main"](arg).numpy(), run_reference(mod, x)))
            row[f"{form} bytes"] = _weight_bytes(mod, use)
            calls[form] = lambda vm=vm, arg=arg: vm["main"](arg)
        # warm: the forms interleaved (10 calls each per round, after 2 untimed), so they share the machine's load
        row.update(median_ms(interleaved(calls, max(runs // 10, 1), per_round=10, warmup=5, rewarm=2)))
        for form, fn in calls.items():
            row[f"{form} cold"] = _cold_median_ms(fn, max(10, runs // 4), scratch)
        rows[shape[0]] = row
        print(f"threads={threads} {shape[0]}: {row}", file=sys.stderr, flush=True)
    out.write_text(json.dumps({"family": spec.name, "rows": rows}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--loaded", action="store_true", help="mark the figures as taken on a loaded machine")
    ap.add_argument("--target", default=None, help="a preset or target to build for (default: this CPU)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.runs, Path(args.worker_out), args.target)
    if args.target is not None:  # a bad --target is one line here, not a traceback from the worker process
        import platform

        from gwq_tvm.errors import GwqError
        from gwq_tvm.schedules.arm import is_aarch64
        from gwq_tvm.schedules.spec import kernel_spec

        try:
            target = _target(args.target)
        except GwqError as err:
            ap.error(f"--target: {err}")
        if kernel_spec(target) is None:
            ap.error(f"--target {args.target}: no gwq-tvm int8 kernel family for it")
        if is_aarch64(target) != (platform.machine() in ("aarch64", "arm64")):
            ap.error(f"--target {args.target}: the kernels are timed on this {platform.machine()} CPU; "
                     "build for a family it can run")
    OUT.mkdir(parents=True, exist_ok=True)
    results, family = {}, None
    for t in args.threads:
        part = OUT / f".threads{t}.json"
        env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
        subprocess.run([sys.executable, __file__, "--worker", str(t), "--worker-out", str(part), "--runs", str(args.runs)]
                       + (["--target", args.target] if args.target else []), check=True, env=env)
        part_data = json.loads(part.read_text())
        results[str(t)], family = part_data["rows"], part_data["family"]
        part.unlink()
    meta = {"batch": 1, "runs": args.runs, "loaded_machine": args.loaded, "cpu": os.cpu_count(), "family": family,
            "load_average": os.getloadavg()}
    from gwq_tvm.atomic import write_text

    stem = "int4_kernels" if args.target is None else f"int4_kernels_{family}"
    write_text(OUT / f"{stem}.json", json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    note = ("**Taken on a shared machine under load from other jobs (load average "
            f"{meta['load_average'][0]:.1f} on 2 cores at the end): compare ratios, not absolute figures.**\n\n"
            if args.loaded else "")
    forms = FORMS_TEXT.get(family, FORMS_TEXT["x86-vnni"])
    lines = [f"# Packed int4 weight kernels vs int8 ({family}, batch 1, median ms)", "",
             note + forms + " Ratios are against `int8`; "
             "weight KiB = the packed constants the module stores. Warm: the call repeated (weights in cache); "
             "cold: a 64 MiB buffer written before each call (weights from memory).", ""]
    for t, rows in results.items():
        lines += [f"## {t} thread(s)", "",
                  "| layer | int8 | int4 | int4/int8 | post | post/int8 | post-take | post-take/int8 "
                  "| cold int8 | cold int4 | cold int4/int8 | cold post/int8 | weight KiB int8 / int4 | exact |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            exact = all(r[f"{f} exact"] for f in FORMS)
            lines.append(f"| {name} | {r['int8']:.4f} | {r['int4']:.4f} | {r['int4'] / r['int8']:.2f} | "
                         f"{r['post']:.4f} | {r['post'] / r['int8']:.2f} | {r['post-take']:.4f} | "
                         f"{r['post-take'] / r['int8']:.2f} | {r['int8 cold']:.4f} | {r['int4 cold']:.4f} | "
                         f"{r['int4 cold'] / r['int8 cold']:.2f} | {r['post cold'] / r['int8 cold']:.2f} | "
                         f"{r['int8 bytes'] / 1024:.1f} / {r['int4 bytes'] / 1024:.1f} | {exact} |")
        lines.append("")
    write_text(OUT / f"{stem}.md", "\n".join(lines))


if __name__ == "__main__":
    main()
