"""Calibration data validation and the bundled data."""

import numpy as np
import pytest

import gwq_tvm
from gwq_tvm.calibration import calibrate, check_batch
from gwq_tvm.errors import CalibrationDataError, ModelError


def test_bundled_data_checksums_and_shapes(fmnist):
    calib, test_x, test_y = fmnist
    assert calib.shape == (1024, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert test_x.dtype == np.float32 and set(np.unique(test_y)) == set(range(10))
    assert gwq_tvm.data.manifest()["models"]["fmnist_resnet"]["fp32_test_accuracy"] >= 0.91


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((0, 1, 28, 28), np.float32), "empty"),
        (np.full((4, 1, 28, 28), np.nan, np.float32), "NaN"),
        (np.full((4, 1, 28, 28), np.inf, np.float32), "NaN/Inf"),
        (np.zeros((4, 3, 28, 28), np.float32), "shape"),
        (np.zeros((4, 28, 28), np.float32), "shape"),
        (np.array(["a", "b"]), "numeric"),
    ],
)
def test_bad_calibration_data(data, message):
    with pytest.raises(CalibrationDataError, match=message):
        check_batch(data, (None, 1, 28, 28))


def test_calibration_stats_cover_every_node(fmnist):
    calib, _, _ = fmnist
    fm = gwq_tvm.load_model(gwq_tvm.data.bundled_model())
    stats = calibrate(fm, calib[:64])
    graph = gwq_tvm.extract_graph(fm.mod)
    assert set(stats) == set(graph.nodes)
    relu_out = stats["conv2d_0"]
    assert relu_out.min >= 0 and relu_out.max > 0 and relu_out.hist.sum() > 0
    assert stats["input"].min < 0  # normalised pixels are signed


def test_model_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX|malformed"):
        gwq_tvm.load_model(bad)
    with pytest.raises(ModelError, match="not found"):
        gwq_tvm.load_model(tmp_path / "missing.onnx")
