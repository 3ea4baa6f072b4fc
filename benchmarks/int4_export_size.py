"""Exported module size of the bundled ResNet with and without packed int4 weights (issue 23).

The bundled ResNet (Fashion-MNIST) quantized at W4A8 (first and last layer at
8 bits, ``end_bits``' default) and, for reference, W8A8; each compiled for
this CPU's kernel family twice: int4 weights packed two per byte (the
default), and every weight stored as int8 (the family's int4 step switched
off).  Records the ``.so`` size, the bytes of the weight constants in the
packed program, the integer-only check and whether both programs give the
same outputs (bit for bit) on 16 test images.  Writes
``benchmarks/results/int4_kernels/export_size.{json,md}``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "int4_kernels"


def _const_bytes(mod, spec) -> int:
    from tvm import relax

    from gwq_tvm.ir import const_value
    from gwq_tvm.schedules.pack_layout import PackInt8Layout

    found = []
    relax.analysis.post_order_visit(PackInt8Layout(spec)(mod)["main"],
                                    lambda e: found.append(const_value(e)) if const_value(e) is not None else None)
    return int(sum(v.nbytes for v in found))


def main() -> None:
    import tvm
    from tvm import relax

    import gwq_tvm
    from gwq_tvm.atomic import write_text
    from gwq_tvm.runtime import host_target
    from gwq_tvm.schedules.build import compile_packed
    from gwq_tvm.schedules.spec import kernel_spec

    calib = gwq_tvm.data.fashion_mnist("calib")[0][:256]
    xt = gwq_tvm.data.fashion_mnist("test")[0][:16]
    target = host_target()
    spec = kernel_spec(target)
    rows = {}
    for wbits in (4, 8):
        q = gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib, gwq_tvm.QuantConfig(weight_bits=wbits, act_bits=8))
        row, outs = {}, {}
        for name, use in (("int4 packed", spec), ("int8 containers", dataclasses.replace(spec, int4_intrinsic=None))):
            ex = compile_packed(q.mod, target, use)
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "m.so"
                ex.export_library(str(path))
                size = path.stat().st_size
            vm = relax.VirtualMachine(ex, tvm.cpu())
            outs[name] = np.stack([vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[None]))).numpy() for x in xt])
            row[name] = {"so_bytes": size, "constant_bytes": _const_bytes(q.mod, use)}
        row["same outputs"] = bool(np.array_equal(*outs.values()))
        rows[f"W{wbits}A8"] = row
        print(wbits, row, flush=True)
    write_text(OUT / "export_size.json", json.dumps({"family": spec.name, "rows": rows}, indent=1) + "\n")
    lines = [f"# Exported size of the bundled ResNet, int4 weights packed vs int8 containers ({spec.name})", "",
             "W4A8: first and last layers at 8 bits (end_bits), the others' weights in [-8, 7], packed two per byte.",
             "constants = bytes of the packed program's constants (weights, biases, shifts).", "",
             "| policy | .so int8 containers | .so int4 packed | ratio | constants int8 / int4 | same outputs |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        a, b = r["int8 containers"], r["int4 packed"]
        lines.append(f"| {name} | {a['so_bytes']} | {b['so_bytes']} | {b['so_bytes'] / a['so_bytes']:.3f} | "
                     f"{a['constant_bytes']} / {b['constant_bytes']} | {r['same outputs']} |")
    write_text(OUT / "export_size.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
