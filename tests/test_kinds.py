"""The node-kind registry (core v2): every kind in one module, and the per-channel affine kind as the proof.

The affine kind (``gwq_tvm/kinds/affine.py``) was added as one module plus one registry line; these
tests show it is bit-exact, observed by calibration, part of GWQ's SFC graph, trained by QAT and
integer-only.
"""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gwq_tvm
from gwq_tvm import QuantConfig
from gwq_tvm.errors import GwqError
from gwq_tvm.kinds import get_kind, kinds
from gwq_tvm.kinds.base import Kind
from gwq_tvm.plan.program import sfc_edges, sfc_sites
from gwq_tvm.qat import QATModel
from gwq_tvm.reference import run_reference

from conftest import compile_and_run
from test_bitexact import _randomize_bn
from test_qat import _compiled_ints, _qat_ints


class PreActNet(nn.Module):
    """Batch norms no layer can absorb: Conv -> ReLU -> BN (Keras style) and concat -> BN -> ReLU (DenseNet style)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, 1, 1), nn.ReLU(), nn.BatchNorm2d(6))
        self.branch = nn.Conv2d(6, 4, 3, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.pre = nn.Sequential(nn.BatchNorm2d(10), nn.ReLU())
        self.conv = nn.Conv2d(10, 8, 3, 1, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.stem(x)
        y = self.pre(torch.cat([self.branch(y), self.pool(y)], dim=1))
        return self.fc(self.conv(y).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def preact(fmnist):
    calib, test_x, _ = fmnist
    torch.manual_seed(0)
    model = _randomize_bn(PreActNet())
    return model, calib[:128], test_x[:200]


def _quantize(preact, cfg):
    model, calib, _ = preact
    return gwq_tvm.quantize(model, calib, cfg, input_shape=(None, 1, 28, 28))


def test_every_builtin_kind_is_registered_and_unknown_kinds_are_named():
    assert {"input", "conv2d", "dense", "add", "affine", "relu", "maxpool", "avgpool", "global_avgpool", "reshape",
            "concat", "float"} <= set(kinds())
    with pytest.raises(GwqError, match="unknown node kind 'bogus'"):
        get_kind("bogus")


def test_a_kind_without_a_backend_is_a_clear_error():
    class Bare(Kind):
        name = "bare"

    with pytest.raises(GwqError, match="the integer program does not support node kind 'bare'"):
        Bare().realize(None, None)


def test_unfoldable_batch_norms_become_affine_nodes(preact):
    q = _quantize(preact, QuantConfig())
    affine = [n for n in q.graph.nodes.values() if n.kind == "affine"]
    assert len(affine) == 2 and not q.graph.float_nodes()
    assert affine[1].act == (0.0, float("inf"))  # the ReLU after the DenseNet-style BN is fused
    assert all(n in q.stats for n in (a.name for a in affine))  # observed by calibration
    assert q.integer_only.ok, q.integer_only


@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(weight_bits=4, act_bits=4, mode="gwq", groups=2, loss_aware=True)],
                         ids=["w8a8", "w4a4-gwq"])
def test_affine_is_bit_exact_and_integer_only(preact, cfg):
    q = _quantize(preact, cfg)
    _, _, x = preact
    assert q.integer_only.ok, q.integer_only
    np.testing.assert_array_equal(compile_and_run(q.mod, x[:16]), run_reference(q.mod, x[:16]))


def test_affine_is_in_the_gwq_sfc_graph(preact):
    q = _quantize(preact, QuantConfig(mode="gwq", groups=1, loss_aware=False))
    affine = {n for n, node in q.graph.nodes.items() if node.kind == "affine"}
    assert affine <= {e.node for e in sfc_edges(q.graph)}
    kinds_of = {s.node: s.kind for s in sfc_sites(q.graph, q.plan)}
    assert all(kinds_of.get(n) in ("shift", "multiply") for n in affine), kinds_of


def test_affine_w8a8_tracks_the_float_model(preact):
    model, _, x = preact
    q = _quantize(preact, QuantConfig())
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = run_reference(q.mod, x)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_qat_integers_of_affine_equal_the_compiled_program(preact):
    _, _, x = preact
    q = _quantize(preact, QuantConfig(weight_bits=4, act_bits=4, mode="gwq", groups=2, loss_aware=False))
    _, want = _compiled_ints(q, q.plan, q.graph, x)
    _, got = _qat_ints(QATModel(q.graph, q.plan), x)
    np.testing.assert_array_equal(got, want)


PURE = ["graph.py", "stats.py", "plan", "kinds"]
"""Modules of pure planning: numpy only at module level (a kind's backends import TVM or torch inside)."""


def test_planning_modules_import_neither_tvm_nor_torch_at_module_level():
    root = Path(gwq_tvm.__file__).parent
    files = [f for p in PURE for f in ([root / p] if p.endswith(".py") else sorted((root / p).glob("*.py")))]
    assert len(files) > 10
    for f in files:
        for node in ast.parse(f.read_text()).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("tvm", "torch") for n in names), f"{f.name}: {names}"


def test_graph_and_plan_import_without_tvm_or_torch():
    code = ("import sys, gwq_tvm.graph, gwq_tvm.stats, gwq_tvm.plan.planner, gwq_tvm.plan.strategies, gwq_tvm.kinds; "
            "bad = [m for m in ('tvm', 'torch') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
