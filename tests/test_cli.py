"""The CLI end to end, and bad inputs: one line on stderr, exit status 2, no traceback."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from gwq_tvm.cli import main
from gwq_tvm.data import BUNDLED_MODEL


def _run(*argv):
    proc = subprocess.run([sys.executable, "-m", "gwq_tvm.cli", "--quiet", *argv], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def _assert_one_line_error(rc, err, match):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.startswith("gwq-tvm: error:")]
    assert len(lines) == 1 and match in lines[0], err


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "m.so"
    rc, stdout, err = _run("compile", "gwq_tvm/models/fmnist_resnet.onnx", "-o", str(out), "--calib-samples", "64")
    assert rc == 0, err
    return out, stdout


def test_compile_then_eval(compiled):
    out, stdout = compiled
    assert "integer-only: yes" in stdout and "SFC ops:" in stdout
    assert out.is_file() and out.with_suffix(".plan.json").is_file()
    rc, stdout, err = _run("eval", str(out), "--limit", "500")
    assert rc == 0, err
    acc = float(stdout.split("accuracy:")[1].split("%")[0])
    assert acc > 85.0


def test_so_loads_with_plain_tvm(compiled):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(compiled[0])), tvm.cpu())
    assert vm["main"](tvm.runtime.tensor(np.zeros((2, 1, 28, 28), "float32"))).numpy().shape == (2, 10)


def test_compile_from_plan_reproduces(compiled, tmp_path):
    out2 = tmp_path / "again.so"
    rc, stdout, err = _run("compile", "gwq_tvm/models/fmnist_resnet.onnx", "--plan", str(compiled[0].with_suffix(".plan.json")), "-o", str(out2))
    assert rc == 0, err
    assert out2.with_suffix(".plan.json").read_text() == compiled[0].with_suffix(".plan.json").read_text()


def test_malformed_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 3)
    rc, _, err = _run("compile", str(bad), "-o", str(tmp_path / "x.so"))
    _assert_one_line_error(rc, err, "bad.onnx")


def test_unknown_onnx_op(tmp_path):
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "fancy.onnx"
    onnx.save(model, str(path))
    rc, _, err = _run("compile", str(path), "-o", str(tmp_path / "x.so"))
    _assert_one_line_error(rc, err, "FancyOp")


@pytest.mark.parametrize("fill, match", [(np.nan, "NaN"), (None, "empty")])
def test_bad_calibration_files(tmp_path, fill, match):
    data = np.zeros((0, 1, 28, 28), np.float32) if fill is None else np.full((8, 1, 28, 28), fill, np.float32)
    path = tmp_path / "calib.npy"
    np.save(path, data)
    rc, _, err = _run("compile", "gwq_tvm/models/fmnist_resnet.onnx", "--calib", str(path), "-o", str(tmp_path / "x.so"))
    _assert_one_line_error(rc, err, match)


_MODEL = "gwq_tvm/models/fmnist_resnet.onnx"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["compile", _MODEL, "-o", "x.so", "--weight-bits", "9"], "weight_bits"),
        (["compile", _MODEL, "-o", "x.so", "--mode", "best"], "mode"),
        (["compile", "missing.onnx", "-o", "x.so"], "not found"),
        (["eval", "missing.so"], "not found"),
        (["compile", _MODEL, "-o", "x.so", "--target", '{"kind": "nosuch"}'], "target"),
    ],
)
def test_bad_values_fail_in_one_line(argv, match, tmp_path, monkeypatch, capsys):
    """Values argparse accepts but gwq-tvm rejects: main() returns 2 with one error line."""
    monkeypatch.chdir(tmp_path)
    argv = [str(BUNDLED_MODEL) if a == _MODEL else a for a in argv]
    assert main(["--quiet", *argv]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, match)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["compile", _MODEL, "-o", "x.so", "--act-bits", "x"], "invalid int"),
        (["compile", _MODEL, "-o", "x.so", "--calib-samples", "0"], ">= 1"),
    ],
)
def test_unparsable_values_exit_2(argv, match, capsys):
    """Values argparse itself rejects: exit status 2 and one error line."""
    with pytest.raises(SystemExit) as exc:
        main(["--quiet", *argv])
    assert exc.value.code == 2
    _assert_one_line_error(2, capsys.readouterr().err, match)


def test_demo_runs_on_a_subset(tmp_path, capsys):
    """The README's main command, on 300 test images: per-layer and GWQ, both integer-only and bit-exact."""
    import json

    assert main(["--quiet", "demo", "--limit", "300", "--calib-samples", "128", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GWQ SFC ops:" in out and "NO" not in out
    result = json.loads((tmp_path / "demo_result.json").read_text())
    assert result["integer_only"] and result["gwq"]["integer_only"] and result["gwq"]["bit_exact_32"]
    assert result["gwq"]["sfc"]["shift_share"] > 0.9 and result["gwq"]["accuracy"] > 0.85
