"""Mixed precision: LIMPQ's bit-width ILP, the proxy importance, the strategy, the CLI."""

import json

import numpy as np
import pytest

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import PlanError
from gwq_tvm.plan import mixed_precision as M
from gwq_tvm.plan.mixed_precision import Layer, Problem, parse_budget
from gwq_tvm.runtime import host_target

from conftest import compile_and_run


def _hand_problem():
    # Two layers read the same tensor t (so they share its activation bits):
    #   A: 100 weights, 1000 MACs, I_w = {8: 0, 4: 1, 2: 5}
    #   B: 300 weights, 1000 MACs, I_w = {8: 0, 4: 2, 2: 3.5}
    #   t: I_a = {8: 0, 4: 4}
    # W8A8: size 400 bytes, BitOps 2000 * 64 = 128000.
    return Problem([Layer("A", "t", 100, 1000), Layer("B", "t", 300, 1000)],
                   {"A": {8: 0.0, 4: 1.0, 2: 5.0}, "B": {8: 0.0, 4: 2.0, 2: 3.5}}, {"t": {8: 0.0, 4: 4.0}},
                   weight_bits=(2, 4, 8), act_bits=(4, 8))


def test_ilp_hand_checkable_optimum():
    p = _hand_problem()
    # Size <= 50% = 200 bytes (A costs 100*b/8, B 300*b/8): B=8 alone is 300, too big.  B=4 (150) leaves A<=50 bytes:
    # A=4 costs 1+2 = 3, A=2 costs 7; B=2 (75) allows A=8: 0+3.5 = 3.5.  t stays at 8 (no BitOps bound, I_a[8] = 0).
    # Optimum: A=4, B=4, a=8, objective 3, size exactly the budget.
    pol = p.solve(parse_budget("50%", "size"))
    assert (pol.weight_bits, pol.act_bits) == ({"A": 4, "B": 4}, {"t": 8})
    assert pol.objective == 3.0 and pol.size_bytes == 200.0 and pol.bitops == 64000.0
    # Add BitOps <= 40% = 51200.  With a=8: 8000*(bA+bB) <= 51200, so bA+bB <= 6: (4,2) costs 1+3.5 = 4.5 (125 bytes),
    # (2,4) 7, (2,2) 8.5.  With a=4 (cost 4): bA+bB <= 12 within 200 bytes: (4,4) 4+3 = 7, (8,2) 4+3.5 = 7.5.
    # Optimum: A=4, B=2, a=8, objective 4.5.
    pol = p.solve(parse_budget("50%", "size"), parse_budget("40%", "bitops"))
    assert (pol.weight_bits, pol.act_bits, pol.objective) == ({"A": 4, "B": 2}, {"t": 8}, 4.5)
    assert pol.bitops == 48000.0 and pol.size_bytes == 125.0


def test_stored_bytes_are_nibbles_up_to_4_bits_on_an_int4_family():
    assert [M.stored_bytes(10, b, True) for b in (2, 3, 4, 5, 8)] == [5.0, 5.0, 5.0, 10.0, 10.0]
    assert [M.stored_bytes(10, b, False) for b in (2, 4, 8)] == [10.0, 10.0, 10.0]
    assert M.weight_bytes(10, 2) == 2.5  # the ILP's size row: bits * count / 8


def test_infeasible_budget_names_the_smallest_feasible_value():
    p = _hand_problem()
    # smallest size: both layers at 2 bits, 25 + 75 = 100 bytes = 25% of W8A8
    with pytest.raises(PlanError, match=r"^size budget 10% is infeasible: the smallest feasible size is 25% \(100 bytes\)$"):
        p.solve(parse_budget("10%", "size"))
    # smallest BitOps: 2000 MACs * 2 * 4 = 16000
    with pytest.raises(PlanError, match=r"smallest feasible BitOps are 16000 BitOps \(12\.5% of W8A8\)"):
        p.solve(None, parse_budget("1000", "bitops"))
    # both given: the one that fails is named
    with pytest.raises(PlanError, match=r"^BitOps budget 10% is infeasible: the smallest feasible BitOps are 12\.5% \(16000 BitOps\)$"):
        p.solve(parse_budget("90%", "size"), parse_budget("10%", "bitops"))


def test_shared_activation_constraint_holds_in_every_policy():
    rng = np.random.default_rng(0)
    # t0 feeds L0 and L1; t1 feeds L2 and L3; L4 reads the fixed input tensor
    layers = [Layer("L0", "t0", 50, 900), Layer("L1", "t0", 200, 400), Layer("L2", "t1", 120, 700),
              Layer("L3", "t1", 80, 1500), Layer("L4", "in", 30, 300)]
    for trial in range(12):
        iw = {l.name: dict(zip((2, 3, 4, 8), sorted(rng.random(4), reverse=True))) for l in layers}
        ia = {t: dict(zip((4, 8), sorted(rng.random(2), reverse=True))) for t in ("t0", "t1")}
        p = Problem(layers, iw, ia, fixed_acts={"in": 8}, alpha=float(rng.uniform(0.5, 2)))
        size, bitops = parse_budget(f"{rng.uniform(30, 90):.1f}%", "s"), parse_budget(f"{rng.uniform(15, 90):.1f}%", "b")
        try:
            pol = p.solve(size, bitops)
        except PlanError:
            continue
        for l in layers:  # the pair variable each layer uses agrees with its own weight choice and its tensor's
            assert pol.pair_bits[l.name] == (pol.weight_bits[l.name], pol.act_bits[l.tensor])
        assert pol.act_bits["in"] == 8
        assert pol.size_bytes <= size.resolve(pol.size_w8a8) * (1 + 1e-9)
        assert pol.bitops <= bitops.resolve(pol.bitops_w8a8) * (1 + 1e-9)
        assert pol.bitops == sum(l.macs * pol.weight_bits[l.name] * pol.act_bits[l.tensor] for l in layers)


def _weight_constants(mod):
    """The int8 weights of the realized conv2d/matmul calls, in program order."""
    from tvm import relax

    from gwq_tvm.ir import const_value

    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and getattr(v.op, "name", "") in ("relax.nn.conv2d", "relax.matmul"):
                w = const_value(v.args[1])
                if w is not None and w.dtype == np.int8:
                    out.append(w)
    return out


@pytest.mark.slow
def test_mixed_plan_on_bundled_resnet_compiles_bit_exact(fmnist):
    from gwq_tvm.reference import run_reference

    calib, test_x, _ = fmnist
    q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:128],
                         QuantConfig(mixed_precision=True, size_budget="55%", bitops_budget="90%"))
    plan, mp = q.plan, q.plan.provenance["mixed_precision"]
    layer_bits = {n: w.bits for n, w in plan.layers.items()}
    assert min(layer_bits.values()) < 8 and layer_bits == mp["weight_bits"]
    # the plan honours the budgets: packed bytes bits*count/8 over its layers, BitOps MACs*w*a of its input tensor
    size = sum(q.graph.nodes[n].weight.size * b / 8 for n, b in layer_bits.items())
    assert size == mp["size_bytes"] <= 0.55 * mp["size_w8a8_bytes"] * (1 + 1e-9)
    # and what this machine's module stores: a nibble per <= 4-bit weight where the family has an int4 step
    from gwq_tvm.schedules.latency import int4_step

    step = int4_step(host_target())
    stored = sum(q.graph.nodes[n].weight.size * (0.5 if b <= 4 and step else 1) for n, b in layer_bits.items())
    assert mp["stored_bytes"] == {"bytes": stored, "target": str(host_target()), "target_name": "host", "int4_step": step}
    from gwq_tvm.calibration.mixed_precision import layer_macs

    bitops = sum(layer_macs(q.graph.nodes[n]) * b * plan.tensors[mp["layer_input"][n]].bits for n, b in layer_bits.items())
    assert bitops == mp["bitops"] <= 0.90 * mp["bitops_w8a8"] * (1 + 1e-9)
    assert mp["solve_seconds"] > 0 and set(mp["importance"]["weights"]) == {n for n, b in layer_bits.items()} - {"conv2d_0", "dense_0"}
    # the plan's config is an ordinary one: the chosen bits as overrides (the search is provenance only)
    assert plan.config.bits and not plan.config.mixed_precision
    # the report shows the search: budgets, figures, bits and importance per layer
    from gwq_tvm.report import format_text

    text = format_text(q.report())
    assert "mixed precision (proxy importance; size budget 55%, bitops budget 90%)" in text
    assert f"stored on host: {stored:.0f} weight bytes" in text
    t3 = mp["layer_input"]["conv2d_3"]
    assert f"conv2d_3: W{layer_bits['conv2d_3']} A{plan.tensors[t3].bits} (input {t3}); importance w [2b:" in text
    # compiled: integer-only, bit-exact against the reference
    assert q.integer_only.ok, str(q.integer_only)
    x = test_x[:32]
    np.testing.assert_array_equal(compile_and_run(q.mod, x), run_reference(q.mod, x))
    # the realized weights use exactly the planned widths (max-calibrated per channel: the largest reaches qmax)
    consts = _weight_constants(q.mod)
    assert len(consts) == len(layer_bits)
    for (n, b), w in zip(layer_bits.items(), consts):
        assert int(np.abs(w.astype(np.int32)).max()) == 2 ** (b - 1) - 1, n


@pytest.mark.parametrize("args, message", [
    (["--mixed-precision", "--size-budget", "60%", "--weight-bits", "4"], "--weight-bits cannot be combined with --mixed-precision"),
    (["--mixed-precision", "--size-budget", "60%", "--plan", "x.plan.json"], "cannot be combined with --plan"),
    (["--mixed-precision", "--size-budget", "60%", "--importance", "learned"], "importance 'learned'"),
    (["--mixed-precision"], "needs a size_budget, a bitops_budget or a latency_budget"),
    (["--size-budget", "60%"], "size_budget applies with mixed_precision only"),
    (["--mixed-precision", "--bitops-budget", "half"], "bitops_budget must be a positive number or a percentage"),
    # refused before the importance is measured: W8A8 is 77072 bytes; the ends (784 weights) at 8 bits
    # and the other 76288 at 2 bits are 19856 bytes
    (["--mixed-precision", "--size-budget", "10%"], "size budget 10% is infeasible: the smallest feasible size is 25.76% (19856 bytes)"),
])
def test_cli_bad_mixed_precision_options_are_one_line(tmp_path, capsys, args, message):
    from gwq_tvm.cli import main

    assert main(["--quiet", "compile", str(gwq_tvm.data.bundled_model()), *args, "-o", str(tmp_path / "m.so")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gwq-tvm: error:") and message in lines[0], lines
    assert not (tmp_path / "m.so").exists()


@pytest.mark.parametrize("net", ["conv1d", "conv2d_transpose"])
def test_proxy_importance_quantizes_every_conv_kinds_weights(net):
    """The proxy runs each conv kind's weights as a run-time input: 2-bit weights of every layer cost some KL.

    (conv1d and conv2d_transpose once built their simulated kernel as a constant, so their weight
    importance was 0 at every width and the ILP would give them the fewest bits.)
    """
    import torch

    from gwq_tvm.calibration import calibrate
    from gwq_tvm.calibration.sensitivity import bit_importance
    from gwq_tvm.extract import extract_graph

    if net == "conv1d":
        from test_kinds_conv1d import _model

        model, shape = _model(), (None, 3, 24)
    else:
        from test_kinds_conv_transpose import Decoder

        torch.manual_seed(0)
        model, shape = Decoder().eval(), (None, 3, 8, 8)
    x = np.random.default_rng(0).standard_normal((8, *shape[1:])).astype(np.float32)
    fm = gwq_tvm.load_model(model, input_shape=shape)
    graph = extract_graph(fm.mod)
    layers = graph.layers()
    assert net in {graph.nodes[n].kind for n in layers}
    iw, _ = bit_importance(fm, graph, calibrate(fm, x), QuantConfig(), x, layers, [], [2], [8], samples=8)
    assert all(iw[n][2] > 0 for n in layers), iw


# --- LIMPQ's learned indicators, the HAWQ-style and greedy baselines, indicator files ----------------------------------
@pytest.fixture(scope="module")
def resnet_parts():
    """The bundled ResNet's graph, calibration statistics (64 images) and the ILP's free layers and tensors."""
    from gwq_tvm.calibration import calibrate
    from gwq_tvm.calibration.mixed_precision import free_names, problem_layers
    from gwq_tvm.data import fashion_mnist
    from gwq_tvm.extract import extract_graph

    calib, _ = fashion_mnist("calib")
    fm = gwq_tvm.load_model(gwq_tvm.data.bundled_model())
    graph = extract_graph(fm.mod)
    cfg = QuantConfig(mixed_precision=True, size_budget="50%")
    layers, fixed_w, fixed_a = problem_layers(graph, cfg)
    free_layers, free_tensors = free_names(layers, fixed_w, fixed_a)
    return graph, calibrate(fm, calib[:64], QuantConfig()), free_layers, free_tensors, fixed_w, fixed_a


def test_joint_training_gives_one_finite_step_per_candidate_width(resnet_parts):
    import torch

    from gwq_tvm.data import fashion_mnist
    from gwq_tvm.qat import TrainConfig
    from gwq_tvm.qat.importance import JointModel, train_indicators

    graph, stats, free_layers, free_tensors, fixed_w, fixed_a = resnet_parts
    torch.manual_seed(0)
    model = JointModel(graph, stats, QuantConfig(), free_layers, free_tensors, (2, 3, 4, 8), (4, 8),
                       fixed_weights=fixed_w, fixed_acts=fixed_a)
    # fake-quantized weights lie on the grid of the drawn width: s * k, |k| <= 2**(b-1) - 1
    policy = model.sample_(np.random.default_rng(1))
    for n in free_layers:
        b = policy["w"][n]
        k = (model.quant_weight(n, torch.float64) / model.step(n, b, "w", torch.float64)).detach().numpy()
        np.testing.assert_allclose(k, np.rint(k), atol=1e-6)
        assert np.abs(np.rint(k)).max() <= 2 ** (b - 1) - 1
    model.draws = dict.fromkeys(model.draws, 0)
    x, y = fashion_mnist("calib")
    run = train_indicators(model, x[:96], y[:96], TrainConfig(epochs=1, batch_size=32, distill=0.0, seed=3))
    iw, ia = model.indicators()
    assert list(iw) == free_layers and list(ia) == free_tensors
    assert all(sorted(v) == [2, 3, 4, 8] and all(np.isfinite(s) and s > 0 for s in v.values()) for v in iw.values())
    assert all(sorted(v) == [4, 8] and all(np.isfinite(s) and s > 0 for s in v.values()) for v in ia.values())
    # one sampled width per free layer/tensor per step; a width never drawn keeps its initial step exactly,
    # a drawn one has been moved by Adam
    assert run["steps"] == 3
    for n in free_layers:
        assert sum(run["draws"]["weights"][n].values()) == 3
        for b, count in run["draws"]["weights"][n].items():
            moved = float(model.log_step[model.key(n, b, "w")].detach()) != model.initial[model.key(n, b, "w")]
            assert moved == (count > 0), (n, b, count)
    for t in free_tensors:
        assert sum(run["draws"]["tensors"][t].values()) == 3
    # the fixed layers (first, last) have their fixed width only
    assert all(model.layer_bits[n] == (8,) for n in fixed_w)


def test_uniform_passes_train_every_width_every_step(resnet_parts):
    """The authors' scheme: each step also runs one pass per candidate weight width with every free layer at it
    (activations at the smallest candidate not below it), so after k steps every (layer, width) was drawn at
    least k times and every step has moved; the activation pairing is {2, 3, 4} -> 4, 8 -> 8."""
    import torch

    from gwq_tvm.data import fashion_mnist
    from gwq_tvm.qat import TrainConfig
    from gwq_tvm.qat.importance import JointModel, train_indicators

    graph, stats, free_layers, free_tensors, fixed_w, fixed_a = resnet_parts
    torch.manual_seed(0)
    model = JointModel(graph, stats, QuantConfig(), free_layers, free_tensors, (2, 3, 4, 8), (4, 8),
                       fixed_weights=fixed_w, fixed_acts=fixed_a)
    for bits, act in ((2, 4), (3, 4), (4, 4), (8, 8)):
        policy = model.uniform_(bits)
        assert {policy["w"][n] for n in free_layers} == {bits} and {policy["a"][t] for t in free_tensors} == {act}
        assert all(policy["w"][n] == 8 for n in fixed_w)
    model.draws = dict.fromkeys(model.draws, 0)
    x, y = fashion_mnist("calib")
    run = train_indicators(model, x[:64], y[:64], TrainConfig(epochs=1, batch_size=32, distill=0.0, seed=3),
                           uniform_passes=True)
    assert run["steps"] == 2
    for n in free_layers:
        counts = run["draws"]["weights"][n]
        assert sum(counts.values()) == 2 * 5 and min(counts.values()) >= 2, counts
        for b in (2, 3, 4, 8):
            assert float(model.log_step[model.key(n, b, "w")].detach()) != model.initial[model.key(n, b, "w")]
    for t in free_tensors:
        assert sum(run["draws"]["tensors"][t].values()) == 2 * 5


def test_importance_file_reruns_the_ilp_for_any_budget(tmp_path, fmnist):
    """Indicators read from a file: each budget's policy is the ILP's on those values (no measuring);
    a file of another kind or model is one line."""
    from gwq_tvm.calibration.mixed_precision import free_names, problem_layers
    from gwq_tvm.errors import ConfigError
    from gwq_tvm.plan.mixed_precision import monotone
    from gwq_tvm.qat.importance import load_importance, record, save_importance

    calib, _, _ = fmnist
    fm = gwq_tvm.load_model(gwq_tvm.data.bundled_model())
    from gwq_tvm.extract import extract_graph

    graph = extract_graph(fm.mod)
    base = QuantConfig(mixed_precision=True, size_budget="50%", importance="learned", importance_file=str(tmp_path / "i.json"))
    layers, fixed_w, fixed_a = problem_layers(graph, base)
    free_layers, free_tensors = free_names(layers, fixed_w, fixed_a)
    rng = np.random.default_rng(0)
    iw = {n: dict(zip((2, 3, 4, 8), rng.random(4))) for n in free_layers}  # not monotone: the strategy levels it
    ia = {t: dict(zip((4, 8), rng.random(2))) for t in free_tensors}
    save_importance(tmp_path / "i.json", record("learned", graph, base, iw, ia, seconds=1.5))
    rec = load_importance(tmp_path / "i.json")
    assert rec["weights"] == iw and rec["tensors"] == ia
    for budget in ("40%", "60%"):
        q = gwq_tvm.quantize(fm, calib[:64], base.replace(size_budget=budget))
        mp = q.plan.provenance["mixed_precision"]
        want = Problem(layers, {n: monotone(v) for n, v in iw.items()}, {t: monotone(v) for t, v in ia.items()},
                       fixed_weights=fixed_w, fixed_acts=fixed_a).solve(parse_budget(budget, "size"))
        assert mp["weight_bits"] == want.weight_bits and mp["act_bits"] == want.act_bits
        assert {n: w.bits for n, w in q.plan.layers.items()} == want.weight_bits
        assert mp["importance_kind"] == "learned" and mp["importance_seconds"] == 1.5
    with pytest.raises(ConfigError, match=r"holds learned indicators; importance is 'hessian'$"):
        gwq_tvm.quantize(fm, calib[:64], base.replace(importance="hessian"))
    save_importance(tmp_path / "j.json", {**rec, "fingerprint": "0" * 16})
    with pytest.raises(ConfigError, match="was made for graph 0000000000000000"):
        gwq_tvm.quantize(fm, calib[:64], base.replace(importance_file=str(tmp_path / "j.json")))
    with pytest.raises(ConfigError, match="needs an importance_file|reads LIMPQ's indicators from an importance_file"):
        QuantConfig(mixed_precision=True, size_budget="50%", importance="learned")


def test_greedy_baseline_lowers_the_least_sensitive_layer_first():
    # A: 100 weights, I = {8: 0, 4: 1, 2: 1.1}; B: 100 weights, I = {8: 0, 4: 1.05, 2: 10}; one shared tensor at 8.
    # Size <= 60% of 200 = 120 bytes.  Greedy from (8, 8) = 200: A 8->4 (+1, 150), A 4->2 (+0.1, 125), B 8->4
    # (+1.05, 75): (2, 4), objective 2.15.  The ILP finds (4, 4): 100 bytes, objective 2.05.
    p = Problem([Layer("A", "t", 100, 1000), Layer("B", "t", 100, 1000)],
                {"A": {8: 0.0, 4: 1.0, 2: 1.1}, "B": {8: 0.0, 4: 1.05, 2: 10.0}}, {"t": {8: 0.0, 4: 4.0}},
                weight_bits=(2, 4, 8), act_bits=(4, 8))
    g = p.greedy(parse_budget("60%", "size"))
    assert (g.weight_bits, g.act_bits, g.size_bytes) == ({"A": 2, "B": 4}, {"t": 8}, 75.0)
    assert g.objective == pytest.approx(2.15)
    ilp = p.solve(parse_budget("60%", "size"))
    assert (ilp.weight_bits, ilp.objective) == ({"A": 4, "B": 4}, pytest.approx(2.05))
    # BitOps <= 50% of 2000 MACs * 64 = 64000: lowering t (+4) is never the cheapest move: A 8->4 (+1, 96000),
    # A 4->2 (+0.1, 80000), B 8->4 (+1.05, 48000)
    g = p.greedy(None, parse_budget("50%", "bitops"))
    assert (g.weight_bits, g.act_bits, g.bitops) == ({"A": 2, "B": 4}, {"t": 8}, 48000.0)
    # with t cheap to lower (+0.5) it goes first and alone halves the BitOps
    p.ia["t"] = {8: 0.0, 4: 0.5}
    g = p.greedy(None, parse_budget("50%", "bitops"))
    assert (g.weight_bits, g.act_bits, g.bitops) == ({"A": 8, "B": 8}, {"t": 4}, 64000.0)
    with pytest.raises(PlanError, match=r"^size budget 10% is infeasible: the smallest feasible size is 25% \(50 bytes\)$"):
        p.greedy(parse_budget("10%", "size"))


def test_hessian_importance_is_trace_times_perturbation(resnet_parts, fmnist):
    """HAWQ's indicator factorises: I_w[l][b] / ||Q_b(W_l) - W_l||^2 is one (non-negative) trace per layer,
    whatever b; the same seed gives the same estimate."""
    from gwq_tvm.plan import scales as S
    from gwq_tvm.plan.planner import layer_quant
    from gwq_tvm.qat.importance import hessian_importance

    graph, stats, free_layers, free_tensors, _, _ = resnet_parts
    calib, _, _ = fmnist
    args = (graph, stats, QuantConfig(), calib, free_layers[:3], free_tensors[:2], (2, 4, 8), (4, 8))
    iw, ia = hessian_importance(*args, samples=8, probes=2)
    for n, d in iw.items():
        w = graph.nodes[n].weight.astype(np.float64)
        ratios = []
        for b, v in d.items():
            smap = layer_quant(graph.nodes[n], QuantConfig(weight_bits=b)).scale_map(w.shape)
            err = float(((S.quantize_weight(w, smap, b) * smap - w) ** 2).sum())
            ratios.append(v / err)
        assert np.isfinite(ratios).all() and min(ratios) >= 0
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    assert set(ia) == set(free_tensors[:2]) and all(sorted(v) == [4, 8] and min(v.values()) >= 0 for v in ia.values())
    assert hessian_importance(*args, samples=8, probes=2) == (iw, ia)


@pytest.mark.slow
def test_cli_plan_learned_trains_once_and_reuses_the_indicators(tmp_path, capsys):
    from gwq_tvm.cli import main
    from gwq_tvm.plan.quantplan import QuantPlan
    from gwq_tvm.qat.importance import load_importance

    model = str(gwq_tvm.data.bundled_model())
    common = ["--quiet", "plan", model, "--mixed-precision", "--importance", "learned", "--calib-samples", "64"]
    assert main([*common, "--size-budget", "50%", "--train-data", "bundled:calib", "--train-limit", "64",
                 "--batch-size", "32", "--uniform-passes", "-o", str(tmp_path / "m.plan.json")]) == 0
    out = capsys.readouterr().out
    imp = tmp_path / "m.importance.json"
    assert f"wrote {imp} (learned indicators: 2 steps" in out
    rec = load_importance(imp)
    assert rec["kind"] == "learned" and rec["settings"]["images"] == 64 and rec["settings"]["uniform_passes"] is True
    # the authors' scheme: every free layer at every width in both steps, plus one sampled width each
    assert all(sum(c.values()) == 2 * 5 and min(c.values()) >= 2 for c in rec["settings"]["draws"]["weights"].values())
    # the flag belongs to the learned run: alone it is one line, and a file trained without it is not reused with it
    assert main(["--quiet", "plan", model, "--uniform-passes", "-o", str(tmp_path / "x.plan.json")]) == 2
    assert "--uniform-passes is an option of the learned indicators' joint run" in capsys.readouterr().err
    plain = tmp_path / "plain.importance.json"
    plain.write_text(json.dumps({**json.loads(imp.read_text()), "settings": {"uniform_passes": False}}))
    assert main([*common, "--size-budget", "40%", "--importance-file", str(plain), "--uniform-passes",
                 "-o", str(tmp_path / "y.plan.json")]) == 2
    assert "trained without --uniform-passes" in capsys.readouterr().err
    assert not (tmp_path / "x.plan.json").exists() and not (tmp_path / "y.plan.json").exists()
    # another budget: the indicators are read, not trained again
    assert main([*common, "--size-budget", "40%", "--importance-file", str(imp), "-o", str(tmp_path / "n.plan.json")]) == 0
    out = capsys.readouterr().out
    assert "learned indicators:" not in out and "mixed precision (learned importance; size budget 40%)" in out
    mp = QuantPlan.load(tmp_path / "n.plan.json").provenance["mixed_precision"]
    assert mp["importance"]["weights"] == {n: {str(b): v for b, v in d.items()} for n, d in rec["weights"].items()}
    assert mp["size_bytes"] <= 0.4 * mp["size_w8a8_bytes"] * (1 + 1e-9)


@pytest.mark.slow
def test_cli_plan_writes_missing_proxy_indicators_and_reuses_them(tmp_path, capsys):
    from gwq_tvm.cli import main
    from gwq_tvm.plan.quantplan import QuantPlan
    from gwq_tvm.qat.importance import load_importance

    imp = tmp_path / "p.json"
    common = ["--quiet", "plan", str(gwq_tvm.data.bundled_model()), "--mixed-precision", "--calib-samples", "64",
              "--importance-file", str(imp)]
    assert main([*common, "--size-budget", "50%", "-o", str(tmp_path / "a.plan.json")]) == 0
    assert f"wrote {imp} (proxy indicators" in capsys.readouterr().out
    rec = load_importance(imp)
    first = QuantPlan.load(tmp_path / "a.plan.json").provenance["mixed_precision"]
    assert rec["kind"] == "proxy" and rec["seconds"] == first["importance_seconds"]
    # the greedy baseline on the same indicators: read, not measured again
    assert main([*common, "--size-budget", "40%", "--mp-search", "greedy", "-o", str(tmp_path / "b.plan.json")]) == 0
    assert "indicators" not in capsys.readouterr().out
    mp = QuantPlan.load(tmp_path / "b.plan.json").provenance["mixed_precision"]
    assert mp["search"] == "greedy" and mp["importance_source"]["file"] == str(imp)
    assert mp["importance"]["weights"] == first["importance"]["weights"]
    assert mp["size_bytes"] <= 0.4 * mp["size_w8a8_bytes"] * (1 + 1e-9)
