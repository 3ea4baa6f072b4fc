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


def run_batched(vm: relax.VirtualMachine, data: np.ndarray, batch: int, *, fixed_batch=None, desc="run", show_progress=False,
                args=()):
    """Run ``vm["main"](chunk, *args)`` over ``data`` in batches and concatenate the outputs."""
    step = fixed_batch or batch
    outs = []
    for i in progress(range(0, len(data), step), desc=desc, enabled=show_progress):
        chunk = data[i : i + step]
        pad = step - len(chunk) if fixed_batch else 0
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(chunk)), *args)
        if not hasattr(out, "numpy"):
            out = out[0]
        outs.append(out.numpy()[: len(chunk) - pad])
    return np.concatenate(outs)
