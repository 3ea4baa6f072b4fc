"""Small shared helpers: the host target, building and running, progress bars."""

from __future__ import annotations

import functools
import os
import struct
import sys
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .errors import ModelError


@functools.lru_cache(maxsize=None)
def host_target() -> tvm.target.Target:
    """LLVM target for this machine's CPU (``mcpu`` auto-detected, all cores), with AMX only where the OS grants it.

    AMX-INT8 is in the target (so :func:`gwq_tvm.schedules.spec.kernel_spec`
    picks the ``x86-amx`` family) exactly when ``/proc/cpuinfo`` lists it and
    this process's ``arch_prctl`` request succeeds
    (:func:`gwq_tvm.schedules.amx.host_amx_usable`); otherwise it is removed
    and the host gets ``x86-vnni``.
    """
    from .schedules.amx import host_amx_usable

    mcpu = tvm.target.codegen.llvm_get_system_cpu()
    return amx_reconciled(mcpu, host_amx_usable())


def amx_reconciled(mcpu: str, amx_usable: bool) -> tvm.target.Target:
    """The host target dict for CPU ``mcpu``, its AMX features set to ``amx_usable`` (whatever ``mcpu`` implies)."""
    from .schedules.amx import has_amx

    cfg = {"kind": "llvm", "num-cores": os.cpu_count() or 1}
    if mcpu and mcpu != "generic":
        cfg["mcpu"] = mcpu
    target = tvm.target.Target(cfg)
    if has_amx(target) != amx_usable:
        sign = "+" if amx_usable else "-"
        target = tvm.target.Target({**cfg, "mattr": [f"{sign}amx-tile", f"{sign}amx-int8"]})
    return target


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


_ET_DYN = 3


def check_library(path) -> None:
    """Check that ``path`` is a whole ELF shared library before it is ``dlopen``-ed.

    ``dlopen`` maps the file and the loader reads the program headers and
    segments it names: a truncated library (a segment past the end of the
    file) dies with SIGBUS, not an error.  This reads the ELF header and
    checks that every table and loadable segment lies inside the file.

    Raises
    ------
    ModelError
        For a missing file, a file that is not a 32/64-bit ELF shared object,
        or one whose headers point past its end (truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"module not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
            raise ModelError(f"{path}: not a shared library (no ELF header); give a .so written by 'gwq-tvm compile'")
        wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
        if wide and len(head) < 64:
            raise ModelError(f"{path}: truncated shared library (the ELF header is cut off)")
        if wide:
            e_type, phoff, shoff, phentsize, phnum, shentsize, shnum = (
                struct.unpack_from(order + "H", head, 16) + struct.unpack_from(order + "QQ", head, 32)
                + struct.unpack_from(order + "HH", head, 54) + struct.unpack_from(order + "HH", head, 58))
        else:
            e_type, phoff, shoff, phentsize, phnum, shentsize, shnum = (
                struct.unpack_from(order + "H", head, 16) + struct.unpack_from(order + "II", head, 28)
                + struct.unpack_from(order + "HH", head, 42) + struct.unpack_from(order + "HH", head, 46))
        if e_type != _ET_DYN:
            raise ModelError(f"{path}: an ELF file but not a shared library (type {e_type})")
        if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size or phnum == 0:
            raise ModelError(f"{path}: truncated or damaged shared library ({size} bytes; its headers point past the end)")
        f.seek(phoff)
        table = f.read(phnum * phentsize)
    for i in range(phnum):
        entry = table[i * phentsize : (i + 1) * phentsize]
        if wide:
            p_offset, p_filesz = struct.unpack_from(order + "Q", entry, 8)[0], struct.unpack_from(order + "Q", entry, 32)[0]
        else:
            p_offset, p_filesz = struct.unpack_from(order + "I", entry, 4)[0], struct.unpack_from(order + "I", entry, 16)[0]
        if p_offset + p_filesz > size:
            raise ModelError(f"{path}: truncated shared library ({size} bytes; segment {i} ends at byte {p_offset + p_filesz})")
