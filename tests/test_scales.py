"""Scale arithmetic against hand-computed values."""

import numpy as np
import pytest

from gwq_tvm.plan import scales as S
from gwq_tvm.plan.sfc import apply_sfc, make_sfc


def test_qrange_and_weight_qmax():
    assert S.qrange(8, False) == (0, 255)
    assert S.qrange(8, True) == (-128, 127)
    assert S.qrange(4, True) == (-8, 7)
    assert S.qrange(2, False) == (0, 3)
    assert S.weight_qmax(8) == 127 and S.weight_qmax(4) == 7


def test_split_scale_is_mantissa_times_power_of_two():
    assert S.split_scale(0.375) == (1.5, -2)
    assert S.split_scale(1.0) == (1.0, 0)
    m, e = S.split_scale(0.0123)
    assert 1.0 <= m < 2.0 and m * 2.0**e == pytest.approx(0.0123, rel=0, abs=1e-18)
    with pytest.raises(ValueError):
        S.split_scale(0.0)


def test_quantize_multiplier_q31():
    m, n = S.quantize_multiplier(np.array([0.5, 0.1, 1.5]))
    assert m.tolist() == [1 << 30, 1717986918, 1610612736]  # 0.1 * 2**34 = 1717986918.4
    assert n.tolist() == [31, 34, 30]
    # exact for powers of two, within half an LSB of the mantissa otherwise
    r = np.array([0.3, 1e-3, 7.25e-5])
    m, n = S.quantize_multiplier(r)
    np.testing.assert_allclose(m / 2.0**n, r, rtol=2.0**-30)


def test_quantize_multiplier_rejects_bad_ratios():
    with pytest.raises(ValueError):
        S.quantize_multiplier(np.array([-1.0]))
    with pytest.raises(ValueError):
        S.quantize_multiplier(np.array([2.0**40]))


def test_round_shift_is_round_half_up():
    x = np.array([5, 6, 7, -5, -6, -7, 4, -4])
    # /4: 1.25 1.5 1.75 -1.25 -1.5 -1.75 1 -1 -> floor(x/4 + 1/2)
    assert S.round_shift(x, 2).tolist() == [1, 2, 2, -1, -1, -2, 1, -1]


def test_make_sfc_kinds():
    assert make_sfc(1.0).kind == "identity"
    s = make_sfc([0.25, 2.0, 1.0])
    assert s.kind == "shift" and s.right.tolist() == [2, 0, 0] and s.left.tolist() == [0, 1, 0]
    assert make_sfc([0.25, 0.3]).kind == "multiply"


def test_apply_sfc_matches_real_rescaling():
    rng = np.random.default_rng(0)
    acc = rng.integers(-50000, 50000, size=(2, 3, 4, 4))
    ratios = np.array([0.0031, 0.5, 0.0007])
    got = apply_sfc(acc, make_sfc(ratios))
    exact = np.floor(acc * ratios.reshape(1, 3, 1, 1) + 0.5)
    assert np.abs(got - exact).max() <= 1  # Q31 mantissa error can flip a tie
    assert (got == exact).mean() > 0.99
    shift = apply_sfc(acc, make_sfc([0.25, 0.5, 0.125]))
    assert np.array_equal(shift, np.floor(acc * np.array([0.25, 0.5, 0.125]).reshape(1, 3, 1, 1) + 0.5))


def test_weight_quantization_per_channel():
    w = np.array([[[[1.0, -0.5]]], [[[0.0, 0.0]]], [[[0.375, 0.5]]]], dtype=np.float32)
    s = S.weight_scales(w, 8, per_channel=True)
    assert s.tolist() == pytest.approx([1 / 127, 1.0, 0.5 / 127])
    q = S.quantize_weight(w, s, 8)
    assert q.reshape(3, 2).tolist() == [[127, -64], [0, 0], [95, 127]]
