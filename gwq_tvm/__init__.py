"""gwq-tvm: group-wise integer-only quantization of CNNs, compiled with TVM.

Public API::

    import gwq_tvm
    q = gwq_tvm.quantize("model.onnx", calib_images, gwq_tvm.QuantConfig(act_bits=8))
    ex = gwq_tvm.build(q)                      # tvm.compile of the integer program
    gwq_tvm.export(ex, "model.so", q.plan)     # .so + model.plan.json

The names below are imported on first use (PEP 562), so that the pure-numpy
parts (``gwq_tvm.graph``, ``gwq_tvm.stats``, ``gwq_tvm.plan``,
``gwq_tvm.kinds``) import without TVM, which imports torch when it is
installed.
"""

import importlib

from .version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "QuantizedModel": "api", "accuracy": "api", "build": "api", "export": "api", "load_executable": "api",
    "predict": "api", "quantize": "api",
    "calibrate": "calibration",
    "Calibration": "config", "QuantConfig": "config", "ScaleMode": "config", "WeightGranularity": "config",
    "GwqError": "errors",
    "FloatModel": "frontend", "canonicalize": "frontend", "from_onnx": "frontend", "from_torch": "frontend",
    "load_model": "frontend",
    "extract_graph": "extract",
    "PackInt8Layout": "passes", "RealizeIntegerProgram": "passes", "VerifyIntegerOnly": "passes",
    "check_integer_only": "passes",
    "build_plan": "plan.planner",
    "QuantPlan": "plan.quantplan",
    "run_reference": "reference",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    else:  # a submodule: gwq_tvm.data, gwq_tvm.api, ...
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS) + ["__version__"]
