"""Output safety: every artifact is written atomically, and never over one of the command's inputs.

A writer gets temporary paths in the destination's own directory (so the
final ``os.replace`` is a rename on one file system, atomic on POSIX), writes
them, and only when every one of them is complete are they fsynced and
renamed into place.  A crash, a Ctrl-C or an exception at any point before
the renames leaves the old files (or none) at the destinations; the
temporaries are removed on any Python-level failure.

Usage::

    with atomic_paths("m.so", "m.plan.json") as (so_tmp, plan_tmp):
        lib.export_library(so_tmp)
        plan_tmp.write_text(...)
    # both renamed into place here, or neither
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import GwqError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_paths(*paths):
    """Yield one temporary path per destination in ``paths``; rename them all into place on success.

    Each temporary lives beside its destination and ends with the
    destination's suffix (``export_library`` and ``numpy.savez`` decide the
    format by it).  On success every temporary is fsynced, then all are
    renamed (the renames come last, after all the writing); on an exception
    the temporaries are deleted and the destinations are untouched.  A
    replaced file keeps its permissions; a new one gets the usual ``0666 & ~umask``.
    """
    dests = [Path(p) for p in paths]
    temps = []
    try:
        for dest in dests:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix)
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        default_mode = 0o666 & ~_umask()  # what open() would have given (mkstemp's files are 0600)
        for tmp, dest in zip(temps, dests):
            os.chmod(tmp, dest.stat().st_mode & 0o7777 if dest.exists() else default_mode)
            _fsync(tmp)
        for tmp, dest in zip(temps, dests):
            os.replace(tmp, dest)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path):
    """:func:`atomic_paths` for one destination: yield its temporary path."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_paths`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_outputs(outputs, inputs) -> None:
    """Raise :class:`GwqError` if an output path is a directory or one of the inputs (the same file or a hard link).

    Parameters
    ----------
    outputs : iterable of path
        Every file the command will write.
    inputs : dict of str to path
        What each input is (``"model"``, ``"plan"``, ...) -> its path; ``None``
        values and bundled-data names that are not files are skipped.
    """
    for out in outputs:
        out = Path(out)
        if out.is_dir():
            raise GwqError(f"output {out} is a directory; give a file name")
        if not out.exists():
            continue
        for what, src in inputs.items():
            if src is None or not Path(src).exists():
                continue
            if os.path.samefile(out, src):
                raise GwqError(f"output {out} is the input {what} {src}: refusing to overwrite the input "
                               "(choose another output)")


#: How a compiled module starts: ELF, Mach-O (both byte orders, 32/64-bit) and PE shared libraries, and the
#: gzip stream of the tar archive ``export_library`` writes for a ``.tar`` path
_LIBRARY_MAGIC = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe", b"MZ",
                  b"\x1f\x8b")


def check_replaceable_module(path) -> None:
    """Raise :class:`GwqError` if ``path`` exists and is not a compiled module (nor empty).

    Writing a module replaces an older module at its path, as a rebuild should;
    an ONNX model, a plan or a data file there is something the user made,
    named by mistake as the output (``export(lib, "model.onnx")``), and is
    never overwritten.  A module is a shared library (ELF, Mach-O, PE) or the
    (gzipped) tar archive ``export_library`` writes for a ``.tar`` path.
    """
    path = Path(path)
    if path.is_dir():
        raise GwqError(f"output {path} is a directory; give a file name")
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(512)
    if not head or head.startswith(_LIBRARY_MAGIC) or head[257:262] == b"ustar":
        return
    raise GwqError(f"output {path} exists and is not a compiled module; refusing to overwrite it "
                   "(choose another output, or remove the file)")
