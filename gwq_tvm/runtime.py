"""Small shared helpers: the host target, building and running, progress bars."""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import tvm
from tvm import relax


@functools.lru_cache(maxsize=None)
def host_target() -> tvm.target.Target:
    """LLVM target for this machine's CPU (``mcpu`` auto-detected, all cores)."""
    mcpu = tvm.target.codegen.llvm_get_system_cpu()
    cfg = {"kind": "llvm", "num-cores": os.cpu_count() or 1}
    if mcpu and mcpu != "generic":
        cfg["mcpu"] = mcpu
    return tvm.target.Target(cfg)


def progress(items, desc: str, enabled: bool):
    """Wrap ``items`` in a tqdm bar on stderr when ``enabled`` (and tqdm is installed)."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def batches(data: np.ndarray, step: int, *, padded: bool = False, desc="run", show_progress=False):
    """Yield ``(chunk, n)``: ``data`` in chunks of ``step`` rows, ``n`` of them real.

    With ``padded`` (a module compiled for a fixed batch) the last chunk is
    filled up to ``step`` rows with zeros; keep the first ``n`` output rows.
    """
    for i in progress(range(0, len(data), step), desc=desc, enabled=show_progress):
        chunk = data[i : i + step]
        n = len(chunk)
        if padded and n < step:
            chunk = np.concatenate([chunk, np.zeros((step - n,) + chunk.shape[1:], chunk.dtype)])
        yield np.ascontiguousarray(chunk), n


def run_batched(vm: relax.VirtualMachine, data: np.ndarray, batch: int, *, fixed_batch=None, desc="run", show_progress=False,
                args=()):
    """Run ``vm["main"](chunk, *args)`` over ``data`` in batches and concatenate the outputs."""
    outs = []
    for chunk, n in batches(data, fixed_batch or batch, padded=bool(fixed_batch), desc=desc, show_progress=show_progress):
        out = vm["main"](tvm.runtime.tensor(chunk), *args)
        if not hasattr(out, "numpy"):
            out = out[0]
        outs.append(out.numpy()[:n])
    return np.concatenate(outs)
