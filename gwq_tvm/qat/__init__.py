"""Quantization-aware training of GWQ plans in torch (requires the ``torch`` extra).

``QATModel(graph, plan)`` runs the integer program of a calibrated plan with
learnable group mantissas, per-tensor exponents and power-of-two weight
scales, and GDRQ's filter-group steps and Scale-Clip (seed 002) when the plan
has ``G x 1`` weight blocks and Scale-Clip is asked for; :func:`train`
fine-tunes it with checkpoint/resume; :func:`export_qat` writes the ONNX
model and QuantPlan that ``gwq-tvm compile`` consumes.
"""

from .export import export_qat, graph_to_onnx
from .model import QATModel, clip_options, float_forward, prepare_qat
from .train import TrainConfig, evaluate, train

__all__ = ["QATModel", "clip_options", "TrainConfig", "evaluate", "export_qat", "float_forward", "graph_to_onnx", "prepare_qat", "train"]
