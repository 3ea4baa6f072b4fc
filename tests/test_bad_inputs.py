"""Every bad input gets one clear line: a corpus of bad models, plans, data, options and modules.

Each case copies a small set of inputs (a 2-conv ONNX net built here, its
calibration data, a module compiled from it and its plan) into a fresh
directory, damages one of them, runs the CLI, and asserts:

* exit status 2 and exactly one ``gwq-tvm: error:`` line containing the expected words;
* no ``Traceback``;
* no file in the directory was created, changed or removed (so no output
  was written and no input overwritten, and no temporary was left behind).

Cases that only touch Python run ``gwq_tvm.cli.main`` in-process; cases
where TVM's native code reads damaged bytes run the CLI as a subprocess
(its entry point, :func:`gwq_tvm.cli.run`, which turns a native crash into
one line as well).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import gwq_tvm
from gwq_tvm.api import REFERENCE_SAMPLES
from gwq_tvm.cli import EXIT_BUG, EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[1]


# --- the inputs -------------------------------------------------------------
def tiny_model(*, opset=17, domain="", w1=None, batch="N", hw=(8, 8), classes=4, channels=4) -> onnx.ModelProto:
    """x (batch x 1 x H x W) -> conv 3x3 -> relu -> conv 3x3 -> global average pool -> flatten (``classes`` logits)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32) * 0.3 if w1 is None else w1
    w2 = rng.standard_normal((classes, channels, 3, 3)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(channels, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(classes, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1", domain=domain),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, *hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits), opset_imports=opsets)
    model.ir_version = 8
    return model


def _calib(n=16, shape=(1, 8, 8)):
    return np.random.default_rng(1).standard_normal((n, *shape)).astype(np.float32)


def _cli(*argv):
    """``main`` in this process: (exit status, stderr) -- argparse's own exits included."""
    try:
        return main(["--quiet", *argv])
    except SystemExit as exc:
        return exc.code


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """tiny.onnx, calib.npy, tiny.so (+ .plan.json, .ref.npz), data.npz (images + labels), other.plan.json."""
    d = tmp_path_factory.mktemp("assets")
    onnx.save(tiny_model(), str(d / "tiny.onnx"))
    np.save(d / "calib.npy", _calib())
    np.savez(d / "data.npz", images=_calib(20), labels=np.arange(20) % 4)
    assert _cli("compile", str(d / "tiny.onnx"), "--calib", str(d / "calib.npy"), "-o", str(d / "tiny.so")) == 0
    onnx.save(tiny_model(classes=3), str(d / "other.onnx"))
    assert _cli("plan", str(d / "other.onnx"), "--calib", str(d / "calib.npy"), "-o", str(d / "other.plan.json")) == 0
    (d / "other.onnx").unlink()
    return d


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(d.rglob("*"))}


def _error_lines(err: str, match: str) -> None:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("gwq-tvm: error:")]
    assert len(lines) == 1, err
    assert match.lower() in lines[0].lower(), err


def assert_refused(argv, d: Path, match: str, capsys=None, subprocess_run=False, code=EXIT_USAGE):
    """Run ``argv`` (``{d}`` = the case directory); assert one error line, the exit code, and an unchanged directory."""
    argv = [a.replace("{d}", str(d)) for a in argv]
    before = _snapshot(d)
    if subprocess_run:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-m", "gwq_tvm.cli", "--quiet", *argv], capture_output=True, text=True,
                              env=env, cwd=d, timeout=300)
        rc, err = proc.returncode, proc.stderr
    else:
        if capsys is not None:
            capsys.readouterr()
        rc = _cli(*argv)
        err = capsys.readouterr().err if capsys is not None else ""
    assert rc == code, err
    _error_lines(err, match)
    assert _snapshot(d) == before, "the command created, changed or removed a file"


# --- damaging the inputs ----------------------------------------------------
def _model_bytes(d):
    return (d / "tiny.onnx").read_bytes()


def truncate_model(fraction):
    def f(d):
        b = _model_bytes(d)
        (d / "tiny.onnx").write_bytes(b[: int(len(b) * fraction)])
    return f


def flip_model_bit(pos, bit=7):
    def f(d):
        b = bytearray(_model_bytes(d))
        b[pos] ^= 1 << bit
        (d / "tiny.onnx").write_bytes(bytes(b))
    return f


def write_model(**kw):
    def f(d):
        onnx.save(tiny_model(**kw), str(d / "tiny.onnx"))
    return f


def conv1_attribute(**attrs):
    """tiny.onnx with these attributes set on conv1 (ONNX checks their type, not their sign)."""
    def f(d):
        model = tiny_model()
        model.graph.node[0].attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        onnx.save(model, str(d / "tiny.onnx"))
    return f


def _no_outputs(d):
    model = tiny_model()
    del model.graph.output[:]
    onnx.save(model, str(d / "tiny.onnx"))


def _batch_tied_flatten(model, batch=1):
    """``model`` with its Flatten replaced by a Reshape to the constant ``[batch, classes]`` (PyTorch's
    ``x.view(1, -1)`` exported with a dynamic batch axis): its shapes hold at that batch size only."""
    g = model.graph
    g.node[-1].CopyFrom(helper.make_node("Reshape", ["p", "shape1"], ["y"], name="flat"))
    g.initializer.append(numpy_helper.from_array(np.array([batch, 4], np.int64), "shape1"))
    return model


def _batch_3_only(d):
    onnx.save(_batch_tied_flatten(tiny_model(), batch=3), str(d / "tiny.onnx"))


def _leaky_alpha(alpha):
    """tiny.onnx with its ReLU a LeakyRelu of slope ``alpha`` (a NaN slope reached the plan as NaN scales)."""
    def f(d):
        model = tiny_model()
        model.graph.node[1].CopyFrom(helper.make_node("LeakyRelu", ["c1"], ["r1"], name="relu1", alpha=alpha))
        onnx.save(model, str(d / "tiny.onnx"))
    return f


def _topk_head(d):
    """tiny.onnx ending in TopK(k=2) of its logits, the values its output (the indices unused)."""
    model = tiny_model()
    g = model.graph
    g.node[-1].output[0] = "logits"
    g.node.append(helper.make_node("TopK", ["logits", "k"], ["y", "idx"], axis=1, name="top2"))
    g.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "k"))
    g.output[0].type.tensor_type.shape.dim[1].dim_value = 2
    onnx.save(model, str(d / "tiny.onnx"))


def weight_of_shape(shape):
    def f(d):
        onnx.save(tiny_model(w1=np.zeros(shape, np.float32)), str(d / "tiny.onnx"))
    return f


def weight_with(value, where=(0, 0, 0, 0)):
    w = np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.3
    w[where] = value
    return write_model(w1=w)


def edit_model(fn):
    def f(d):
        m = onnx.load(str(d / "tiny.onnx"))
        fn(m)
        onnx.save(m, str(d / "tiny.onnx"))
    return f


def _second_input(m):
    m.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 1, 8, 8]))


def _int_input(m):
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT32


def _unknown_op(m):
    m.graph.node[1].op_type = "FancyRelu"


def _wrong_raw_size(m):
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]


def write_bytes(name, data: bytes):
    def f(d):
        (d / name).write_bytes(data)
    return f


def edit_plan(fn, name="tiny.plan.json"):
    def f(d):
        p = json.loads((d / "tiny.plan.json").read_text())
        fn(p)
        (d / name).write_text(json.dumps(p))
    return f


def set_path(path, value):
    """``plan[path] = value`` for a dotted path (``layers.*`` = the first layer)."""
    def fn(p):
        node, keys = p, path.split(".")
        for k in keys[:-1]:
            node = node[next(iter(node))] if k == "*" else node[int(k) if isinstance(node, list) else k]
        last = keys[-1]
        if last == "*":
            last = next(iter(node))
        if value is DELETE:
            del node[int(last) if isinstance(node, list) else last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
    return fn


DELETE = object()


def _forged(d):
    """Another model's plan with this model's fingerprint."""
    p = json.loads((d / "other.plan.json").read_text())
    p["fingerprint"] = json.loads((d / "tiny.plan.json").read_text())["fingerprint"]
    (d / "p.plan.json").write_text(json.dumps(p))


def _deep(d):
    (d / "p.plan.json").write_text("[" * 200_000 + "]" * 200_000)


def save_array(name, arr, **npz):
    def f(d):
        if npz or name.endswith(".npz"):
            np.savez(d / name, **({"images": arr} if arr is not None else {}), **npz)
        else:
            np.save(d / name, arr)
    return f


def _crc_damaged(d):
    np.savez(d / "bad.npz", images=_calib())
    raw = bytearray((d / "bad.npz").read_bytes())
    raw[200] ^= 0xFF  # inside images.npy's data: the zip CRC no longer matches
    (d / "bad.npz").write_bytes(bytes(raw))


def _truncated_npz(d):
    np.savez(d / "bad.npz", images=_calib())
    (d / "bad.npz").write_bytes((d / "bad.npz").read_bytes()[:500])


def _object_npz(d):
    with zipfile.ZipFile(d / "bad.npz", "w") as z:  # what np.savez(allow_pickle) writes for an object array
        import io

        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        z.writestr("images.npy", buf.getvalue())


def _hardlink_model(d):
    os.link(d / "tiny.onnx", d / "link.so")


def _truncate_so(fraction):
    def f(d):
        b = (d / "tiny.so").read_bytes()
        (d / "tiny.so").write_bytes(b[: int(len(b) * fraction)])
    return f


def _edit_reference(edit):
    """tiny.ref.npz with ``edit(inputs, outputs) -> (inputs, outputs)`` applied (a hand-edited or foreign file)."""
    def f(d):
        with np.load(d / "tiny.ref.npz") as ref:
            inputs, outputs = edit(ref["inputs"], ref["outputs"])
        np.savez(d / "tiny.ref.npz", inputs=inputs, outputs=outputs)
    return f


def _text_so(d):
    (d / "tiny.so").write_text("this is not a shared library\n")


def _libc_so(d):
    (d / "tiny.so").write_bytes(Path(_libm()).read_bytes())


def _libm():
    import ctypes.util

    name = ctypes.util.find_library("m") or "libm.so.6"
    for base in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib/aarch64-linux-gnu"):
        if (Path(base) / name).is_file():
            return str(Path(base) / name)
    pytest.skip("no libm to use as a foreign shared library")


def _mkdir(name):
    def f(d):
        (d / name).mkdir()
    return f


def _data_labels(labels, images=None):
    def f(d):
        x = _calib(20) if images is None else images
        np.savez(d / "e.npz", images=x, labels=labels)
    return f


def _none(d):
    pass


@dataclass
class Case:
    id: str
    setup: object
    argv: list
    match: str
    subprocess_run: bool = False
    code: int = EXIT_USAGE
    extra: dict = field(default_factory=dict)


COMPILE = ["compile", "{d}/tiny.onnx", "--calib", "{d}/calib.npy", "-o", "{d}/out.so"]
def _v1_plan_as(name):
    """The tiny model's plan written in version 1 form at ``name`` (compile would write it back as version 2)."""

    def make(d):
        v2 = json.loads((d / "tiny.plan.json").read_text())
        v1 = {"format": v2["format"], "version": 1, "fingerprint": v2["fingerprint"], "config": v2["provenance"]["config"],
              "groups": v2["groups"], "tensors": v2["tensors"], "input_shape": v2["input_shape"],
              "layers": {n: {"weight_bits": w["bits"], "granularity": "per-channel", "weight_scales": w["scales"]}
                         for n, w in v2["layers"].items()}}
        (d / name).write_text(json.dumps(v1))

    return make


FROM_PLAN = ["compile", "{d}/tiny.onnx", "--plan", "{d}/p.plan.json", "-o", "{d}/out.so"]
EVAL = ["eval", "{d}/tiny.so", "--data", "{d}/data.npz"]


def _calib_with(name):
    return ["compile", "{d}/tiny.onnx", "--calib", "{d}/" + name, "-o", "{d}/out.so"]


CASES = [
    # ---- ONNX files: truncated, bit-flipped, not ONNX at all
    *[Case(f"onnx-truncated-{f}", truncate_model(f), COMPILE, "tiny.onnx") for f in (0.0, 0.05, 0.3, 0.5, 0.8, 0.97)],
    *[Case(f"onnx-bitflip-{p}", flip_model_bit(p), COMPILE, "tiny.onnx") for p in (0, 1, 2, 3, 4, 6, 10)],
    Case("onnx-bitflip-5", flip_model_bit(5), COMPILE, "tiny.onnx"),
    Case("onnx-bitflip-20-subprocess", flip_model_bit(20), COMPILE, "tiny.onnx", subprocess_run=True),
    Case("onnx-text", write_bytes("tiny.onnx", b"hello, not protobuf\n" * 5), COMPILE, "tiny.onnx"),
    Case("onnx-random-bytes", write_bytes("tiny.onnx", np.random.default_rng(3).bytes(4000)), COMPILE, "tiny.onnx"),
    Case("onnx-missing", _none, ["compile", "{d}/nope.onnx", "-o", "{d}/out.so"], "not found"),
    Case("onnx-directory", _mkdir("dir.onnx"), ["compile", "{d}/dir.onnx", "-o", "{d}/out.so"], "dir.onnx"),
    # ---- ONNX contents
    Case("onnx-opset-99", write_model(opset=99), COMPILE, "opset 99"),
    Case("onnx-opset-5", write_model(opset=5), COMPILE, "opset"),
    Case("onnx-custom-domain", write_model(domain="com.example"), COMPILE, "com.example"),
    Case("onnx-nan-weight", weight_with(np.nan), COMPILE, "w1"),
    Case("onnx-inf-weight", weight_with(-np.inf), COMPILE, "NaN/Inf"),
    Case("onnx-absurd-weight", weight_with(3e35), COMPILE, "magnitude"),
    Case("onnx-no-outputs", _no_outputs, COMPILE, "declares no graph outputs"),
    Case("onnx-topk", _topk_head, COMPILE, "TopK node 'top2' returns several tensors; gwq-tvm cannot compile it"),
    Case("onnx-batch-3-only", _batch_3_only, COMPILE, "hold neither at batch 2"),
    Case("onnx-empty-kernel", weight_of_shape((4, 1, 0, 3)), COMPILE, "empty weight 'w1' (shape [4, 1, 0, 3])"),
    Case("onnx-kernel-shape-contradicts-weight", conv1_attribute(kernel_shape=[5, 5]), COMPILE,
         "kernel_shape [5, 5], but its weight 'w1' is [4, 1, 3, 3]"),
    Case("onnx-nan-attribute", _leaky_alpha(float("nan")), COMPILE, "LeakyRelu node 'relu1' has alpha nan"),
    Case("onnx-inf-attribute", _leaky_alpha(float("inf")), COMPILE, "alpha inf; the model is damaged"),
    Case("onnx-negative-stride", conv1_attribute(strides=[-1, 1]), COMPILE, "conv1' has strides [-1, 1]"),
    Case("onnx-zero-dilation", conv1_attribute(dilations=[1, 0]), COMPILE, "dilations [1, 0]; every value must be >= 1"),
    Case("onnx-zero-group", conv1_attribute(group=0), COMPILE, "group [0]"),
    Case("onnx-dynamic-hw", write_model(hw=("H", "W")), COMPILE, "--input-shape"),
    Case("onnx-input-shape-rank", _none, COMPILE + ["--input-shape", "N,8,8"], "rank"),
    Case("onnx-input-shape-contradicts", _none, COMPILE + ["--input-shape", "N,3,8,8"], "contradicts"),
    Case("onnx-input-shape-zero", _none, COMPILE + ["--input-shape", "N,1,0,8"], ">= 1"),
    Case("onnx-input-shape-text", _none, COMPILE + ["--input-shape", "a,b"], "shape"),
    Case("onnx-two-inputs", edit_model(_second_input), COMPILE, "input"),
    Case("onnx-int-input", edit_model(_int_input), COMPILE, "float32"),
    Case("onnx-unknown-op", edit_model(_unknown_op), COMPILE, "FancyRelu"),
    Case("onnx-initializer-raw-size", edit_model(_wrong_raw_size), COMPILE, "tiny.onnx"),
    # ---- plans at load
    Case("plan-missing", _none, FROM_PLAN, "not found"),
    Case("plan-directory", _mkdir("p.plan.json"), FROM_PLAN, "directory"),
    Case("plan-not-json", write_bytes("p.plan.json", b"{not json"), FROM_PLAN, "not JSON"),
    Case("plan-binary", write_bytes("p.plan.json", bytes(range(256))), FROM_PLAN, "JSON"),
    Case("plan-empty", write_bytes("p.plan.json", b""), FROM_PLAN, "JSON"),
    Case("plan-deeply-nested", _deep, FROM_PLAN, "nested"),
    Case("plan-a-list", write_bytes("p.plan.json", b"[1, 2]"), FROM_PLAN, "QuantPlan"),
    Case("plan-wrong-format", edit_plan(set_path("format", "other"), "p.plan.json"), FROM_PLAN, "format"),
    Case("plan-wrong-version", edit_plan(set_path("version", 99), "p.plan.json"), FROM_PLAN, "version"),
    Case("plan-no-tensors", edit_plan(set_path("tensors", DELETE), "p.plan.json"), FROM_PLAN, "tensors"),
    Case("plan-unknown-key", edit_plan(set_path("bogus", 1), "p.plan.json"), FROM_PLAN, "plan.bogus: unknown key"),
    Case("plan-bits-9", edit_plan(set_path("tensors.*.bits", 9), "p.plan.json"), FROM_PLAN, "bits"),
    Case("plan-bits-text", edit_plan(set_path("tensors.*.bits", "eight"), "p.plan.json"), FROM_PLAN, "bits: expected an integer"),
    Case("plan-exponent-huge-float", edit_plan(set_path("tensors.*.exponent", 1e400), "p.plan.json"), FROM_PLAN,
         "exponent: expected an integer"),
    Case("plan-exponent-nan", edit_plan(set_path("tensors.*.exponent", float("nan")), "p.plan.json"), FROM_PLAN,
         "exponent: expected an integer"),
    Case("plan-mantissa-3", edit_plan(set_path("groups.*", 3.0), "p.plan.json"), FROM_PLAN, "mantissa"),
    Case("plan-group-undefined", edit_plan(set_path("tensors.*.group", "nosuch"), "p.plan.json"), FROM_PLAN, "group"),
    Case("plan-weight-bits-1", edit_plan(set_path("layers.*.bits", 1), "p.plan.json"), FROM_PLAN, "bits must be 2-8"),
    Case("plan-granularity", edit_plan(set_path("layers.*.granularity", "per-pixel"), "p.plan.json"), FROM_PLAN,
         "granularity"),
    Case("plan-scale-negative", edit_plan(set_path("layers.*.scales.0", -1.0), "p.plan.json"), FROM_PLAN,
         "positive"),
    Case("plan-provenance-config-bad", edit_plan(set_path("provenance.config.weight_granularity", {}), "p.plan.json"),
         FROM_PLAN, "provenance.config: weight_granularity"),  # was: compiled, wrote its outputs, then exit 2
    Case("plan-provenance-config-not-object", edit_plan(set_path("provenance.config", 5), "p.plan.json"), FROM_PLAN,
         "provenance.config: expected an object"),
    Case("plan-scales-not-a-list", edit_plan(set_path("layers.*.scales", 0.5), "p.plan.json"), FROM_PLAN,
         "scales: expected a list"),
    # ---- plans against the graph (gwq_tvm.plan.validate)
    Case("plan-tensor-deleted", edit_plan(set_path("tensors.conv2d_0", DELETE), "p.plan.json"), FROM_PLAN,
         "tensors.conv2d_0: missing"),
    Case("plan-tensor-extra", edit_plan(set_path("tensors.ghost", {"bits": 8, "signed": True, "group": "input",
                                                                    "exponent": 0}), "p.plan.json"),
         FROM_PLAN, "tensors.ghost"),
    Case("plan-layer-deleted", edit_plan(set_path("layers.conv2d_1", DELETE), "p.plan.json"), FROM_PLAN,
         "layers.conv2d_1: missing"),
    Case("plan-scales-short", edit_plan(set_path("layers.conv2d_0.scales.0", DELETE), "p.plan.json"), FROM_PLAN,
         "layers.conv2d_0.scales: 3 values for 4 channels"),
    Case("plan-scale-1e-30", edit_plan(set_path("layers.conv2d_0.scales.1", 1e-30), "p.plan.json"), FROM_PLAN,
         "layers.conv2d_0.scales[1]"),
    Case("plan-exponent-5000", edit_plan(set_path("tensors.conv2d_0.exponent", 5000), "p.plan.json"), FROM_PLAN,
         "tensors.conv2d_0.exponent: 5000"),
    Case("plan-exponent-minus-5000", edit_plan(set_path("tensors.input.exponent", -5000), "p.plan.json"), FROM_PLAN,
         "tensors.input.exponent"),
    Case("plan-exponent-40", edit_plan(set_path("tensors.conv2d_0.exponent", 40), "p.plan.json"), FROM_PLAN,
         "tensors.conv2d_0: scale"),
    Case("plan-input-shape-text", edit_plan(set_path("input_shape", "abcd"), "p.plan.json"), FROM_PLAN, "input_shape"),
    Case("plan-input-shape-rank", edit_plan(set_path("input_shape", [1, 8, 8]), "p.plan.json"), FROM_PLAN, "input_shape"),
    Case("plan-input-shape-channels", edit_plan(set_path("input_shape", [None, 2, 8, 8]), "p.plan.json"), FROM_PLAN,
         "input_shape[1]"),
    Case("plan-input-shape-number", edit_plan(set_path("input_shape", 7), "p.plan.json"), FROM_PLAN, "input_shape: expected a list"),
    Case("plan-other-model", lambda d: shutil.copy(d / "other.plan.json", d / "p.plan.json"), FROM_PLAN,
         "made for graph"),
    Case("plan-forged-fingerprint", _forged, FROM_PLAN, "scales: 3 values for 4 channels"),
    # ---- calibration data
    Case("data-complex", save_array("c.npy", _calib().astype(np.complex64)), _calib_with("c.npy"), "complex64"),
    Case("data-bool", save_array("c.npy", _calib() > 0), _calib_with("c.npy"), "bool"),
    Case("data-int32", save_array("c.npy", _calib().astype(np.int32)), _calib_with("c.npy"), "int32"),
    Case("data-strings", save_array("c.npy", np.array([["a"] * 8] * 8)), _calib_with("c.npy"), "dtype"),
    Case("data-object-npz", _object_npz, _calib_with("bad.npz"), "objects"),
    Case("data-empty-file", write_bytes("c.npy", b""), _calib_with("c.npy"), "c.npy"),
    Case("data-0d", save_array("c.npy", np.float32(1.0)), _calib_with("c.npy"), "0-d"),
    Case("eval-data-0d", save_array("c.npy", np.float32(1.0)), ["eval", "{d}/tiny.so", "--data", "{d}/c.npy"], "0-d"),
    Case("data-empty", save_array("c.npy", np.zeros((0, 1, 8, 8), np.float32)), _calib_with("c.npy"), "empty"),
    Case("data-nan", save_array("c.npy", np.full((8, 1, 8, 8), np.nan, np.float32)), _calib_with("c.npy"), "NaN"),
    Case("data-inf", save_array("c.npy", np.full((8, 1, 8, 8), np.inf, np.float32)), _calib_with("c.npy"), "NaN/Inf"),
    Case("data-float64-overflow", save_array("c.npy", np.full((8, 1, 8, 8), 1e300)), _calib_with("c.npy"), "float32"),
    Case("data-wrong-rank", save_array("c.npy", np.zeros((8, 8, 8), np.float32)), _calib_with("c.npy"), "shape"),
    Case("data-wrong-shape", save_array("c.npy", np.zeros((8, 1, 9, 8), np.float32)), _calib_with("c.npy"), "shape"),
    Case("data-crc-damaged", _crc_damaged, _calib_with("bad.npz"), "CRC"),
    Case("data-truncated-npz", _truncated_npz, _calib_with("bad.npz"), "bad.npz"),
    Case("data-npz-no-images", save_array("c.npz", None, weights=np.zeros(3)), _calib_with("c.npz"), "images"),
    Case("data-npz-empty-archive", save_array("c.npz", None), _calib_with("c.npz"), "images"),  # a zip of no member
    Case("data-text-file", write_bytes("c.npy", b"1,2,3\n4,5,6\n"), _calib_with("c.npy"), "c.npy"),
    Case("data-directory", _mkdir("c.npy"), _calib_with("c.npy"), "directory"),
    Case("data-missing", _none, _calib_with("nope.npy"), "not found"),
    # ---- evaluation data and labels
    Case("eval-one-label", _data_labels(np.array([1])), ["eval", "{d}/tiny.so", "--data", "{d}/e.npz"], "labels"),
    Case("eval-string-labels", _data_labels(np.array(["cat"] * 20)), ["eval", "{d}/tiny.so", "--data", "{d}/e.npz"],
         "integer"),
    Case("eval-nan-float-labels", _data_labels(np.full(20, np.nan)), ["eval", "{d}/tiny.so", "--data", "{d}/e.npz"],
         "integer"),
    Case("eval-2d-labels", _data_labels(np.zeros((20, 1), np.int64)), ["eval", "{d}/tiny.so", "--data", "{d}/e.npz"],
         "shape"),
    Case("eval-label-out-of-range", _data_labels(np.full(20, 7)), ["eval", "{d}/tiny.so", "--data", "{d}/e.npz"],
         "[0, 4)"),
    Case("eval-negative-label", _data_labels(np.full(20, -1)), ["eval", "{d}/tiny.so", "--data", "{d}/e.npz"], "[0, 4)"),
    Case("eval-wrong-image-shape", _data_labels(np.zeros(20, np.int64), np.zeros((20, 1, 9, 9), np.float32)),
         ["eval", "{d}/tiny.so", "--data", "{d}/e.npz"], "shape"),
    # ---- modules given to eval
    Case("so-text-file", _text_so, EVAL, "not a shared library"),
    Case("so-truncated-half", _truncate_so(0.5), EVAL, "truncated"),
    Case("so-truncated-tiny", _truncate_so(0.01), EVAL, "tiny.so"),
    Case("so-truncated-subprocess", _truncate_so(0.6), EVAL, "truncated", subprocess_run=True),
    Case("so-foreign-library", _libc_so, EVAL, "not a TVM module", subprocess_run=True),
    Case("so-missing", _none, ["eval", "{d}/nope.so"], "not found"),
    Case("bench-so-truncated", _truncate_so(0.7), ["bench", "{d}/tiny.so", "--repeat", "1"], "truncated"),
    Case("bench-so-text", _text_so, ["bench", "{d}/tiny.so", "--repeat", "1"], "not a shared library"),
    *[Case(f"bench-reference-{name}", _edit_reference(edit), ["bench", "{d}/tiny.so", "--repeat", "1"], match)
      for name, edit, match in (
          ("empty", lambda x, y: (x[:0], y[:0]), "(no samples)"),
          ("nan-inputs", lambda x, y: (x * np.nan, y), "inputs hold NaN/Inf"),
          ("float64-inputs", lambda x, y: (x.astype(np.float64), y), "inputs of dtype float64"),
          ("fewer-outputs", lambda x, y: (x, y[:1]), f"for {REFERENCE_SAMPLES} inputs"),
          ("other-image-size", lambda x, y: (x[:, :, :5], y), "the module takes ('N', 1, 8, 8)"))],
    # ---- options
    Case("opt-plan-and-weight-bits", _none, ["compile", "{d}/tiny.onnx", "--plan", "{d}/tiny.plan.json", "-o",
                                             "{d}/out.so", "--weight-bits", "4"], "--weight-bits"),
    Case("opt-plan-and-mode-groups", _none, ["compile", "{d}/tiny.onnx", "--plan", "{d}/tiny.plan.json", "-o",
                                             "{d}/out.so", "--mode", "gwq", "--groups", "2"], "--mode, --groups"),
    Case("opt-plan-and-calib", _none, ["compile", "{d}/tiny.onnx", "--plan", "{d}/tiny.plan.json", "-o", "{d}/out.so",
                                       "--calib", "{d}/calib.npy"], "--calib"),
    Case("opt-plan-and-weight-bits-8", _none, ["compile", "{d}/tiny.onnx", "--plan", "{d}/tiny.plan.json", "-o",
                                               "{d}/out.so", "--weight-bits", "8"], "--weight-bits"),
    Case("opt-target-cuda", _none, COMPILE + ["--target", "cuda"], "cuda"),
    Case("opt-target-c", _none, COMPILE + ["--target", '{"kind": "c"}'], "supported"),
    Case("opt-target-riscv", _none, COMPILE + ["--target", '{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}'],
         "riscv64"),
    Case("opt-target-unknown", _none, COMPILE + ["--target", "raspberry-pi-99"], "target"),
    Case("opt-weight-bits-9", _none, COMPILE + ["--weight-bits", "9"], "weight_bits"),
    Case("opt-mode-unknown", _none, COMPILE + ["--mode", "best"], "mode"),
    Case("opt-groups-with-per-layer", _none, COMPILE + ["--groups", "2"], "gwq"),
    Case("opt-tuning-db-missing", _none, COMPILE + ["--tuning-db", "{d}/nodb"], "tuning database"),
    Case("opt-tune-rpc-half", _none, ["tune", "{d}/tiny.onnx", "--calib", "{d}/calib.npy", "--work-dir", "{d}/w",
                                      "--rpc-key", "board"], "--rpc-tracker"),
    Case("opt-tune-work-dir-is-file", _none, ["tune", "{d}/tiny.onnx", "--work-dir", "{d}/calib.npy"], "work-dir"),
    # ---- the newest options (each was exit 0 with the option ignored, a traceback, or a file overwritten)
    Case("opt-search-metric-without-block-search", _none, COMPILE + ["--search-metric", "cosine"],
         "--search-metric only applies with --block-search"),
    Case("opt-search-rounds-without-block-search", _none, COMPILE + ["--search-rounds", "3"], "--block-search"),
    Case("opt-blocks-fit-without-blocks", _none, COMPILE + ["--weight-blocks-fit", "gcd"], "--weight-blocks"),
    Case("eval-against-json-is-model", _none, EVAL + ["--against", "{d}/tiny.onnx", "--json", "{d}/tiny.onnx"],
         "refusing to overwrite"),
    Case("eval-against-json-is-module", _none, EVAL + ["--against", "{d}/tiny.onnx", "--json", "{d}/tiny.so"],
         "input module"),
    Case("eval-against-json-is-directory", _mkdir("j"), EVAL + ["--against", "{d}/tiny.onnx", "--json", "{d}/j"],
         "directory"),
    Case("report-data-without-layer-error", _none, ["report", "{d}/tiny.onnx", "--calib", "{d}/calib.npy", "-o",
                                                     "{d}/r.html", "--data", "{d}/data.npz"], "--layer-error"),
    Case("report-layer-error-data-shape", save_array("c.npy", np.zeros((4, 1, 9, 9), np.float32)),
         ["report", "{d}/tiny.onnx", "--calib", "{d}/calib.npy", "-o", "{d}/r.html", "--layer-error", "--data",
          "{d}/c.npy"], "layer-error data has shape"),
    Case("qdq-out-is-plan", _none, ["export-qdq", "{d}/tiny.plan.json", "{d}/tiny.onnx", "-o", "{d}/tiny.plan.json",
                                    "--no-check"], "input plan"),
    Case("qdq-out-is-directory", _mkdir("q"), ["export-qdq", "{d}/tiny.plan.json", "{d}/tiny.onnx", "-o", "{d}/q"],
         "directory"),
    Case("qdq-data-wrong-shape", save_array("c.npy", np.zeros((4, 1, 9, 9), np.float32)),
         ["export-qdq", "{d}/tiny.plan.json", "{d}/tiny.onnx", "-o", "{d}/q.onnx", "--data", "{d}/c.npy"],
         "sample inputs has shape"),  # was: q.onnx written, then the error
    Case("demo-out-dir-is-file", _none, ["demo", "--out-dir", "{d}/calib.npy", "--limit", "10"], "not a directory"),
    # ---- outputs
    Case("out-is-model", _none, ["compile", "{d}/tiny.onnx", "--calib", "{d}/calib.npy", "-o", "{d}/tiny.onnx"],
         "refusing to overwrite"),
    Case("out-hardlink-of-model", _hardlink_model, ["compile", "{d}/tiny.onnx", "--calib", "{d}/calib.npy", "-o",
                                                    "{d}/link.so"], "the input model"),
    Case("out-plan-is-input-plan-it-would-change", _v1_plan_as("out.plan.json"),
         ["compile", "{d}/tiny.onnx", "--plan", "{d}/out.plan.json", "-o", "{d}/out.so"], "is the input plan"),
    Case("out-is-calib", _none, ["plan", "{d}/tiny.onnx", "--calib", "{d}/calib.npy", "-o", "{d}/calib.npy"],
         "calibration data"),
    Case("out-is-directory", _mkdir("outdir"), ["compile", "{d}/tiny.onnx", "--calib", "{d}/calib.npy", "-o",
                                                "{d}/outdir"], "directory"),
    Case("out-is-another-model", lambda d: shutil.copy(d / "tiny.onnx", d / "other.onnx"),
         ["compile", "{d}/tiny.onnx", "--calib", "{d}/calib.npy", "-o", "{d}/other.onnx"],
         "other.onnx exists and is not a compiled module; refusing to overwrite it"),
    Case("out-report-json-is-model", lambda d: shutil.copy(d / "tiny.onnx", d / "r.json"),
         ["report", "{d}/r.json", "--calib", "{d}/calib.npy", "-o", "{d}/r.html"], "model"),
]


def test_corpus_is_large_enough():
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line(case, assets, tmp_path, capsys):
    for name in ("tiny.onnx", "calib.npy", "data.npz", "tiny.so", "tiny.plan.json", "tiny.ref.npz", "other.plan.json"):
        shutil.copy(assets / name, tmp_path / name)
    if "p.plan.json" in " ".join(case.argv) and case.setup is _none and case.id != "plan-missing":
        shutil.copy(assets / "tiny.plan.json", tmp_path / "p.plan.json")
    case.setup(tmp_path)
    assert_refused(case.argv, tmp_path, case.match, None if case.subprocess_run else capsys, case.subprocess_run, case.code)


# --- regressions, one test each ------------------------------------------------
def test_nan_weight_is_named_before_import():
    from gwq_tvm.errors import ModelError
    from gwq_tvm.frontend import from_onnx

    w = np.ones((4, 1, 3, 3), np.float32)
    w[2, 0, 1, 1] = np.nan
    with pytest.raises(ModelError, match="initializer 'w1' holds 1 NaN/Inf"):
        from_onnx(tiny_model(w1=w))


def test_opset_99_is_rejected_with_the_range():
    from gwq_tvm.errors import ModelError
    from gwq_tvm.frontend import MIN_OPSET, from_onnx

    with pytest.raises(ModelError, match=f"opset 99 is not supported; gwq-tvm reads opsets {MIN_OPSET} to "
                                         f"{onnx.defs.onnx_opset_version()}"):
        from_onnx(tiny_model(opset=99))


def test_custom_domain_op_is_rejected():
    from gwq_tvm.errors import ModelError
    from gwq_tvm.frontend import from_onnx

    with pytest.raises(ModelError, match="com.example::Relu"):
        from_onnx(tiny_model(domain="com.example"))


def test_eval_with_wrong_labels_prints_no_accuracy(assets, tmp_path, capsys):
    np.savez(tmp_path / "e.npz", images=_calib(20), labels=np.array([1]))
    capsys.readouterr()
    assert _cli("eval", str(assets / "tiny.so"), "--data", str(tmp_path / "e.npz")) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert "accuracy" not in out
    _error_lines(err, "labels have shape (1,); expected one per sample, shape (20,)")
    np.savez(tmp_path / "ok.npz", images=_calib(20), labels=np.arange(20) % 4)  # the same module with good labels
    assert _cli("eval", str(assets / "tiny.so"), "--data", str(tmp_path / "ok.npz")) == 0
    assert "accuracy:" in capsys.readouterr().out


@pytest.mark.parametrize("factor, says", [(1.0, None), (1000.0, "most large values are clipped"),
                                           (1e-4, "nearly every value rounds to a few codes")])
def test_eval_warns_once_when_data_is_not_scaled_like_the_calibration_data(assets, tmp_path, capsys, factor, says):
    """Data 1000x or 1e-4x the calibration data's scale runs, with one warning naming the input range."""
    import warnings

    np.savez(tmp_path / "e.npz", images=_calib(20) * factor, labels=np.arange(20) % 4)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _cli("eval", str(assets / "tiny.so"), "--data", str(tmp_path / "e.npz")) == 0
    assert "accuracy:" in capsys.readouterr().out
    notes = [str(w.message) for w in caught if "scaled like the calibration data" in str(w.message)]
    if says is None:
        assert notes == []
    else:
        assert len(notes) == 1 and says in notes[0] and "the input quantizer covers [" in notes[0]
        assert "\n" not in notes[0]


@pytest.mark.parametrize("link", [False, True])
def test_output_equal_to_input_is_refused(assets, tmp_path, capsys, link):
    model = tmp_path / "m.onnx"
    shutil.copy(assets / "tiny.onnx", model)
    out = model
    if link:
        out = tmp_path / "m.so"
        os.link(model, out)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    capsys.readouterr()
    assert _cli("compile", str(model), "--calib", str(assets / "calib.npy"), "-o", str(out)) == EXIT_USAGE
    _error_lines(capsys.readouterr().err, "refusing to overwrite")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({model.name, out.name})


def test_api_export_refuses_to_overwrite_a_file_that_is_not_a_module(assets, tmp_path):
    """Before: ``gwq_tvm.export(lib, "model.onnx")`` replaced the user's model with the library (the CLI
    refused only an output that *is* its own input).  A previous module at the path is still replaced."""
    from gwq_tvm.errors import GwqError

    model = tmp_path / "m.onnx"
    shutil.copy(assets / "tiny.onnx", model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    lib = gwq_tvm.build(gwq_tvm.quantize(str(model), _calib()))
    with pytest.raises(GwqError, match="exists and is not a compiled module"):
        gwq_tvm.export(lib, model)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    for name in ("m.so", "m.tar"):
        gwq_tvm.export(lib, tmp_path / name)
        gwq_tvm.export(lib, tmp_path / name)  # a rebuild replaces its module
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.so", "m.tar"]


def test_api_takes_a_config_dict_a_plan_path_and_a_target_name(assets, tmp_path):
    """Before: a dict config, a plan path and a target name each ended in an AttributeError inside gwq-tvm."""
    from gwq_tvm.plan.quantplan import QuantPlan

    q = gwq_tvm.quantize(str(assets / "tiny.onnx"), _calib(), {"mode": "gwq", "groups": 2})
    assert q.plan == gwq_tvm.quantize(str(assets / "tiny.onnx"), _calib(), gwq_tvm.QuantConfig(mode="gwq", groups=2)).plan
    q.plan.save(tmp_path / "p.json")
    again = gwq_tvm.quantize(str(assets / "tiny.onnx"), plan=str(tmp_path / "p.json"))
    assert again.plan == QuantPlan.load(tmp_path / "p.json")
    gwq_tvm.build(again, "host")


@pytest.mark.parametrize("call, match", [
    (lambda m: gwq_tvm.quantize(m, _calib(), {"mood": "gwq"}), "unexpected keyword argument 'mood'"),
    (lambda m: gwq_tvm.quantize(m, _calib(), "gwq"), "config must be a QuantConfig or a dict"),
    (lambda m: gwq_tvm.quantize(m, plan=3), "plan must be a QuantPlan or the path"),
    (lambda m: gwq_tvm.build(None), "build takes a QuantizedModel"),
    (lambda m: gwq_tvm.build(gwq_tvm.quantize(m, _calib()), "nonsense-cpu"), "bad target 'nonsense-cpu'"),
    (lambda m: gwq_tvm.build(gwq_tvm.quantize(m, _calib()), 5), "got int 5"),
], ids=["config-field", "config-type", "plan-type", "build-none", "target-name", "target-type"])
def test_api_misuse_is_a_gwq_error(assets, call, match):
    from gwq_tvm.errors import GwqError

    with pytest.raises(GwqError, match=match):
        call(str(assets / "tiny.onnx"))


def test_input_shape_with_dynamic_batch_compiles(tmp_path, capsys):
    """``--input-shape N,1,28,28`` (the README's syntax) segfaulted in TVM 0.27's ONNX import; see frontend._set_input_shape."""
    from gwq_tvm.data import BUNDLED_MODEL
    from gwq_tvm.frontend import from_onnx

    assert from_onnx(str(BUNDLED_MODEL), (None, 1, 28, 28)).input_shape == (None, 1, 28, 28)
    assert from_onnx(str(BUNDLED_MODEL), (3, 1, 28, 28)).input_shape == (3, 1, 28, 28)
    dynamic = tiny_model(hw=("H", "W"))
    assert from_onnx(dynamic, (None, 1, 8, 8)).input_shape == (None, 1, 8, 8)
    np.save(tmp_path / "c.npy", _calib())
    onnx.save(dynamic, str(tmp_path / "dyn.onnx"))
    assert _cli("compile", str(tmp_path / "dyn.onnx"), "--input-shape", "N,1,8,8", "--calib", str(tmp_path / "c.npy"),
                "-o", str(tmp_path / "dyn.so")) == 0
    assert json.loads((tmp_path / "dyn.plan.json").read_text())["input_shape"] == [None, 1, 8, 8]


def test_a_dynamic_batch_that_holds_only_at_batch_1_compiles_for_batch_1(tmp_path, capsys):
    """A Reshape to a constant batch of 1 under a dynamic batch axis: compiled for batch 1 with one warning, and the
    module then runs any number of samples (one at a time).  Before, calibration's batched run failed inside numpy."""
    onnx.save(_batch_tied_flatten(tiny_model()), str(tmp_path / "b1.onnx"))
    np.save(tmp_path / "c.npy", _calib())
    with pytest.warns(UserWarning, match=r"shapes hold only at batch 1 \(at batch 2: Reshape .*compiling it for batch 1"):
        assert _cli("compile", str(tmp_path / "b1.onnx"), "--calib", str(tmp_path / "c.npy"), "-o", str(tmp_path / "b1.so")) == 0
    assert json.loads((tmp_path / "b1.plan.json").read_text())["input_shape"] == [1, 1, 8, 8]
    capsys.readouterr()
    assert _cli("eval", str(tmp_path / "b1.so"), "--data", str(tmp_path / "c.npy")) == 0
    assert "ran 16 samples" in capsys.readouterr().out


def test_a_failed_compile_leaves_no_output(assets, tmp_path, capsys, monkeypatch):
    """The .so, plan and reference are renamed into place together: a failure in the last one leaves none of them."""
    from gwq_tvm.errors import GwqError
    from gwq_tvm.remote import bench

    def fail(*_):
        raise GwqError("disk full (simulated)")

    monkeypatch.setattr(bench, "save_reference", fail)
    assert _cli("compile", str(assets / "tiny.onnx"), "--calib", str(assets / "calib.npy"), "-o",
                str(tmp_path / "m.so")) == EXIT_USAGE
    _error_lines(capsys.readouterr().err, "disk full")
    assert list(tmp_path.iterdir()) == []


def test_atomic_paths_keep_the_old_file_on_failure(tmp_path):
    from gwq_tvm.atomic import atomic_paths, write_text

    write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_paths(tmp_path / "a.txt", tmp_path / "b.txt") as (a, b):
            a.write_text("new")
            raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_paths(tmp_path / "a.txt", tmp_path / "b.txt") as (a, b):
        a.write_text("new")
        b.write_text("b")
    assert (tmp_path / "a.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


# --- the top-level guard ---------------------------------------------------------
def _raising(exc):
    def cmd(_args):
        raise exc
    return cmd


def test_an_unexpected_exception_is_one_line_naming_a_bug(monkeypatch, capsys):
    import gwq_tvm.cli as cli

    monkeypatch.setattr(cli, "cmd_eval", _raising(KeyError("boom")))
    assert _cli("eval", "x.so") == EXIT_BUG
    err = capsys.readouterr().err
    _error_lines(err, "internal error (a bug in gwq-tvm")
    assert "KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["--debug", "eval", "x.so"])


def test_ctrl_c_is_one_line_exit_130(monkeypatch, capsys):
    import gwq_tvm.cli as cli

    monkeypatch.setattr(cli, "cmd_eval", _raising(KeyboardInterrupt()))
    assert _cli("eval", "x.so") == 130
    assert capsys.readouterr().err.strip() == "gwq-tvm: interrupted"


def test_a_native_crash_is_one_line():
    """The program runs its command in a forked child: a segfault there is one error line and exit 2.

    A child stopped from outside (SIGTERM) is reported as that, not as a crash.
    """
    code = ("import ctypes, os, signal, sys, gwq_tvm.cli as cli\n"
            "cli.cmd_eval = lambda a: ctypes.string_at(0)\n"
            "print(cli.run(['eval', 'x.so']), flush=True)\n"
            "print('---', file=sys.stderr, flush=True)\n"
            "cli.cmd_eval = lambda a: os.kill(os.getpid(), signal.SIGTERM)\n"
            "print(cli.run(['eval', 'x.so']), flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    crash, term = proc.stderr.split("---\n")
    assert proc.stdout.split() == [str(EXIT_USAGE), "143"]
    _error_lines(crash, "'eval' crashed in native code (SIGSEGV)")
    assert term.strip() == "gwq-tvm: stopped by SIGTERM"


# --- the tuning database -----------------------------------------------------------
def _tiny_database(work):
    """A JSON tuning database with 3 records of one (non-VNNI) workload, written by TVM itself."""
    import tvm
    from tvm import s_tir, te
    from tvm.s_tir import meta_schedule as ms

    from gwq_tvm.schedules.tune import RECORD_FILE, WORKLOAD_FILE

    a = te.placeholder((16,), "float32", name="a")
    b = te.compute((16,), lambda i: a[i] + 1.0, name="b")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    db = ms.database.JSONDatabase(str(work / WORKLOAD_FILE), str(work / RECORD_FILE), allow_missing=True)
    workload = db.commit_workload(mod)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    for k in range(3):
        db.commit_tuning_record(ms.database.TuningRecord(s_tir.Schedule(mod).trace, workload, [1e-4 * (k + 1)], target,
                                                         ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    return work / RECORD_FILE


def test_a_non_utf8_tuning_record_is_skipped_with_a_warning(tmp_path):
    from gwq_tvm.schedules.tune import open_database

    records = _tiny_database(tmp_path)
    with open(records, "ab") as f:
        f.write(b'[0, "\xff\xfe not utf-8"]\n')
    with pytest.warns(UserWarning, match="skipped 1 corrupt line"):
        db = open_database(tmp_path)
    assert len(db.get_all_tuning_records()) == 3
    assert records.read_bytes().decode("utf-8").count("\n") == 3


def test_a_cross_target_without_its_toolchain_is_one_line(assets, tmp_path, capsys, monkeypatch):
    """Not the linker's command line: the missing compiler and its Debian package, before any work."""
    import shutil as sh

    real = sh.which
    monkeypatch.setattr(sh, "which", lambda exe, *a, **k: None if exe.startswith("aarch64-") else real(exe, *a, **k))
    assert _cli("compile", str(assets / "tiny.onnx"), "--calib", str(assets / "calib.npy"), "-o", str(tmp_path / "m.so"),
                "--target", "rpi4") == EXIT_USAGE
    _error_lines(capsys.readouterr().err, "needs the cross compiler aarch64-linux-gnu-gcc, which is not installed")
    assert list(tmp_path.iterdir()) == []
