"""Boards over TVM's RPC tracker: bench/tune through a tracker, bit-exact on the board, bounded errors.

Fast tests use a real tracker and a real ``tvm.exec.rpc_server`` of this
machine's Python (:data:`gwq_tvm.remote.board.HOST`); the slow ones use the
emulated aarch64 board (qemu-user + aarch64 CPython + the aarch64 TVM wheel).
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from gwq_tvm.cli import main
from gwq_tvm.remote import RemoteError, parse_address, request_session, tracker_keys
from gwq_tvm.remote import board as B
from gwq_tvm.remote.bench import bench_module, read_reference, reference_path, run_with_deadline, upload

from gwq_tvm.data import bundled_model

BUNDLED_ONNX = bundled_model()


@pytest.fixture(scope="module")
def host_module(tmp_path_factory):
    """The bundled model compiled for this CPU by the CLI (with its plan and reference beside it)."""
    out = tmp_path_factory.mktemp("host-module") / "model.so"
    assert main(["--quiet", "compile", str(BUNDLED_ONNX), "--calib-samples", "128", "-o", str(out)]) == 0
    return out


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


# --- uploads ----------------------------------------------------------------------
def test_upload_leaves_no_file_open(tmp_path):
    """TVM 0.27's RPCSession.upload(path) leaks its file handle; gwq_tvm.remote.bench.upload must not."""
    import gc
    import warnings

    from tvm import rpc

    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    sess = rpc.LocalSession()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = upload(sess, blob)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert name == "blob.bin" and bytes(sess.download(name)) == blob.read_bytes()


# --- addresses and the tracker ---------------------------------------------------
@pytest.mark.parametrize("text", ["localhost", "host:", ":9190", "h:0", "h:70000", "h:port"])
def test_bad_tracker_address_is_named(text):
    with pytest.raises(RemoteError, match="HOST:PORT"):
        parse_address(text)


def test_compile_writes_a_reference_of_the_integer_program(host_module):
    inputs, outputs = read_reference(host_module)
    from gwq_tvm import api

    vm = api.load_executable(host_module)
    got = api.predict(vm, inputs, (None,) + inputs.shape[1:])
    assert inputs.shape[0] == api.REFERENCE_SAMPLES and np.array_equal(got, outputs)


def test_tracker_lists_the_registered_board(host_board):
    keys = tracker_keys(host_board.tracker_address)
    assert "x86" in keys and keys["x86"]["free"] >= 1


# --- bench through the tracker ------------------------------------------------------
def test_bench_over_rpc_is_bit_exact_with_median_and_p90(host_board, host_module, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    rc = main(["bench", str(host_module), "--rpc-tracker", host_board.tracker_address, "--rpc-key", "x86",
               "--repeat", "20", "--json", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "bit-exact vs host reference: yes" in text and "median" in text and "p90" in text
    result = json.loads(out_json.read_text())
    assert result["repeat"] == 20 and len(result["runs_ms"]) == 20 and result["bit_exact"] is True
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["device"] == f"x86@{host_board.tracker_address}"


def test_bench_locally_uses_the_same_check(host_module, capsys):
    assert main(["bench", str(host_module), "--repeat", "5"]) == 0
    assert "local: median" in capsys.readouterr().out


def test_bench_reports_outputs_that_differ_from_the_reference(host_module, tmp_path, capsys):
    bad = tmp_path / "model.so"
    bad.write_bytes(host_module.read_bytes())
    inputs, outputs = read_reference(host_module)
    np.savez(reference_path(bad), inputs=inputs, outputs=outputs + 1)
    assert main(["bench", str(bad), "--repeat", "2"]) == 2
    captured = capsys.readouterr()
    assert "bit-exact vs host reference: NO" in captured.out and "differ from the host reference" in captured.err


def test_corrupt_reference_file_is_a_clear_error(host_module, tmp_path, capsys):
    bad = tmp_path / "model.so"
    bad.write_bytes(host_module.read_bytes())
    reference_path(bad).write_bytes(b"not an npz")
    assert main(["bench", str(bad)]) == 2
    assert "is not a gwq-tvm reference file" in capsys.readouterr().err


def test_missing_module_and_half_an_rpc_address(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "none.so")]) == 2
    assert "module not found" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "none.so"), "--rpc-key", "x86"]) == 2
    assert "go together" in capsys.readouterr().err


# --- errors within the timeout, nothing left running -------------------------------
def test_unreachable_tracker_fails_fast(host_module, capsys):
    port = B.free_port()  # nothing listens here
    before = _children()
    t0 = time.monotonic()
    assert main(["bench", str(host_module), "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "x86",
                 "--timeout", "5"]) == 2
    assert time.monotonic() - t0 <= 5
    assert f"cannot reach the RPC tracker at 127.0.0.1:{port}" in capsys.readouterr().err
    assert _children() <= before


def test_wrong_key_names_the_registered_keys(host_board, host_module, capsys):
    t0 = time.monotonic()
    assert main(["bench", str(host_module), "--rpc-tracker", host_board.tracker_address, "--rpc-key", "rpi9",
                 "--timeout", "5"]) == 2
    assert time.monotonic() - t0 <= 5
    err = capsys.readouterr().err
    assert "no board with key 'rpi9'" in err and "registered keys: x86" in err


def test_hung_board_is_killed_at_the_timeout(host_board, host_module):
    """A board that stops answering (SIGSTOP) costs the timeout, then a one-line error; the board recovers."""
    before = _children()
    os.killpg(host_board.server_pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match="did not finish within"):
            bench_module(host_module, tracker=host_board.tracker_address, key="x86", repeat=2, timeout=8)
        took = time.monotonic() - t0
    finally:
        os.killpg(host_board.server_pid, signal.SIGCONT)
    assert took <= 8 + 2, took  # the deadline, plus killing and reaping the job
    assert _children() <= before  # the killed job left nothing behind
    result = bench_module(host_module, tracker=host_board.tracker_address, key="x86", repeat=2, timeout=60)
    assert result.bit_exact


def test_job_errors_come_back_as_one_line():
    with pytest.raises(RemoteError, match="^job failed: bad tracker address 'nope'"):
        run_with_deadline(parse_address, ("nope",), timeout=60, what="job")  # a user error: its message
    with pytest.raises(RemoteError, match="^job failed: ValueError: invalid literal"):
        run_with_deadline(int, ("x",), timeout=60, what="job")  # anything else: its type too


def test_session_request_for_an_unknown_key_does_not_wait(host_board):
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="no board with key 'nope'"):
        request_session(host_board.tracker_address, "nope", timeout=30)
    assert time.monotonic() - t0 < 5


def test_a_crashing_session_does_not_take_the_board_off_the_tracker(host_board, host_module, tmp_path):
    """The TVM 0.27 workaround in gwq_tvm.remote.board_server: a module that aborts on load kills its session only."""
    import subprocess

    src = tmp_path / "boom.c"
    src.write_text("#include <stdlib.h>\n__attribute__((constructor)) static void boom(void) { abort(); }\n")
    lib = tmp_path / "boom.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    sess = request_session(host_board.tracker_address, "x86", timeout=30, session_timeout=60)
    name = upload(sess, lib)  # outside the raises block: only the load may fail
    with pytest.raises(Exception):  # the session's worker died
        sess.load_module(name)
    del sess
    deadline = time.monotonic() + 30
    while "x86" not in tracker_keys(host_board.tracker_address) and time.monotonic() < deadline:
        time.sleep(0.5)
    result = bench_module(host_module, tracker=host_board.tracker_address, key="x86", repeat=2, timeout=60)
    assert result.bit_exact


# --- tune through the tracker --------------------------------------------------------
def test_tune_needs_both_rpc_options(tmp_path, capsys):
    rc = main(["--quiet", "tune", str(BUNDLED_ONNX), "--work-dir", str(tmp_path / "db"), "--rpc-tracker", "127.0.0.1:1"])
    assert rc == 2 and "go together" in capsys.readouterr().err


def test_tune_over_rpc_with_an_unreachable_tracker_is_a_clear_error(tmp_path, capsys):
    rc = main(["--quiet", "tune", str(BUNDLED_ONNX), "--work-dir", str(tmp_path / "db"), "--calib-samples", "64",
               "--rpc-tracker", f"127.0.0.1:{B.free_port()}", "--rpc-key", "x86"])
    assert rc == 2 and "cannot reach the RPC tracker" in capsys.readouterr().err


def test_tuning_a_target_without_a_core_count_is_a_clear_error(tmp_path, capsys):
    rc = main(["--quiet", "tune", str(BUNDLED_ONNX), "--work-dir", str(tmp_path / "db"), "--calib-samples", "64",
               "--target", '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}'])
    assert rc == 2 and "num-cores" in capsys.readouterr().err


# --- board set-up and state ------------------------------------------------------------
def test_board_start_without_emulated_explains_real_boards(capsys):
    assert main(["board", "start"]) == 2
    assert "tvm.exec.rpc_server --tracker" in capsys.readouterr().err


def test_unknown_emulated_arch_is_named(tmp_path):
    with pytest.raises(B.BoardError, match="no emulated board for 'riscv64'"):
        B.setup_emulated_board("riscv64", root=tmp_path)


def test_starting_a_running_board_again_returns_it(host_board, tmp_path):
    again = B.start_board(B.HOST, tracker_port=host_board.tracker[1], key="x86", root=host_board.state_file.parent.parent,
                          log=lambda _: None)
    assert again.server_pid == host_board.server_pid


# --- the emulated aarch64 board (slow: qemu) ---------------------------------------------
@pytest.mark.slow
def test_bundled_model_on_the_emulated_aarch64_board_is_bit_exact_with_x86(aarch64_board, host_module, tmp_path,
                                                                           capsys):
    """Must-show: compiled for aarch64 (+neon,+dotprod), run on the board through the tracker, same integers as x86."""
    arm = tmp_path / "arm" / "model.so"
    assert main(["--quiet", "compile", str(BUNDLED_ONNX), "--calib-samples", "128", "--target", "aarch64-dotprod",
                 "-o", str(arm)]) == 0
    assert arm.read_bytes()[:4] == b"\x7fELF" and arm.read_bytes()[18] == 183  # e_machine EM_AARCH64
    out_json = tmp_path / "bench.json"
    rc = main(["bench", str(arm), "--rpc-tracker", aarch64_board.tracker_address, "--rpc-key", aarch64_board.key,
               "--repeat", "5", "--timeout", "600", "--json", str(out_json)])
    assert rc == 0, capsys.readouterr()
    result = json.loads(out_json.read_text())
    assert result["bit_exact"] is True and result["device"].startswith(aarch64_board.key)
    # the board matched the host's numpy reference; the x86 build gives the very same integers on those inputs
    from gwq_tvm import api

    inputs, arm_expected = read_reference(arm)
    x86 = api.predict(api.load_executable(host_module), inputs, (None,) + inputs.shape[1:])
    assert np.array_equal(x86, arm_expected)


@pytest.mark.slow
def test_board_status_lists_the_running_board(aarch64_board, capsys):
    assert main(["board", "status", "--emulated", "aarch64"]) == 0
    assert f"board '{aarch64_board.key}': tracker {aarch64_board.tracker_address}" in capsys.readouterr().out


@pytest.mark.slow
def test_tuning_over_rpc_on_the_emulated_board_picks_sdot_kernels(aarch64_board, tmp_path, capsys):
    """Must-show: a tiny MetaSchedule run measured on the board writes a database whose best kernels use sdot."""
    import shutil
    import subprocess

    work, out = tmp_path / "tune", tmp_path / "tuned" / "model.so"
    rpc = ["--rpc-tracker", aarch64_board.tracker_address, "--rpc-key", aarch64_board.key]
    assert main(["--quiet", "tune", str(BUNDLED_ONNX), "--calib-samples", "128", "--target", "aarch64-dotprod",
                 "--work-dir", str(work), "--trials", "4", *rpc]) == 0, capsys.readouterr().err
    best = [json.loads(line) for line in (work / "best" / "database_tuning_record.json").read_text().splitlines()]
    sdot_records = [r for r in best if "sdot" in json.dumps(r)]
    assert best and sdot_records, "no best record tensorizes with sdot"
    assert main(["--quiet", "compile", str(BUNDLED_ONNX), "--plan", str(work / "model.plan.json"), "--tuning-db",
                 str(work), "--target", "aarch64-dotprod", "-o", str(out)]) == 0
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    assert objdump, "binutils-aarch64-linux-gnu (with gcc-aarch64-linux-gnu) is needed to inspect the assembly"
    asm = subprocess.run([objdump, "-d", str(out)], capture_output=True, text=True, check=True).stdout
    assert asm.count("\tsdot\t") >= len(sdot_records)
    assert main(["bench", str(out), *rpc, "--repeat", "3", "--timeout", "600"]) == 0
    assert "bit-exact vs host reference: yes" in capsys.readouterr().out
