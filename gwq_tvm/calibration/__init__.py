"""Run the fp32 model on TVM over real batches and record every node's statistics.

Usage::

    stats = calibrate(float_model, images, config)   # {node name: TensorStats}
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..config import QuantConfig
from ..errors import CalibrationDataError
from ..frontend import FloatModel
from ..extract import extract_graph
from ..graph import Graph
from ..runtime import host_target, progress
from ..schedules.float import compile_float
from ..stats import TensorStats, choose_clip

__all__ = ["TensorStats", "calibrate", "choose_clip", "check_batch", "check_labels", "with_node_outputs"]


def _array(data, what: str) -> np.ndarray:
    try:
        return np.asarray(data)
    except Exception as err:  # noqa: BLE001 - ragged lists and the like
        raise CalibrationDataError(f"{what} is not an array: {type(err).__name__}") from None


def check_batch(data, input_shape: tuple, what: str = "calibration data") -> np.ndarray:
    """Validate user data against the model input and return it as float32.

    Accepted are real floating-point arrays and ``uint8`` images (pixel values).

    Raises
    ------
    CalibrationDataError
        If ``data`` is not a real float or uint8 array (complex, bool, integer
        other than uint8, strings, objects), is 0-d or empty, holds NaN/Inf, or
        does not match the model's input rank and shape (ignoring a dynamic
        batch dimension).
    """
    arr = _array(data, what)
    if arr.dtype.kind != "f" and arr.dtype != np.uint8:
        raise CalibrationDataError(f"{what} must be numeric: real floats or uint8 images; got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise CalibrationDataError(f"{what} is a single number (a 0-d array); it must be a batch of inputs")
    if arr.size == 0:
        raise CalibrationDataError(f"{what} is empty (shape {arr.shape})")
    expected = tuple(input_shape)
    if arr.ndim != len(expected) or any(e is not None and e != a for e, a in zip(expected[1:], arr.shape[1:])):
        shown = "x".join("N" if d is None else str(d) for d in expected)
        raise CalibrationDataError(f"{what} has shape {arr.shape}; the model expects {shown}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise CalibrationDataError(f"{what} holds {int(bad.sum())} NaN/Inf values")
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise CalibrationDataError(f"{what} holds values too large for float32")
    return arr


#: :func:`input_range_warning` flags data whose 99th percentile of ``|x|`` is above this multiple of the
#: input's quantized range bound, or below this fraction of it
RANGE_OVER, RANGE_UNDER = 2.0, 1 / 50


def input_range_warning(data: np.ndarray, plan, what: str = "evaluation data") -> str | None:
    """A one-line warning when ``data`` is not scaled like the data ``plan``'s input was calibrated on.

    The input quantizer represents ``[s (qmin - z), s (qmax - z)]`` (``s``, ``z``: the
    plan's input scale and zero point) and clips the rest.  With ``p = percentile(|x|, 99)``
    and ``R`` the larger end of that range in magnitude, ``p > RANGE_OVER * R`` means most
    large values clip (e.g. uint8 pixels 0-255 fed to a model calibrated on ``[0, 1]``), and
    ``p < RANGE_UNDER * R`` that nearly all values round to a few codes.  ``None`` when neither.
    """
    from ..plan import scales as S

    name = "input"  # the graph input's node name (:func:`gwq_tvm.extract.extract_graph`)
    if name not in plan.tensors:
        return None
    tq = plan.tensors[name]
    qmin, qmax = S.qrange(tq.bits, tq.signed)
    s = plan.scale(name)
    lo, hi = s * (qmin - tq.zero_point), s * (qmax - tq.zero_point)
    bound = max(abs(lo), abs(hi))
    p = float(np.percentile(np.abs(data), 99))
    if p > RANGE_OVER * bound:
        how = f"is {p / bound:.3g}x the largest value the quantized input holds, so most large values are clipped"
    elif p < RANGE_UNDER * bound:
        how = f"is {p / bound:.2%} of the quantized input's range, so nearly every value rounds to a few codes"
    else:
        return None
    return (f"{what} is not scaled like the calibration data: its 99th percentile of |x| ({p:.4g}) {how} "
            f"(the input quantizer covers [{lo:.4g}, {hi:.4g}]); preprocess it as the model expects")


def check_labels(labels, count: int, num_classes: int | None = None, what: str = "labels") -> np.ndarray:
    """Validate class labels for ``count`` samples and return them as int64.

    Raises
    ------
    CalibrationDataError
        If ``labels`` is not a 1-D integer array of length ``count``, or (with
        ``num_classes``) holds a label outside ``[0, num_classes)``.
    """
    y = _array(labels, what)
    if y.dtype.kind not in "iu":
        raise CalibrationDataError(f"{what} must be integer class ids; got dtype {y.dtype}")
    if y.ndim != 1 or len(y) != count:
        raise CalibrationDataError(f"{what} have shape {y.shape}; expected one per sample, shape ({count},)")
    if num_classes is not None and count and (y.min() < 0 or y.max() >= num_classes):
        raise CalibrationDataError(f"{what} must lie in [0, {num_classes}) (the model's classes); "
                                   f"got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def with_node_outputs(mod: tvm.IRModule, graph: Graph) -> tvm.IRModule:
    """``mod`` whose ``main`` returns the fp32 outputs of every node, in graph order.

    The node values are gathered by one more binding inside the dataflow block,
    ``outs = (v_1, ..., v_n)``, made its output.  The block stays a dataflow
    block, so ``FuseOps`` still merges each conv with its bias and activation;
    turning the function into plain bindings (``ToNonDataflow``) to return the
    values made every op its own kernel and doubled the calibration time of
    ResNet-18 (126 against 69 ms per image, the unfused bias adds and ReLUs
    alone 45 ms).  Node vars are the graph's own ``Var`` objects, so they are
    found by identity, never by name (imported modules reuse names).
    """
    func = mod["main"]
    block = func.body.blocks[0]
    outs = [func.params[0] if n.kind == "input" else n.var for n in graph.nodes.values()]
    ret = relax.TupleType([v.ty for v in outs])
    gathered = relax.Var("node_outputs", ret)
    new_block = relax.DataflowBlock(list(block.bindings) + [relax.VarBinding(gathered, relax.Tuple(outs))])
    new = relax.Function(func.params, relax.SeqExpr([new_block, *func.body.blocks[1:]], gathered), ret, attrs=func.attrs)
    return relax.transform.Normalize()(tvm.IRModule({"main": new}))


def _batches(data: np.ndarray, batch: int, input_shape: tuple):
    fixed_batch = input_shape[0]
    step = fixed_batch or batch
    usable = len(data) - (len(data) % step if fixed_batch else 0)
    if usable == 0:
        raise CalibrationDataError(f"calibration needs at least {step} samples (the model's fixed batch size)")
    for i in range(0, usable, step):
        yield data[i : i + step]


def calibrate(model: FloatModel, data, config: QuantConfig = QuantConfig(), *, show_progress: bool = False,
              keep_outputs: int = 0):
    """Collect :class:`TensorStats` of every node output by running ``model`` on TVM.

    Parameters
    ----------
    model : FloatModel
        Canonical fp32 model.
    data : array_like
        Calibration inputs, shape ``(N, *input_shape[1:])``, float.
    config : QuantConfig
        Uses ``calib_batch_size``.
    show_progress : bool
        Draw a progress bar on stderr.
    keep_outputs : int
        Also keep the model's (first) output on the first ``keep_outputs``
        samples, the fp32 reference of GWQ's output sensitivity
        (:func:`.sensitivity.tensor_sensitivity`), which then need not run the
        float model over them a second time.

    Returns
    -------
    dict of str to TensorStats
        With ``keep_outputs``: ``(stats, outputs)``, ``outputs`` a float32 array
        of ``min(keep_outputs, samples calibrated)`` rows.
    """
    data = check_batch(data, model.input_shape)
    graph = extract_graph(model.mod)
    ex = compile_float(with_node_outputs(model.mod, graph), host_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    names = list(graph.nodes)
    first_output = names.index(graph.outputs[0])
    stats = {n: TensorStats() for n in names}
    kept, n_kept = [], 0
    batches = list(_batches(data, config.calib_batch_size, model.input_shape))
    for batch in progress(batches, desc="calibrate", enabled=show_progress):
        outs = vm["main"](tvm.runtime.tensor(batch))
        for k, (name, out) in enumerate(zip(names, outs)):
            arr = out.numpy()
            if not np.isfinite(arr).all():
                raise CalibrationDataError(f"the float model produced NaN/Inf at {name} on the calibration data")
            stats[name].observe(arr)
            if k == first_output and n_kept < keep_outputs:
                kept.append(arr[: keep_outputs - n_kept])
                n_kept += len(kept[-1])
    stats = {name: s.finalize() for name, s in stats.items()}
    if keep_outputs:
        return stats, np.concatenate(kept)
    return stats
