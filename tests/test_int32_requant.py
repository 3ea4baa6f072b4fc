"""int32 requantize (issue 22): a multiply SFC whose accumulator bound allows it runs in int32 with a
``Q<b>`` mantissa and a result-preserving pre-clip; where the bound forbids it, the Q31 multiply in int64."""

import dataclasses

import numpy as np
import pytest
from tvm import relax
from tvm.relax import op as R

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import PlanError
from gwq_tvm.plan import program as P
from gwq_tvm.plan.sfc import INT32_MAX, apply_sfc, int32_multiply, make_sfc
from gwq_tvm.reference import run_reference

from conftest import compile_and_run


def _requant_ref(x, sfc, qmin, qmax, pre_clip=None):
    """clip(SFC(x)) in exact int64, after the optional pre-clip."""
    if pre_clip is not None:
        x = np.clip(x, pre_clip[0], pre_clip[1])
    return np.clip(apply_sfc(x, sfc), qmin, qmax)


@pytest.mark.parametrize("qmin,qmax", [(-128, 127), (0, 255), (0, 6 * 16)])
@pytest.mark.parametrize("bound", [300, 2**16, 2**22, INT32_MAX])
def test_int32_multiply_fits_and_preclip_changes_nothing(qmin, qmax, bound):
    rng = np.random.default_rng(bound % 1000 + qmax)
    ratio = np.exp(rng.uniform(np.log(2e-3), np.log(1.5), 16))
    wide = make_sfc(ratio)
    got = int32_multiply(wide, bound, qmin, qmax, min_bits=1)
    assert got is not None
    narrow, clip = got
    m = narrow.multiplier.astype(object)
    n = narrow.right.astype(object)
    lo, hi = (clip if clip is not None else (np.full(16, -bound), np.full(16, bound)))
    # no intermediate leaves int32: |x| <= min(bound, |lo|, |hi|), exact Python integers
    reach = np.minimum(np.maximum(np.abs(lo), np.abs(hi)), bound).astype(object)
    assert max(reach * m + (1 << (n - 1)) for reach, m, n in zip(reach, m, n)) <= INT32_MAX
    # every mantissa keeps as many bits as int32 allows and never more than Q31
    assert np.all(narrow.multiplier < 2**31)
    # the pre-clip is result-preserving: same output as the unclipped narrow multiply (int64), over the whole range
    x = np.concatenate([rng.integers(-bound, bound + 1, size=(4000, 16)),
                        np.array([[-bound] * 16, [bound] * 16, [0] * 16])])
    if clip is not None:
        np.testing.assert_array_equal(_requant_ref(x, narrow, qmin, qmax, clip), _requant_ref(x, narrow, qmin, qmax))
    # against the Q31 multiply: results differ by at most one step, and rarely
    diff = np.abs(_requant_ref(x, narrow, qmin, qmax, clip) - _requant_ref(x, wide, qmin, qmax))
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_int32_multiply_refuses_too_few_bits():
    """A tiny ratio with a huge bound leaves < INT32_MIN_BITS mantissa bits: stay Q31 in int64."""
    assert int32_multiply(make_sfc([1e-4, 0.2]), 2**24, 0, 255) is None
    assert int32_multiply(make_sfc([1e-4, 0.2]), 2**24, 0, 255, min_bits=8) is not None
    with pytest.raises(ValueError):
        int32_multiply(make_sfc([0.25]), 100, 0, 255)  # a shift, not a multiply


def _two_conv_module():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 3, 8, 8], "float32"))
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 3, 3, 3)).astype("float32")
    w2 = rng.normal(size=(6, 8, 3, 3)).astype("float32")
    w3 = rng.normal(size=(4, 6, 3, 3)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.nn.relu(R.nn.conv2d(x, relax.const(w1), padding=[1, 1, 1, 1])))
            y = bb.emit(R.nn.conv2d(y, relax.const(w2), padding=[1, 1, 1, 1]))
            out = bb.emit_output(R.nn.relu(R.nn.conv2d(y, relax.const(w3), padding=[1, 1, 1, 1])))
        bb.emit_func_output(out)
    return bb.get()


def _multiply_dtypes(mod):
    """The dtype of every ``relax.multiply`` on integers, in program order."""
    out = []
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            if isinstance(b.value, relax.Call) and b.value.op.name == "relax.multiply":
                dt = str(b.value.ty.dtype)
                if dt.startswith("int"):
                    out.append(dt)
    return out


def _with_out_exponent(q, name, shift):
    t = q.plan.tensors[name]
    plan = dataclasses.replace(q.plan, tensors=dict(q.plan.tensors, **{name: dataclasses.replace(t, exponent=t.exponent + shift)}))
    return plan


def test_realized_ir_int32_where_bound_allows_int64_where_it_forbids():
    """conv2d_1 (accumulator bound ~2**20) with its output scale 2**-4 of the calibrated one (ratio ~2**-5.5:
    ~17 mantissa bits fit) requantizes in int32 after a pre-clip; with it 2**8 times the calibrated one (ratio
    ~2**-17.5: ~5 bits would fit) it is the Q31 multiply in int64.  Both programs are bit-exact against the
    numpy reference and integer-only."""
    fm = gwq_tvm.frontend._finish(_two_conv_module(), "test")
    calib = np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype("float32")
    q = gwq_tvm.quantize(fm, calib, QuantConfig())
    convs = [n for n in q.graph.nodes.values() if n.kind == "conv2d" and P.needs_integer_output(q.graph, n.name)]
    assert [n.name for n in convs] == ["conv2d_0", "conv2d_1"]
    programs = {}
    for shift, expect in ((-4, "int32"), (8, "int64")):
        plan = _with_out_exponent(q, "conv2d_1", shift)
        qm = gwq_tvm.quantize(fm, plan=plan)
        n = convs[1]
        rq = P.requant(n, P.accumulator(n, qm.graph, qm.plan), qm.plan)
        assert rq.work_dtype == expect
        if expect == "int32":
            assert rq.pre_clip is not None and int(rq.sfc.multiplier.max()) < 2**31 // 2**10
        else:
            assert rq.pre_clip is None and int(rq.sfc.multiplier.min()) >= 2**30  # the Q31 mantissa
        # the emitted multiplies: conv2d_0's, conv2d_1's (then conv2d_2's dequantize is float)
        assert _multiply_dtypes(qm.mod)[:2] == ["int32", expect]
        assert qm.integer_only.ok
        programs[expect] = qm
    x = calib[:1]
    for qm in programs.values():
        np.testing.assert_array_equal(compile_and_run(qm.mod, x), run_reference(qm.mod, x))


def test_the_plan_says_whether_multiplies_narrow_to_int32():
    """``arithmetic.int32_requantize`` is part of the plan: new plans write ``true``; a plan file written before
    the setting existed (no key) loads as ``false`` and keeps the Q31 int64 multiply it was made with."""
    fm = gwq_tvm.frontend._finish(_two_conv_module(), "test")
    calib = np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype("float32")
    q = gwq_tvm.quantize(fm, calib, QuantConfig())
    plan = _with_out_exponent(q, "conv2d_1", -4)
    d = plan.to_dict()
    assert d["arithmetic"]["int32_requantize"] is True
    del d["arithmetic"]["int32_requantize"]
    old = gwq_tvm.QuantPlan.from_dict(d)
    assert old.arithmetic.int32_requantize is False
    n = next(n for n in q.graph.nodes.values() if n.name == "conv2d_1")
    assert P.requant(n, P.accumulator(n, q.graph, plan), plan).work_dtype == "int32"
    assert P.requant(n, P.accumulator(n, q.graph, old), old).work_dtype == "int64"
    d["arithmetic"]["int32_requantize"] = 1
    with pytest.raises(PlanError, match="arithmetic.int32_requantize: expected true/false"):
        gwq_tvm.QuantPlan.from_dict(d)
