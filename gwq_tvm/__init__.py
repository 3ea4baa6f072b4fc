"""gwq-tvm: group-wise integer-only quantization of CNNs, compiled with TVM.

Public API::

    import gwq_tvm
    q = gwq_tvm.quantize("model.onnx", calib_images, gwq_tvm.QuantConfig(act_bits=8))
    ex = gwq_tvm.build(q)                      # tvm.compile of the integer program
    gwq_tvm.export(ex, "model.so", q.plan)     # .so + model.plan.json
"""

from . import data
from .api import QuantizedModel, accuracy, build, export, load_executable, predict, quantize
from .calibrate import calibrate
from .config import Calibration, QuantConfig, ScaleMode, WeightGranularity
from .errors import GwqError
from .frontend import FloatModel, canonicalize, from_onnx, from_torch, load_model
from .graph import extract_graph
from .passes import PackInt8Layout, RealizeIntegerProgram, VerifyIntegerOnly, check_integer_only
from .plan.planner import build_plan
from .plan.quantplan import QuantPlan
from .reference import run_reference

__version__ = "0.1.0"

__all__ = [
    "Calibration", "FloatModel", "GwqError", "PackInt8Layout", "QuantConfig", "QuantPlan", "QuantizedModel", "RealizeIntegerProgram",
    "ScaleMode", "VerifyIntegerOnly", "WeightGranularity", "accuracy", "build", "build_plan", "calibrate",
    "canonicalize", "check_integer_only", "export", "extract_graph", "from_onnx", "from_torch", "load_executable",
    "load_model", "predict", "quantize", "run_reference",
]
