"""The statistics the GWQ trade-off benchmark reports its dominance verdict with."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
gwq_tradeoff = pytest.importorskip("gwq_tradeoff")


def _row(acc, share):
    return {"accuracy": acc, "shift_share": share}


def test_dominance_needs_a_gwq_point_at_an_equal_or_higher_share():
    rows = {"error-only K=2": _row(0.90, 0.5), "gwq K=1": _row(0.95, 0.4), "gwq K=2": _row(0.89, 0.6)}
    verdict = gwq_tradeoff.dominance(rows)
    # K=1 is more accurate but has fewer shifts; K=2 has more shifts but is less accurate
    assert verdict.startswith("GWQ dominates error-only: **no**")
    assert "gwq K=2, 89.00%" in verdict
    rows["gwq K=3"] = _row(0.90, 0.5)  # a tie in both counts as dominating
    assert "**yes**" in gwq_tradeoff.dominance(rows)
    assert "closest: error-only K=2" in gwq_tradeoff.dominance(rows) and "lead 0.00 pt" in gwq_tradeoff.dominance(rows)
    del rows["gwq K=2"], rows["gwq K=3"]
    assert "error-only K=2 (accuracy 90.00% at 50.0% shift; best GWQ at that share or more: none)" in gwq_tradeoff.dominance(rows)


def test_paired_se_is_that_of_the_per_image_difference():
    rng = np.random.default_rng(1)
    a, b = rng.random(4000) < 0.9, rng.random(4000) < 0.8
    d = a.astype(float) - b
    assert gwq_tradeoff.paired_se(a, b) == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)) * 100)
    assert gwq_tradeoff.paired_se(a, a) == 0.0
    assert gwq_tradeoff.paired_se(a, b[:10]) is None


def test_draw_se_adds_the_spread_of_the_refinement_draws():
    rng = np.random.default_rng(2)
    base = rng.random(5000) < 0.9
    same = np.stack([base] * 3)
    # identical draws: only the test images' term remains, equal to the one-draw paired SE
    other = np.stack([rng.random(5000) < 0.85] * 3)
    assert gwq_tradeoff.draw_se(same, other) == pytest.approx(gwq_tradeoff.paired_se(base, other[0]))
    # draws whose gaps differ (flip 1% then 5% of the images): the draw term makes the SE larger
    flipped = np.stack([other[0] ^ (rng.random(5000) < p) for p in (0.0, 0.01, 0.05)])
    gaps = (same.astype(float) - flipped).mean(1)
    images = gwq_tradeoff.paired_se(same.mean(0), flipped.mean(0))
    draws = gaps.std(ddof=1) / np.sqrt(3) * 100
    assert draws > 0.1 * images
    assert gwq_tradeoff.draw_se(same, flipped) == pytest.approx(np.hypot(images, draws))
    assert gwq_tradeoff.draw_se(same, other[:2]) is None


def test_dominance_reports_the_draw_se_when_given_one():
    rows = {"error-only K=2": _row(0.91, 0.5), "gwq K=2": _row(0.90, 0.5)}
    rng = np.random.default_rng(3)
    correct = {label: rng.random((2, 100)) < 0.9 for label in rows}
    verdict = gwq_tradeoff.dominance(rows, correct, se=gwq_tradeoff.draw_se)
    assert "SE over images and draws" in verdict
    assert "paired SE" in gwq_tradeoff.dominance(rows, {k: v[0] for k, v in correct.items()})


def test_kl_per_image_is_the_softmax_kl_divergence():
    rng = np.random.default_rng(4)
    ref, q = rng.normal(size=(50, 10)) * 3, rng.normal(size=(50, 10)) * 3
    p = np.exp(ref) / np.exp(ref).sum(1, keepdims=True)
    r = np.exp(q) / np.exp(q).sum(1, keepdims=True)
    kl = gwq_tradeoff.kl_per_image(ref, q)
    assert kl == pytest.approx((p * np.log(p / r)).sum(1))
    assert np.all(kl >= 0)
    assert gwq_tradeoff.kl_per_image(ref, ref + 5.0) == pytest.approx(np.zeros(50), abs=1e-12)  # shift-invariant
    # large logits (as an integer program's dequantized output can have) stay finite
    assert np.isfinite(gwq_tradeoff.kl_per_image(ref * 1e3, q * 1e3)).all()


def test_dominance_on_test_kl_wants_a_lower_value():
    kl = gwq_tradeoff.TEST_KL
    rows = {"error-only K=2": {"accuracy": 0.9, "test_kl": 0.030, "shift_share": 0.5},
            "gwq K=2": {"accuracy": 0.9, "test_kl": 0.020, "shift_share": 0.6}}
    verdict = gwq_tradeoff.dominance(rows, metric=kl)
    assert "**yes**" in verdict and verdict.endswith("closest: error-only K=2 (test KL 0.0300 at 50.0% shift; "
                                                      "best GWQ at that share or more: gwq K=2, 0.0200, lead 0.0100)")
    rows["gwq K=2"]["test_kl"] = 0.035  # worse fidelity at a higher share: not dominated any more
    verdict = gwq_tradeoff.dominance(rows, metric=kl)
    assert verdict.startswith("GWQ dominates error-only on test KL: **no**")
    assert "gwq K=2, 0.0350, gap 0.00500)" in verdict
    # the paired SE of a KL gap is in KL units, not points
    rng = np.random.default_rng(5)
    per_image = {"error-only K=2": rng.random(400) * 0.06, "gwq K=2": rng.random(400) * 0.07}
    d = per_image["error-only K=2"] - per_image["gwq K=2"]
    assert f"paired SE {d.std(ddof=1) / np.sqrt(400):#.3g}" in gwq_tradeoff.dominance(rows, per_image, metric=kl)


def test_dominance_says_not_measured_for_rows_without_the_metric():
    rows = {"error-only K=2": {"accuracy": 0.9, "shift_share": 0.5}, "gwq K=2": {"accuracy": 0.9, "test_kl": 0.02, "shift_share": 0.6}}
    assert "not measured (error-only K=2 without test KL)" in gwq_tradeoff.dominance(rows, metric=gwq_tradeoff.TEST_KL)


def test_dominance_says_when_the_closest_gwq_point_is_the_error_only_plan_itself():
    # the min-shift-share search may pick the error-only grouping (its sweep includes sfc_cost=0): a tie, said so
    rows = {"error-only K=4": _row(0.92, 0.14), "gwq share>=err K=4": {**_row(0.92, 0.14), "same_plan_as": "error-only K=4"}}
    assert gwq_tradeoff.dominance(rows).endswith("lead 0.00 pt, the same plan)")


def test_interleaved_timing_runs_every_program_once_per_round_in_turn():
    _timing = pytest.importorskip("_timing")
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    per = _timing.interleaved(calls, 4, warmup=2)
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 4  # the warm-up, then one of each per round
    assert {k: len(v) for k, v in per.items()} == {"a": 4, "b": 4}
    order.clear()
    per = _timing.interleaved(calls, 2, per_round=3, warmup=1, rewarm=1)
    assert order == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2
    assert set(_timing.median_ms(per)) == {"a", "b"}


def test_interleaved_timing_caps_a_slow_program_and_reports_a_failing_one():
    import time

    _timing = pytest.importorskip("_timing")
    count = {"slow": 0}

    def slow():
        count["slow"] += 1
        time.sleep(0.01)

    def broken():
        raise RuntimeError("no kernel for this target\nsecond line")

    errors = {}
    per = _timing.interleaved({"slow": slow, "fast": lambda: None, "broken": broken}, 6, slow_s=0.03, slow_rounds=2,
                              errors=errors)
    assert len(per["slow"]) == 2 and count["slow"] == 3 and len(per["fast"]) == 6
    assert "broken" not in per and errors == {"broken": "RuntimeError: no kernel for this target"}
    with pytest.raises(RuntimeError):
        _timing.interleaved({"broken": broken}, 1)


def test_interleaved_timing_pauses_before_each_turn_when_asked():
    import time

    _timing = pytest.importorskip("_timing")
    stamps = []
    calls = {"a": lambda: stamps.append(("a", time.perf_counter())), "b": lambda: stamps.append(("b", time.perf_counter()))}
    _timing.interleaved(calls, 2, warmup=1, settle_s=0.03)
    timed = stamps[2:]  # after the warm-up calls
    assert [k for k, _ in timed] == ["a", "b", "a", "b"]
    gaps = [t1 - t0 for (_, t0), (_, t1) in zip(timed, timed[1:])]
    assert min(gaps) >= 0.03  # every turn waited for the previous program's workers to go idle


def test_steal_share_is_the_stolen_part_of_all_cpu_time_between_two_readings(tmp_path, monkeypatch):
    _timing = pytest.importorskip("_timing")
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice (guest time is already in user)
    lines = iter(["cpu  100 0 50 800 0 0 0 50 30 0\n", "cpu  200 0 60 900 0 0 0 90 60 0\n"])
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: (stat.write_text(next(lines)), real_open(stat))[1]
                        if path == "/proc/stat" else real_open(path, *a, **k))
    before, after = _timing.cpu_jiffies(), _timing.cpu_jiffies()
    assert before == (50, 1000) and after == (90, 1250)
    assert _timing.steal_share(before, after) == pytest.approx(40 / 250)
    assert _timing.steal_share(None, after) is None and _timing.steal_share(after, after) is None


def test_kernels_bench_combines_worker_processes_by_their_median_and_keeps_each_value():
    kb = pytest.importorskip("kernels_bench")
    measured = [{"m": {"ours": 2.0, "ort": 3.0, "broken": None}}, {"m": {"ours": 3.3, "ort": 3.1, "broken": None}},
                {"m": {"ours": 2.1, "ort": None, "broken": None}}]
    results, spread = kb.combine_processes(measured)
    assert results == {"m": {"ours": 2.1, "ort": 3.05, "broken": None}}
    assert spread == {"m": {"ours": [2.0, 3.3, 2.1], "ort": [3.0, 3.1, None], "broken": [None] * 3}}


def test_avx2_bench_names_the_int8_kernels_ort_runs_on_this_cpu():
    a = pytest.importorskip("avx2_bench")
    zen4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
    alderlake = "flags\t\t: fpu avx2 avx_vnni\n"
    haswell = "flags\t\t: fpu sse2 avx avx2 fma\n"
    assert [a.ort_int8_isa(c) for c in (zen4, alderlake, haswell, "")] == ["avx512-vnni", "avx-vnni", "avx2", "avx2"]
    # only on an AVX2-only CPU is the ratio the price of exactness; elsewhere the report says it overstates
    assert "overstates" in a._ort_caveat("avx512-vnni") and "512 bits" in a._ort_caveat("avx512-vnni")
    assert "overstates" not in a._ort_caveat("avx2")


def test_interleaved_timing_rewarms_for_a_least_time_after_the_pause():
    import time

    _timing = pytest.importorskip("_timing")
    stamps = []
    _timing.interleaved({"a": lambda: stamps.append(time.perf_counter())}, 1, warmup=1, rewarm=1, rewarm_s=0.02,
                        settle_s=0.01)
    untimed = stamps[1:-1]  # between the warm-up call and the one timed call
    # rewarm_s counts from the turn's start, which the first untimed call's stamp follows by a call's overhead
    # (microseconds): the timed call comes at least 0.02 s after the start, so at least 0.02 s less that overhead
    # after the first stamp (comparing with 0.02 itself failed about one run in five)
    assert len(untimed) > 1 and stamps[-1] - untimed[0] >= 0.02 - 1e-3
    stamps.clear()
    _timing.interleaved({"a": lambda: stamps.append(1)}, 2, warmup=1, rewarm=3)  # no least time: exactly 3
    assert len(stamps) == 1 + 2 * (3 + 1)


def test_time_engines_reports_a_failing_build_as_none_and_times_the_rest(capsys):
    kb = pytest.importorskip("kernels_bench")

    def broken():
        raise ValueError("no such model\nmore")

    timed = kb.time_engines({"fast": lambda: (lambda: None), "broken": broken}, kb.CALLS_PER_ROUND, "t=1 m")
    assert timed["row"]["broken"] is None and timed["row"]["fast"] >= 0.0
    assert timed["runs"] == {"fast": kb.CALLS_PER_ROUND} and len(timed["load"]) == 2
    assert "[t=1 m broken] failed: ValueError: no such model" in capsys.readouterr().err
