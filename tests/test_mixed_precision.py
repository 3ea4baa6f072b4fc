"""Mixed precision: LIMPQ's bit-width ILP, the proxy importance, the strategy, the CLI."""

import numpy as np
import pytest

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import PlanError
from gwq_tvm.plan.mixed_precision import Layer, Problem, parse_budget

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
    (["--mixed-precision"], "needs a size_budget or a bitops_budget"),
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
