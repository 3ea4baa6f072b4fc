"""MetaSchedule tuning of i8mm kernels measured on the emulated aarch64 board.

In its own module: the board's RPC server serves one session at a time, and
the module-scoped ``aarch64_remote`` session of ``test_i8mm_kernels`` would
keep MetaSchedule's RPC runner waiting for the board.
"""

import json

import numpy as np
import pytest
import tvm

from gwq_tvm.reference import run_reference
from gwq_tvm.schedules.spec import AARCH64_I8MM
from gwq_tvm.schedules.targets import PRESETS

from test_i8mm_kernels import I8MM, USMMLA
from test_schedules import _asm, _conv_module


@pytest.mark.slow
def test_tune_on_the_board_measures_usmmla_candidates_and_stays_bit_exact(aarch64_board, tmp_path):
    """A tiny tune measured on the board: searched candidates tensorized with the one-pixel usmmla step run
    there (a finite latency, not a failure); the tuned build uses usmmla and is bit-exact on the board.

    qemu's timings say nothing about an i8mm core's speed; this checks that the search works end to end.
    """
    from gwq_tvm.remote import request_session
    from test_arm_kernels import _run_remote

    from gwq_tvm.schedules import tune as T

    target = tvm.target.Target({**PRESETS[I8MM], "num-cores": 1})
    mod, x = _conv_module(16, 32, 10, 3, 1, 1, 1, "uint8")
    rpc = (aarch64_board.tracker_address, aarch64_board.key)
    tasks = T.extract_tuning_tasks(mod, target)
    T.tune(mod, target, tmp_path, trials=len(tasks) + 2, num_trials_per_iter=2, max_workers=1, seed=0, rpc=rpc,
           population_size=8, genetic_num_iters=1, min_task_share=0.5)
    searched = [json.loads(line) for line in (tmp_path / T.RECORD_FILE).read_text().splitlines()
                if f'"{AARCH64_I8MM.intrinsic()}"' in line]
    assert any(max(float(s) for s in rec[1][1]) < 1.0 for rec in searched), searched
    ex = T.compile_tuned(mod, target, tmp_path)
    assert USMMLA.search(_asm(ex))
    remote = request_session(aarch64_board.tracker_address, aarch64_board.key, timeout=120, session_timeout=900)
    got = _run_remote(remote, ex, x, I8MM, tmp_path / "tuned.so")
    np.testing.assert_array_equal(got, run_reference(mod, x))
