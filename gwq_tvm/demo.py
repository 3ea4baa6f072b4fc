"""``gwq-tvm demo``: the whole flow on the bundled model and the 10k Fashion-MNIST test images."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from . import api
from .atomic import write_text
from .config import QuantConfig
from .data import BUNDLED_MODELS, bundled_model, fashion_mnist
from .reference import run_reference
from .runtime import host_target
from .schedules.float import compile_float


def run_demo(out_dir: Path, calib_samples: int = 512, limit: int | None = None, quiet: bool = False,
             model_name: str = BUNDLED_MODELS[0]) -> dict:
    """Quantize W8A8 per-layer (dyadic SFCs) and GWQ (shared mantissas, shift SFCs), compile, evaluate
    both against fp32 on the test images; print and return the results."""
    t0 = time.time()
    calib, _ = fashion_mnist("calib")
    test_x, test_y = fashion_mnist("test")
    if limit:
        test_x, test_y = test_x[:limit], test_y[:limit]
    model = bundled_model(model_name)
    q = api.quantize(model, calib[:calib_samples], QuantConfig(), show_progress=not quiet)
    ex = api.build(q)
    out_dir.mkdir(parents=True, exist_ok=True)
    so = api.export(ex, out_dir / f"{model_name}_int8.so", q.plan)
    t_compile = time.time() - t0

    vm_int = api.load_executable(so)
    logits_int = api.predict(vm_int, test_x, q.float_model.input_shape, show_progress=not quiet)
    vm_fp = relax.VirtualMachine(compile_float(q.float_model.mod, host_target()), tvm.cpu())
    logits_fp = api.predict(vm_fp, test_x, q.float_model.input_shape, show_progress=not quiet)
    acc_fp, acc_int = api.accuracy(logits_fp, test_y), api.accuracy(logits_int, test_y)
    ref = run_reference(q.mod, test_x[:32])
    bit_exact = bool(np.array_equal(ref, logits_int[:32]))

    g = api.quantize(model, calib[:calib_samples], QuantConfig(mode="gwq"), show_progress=not quiet)
    g_so = api.export(api.build(g), out_dir / f"{model_name}_gwq.so", g.plan)
    logits_gwq = api.predict(api.load_executable(g_so), test_x, g.float_model.input_shape, show_progress=not quiet)
    acc_gwq = api.accuracy(logits_gwq, test_y)
    gwq_exact = bool(np.array_equal(run_reference(g.mod, test_x[:32]), logits_gwq[:32]))

    s = q.sfc
    print(f"model: {model.name}  (test images: {len(test_x)}, calibration images: {calib_samples})")
    print(f"fp32 accuracy: {acc_fp * 100:.2f}%")
    print(f"int8 accuracy: {acc_int * 100:.2f}%  (W8A8 per-channel, dyadic SFC; delta {100 * (acc_int - acc_fp):+.2f} pt)")
    print(f"integer-only: {'yes' if q.integer_only.ok else 'no'}")
    print(f"SFC ops: {s['multiply_sites']} multiply, {s['shift_sites']} shift "
          f"(per-sample elements: {s['multiply_elements']} multiply, {s['shift_elements']} shift)")
    print(f"bit-exact vs numpy reference (32 images): {'yes' if bit_exact else 'NO'}")
    gs = g.sfc
    print(f"GWQ int8 accuracy: {acc_gwq * 100:.2f}%  ({len(g.plan.groups)} groups, shared mantissas; delta {100 * (acc_gwq - acc_fp):+.2f} pt)")
    print(f"GWQ SFC ops: {gs['multiply_sites']} multiply, {gs['shift_sites']} shift (per-sample elements: "
          f"{gs['multiply_elements']} multiply, {gs['shift_elements']} shift; shift share {gs['shift_share'] * 100:.1f}%)")
    print(f"GWQ integer-only: {'yes' if g.integer_only.ok else 'no'}; bit-exact (32 images): {'yes' if gwq_exact else 'NO'}")
    print(f"wrote {so} and {so.with_suffix('.plan.json')}  (quantize+compile {t_compile:.1f}s, total {time.time() - t0:.1f}s)")
    result = {
        "fp32_accuracy": acc_fp, "int8_accuracy": acc_int, "integer_only": q.integer_only.ok,
        "model": model_name, "sfc": s, "bit_exact_32": bit_exact, "test_images": len(test_x),
        "gwq": {"accuracy": acc_gwq, "groups": len(g.plan.groups), "sfc": gs, "integer_only": g.integer_only.ok,
                "bit_exact_32": gwq_exact},
    }
    write_text(out_dir / "demo_result.json", json.dumps(result, indent=2) + "\n")
    return result
