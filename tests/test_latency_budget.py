"""LIMPQ's latency budget: the ILP's latency row, the measured latency table, the strategy and the CLI (issue 23)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import ConfigError, PlanError
from gwq_tvm.plan.mixed_precision import Budget, Layer, Problem, parse_budget, parse_latency_budget
from gwq_tvm.reference import run_reference

from conftest import compile_and_run


def _latency_problem():
    # A and B read tensor t.  Importance: A {8: 0, 4: 1}, B {8: 0, 4: 2}; t {8: 0, 4: 4}.
    # Measured kernels (us): A int8 10, int4 4 (memory-bound: int4 pays); B int8 20, int4 26 (int4 is slower).
    # The whole W8A8 program takes 50 us, so a policy's predicted latency is 50 + (t_A - 10) + (t_B - 20).
    us = 1e-6
    return Problem([Layer("A", "t", 100, 1000), Layer("B", "t", 300, 1000)],
                   {"A": {8: 0.0, 4: 1.0}, "B": {8: 0.0, 4: 2.0}}, {"t": {8: 0.0, 4: 4.0}},
                   weight_bits=(4, 8), act_bits=(4, 8),
                   latency={"A": {8: 10 * us, 4: 4 * us}, "B": {8: 20 * us, 4: 26 * us}}, latency_w8a8=50 * us)


def test_latency_row_hand_checkable_optimum():
    p = _latency_problem()
    # Latency <= 45 us: only A at 4 bits gets there (44 us); B at 4 would add 6.  Objective 1.
    pol = p.solve(None, None, Budget(45e-6))
    assert pol.weight_bits == {"A": 4, "B": 8} and pol.objective == 1.0
    assert pol.latency_s == pytest.approx(44e-6) and pol.latency_w8a8 == pytest.approx(50e-6)
    # Size <= 50% (200 bytes) needs B at 4 bits (150 + A's 100 * b / 8): with B at 4, A at 4 gives 200 bytes.
    # Latency <= 105% (52.5 us): B at 4 costs +6 us, so A must also be at 4 (-6): 50 us.  Objective 3.
    pol = p.solve(parse_budget("50%", "size"), None, parse_latency_budget("105%"))
    assert pol.weight_bits == {"A": 4, "B": 4} and pol.latency_s == pytest.approx(50e-6)
    assert pol.budgets["latency"]["seconds"] == pytest.approx(52.5e-6)


def test_infeasible_latency_budget_names_the_smallest_feasible_latency():
    p = _latency_problem()
    with pytest.raises(PlanError, match=r"^latency budget 80% is infeasible: the smallest feasible predicted latency "
                                        r"is 88% \(0\.044 ms\)$"):
        p.solve(None, None, parse_latency_budget("80%"))
    # with a size budget that forces B to 4 bits (+6 us), 50 us is the least
    with pytest.raises(PlanError, match=r"^latency budget 0\.048 ms is infeasible with the other budgets: the smallest "
                                        r"feasible predicted latency is 0\.05 ms \(100% of W8A8\)$"):
        p.solve(parse_budget("50%", "size"), None, parse_latency_budget("48us"))


def test_a_budget_missed_by_less_than_a_microsecond_is_infeasible_not_met():
    """A table measured under load (tests' ThreeLayers, this session): the size budget forces conv2d_1 to int4,
    whose kernel measured 1.39 us slower than int8, so every policy predicts 7.60 us against a 110% budget of
    6.84 us.  With the solver's row in seconds, its 1e-6 feasibility tolerance let that pass as "met"."""
    p = Problem([Layer("c0", "x", 144, 16 * 144), Layer("c1", "a", 4608, 32 * 4608), Layer("fc", "b", 320, 320)],
                {"c1": {8: 0.0, 4: 1.0}}, {}, weight_bits=(4, 8), act_bits=(8,), fixed_weights={"c0": 8, "fc": 8},
                fixed_acts={"x": 8, "a": 8, "b": 8},
                latency={"c0": {8: 2.2233e-6, 4: 2.3302e-6}, "c1": {8: 2.8125e-6, 4: 4.1996e-6},
                         "fc": {8: 1.2373e-6, 4: 1.2650e-6}}, latency_w8a8=6.2138e-6)
    with pytest.raises(PlanError, match=r"^latency budget 110% is infeasible with the other budgets: the smallest "
                                        r"feasible predicted latency is 122\.3% \(0\.007601 ms\)$"):
        p.solve(parse_budget("90%", "size"), None, parse_latency_budget("110%"))


def test_a_latency_budget_without_a_table_is_refused():
    p = Problem([Layer("A", "t", 100, 1000)], {"A": {8: 0.0, 4: 1.0}}, {"t": {8: 0.0, 4: 4.0}}, weight_bits=(4, 8))
    with pytest.raises(PlanError, match="needs a latency table"):
        p.solve(None, None, Budget(1e-3))


@pytest.mark.parametrize("text, seconds, percent", [("0.8ms", 0.8e-3, False), ("800us", 0.8e-3, False),
                                                    ("0.0008s", 0.8e-3, False), ("0.0008", 0.8e-3, False),
                                                    ("95%", 95.0, True)])
def test_latency_budget_forms(text, seconds, percent):
    b = parse_latency_budget(text)
    assert b.percent == percent and b.value == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["fast", "-1ms", "0ms", "1 hour", "nan%"])
def test_bad_latency_budget_is_one_line(text):
    with pytest.raises(ConfigError, match="latency_budget must be") as err:
        parse_latency_budget(text)
    assert "\n" not in str(err.value)


class ThreeLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.b(torch.relu(self.a(x))))
        return self.c(y.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def three():
    torch.manual_seed(0)
    return ThreeLayers().eval(), np.random.default_rng(0).normal(size=(16, 1, 12, 12)).astype("float32")


def test_latency_budget_plan_measures_the_table_once_and_compiles_bit_exact(three, tmp_path):
    """The strategy measures every conv/dense layer's int8 and int4 kernels and the W8A8 program, writes the table,
    meets the predicted budget, and reads the table (not measuring again) on the next run.

    The budget (200%) leaves room for timing noise: the 90% size budget puts conv2d_1 at int4, and under load its
    int4 kernel has measured 1.4 us slower than its int8 one on a 6.2 us program, which a 110% budget would make
    infeasible (the mechanism under test, not the machine's timing, must decide the outcome)."""
    model, x = three
    table = tmp_path / "t.latency.json"
    cfg = QuantConfig(mixed_precision=True, latency_budget="200%", size_budget="90%", latency_table=str(table),
                      mp_weight_bits=(4, 8))
    q = gwq_tvm.quantize(model, x, cfg, input_shape=(None, 1, 12, 12))
    rec = json.loads(table.read_text())
    assert set(rec["layers"]) == {"conv2d_0", "conv2d_1", "dense_0"} and rec["program_w8a8_s"] > 0
    assert all(r["int8"] > 0 and r["int4"] > 0 for r in rec["layers"].values())
    mp = q.plan.provenance["mixed_precision"]
    assert mp["latency"]["predicted_s"] <= 2.0 * rec["program_w8a8_s"] * (1 + 1e-9)
    assert q.plan.provenance["mixed_precision"]["weight_bits"]["conv2d_1"] == 4  # the size budget's choice
    np.testing.assert_array_equal(compile_and_run(q.mod, x), run_reference(q.mod, x))
    # the second run reads the table: make the only free layer's int4 kernel absurdly slow there, and the ILP
    # must keep it at 8 bits, which the 90% size budget then cannot allow -> one line naming the latency
    rec["layers"]["conv2d_1"]["int4"] = 1.0
    table.write_text(json.dumps(rec))
    with pytest.raises(PlanError, match="latency budget 200% is infeasible with the other budgets"):
        gwq_tvm.quantize(model, x, cfg, input_shape=(None, 1, 12, 12))


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(fingerprint="abc"), "was measured for graph abc"),
    (lambda r: r.update(target="llvm -mcpu=cortex-a72"), "was measured on target"),
    (lambda r: r["layers"].pop("conv2d_1"), "has no row for layer conv2d_1"),
    (lambda r: r["layers"]["conv2d_0"].update(int4=-1), "not a version-1 gwq-tvm latency table"),
    (lambda r: r.update(program_w8a8_s="fast"), "not a version-1 gwq-tvm latency table"),
])
def test_a_latency_table_of_another_model_or_target_is_refused(three, tmp_path, edit, message):
    from gwq_tvm.extract import extract_graph
    from gwq_tvm.runtime import host_target
    from gwq_tvm.schedules.latency import load_table

    model, _ = three
    graph = extract_graph(gwq_tvm.load_model(model, input_shape=(None, 1, 12, 12)).mod)
    good = {"version": 1, "target": str(host_target()), "fingerprint": graph.fingerprint, "int4_step": True,
            "program_w8a8_s": 1e-4, "layers": {n: {"int8": 1e-5, "int4": 1e-5} for n in ("conv2d_0", "conv2d_1", "dense_0")}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(good))
    assert load_table(path, graph, host_target())["program_w8a8_s"] == 1e-4
    edit(good)
    path.write_text(json.dumps(good))
    with pytest.raises(ConfigError, match=message):
        load_table(path, graph, host_target())
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_table(path, graph, host_target())


def test_latency_table_measured_on_a_board_over_the_tracker(three, tmp_path, host_board):
    """``latency_board``: every kernel is exported, uploaded to the board registered at the tracker and timed there;
    the table names the device, and the plan records it."""
    model, x = three
    table = tmp_path / "board.latency.json"
    board = f"{host_board.key}@{host_board.tracker_address}"
    cfg = QuantConfig(mixed_precision=True, latency_budget="100%", latency_table=str(table),  # W8A8 always fits
                      latency_board=board, mp_weight_bits=(4, 8))
    q = gwq_tvm.quantize(model, x, cfg, input_shape=(None, 1, 12, 12))
    rec = json.loads(table.read_text())
    assert rec["device"] == board and set(rec["layers"]) == {"conv2d_0", "conv2d_1", "dense_0"}
    assert all(r["int8"] > 0 and r["int4"] > 0 for r in rec["layers"].values()) and rec["program_w8a8_s"] > 0
    lat = q.plan.provenance["mixed_precision"]["latency"]
    assert lat["device"] == board and lat["predicted_s"] <= rec["program_w8a8_s"] * (1 + 1e-9)
    from gwq_tvm.report import format_text

    assert f"of the W8A8 program's measured {rec['program_w8a8_s'] * 1e3:.4g} ms), measured on board {board}" in format_text(q.report())


def test_unreachable_latency_board_is_one_line(three, tmp_path):
    from gwq_tvm.errors import GwqError
    from gwq_tvm.remote.board import free_port

    model, x = three
    cfg = QuantConfig(mixed_precision=True, latency_budget="110%", latency_board=f"k@127.0.0.1:{free_port()}")
    with pytest.raises(GwqError) as err:
        gwq_tvm.quantize(model, x, cfg, input_shape=(None, 1, 12, 12))
    assert "\n" not in str(err.value) and "127.0.0.1" in str(err.value)


@pytest.mark.slow
def test_latency_table_of_the_emulated_aarch64_board(three, tmp_path, aarch64_board):
    """A board's table is for its target: kernels cross-compiled for aarch64 (sdot, int4 step) and timed under qemu
    (the times are the emulator's: this checks the flow, not the board's speed)."""
    from gwq_tvm.schedules.targets import resolve_target

    model, x = three
    table = tmp_path / "arm.latency.json"
    cfg = QuantConfig(mixed_precision=True, latency_budget="100%", latency_table=str(table),  # W8A8 always fits
                      latency_target="aarch64-dotprod", latency_board=f"{aarch64_board.key}@{aarch64_board.tracker_address}",
                      mp_weight_bits=(4, 8))
    q = gwq_tvm.quantize(model, x, cfg, input_shape=(None, 1, 12, 12))
    rec = json.loads(table.read_text())
    assert rec["target"] == str(resolve_target("aarch64-dotprod")) and rec["int4_step"] is True
    assert all(r["int8"] > 0 and r["int4"] > 0 for r in rec["layers"].values())
    # the next plan for that target reads the table without the board
    again = gwq_tvm.quantize(model, x, cfg.replace(latency_board=None), input_shape=(None, 1, 12, 12))
    assert {n: w.bits for n, w in again.plan.layers.items()} == {n: w.bits for n, w in q.plan.layers.items()}


@pytest.mark.parametrize("args, message", [
    (["--latency-budget", "fast"], "latency_budget must be a time"),
    (["--latency-table", "x.json"], "--latency-table only applies with --latency-budget"),
    (["--latency-budget", "1ms", "--mp-search", "greedy"], "greedy baseline takes size and BitOps budgets only"),
    (["--latency-board", "k@127.0.0.1:9190"], "--latency-board only applies with --latency-budget"),
    (["--latency-budget", "1ms", "--latency-board", "127.0.0.1:9190"], "expected KEY@HOST:PORT"),
    (["--latency-budget", "1ms", "--latency-target", "rpi4"], "measured on its board: give --latency-board"),
    (["--latency-budget", "1ms", "--latency-target", "no-such-board", "--latency-board", "k@h:1"], "bad target"),
])
def test_cli_bad_latency_options_are_one_line(tmp_path, capsys, args, message):
    from gwq_tvm.cli import main

    rc = main(["--quiet", "plan", str(gwq_tvm.data.bundled_model()), "-o", str(tmp_path / "p.json"), "--mixed-precision", "--calib-samples", "16",
               *args])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.json").exists()


def test_compile_latency_target_is_the_compile_target(tmp_path, capsys):
    from gwq_tvm.cli import main

    rc = main(["--quiet", "compile", str(gwq_tvm.data.bundled_model()), "-o", str(tmp_path / "m.so"), "--target", "rpi4",
               "--mixed-precision", "--latency-budget", "1ms", "--latency-target", "aarch64-neon", "--calib-samples", "16"])
    err = capsys.readouterr().err
    assert rc != 0 and "--latency-target aarch64-neon differs from --target rpi4" in err and len(err.strip().splitlines()) == 1
    rc = main(["--quiet", "compile", str(gwq_tvm.data.bundled_model()), "-o", str(tmp_path / "m.so"), "--target", "rpi4",
               "--mixed-precision", "--latency-budget", "1ms", "--calib-samples", "16"])
    err = capsys.readouterr().err
    assert rc != 0 and "latencies for target rpi4 are measured on its board" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
