"""Compile the float programs gwq-tvm runs itself (calibration, sensitivity, baselines) with default schedules.

Plain ``tvm.compile`` of a float CNN gives naive scalar loops (about 2 s
per ResNet-18 image on a 2-core machine).  :func:`compile_float` is the one
way gwq-tvm builds a float32 or float64 Relax module:

* every ``nn.conv2d`` with a constant weight, static C/H/W, ``groups=1`` and
  NCHW/OIHW layouts is legalized to :func:`.compute.conv2d_float_packed_weight`
  (the weight packed here, at compile time, to ``(O/L, C, KH, KW, L)``, the
  ``L`` lanes being two vector registers of the target, :func:`float_lanes`) followed by the NCHW unpack, so the graph keeps its layout;
* ``LegalizeOps`` does everything else; ``FuseOps`` merges each conv with
  its bias/ReLU/fake-quantize epilogue;
* :class:`.default.ScheduleIntegerKernels` (the shared default schedules)
  gives the conv an ``[ow tile] x [L lanes]`` FMA register tile and pools,
  dense and elementwise kernels parallel outer loops and vector lanes.

Every output still sums its products in TOPI's order (input channel, kernel
row, kernel column), so results match the plain build up to the contraction
of multiply-add pairs into FMAs (measured: identical or within float
rounding, see ``tests/test_float_schedules.py``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ir import const_value
from . import compute as C
from . import layout as L
from .build import lowering_passes
from .default import ScheduleIntegerKernels
from .vnni import has_avx512

def float_lanes(dtype: str, target: tvm.target.Target | None = None) -> int:
    """Output-channel lanes of the packed float conv: two vector registers of ``target``.

    ``L = 2 * vector_bytes / itemsize``: 32 float32 / 16 float64 lanes with
    AVX-512 (64-byte zmm), else 16 / 8 (two 32-byte ymm; four 16-byte NEON
    q registers).  Two registers per output pixel let the ``[ow tile] x [L]``
    register tile hold 12-14 independent accumulators, enough to cover the
    FMA latency; with one zmm per pixel (16 float32 lanes on AVX-512) the
    6-pixel tile had 6 and ResNet-18 calibration ran 45 against 36 ms per
    image on Zen 4 (bit-identical outputs).
    """
    wide = target is not None and has_avx512(target)
    return (128 if wide else 64) // np.dtype(dtype).itemsize


def _static_chw(expr) -> bool:
    ty = expr.ty
    return (isinstance(ty, relax.TensorType) and ty.shape is not None and ty.ndim == 4
            and all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape.values[1:]))


def _legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``nn.conv2d`` -> packed-weight float conv + NCHW unpack, or TOPI's conv where that does not apply."""
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    data, weight = call.args
    a = call.attrs
    w = const_value(weight)
    dtype = str(data.ty.dtype) if isinstance(data.ty, relax.TensorType) else ""
    out_dtype = dtype if str(a.out_dtype) in ("", "None", "void") else str(a.out_dtype)  # unset: the input's
    if (w is None or dtype not in ("float32", "float64") or str(w.dtype) != dtype or out_dtype != dtype
            or int(a.groups) != 1 or not _static_chw(data)
            or (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW")):
        return _nn_conv2d(bb, call)
    packed = relax.const(L.pack_float_conv_weight(w, float_lanes(dtype, tvm.target.Target.current(allow_none=True))), dtype)
    return bb.call_te(_conv2d_nchw, data, packed, w.shape[0], strides=[int(s) for s in a.strides],
                      padding=[int(p) for p in a.padding], dilation=[int(d) for d in a.dilation],
                      primfunc_name_hint="gwq_fconv2d")


def _conv2d_nchw(data, weight, channels, strides, padding, dilation):
    """One PrimFunc: packed-weight conv + unpack, so ``FuseOps`` sees an out-elementwise-fusable conv."""
    acc = C.conv2d_float_packed_weight(data, weight, strides, padding, dilation)
    return C.unpack_nchwc(acc, channels)


def float_kernel_passes() -> list:
    """Legalize (packed float convs), fuse and schedule: the float program's kernels, before lowering."""
    return [
        relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": _legalize_conv2d}),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        # the shared default schedules (the float conv has its own, schedule_float_conv), every kernel parallel:
        # calibration and the analyses run this program on batches, where no kernel is too small for two threads
        ScheduleIntegerKernels(grain_us=0.0),
    ]


def compile_float(mod: tvm.IRModule, target: tvm.target.Target | None = None) -> relax.VMExecutable:
    """Compile a float32/float64 Relax module with default schedules (never naive loops for its convs).

    Parameters
    ----------
    mod : tvm.IRModule
        An un-legalized float module (e.g. ``FloatModel.mod``, the calibration
        or fake-quant simulator program); a dynamic batch dimension is fine.
    target : tvm.target.Target, optional
        Default: this CPU (:func:`gwq_tvm.runtime.host_target`).

    Returns
    -------
    relax.VMExecutable
    """
    if target is None:
        from ..runtime import host_target

        target = host_target()
    with target:
        kernels = tvm.transform.Sequential(float_kernel_passes())(mod)
    return tvm.compile(kernels, target, relax_pipeline=tvm.transform.Sequential(lowering_passes(target)))
