"""The ``gwq-tvm`` command line: argparse -> QuantConfig -> the API; no logic of its own.

Every user error prints ``gwq-tvm: error: <one line>`` and exits with status 2
(:data:`EXIT_USAGE`); any other exception is a bug in gwq-tvm: one line saying
so, exit status 3 (:data:`EXIT_BUG`), and ``--debug`` shows its traceback.
Ctrl-C prints one line and exits 130.  Run as a program (:func:`run`), the
command runs in a forked child, so that a crash in native code (TVM importing
a malformed model, loading a damaged library) is one line too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from .errors import GwqError

EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too; keep it short)
        self.exit(EXIT_USAGE, f"gwq-tvm: error: {message}\n")


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {v}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return v


def _shape(text):
    try:
        return tuple(None if d in ("N", "?", "-1") else int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be comma-separated integers (N for dynamic): {text!r}") from None


#: The options a QuantPlan fixes (argparse dest -> QuantConfig field); ``None`` means "not given".
_PLAN_FIXED = {
    "weight_bits": "weight_bits", "act_bits": "act_bits", "calibration": "calibration", "mode": "mode",
    "weight_granularity": "weight_granularity", "groups": "groups", "tolerance": "tolerance",
    "min_shift_share": "min_shift_share", "sfc_cost": "sfc_cost", "end_bits": "end_bits", "refine_steps": "refine_steps",
    "no_loss_aware": None, "calib": None, "calib_samples": None,
    # PTQ-SL / GDRQ (branch subl)
    "weight_blocks": "weight_blocks", "weight_blocks_fit": "weight_blocks_fit", "reorder_channels": "reorder_channels",
    "block_search": "block_search", "search_metric": "search_metric", "search_rounds": "search_rounds",
    "weight_groups": "weight_groups", "scale_clip": "scale_clip", "scale_clip_k": "scale_clip_k", "act_clip_k": "act_clip_k",
    # ASQ POST weights (branch asq)
    "weights": "weights",
    # zero points (branch zp)
    "symmetric_activations": "symmetric_activations",
    # mixed precision (branch limpq)
    "mixed_precision": "mixed_precision", "size_budget": "size_budget", "bitops_budget": "bitops_budget",
    "importance": "importance", "importance_file": "importance_file", "mp_search": "mp_search",
    "latency_budget": "latency_budget", "latency_table": "latency_table", "latency_target": "latency_target",
    "latency_board": "latency_board",
}


def _blocks(text):
    from .config import parse_blocks
    from .errors import ConfigError

    try:
        return parse_blocks(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_plan_options(args) -> None:
    """A ``--plan`` fixes the quantization: refuse options that would be silently ignored beside it."""
    if getattr(args, "plan", None) is None:
        return
    given = [_option(d) for d in _PLAN_FIXED if getattr(args, d, None) not in (None, False)]
    if given:
        raise GwqError(f"{', '.join(given)} cannot be combined with --plan (the plan fixes the quantization); "
                       "drop them, or make a new plan without --plan")


#: Options that only mean something beside another (dest -> the dests of which one must be given too).
_NEEDS = {"search_metric": ("block_search",), "search_rounds": ("block_search",),
          "weight_blocks_fit": ("weight_blocks", "weight_groups"), "latency_table": ("latency_budget",),
          "latency_target": ("latency_budget",), "latency_board": ("latency_budget",)}


def _config(args, **defaults):
    """The QuantConfig of the options given (the dataclass's defaults, or ``defaults``, for the rest).

    An option given without the one it qualifies (:data:`_NEEDS`) is refused
    rather than silently ignored.
    """
    from .config import QuantConfig

    for dest, partners in _NEEDS.items():
        if getattr(args, dest, None) is not None and not any(getattr(args, d, None) for d in partners):
            raise GwqError(f"{_option(dest)} only applies with {' or '.join(map(_option, partners))}")
    if getattr(args, "mixed_precision", None):
        given = [_option(d) for d in ("weight_bits", "act_bits") if getattr(args, d, None) is not None]
        if given:
            raise GwqError(f"{', '.join(given)} cannot be combined with --mixed-precision (the ILP chooses every "
                           "layer's bits within --size-budget/--bitops-budget)")
    kwargs = {**defaults, **{field: getattr(args, dest) for dest, field in _PLAN_FIXED.items()
                             if field is not None and getattr(args, dest) is not None}}
    return QuantConfig(**kwargs, allow_float_fallback=not args.strict, loss_aware=not args.no_loss_aware)


DEFAULT_CALIB = "bundled:calib"
DEFAULT_CALIB_SAMPLES = 512


def _calibration(args):
    """The calibration inputs the options name (``None`` with a ``--plan``)."""
    if getattr(args, "plan", None):
        return None
    samples = args.calib_samples or DEFAULT_CALIB_SAMPLES
    return _load_data(args.calib or DEFAULT_CALIB, "calibration data", samples)[0]


def _check_outputs(args, *outputs) -> None:
    """Refuse outputs that are directories or any input of the command (:func:`gwq_tvm.atomic.check_outputs`)."""
    from .atomic import check_outputs

    inputs = {what: getattr(args, dest, None) for what, dest in
              (("model", "model"), ("plan", "plan"), ("calibration data", "calib"), ("data", "data"),
               ("test data", "test"), ("module", "module"), ("float model", "against"))}
    if getattr(args, "tuning_db", None):
        from .schedules.tune import RECORD_FILE, WORKLOAD_FILE

        inputs["tuning database"] = Path(args.tuning_db) / RECORD_FILE
        inputs["tuning workloads"] = Path(args.tuning_db) / WORKLOAD_FILE
    check_outputs(outputs, inputs)


def _load_data(path, what, limit=None):
    from .data import fashion_mnist, load_array_file

    if path in ("bundled", "bundled:calib"):
        x, y = fashion_mnist("calib")
    elif path == "bundled:test":
        x, y = fashion_mnist("test")
    elif path == "bundled:train":
        x, y = fashion_mnist("train")
    else:
        x, y = load_array_file(path, what)
    if limit:
        x = x[:limit]
        y = y[:limit] if y is not None else None
    return x, y


def _target(name):
    from .schedules.targets import resolve_target

    return resolve_target(name)


def _print_summary(q, out=None):
    from .report import format_text

    out = out or sys.stdout
    print(f"integer-only: {'yes' if q.integer_only.ok else 'no'}" + ("" if q.integer_only.ok else f"  ({q.integer_only})"), file=out)
    if q.float_ops:
        print(f"float fallback ops: {', '.join(sorted(set(q.float_ops)))}", file=out)
    print(format_text(q.report()), file=out)


def _narrow_weight_hint(plan, target, out=None) -> None:
    """On a family with a faster step for 7-bit weights (x86-avx2's ``vpmaddubsw``), name the layers that miss it."""
    from .schedules.spec import kernel_spec

    spec = kernel_spec(target)
    wide = [name for name, w in plan.layers.items() if w.bits > 7 and w.codebook == "uniform"]
    if spec is not None and spec.narrow is not None and wide:
        print(f"{spec.name}: {len(wide)} of {len(plan.layers)} weight layers have 8-bit weights and run on the widened "
              f"int16 step; --weight-bits 7 puts them on the exact, faster vpmaddubsw step ({spec.narrow.name}; README: "
              "Fast kernels and tuning)", file=out or sys.stdout)


def cmd_compile(args):
    from . import api
    from .schedules.targets import export_compiler
    from .plan.quantplan import QuantPlan

    from .atomic import check_replaceable_module
    from .remote.bench import reference_path

    out = Path(args.output)
    _check_plan_options(args)
    _latency_table(args, args.output)
    plan_out = out.with_suffix(".plan.json")
    # 'compile m.onnx --plan m.plan.json -o m.so' (the README's QAT flow) names the given plan as the plan output:
    # it is left as it is when the plan compiled is that file's, never rewritten
    keep_plan = bool(args.plan) and plan_out.exists() and Path(args.plan).exists() and os.path.samefile(args.plan, plan_out)
    _check_outputs(args, out, *([] if keep_plan else [plan_out]), reference_path(out))
    check_replaceable_module(out)  # before any work; api.export checks it again
    plan = QuantPlan.load(args.plan) if args.plan else None
    calib = _calibration(args)
    t0 = time.time()
    target = _target(args.target)
    fcompile = export_compiler(target)  # a missing cross toolchain is named before any work is done
    q = api.quantize(args.model, calib, _config(args), plan=plan, input_shape=args.input_shape, show_progress=not args.quiet)
    plan = q.plan
    if args.tuning_db:
        from .schedules import tune as T

        db = Path(args.tuning_db)
        if not (db / "database_tuning_record.json").is_file():
            raise GwqError(f"no tuning database in {db} (write one with 'gwq-tvm tune')")
        ex = T.compile_tuned(q.mod, target, db)
        batch = T.tuned_batch(db)  # tuned kernels are specialised to this batch: record it for 'eval'
        if plan.input_shape is not None:
            plan = dataclasses.replace(plan, input_shape=(batch,) + tuple(plan.input_shape[1:]))
    else:
        ex = api.build(q, target)
    reference = api.reference_samples(q, calib, plan.input_shape)
    if keep_plan and json.loads(json.dumps(plan.to_dict())) != json.loads(Path(args.plan).read_text()):
        raise GwqError(f"output {plan_out} is the input plan and this compile changes it (a version 1 plan, or a tuned batch): "
                       "choose another -o")
    api.export(ex, out, None if keep_plan else plan, fcompile=fcompile, reference=reference)  # all files, or none
    _print_summary(q)
    _narrow_weight_hint(plan, target)
    print(f"wrote {out}, {out.with_suffix('.plan.json')} and {reference_path(out).name} ({time.time() - t0:.1f}s)")


def cmd_tune(args):
    from . import api
    from .plan.quantplan import QuantPlan
    from .schedules import tune as T

    _check_plan_options(args)
    work = Path(args.work_dir)
    if work.exists() and not work.is_dir():
        raise GwqError(f"--work-dir {work} is a file, not a directory")
    _check_outputs(args, work / "model.plan.json")
    if (args.rpc_tracker is None) != (args.rpc_key is None):
        raise GwqError("--rpc-tracker and --rpc-key go together (or give neither to tune on this machine)")
    rpc = (args.rpc_tracker, args.rpc_key) if args.rpc_tracker else None
    _latency_table(args, work / "model.plan.json")
    target = _target(args.target)
    T.check_tunable(target)
    plan = QuantPlan.load(args.plan) if args.plan else None
    calib = _calibration(args)
    q = api.quantize(args.model, calib, _config(args), plan=plan, input_shape=args.input_shape, show_progress=not args.quiet)
    work.mkdir(parents=True, exist_ok=True)
    q.plan.save(work / "model.plan.json")  # the records belong to this plan's program
    t0 = time.time()
    try:
        T.tune(q.mod, target, work, trials=args.trials, batch=args.batch, rpc=rpc, show_progress=not args.quiet)
        T.select_best(q.mod, target, work, num_threads=args.threads, rpc=rpc)
    except KeyboardInterrupt:
        print(f"gwq-tvm: interrupted; every finished record is kept in {work}: run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    print(f"tuned in {time.time() - t0:.0f}s; database in {work}")
    tgt = "" if args.target in (None, "host") else f" --target {args.target}"
    print(f"compile with: gwq-tvm compile {args.model} --plan {work / 'model.plan.json'} --tuning-db {work}{tgt} -o model.so")


def _importance_file(args, calib):
    """``plan --mixed-precision``: the indicator file to read, and the one to write after planning.

    ``--importance learned`` trains LIMPQ's indicators (one joint QAT run on
    ``--train-data``) unless ``--importance-file`` (default ``<plan stem>.importance.json``)
    already holds them.  For ``proxy``/``hessian`` a missing ``--importance-file``
    is written from the measured indicators, so that later budgets reuse them.
    Returns ``(read, write)`` paths (either may be ``None``).
    """
    kind = args.importance or "proxy"
    if getattr(args, "uniform_passes", False) and not (getattr(args, "mixed_precision", None) and kind == "learned"):
        raise GwqError("--uniform-passes is an option of the learned indicators' joint run: give it with "
                       "--mixed-precision --importance learned")
    if not getattr(args, "mixed_precision", None):
        return None, None
    path = Path(args.importance_file) if args.importance_file else None
    if kind != "learned":
        return (path, None) if path is None or path.exists() else (None, path)
    path = path or Path(args.output).with_name(Path(args.output).name.removesuffix(".json").removesuffix(".plan") + ".importance.json")
    if path.exists():
        if getattr(args, "uniform_passes", False):
            from .qat.importance import load_importance

            settings = load_importance(path).get("settings")
            if not (isinstance(settings, dict) and settings.get("uniform_passes") is True):
                raise GwqError(f"{path} holds indicators trained without --uniform-passes: remove it, or name another "
                               "--importance-file, to train them with the passes")
        return path, None
    try:
        from .qat import TrainConfig
        from .qat.importance import learn_importance, save_importance
    except ImportError as err:
        raise GwqError(f"--importance learned needs torch ({err}): pip install 'gwq-tvm[torch]'") from None
    _check_outputs(args, path)
    args.importance_file = str(path)  # validate the rest of the options before training
    cfg = _config(args)
    x, y = _load_data(args.train_data, "training data", args.train_limit)
    from .qat.importance import INDICATOR_SCALE_LR

    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                       scale_lr=args.scale_lr if args.scale_lr is not None else INDICATOR_SCALE_LR)
    log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))  # noqa: E731
    rec = learn_importance(args.model, calib, x, y, cfg, tcfg, input_shape=args.input_shape, log=log,
                           uniform_passes=args.uniform_passes)
    save_importance(path, rec)
    print(f"wrote {path} (learned indicators: {rec['settings']['steps']} steps, {rec['seconds']:.0f} s)")
    return path, None


def _latency_table(args, output) -> None:
    """``--latency-budget``: the latency target (``--target`` when given), the board (tune's ``--rpc-tracker``/
    ``--rpc-key`` when given) and the table file (default ``<output stem>.latency.json``), checked as an output when new."""
    if not getattr(args, "latency_budget", None):
        return
    target = getattr(args, "target", None)
    if target not in (None, "host"):  # compile --target T: the latencies are T's
        if args.latency_target not in (None, target):
            raise GwqError(f"--latency-target {args.latency_target} differs from --target {target}: the latency "
                           "budget is for the target the model is compiled for")
        args.latency_target = target
    if not args.latency_board and getattr(args, "rpc_key", None) and getattr(args, "rpc_tracker", None):
        args.latency_board = f"{args.rpc_key}@{args.rpc_tracker}"  # tune on a board: its latencies are that board's
    if not args.latency_table:
        out = Path(output)
        args.latency_table = str(out.with_name(out.name.removesuffix(".json").removesuffix(".plan").removesuffix(".so")
                                               + ".latency.json"))
    if not Path(args.latency_table).exists():
        _check_outputs(args, args.latency_table)
        if args.latency_target not in (None, "host") and not args.latency_board:
            raise GwqError(f"latencies for target {args.latency_target} are measured on its board: give --latency-board "
                           f"KEY@HOST:PORT, or a --latency-table measured there ({args.latency_table} does not exist)")


def cmd_plan(args):
    from . import api

    _check_outputs(args, args.output)
    _latency_table(args, args.output)
    calib = _calibration(args)
    read, write = _importance_file(args, calib)
    args.importance_file = str(read) if read is not None else None
    if write is not None:
        _check_outputs(args, write)
    q = api.quantize(args.model, calib, _config(args), input_shape=args.input_shape, show_progress=not args.quiet)
    q.plan.save(args.output)
    _print_summary(q)
    print(f"wrote {args.output}")
    if write is not None:
        from .qat.importance import record, save_importance

        mp = q.plan.provenance["mixed_precision"]
        save_importance(write, record(mp["importance_kind"], q.graph, _config(args), mp["importance"]["weights"],
                                      mp["importance"]["tensors"], seconds=mp["importance_seconds"],
                                      settings=mp["importance_source"]))
        print(f"wrote {write} ({mp['importance_kind']} indicators: rerun with --importance-file {write} for other budgets)")


def _write_json(path, payload) -> None:
    """Write ``payload`` as JSON at ``path`` atomically (:func:`gwq_tvm.atomic.write_text`)."""
    from .atomic import write_text

    write_text(path, json.dumps(payload, indent=1) + "\n")


def _rpc(args):
    if (args.rpc_tracker is None) != (args.rpc_key is None):
        raise GwqError("--rpc-tracker and --rpc-key go together (or give neither to run on this machine)")
    return args.rpc_tracker, args.rpc_key


def cmd_eval(args):
    from . import api
    from .plan.quantplan import QuantPlan

    import numpy as np

    from .calibration import check_batch, check_labels, input_range_warning

    if not Path(args.module).is_file():
        raise GwqError(f"module not found: {args.module}")
    if args.json:
        _check_outputs(args, args.json)
    x, y = _load_data(args.data, "evaluation data", args.limit)
    plan_path = Path(args.module).with_suffix(".plan.json")
    plan = QuantPlan.load(plan_path) if plan_path.is_file() else None
    shape = plan.input_shape if plan is not None else None
    x = check_batch(x, shape or (None,) + tuple(np.shape(x)[1:]), "evaluation data")
    note = input_range_warning(x, plan) if plan is not None else None
    if note:
        warnings.warn(note, stacklevel=1)
    tracker, key = _rpc(args)
    if args.against is not None:
        t0 = time.time()
        fid = api.eval_against(args.module, args.against, x, y, tracker=tracker, key=key, batch=args.batch,
                               timeout=args.timeout, show_progress=not args.quiet)
        where = "this machine" if tracker is None else f"board '{key}' via tracker {tracker}"
        print(f"ran {len(x)} samples ({args.module} on {where}, {args.against} here) in {time.time() - t0:.1f}s")
        print(fid.summary())
        if args.json:
            _write_json(args.json, {"module": str(args.module), "against": str(args.against), "data": args.data,
                                    "device": "local" if tracker is None else f"{key}@{tracker}", **fid.to_dict()})
            print(f"wrote {args.json}")
        return
    if tracker is not None or args.json:
        raise GwqError("--rpc-tracker and --json need --against MODEL.onnx (the float model to compare with)")
    if y is not None:
        check_labels(y, len(x))  # before running; their range is checked against the model's outputs
    shape = shape or (None,) + x.shape[1:]
    vm = api.load_executable(args.module)
    t0 = time.time()
    logits = api.predict(vm, x, shape, batch=args.batch, show_progress=not args.quiet)
    print(f"ran {len(x)} samples in {time.time() - t0:.1f}s; output shape {logits.shape}")
    if y is not None:
        print(f"accuracy: {api.accuracy(logits, y) * 100:.2f}%")


def cmd_export_qdq(args):
    from . import api
    from .export_qdq import EXPLANATION, export_qdq, host_has_vnni, ort_agreement
    from .plan.quantplan import QuantPlan

    from .calibration import check_batch, check_labels

    _check_outputs(args, args.output)
    plan = QuantPlan.load(args.plan)
    q = api.quantize(args.model, plan=plan)  # refuses a plan made for another model
    if not args.no_check:  # the sample inputs are checked before the file is written
        x, y = _load_data(args.data, "sample inputs", args.limit)
        x = check_batch(x, plan.input_shape or q.float_model.input_shape, "sample inputs")
        if y is not None:
            check_labels(y, len(x))
    out = export_qdq(plan, args.model, args.output, q.graph, weight_type=args.weight_type)
    print(f"wrote {out} (QDQ, {args.weight_type} weights, scales of plan {plan.fingerprint})")
    if args.no_check:
        return
    fid = ort_agreement(q, out, x, y)
    print(f"ONNX Runtime on the QDQ model against the gwq-tvm integer program ({fid.samples} samples):")
    print(fid.summary("gwq-tvm integer", "ORT QDQ"))
    print(f"why they can differ: {EXPLANATION}")
    if args.weight_type == "int8" and not host_has_vnni():
        print("note: this CPU has no VNNI, where ORT's u8s8 int8 kernels saturate int16 pair sums; "
              "--weight-type uint8 stores the same weights for its u8u8 kernels")


def cmd_bench(args):
    from .remote.bench import bench_module

    _rpc(args)
    where = f"board '{args.rpc_key}' via tracker {args.rpc_tracker}" if args.rpc_tracker else "this machine"
    print(f"running {args.module} on {where} ...", file=sys.stderr)
    if args.json:
        _check_outputs(args, args.json)
    result = bench_module(args.module, tracker=args.rpc_tracker, key=args.rpc_key, repeat=args.repeat,
                          number=args.number, threads=args.threads, timeout=args.timeout)
    print(result.summary())
    if args.json:
        _write_json(args.json, result.to_dict())
        print(f"wrote {args.json}")
    if result.checked and not result.bit_exact:
        raise GwqError("the outputs differ from the host reference of the integer program")


def cmd_board(args):
    from .remote import board as B

    if args.action == "start":
        if args.emulated is None:
            raise GwqError("gwq-tvm starts emulated boards only (--emulated aarch64); on a real board run "
                           "'python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY' (see the README)")
        running = B.start_board(args.emulated, tracker_port=args.tracker_port, key=args.key, timeout=args.timeout,
                                log=lambda line: print(line, file=sys.stderr))
        print(f"board '{running.key}' is up: --rpc-tracker {running.tracker_address} --rpc-key {running.key}")
        port = "" if args.tracker_port == 9190 else f" --tracker-port {args.tracker_port}"
        print(f"stop it with: gwq-tvm board stop{port}" + (f" --key {args.key}" if args.key else ""))
    elif args.action == "stop":
        boards = [b for b in B.running_boards(args.emulated or "aarch64")
                  if (args.key is None or b.key == args.key) and b.tracker[1] == args.tracker_port]
        for b in boards:
            B.stop_board(b)
            print(f"stopped board '{b.key}' (tracker {b.tracker_address})")
        if not boards:
            print("no emulated board started by gwq-tvm is running")
    else:
        boards = B.running_boards(args.emulated or "aarch64")
        for b in boards:
            print(f"board '{b.key}': tracker {b.tracker_address}, server pid {b.server_pid}")
        if not boards:
            print("no emulated board started by gwq-tvm is running")


def cmd_report(args):
    from . import api
    from .report import write_html

    from .calibration import check_batch

    _check_outputs(args, args.output, Path(args.output).with_suffix(".json"))
    if args.data is not None and not args.layer_error:
        raise GwqError("--data names the --layer-error inputs: give --layer-error too, or drop --data")
    _check_plan_options(args)
    plan = None
    if args.plan:
        from .plan.quantplan import QuantPlan

        plan = QuantPlan.load(args.plan)
    calib = _calibration(args)
    data = calib if args.data is None else _load_data(args.data, "layer-error data")[0]
    q = api.quantize(args.model, calib, _config(args), plan=plan, input_shape=args.input_shape, show_progress=not args.quiet)
    report = q.report()
    if args.layer_error:
        from .layer_error import format_layer_error, layer_error

        data = check_batch(data, q.plan.input_shape or q.float_model.input_shape, "layer-error data")
        report["layer_error"] = layer_error(q, data, samples=args.samples)
    path = write_html(report, q, args.output)
    _print_summary(q)
    if args.layer_error:
        print(format_layer_error(report["layer_error"]))
    print(f"wrote {path} and {path.with_suffix('.json')}")


def cmd_train(args):
    from . import api
    from .plan.quantplan import QuantPlan

    try:
        from .qat import QATModel, TrainConfig, clip_options, evaluate, export_qat, train
    except ImportError as err:
        raise GwqError(f"gwq-tvm train needs torch ({err}): pip install 'gwq-tvm[torch]'") from None
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, scale_lr=args.scale_lr,
                       distill=args.distill, seed=args.seed)
    out = Path(args.output)
    _check_plan_options(args)
    _check_outputs(args, out, out.with_suffix(".plan.json"))
    adaptive = None
    if args.adaptive_step is not None:  # ASQ: "all" (the flag alone) or a comma list of tensors / conv layers
        adaptive = "all" if args.adaptive_step == "all" else [n.strip() for n in args.adaptive_step.split(",") if n.strip()]
        if not adaptive:
            raise GwqError(f"--adaptive-step {args.adaptive_step!r} names no layer (give the flag alone for every "
                           "candidate tensor, or a comma list of conv layers)")
    x, y = _load_data(args.data, "training data", args.limit)
    plan = QuantPlan.load(args.plan) if args.plan else None
    calib = _calibration(args)
    cfg = _config(args, mode="gwq")
    if plan is None:  # QAT trains symmetric activations (QATModel refuses zero points)
        cfg = dataclasses.replace(cfg, symmetric_activations=True)
    q = api.quantize(args.model, calib, cfg, plan=plan, input_shape=args.input_shape, show_progress=not args.quiet)
    # GDRQ: filter groups (--weight-groups) come with the plan; Scale-Clip (--scale-clip, --scale-clip-k,
    # --act-clip-k, or the given plan's recorded config) is trained with the weights
    model = QATModel(q.graph, q.plan, **clip_options(plan.config if plan is not None else cfg), adaptive_step=adaptive)
    work_dir = Path(args.work_dir) if args.work_dir else out.with_name(out.stem + ".qat")
    test = _load_data(args.test, "test data") if args.test else None
    if test is not None and test[1] is not None:
        print(f"PTQ accuracy (fake-quant): {evaluate(model, *test) * 100:.2f}%")
    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        train(model, x, y, tcfg, work_dir=work_dir, show_progress=not args.quiet, log=log)
    except KeyboardInterrupt:
        print(f"gwq-tvm: interrupted; finished epochs are kept in {work_dir / 'checkpoint.pt'}: "
              "run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    if test is not None and test[1] is not None:
        print(f"QAT accuracy (fake-quant): {evaluate(model, *test) * 100:.2f}%")
    onnx_path, plan_path = export_qat(model, out)
    print(f"wrote {onnx_path} and {plan_path}")
    print(f"compile it with: gwq-tvm compile {onnx_path} --plan {plan_path} -o {onnx_path.with_suffix('.so')}")


def cmd_demo(args):
    from .demo import run_demo

    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise GwqError(f"--out-dir {args.out_dir} is a file, not a directory")
    run_demo(out_dir=Path(args.out_dir), calib_samples=args.calib_samples, limit=args.limit, quiet=args.quiet,
             model_name=args.model)


def _add_quant_options(p):
    # defaults are None ("not given", so that --plan can refuse them); QuantConfig holds the real defaults
    p.add_argument("--weight-bits", type=int, default=None, help="weight bit-width, 2-8 (default 8)")
    p.add_argument("--act-bits", type=int, default=None, help="activation bit-width, 2-8 (default 8)")
    p.add_argument("--calibration", default=None, help="max | percentile | mse (default mse)")
    p.add_argument("--mode", default=None, help="per-layer | pot | gwq (default per-layer; train: gwq)")
    p.add_argument("--groups", type=int, default=None, help="gwq: at most K groups (shared mantissas; default 4)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="gwq: fewest multiplies within this added error (noise/signal power summed over tensors)")
    p.add_argument("--min-shift-share", type=float, default=None,
                   help="gwq: the grouping closest to the float model on the calibration samples (its integer "
                        "program's softmax KL) with at least this fraction of SFC elements as shifts, e.g. 0.75 (needs torch)")
    p.add_argument("--sfc-cost", type=float, default=None,
                   help="gwq: weight of the multiply share against the added error (default 0.05; 0 = error only)")
    p.add_argument("--no-loss-aware", action="store_true",
                   help="gwq: weigh every tensor's error alike (skip the output-sensitivity run)")
    p.add_argument("--weight-granularity", default=None, help="per-channel | per-tensor (default per-channel)")
    p.add_argument("--weights", default=None,
                   help="uniform (default) | post: conv/dense weights on the levels {0, ±alpha_c*sqrt(2)**-i} "
                        "(ASQ POST, post-training; needs --weight-bits 2-5; layers at more bits stay uniform)")
    p.add_argument("--end-bits", type=int, default=None,
                   help="bits of the model input and of the first and last layers' weights (the usual low-bit protocol)")
    p.add_argument("--symmetric-activations", action="store_true", default=None,
                   help="keep every activation symmetric (no zero points; by default W8A8 gives asymmetric tensors "
                        "such as swish outputs uint8 with a zero point)")
    p.add_argument("--strict", action="store_true", help="fail instead of keeping unsupported ops in float")
    p.add_argument("--input-shape", type=_shape, default=None, help="e.g. N,3,224,224 for models without static shapes")
    p.add_argument("--calib-samples", type=_positive_int, default=None, help="calibration samples used (default 512)")
    p.add_argument("--refine-steps", type=int, default=None,
                   help="refine the plan's scales on the calibration samples for N steps, weights frozen (needs torch; default 0)")
    m = p.add_argument_group("mixed precision (LIMPQ's ILP over per-layer bits)")
    m.add_argument("--mixed-precision", action="store_true", default=None,
                   help="choose weight bits (2,3,4,8) per layer and activation bits (4,8) per tensor by an ILP")
    m.add_argument("--size-budget", default=None, metavar="BYTES|P%",
                   help="packed weight bytes (bits*count/8), absolute or a percentage of W8A8, e.g. 60%%")
    m.add_argument("--bitops-budget", default=None, metavar="BITOPS|P%",
                   help="BitOps per sample (MACs*w_bits*a_bits), absolute or a percentage of W8A8")
    m.add_argument("--importance", default=None, choices=("proxy", "learned", "hessian"),
                   help="proxy (default): output divergence of each layer/tensor alone at each width on the "
                        "calibration images; learned: LIMPQ's step sizes from one joint QAT run (plan trains them, "
                        "or give --importance-file); hessian: HAWQ's Hessian trace x quantization perturbation")
    m.add_argument("--importance-file", default=None, metavar="JSON",
                   help="indicators of an earlier run (plan writes them): the ILP reruns for any budget at once")
    m.add_argument("--latency-budget", default=None, metavar="TIME|P%",
                   help="predicted batch-1 latency on this machine or --latency-board, e.g. 0.8ms or 103%% of the measured W8A8 program "
                        "(each layer's int8 and packed-int4 kernels are measured; needs static shapes)")
    m.add_argument("--latency-table", default=None, metavar="JSON",
                   help="keep the measured latencies here (default <output stem>.latency.json); an existing table "
                        "of this model and target is read instead of measuring again")
    m.add_argument("--latency-target", default=None, metavar="TARGET",
                   help="plan: the target the latency budget is for (default this machine; compile takes --target); "
                        "a preset or TVM target JSON, measured on --latency-board")
    m.add_argument("--latency-board", default=None, metavar="KEY@HOST:PORT",
                   help="measure the latency table on the board registered as KEY at the RPC tracker HOST:PORT "
                        "(kernels cross-compiled for the latency target)")
    m.add_argument("--mp-search", default=None, choices=("ilp", "greedy"),
                   help="ilp (default) | greedy: lower the least sensitive layer until the budgets hold (a baseline)")
    g = p.add_argument_group("sub-layerwise weights (PTQ-SL) and distribution reshaping (GDRQ)")
    g.add_argument("--weight-blocks", type=_blocks, default=None, metavar="NOUTxNIN",
                   help="one weight scale per block of the (C_out, C_in/groups*kh*kw) weight: 1x1 per-tensor, Cx1 "
                        "per-channel, e.g. 4x2 (input blocks sum int32 partial accumulators)")
    g.add_argument("--weight-blocks-fit", default=None, help="strict (default: a block shape that does not divide a "
                   "layer is an error) | gcd (such a layer uses gcd(NOUT, C_out) x gcd(NIN, K))")
    g.add_argument("--reorder-channels", action="store_true", default=None,
                   help="sort each layer's output channels by weight range into the blocks")
    g.add_argument("--block-search", action="store_true", default=None,
                   help="search each block scale (delta * alpha, alpha in [0.1, 2]) on the layer-output error")
    g.add_argument("--search-metric", default=None, help="l2 (default) | cosine | weighted-l2")
    g.add_argument("--search-rounds", type=int, default=None, help="rounds of the alternating block/activation search (default 2)")
    g.add_argument("--weight-groups", type=int, default=None, metavar="G",
                   help="GDRQ: G groups of output filters per layer, one step each (folded into the SFC)")
    g.add_argument("--scale-clip", default=None, help="GDRQ Scale-Clip of the weights at k*sigma: std | mean-abs")
    g.add_argument("--scale-clip-k", type=float, default=None, help="the k of --scale-clip (default: chosen per tensor)")
    g.add_argument("--act-clip-k", type=float, default=None, help="GDRQ: clip activations at k*sigma too")


def make_parser() -> argparse.ArgumentParser:
    from .data import BUNDLED_MODELS

    parser = _Parser(prog="gwq-tvm", description="Group-wise integer-only quantization of CNNs with TVM.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("compile", help="quantize and compile a model to an integer-only .so")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--calib", default=None, help=".npy/.npz calibration inputs (default: bundled Fashion-MNIST)")
    p.add_argument("--plan", help="use this QuantPlan JSON instead of calibrating")
    p.add_argument("-o", "--output", required=True, help="output .so (the plan is written beside it)")
    p.add_argument("--target", default="host",
                   help="'host' (default), a preset (rpi4, rpi5, cortex-a76, neoverse-n1, aarch64-neon, aarch64-dotprod, aarch64-i8mm, graviton3, x86-64, ...), "
                        "or a TVM target JSON; aarch64 targets export through aarch64-linux-gnu-gcc")
    p.add_argument("--tuning-db", default=None, help="apply the MetaSchedule records 'gwq-tvm tune' wrote to this directory")
    _add_quant_options(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("tune", help="tune the integer kernels with MetaSchedule (XGBoost cost model); resumable")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--calib", default=None, help="calibration inputs (default: bundled:calib)")
    p.add_argument("--plan", help="tune the program of this QuantPlan instead of calibrating one")
    p.add_argument("--work-dir", required=True, help="database directory (rerun with the same one to resume)")
    p.add_argument("--trials", type=_positive_int, default=200, help="measured candidates over all kernels (default 200)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size the kernels are tuned for (default 1)")
    p.add_argument("--threads", type=_positive_int, default=1, help="runtime threads when picking the best records (default 1)")
    p.add_argument("--target", default="host", help="'host' (default), a preset (rpi4, cortex-a76, ...) or a TVM target JSON")
    p.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                   help="measure candidates on a board registered at this TVM RPC tracker (cross-compiled for --target)")
    p.add_argument("--rpc-key", default=None, metavar="KEY", help="the board's key at the tracker")
    _add_quant_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("bench", help="run a compiled .so on a board (RPC tracker) or here: bit-exact check, median/p90 latency")
    p.add_argument("module", help="a .so written by 'gwq-tvm compile' (its .plan.json and .ref.npz beside it)")
    p.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="TVM RPC tracker (default: run on this machine)")
    p.add_argument("--rpc-key", default=None, metavar="KEY", help="the board's key at the tracker")
    p.add_argument("--repeat", type=_positive_int, default=50, help="timing samples (default 50)")
    p.add_argument("--number", type=_positive_int, default=1, help="runs averaged per sample (default 1)")
    p.add_argument("--threads", type=_positive_int, default=None, help="runtime threads on the device")
    p.add_argument("--timeout", type=_positive_float, default=300.0,
                   help="seconds for the whole remote job; past it the job is killed (default 300)")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("board", help="start/stop/list an emulated aarch64 board registered with a local RPC tracker")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--emulated", default=None, metavar="ARCH", help="aarch64: qemu-user + aarch64 Python + TVM runtime")
    p.add_argument("--tracker-port", type=_positive_int, default=9190,
                   help="tracker port on 127.0.0.1; one is started if none listens (default 9190)")
    p.add_argument("--key", default=None, help="the board's key (default: the architecture)")
    p.add_argument("--timeout", type=_positive_float, default=180.0, help="seconds to wait for the board to register")
    p.set_defaults(func=cmd_board)

    p = sub.add_parser("plan", help="calibrate and write a QuantPlan JSON without compiling")
    p.add_argument("model")
    p.add_argument("--calib", default=None, help="calibration inputs (default: bundled:calib)")
    p.add_argument("-o", "--output", required=True)
    t = p.add_argument_group("learned importance (--mixed-precision --importance learned)")
    t.add_argument("--train-data", default="bundled:train", help="labelled training .npz for the indicators' joint QAT run "
                   "(default bundled:train, Fashion-MNIST 60k)")
    t.add_argument("--train-limit", type=_positive_int, default=None, help="train on the first N samples only")
    t.add_argument("--epochs", type=_positive_int, default=1, help="epochs of the joint run (default 1)")
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--scale-lr", type=float, default=None,
                   help="Adam learning rate of the log step sizes (default 1e-2: relative change per step)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--uniform-passes", action="store_true",
                   help="also one pass per candidate width with every layer at it, each step (the LIMPQ authors' "
                   "scheme; about 5x the time)")
    _add_quant_options(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("report", help="SFC report: groups, multiply vs shift sites, as text, JSON and HTML")
    p.add_argument("model")
    p.add_argument("--calib", default=None, help="calibration inputs (default: bundled:calib)")
    p.add_argument("-o", "--output", default="gwq_report.html", help="HTML file (the JSON is written beside it)")
    p.add_argument("--plan", default=None, help="report this QuantPlan (e.g. a 'gwq-tvm train' export) instead of planning one")
    p.add_argument("--layer-error", action="store_true",
                   help="per-tensor error against the float model (accumulated SQNR, local SQNR, output KL of each "
                        "tensor alone, the SFC into it), worst first")
    p.add_argument("--data", default=None, help="--layer-error inputs (default: the calibration samples)")
    p.add_argument("--samples", type=_positive_int, default=256, help="--layer-error samples used (default 256)")
    _add_quant_options(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("train", help="quantization-aware training: learn group mantissas, exponents, weights; export ONNX + plan")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--data", default="bundled:train",
                   help="labelled training .npz (images + labels); bundled:train = Fashion-MNIST 60k (Debian dataset-fashion-mnist)")
    p.add_argument("--calib", default=None, help="calibration data for the starting plan (default: bundled:calib)")
    p.add_argument("--plan", help="start from this QuantPlan instead of calibrating one")
    p.add_argument("--test", default=None, help="labelled data to report PTQ and QAT accuracy on (e.g. bundled:test)")
    p.add_argument("-o", "--output", required=True, help="output .onnx (the plan is written beside it as .plan.json)")
    p.add_argument("--work-dir", default=None, help="checkpoint directory (default: <output>.qat beside the output)")
    p.add_argument("--epochs", type=_positive_int, default=3)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate of the weights")
    p.add_argument("--scale-lr", type=float, default=2e-3, help="peak Adam learning rate of mantissas and exponents")
    p.add_argument("--distill", type=float, default=0.5, help="weight of distillation from the float model, 0-1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=_positive_int, default=None, help="train on the first N samples only")
    p.add_argument("--adaptive-step", nargs="?", const="all", default=None, metavar="LAYERS",
                   help="ASQ: learn a per-sample activation step (adapter GAP-FC-ReLU-FC-ReLU, compiled as an integer "
                        "side branch) for the inputs of these conv layers (comma list of layers or tensors; alone: every "
                        "conv input that is a conv output read only by conv/dense layers)")
    _add_quant_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="run a compiled .so on data (accuracy when labels are given)")
    p.add_argument("module", help="a .so written by 'gwq-tvm compile'")
    p.add_argument("--data", default="bundled:test", help=".npy/.npz inputs (with 'labels' for accuracy)")
    p.add_argument("--batch", type=_positive_int, default=250)
    p.add_argument("--limit", type=_positive_int, default=None, help="use only the first N samples")
    p.add_argument("--against", default=None, metavar="MODEL.onnx",
                   help="the float model: report top-1 agreement, mean logit SQNR and softmax KL against it (it runs here)")
    p.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="with --against: run the module on a board")
    p.add_argument("--rpc-key", default=None, metavar="KEY", help="the board's key at the tracker")
    p.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds for the whole remote job (default 600)")
    p.add_argument("--json", default=None, help="with --against: also write the figures as JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export-qdq", help="write a QuantPlan as QDQ ONNX (QuantizeLinear/DequantizeLinear) and check it on ONNX Runtime")
    p.add_argument("plan", help="a QuantPlan JSON (e.g. the .plan.json beside a compiled .so)")
    p.add_argument("model", help="the fp32 .onnx the plan was made for")
    p.add_argument("-o", "--output", required=True, help="the QDQ .onnx to write")
    p.add_argument("--weight-type", choices=("int8", "uint8"), default="int8",
                   help="weight container: int8 zero point 0 (default; TensorRT), or uint8 zero point 128 "
                        "(ORT's non-saturating u8u8 kernels on x86 without VNNI)")
    p.add_argument("--data", default="bundled:test", help="sample inputs to compare ORT with the integer program on")
    p.add_argument("--limit", type=_positive_int, default=1000, help="samples compared (default 1000)")
    p.add_argument("--no-check", action="store_true", help="only write the file (no ONNX Runtime run)")
    p.set_defaults(func=cmd_export_qdq)

    p = sub.add_parser("demo", help="the whole flow on the bundled model and Fashion-MNIST")
    p.add_argument("--out-dir", default="gwq_demo_out")
    p.add_argument("--model", choices=BUNDLED_MODELS, default=BUNDLED_MODELS[0],
                   help="bundled model: the ResNet (default) or MobileNetV3-Small")
    p.add_argument("--calib-samples", type=_positive_int, default=512)
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate on the first N test images only")
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(lines) if len(lines) <= 2 else f"{lines[0]} ... {lines[-1]}"


def main(argv=None) -> int:
    """Run one command in this process; return its exit status (the top-level guard)."""
    args = make_parser().parse_args(argv)
    logging.getLogger("tvm").setLevel(logging.ERROR)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"gwq-tvm: warning: {msg}\n"
    try:
        args.func(args)
    except GwqError as err:
        if args.debug:
            raise
        print(f"gwq-tvm: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("gwq-tvm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the guard: anything else is a bug, reported in one line
        if args.debug:
            raise
        print(f"gwq-tvm: error: internal error (a bug in gwq-tvm, please report it): {type(err).__name__}: "
              f"{_one_line(err)}; rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_BUG
    return 0


def _die_with_parent() -> None:
    """Have the kernel kill this (child) process when its parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        pass


def run(argv=None) -> int:
    """The program entry point: :func:`main` in a forked child, so a native crash is one line, not a dead CLI.

    TVM's native code (the ONNX importer, the linker driver, ``dlopen`` of a
    user's library, the kernels themselves) can die by a signal on a malformed
    input, which no ``except`` catches.  The parent forks before the command
    does any work (importing the package starts no TVM thread pool; TVM starts
    it lazily, in the child), waits, and turns a child killed by a signal into
    ``gwq-tvm: error: ...`` and exit status 2.  The child is killed with its
    parent (``PR_SET_PDEATHSIG``), so ``kill -9`` of the CLI stops the work too.  Ctrl-C reaches both (one
    process group); the parent ignores it and reports the child's status.
    Where ``fork`` is unavailable, or with ``--debug``, the command runs in
    this process.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not hasattr(os, "fork") or "--debug" in argv:
        return main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _die_with_parent()
            if os.getppid() == 1:
                os._exit(1)
            code = main(argv)
        except SystemExit as exc:  # argparse's own exits
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    forward = lambda signum, _frame: os.kill(pid, signum)  # noqa: E731
    signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
                continue
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGINT:
            print("gwq-tvm: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        name = signal.Signals(sig).name
        if sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGHUP):  # stopped from outside (or the OOM killer)
            print(f"gwq-tvm: stopped by {name}", file=sys.stderr)
            return 128 + sig
        command = next((a for a in argv if not a.startswith("-")), "gwq-tvm")
        print(f"gwq-tvm: error: '{command}' crashed in native code ({name}): an input file is malformed or damaged "
              "(or this is a bug in gwq-tvm/TVM); no output was written", file=sys.stderr)
        return EXIT_USAGE
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(run())
