"""MetaSchedule tuning: the builder workaround, the resumable/sanitized database, tune -> compile."""

import json
import logging
import warnings

import numpy as np
import pytest
import tvm

import gwq_tvm
from tvm import relax

from gwq_tvm.reference import run_reference
from gwq_tvm.runtime import host_target
from gwq_tvm.schedules import tune as T
from gwq_tvm.schedules.vnni import has_vnni

pytestmark = pytest.mark.skipif(not has_vnni(host_target()), reason="host CPU has no AVX-512 VNNI")


def _small_module():
    """int8 input -> 3x3 conv (16 -> 16) -> bias, shift, clip -> uint8 -> 1x1 conv -> int32 (static batch 1)."""
    rng = np.random.default_rng(0)
    w1 = rng.integers(-128, 128, (16, 16, 3, 3)).astype("int8")
    w2 = rng.integers(-128, 128, (16, 16, 1, 1)).astype("int8")
    x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), padding=1, out_dtype="int32"))
            y = bb.emit(relax.op.right_shift(relax.op.add(y, relax.const(np.int32(64))), relax.const(np.int32(7))))
            y = bb.emit(relax.op.astype(relax.op.clip(y, relax.prim_value(0), relax.prim_value(255)), "uint8"))
            out = bb.emit_output(bb.emit(relax.op.nn.conv2d(y, relax.const(w2), out_dtype="int32")))
        bb.emit_func_output(out)
    return bb.get(), rng.integers(-128, 128, (1, 16, 8, 8)).astype("int8")


def _target():
    return tvm.target.Target({"kind": "llvm", "mcpu": str(host_target().attrs["mcpu"]), "num-cores": 1})


def _default_record(database, target):
    """Commit one task's default schedule with a made-up latency; return the task module."""
    from tvm.s_tir import meta_schedule as ms

    mod, _ = _small_module()
    task = next(t for t in T.extract_tuning_tasks(mod, target) if "gwq_conv2d" in t.task_name)
    tmod = task.dispatched[0]
    sch = T._default_schedule(tmod)
    workload = database.commit_workload(tmod)
    args = ms.arg_info.ArgInfo.from_prim_func(tmod["main"])
    database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [1e-4], target, args))
    return tmod


def test_builder_builds_a_tensorized_candidate(tmp_path):
    """The fixed builder (no tensor_intrin import per worker) builds a VNNI kernel well within its timeout."""
    from tvm.s_tir import meta_schedule as ms

    target = _target()
    mod, _ = _small_module()
    task = next(t for t in T.extract_tuning_tasks(mod, target) if "gwq_conv2d" in t.task_name)
    sch = T._default_schedule(task.dispatched[0])
    builder = T.make_builder(max_workers=1, timeout_sec=60)
    (result,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
    assert result.error_msg is None, result.error_msg


def test_build_candidate_does_not_import_the_intrinsic_library(tmp_path):
    """The cause of the 0.27 builder timeouts (importing tvm.s_tir.tensor_intrin per worker) stays avoided."""
    import subprocess
    import sys

    script = (
        "import sys, tvm; from tvm import te, s_tir\n"
        "from gwq_tvm.schedules.tune import build_candidate\n"
        "a = te.placeholder((64,), 'int8'); b = te.compute((64,), lambda i: a[i] + 1)\n"
        "build_candidate(tvm.IRModule({'main': te.create_prim_func([a, b])}), tvm.target.Target('llvm'))\n"
        "assert 'tvm.s_tir.tensor_intrin' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)


def test_corrupt_records_are_skipped_with_a_warning(tmp_path):
    """A torn last line and a garbage record are dropped (with a warning); the good record survives."""
    target = _target()
    database = T.open_database(tmp_path)
    tmod = _default_record(database, target)
    del database
    records = tmp_path / T.RECORD_FILE
    good = records.read_text().splitlines()
    with records.open("a") as f:
        f.write('[0, {"not": "a record"}]\n')
        f.write(good[0][: len(good[0]) // 2])  # interrupted write
    before = records.read_bytes()
    with pytest.warns(UserWarning, match=r"skipped 2 corrupt line\(s\); the original file\(s\) are kept as .*record\.json\.orig$"):
        database = T.open_database(tmp_path)
    assert records.read_text().splitlines() == good
    assert (tmp_path / (T.RECORD_FILE + ".orig")).read_bytes() == before  # set aside, not lost
    assert database.has_workload(tmod) and len(database.get_top_k(database.commit_workload(tmod), 10)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T.open_database(tmp_path)  # clean now: no warning
    with records.open("a") as f:  # a second repair keeps its own copy and leaves the first one alone
        f.write("garbage\n")
    again = records.read_bytes()
    with pytest.warns(UserWarning, match=r"kept as .*\.orig\.1$"):
        T.open_database(tmp_path)
    assert (tmp_path / (T.RECORD_FILE + ".orig")).read_bytes() == before
    assert (tmp_path / (T.RECORD_FILE + ".orig.1")).read_bytes() == again


def test_a_broken_workload_line_keeps_both_original_files(tmp_path):
    """A workload line rewritten (to keep the record indices) is set aside with the records it orphans."""
    target = _target()
    _default_record(T.open_database(tmp_path), target)
    workloads, records = tmp_path / T.WORKLOAD_FILE, tmp_path / T.RECORD_FILE
    wl = workloads.read_text().splitlines()
    workloads.write_text("\n".join(wl + ["{broken"]) + "\n")
    with records.open("a") as f:
        f.write(records.read_text().splitlines()[0].replace("[0,", f"[{len(wl)},", 1) + "\n")  # a record of that line
    wbefore, rbefore = workloads.read_bytes(), records.read_bytes()
    with pytest.warns(UserWarning, match="skipped 2 corrupt.*workload.json.orig, .*record.json.orig$"):
        T.open_database(tmp_path)
    assert (tmp_path / (T.WORKLOAD_FILE + ".orig")).read_bytes() == wbefore
    assert (tmp_path / (T.RECORD_FILE + ".orig")).read_bytes() == rbefore
    assert len(workloads.read_text().splitlines()) == len(wl) + 1  # indices stay stable


@pytest.mark.slow
def test_tune_contexts_keep_handlers_metaschedule_did_not_create(tmp_path):
    """TVM 0.27's create_loggers crashes on a handler on its logger that it did not name (pytest >= 9.2 attaches
    its capture handlers there; users may attach theirs): T.tune_contexts must not, and leaves the handlers on."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed, named = logging.NullHandler(), logging.NullHandler()
    named.set_name("someone.elses")
    logger.addHandler(unnamed)
    logger.addHandler(named)
    try:
        mod, _ = _small_module()
        tasks = T.extract_tuning_tasks(mod, _target())
        for run in range(2):  # the second call also meets the handlers the first one configured
            contexts, _ = T.tune_contexts(tasks[:1], tmp_path / str(run), seed=0)
            assert len(contexts) == 1
            assert unnamed in logger.handlers and named in logger.handlers
    finally:
        logger.removeHandler(unnamed)
        logger.removeHandler(named)


@pytest.mark.slow
def test_tiny_tune_writes_a_database_that_compile_applies(tmp_path):
    """tune() writes records for every kernel; a rerun resumes without new trials; select_best keeps one
    winner per kernel; compile_tuned applies them and stays bit-exact."""
    from tvm.s_tir import meta_schedule as ms

    target = _target()
    mod, x = _small_module()
    T.tune(mod, target, tmp_path, trials=6, num_trials_per_iter=4, max_workers=1, seed=0)
    assert json.loads((tmp_path / T.META_FILE).read_text())["batch"] == 1
    lines = (tmp_path / T.RECORD_FILE).read_text().splitlines()
    tasks = T.extract_tuning_tasks(mod, target)
    database = T.open_database(tmp_path)
    for task in tasks:  # every kernel has a record, so compile_tuned replays the database for all of them
        assert database.query_tuning_record(task.dispatched[0], target, task.task_name) is not None
    T.tune(mod, target, tmp_path, trials=6, num_trials_per_iter=4, max_workers=1, seed=0)
    assert (tmp_path / T.RECORD_FILE).read_text().splitlines() == lines  # resumed: budget already spent
    best = T.select_best(mod, target, tmp_path, top_k=1, rounds=1, max_workers=1)
    for task in tasks:  # one validated winner per kernel
        assert len(best.get_top_k(best.commit_workload(task.dispatched[0]), 10)) == 1
    ex = T.compile_tuned(mod, target, tmp_path)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(out, run_reference(mod, x))
    assert isinstance(database, ms.database.JSONDatabase)


if __name__ == "__main__":
    tvm.testing.main()


@pytest.mark.slow
def test_cli_tune_then_compile_with_the_database(tmp_path, capsys):
    from gwq_tvm.cli import main

    model = str(gwq_tvm.data.bundled_model())
    work = tmp_path / "db"
    common = ["--calib-samples", "64"]
    assert main(["--quiet", "tune", model, "--work-dir", str(work), "--trials", "4", *common]) == 0
    assert "database in" in capsys.readouterr().out
    plan = str(work / "model.plan.json")
    assert main(["--quiet", "compile", model, "--plan", plan, "--tuning-db", str(work), "-o", str(tmp_path / "t.so")]) == 0
    assert main(["--quiet", "compile", model, "--plan", plan, "-o", str(tmp_path / "u.so")]) == 0
    capsys.readouterr()
    for so in ("t.so", "u.so"):
        assert main(["--quiet", "eval", str(tmp_path / so), "--limit", "40"]) == 0
    tuned, untuned = capsys.readouterr().out.split("accuracy: ")[1:]
    assert tuned.split("%")[0] == untuned.split("%")[0]  # same integer program


def test_cli_compile_without_a_database_is_a_clear_error(tmp_path, capsys):
    from gwq_tvm.cli import main

    rc = main(["--quiet", "compile", str(gwq_tvm.data.bundled_model()), "--calib-samples", "16", "--no-loss-aware",
               "--tuning-db", str(tmp_path), "-o", str(tmp_path / "m.so")])
    assert rc == 2 and "no tuning database" in capsys.readouterr().err


def test_compile_with_gwq_tvm_records_does_not_import_the_stock_intrinsics(tmp_path):
    """Records tensorized with gwq-tvm's own intrinsics compile without ``tvm.s_tir.tensor_intrin`` (17-24 s to import):
    only records naming TVM's stock VNNI intrinsic (or an unregistered one) need it."""
    import os
    import subprocess
    import sys

    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from tvm.s_tir import meta_schedule as ms\n"
        "from test_tune import _default_record, _small_module, _target\n"
        "from gwq_tvm.schedules.build import _needs_stock_intrinsics, compile_integer\n"
        "db = ms.database.MemoryDatabase()\n"
        "_default_record(db, _target())\n"
        "trace = str(db.get_all_tuning_records()[0].trace)\n"
        "assert 'tensor_intrin=\"gwq_dot_' in trace, trace\n"
        "assert not _needs_stock_intrinsics(db)\n"
        "compile_integer(_small_module()[0], _target(), database=db)\n"
        "assert 'tvm.s_tir.tensor_intrin' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script, os.path.dirname(os.path.abspath(__file__))], check=True, cwd=tmp_path, timeout=600)


def _parametric_records(work_dir) -> int:
    """A JSON database of default-schedule records whose intrinsics carry parameters in their names: the AVX2
    narrow step (7-bit weights), AVX2 and VNNI int4 steps (code tables); returns how many records it holds."""
    from tvm.s_tir import meta_schedule as ms

    from gwq_tvm.schedules.spec import X86_VNNI

    db = T.open_database(work_dir)
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 1})
    vnni = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 1})
    rng = np.random.default_rng(1)
    count = 0
    for lo, hi, target in ((-64, 64, avx2), (-8, 7, avx2), (-8, 7, vnni)):
        x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "uint8"))
        bb = relax.BlockBuilder()
        with bb.function("main", [x]):
            with bb.dataflow():
                w = relax.const(rng.integers(lo, hi + 1, (16, 16, 3, 3)).astype("int8"))
                out = bb.emit_output(bb.emit(relax.op.nn.conv2d(x, w, padding=1, out_dtype="int32")))
            bb.emit_func_output(out)
        for task in T.extract_tuning_tasks(bb.get(), target):
            tmod = task.dispatched[0]
            sch = T._default_schedule(tmod, T._spec(target) if target is avx2 else X86_VNNI)
            if sch is None or "sch.tensorize(" not in str(sch.trace):
                continue
            args = ms.arg_info.ArgInfo.from_prim_func(tmod["main"])
            db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(tmod), [1e-4], target, args))
            count += 1
    return count


def test_a_fresh_process_keeps_records_of_parametric_intrinsics(tmp_path):
    """A record whose trace names the narrow or an int4 step is readable in a new process: open_database registers
    them by name.  Before, it could not read them, called them corrupt and rewrote the user's database without them."""
    import subprocess
    import sys

    written = _parametric_records(tmp_path / "db")
    text = (tmp_path / "db" / T.RECORD_FILE).read_text()
    names = {"gwq_dot_16x4_avx2_narrow", "gwq_dot_16x4_int4_avx2_", "gwq_dot_16x4_int4_vnni_"}
    assert written == 3 and all(n in text for n in names), text[:300]
    script = ("import sys, warnings; warnings.simplefilter('error')\n"
              "from gwq_tvm.schedules.tune import open_database\n"
              "print(len(open_database(sys.argv[1]).get_all_tuning_records()))\n"
              "assert 'tvm.s_tir.tensor_intrin' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "db")], check=True, capture_output=True,
                         text=True, timeout=600)
    assert int(out.stdout.strip().splitlines()[-1]) == written
    assert (tmp_path / "db" / T.RECORD_FILE).read_text() == text  # nothing rewritten


def test_register_named_intrinsic_knows_every_parametric_name():
    from gwq_tvm.schedules.amx import register_amx_intrinsic
    from gwq_tvm.schedules.spec import AARCH64_I8MM, AARCH64_SDOT, X86_AVX2, X86_AVXVNNI, register_named_intrinsic
    from gwq_tvm.schedules.vnni import register_int4

    table = tuple(range(8)) + tuple(range(-8, 0))
    for name in (X86_AVX2.narrow.intrinsic(), X86_AVX2.narrow.int4_intrinsic(table), X86_AVXVNNI.int4_intrinsic(table),
                 AARCH64_SDOT.int4_intrinsic(table), register_int4(table, True), register_int4(table, False),
                 AARCH64_I8MM.pair_intrinsic(2), register_amx_intrinsic(5)):
        assert register_named_intrinsic(name), name
    assert not register_named_intrinsic("gwq_dot_16x4_int4_avx2_zz") and not register_named_intrinsic("dot_16x4_vnni")


def test_a_preset_without_core_count_is_refused_with_a_target_that_works():
    """Presets carry no 'num-cores'; the one-line refusal names a JSON target (same CPU) that tuning accepts."""
    import re

    from gwq_tvm.errors import GwqError
    from gwq_tvm.schedules.targets import resolve_target

    with pytest.raises(GwqError) as err:
        T.check_tunable(resolve_target("x86-avx2"))
    message = str(err.value)
    assert "\n" not in message
    suggested = json.loads(re.search(r"--target '(\{.*\})'", message)[1])
    assert suggested == {"kind": "llvm", "mcpu": "haswell", "num-cores": 4}
    T.check_tunable(tvm.target.Target(suggested))
