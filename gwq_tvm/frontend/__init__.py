"""Import ONNX files and torch modules into canonical fp32 Relax.

The canonical form, which :mod:`gwq_tvm.graph` reads, has one function
``main`` taking one NCHW float32 tensor, parameters bound as constants, batch
norm folded into the preceding convolution, and constant subexpressions
folded (so a conv bias is ``add(conv2d(x, W), const)`` and a dense layer is
``matmul(x, const)``).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax

from ..errors import ModelError


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
    """

    mod: tvm.IRModule
    input_name: str
    input_shape: tuple
    source: str


def canonicalize() -> tvm.transform.Pass:
    """The passes that bring an imported module to gwq-tvm's canonical fp32 form."""
    return tvm.transform.Sequential(
        [
            relax.transform.FoldBatchnormToConv2D(),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.FoldConstant(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
        ],
        name="GwqCanonicalize",
    )


def _finish(mod: tvm.IRModule, source: str) -> FloatModel:
    mod = canonicalize()(mod)
    func = mod["main"]
    if len(func.params) != 1:
        raise ModelError(f"{source}: gwq-tvm quantizes single-input models; this one has {len(func.params)} inputs")
    param = func.params[0]
    ty = param.ty
    if not isinstance(ty, relax.TensorType) or ty.dtype != "float32" or ty.ndim < 2:
        raise ModelError(f"{source}: the model input must be a float32 tensor; got {ty}")
    shape = tuple(int(v) if isinstance(v, tvm.tirx.IntImm) else None for v in ty.shape.values)
    return FloatModel(mod, param.name, shape, source)


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

    original = of._get_convert_map

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

    def convert_map():
        table = original()
        table["Clip"] = Clip
        return table

    of._get_convert_map = convert_map
    try:
        yield
    finally:
        of._get_convert_map = original


def _onnx_unsupported_ops(model) -> list[str]:
    from tvm.relax.frontend.onnx import onnx_frontend

    known = onnx_frontend._get_convert_map()
    return sorted({n.op_type for n in model.graph.node if n.op_type not in known})


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
    unknown = _onnx_unsupported_ops(model)
    if unknown:
        raise ModelError(f"{source}: ONNX ops not supported by the TVM ONNX frontend: {', '.join(unknown)}")
    shape_dict = {inputs[0].name: list(input_shape)} if input_shape is not None else None
    try:
        with contextlib.redirect_stdout(io.StringIO()), _onnx_clip_as_relax_clip():
            mod = relax.frontend.onnx.from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)
    except Exception as err:
        raise ModelError(f"{source}: TVM could not import the ONNX model: {str(err).strip().splitlines()[-1]}") from None
    return _finish(mod, source)


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

    module = module.eval()
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},) if dynamic_batch else None
    try:
        with torch.no_grad():
            exported = torch.export.export(module, (example_input,), dynamic_shapes=dynamic)
        mod = from_exported_program(exported, keep_params_as_input=False)
    except Exception as err:
        raise ModelError(f"torch module could not be exported/imported: {str(err).strip().splitlines()[0]}") from None
    return _finish(mod, "torch")


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
