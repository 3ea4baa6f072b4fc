"""The public Python API: quantize a float model into a compiled integer-only program.

Each stage is usable alone (``load_model`` -> ``calibrate`` -> ``build_plan`` ->
``RealizeIntegerProgram`` -> ``tvm.compile``); :func:`quantize` and
:func:`build` chain them.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .calibration import calibrate, check_batch, check_labels
from .calibration.sensitivity import SENSITIVITY_SAMPLES, tensor_sensitivity
from .config import QuantConfig, ScaleMode
from .errors import ConfigError, IntegerOnlyError, ModelError, PlanError, UnsupportedOpError, last_line
from .frontend import FloatModel, load_model
from .frontend.onnx_origins import describe_float_ops
from .extract import extract_graph
from .graph import Graph
from .passes.check import IntegerOnlyReport, check_integer_only
from .passes.realize import RealizeIntegerProgram
from .plan import strategies
from .plan.planner import apply_end_bits
from .plan.program import sfc_sites, sfc_summary
from .plan.quantplan import QuantPlan
from .plan.validate import check_plan
from .runtime import check_library, host_target, run_batched


@dataclass(frozen=True)
class QuantizedModel:
    """A realized integer program and everything known about it.

    Attributes
    ----------
    float_model : FloatModel
    graph : Graph
    plan : QuantPlan
    mod : tvm.IRModule
        The realized integer-only module (not yet compiled).
    integer_only : IntegerOnlyReport
    stats : dict of str to TensorStats, optional
        The calibration statistics (``None`` when quantized from a given plan).
    sensitivity : dict of str to float, optional
        GWQ loss-aware tensor sensitivities used by the planner.
    """

    float_model: FloatModel
    graph: Graph
    plan: QuantPlan
    mod: tvm.IRModule
    integer_only: IntegerOnlyReport
    stats: dict | None = None
    sensitivity: dict | None = None

    @property
    def sfc(self) -> dict:
        """SFC counts: sites and per-sample elements by multiply vs shift."""
        return sfc_summary(sfc_sites(self.graph, self.plan))

    def report(self) -> dict:
        """The SFC report (:func:`gwq_tvm.report.sfc_report`): sites, groups, added errors."""
        from .report import sfc_report

        return sfc_report(self)

    @property
    def float_ops(self) -> list[str]:
        """Ops kept in float (the graph's ``float`` nodes)."""
        return [n.attrs["op"] for n in self.graph.float_nodes()]


def quantize(model, calib_data=None, config: QuantConfig = QuantConfig(), *, plan: QuantPlan | None = None,
             input_shape=None, show_progress: bool = False, strict: bool = False) -> QuantizedModel:
    """Import, calibrate, plan and realize ``model`` as an integer-only Relax program.

    Parameters
    ----------
    model : str, os.PathLike, onnx.ModelProto, torch.nn.Module or FloatModel
    calib_data : array_like, optional
        Calibration inputs (required unless ``plan`` is given).
    config : QuantConfig
    plan : QuantPlan, optional
        Use this plan instead of calibrating (it must match the model).
    input_shape : tuple, optional
        Input shape for models without one (torch modules need it or an ONNX file with a dynamic shape).
    strict : bool
        Refuse ops no integer kind takes (as ``config.allow_float_fallback=False``) instead of
        keeping them in float with a warning naming them (the ONNX op types and node names).

    Raises
    ------
    UnsupportedOpError
        If the model holds ops gwq-tvm cannot quantize and ``strict`` (or ``not config.allow_float_fallback``).
    IntegerOnlyError
        If a model whose ops are all supported does not realize integer-only (a bug).
    """
    config, plan = _api_config(config), _api_plan(plan)
    fm = load_model(model, input_shape=input_shape)
    graph = extract_graph(fm.mod)
    config = apply_end_bits(graph, config)
    floats = graph.float_nodes()
    if floats:
        msg = f"ops kept in float (no integer kind takes them): {describe_float_ops(floats, fm.origins)}"
        if strict or not config.allow_float_fallback:
            raise UnsupportedOpError(msg + " (--strict / strict=True refuses them)")
        warnings.warn(msg, stacklevel=2)
    stats = sensitivity = None
    if plan is None:
        if calib_data is None:
            raise PlanError("quantize needs calibration data or a QuantPlan")
        images = check_batch(calib_data, fm.input_shape)
        if config.mode is ScaleMode.GWQ and config.loss_aware:
            stats, reference = calibrate(fm, images, config, show_progress=show_progress, keep_outputs=SENSITIVITY_SAMPLES)
            sensitivity = tensor_sensitivity(fm, graph, stats, config, images, reference=reference)
        else:
            stats = calibrate(fm, images, config, show_progress=show_progress)
        ctx = strategies.PlanContext(graph, stats, config, images, fm.input_shape, sensitivity, model=fm)
        search = "select" if config.mode is ScaleMode.GWQ and config.min_shift_share is not None else "grouping"
        if config.mixed_precision:
            search = "mixed_precision"
        plan = strategies.run(search, ctx)
        if config.block_search:
            plan = strategies.run("subl_search", dataclasses.replace(ctx, plan=plan))
        if config.refine_steps:
            plan = strategies.run("refine", dataclasses.replace(ctx, plan=plan))
    else:
        if plan.fingerprint != graph.fingerprint:
            raise PlanError(f"the QuantPlan was made for graph {plan.fingerprint}, this model is {graph.fingerprint}")
        check_plan(plan, graph)
    mod = RealizeIntegerProgram(plan)(fm.mod)
    report = check_integer_only(mod)
    if not report.ok and not floats:
        raise IntegerOnlyError(f"realized program is not integer-only: {report}")
    return QuantizedModel(fm, graph, plan, mod, report, stats, sensitivity)


def _api_config(config) -> QuantConfig:
    """``config`` as a :class:`QuantConfig`: one already, or a mapping of its fields (``{"mode": "gwq"}``)."""
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, dict):
        try:
            return QuantConfig(**config)
        except TypeError as err:  # an unknown field name
            raise ConfigError(f"config: {err}".replace("QuantConfig.__init__() ", "")) from None
    raise ConfigError(f"config must be a QuantConfig or a dict of its fields; got {type(config).__name__}")


def _api_plan(plan) -> QuantPlan | None:
    """``plan`` as a :class:`QuantPlan`: ``None``, one already, or the path of its JSON file."""
    if plan is None or isinstance(plan, QuantPlan):
        return plan
    if isinstance(plan, (str, os.PathLike)):
        return QuantPlan.load(plan)
    raise PlanError(f"plan must be a QuantPlan or the path of its JSON file; got {type(plan).__name__}")


def build(qmodel_or_mod, target=None, *, database=None, fast: bool = True) -> relax.VMExecutable:
    """Compile a realized module (or :class:`QuantizedModel`) for ``target`` (default: this CPU).

    Parameters
    ----------
    qmodel_or_mod : QuantizedModel or tvm.IRModule
    target : tvm.target.Target, str or dict, optional
        A target, or what ``--target`` takes (``"host"``, a preset such as ``"rpi4"``, TVM target JSON);
        default: this CPU.
    database : tvm.s_tir.meta_schedule.Database, optional
        MetaSchedule tuning records (:func:`gwq_tvm.schedules.tune.load_database`).
    fast : bool
        Use the packed kernels of the target's family (x86 VNNI, aarch64
        sdot or NEON) with default schedules where the target has one
        (:func:`gwq_tvm.schedules.compile_integer`); ``False`` is plain
        ``tvm.compile`` (naive loops).
    """
    from .schedules.build import compile_integer
    from .schedules.targets import resolve_target

    mod = qmodel_or_mod.mod if isinstance(qmodel_or_mod, QuantizedModel) else qmodel_or_mod
    if not isinstance(mod, tvm.IRModule):
        raise ConfigError(f"build takes a QuantizedModel (from quantize) or a realized IRModule; "
                          f"got {type(qmodel_or_mod).__name__}")
    target = resolve_target(target)
    if not fast:
        return tvm.compile(mod, target)
    return compile_integer(mod, target, database=database)


def export(executable, path, plan: QuantPlan | None = None, fcompile=None, reference=None) -> Path:
    """Write ``executable`` as a shared library, ``plan`` beside it as ``<stem>.plan.json``.

    An existing file at ``path`` is replaced only if it is a compiled module
    (:func:`gwq_tvm.atomic.check_replaceable_module`): a model or data file
    named as the output by mistake is refused, never overwritten.

    All files are written to temporaries and renamed into place together at
    the end (:func:`gwq_tvm.atomic.atomic_paths`): a failure or an interrupt
    leaves none of them half-written, and no new library beside an old plan.

    Parameters
    ----------
    reference : (numpy.ndarray, numpy.ndarray), optional
        Sample inputs and their reference outputs (:func:`reference_samples`),
        written as ``<stem>.ref.npz`` for ``gwq-tvm bench``.
    """
    from .atomic import atomic_paths, check_replaceable_module
    from .remote.bench import reference_path, save_reference

    path = Path(path)
    check_replaceable_module(path)
    dests = [path] + ([path.with_suffix(".plan.json")] if plan is not None else [])
    dests += [reference_path(path)] if reference is not None else []
    with atomic_paths(*dests) as temps:
        kwargs = {"fcompile": fcompile} if fcompile else {}
        try:
            executable.export_library(str(temps[0]), **kwargs)
        except Exception as err:  # the linker's whole command line would bury the one line that matters
            raise ModelError(f"linking {path.name} failed: {last_line(err)}") from None
        if plan is not None:
            plan.save(temps[1])
        if reference is not None:
            save_reference(temps[-1], *reference)
    return path



def load_executable(path) -> relax.VirtualMachine:
    """Load an exported ``.so`` with plain TVM and return a CPU VirtualMachine.

    Raises
    ------
    ModelError
        If the file is not a whole shared library (:func:`gwq_tvm.runtime.check_library`)
        or not a TVM Relax executable.

    On an AMX CPU the process's tile-data permission is requested first
    (through :func:`gwq_tvm.runtime.host_target`), as a module built for the
    ``x86-amx`` family dies with SIGILL without it.
    """
    check_library(path)
    host_target()
    try:
        return relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    except Exception as err:  # noqa: BLE001 - dlopen/TVM errors: the file is not a module gwq-tvm wrote
        raise ModelError(f"{path}: not a TVM module gwq-tvm can run ({last_line(err)})") from None


def predict(vm: relax.VirtualMachine, data, input_shape, *, batch: int = 250, show_progress: bool = False) -> np.ndarray:
    """Run ``vm`` over ``data`` in batches (validated against ``input_shape``)."""
    data = check_batch(data, input_shape, what="input data")
    return run_batched(vm, data, batch, fixed_batch=input_shape[0], desc="run", show_progress=show_progress)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` (N x classes) against integer ``labels`` (validated by :func:`check_labels`)."""
    labels = check_labels(labels, len(logits), logits.shape[1])
    return float((logits.argmax(axis=1) == labels).mean())


def compile_float(model) -> relax.VirtualMachine:
    """The fp32 model (a path, proto, module or :class:`FloatModel`) compiled for this CPU."""
    fm = load_model(model)
    return relax.VirtualMachine(tvm.compile(fm.mod, host_target()), tvm.cpu())


def eval_against(module, model, data, labels=None, *, tracker: str | None = None, key: str | None = None,
                 batch: int = 250, timeout: float = 300.0, show_progress: bool = False):
    """Run the exported integer ``module`` and the float ``model`` on ``data``; compare them.

    The float model always runs here; the module runs here too, or on a board
    registered at ``tracker`` under ``key`` (:func:`gwq_tvm.remote.bench.predict_module`).

    Parameters
    ----------
    module : path
        A ``.so`` written by ``gwq-tvm compile`` (its ``.plan.json`` beside it, when present,
        must have been made for ``model``).
    model : path, onnx.ModelProto or FloatModel
        The float model the module was quantized from.
    data, labels : numpy.ndarray
        Inputs, and optionally their class labels.

    Returns
    -------
    Fidelity
        See :mod:`gwq_tvm.fidelity`.

    Raises
    ------
    PlanError
        If the module's plan was made for another model.
    """
    from .fidelity import fidelity
    from .remote.bench import predict_module

    module = Path(module)
    fm = load_model(model)
    plan_path = module.with_suffix(".plan.json")
    shape = fm.input_shape
    if plan_path.is_file():
        plan = QuantPlan.load(plan_path)
        fingerprint = extract_graph(fm.mod).fingerprint
        if plan.fingerprint != fingerprint:
            raise PlanError(f"{module.name} was compiled for graph {plan.fingerprint}, {fm.source} is graph {fingerprint}")
        shape = plan.input_shape or shape
    data = check_batch(data, shape, what="evaluation data")
    if tracker is None:
        logits = predict(load_executable(module), data, shape, batch=batch, show_progress=show_progress)
    else:
        logits = predict_module(module, data, tracker=tracker, key=key, batch=batch, timeout=timeout)
    ref = predict(compile_float(fm), data, fm.input_shape, batch=batch, show_progress=show_progress)
    return fidelity(ref, logits, labels)


REFERENCE_SAMPLES = 4
"""Sample inputs stored beside an exported module when its batch size is dynamic."""


def reference_samples(qmodel: QuantizedModel, data=None, input_shape=None) -> tuple[np.ndarray, np.ndarray]:
    """Sample inputs for ``qmodel`` and the numpy reference's outputs for them (see :func:`write_reference`)."""
    from .reference import run_reference

    shape = tuple(input_shape or qmodel.plan.input_shape or qmodel.float_model.input_shape)
    batch = shape[0] if isinstance(shape[0], int) else REFERENCE_SAMPLES
    if data is not None and len(data) > 0:
        x = np.asarray(data, np.float32)
        x = np.concatenate([x] * -(-batch // len(x)))[:batch]
    else:
        x = np.random.default_rng(0).standard_normal((batch,) + tuple(shape[1:])).astype(np.float32)
    ref = run_reference(qmodel.mod, x)
    # a model with several outputs: 'bench' checks the first, the one 'eval' scores (runtime.run_batched)
    return x, ref[0] if isinstance(ref, (list, tuple)) else ref


def write_reference(module_path, qmodel: QuantizedModel, data=None, input_shape=None) -> Path:
    """Store sample inputs and the numpy reference's outputs beside ``module_path`` (``<stem>.ref.npz``).

    ``gwq-tvm bench`` checks a module against this file wherever it runs (on
    a board through RPC, or here), so a cross-compiled module can be proven
    bit-exact without the model at hand.

    Parameters
    ----------
    module_path : path
        The exported ``.so``.
    qmodel : QuantizedModel
        Its realized program (the reference interprets ``qmodel.mod``).
    data : array_like, optional
        Inputs to take the samples from (e.g. the calibration set); seeded
        normal noise of the input shape when ``None``.
    input_shape : tuple, optional
        The module's input shape (a static batch dimension sets the number of
        samples; default ``qmodel.plan.input_shape``).
    """
    from .remote.bench import write_reference as _write

    return _write(module_path, *reference_samples(qmodel, data, input_shape))
