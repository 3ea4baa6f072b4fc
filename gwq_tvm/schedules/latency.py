"""Measured layer latencies for LIMPQ's latency budget (issue 23): a table per target, cached in a JSON file.

The mixed-precision ILP (:mod:`gwq_tvm.plan.mixed_precision`) predicts the
latency of a policy as

    T(policy) = T_w8a8 + sum_l  (t_l[storage(b_l)] - t_l["int8"])

where ``T_w8a8`` is the measured latency of the whole compiled program with
every layer at W8A8 and ``t_l[s]`` the measured latency of layer ``l``'s
integer kernel with its weights stored as ``s``: ``"int8"`` or ``"int4"``
(two per byte, unpacked in registers: :mod:`gwq_tvm.schedules.pack_layout`).
A weight of at most 4 bits uses the int4 kernel on a family with an int4 step;
activations of 4 bits stay in 8-bit containers, so they do not change a
kernel's latency.  Only the difference of a layer's two kernels enters, so
what the layer program adds around its kernel (argument passing) cancels.

Each layer program is ``layer(x_codes, W) -> int32`` at batch 1 with the
layer's own shape, strides, padding, dilation and groups, its input in the
container the W8A8 plan gives it (uint8 or int8) and its own weight quantized
per channel at 8 bits or 4 bits, compiled with the packed kernels of the
target (:func:`gwq_tvm.schedules.build.compile_packed`) and timed with
``time_evaluator`` (median of ``repeat`` runs): on this machine, or on a board
registered at a TVM RPC tracker (``board="KEY@HOST:PORT"``), where every
kernel is cross-compiled for the board's target, exported, uploaded and timed
in one session (:func:`gwq_tvm.remote.bench.time_modules`).

The table records the target, the device it was measured on and the graph's
fingerprint; a table of another target or model is refused, never silently reused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError

#: layer kinds whose weight storage the packer chooses (int4 step): the others keep int8 at any width
MEASURED_KINDS = ("conv2d", "dense")
STORAGES = ("int8", "int4")
TABLE_VERSION = 1


def storage(bits: int, int4_step: bool) -> str:
    """The weight storage a ``bits``-bit layer compiles to: ``int4`` (<= 4 bits, a family with an int4 step), else ``int8``."""
    return "int4" if bits <= 4 and int4_step else "int8"


def layer_program(node, input_shape: tuple, signed_input: bool, bits: int):
    """``(module, x)``: the integer kernel of layer ``node`` (conv2d or dense) at batch 1, weights at ``bits``.

    ``input_shape`` is the shape of the layer's input tensor (its batch dim is replaced by 1).

    The weight is ``node.weight`` quantized per output channel to ``bits``
    (:func:`gwq_tvm.plan.scales.quantize_weight`, ``s_c = max|w_c| / qmax``):
    at 4 bits its values lie in [-7, 7] and the packer stores them as nibbles.
    """
    from tvm import relax
    from tvm.relax import op as R

    from ..plan import scales as S

    w = np.asarray(node.weight, np.float64)
    peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    wq = S.quantize_weight(w, np.where(peak > 0, peak, 1.0) / S.weight_qmax(bits), bits)
    shape = (1, *(int(d) for d in input_shape[1:]))
    dtype = "int8" if signed_input else "uint8"
    x = relax.Var("x", relax.TensorType(shape, dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            if node.kind == "dense":
                y = R.matmul(x, relax.const(np.ascontiguousarray(wq.T)), out_dtype="int32")
            else:
                a = node.attrs
                y = R.nn.conv2d(x, relax.const(wq), strides=a["strides"], padding=a["padding"], dilation=a["dilation"],
                                groups=a["groups"], out_dtype="int32")
            out = bb.emit_output(bb.emit(y))
        bb.emit_func_output(out)
    lo, hi = (-128, 128) if signed_input else (0, 256)
    return bb.get(), np.random.default_rng(0).integers(lo, hi, shape).astype(dtype)


def time_vm(vm, dev, x: np.ndarray, repeat: int) -> float:
    """Median seconds of ``vm["main"](x)`` over ``repeat`` timed runs of at least 2 ms each (after one warm-up)."""
    import tvm

    vm.set_input("main", tvm.runtime.tensor(np.ascontiguousarray(x), device=dev))
    vm.invoke_stateful("main")
    timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat, min_repeat_ms=2)
    return float(np.median(timer("main").results))


def time_executables(executables: list, inputs: list, target, *, board: str | None = None, repeat: int) -> list[float]:
    """Median seconds of each compiled ``main`` on its input: here (``board=None``, ``target`` must be this
    machine's), or on ``board`` (``"KEY@HOST:PORT"``): exported with ``target``'s cross compiler and timed there."""
    import tempfile

    import tvm
    from tvm import relax

    if board is None:
        dev = tvm.cpu()
        return [time_vm(relax.VirtualMachine(ex, dev), dev, x, repeat) for ex, x in zip(executables, inputs)]
    from ..remote.bench import time_modules
    from ..remote.tracker import parse_board
    from .targets import export_compiler

    tracker, key = parse_board(board)
    fcompile = export_compiler(target)
    with tempfile.TemporaryDirectory(prefix="gwq-latency-") as tmp:
        paths = []
        for i, ex in enumerate(executables):
            paths.append(Path(tmp) / f"k{i}.so")
            ex.export_library(str(paths[-1]), **({"fcompile": fcompile} if fcompile else {}))
        return time_modules(paths, inputs, tracker=tracker, key=key, repeat=repeat)


def measure_layers(graph, signed: dict, target, *, board: str | None = None, repeat: int = 15, log=None) -> dict:
    """``{layer: {"int8": s, "int4": s}}`` for every conv2d/dense layer of ``graph``, here or on ``board``.

    ``signed`` maps each layer's input tensor to whether its W8A8 codes are int8.
    """
    from .build import compile_packed
    from .spec import kernel_spec

    spec = kernel_spec(target)
    if spec is None:
        raise ConfigError(f"a latency table needs a target with packed integer kernels; {target} has none")
    keys, executables, inputs = [], [], []
    for name in graph.layers():
        node = graph.nodes[name]
        if node.kind not in MEASURED_KINDS:
            continue
        shape = graph.nodes[node.inputs[0]].shape
        if any(d < 0 for d in shape[1:]):
            raise ConfigError(f"a latency table needs static shapes: layer {name} reads shape {tuple(shape)}")
        for store, bits in (("int8", 8), ("int4", 4)):
            mod, x = layer_program(node, shape, signed[graph.tensor_of(node.inputs[0])], bits)
            keys.append((name, store))
            executables.append(compile_packed(mod, target, spec))
            inputs.append(x)
    out: dict = {}
    for (name, store), t in zip(keys, time_executables(executables, inputs, target, board=board, repeat=repeat)):
        out.setdefault(name, {})[store] = t
    if log:
        for name, row in out.items():
            log(f"latency {name}: int8 {1e6 * row['int8']:.1f} us, int4 {1e6 * row['int4']:.1f} us")
    return out


def measure_program(mod, input_shape: tuple, target, *, board: str | None = None, repeat: int = 30) -> float:
    """Median seconds of the whole realized program ``mod`` at batch 1, compiled for ``target`` with its packed
    kernels, here or on ``board``."""
    from .build import compile_integer

    x = np.random.default_rng(0).normal(size=(1, *input_shape[1:])).astype("float32")
    return time_executables([compile_integer(mod, target)], [x], target, board=board, repeat=repeat)[0]


def int4_step(target) -> bool:
    """Does ``target``'s kernel family store <= 4-bit weights as nibbles?"""
    from .spec import kernel_spec

    spec = kernel_spec(target)
    return spec is not None and spec.int4_intrinsic is not None


def make_table(graph, signed: dict, w8a8_mod, input_shape: tuple, target, *, board: str | None = None, log=None) -> dict:
    """The latency table of ``graph`` on ``target``: per-layer kernels and the whole W8A8 program, measured on this
    machine (``board=None``) or on ``board`` (``"KEY@HOST:PORT"``)."""
    t0 = time.perf_counter()
    layers = measure_layers(graph, signed, target, board=board, log=log)
    program = measure_program(w8a8_mod, input_shape, target, board=board)
    return {"version": TABLE_VERSION, "target": str(target), "device": board or "local", "fingerprint": graph.fingerprint,
            "int4_step": int4_step(target), "program_w8a8_s": program, "layers": layers,
            "seconds": time.perf_counter() - t0}


def save_table(path, table: dict) -> None:
    from ..atomic import write_text

    write_text(path, json.dumps(table, indent=1) + "\n")


def load_table(path, graph, target) -> dict:
    """The table at ``path``, checked against this model and target.

    Raises
    ------
    ConfigError
        One line: unreadable, malformed, or made for another model or target.
    """
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"latency table {path}: cannot read it ({err})") from None
    ok = (isinstance(table, dict) and table.get("version") == TABLE_VERSION and isinstance(table.get("layers"), dict)
          and _positive(table.get("program_w8a8_s")) and isinstance(table.get("int4_step"), bool)
          and all(isinstance(r, dict) and all(_positive(r.get(s)) for s in STORAGES) for r in table["layers"].values()))
    if not ok:
        raise ConfigError(f"latency table {path}: not a version-{TABLE_VERSION} gwq-tvm latency table (measure it again)")
    if table.get("fingerprint") != graph.fingerprint:
        raise ConfigError(f"latency table {path} was measured for graph {table.get('fingerprint')}, this model is {graph.fingerprint}")
    if table.get("target") != str(target):
        raise ConfigError(f"latency table {path} was measured on target {table.get('target')}, not {target}")
    missing = [n for n in graph.layers() if graph.nodes[n].kind in MEASURED_KINDS and n not in table["layers"]]
    if missing:
        raise ConfigError(f"latency table {path} has no row for layer {missing[0]}")
    return table


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0


def layer_latency(table: dict, graph, bits_choices) -> dict:
    """``{layer: {bits: seconds}}`` for the ILP: each candidate width's storage's kernel (0 for unmeasured kinds)."""
    out = {}
    for name in graph.layers():
        row = table["layers"].get(name)
        out[name] = {b: (row[storage(b, table["int4_step"])] if row else 0.0) for b in bits_choices}
    return out
