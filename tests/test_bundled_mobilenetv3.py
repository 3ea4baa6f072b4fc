"""The second bundled model, MobileNetV3-Small (hardswish, squeeze-excitation), compiles integer-only and bit-exact.

Accuracy on the 10k test images is measured by ``gwq-tvm demo --model
fmnist_mobilenetv3`` (see the README), not asserted here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import gwq_tvm
from gwq_tvm.cli import main
from gwq_tvm.config import QuantConfig
from gwq_tvm.data import bundled_model, fashion_mnist, manifest

NAME = "fmnist_mobilenetv3"


@pytest.fixture(scope="module")
def data():
    calib, _ = fashion_mnist("calib")
    test, labels = fashion_mnist("test")
    return calib[:64], test[:16], labels[:16]


def test_it_ships_with_its_checksum_and_float_accuracy():
    entry = manifest()["models"][NAME]
    assert entry["fp32_test_accuracy"] >= 0.85
    assert bundled_model(NAME).is_file()


@pytest.mark.parametrize("mode", ["per-layer", "gwq"])
def test_integer_only_and_bit_exact(data, mode, tmp_path):
    calib, test, _ = data
    q = gwq_tvm.quantize(bundled_model(NAME), calib, QuantConfig(mode=mode))
    assert q.integer_only.ok, q.integer_only
    assert not q.float_ops
    kinds = {n.kind for n in q.graph.nodes.values()}
    assert {"lut", "mul"} <= kinds  # hardswish / hardsigmoid tables and the SE products are integer nodes
    vm = gwq_tvm.api.load_executable(gwq_tvm.export(gwq_tvm.build(q), tmp_path / f"mnv3_{mode}.so", q.plan))
    got = gwq_tvm.api.predict(vm, test, q.float_model.input_shape)
    assert np.array_equal(got, gwq_tvm.run_reference(q.mod, test))
    if mode == "gwq":
        assert q.sfc["shift_share"] >= 0.9, q.sfc


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["aarch64-dotprod", "aarch64-i8mm"])
def test_on_the_emulated_aarch64_board_bit_exact(aarch64_board, tmp_path, capsys, preset):
    """Must-show: MobileNetV3-Small compiled for aarch64 (sdot: +dotprod; usmmla: +i8mm) runs bit-exact on the board."""
    arm = tmp_path / "mnv3_arm.so"
    assert main(["--quiet", "compile", str(bundled_model(NAME)), "--calib-samples", "64", "--target", preset,
                 "-o", str(arm)]) == 0
    out_json = tmp_path / "bench.json"
    rc = main(["bench", str(arm), "--rpc-tracker", aarch64_board.tracker_address, "--rpc-key", aarch64_board.key,
               "--repeat", "3", "--timeout", "900", "--json", str(out_json)])
    assert rc == 0, capsys.readouterr()
    result = json.loads(out_json.read_text())
    assert result["bit_exact"] is True
