"""PTQ-SL (sub-layerwise weight blocks, channel reordering, block-scale search) and GDRQ (Scale-Clip, filter groups)."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import ConfigError, PlanError
from gwq_tvm.plan import sublayer
from gwq_tvm.plan.quantplan import QuantPlan, WeightQuant
from gwq_tvm.reference import run_reference

from conftest import compile_and_run


def _w(rng, *shape):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)


def small_net(seed=0):
    """1x3x16x16: conv+relu, depthwise conv+relu, conv + residual add + relu, a concat of two convs,
    max pool, global average pool, dense.  Output channels are given unequal ranges so reordering matters."""
    rng = np.random.default_rng(seed)
    spread = np.exp(rng.standard_normal((8, 1, 1, 1))).astype(np.float32)
    inits = {
        "w0": _w(rng, 8, 3, 3, 3) * spread, "b0": rng.standard_normal(8).astype(np.float32) * 0.1,
        "wd": _w(rng, 8, 1, 3, 3) * 2, "bd": rng.standard_normal(8).astype(np.float32) * 0.1,
        "w1": _w(rng, 8, 8, 3, 3) * spread, "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "wa": _w(rng, 4, 8, 1, 1), "wb": _w(rng, 4, 8, 3, 3),
        "wf": _w(rng, 4, 8), "bf": rng.standard_normal(4).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "wd", "bd"], ["cd"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["cd"], ["rd"]),
        helper.make_node("Conv", ["rd", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "r0"], ["a"]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "wa"], ["ca"]),
        helper.make_node("Conv", ["ra", "wb"], ["cb"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["ca", "cb"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "subl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def net():
    x = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    return gwq_tvm.load_model(small_net()), x


def _ops(mod) -> list[str]:
    func = mod["main"]
    return [b.value.op.name for blk in func.body.blocks for b in blk.bindings if hasattr(b.value, "op")]


def _bit_exact(q, x):
    assert q.integer_only.ok, q.integer_only
    np.testing.assert_array_equal(compile_and_run(q.mod, x[:4]), run_reference(q.mod, x[:4]))


@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
@pytest.mark.parametrize("blocks, fit", [((2, 1), "strict"), ((4, 3), "gcd"), (("C", 2), "gcd"), ((2, 4), "gcd")])
def test_weight_blocks_compile_bit_exact(net, mode, blocks, fit):
    """Every block shape, with and without input blocks, is integer-only and bit-exact against the numpy reference."""
    fm, x = net
    cfg = QuantConfig(mode=mode, weight_blocks=blocks, weight_blocks_fit=fit, weight_bits=4,
                      **({"groups": 1} if mode == "gwq" else {}))
    q = gwq_tvm.quantize(fm, x, cfg)
    _bit_exact(q, x)
    n_in = max(w.block[1] if w.block else 1 for w in q.plan.layers.values())
    assert (n_in > 1) == ("relax.strided_slice" in _ops(q.mod))
    if mode == "gwq":  # power-of-two block steps: the input-block partials are left shifts, every SFC a shift
        assert q.sfc["shift_share"] == 1.0
        assert all(sublayer.S.is_power_of_two(np.array(w.scales)).all() for w in q.plan.layers.values())


def test_input_blocks_are_int32_partials_added_in_integer(net):
    """``n_in > 1``: one conv per input block on its input-channel slice (a depthwise conv splits its taps instead,
    reading the whole input), each rescaled, then added; the recipe's partial weights sum to the whole weight."""
    fm, x = net
    q = gwq_tvm.quantize(fm, x, QuantConfig(weight_blocks=(2, 3), weight_blocks_fit="gcd"))
    from gwq_tvm.plan.program import layer_accumulator

    dw = layer_accumulator(q.graph.nodes["conv2d_1"], q.plan)  # the depthwise conv: K = 9 taps, 3 blocks of 3
    assert q.graph.nodes["conv2d_1"].attrs["groups"] == 8 and len(dw.partials) == 3
    assert all(p.channels is None for p in dw.partials)
    np.testing.assert_array_equal(sum(p.weight.astype(np.int32) for p in dw.partials), dw.weight)
    full = layer_accumulator(q.graph.nodes["conv2d_0"], q.plan)  # 3 input channels x 9 taps: one channel each
    assert [p.channels for p in full.partials] == [(0, 1), (1, 2), (2, 3)]
    ops = _ops(q.mod)
    assert ops.count("relax.nn.conv2d") > len([n for n in q.graph.nodes.values() if n.kind == "conv2d"])
    assert "relax.strided_slice" in ops
    _bit_exact(q, x)


def test_reordering_is_static_and_keeps_the_function(net):
    """Reordering sorts channels by range into the blocks; the program has the same ops as without it (no gather),
    its outputs stay close to the fp32 model's (float tolerance of 8-bit weights), and it is bit-exact."""
    fm, x = net
    base = QuantConfig(weight_blocks=(2, 1), weight_bits=8)
    plain = gwq_tvm.quantize(fm, x, base)
    ordered = gwq_tvm.quantize(fm, x, base.replace(reorder_channels=True))
    w = ordered.graph.nodes["conv2d_0"].weight
    perm = ordered.plan.layers["conv2d_0"].permutation
    ranges = np.abs(w.reshape(8, -1)).max(axis=1)
    assert list(perm) == list(np.argsort(ranges, kind="stable"))
    assert ranges[list(perm[:4])].max() <= ranges[list(perm[4:])].min()
    assert _ops(plain.mod) == _ops(ordered.mod)
    assert not {"relax.take", "relax.gather_elements", "relax.gather_nd"} & set(_ops(ordered.mod))
    ref = compile_and_run(gwq_tvm.load_model(small_net()).mod, x[:4])
    out = compile_and_run(ordered.mod, x[:4])
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    _bit_exact(ordered, x)


def test_permutation_is_block_membership():
    """Output block ``i`` holds channels ``perm[i*b:(i+1)*b]``: the scale map equals physically permuting the rows,
    taking contiguous blocks and permuting back."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)) * np.exp(rng.standard_normal((8, 1, 1, 1)))
    perm = sublayer.reorder_by_range(w)
    wq = sublayer.weight_quant("l", w, 4, pot=False, blocks=(2, 2), reorder=True)
    physical = sublayer.weight_quant("l", w[perm], 4, pot=False, blocks=(2, 2))
    np.testing.assert_array_equal(wq.scale_map(w.shape)[perm], physical.scale_map(w.shape))
    assert wq.scales == physical.scales


def test_reordering_groups_alike_ranges():
    """Sort-and-split minimises the sum of the block steps (each channel's step is at least its own range's), the
    clustering objective of PTQ-SL's reordering; contiguous blocks of the same weight have a larger sum."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 8, 3, 3)) * np.exp(rng.standard_normal((16, 1, 1, 1)))
    steps = {r: sum(sublayer.weight_quant("l", w, 4, pot=False, blocks=(4, 1), reorder=r).scales) for r in (False, True)}
    assert steps[True] < steps[False]
    assert np.isclose(steps[True], np.sort(np.abs(w.reshape(16, -1)).max(axis=1)).reshape(4, 4).max(axis=1).sum() / 7)


def test_filter_groups_add_no_op(net):
    """GDRQ filter groups are folded into the per-channel SFC constants: the same op list as per-channel."""
    fm, x = net
    for mode in ("per-layer", "gwq"):
        extra = {"groups": 1} if mode == "gwq" else {}
        chan = gwq_tvm.quantize(fm, x, QuantConfig(mode=mode, weight_bits=4, **extra))
        grouped = gwq_tvm.quantize(fm, x, QuantConfig(mode=mode, weight_bits=4, weight_groups=2, scale_clip="std", **extra))
        assert grouped.plan.layers["conv2d_0"].block == (2, 1)
        assert _ops(grouped.mod) == _ops(chan.mod)
        assert grouped.sfc["shift_share"] == chan.sfc["shift_share"]
        _bit_exact(grouped, x)


def test_scale_clip_clips_heavy_tails():
    """Scale-Clip at k*sigma: with a few outliers, a finite k is chosen and the weight error drops against max-calibration."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 512))
    w[:, 0] = 8.0
    for rule in ("std", "mean-abs"):
        b = sublayer.blocks_of(w, 4, 1)
        k = sublayer.choose_clip_k(w, b, 3, False, rule, None)
        assert np.isfinite(k)
        clipped = sublayer.weight_quant("l", w, 3, pot=False, clip_rule=rule)
        plain = sublayer.weight_quant("l", w, 3, pot=False)
        assert sublayer.weight_error(w, clipped.scale_map(w.shape), 3) < sublayer.weight_error(w, plain.scale_map(w.shape), 3)
        assert max(clipped.scales) < max(plain.scales)


def test_activation_scale_clip_lowers_scales(net):
    fm, x = net
    plain = gwq_tvm.quantize(fm, x, QuantConfig())
    clipped = gwq_tvm.quantize(fm, x, QuantConfig(act_clip_k=2.0, scale_clip="std"))
    lower = [t for t in plain.plan.tensors if clipped.plan.scale(t) < plain.plan.scale(t)]
    assert lower and all(clipped.plan.scale(t) <= plain.plan.scale(t) * (1 + 1e-12) for t in plain.plan.tensors)
    _bit_exact(clipped, x)


@pytest.mark.parametrize("metric", ["l2", "cosine", "weighted-l2"])
def test_block_search_lowers_the_layer_output_error(net, metric):
    """The searched block scales have no larger layer-output error than max-calibrated ones, and compile bit-exact."""
    from gwq_tvm.plan import block_search as B

    fm, x = net
    cfg = QuantConfig(weight_bits=3, weight_blocks=(2, 2), weight_blocks_fit="gcd", reorder_channels=True)
    q = gwq_tvm.quantize(fm, x, cfg)
    acts = B.node_outputs(fm, q.graph, x)
    searched = B.search_plan(fm, q.graph, q.plan, x, metric=metric, rounds=1, acts=acts)
    for name in ("conv2d_0", "conv2d_2", "dense_0"):
        node = q.graph.nodes[name]
        src = node.inputs[0]
        cols = B.columns(B._fake_quant(acts[src], q.plan.scale(src), *B.out_range(q.graph.nodes[q.graph.tensor_of(src)], q.plan)), node)
        before = B.LayerProblem(node, q.plan.layers[name], cols, B.columns(acts[src], node)).error(metric)
        after = B.LayerProblem(node, searched.layers[name], cols, B.columns(acts[src], node)).error(metric)
        assert after <= before + 1e-9
    changed = [n for n in q.plan.layers if searched.layers[n].scales != q.plan.layers[n].scales]
    assert changed
    _bit_exact(gwq_tvm.quantize(fm, plan=searched), x)


def test_block_search_through_the_config_keeps_gwq_shifts(net):
    fm, x = net
    q = gwq_tvm.quantize(fm, x, QuantConfig(mode="gwq", groups=1, weight_bits=4, weight_blocks=(2, 2),
                                            weight_blocks_fit="gcd", block_search=True, search_rounds=1))
    assert q.sfc["shift_share"] == 1.0
    _bit_exact(q, x)


def test_block_plans_round_trip_through_json(net, tmp_path):
    fm, x = net
    q = gwq_tvm.quantize(fm, x, QuantConfig(weight_blocks=(4, 2), weight_blocks_fit="gcd", reorder_channels=True))
    q.plan.save(tmp_path / "p.json")
    again = QuantPlan.load(tmp_path / "p.json")
    assert again.layers == q.plan.layers and again.tensors == q.plan.tensors and again.config.weight_blocks == (4, 2)
    np.testing.assert_array_equal(run_reference(gwq_tvm.quantize(fm, plan=again).mod, x[:2]), run_reference(q.mod, x[:2]))


def test_report_shows_blocks_reordering_and_clip(net):
    """``gwq-tvm report``: each layer's block grid, reordering, steps (powers of two under GWQ) and Scale-Clip;
    the input-block partial rescales are SFC sites (shifts under GWQ)."""
    from gwq_tvm.report import format_text

    fm, x = net
    q = gwq_tvm.quantize(fm, x, QuantConfig(mode="gwq", groups=1, weight_blocks=(2, 2), weight_blocks_fit="gcd",
                                            reorder_channels=True, scale_clip="std"))
    r = q.report()
    w = r["weights"]["dense_0"]
    assert w["block"] == [2, 2] and w["reordered"] and w["pot_steps"] and w["scale_clip"]["rule"] == "std"
    assert any(s["port"] == "partial1" and s["kind"] == "shift" and s["src"] == "global_avgpool_0" for s in r["sites"])
    assert "dense_0 2x2 reordered" in format_text(r)


@pytest.mark.parametrize("shape, blocks, fitted", [
    ((96, 1, 5, 5), (4, 4), (4, 1)),  # MobileNetV3 depthwise 5x5: K = 25 taps, odd: blocks over output channels only
    ((72, 1, 3, 3), (8, 2), (8, 1)),  # depthwise 3x3: K = 9
    ((16, 1, 3, 3), (4, 3), (4, 3)),  # a grid that divides the taps does split them (one partial per tap group)
    ((24, 72, 1, 1), (4, 4), (4, 4)),  # pointwise: K = C_in
])
def test_depthwise_blocks_under_gcd_fit(shape, blocks, fitted):
    """A depthwise conv's ``K`` is its ``kh*kw`` taps; the gcd fit gives odd kernels ``NIN = 1`` (the benchmark's
    MobileNetV3 rows), and the strict fit names the layer instead of fitting."""
    assert sublayer.block_shape("dw", shape, blocks, "gcd") == fitted
    if fitted != blocks:
        with pytest.raises(PlanError, match=r"^dw: weight blocks .* do not divide its"):
            sublayer.block_shape("dw", shape, blocks, "strict")


@pytest.mark.parametrize("blocks, message", [
    ((3, 1), "do not divide its 8x27 weight"),
    ((16, 1), "larger than its 8x27 weight"),
    ((1, 2), "do not divide its 8x27 weight"),
])
def test_bad_block_shapes_are_named(net, blocks, message):
    fm, x = net
    with pytest.raises(PlanError, match=message) as err:
        gwq_tvm.quantize(fm, x, QuantConfig(weight_blocks=blocks))
    assert str(err.value).endswith("--weight-blocks-fit gcd) gives such layers the largest grid that divides them")


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_blocks=(0, 1)), "positive integers"),
    (dict(weight_blocks=(2,)), "pair"),
    (dict(weight_blocks=(2, 1), weight_groups=2), "not both"),
    (dict(reorder_channels=True), "give weight_blocks or weight_groups"),
    (dict(scale_clip="max"), "scale_clip must be"),
    (dict(scale_clip_k=3.0), "needs scale_clip"),
    (dict(search_metric="l1"), "search_metric"),
])
def test_bad_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**kwargs)


def test_permutation_needs_block_granularity():
    with pytest.raises(PlanError, match="permutation applies to granularity 'block'"):
        QuantPlan("f", {"g": 1.0}, {"t": gwq_tvm.plan.quantplan.TensorQuant(8, False, "g", 0)},
                  {"l": WeightQuant(8, (0.1,) * 4, "channel", permutation=(0, 1, 2, 3))})


@pytest.mark.parametrize("blocks, message", [("0x1", "NOUTxNIN"), ("4", "NOUTxNIN"), ("3x1", "do not divide")])
def test_cli_bad_block_shape_is_one_line(tmp_path, blocks, message):
    out = tmp_path / "m.so"
    r = subprocess.run([sys.executable, "-m", "gwq_tvm.cli", "--quiet", "compile", str(gwq_tvm.data.bundled_model()),
                        "-o", str(out), "--calib-samples", "64", "--weight-blocks", blocks],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gwq-tvm: error:") and message in lines[0], r.stderr
    assert not out.exists()


if __name__ == "__main__":
    import tvm.testing

    tvm.testing.main()
