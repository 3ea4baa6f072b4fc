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
