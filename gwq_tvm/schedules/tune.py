"""MetaSchedule tuning of the packed integer kernels, with an on-disk, resumable database.

The flow::

    db = tune(q.mod, target, "tune_dir", trials=1000)      # interruptible; rerun to resume
    ex = compile_tuned(q.mod, target, "tune_dir")          # tuned kernels, default schedules elsewhere

* Tasks are the fused kernels of the packed program (the same module
  :func:`gwq_tvm.schedules.compile_integer` compiles), specialised to a fixed
  batch size (MetaSchedule measures static shapes); the batch is stored in
  ``gwq_tune.json`` so :func:`compile_tuned` specialises the same way.
* The cost model is XGBoost (``"xgb"``), the search evolutionary, tasks are
  scheduled by gradient.  Each task's default schedule is measured and
  committed first, so a tuned compile is never slower than the untuned one
  (up to measurement noise).
* The database is TVM's JSON-lines pair (``database_workload.json``,
  ``database_tuning_record.json``): every measured record is appended as one
  line when it finishes, so an interrupted tune keeps all finished records.
  :func:`open_database` drops unreadable lines (a torn last line, a corrupt
  record) with a warning and rewrites the files atomically before TVM reads them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

import tvm
from tvm import relax
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..atomic import write_text
from ..errors import GwqError
from .build import compile_integer, kernel_module
from .default import apply_default_schedule
from .spec import X86_VNNI, KernelSpec, kernel_spec, register_named_intrinsic
from .vnni import STOCK_VNNI_INTRIN, fix_stock_vnni_intrinsic

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
META_FILE = "gwq_tune.json"


# --- the builder (TVM 0.27 bug workaround) ---------------------------------
def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params=None):
    """MetaSchedule ``f_build``: what the stock builder does, minus the slow import.

    TVM 0.27's ``s_tir.meta_schedule.builder.default_build`` imports
    ``tvm.s_tir.tensor_intrin`` in every fresh worker process (~17 s here,
    parsing ~500 TVMScript functions), so with the default 30 s timeout most
    builds time out and tuning keeps almost nothing.  A tensorized candidate
    already carries the intrinsic's implementation inline, so the import is
    not needed to build it.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_aarch64(mod) -> str:
    """MetaSchedule ``f_export`` for aarch64 boards: the candidate as a ``.so`` linked by the cross compiler."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="gwq-cand-"), "candidate.so")
    mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    return path


def _f_export(target: tvm.target.Target | None):
    """The builder's export function for ``target``: ``None`` (host compiler) or a cross-compiling one."""
    from .targets import export_compiler

    if target is None or export_compiler(target) is None:  # also names a missing cross toolchain
        return None
    return export_aarch64


def make_builder(*, max_workers: int | None = None, timeout_sec: float = 60.0,
                 target: tvm.target.Target | None = None) -> ms.builder.LocalBuilder:
    """A ``LocalBuilder`` that uses :func:`build_candidate` (the one place of the builder workaround).

    For a cross target (an aarch64 board) candidates are linked with its cross compiler.
    """
    return ms.builder.LocalBuilder(max_workers=max_workers or os.cpu_count() or 1, timeout_sec=timeout_sec,
                                   f_build=build_candidate, f_export=_f_export(target))


def runner_worker_init() -> None:
    """Start of each local runner worker process: ask for AMX tile data first (refused quietly on other CPUs).

    Candidates and default records of the ``x86-amx`` family run in these
    processes, and a process that did not make the ``arch_prctl`` request
    dies with SIGILL at its first tile instruction
    (:func:`gwq_tvm.schedules.amx.request_amx_permission`).
    """
    from .amx import request_amx_permission

    request_amx_permission()


def make_runner(*, number: int = 3, repeat: int = 3, min_repeat_ms: int = 50, rpc: tuple[str, str] | None = None,
                session_timeout_sec: int = 120):
    """A runner reporting the mean of ``repeat`` timings of ``number`` runs each.

    Parameters
    ----------
    rpc : (str, str), optional
        ``("HOST:PORT", key)`` of a TVM RPC tracker and a board: candidates
        are measured there (``RPCRunner``).  Default: on this machine.
    session_timeout_sec : int
        Per-candidate limit on the board (upload + run).
    """
    config = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                       enable_cpu_cache_flush=False)
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=config, initializer=runner_worker_init)
    from ..remote.tracker import check_key, parse_address

    tracker, key = rpc
    host, port = parse_address(tracker)
    check_key(tracker, key)  # unreachable tracker / unknown key: a clear error now, not failed trials later
    rpc_config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                     session_timeout_sec=session_timeout_sec)
    return ms.runner.RPCRunner(rpc_config=rpc_config, evaluator_config=config, max_workers=1)


# --- MetaSchedule's loggers (TVM 0.27 bug workaround) ------------------------
_MS_LOGGER = "tvm.s_tir.meta_schedule"
_MS_OWN_HANDLERS = (_MS_LOGGER + ".console", _MS_LOGGER + ".file")


@contextlib.contextmanager
def _foreign_log_handlers_detached():
    """Take the handlers MetaSchedule did not create off its logger for the duration, then put them back.

    TVM 0.27's ``meta_schedule.logging.create_loggers`` (run by every
    ``extracted_tasks_to_tune_contexts``) re-lists the handlers already on the
    ``tvm.s_tir.meta_schedule`` logger *by name* in a ``logging.config.dictConfig``:
    an unnamed handler crashes it deep inside (``AttributeError: 'NoneType' object
    has no attribute 'format'``) and a named one it did not define is a
    ``ValueError``.  Such handlers are a user's own, or pytest's: pytest >= 9.2
    attaches its log-capture handlers to non-propagating loggers like this one,
    so the second tune in a test session failed.
    """
    logger = logging.getLogger(_MS_LOGGER)
    foreign = [h for h in logger.handlers if h.get_name() not in _MS_OWN_HANDLERS]
    for h in foreign:
        logger.removeHandler(h)
    try:
        yield
    finally:
        for h in foreign:
            logger.addHandler(h)  # a no-op for one already there


def tune_contexts(tasks, work_dir, **kwargs):
    """``ms.relax_integration.extracted_tasks_to_tune_contexts`` with the logger workaround above.

    Returns TVM's ``(contexts, weights)``; ``kwargs`` go to it unchanged,
    except that without a ``space`` the tasks' kernel family may bring its own
    (:func:`design_space`).
    """
    if "space" not in kwargs and tasks:
        space = design_space(_spec(tasks[0].target))
        if space is not None:
            kwargs["space"] = space
    with _foreign_log_handlers_detached():
        return ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, str(work_dir), **kwargs)


def design_space(spec: KernelSpec):
    """MetaSchedule's space generator for family ``spec``: ``None`` (TVM's own for the target) or, for a family
    whose intrinsic MetaSchedule's stock rules do not know (``spec.tune_intrinsic``: aarch64 i8mm's ``usmmla``),
    TVM's generic LLVM rules after a ``MultiLevelTilingWithIntrin`` that tensorizes with it, as TVM's x86 VNNI
    rule does (``SSRSRS`` tiles, the accumulators written back at the outer two levels)."""
    if not spec.tune_intrinsic or spec.intrinsic is None:
        return None
    tiling = ms.schedule_rule.MultiLevelTilingWithIntrin(
        spec.intrinsic(), "SSRSRS", max_innermost_factor=64,
        reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global"))
    return ms.space_generator.PostOrderApply(
        sch_rules=[tiling, *ms.ScheduleRule.create("llvm")],
        postprocs=[*ms.Postproc.create("llvm"), ms.postproc.RewriteTensorize(vectorize_init_loop=True)],
        mutator_probs=ms.Mutator.create("llvm"))


# --- the database ----------------------------------------------------------
def _atomic_write(path: Path, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))


def _read_lines(path: Path) -> list[str]:
    """The non-blank lines of ``path``; a line that is not UTF-8 becomes ``""`` (unreadable, so dropped as corrupt)."""
    def decode(raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return ""

    return [decode(raw) for raw in path.read_bytes().splitlines() if raw.strip()]


def _valid_workload(line: str) -> bool:
    try:
        ms.database.Workload.from_json(json.loads(line))
        return True
    except Exception:  # noqa: BLE001 - any failure means the line is unusable
        return False


def _valid_record(line: str, workloads: list) -> bool:
    try:
        obj = json.loads(line)
        ms.database.TuningRecord.from_json(obj[1], workloads[int(obj[0])])
        return True
    except Exception:  # noqa: BLE001
        return False


def sanitize_database(work_dir) -> int:
    """Drop unreadable workload/record lines of the JSON database in ``work_dir``; return how many.

    A record is kept when TVM can deserialize it against its workload.  If
    anything was dropped, the files are rewritten atomically (temp file +
    rename) and a warning names the count and where the original files were
    kept: each file rewritten is first copied, byte for byte, to a new
    ``<name>.orig[.N]`` beside it (never over an earlier copy), so a line we
    could not read (a newer TVM's, an intrinsic registered by someone else's
    code) is set aside, not lost.  Workloads are kept in place (records refer
    to them by line index); an unreadable workload line makes its records
    unreadable, and they are dropped.
    """
    work_dir = Path(work_dir)
    wpath, rpath = work_dir / WORKLOAD_FILE, work_dir / RECORD_FILE
    if not wpath.exists():
        return 0
    wlines = _read_lines(wpath)
    workloads = []
    for ln in wlines:
        workloads.append(ms.database.Workload.from_json(json.loads(ln)) if _valid_workload(ln) else None)
    bad_workloads = sum(w is None for w in workloads)
    rlines = _read_lines(rpath) if rpath.exists() else []
    keep = [ln for ln in rlines if _valid_record(ln, workloads)]
    dropped = bad_workloads + len(rlines) - len(keep)
    if dropped:
        rewritten = ([wpath] if bad_workloads else []) + [rpath]
        kept = [_keep_original(p) for p in rewritten if p.exists()]
        warnings.warn(f"tuning database {work_dir}: skipped {dropped} corrupt line(s); the original file(s) are kept as "
                      + ", ".join(str(k) for k in kept), stacklevel=2)
        if bad_workloads:
            # keep line indices stable: replace a broken workload by a copy of a valid one
            filler = next((ln for ln, w in zip(wlines, workloads) if w is not None), None)
            wlines = [ln if w is not None else filler for ln, w in zip(wlines, workloads) if filler is not None]
            _atomic_write(wpath, wlines)
        _atomic_write(rpath, keep)
    return dropped


def _keep_original(path: Path) -> Path:
    """Copy ``path`` to the first free ``<path>.orig``, ``<path>.orig.1``, ... (created exclusively); return it."""
    data = path.read_bytes()
    for k in range(10000):
        copy = path.with_name(path.name + (".orig" if k == 0 else f".orig.{k}"))
        try:
            with open(copy, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return copy
        except FileExistsError:
            continue
    raise GwqError(f"tuning database {path.parent}: 10000 earlier copies of {path.name} are kept there; remove some")


def open_database(work_dir) -> ms.database.JSONDatabase:
    """The tuning database in ``work_dir`` (created if missing), after :func:`sanitize_database`.

    Registers the intrinsics its traces tensorize with: ours (cheap), TVM's
    stock ones (a slow import, VNNI fixed) only when a record uses the stock
    VNNI name.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    records = work_dir / RECORD_FILE
    text = records.read_bytes().decode("utf-8", errors="replace") if records.exists() else ""
    if f'"{STOCK_VNNI_INTRIN}"' in text:
        fix_stock_vnni_intrinsic()
    for name in sorted(set(re.findall(r'"(gwq_[a-z0-9_]+)"', text))):
        register_named_intrinsic(name)  # the narrow, int4, pair and AMX steps carry parameters in their names
    if '"dot_4x4_' in text:  # MetaSchedule's aarch64 (NEON/sdot/udot) intrinsics, registered on import
        import tvm.s_tir.tensor_intrin.arm_cpu  # noqa: F401
    sanitize_database(work_dir)
    return ms.database.JSONDatabase(str(work_dir / WORKLOAD_FILE), str(work_dir / RECORD_FILE), allow_missing=True)


# --- tasks -----------------------------------------------------------------
def check_tunable(target: tvm.target.Target) -> None:
    """MetaSchedule needs the device's core count in the target: raise a clear error without it."""
    if target.attrs.get("num-cores") is None:
        example = json.dumps({**{k: str(v) for k, v in target.export().items() if k in ("kind", "mcpu", "mtriple")},
                              "num-cores": 4})
        raise GwqError(f"tuning needs the device's core count in the target ('num-cores'): {target}; give it as JSON, "
                       f"e.g. --target '{example}'")


def specialize_batch(mod: tvm.IRModule, batch: int) -> tvm.IRModule:
    """Bind a symbolic batch dimension of ``main``'s input to ``batch`` (unchanged when static)."""
    dim = mod["main"].params[0].ty.shape.values[0]
    if isinstance(dim, tvm.tirx.Var):
        return relax.transform.BindSymbolicVars({dim.name: batch})(mod)
    return mod


def extract_tuning_tasks(mod: tvm.IRModule, target: tvm.target.Target, *, batch: int = 1) -> list:
    """MetaSchedule tasks (``ExtractedTask``) of the packed, fused program at batch size ``batch``."""
    fused = kernel_module(specialize_batch(mod, batch), target)
    return ms.relax_integration.extract_tasks(fused, target)


def _spec(target: tvm.target.Target) -> KernelSpec:
    """The kernel family the tasks of ``target`` are packed for (as :func:`packed_fused_module` picks it)."""
    return kernel_spec(target) or X86_VNNI


def _default_schedule(mod: tvm.IRModule, spec: KernelSpec = X86_VNNI):
    """The default schedule of a one-function task module as a traced ``Schedule`` (``None`` if it fails)."""
    sch = tvm.s_tir.Schedule(mod)
    try:
        apply_default_schedule(sch, spec)
    except (RuntimeError, ValueError, TypeError):
        return None
    return sch


def _measure_defaults(tasks, target, database, builder, runner) -> int:
    """Measure each new task's default schedule and commit it as a record; return how many were committed.

    Workloads already in ``database`` (a resumed tune) are skipped.  The
    default records make a tuned compile at least as fast as the untuned one
    and tell :func:`tune` which kernels are worth searching.
    """
    todo = []
    for task in tasks:
        mod = task.dispatched[0]
        sch = None if database.has_workload(mod) else _default_schedule(mod, _spec(target))
        if sch is not None:
            todo.append((mod, sch))
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch in todo]) if todo else []
    measured = []
    for (mod, sch), res in zip(todo, built):
        if res.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
            measured.append((mod, sch, args, ms.runner.RunnerInput(res.artifact_path, "cpu", args)))
    futures = runner.run([m[3] for m in measured]) if measured else []
    committed = 0
    for (mod, sch, args, _), future in zip(measured, futures):
        result = future.result()
        if result.error_msg is None:
            workload = database.commit_workload(mod)
            database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, result.run_secs, target, args))
            committed += 1
    return committed


def _best_latency(task, database) -> float:
    """Best measured mean latency (s) of a task's workload, ``inf`` when none."""
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return float("inf")
    top = database.get_top_k(database.commit_workload(mod), 1)
    return sum(float(v) for v in top[0].run_secs) / len(top[0].run_secs) if top else float("inf")


def _worth_tuning(tasks, database, min_share: float) -> list[int]:
    """Indices of tasks whose weighted best latency is at least ``min_share`` of the whole program's."""
    cost = [t.weight * _best_latency(t, database) for t in tasks]
    finite = [c for c in cost if c < float("inf")]
    total = sum(finite) or 1.0
    return [i for i, c in enumerate(cost) if c == float("inf") or c >= min_share * total]


def _records_per_task(tasks, database) -> list[int]:
    counts = []
    for task in tasks:
        mod = task.dispatched[0]
        counts.append(len(database.get_top_k(database.commit_workload(mod), 1 << 20)) if database.has_workload(mod) else 0)
    return counts


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """tqdm bar over the trials, with the weighted sum of the searched kernels' best latency so far."""

    def __init__(self, total: int, weights: list[float], best: list[float]):
        from tqdm import tqdm

        super().__init__()
        self.weights, self.best = weights, best
        self.bar = tqdm(total=total, desc="tune", unit="trial", dynamic_ncols=True)

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        for res in runner_results:
            if res.error_msg is None and res.run_secs:
                secs = sum(float(s) for s in res.run_secs) / len(res.run_secs)
                self.best[task_id] = min(self.best[task_id], secs)
        self.bar.update(len(measure_candidates))
        known = [w * b for w, b in zip(self.weights, self.best) if b < float("inf")]
        self.bar.set_postfix_str(f"best {1e3 * sum(known):.3f} ms over {len(known)}/{len(self.best)} kernels")


def tune(mod: tvm.IRModule, target: tvm.target.Target, work_dir, *, trials: int = 1000,
         trials_per_task: int | None = None, batch: int = 1, num_trials_per_iter: int = 32,
         max_workers: int | None = None, build_timeout_sec: float = 60.0, min_task_share: float = 0.02,
         population_size: int = 256, genetic_num_iters: int = 2, seed: int | None = None,
         rpc: tuple[str, str] | None = None, show_progress: bool = False) -> ms.database.JSONDatabase:
    """Tune the kernels of a realized integer program with MetaSchedule (XGBoost cost model).

    Parameters
    ----------
    mod : tvm.IRModule
        A realized (not legalized) module, e.g. ``QuantizedModel.mod``.
    target : tvm.target.Target
        Needs ``num-cores`` (the host target from :func:`gwq_tvm.runtime.host_target` has it).
    work_dir : str or os.PathLike
        Database and logs.  Rerunning with the same directory resumes: finished
        records are kept and count against ``trials`` / ``trials_per_task``.
    trials : int
        Total measured candidates over all tasks (including earlier runs).
    trials_per_task : int, optional
        Cap per task (default: ``trials``).
    batch : int
        Batch size the kernels are specialised to (stored for :func:`compile_tuned`).
    num_trials_per_iter : int
        Candidates measured per search round.
    max_workers, build_timeout_sec
        Builder processes and their per-build timeout (:func:`make_builder`).
    min_task_share : float
        Search only kernels whose (use count x default latency) is at least
        this share of the program's; the rest keep their measured default
        schedule.  The search itself costs ~1 min per round per conv kernel
        on 2 cores, so this is what keeps a ResNet-18 tune within minutes.
    population_size, genetic_num_iters
        Evolutionary search size (TVM's defaults are 512 and 4).
    seed : int, optional
    rpc : (str, str), optional
        ``("HOST:PORT", key)``: measure on a board registered at this TVM
        RPC tracker (candidates are linked with the target's cross compiler).
    show_progress : bool
        A tqdm bar with the best-so-far latency (sum over kernels, weighted by use count).

    Returns
    -------
    tvm.s_tir.meta_schedule.database.JSONDatabase
    """
    check_tunable(target)
    work_dir = Path(work_dir)
    builder = make_builder(max_workers=max_workers, timeout_sec=build_timeout_sec, target=target)
    runner = make_runner(rpc=rpc)
    database = open_database(work_dir)
    write_text(work_dir / META_FILE, json.dumps({"batch": batch, "target": str(target)}))
    tasks = extract_tuning_tasks(mod, target, batch=batch)
    _measure_defaults(tasks, target, database, builder, runner)
    per_task = trials_per_task or trials
    done = _records_per_task(tasks, database)
    chosen = [i for i in _worth_tuning(tasks, database, min_task_share) if done[i] < per_task]
    remaining = trials - sum(done)
    if not chosen or remaining <= 0:
        return database
    strategy = ms.search_strategy.EvolutionarySearch(population_size=population_size,
                                                     genetic_num_iters=genetic_num_iters)
    contexts, weights = tune_contexts([tasks[i] for i in chosen], work_dir, strategy=strategy, seed=seed)
    fix_stock_vnni_intrinsic()  # after TuneContext imported tvm.s_tir.tensor_intrin
    callbacks = ms.measure_callback.MeasureCallback.create("default")
    if show_progress:  # best-so-far starts from the measured defaults (or an earlier run's records)
        best = [_best_latency(tasks[i], database) for i in chosen]
        callbacks = list(callbacks) + [_Progress(remaining, list(weights), best)]
    return ms.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=remaining,
        max_trials_per_task=max(1, per_task - min(done[i] for i in chosen)), num_trials_per_iter=num_trials_per_iter,
        builder=builder, runner=runner, database=database, cost_model="xgb", measure_callbacks=callbacks,
        task_scheduler="gradient",
    )


BEST_DIR = "best"
"""Subdirectory of a tuning directory holding one validated winner record per kernel."""


def _measure_interleaved(candidates, target, builder, runner, rounds: int) -> list[float]:
    """Median latency (s) of each ``(mod, args_info)`` candidate over ``rounds`` interleaved runner passes."""
    built = builder.build([ms.builder.BuilderInput(mod, target) for mod, _ in candidates])
    inputs = [ms.runner.RunnerInput(b.artifact_path, "cpu", args) if b.error_msg is None else None
              for b, (_, args) in zip(built, candidates)]
    samples = [[] for _ in candidates]
    for _ in range(rounds):
        live = [(i, x) for i, x in enumerate(inputs) if x is not None]
        for (i, _), future in zip(live, runner.run([x for _, x in live])):
            result = future.result()
            if result.error_msg is None:
                samples[i].append(sum(float(v) for v in result.run_secs) / len(result.run_secs))
    return [sorted(v)[len(v) // 2] if v else float("inf") for v in samples]


def select_best(mod: tvm.IRModule, target: tvm.target.Target, work_dir, *, top_k: int = 2, rounds: int = 5,
                num_threads: int | None = 1, max_workers: int | None = None,
                rpc: tuple[str, str] | None = None) -> ms.database.JSONDatabase:
    """Re-measure each kernel's default schedule against its ``top_k`` tuned records, keep the winner.

    A tuning database keeps every record and compiles with the lowest
    latency ever measured, so one lucky measurement on a busy machine (or
    one taken with another thread count) wins forever.  This re-measures the
    contenders side by side (``rounds`` interleaved passes, median) with
    ``num_threads`` runtime threads and writes one record per kernel to
    ``work_dir/best``, which :func:`compile_tuned` prefers.  With ``rpc``
    the contenders are measured on that board (``num_threads`` is then the
    board's own setting).

    Returns
    -------
    tvm.s_tir.meta_schedule.database.JSONDatabase
        The ``best`` database.
    """
    work_dir = Path(work_dir)
    database = open_database(work_dir)
    if num_threads is not None and rpc is None:
        os.environ["TVM_NUM_THREADS"] = str(num_threads)  # inherited by the runner's worker processes
    builder, runner = make_builder(max_workers=max_workers, target=target), make_runner(rpc=rpc)
    best_dir = work_dir / BEST_DIR
    for name in (WORKLOAD_FILE, RECORD_FILE):
        (best_dir / name).unlink(missing_ok=True)
    best = open_database(best_dir)
    for task in extract_tuning_tasks(mod, target, batch=tuned_batch(work_dir)):
        tmod = task.dispatched[0]
        args = ms.arg_info.ArgInfo.from_prim_func(tmod["main"])
        contenders = []  # (trace, scheduled module)
        default = _default_schedule(tmod, _spec(target))
        if default is not None:
            contenders.append((default.trace, default.mod))
        if database.has_workload(tmod):
            for rec in database.get_top_k(database.commit_workload(tmod), top_k):
                cand = rec.as_measure_candidate()
                contenders.append((rec.trace, cand.sch.mod))
        if not contenders:
            continue
        secs = _measure_interleaved([(m, args) for _, m in contenders], target, builder, runner, rounds)
        k = min(range(len(secs)), key=secs.__getitem__)
        if secs[k] < float("inf"):
            best.commit_tuning_record(ms.database.TuningRecord(contenders[k][0], best.commit_workload(tmod), [secs[k]],
                                                               target, args))
    return best


def tuned_batch(work_dir) -> int:
    """The batch size a tuning directory was specialised to (1 when not recorded)."""
    meta = Path(work_dir) / META_FILE
    return int(json.loads(meta.read_text()).get("batch", 1)) if meta.exists() else 1


def compile_tuned(mod: tvm.IRModule, target: tvm.target.Target, work_dir) -> relax.VMExecutable:
    """Compile ``mod`` with the tuning records in ``work_dir`` (default schedules where none apply).

    The executable is specialised to the batch size the database was tuned
    for (:func:`tuned_batch`), so the records' workloads match.  The
    validated winners of :func:`select_best` (``work_dir/best``) are used when
    present, else the lowest latency of each kernel in the raw database.
    """
    best = Path(work_dir) / BEST_DIR
    source = best if (best / RECORD_FILE).exists() else Path(work_dir)
    return compile_integer(specialize_batch(mod, tuned_batch(work_dir)), target, database=open_database(source))
