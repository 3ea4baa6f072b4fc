"""Fast integer kernels side by side: gwq-tvm int8 vs TVM fp32, ONNX Runtime, PyTorch (issue 5).

One script, one run.  Batch 1, 1 and 2 threads.  The columns of a model are
timed interleaved (``_timing.interleaved``): each round gives every engine in
turn (after a 0.5 s pause, so other sessions' pools stop spinning) two
or more untimed calls (at least 20 ms of them) and five timed ones, ``--runs`` (>= 50) timed calls per
cell in all, and a cell's latency is the median of its round medians.  All
engines of a row thus see the same machine load, and its drift cancels in the
ratios.  Models:

* ``resnet18``: a ResNet-18 at 224x224 with seeded random weights (``resnet18.py``),
  quantized with random calibration images;
* ``bundled``: the bundled Fashion-MNIST ResNet (1x28x28);
* ``mobilenetv3``: the bundled Fashion-MNIST MobileNetV3-Small (1x28x28; hardswish, squeeze-excitation);
* ``mobilenet_v2``, ``mobilenet_v3_small``: the model zoo's MobileNetV2 and MobileNetV3-Small
  (``gwq_tvm.models.zoo``, published layer definitions, seeded weights, settled batch norms) at 224x224,
  quantized with random calibration images.

Columns: gwq-tvm int8 with the untuned default schedules and tuned
(MetaSchedule, XGBoost; ``--tuning-dir``, tuned here if missing), gwq-tvm in
GWQ mode (default schedules), TVM fp32 untuned and tuned (MetaSchedule,
``--fp32-tuning-dir``, tuned for ``--fp32-trials`` first; the column is
measured when that directory holds a database), ONNX Runtime fp32 and int8 (QDQ, per-channel, u8
activations x s8 weights, ``quantize_static``), PyTorch eager fp32 and FX
graph-mode int8 (x86 backend).

Each thread count runs in fresh subprocesses (TVM's thread pool size is fixed
at start-up), ``--processes`` of them, 1- and 2-thread ones alternating; a cell
is the median over its processes, whose range the report shows (the same
program's latency differs between processes by more than within one).  Every
2-thread process also measures the 2-core ``vpdpbusd`` ceiling of the moment
and every cell records the hypervisor's steal.  Writes ``benchmarks/results/kernels_bench/kernels_bench.{json,md,png}`` with
ratios to ORT int8 and the achieved GMAC/s next to the measured single-core
``vpdpbusd`` peak.

Usage::

    python benchmarks/kernels_bench.py --tuning-dir /tmp/r18_tune --trials 480 \
        --fp32-tuning-dir /tmp/r18_fp32 --fp32-trials 1216
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "kernels_bench"
CACHE = HERE / ".cache"
sys.path.insert(0, str(HERE))

MODELS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "bundled", "mobilenetv3")
#: zoo entries measured at 224x224
ZOO_224 = ("mobilenet_v2", "mobilenet_v3_small")
#: benchmark name -> bundled model name (gwq_tvm.data.BUNDLED_MODELS)
BUNDLED = {"bundled": "fmnist_resnet", "mobilenetv3": "fmnist_mobilenetv3"}
COLUMNS = [
    "gwq-tvm int8 default", "gwq-tvm int8 tuned", "gwq-tvm GWQ default", "TVM fp32 untuned", "TVM fp32 tuned",
    "ORT fp32", "ORT int8", "PyTorch fp32", "PyTorch FX int8",
]


# --- model preparation (parent process) ------------------------------------
def _paths(name: str) -> dict:
    d = CACHE / name
    return {"onnx": d / "model.onnx", "ort_int8": d / "model_int8.onnx", "plan": d / "int8.plan.json",
            "plan_gwq": d / "gwq.plan.json", "calib": d / "calib.npy", "input": d / "input.npy"}


def _model_data(name: str):
    """(onnx path, calibration images, one benchmark input) of a model, cached under ``benchmarks/.cache``."""
    p = _paths(name)
    p["onnx"].parent.mkdir(parents=True, exist_ok=True)
    if not p["calib"].exists():
        if name == "resnet18":
            from resnet18 import calibration_images, export_onnx

            export_onnx(p["onnx"])
            calib, x = calibration_images(16), calibration_images(1, seed=99)
        elif name in ZOO_224:
            from resnet18 import calibration_images

            from gwq_tvm.models import zoo

            zoo.export_onnx(name, p["onnx"], input_shape=(1, 3, 224, 224))
            calib, x = calibration_images(16), calibration_images(1, seed=99)
        else:
            from gwq_tvm.data import bundled_model, fashion_mnist

            p["onnx"].write_bytes(bundled_model(BUNDLED[name]).read_bytes())
            calib, test = fashion_mnist("calib")[0][:256], fashion_mnist("test")[0]
            x = test[:1]
        np.save(p["calib"], calib)
        np.save(p["input"], x)
    return p["onnx"], np.load(p["calib"]), np.load(p["input"])


def prepare(name: str) -> None:
    """Export, quantize (per-layer and GWQ plans) and ORT-quantize ``name`` once."""
    import gwq_tvm
    from gwq_tvm.config import QuantConfig

    onnx_path, calib, _ = _model_data(name)
    p = _paths(name)
    # GWQ latency only depends on the SFC kinds, so the (slow on ResNet-18) loss-aware sensitivity is skipped
    for key, cfg in (("plan", QuantConfig()), ("plan_gwq", QuantConfig(mode="gwq", loss_aware=False))):
        if not p[key].exists():
            gwq_tvm.quantize(str(onnx_path), calib, cfg).plan.save(p[key])
    if not p["ort_int8"].exists():
        _ort_quantize(onnx_path, p["ort_int8"], calib)


def _ort_quantize(src: Path, dst: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{key: calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    key = _input_name(src)
    pre = dst.with_name("model_pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _input_name(onnx_path) -> str:
    import onnx

    return onnx.load(str(onnx_path)).graph.input[0].name


def tune_int8(name: str, tuning_dir: Path, trials: int) -> float:
    """Tune the int8 program of ``name`` into ``tuning_dir`` (resumes); return the wall seconds spent."""
    import gwq_tvm
    from gwq_tvm.plan.quantplan import QuantPlan
    from gwq_tvm.runtime import host_target
    from gwq_tvm.schedules.tune import tune

    p = _paths(name)
    q = gwq_tvm.quantize(str(p["onnx"]), plan=QuantPlan.load(p["plan"]))
    t0 = time.time()
    tune(q.mod, host_target(), tuning_dir, trials=trials, show_progress=True)
    return time.time() - t0


def tune_fp32(name: str, tuning_dir: Path, trials: int, per_task: int = 64) -> None:
    """MetaSchedule-tune the float program of ``name`` (batch 1) into ``tuning_dir``.

    ``per_task`` caps each task, so a budget of ``per_task`` times the number of
    tasks (19 for ResNet-18) reaches every conv; without the cap the scheduler
    spends the budget on the first tasks and leaves the rest naive loops.
    """
    from tvm.s_tir import meta_schedule as ms

    from gwq_tvm.runtime import host_target
    from gwq_tvm.schedules.tune import make_builder

    mod = _fp32_module(name)
    ms.relax_integration.tune_relax(mod, {}, host_target(), str(tuning_dir), trials, per_task, builder=make_builder())


def _fp32_module(name: str, fused: bool = True):
    """The float program of ``name`` at batch 1; ``fused``: legalized and fused (what tasks are extracted from).

    ``compile_relax`` wants the unfused module (it fuses the same way itself).
    """
    from tvm import relax

    import gwq_tvm
    from gwq_tvm.runtime import host_target
    from gwq_tvm.schedules.tune import specialize_batch

    mod = specialize_batch(gwq_tvm.load_model(str(_paths(name)["onnx"])).mod, 1)
    if not fused:
        return mod
    with host_target():
        return relax.get_pipeline("zero")(mod)


# --- measurement (worker process, one thread count) ------------------------
SLOW_CELL_S = 60.0
"""A cell whose rounds would take longer than this (the naive-loop TVM fp32 baseline) is timed in 2 rounds."""
#: timed calls of one engine per round, and untimed calls before them.  One call per round measured every engine
#: cold (caches evicted by the previous engine, 2-13x on the small models); a short burst after two untimed calls
#: measures the engine as a user's inference loop sees it.
CALLS_PER_ROUND, REWARM = 5, 2
#: least seconds of untimed calls before the timed ones (besides ``REWARM`` calls): after the pause the first call
#: of a 0.07 ms program took 0.29-0.40 ms here, and two calls do not cover that for the small models.
REWARM_S = 0.02
#: pause before each engine's turn, at every thread count.  Each ORT session keeps its own pool, and pools
#: busy-wait after a run: back to back, ORT int8 at 2 threads took 19.7 ms on ResNet-18 against 12.8 ms at 1, its
#: second core held by the ORT fp32 session's spinning worker.  At 1 thread there is no pool, but the pause is kept
#: there too so that both thread counts are timed alike: on this VM a pause moves a small program's whole process
#: into a slower state (the bundled MobileNetV3, serial kernels, 1 thread: 0.14 ms back to back in 4 of 4
#: processes, 0.17-0.21 ms with the pause in 4 of 4), and a pause at 2 threads only made the 2-thread column of
#: the small models look slower than the 1-thread one (session 23; README, kernels_bench section).
SETTLE_S = 0.5


def _tvm_runner(ex, x):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    arg = tvm.runtime.tensor(np.ascontiguousarray(x))
    return lambda: vm["main"](arg)


def _gwq_candidates(name: str, x, tuning_dir, fp32_dir):
    import tvm

    import gwq_tvm
    from gwq_tvm.plan.quantplan import QuantPlan
    from gwq_tvm.runtime import host_target
    from gwq_tvm.schedules.tune import compile_tuned

    p, target = _paths(name), host_target()
    q = gwq_tvm.quantize(str(p["onnx"]), plan=QuantPlan.load(p["plan"]))
    qg = gwq_tvm.quantize(str(p["onnx"]), plan=QuantPlan.load(p["plan_gwq"]))
    out = {
        "gwq-tvm int8 default": lambda: _tvm_runner(gwq_tvm.build(q), x),
        "gwq-tvm GWQ default": lambda: _tvm_runner(gwq_tvm.build(qg), x),
        "TVM fp32 untuned": lambda: _tvm_runner(tvm.compile(gwq_tvm.load_model(str(p["onnx"])).mod, target), x),
    }
    if tuning_dir is not None and (Path(tuning_dir) / "database_tuning_record.json").exists():
        out["gwq-tvm int8 tuned"] = lambda: _tvm_runner(compile_tuned(q.mod, target, tuning_dir), x)
    if fp32_dir is not None and (Path(fp32_dir) / "database_tuning_record.json").exists():
        def fp32_tuned():
            from tvm.s_tir import meta_schedule as ms

            db = ms.database.JSONDatabase(work_dir=str(fp32_dir))
            return _tvm_runner(ms.relax_integration.compile_relax(db, _fp32_module(name, fused=False), target, params=None), x)

        out["TVM fp32 tuned"] = fp32_tuned
    return out


def _ort_candidates(name: str, x, threads: int):
    import onnxruntime as ort

    p = _paths(name)
    feed = {_input_name(p["onnx"]): x}

    def session(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda: s.run(None, feed)

    return {"ORT fp32": lambda: session(p["onnx"]), "ORT int8": lambda: session(p["ort_int8"])}


def _torch_model(name: str):
    import torch

    if name == "resnet18":
        from resnet18 import resnet18

        return resnet18()
    if name in ZOO_224:
        from gwq_tvm.models import zoo

        return zoo.seeded_module(name, input_shape=(1, 3, 224, 224))
    from gwq_tvm.models.fmnist_mobilenetv3 import FMNISTMobileNetV3
    from gwq_tvm.models.fmnist_resnet import FMNISTResNet

    m = {"bundled": FMNISTResNet, "mobilenetv3": FMNISTMobileNetV3}[name]()
    m.load_state_dict(torch.load(HERE.parent / "gwq_tvm" / "models" / f"{BUNDLED[name]}.pt", weights_only=True))
    return m.eval()


def _torch_candidates(name: str, x, calib):
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    xt = torch.from_numpy(x)

    def eager():
        m = _torch_model(name)
        return lambda: _no_grad(m, xt)

    def fx_int8():
        torch.backends.quantized.engine = "x86"
        m = prepare_fx(_torch_model(name), get_default_qconfig_mapping("x86"), example_inputs=(xt,))
        with torch.no_grad():
            for i in range(0, min(len(calib), 16)):
                m(torch.from_numpy(calib[i : i + 1]))
        qm = convert_fx(m)
        return lambda: _no_grad(qm, xt)

    return {"PyTorch fp32": eager, "PyTorch FX int8": fx_int8}


def _no_grad(m, x):
    import torch

    with torch.no_grad():
        return m(x)


def time_engines(makers: dict, runs: int, label: str, slow_s: float | None = None) -> dict:
    """Build every engine of one row and time them interleaved (:func:`_timing.interleaved`, this module's protocol).

    ``makers`` maps a column to a no-argument function returning the engine's one-inference callable; a column
    whose build or run fails gets ``None`` and one line on stderr.  Returns ``row`` (column -> median ms or None),
    ``runs`` (column -> timed calls), ``load`` (1-minute load average before and after) and ``steal`` (the
    hypervisor's share of CPU time while timing, :func:`_timing.steal_share`).
    """
    from _timing import cpu_jiffies, error_line, interleaved, median_ms, steal_share

    calls, errors = {}, {}
    for col, make in makers.items():
        try:
            calls[col] = make()
        except Exception as err:  # noqa: BLE001 - a failing baseline is reported, not fatal
            errors[col] = error_line(err)
    load, jiffies = os.getloadavg()[0], cpu_jiffies()
    per_round = interleaved(calls, -(-runs // CALLS_PER_ROUND), per_round=CALLS_PER_ROUND, warmup=5, rewarm=REWARM,
                            rewarm_s=REWARM_S, settle_s=SETTLE_S, slow_s=slow_s, slow_rounds=2, errors=errors)
    row = {col: None for col in makers}
    row.update(median_ms(per_round))
    for col, err in errors.items():
        row[col] = None
        print(f"[{label.strip()} {col}] failed: {err}", file=sys.stderr)
    for col, value in row.items():
        print(f"{label} {col:22s} {value}", file=sys.stderr, flush=True)
    return {"row": row, "runs": {col: len(v) * CALLS_PER_ROUND for col, v in per_round.items()},
            "load": [load, os.getloadavg()[0]], "steal": steal_share(jiffies, cpu_jiffies())}


def worker(threads: int, runs: int, tuning_dirs: dict, fp32_dirs: dict, out_path: Path, models=MODELS) -> None:
    """Measure every column of each model with ``threads`` threads, the columns interleaved round by round
    (:func:`_timing.interleaved`: every engine sees the same machine load); write JSON to ``out_path``."""
    import torch

    torch.set_num_threads(threads)
    results = {"_runs": {}, "_load": {}, "_steal": {}}
    if threads > 1:
        results["_scaling"] = [core_scaling()]
    for name in models:
        _, calib, x = _model_data(name)
        offered = {**_gwq_candidates(name, x, tuning_dirs.get(name), fp32_dirs.get(name)),
                   **_ort_candidates(name, x, threads), **_torch_candidates(name, x, calib)}
        timed = time_engines({col: offered[col] for col in COLUMNS if col in offered}, runs,
                             f"threads={threads} {name:9s}", slow_s=SLOW_CELL_S)
        results[name] = timed["row"]
        results["_runs"][name], results["_load"][name], results["_steal"][name] = timed["runs"], timed["load"], timed["steal"]
    if threads > 1:
        results["_scaling"].append(core_scaling())
    out_path.write_text(json.dumps(results))


# --- reporting ---------------------------------------------------------------
def combine_processes(measured: list) -> tuple[dict, dict]:
    """Combine worker processes: ``model -> column -> median ms`` over the processes that timed the cell,
    and ``model -> column -> [ms of process 1, 2, ...]`` (``None`` where a process has no value).

    Interleaving cancels the load drift *within* one process; it cannot cancel what differs *between*
    processes (where the allocator put the buffers, which host cores the vCPUs landed on, how much the
    hypervisor took).  On this VM MobileNetV2 at 2 threads took 1.95 to 3.29 ms in four fresh processes
    minutes apart, so one process per thread count decides a 2-thread speed-up by chance.
    """
    values: dict = {}
    for k, m in enumerate(measured):
        for name, row in m.items():
            for col, v in row.items():
                values.setdefault(name, {}).setdefault(col, [None] * len(measured))[k] = v
    results = {name: {col: _median_or_none(v) for col, v in row.items()} for name, row in values.items()}
    return results, values


def _median_or_none(values):
    kept = [v for v in values if v is not None]
    return float(np.median(kept)) if kept else None


def model_gmacs(name: str) -> float:
    """Conv + dense multiply-accumulates of one inference (batch 1), in GMAC."""
    import gwq_tvm
    from gwq_tvm.extract import extract_graph

    g = extract_graph(gwq_tvm.load_model(str(_paths(name)["onnx"])).mod)
    macs = 0
    for n in g.nodes.values():
        if n.kind == "conv2d":  # output elements x (C_in / groups) x kh x kw
            macs += n.elements * int(np.prod(n.weight.shape[1:]))
        elif n.kind == "dense":
            macs += int(np.prod(n.weight.shape))
    return macs / 1e9


def vnni_peak_gmacs(threads: int = 1, number: int = 50) -> float:
    """Measured ``vpdpbusd`` throughput (GMAC/s) of ``threads`` cores: 24 independent accumulators each, data in registers."""
    from gwq_tvm.schedules.vnni import register_vnni_intrinsic

    return intrinsic_peak_gmacs(register_vnni_intrinsic(), "uint8", "int8", 4, threads=threads, number=number)


def intrinsic_peak_gmacs(name: str, a_dtype: str, b_dtype: str, k: int, target=None, rows: int = 12,
                         blocks: int = 2, slots: int = 1, threads: int = 1, number: int = 50) -> float:
    """Measured throughput (GMAC/s) of a ``C[16] += A[k] . B[16, k]`` tensor intrinsic on ``threads`` cores.

    ``rows`` x ``blocks`` tiles of 16 int32 accumulators (as many as the
    register file holds: 24 zmm for VNNI, 6 x 2 ymm for AVX2), the operands in
    L1, the reduction of 4096 steps outermost: the instruction's issue rate, not memory.
    ``slots`` > 1 cycles the operands through that many L1 copies, for an
    intrinsic whose product does not take the accumulator (``vpmaddwd`` +
    ``vpaddd``: LLVM would hoist a loop-invariant product out of the loop).
    ``threads`` > 1 runs one such kernel per thread under one parallel loop
    (the calling process's TVM pool must have that many threads): the aggregate
    rate, which on a VM with oversubscribed host cores is below ``threads`` times
    the 1-thread rate.
    """
    import tvm
    from tvm import s_tir, te

    from gwq_tvm.runtime import host_target

    k_iters = 4096
    a = te.placeholder((slots, rows, k), a_dtype, name="a")
    b = te.placeholder((slots, blocks, 16, k), b_dtype, name="b")
    kk, r = te.reduce_axis((0, k_iters), "k"), te.reduce_axis((0, k), "r")
    c = te.compute((threads, rows, blocks, 16), lambda t, i, o, j: te.sum(
        a[kk % slots, i, r].astype("int32") * b[kk % slots, o, j, r].astype("int32"), axis=[kk, r]), name="c")
    sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
    blk = sch.get_sblock("c")
    t, i, o, j, kl, rr = sch.get_loops(blk)
    sch.reorder(t, kl, i, o, j, rr)
    if threads > 1:  # before the reduction is decomposed: parallel needs the block whole
        sch.parallel(t)
    sch.decompose_reduction(blk, kl)
    sch.tensorize(j, name)
    sch.unroll(i)
    sch.unroll(o)
    lib = tvm.compile(sch.mod, target or host_target()).jit()
    args = [tvm.runtime.tensor(np.ones((slots, rows, k), a_dtype)), tvm.runtime.tensor(np.ones((slots, blocks, 16, k), b_dtype)),
            tvm.runtime.tensor(np.zeros((threads, rows, blocks, 16), "int32"))]
    secs = lib.time_evaluator(lib.entry_name, tvm.cpu(), number=number, repeat=5)(*args).median
    return threads * k_iters * rows * blocks * 16 * k / secs / 1e9


def core_scaling(seconds_per_repeat: float = 0.5) -> dict:
    """The ``vpdpbusd`` peak on 1 and on 2 cores, interleaved over 5 rounds, with the hypervisor's steal meanwhile.

    ``ratio = peak(2 threads) / peak(1 thread)`` bounds the 2-thread speed-up
    any program can reach in this run.  Each measurement runs about
    ``seconds_per_repeat`` x 5 so that bursts of steal are averaged, not missed.
    """
    from _timing import cpu_jiffies, steal_share

    one = vnni_peak_gmacs(1)
    number = max(50, int(seconds_per_repeat / (4096 * 12 * 2 * 16 * 4 / (one * 1e9))))
    ones, twos, steals = [], [], []
    for _ in range(5):
        ones.append(vnni_peak_gmacs(1, number))
        before = cpu_jiffies()
        twos.append(vnni_peak_gmacs(2, number))
        steals.append(steal_share(before, cpu_jiffies()))
    one, two = float(np.median(ones)), float(np.median(twos))
    steal = [s for s in steals if s is not None]
    return {"peak_1_thread_gmacs": one, "peak_2_threads_gmacs": two, "ratio": two / one,
            "steal_during_2_threads": float(np.median(steal)) if steal else None}


def _load_range(meta: dict) -> str:
    """The lowest and highest 1-minute load average seen while timing (before and after each row)."""
    seen = [v for per in meta.get("load_average", {}).values() for pair in per.values() for v in pair]
    return f"{min(seen):.1f}-{max(seen):.1f}" if seen else "n/a"


def write_report(results: dict, meta: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "kernels_bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        "# Fast integer kernels: latency (ms, median, batch 1)",
        "",
        f"Machine: {meta['cpu']} ({meta['mcpu']}); the columns of a row are timed interleaved: each round gives every "
        f"engine in turn (after a {SETTLE_S:g} s pause at every thread count: pools stop spinning) {REWARM} or more "
        f"untimed calls (at least {REWARM_S * 1e3:g} ms of them) and "
        f"{CALLS_PER_ROUND} timed calls, {meta['runs']} timed calls per cell in each of {meta.get('processes', 1)} "
        f"fresh worker processes per thread count (1- and 2-thread processes alternating); a process's latency is "
        f"the median of its round medians (2 rounds for a cell slower than {SLOW_CELL_S:.0f} s in total: "
        f"the naive-loop TVM fp32 baseline), a cell's the median over the processes (their range below and in "
        f"the JSON); load average {_load_range(meta)} while timing; "
        f"measured single-core vpdpbusd peak {meta['vnni_peak_gmacs']:.0f} GMAC/s. "
        f"Ratio = latency / ORT int8 latency (lower is better). Tuned int8: {meta.get('tuning', 'n/a')}.",
        "",
    ]
    for threads, per_model in results.items():
        lines += [f"## {threads} thread(s)", "", "| model | " + " | ".join(COLUMNS) + " |",
                  "|---|" + "---|" * len(COLUMNS)]
        for name, row in per_model.items():
            ort = row.get("ORT int8")
            cells = []
            for col in COLUMNS:
                v = row.get(col)
                cells.append("n/a" if v is None else (f"{v:.3f} ({v / ort:.2f}x)" if ort else f"{v:.3f}"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Throughput of the int8 kernels", "", "| model | GMAC | threads | default GMAC/s | tuned GMAC/s | "
              "% of 1-core VNNI peak (default, 1 thread) | speed-up over 1 thread (default) | hypervisor steal while timing |",
              "|---|---|---|---|---|---|---|---|"]
    one = results.get("1", {})
    for threads, per_model in results.items():
        for name, row in per_model.items():
            g = meta["gmacs"][name]
            d, t = row.get("gwq-tvm int8 default"), row.get("gwq-tvm int8 tuned")
            rate = lambda v: f"{g / (v / 1e3):.0f}" if v else "n/a"  # noqa: E731
            pct = f"{100 * g / (d / 1e3) / meta['vnni_peak_gmacs']:.0f}%" if d and threads == "1" else ""
            d1 = one.get(name, {}).get("gwq-tvm int8 default")
            speedup = f"{d1 / d:.2f}x" if d and d1 and threads != "1" else ""
            st = meta.get("steal", {}).get(threads, {}).get(name)
            lines.append(f"| {name} | {g:.3f} | {threads} | {rate(d)} | {rate(t)} | {pct} | {speedup} | "
                         f"{'' if st is None else f'{100 * st:.0f}%'} |")
    spread = meta.get("process_spread")
    if spread and meta.get("processes", 1) > 1:
        cols = ["gwq-tvm int8 default", "gwq-tvm GWQ default", "ORT int8"]
        scaling = meta.get("core_scaling") or []
        lines += ["", "**Per process pair.** Process k at 1 thread ran just before process k at 2 threads; their "
                  "ratio is that moment's 2-thread speed-up, next to the 2-core `vpdpbusd` ceiling measured in the "
                  "2-thread process (before / after its timing, table below). Interleaving within a process "
                  "cannot cancel what differs between processes.", "",
                  "| model | column | 1 thread, ms per process | 2 threads, ms per process | speed-up per pair |",
                  "|---|---|---|---|---|"]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        for name in spread.get("1", {}):
            for col in cols:
                one, two = spread["1"][name].get(col) or [], spread.get("2", {}).get(name, {}).get(col) or []
                ups = ["n/a" if a is None or b is None else f"{a / b:.2f}x" for a, b in zip(one, two)]
                lines.append(f"| {name} | {col} | {' / '.join(map(fmt, one))} | {' / '.join(map(fmt, two))} | "
                             f"{' / '.join(ups)} |")
        if scaling:
            pairs = [f"{scaling[i]['ratio']:.2f}x / {scaling[i + 1]['ratio']:.2f}x" for i in range(0, len(scaling) - 1, 2)]
            lines += ["", "Ceiling per 2-thread process (before / after): " + "; ".join(
                f"process {k + 1}: {v}" for k, v in enumerate(pairs)) + "."]
    scaling = meta.get("core_scaling")
    if scaling:
        lines += ["", "**The 2-thread ceiling of this run.** The `vpdpbusd` peak on 1 and on 2 cores (one register-resident "
                  "kernel per thread, interleaved over 5 rounds), measured before and after each 2-thread worker's timing. This VM's "
                  "two vCPUs share host cores with other guests: the ratio is the largest 2-thread speed-up any "
                  "compute-bound program could show in this run, and the steal is the share of CPU time the "
                  "hypervisor gave to others while both cores were busy.", "",
                  "| when | 1-thread peak GMAC/s | 2-thread peak GMAC/s | ratio | steal |", "|---|---|---|---|---|"]
        for k, m in enumerate(scaling):
            when = f"process {k // 2 + 1}, {'before' if k % 2 == 0 else 'after'}"
            st = m.get("steal_during_2_threads")
            lines.append(f"| {when} | {m['peak_1_thread_gmacs']:.0f} | {m['peak_2_threads_gmacs']:.0f} | {m['ratio']:.2f}x | "
                         f"{'n/a' if st is None else f'{100 * st:.0f}%'} |")
    (OUT / "kernels_bench.md").write_text("\n".join(lines) + "\n")
    _plot(results)


def _plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(next(iter(results.values())).keys())
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5))
    for ax, name in zip(np.atleast_1d(axes), models):
        width = 0.8 / len(results)
        for k, (threads, per_model) in enumerate(results.items()):
            row = per_model[name]
            vals = [row.get(c) or 0 for c in COLUMNS]
            ax.bar(np.arange(len(COLUMNS)) + k * width, vals, width, label=f"{threads} thread(s)")
        ax.set_xticks(np.arange(len(COLUMNS)) + width / 2)
        ax.set_xticklabels(COLUMNS, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("latency, ms (batch 1)")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "kernels_bench.png", dpi=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=50, help="timed calls per cell in each worker process")
    ap.add_argument("--processes", type=int, default=3,
                    help="worker processes per thread count: a cell's latency is the median of their medians "
                         "(the same program varied by up to 1.6x between fresh processes on this VM)")
    ap.add_argument("--tuning-dir", type=Path, default=CACHE / "tune_resnet18_int8")
    ap.add_argument("--trials", type=int, default=480, help="int8 tuning budget for ResNet-18 (resumes)")
    ap.add_argument("--fp32-tuning-dir", type=Path, default=CACHE / "tune_resnet18_fp32")
    ap.add_argument("--fp32-trials", type=int, default=0, help="fp32 tuning budget, resuming --fp32-tuning-dir (0: no tuning; the column is measured whenever "
                         "the directory holds a database; 1216 gives each of ResNet-18's 19 tasks 64 trials)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--tuning-note", default="", help="how the tuning directory was produced (goes in the report)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tuning_dirs = {"resnet18": args.tuning_dir}
    fp32_dirs = {"resnet18": args.fp32_tuning_dir}  # measured when it holds a database (tuned now or before)
    if args.worker is None:
        OUT.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.worker, args.runs, tuning_dirs, fp32_dirs, args.worker_out, args.models)
        return
    for name in args.models:
        prepare(name)
    tune_secs = tune_int8("resnet18", args.tuning_dir, args.trials) if args.trials > 0 and "resnet18" in args.models else None
    if args.fp32_trials > 0:
        tune_fp32("resnet18", args.fp32_tuning_dir, args.fp32_trials)
    per_process = {str(t): [] for t in args.threads}
    for _ in range(args.processes):  # thread counts alternate, so drift over the run hits both alike
        for threads in args.threads:
            out = CACHE / f"worker_{threads}.json"
            env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
            cmd = [sys.executable, __file__, "--worker", str(threads), "--worker-out", str(out), "--runs", str(args.runs),
                   "--tuning-dir", str(args.tuning_dir), "--fp32-tuning-dir", str(args.fp32_tuning_dir),
                   "--fp32-trials", str(args.fp32_trials), "--models", *args.models]
            subprocess.run(cmd, check=True, env=env)
            per_process[str(threads)].append(json.loads(out.read_text()))
    results, spread, runs_per_cell, load, steal, scaling = {}, {}, {}, {}, {}, []
    for threads, measured in per_process.items():
        results[threads], spread[threads] = combine_processes([{k: v for k, v in m.items() if not k.startswith("_")}
                                                               for m in measured])
        runs_per_cell[threads] = {name: {col: sum(m["_runs"].get(name, {}).get(col, 0) for m in measured)
                                         for col in results[threads][name]} for name in results[threads]}
        load[threads] = {name: [v for m in measured for v in m["_load"].get(name, [])] for name in results[threads]}
        steal[threads] = {name: _median_or_none([m["_steal"].get(name) for m in measured]) for name in results[threads]}
        scaling += [s for m in measured for s in m.get("_scaling", [])]
    from gwq_tvm.runtime import host_target

    meta = {
        "cpu": platform.processor() or platform.machine(), "mcpu": str(host_target().attrs.get("mcpu", "")),
        "runs": args.runs, "runs_per_cell": runs_per_cell, "load_average": load, "vnni_peak_gmacs": vnni_peak_gmacs(),
        "steal": steal, "core_scaling": scaling, "processes": args.processes, "process_spread": spread,
        "gmacs": {name: model_gmacs(name) for name in args.models},
        "tuning": (f"ResNet-18 only, {args.trials} trials budget (resumable DB {args.tuning_dir}); "
                   f"this run spent {tune_secs:.0f} s tuning" if tune_secs is not None else "not tuned in this run")
        + (f"; {args.tuning_note}" if args.tuning_note else ""),
    }
    write_report(results, meta)
    print((OUT / "kernels_bench.md").read_text())


if __name__ == "__main__":
    main()
