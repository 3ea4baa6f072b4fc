"""Import ONNX files and torch modules into canonical fp32 Relax.

The canonical form, which :mod:`gwq_tvm.graph` reads, has one function
``main`` taking one NCHW float32 tensor, parameters bound as constants, batch
norm folded into the preceding convolution, and constant subexpressions
folded (so a conv bias is ``add(conv2d(x, W), const)`` and a dense layer is
``matmul(x, const)``).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax

from ..errors import ModelError, last_line
from .converters import override_converter
from .fold_independent import FoldDataIndependent
from .onnx_origins import binding_origins, capture_importer_tables
from .onnx_pad import onnx_pad_as_relax_pad
from .onnx_resize import onnx_resize_symbolic_batch
from .onnx_prep import drop_inference_noops, fold_shape_subgraphs, max_min_to_clips, sum_to_adds, upgrade_opset


@dataclass(frozen=True)
class FloatModel:
    """A canonical fp32 Relax module and what gwq-tvm needs to know about its input.

    Attributes
    ----------
    mod : tvm.IRModule
        Canonical module with a single-input ``main``.
    input_name : str
        Name of ``main``'s parameter.
    input_shape : tuple of int or None
        Input shape; ``None`` marks a dynamic (batch) dimension.
    source : str
        Where the model came from (a path or ``"torch"``).
    origins : dict
        ``{Var: (op_type, node_name)}``: the ONNX node each binding of ``mod``'s
        ``main`` was imported from (:mod:`.onnx_origins`; empty for torch).
    """

    mod: tvm.IRModule
    input_name: str
    input_shape: tuple
    source: str
    origins: dict = field(default_factory=dict, compare=False, repr=False)


def canonicalize() -> tvm.transform.Pass:
    """The passes that bring an imported module to gwq-tvm's canonical fp32 form."""
    return tvm.transform.Sequential(
        [
            relax.transform.FoldBatchnormToConv2D(),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.FoldConstant(),
            FoldDataIndependent(),  # what FoldConstant leaves: chains starting from prim values (torch's arange)
            relax.transform.FoldConstant(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
        ],
        name="GwqCanonicalize",
    )


def _finish(mod: tvm.IRModule, source: str, origins: dict | None = None) -> FloatModel:
    mod = canonicalize()(mod)
    func = mod["main"]
    if len(func.params) != 1:
        raise ModelError(f"{source}: gwq-tvm quantizes single-input models; this one has {len(func.params)} inputs")
    param = func.params[0]
    ty = param.ty
    if not isinstance(ty, relax.TensorType) or ty.dtype != "float32" or ty.ndim < 2:
        raise ModelError(f"{source}: the model input must be a float32 tensor; got {ty}")
    _check_ops(func, source, origins or {})
    shape = tuple(int(v) if isinstance(v, tvm.tirx.IntImm) else None for v in ty.shape.values)
    if shape[0] is None:
        mod, shape = _check_dynamic_batch(mod, ty.shape.values[0], shape, source)
    return FloatModel(mod, param.name, shape, source, origins or {})


#: ops TVM 0.27 lowers for a CPU only through its library dispatch (``DispatchSortScan``), not ``LegalizeOps``
_DISPATCH_ONLY = ("relax.sort", "relax.argsort", "relax.topk")


def _check_ops(func: relax.Function, source: str, origins: dict) -> None:
    """Refuse ops no backend of gwq-tvm can run, naming them as the user wrote them (ONNX op type and node).

    * an op returning several tensors, but ``Split`` (whose parts the slice kind takes): TopK, a
      ``torch.sort``; a float island carries one tensor per op;
    * the sort family (:data:`_DISPATCH_ONLY`), which TVM's ``LegalizeOps`` does not lower.
    """
    for block in func.body.blocks:
        for b in block.bindings:
            value = b.value
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
                continue
            name = value.op.name
            several = isinstance(b.var.ty, relax.TupleType) and name != "relax.split"
            if several or name in _DISPATCH_ONLY:
                op_type, node = origins.get(b.var, (name, None))
                what = f"{op_type} node {node!r}" if node else op_type
                why = "returns several tensors" if several else "needs a sort, which gwq-tvm's CPU programs do not lower"
                raise ModelError(f"{source}: {what} {why}; gwq-tvm cannot compile it (remove it from the exported "
                                 "model and apply it to the program's output)")


#: the batch size a dynamic-batch model is checked at (any size other than 1 would do)
CHECK_BATCH = 2


def _bind_batch(mod: tvm.IRModule, batch_var, size: int):
    """``mod`` with its batch variable bound to ``size`` (Relax re-infers every shape: a mismatch raises).

    A failed bind leaves a half-built BlockBuilder whose destructor warns on the
    native stderr: it is collected here, with that stderr silenced."""
    with _native_stderr_silenced():
        try:
            return relax.transform.BindSymbolicVars({batch_var: size})(mod)
        except Exception:
            gc.collect()
            raise


def _check_dynamic_batch(mod, batch_var, shape, source):
    """A model declaring a dynamic batch must hold its shapes at other batch sizes than 1.

    Real exports often do not: a ``Reshape`` to ``[1, -1]``-style constants or a
    conv whose kernel is an activation tie the shapes to one batch size.  Such
    a model is checked at batch :data:`CHECK_BATCH`; if it fails there and holds
    at batch 1, it is compiled for batch 1 (data then runs one sample at a
    time) with one warning saying why; if it holds at neither, it is refused.
    """
    try:
        _bind_batch(mod, batch_var, CHECK_BATCH)
        return mod, shape
    except Exception as err:  # noqa: BLE001 - TVM's shape inference raises ValueError/TVMError/InternalError
        reason = last_line(err)
    try:
        fixed = _bind_batch(mod, batch_var, 1)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{source}: the model declares a dynamic batch, but its shapes hold neither at batch "
                         f"{CHECK_BATCH} ({reason}) nor at batch 1 ({last_line(err)})") from None
    warnings.warn(f"{source}: the model declares a dynamic batch, but its shapes hold only at batch 1 (at batch "
                  f"{CHECK_BATCH}: {reason}); compiling it for batch 1", stacklevel=3)
    return fixed, (1, *shape[1:])


@contextlib.contextmanager
def _onnx_clip_as_relax_clip():
    """Import ONNX ``Clip`` with constant bounds as ``relax.clip`` (a TVM 0.27 frontend workaround).

    TVM 0.27's ONNX ``Clip`` converter emits ``topi.maximum``/``topi.minimum``
    through ``emit_te``: opaque ``call_tir`` kernels with the bounds baked into
    TIR, which no Relax pass can read.  ReLU6 in every exported MobileNet (and
    the ReLU6 of QAT exports) would then stay float.  For the duration of one
    import this swaps in a converter that emits ``relax.clip`` when both bounds
    are constants, deferring to TVM's converter otherwise.  Tested by
    ``tests/test_frontend.py::test_onnx_clip_imports_as_relax_clip``.
    """
    from tvm.relax.frontend.onnx import onnx_frontend as of

    def bound(expr, default):
        if expr is None:
            return default
        if isinstance(expr, tvm.ir.GenericConst) and expr.value.numpy().size == 1:
            return float(expr.value.numpy().reshape(()))
        return None

    class Clip(of.Clip):
        @classmethod
        def _clip(cls, x, lo, hi):
            return relax.op.clip(x, relax.prim_value(lo), relax.prim_value(hi))

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return cls._clip(inputs[0], float(attr.get("min", -float("inf"))), float(attr.get("max", float("inf"))))

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            lo = bound(inputs[1] if len(inputs) > 1 else None, -float("inf"))
            hi = bound(inputs[2] if len(inputs) > 2 else None, float("inf"))
            if lo is None or hi is None:
                return super()._impl_v13(bb, inputs, attr, params)
            return cls._clip(inputs[0], lo, hi)

        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            return cls._impl_v13(bb, inputs, attr, params)

    with override_converter("Clip", Clip):
        yield


def _onnx_unsupported_ops(model) -> list[str]:
    from tvm.relax.frontend.onnx import onnx_frontend

    known = onnx_frontend._get_convert_map()
    unknown: dict = {}
    for n in model.graph.node:
        if n.op_type not in known:
            unknown.setdefault(n.op_type, []).append(n.name or (n.output[0] if n.output else "?"))
    return [f"{op} (node {', '.join(repr(v) for v in names[:3])}{', ...' if len(names) > 3 else ''})"
            for op, names in sorted(unknown.items())]


#: The oldest ONNX opset accepted (TVM's ONNX frontend implements its converters from opset 7 up).
MIN_OPSET = 7
#: Initializers with an element larger than this in magnitude are refused (no trained network has them).
MAX_ABS_WEIGHT = 1e30
_STANDARD_DOMAINS = ("", "ai.onnx")
#: float attributes that may be infinite (an open clip bound; -inf padding before a max pool)
_INFINITE_OK = {"Clip": ("min", "max"), "Pad": ("value",)}
#: ops whose second input is a weight (an empty one is a damaged model, not an empty layer)
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Sliding-window ops and their attributes that must be >= 1 (the ONNX spec's; TVM's importer takes a negative
#: stride silently and fails later, inside legalization, on a negative output shape)
_POSITIVE_ATTRS = {op: ("strides", "dilations", "kernel_shape", "group")
                   for op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool")}


def check_onnx(model, source: str) -> None:
    """Refuse what TVM's importer would take silently or crash on: foreign domains and opsets, bad weights.

    Raises
    ------
    ModelError
        Naming what is wrong, the first of:

        * an opset outside ``[MIN_OPSET, newest the installed onnx knows]``;
        * a node of a custom/unknown domain;
        * a float attribute that is NaN or infinite (but a ``Clip`` bound or a
          ``Pad`` value);
        * a conv/pool stride, dilation, kernel size or group below 1;
        * an empty constant weight, or a ``kernel_shape`` its weight contradicts;
        * an initializer holding NaN/Inf or an element with ``|w| > MAX_ABS_WEIGHT``.
    """
    import math

    import numpy as np
    import onnx
    from onnx import numpy_helper

    newest = onnx.defs.onnx_opset_version()
    opsets = {o.domain: o.version for o in model.opset_import}
    version = next((opsets[d] for d in _STANDARD_DOMAINS if d in opsets), None)
    if version is None or not MIN_OPSET <= version <= newest:
        raise ModelError(f"{source}: ONNX opset {version} is not supported; gwq-tvm reads opsets {MIN_OPSET} to {newest} "
                         "(convert the model with onnx.version_converter)")
    weights = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.domain not in _STANDARD_DOMAINS:
            raise ModelError(f"{source}: node {node.name or node.op_type!r} is {node.domain}::{node.op_type}, an op of "
                             f"a custom domain; gwq-tvm imports standard ONNX ops (domain '') only")
        where = f"{source}: {node.op_type} node {node.name or node.output[0]!r}"
        for attr in node.attribute:
            floats = [attr.f] if attr.type == onnx.AttributeProto.FLOAT else (
                list(attr.floats) if attr.type == onnx.AttributeProto.FLOATS else [])
            if any(math.isnan(v) or (math.isinf(v) and attr.name not in _INFINITE_OK.get(node.op_type, ()))
                   for v in floats):
                raise ModelError(f"{where} has {attr.name} {floats[0] if len(floats) == 1 else floats}; "
                                 "the model is damaged")
            if attr.name in _POSITIVE_ATTRS.get(node.op_type, ()):
                values = list(attr.ints) if attr.type == onnx.AttributeProto.INTS else [attr.i]
                if any(v < 1 for v in values):
                    raise ModelError(f"{where} has {attr.name} {values}; every value must be >= 1")
        init = weights.get(node.input[1]) if node.op_type in _WEIGHTED_OPS and len(node.input) > 1 else None
        if init is None:
            continue
        if 0 in init.dims:
            raise ModelError(f"{where} has an empty weight {init.name!r} (shape {list(init.dims)})")
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
        if node.op_type in ("Conv", "ConvTranspose") and kernel is not None and kernel != list(init.dims[2:]):
            raise ModelError(f"{where} has kernel_shape {kernel}, but its weight {init.name!r} is {list(init.dims)}")
    for init in model.graph.initializer:
        try:
            w = numpy_helper.to_array(init)
        except Exception as err:  # noqa: BLE001 - raw data of the wrong size, external data missing, ...
            raise ModelError(f"{source}: initializer {init.name!r} is unreadable ({type(err).__name__})") from None
        check_weight_values(w, f"{source}: initializer {init.name!r}")


def check_weight_values(w, what: str) -> None:
    """Refuse a float weight ``w`` (numpy) holding NaN/Inf or an element with ``|w| > MAX_ABS_WEIGHT``.

    ``what`` names it in the message (``"model.onnx: initializer 'w'"``).  Integer and empty arrays pass.
    """
    import numpy as np

    if w.dtype.kind not in "fc" or w.size == 0:
        return
    if not np.isfinite(w).all():
        raise ModelError(f"{what} holds {int((~np.isfinite(w)).sum())} NaN/Inf values")
    if np.abs(w).max() > MAX_ABS_WEIGHT:
        raise ModelError(f"{what} holds a weight of magnitude {float(np.abs(w).max()):.3g} (> {MAX_ABS_WEIGHT:g}); "
                         "the model is damaged")


def _show(shape) -> str:
    return ",".join("N" if d is None else str(d) for d in shape)


def _set_input_shape(model, graph_input, input_shape, source: str) -> None:
    """Write the input's shape into ``model`` (a copy): ``input_shape`` over the model's own, checked.

    TVM 0.27's ONNX importer segfaults when ``shape_dict`` holds ``None`` for a
    dynamic dimension (``--input-shape N,1,28,28``), so the shape is set in the
    proto instead and TVM is never given a ``shape_dict``: a ``None`` keeps the
    model's symbolic dimension (or names one ``N``).  Tested by
    ``tests/test_bad_inputs.py::test_input_shape_with_dynamic_batch_compiles``.

    Raises
    ------
    ModelError
        If the rank differs, a static dimension is contradicted, or a
        dimension other than the batch stays dynamic.
    """
    dims = graph_input.type.tensor_type.shape.dim
    own = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if input_shape is not None:
        shape = [None if d is None else int(d) for d in input_shape]
        if not graph_input.type.tensor_type.HasField("shape"):
            own = [None] * len(shape)
        if len(shape) != len(own):
            raise ModelError(f"{source}: --input-shape {_show(shape)} has rank {len(shape)}; the model input "
                             f"{graph_input.name!r} has rank {len(own)} ({_show(own)})")
        if any(d is not None and d < 1 for d in shape):
            raise ModelError(f"{source}: --input-shape {_show(shape)}: every dimension must be >= 1 (or N)")
        for i, (mine, given) in enumerate(zip(own, shape)):
            if i > 0 and mine is not None and given is not None and mine != given:
                raise ModelError(f"{source}: --input-shape {_show(shape)} contradicts the model input {_show(own)} "
                                 f"at dimension {i}")
        for i, given in enumerate(shape):
            if given is not None:
                dims[i].Clear()
                dims[i].dim_value = given
            elif own[i] is None and not dims[i].dim_param:
                dims[i].dim_param = "N" if i == 0 else f"d{i}"
        own = [given if given is not None else mine for mine, given in zip(own, shape)]
    elif not graph_input.type.tensor_type.HasField("shape"):
        raise ModelError(f"{source}: the model input {graph_input.name!r} has no shape; give it with --input-shape "
                         "(e.g. N,3,224,224)")
    dynamic = [i for i, d in enumerate(own) if d is None and i > 0]
    if dynamic:
        names = ", ".join(dims[i].dim_param or f"dim {i}" for i in dynamic)
        shown = ",".join(str(d) if d is not None else (dims[i].dim_param or "?") for i, d in enumerate(own))
        raise ModelError(f"{source}: the model input {graph_input.name!r} ({shown}) has dynamic dimensions "
                         f"({names}); fix them with --input-shape, e.g. "
                         f"{_show([None] + [d or 224 for d in own[1:]])}")


def from_onnx(model, input_shape=None) -> FloatModel:
    """Import an ONNX model (path or ``onnx.ModelProto``).

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
    input_shape : sequence of int, optional
        Override the input shape (use it for models without static shapes).

    Raises
    ------
    ModelError
        If the file is missing, not ONNX, fails ONNX's checker, uses ops the
        TVM ONNX frontend does not know, or has more than one input.
    """
    import onnx

    source = str(model) if isinstance(model, (str, os.PathLike)) else "<onnx model>"
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        try:
            model = onnx.load(str(path))
        except Exception as err:  # protobuf raises several types
            raise ModelError(f"{path}: not a valid ONNX file ({type(err).__name__}: {err})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{source}: malformed ONNX model: {first}") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{source}: gwq-tvm quantizes single-input models; this one has {len(inputs)} inputs")
    if not model.graph.output:
        raise ModelError(f"{source}: the model declares no graph outputs; there is nothing to compute")
    check_onnx(model, source)
    unknown = _onnx_unsupported_ops(model)
    if unknown:
        raise ModelError(f"{source}: ONNX ops not supported by the TVM ONNX frontend: {', '.join(unknown)}")
    copy = type(model)()
    copy.CopyFrom(model)
    model = copy
    _set_input_shape(model, next(i for i in model.graph.input if i.name == inputs[0].name), input_shape, source)
    model = upgrade_opset(model, source)
    drop_inference_noops(model, source)
    sum_to_adds(model)
    max_min_to_clips(model)
    fold_shape_subgraphs(model)
    tables: dict = {"graph_proto": model.graph}
    failure = None
    with _native_stderr_silenced():
        try:
            with contextlib.redirect_stdout(io.StringIO()), _onnx_clip_as_relax_clip(), onnx_pad_as_relax_pad(), \
                    onnx_resize_symbolic_batch(), capture_importer_tables(tables):
                mod = relax.frontend.onnx.from_onnx(model, keep_params_in_input=False)
        except Exception as err:
            failure = f"{source}: TVM could not import the ONNX model{_failed_node(err, tables)}: {last_line(err)}"
        if failure is not None:
            gc.collect()  # the failed import's BlockBuilder, freed here, warns on stderr about its open blocks
    if failure is not None:
        raise ModelError(failure)
    return _finish(mod, source, binding_origins(mod, tables))


def _failed_node(err: Exception, tables: dict) -> str:
    """`` at <op> node '<name>'``: the ONNX node a failed import stopped at (named in TVM's message, else the
    node being converted)."""
    graph = tables.get("graph_proto")
    message = str(err)
    for node in getattr(graph, "node", ()):
        if node.name and f"Node {node.name} " in message:
            return f" at {node.op_type} node {node.name!r}"
    op_type, name = tables.get("current", (None, None))
    return f" at {op_type} node {name!r}" if op_type else ""


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 pointed at /dev/null for the block: TVM's C++ logging writes warnings there directly
    (a failed import's half-built BlockBuilder), which would break the one-line error."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreters): nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def from_torch(module, example_input, *, dynamic_batch: bool = True) -> FloatModel:
    """Import a ``torch.nn.Module`` through ``torch.export`` (in eval mode).

    Parameters
    ----------
    module : torch.nn.Module
    example_input : torch.Tensor
        One example input (its shape fixes every dimension but the batch).
    dynamic_batch : bool
        Keep the batch dimension symbolic.
    """
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    module, restore_modes = _torch_import_copy(module)
    if isinstance(example_input, torch.Tensor) and example_input.is_floating_point():
        example_input = example_input.float()
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},) if dynamic_batch else None
    try:
        with torch.no_grad():
            exported = torch.export.export(module, (example_input,), dynamic_shapes=dynamic)
        _check_exported(exported)
        mod = from_exported_program(exported, keep_params_as_input=False)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"torch module could not be exported/imported: {str(err).strip().splitlines()[0]}") from None
    finally:
        restore_modes()
    return _finish(mod, "torch")


def _check_exported(exported) -> None:
    """Refuse what TVM 0.27's ``from_exported_program`` would import as a different function.

    ``aten.avg_pool2d`` with ``divisor_override`` (its 7th argument) imports as a
    plain ``avg_pool2d``, silently dividing by the window size instead (TVM 0.27
    bug: the converter drops the argument).
    """
    import torch

    for node in exported.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.avg_pool2d.default:
            divisor = node.args[6] if len(node.args) > 6 else node.kwargs.get("divisor_override")
            if divisor is not None:
                raise ModelError(f"torch: avg_pool2d with divisor_override={divisor} ({node.name}) cannot be imported: "
                                 "TVM 0.27 drops divisor_override and would divide by the window size")


def _torch_import_copy(module):
    """``(copy, restore)``: an eval-mode float32 copy of ``module``, its parameters and buffers checked
    (:func:`check_weight_values`), and what to call once it is exported.

    The caller's module keeps its training mode and dtypes: importing must not change a model that is still
    being trained.  A float16/bfloat16/float64 module is imported as float32 (what the fp32 program
    computes in).  A module that cannot be deep-copied is imported in place (``restore`` puts its modes
    back) and must already be float32.
    """
    import copy

    import torch

    try:
        imported = copy.deepcopy(module)
    except Exception:  # noqa: BLE001 - a module holding an uncopyable attribute (a lock, a file)
        imported = None
    source = module if imported is None else imported
    floating = [(n, t) for n, t in (*source.named_parameters(), *source.named_buffers()) if t.is_floating_point()]
    for name, t in floating:
        check_weight_values(t.detach().float().cpu().numpy(), f"torch: parameter {name!r}")
    if imported is None:
        other = next((f"{n} ({t.dtype})" for n, t in floating if t.dtype != torch.float32), None)
        if other is not None:
            raise ModelError(f"torch module holds non-float32 parameter {other} and cannot be copied to convert it; "
                             "call .float() on it first")
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        return module, lambda: [m.train(mode) for m, mode in modes]
    return imported.float().eval(), lambda: None


def load_model(model, input_shape=None, example_input=None) -> FloatModel:
    """Import ``model``: an ONNX path/proto or a ``torch.nn.Module`` (needs ``example_input``)."""
    if isinstance(model, FloatModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        if str(model).endswith(".onnx") or Path(model).is_file():
            return from_onnx(model, input_shape)
        raise ModelError(f"model file not found: {model}")
    if type(model).__name__ == "ModelProto":
        return from_onnx(model, input_shape)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is an optional extra
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        if example_input is None:
            # batch 2, not 1: torch.export specializes a dynamic dimension seen as 1
            shape = tuple(d or 2 for d in (input_shape or ()))
            if not shape:
                raise ModelError("a torch model needs example_input or input_shape")
            example_input = torch.zeros(shape)
        return from_torch(model, example_input)
    raise ModelError(f"cannot import a model of type {type(model).__name__}; give an .onnx path or a torch.nn.Module")
