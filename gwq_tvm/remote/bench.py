"""Run and time an exported module on a board (over TVM's RPC tracker) or on this machine, with a hard deadline.

The module travels with what ``gwq-tvm compile`` writes beside it:
``<stem>.plan.json`` (its input shape) and ``<stem>.ref.npz`` (sample inputs
and the outputs the numpy reference of the integer program computes for
them on the host).  :func:`bench_module` uploads the module, runs the sample
inputs, compares the outputs with the reference **exactly**, and times
``repeat`` runs with the VM's ``time_evaluator`` on the board.

Every remote step runs in a child process that is killed at the deadline:
TVM's RPC client blocks without a timeout when a board stops answering, so
a hung board must never hang the caller (and nothing is left running).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GwqError, last_line
from .tracker import RemoteError, check_key, parse_address

REFERENCE_SUFFIX = ".ref.npz"


def reference_path(module) -> Path:
    """``model.so`` -> ``model.ref.npz``."""
    module = Path(module)
    return module.with_name(module.stem + REFERENCE_SUFFIX)


def save_reference(path, inputs: np.ndarray, outputs: np.ndarray) -> None:
    """Write sample ``inputs`` and their reference ``outputs`` to the ``.npz`` at ``path`` (not atomic by itself)."""
    np.savez(path, inputs=np.ascontiguousarray(inputs), outputs=np.ascontiguousarray(outputs))


def write_reference(module, inputs: np.ndarray, outputs: np.ndarray) -> Path:
    """Store sample ``inputs`` and the host reference ``outputs`` beside ``module`` (atomically)."""
    from ..atomic import atomic_path

    path = reference_path(module)
    with atomic_path(path) as tmp:
        save_reference(tmp, inputs, outputs)
    return path


def read_reference(module) -> tuple[np.ndarray, np.ndarray] | None:
    """``(inputs, outputs)`` stored beside ``module``, ``None`` when there is none.

    Raises
    ------
    GwqError
        When the file exists but is not a reference written by gwq-tvm.
    """
    path = reference_path(module)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            inputs, outputs = data["inputs"], data["outputs"]
    except Exception as err:  # noqa: BLE001 - zip/pickle/key errors all mean the same to the user
        raise GwqError(f"{path} is not a gwq-tvm reference file ({type(err).__name__}); recompile the module") from None
    problem = _reference_problem(inputs, outputs)
    if problem:
        raise GwqError(f"{path} is not a gwq-tvm reference file ({problem}); recompile the module")
    return inputs, outputs


def _reference_problem(inputs: np.ndarray, outputs: np.ndarray) -> str | None:
    """What makes ``(inputs, outputs)`` something :func:`save_reference` never writes (``None``: nothing)."""
    if inputs.dtype != np.float32 or inputs.ndim < 2:
        return f"inputs of dtype {inputs.dtype} and rank {inputs.ndim}, not a float32 batch"
    if len(inputs) == 0:
        return "no samples"
    if not np.isfinite(inputs).all():
        return "inputs hold NaN/Inf"
    if outputs.dtype.kind not in "fiu" or outputs.ndim < 1 or len(outputs) != len(inputs):
        return f"outputs of dtype {outputs.dtype} and shape {outputs.shape} for {len(inputs)} inputs"
    return None


@dataclass(frozen=True)
class BenchResult:
    """What :func:`bench_module` measured (times in milliseconds)."""

    module: str
    device: str
    """``local`` or ``KEY@HOST:PORT``."""
    input_shape: tuple
    runs_ms: tuple = field(repr=False)
    """One sample per repeat: the mean of ``number`` back-to-back runs."""
    number: int
    checked: bool
    """Whether a host reference was there to compare with."""
    bit_exact: bool | None
    max_abs_diff: float | None

    @property
    def median_ms(self) -> float:
        return float(np.median(self.runs_ms))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.runs_ms, 90))

    @property
    def min_ms(self) -> float:
        return float(np.min(self.runs_ms))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(median_ms=self.median_ms, p90_ms=self.p90_ms, min_ms=self.min_ms, repeat=len(self.runs_ms))
        return d

    def summary(self) -> str:
        check = ("bit-exact vs host reference: " + ("yes" if self.bit_exact else f"NO (max |diff| {self.max_abs_diff:g})")
                 if self.checked else "outputs not checked (no .ref.npz beside the module)")
        return (f"{self.device}: median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms, min {self.min_ms:.3f} ms "
                f"over {len(self.runs_ms)} runs (input {tuple(self.input_shape)}); {check}")


# --- the deadline ---------------------------------------------------------------
def _child_main(job_path: str, result_path: str) -> None:
    """Entry of the child process: unpickle ``(fn, args)``, run it, pickle the outcome."""
    with open(job_path, "rb") as f:
        fn, args = pickle.load(f)
    try:
        outcome = ("ok", fn(*args))
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent as one line
        outcome = ("error", (type(err).__name__, last_line(err), isinstance(err, GwqError)))
    with open(result_path, "wb") as f:
        pickle.dump(outcome, f)


def run_with_deadline(fn, args: tuple, *, timeout: float, what: str):
    """``fn(*args)`` in a fresh Python process; kill it and raise :class:`RemoteError` after ``timeout`` seconds.

    ``fn`` must be a module-level function (pickled by name) returning
    something picklable.  The child is a plain ``python -c`` (not
    ``multiprocessing``), so callers need no ``__main__`` guard; it runs in
    its own process group, which is killed as a whole at the deadline.  An
    exception in the child comes back as a :class:`RemoteError` naming its
    last line.
    """
    with tempfile.TemporaryDirectory(prefix="gwq-remote-") as tmp:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        with open(job, "wb") as f:
            pickle.dump((fn, args), f)
        code = f"from {__name__} import _child_main; _child_main({str(job)!r}, {str(result)!r})"
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{what} did not finish within {timeout:g}s (board hung or too slow? raise --timeout)") from None
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            proc.stderr.close()
        if not result.is_file():
            tail = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RemoteError(f"{what} died without an answer (exit code {proc.returncode}): {tail[0]}")
        with open(result, "rb") as f:
            status, value = pickle.load(f)
    if status == "ok":
        return value
    name, message, user_error = value
    raise RemoteError(f"{what} failed: {message}" if user_error else f"{what} failed: {name}: {message}")


# --- the job (runs in the child) --------------------------------------------------
def _session(tracker, key, timeout, session_timeout):
    if tracker is None:
        from tvm import rpc

        return rpc.LocalSession()
    from .tracker import request_session

    return request_session(tracker, key, timeout=timeout, session_timeout=session_timeout)


def upload(sess, path) -> str:
    """Copy the file at ``path`` into the session's working directory, under its own name; return that name.

    Works around TVM 0.27's ``RPCSession.upload(path)``, which reads the file
    with an ``open()`` it never closes (a ``ResourceWarning: unclosed file`` on
    every upload): the bytes are read and closed here and handed over as a
    ``bytearray``, the form that takes no file handle.
    """
    path = Path(path)
    sess.upload(bytearray(path.read_bytes()), path.name)
    return path.name


def _run_remote(vm, dev, inputs: np.ndarray) -> np.ndarray:
    """One run of ``main`` on a (possibly remote) VM; tuple outputs give their first field.

    A remote VM is driven through ``set_input``/``invoke_stateful``/``get_outputs``
    (indexing an RPC object fails).
    """
    import tvm

    vm.set_input("main", tvm.runtime.tensor(np.ascontiguousarray(inputs), device=dev))
    vm.invoke_stateful("main")
    out = vm.get_outputs("main")
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def _bench_job(module: str, tracker, key, inputs, repeat: int, number: int, threads, timeout: float) -> dict:
    import tvm
    from tvm import relax

    sess = _session(tracker, key, timeout, session_timeout=timeout)
    lib = sess.load_module(upload(sess, module))
    dev = sess.cpu()
    if threads:
        sess.get_function("runtime.config_threadpool")(1, int(threads))
    vm = relax.VirtualMachine(lib, dev)
    outputs = _run_remote(vm, dev, inputs)  # also the warm-up run
    timer = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat)
    runs = timer("main").results
    return {"outputs": outputs, "runs_ms": tuple(1e3 * float(r) for r in runs)}


def _time_job(modules: list, inputs: list, tracker, key, repeat: int, timeout: float) -> list:
    from tvm import relax

    sess = _session(tracker, key, timeout, session_timeout=timeout)
    dev, out = sess.cpu(), []
    for module, x in zip(modules, inputs):
        vm = relax.VirtualMachine(sess.load_module(upload(sess, module)), dev)
        _run_remote(vm, dev, x)  # warm-up
        timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat, min_repeat_ms=2)
        out.append(float(np.median(timer("main").results)))
    return out


def time_modules(modules, inputs, *, tracker: str | None = None, key: str | None = None, repeat: int = 15,
                 timeout: float = 1200.0) -> list[float]:
    """Median seconds of ``main`` of each exported module on one board (``tracker`` + ``key``) or here.

    Each module is uploaded in turn in one session and timed with the VM's
    ``time_evaluator`` (``repeat`` samples of at least 2 ms each, after one
    warm-up run on its input).  Nothing is checked against a reference: this
    measures kernels, as for a latency table (:mod:`gwq_tvm.schedules.latency`).

    Raises
    ------
    RemoteError
        Unreachable tracker, unknown key, a failing module, or the whole job
        past ``timeout`` seconds (killed, one line).
    """
    if tracker is not None:
        parse_address(tracker)
        check_key(tracker, key, timeout=min(timeout, 10.0))
    device = "local" if tracker is None else f"{key}@{tracker}"
    args = ([str(Path(m).resolve()) for m in modules], [np.ascontiguousarray(x) for x in inputs], tracker, key, repeat,
            timeout)
    return run_with_deadline(_time_job, args, timeout=timeout, what=f"timing {len(args[0])} kernels on {device}")


def _input_shape(module: Path) -> tuple | None:
    plan = module.with_suffix(".plan.json")
    if not plan.is_file():
        return None
    try:
        shape = json.loads(plan.read_text()).get("input_shape")
    except ValueError:
        return None
    return tuple(shape) if shape else None


def bench_module(module, *, tracker: str | None = None, key: str | None = None, repeat: int = 50, number: int = 1,
                 threads: int | None = None, timeout: float = 300.0, inputs: np.ndarray | None = None) -> BenchResult:
    """Run ``module`` on a board (``tracker`` + ``key``) or locally, check it against its host reference, time it.

    Parameters
    ----------
    module : path
        A ``.so`` written by ``gwq-tvm compile`` (for the board's target).
    tracker, key : str, optional
        ``HOST:PORT`` of a TVM RPC tracker and the board's key; both ``None``
        runs on this machine (same code path, a local session).
    repeat, number : int
        ``repeat`` timing samples, each the mean of ``number`` runs.
    threads : int, optional
        Runtime threads on the device (default: the device's own setting).
    timeout : float
        Seconds for the whole remote job (getting a board, uploading,
        running, timing); past it the job is killed and :class:`RemoteError` raised.
    inputs : numpy.ndarray, optional
        Inputs to run (unchecked).  Default: the stored reference inputs, or
        zeros of the plan's input shape when there is no reference.

    Raises
    ------
    GwqError
        Missing module; unreachable tracker, unknown key, no free board or a
        hung board (:class:`RemoteError`) -- all within ``timeout``.
    """
    from ..runtime import check_library

    module = Path(module)
    check_library(module)  # missing, not a library, truncated: one clear line before any upload
    if (tracker is None) != (key is None):
        raise GwqError("--rpc-tracker and --rpc-key go together")
    if repeat < 1 or number < 1 or timeout <= 0:
        raise GwqError("repeat and number must be >= 1 and timeout > 0")
    deadline = time.monotonic() + timeout
    if tracker is not None:
        parse_address(tracker)
        check_key(tracker, key, timeout=min(timeout, 10.0))  # quick, clear errors before any work
    ref = read_reference(module) if inputs is None else None
    if inputs is None:
        shape = _input_shape(module)
        if ref is not None:
            inputs = ref[0]
            if shape is not None and (len(shape) != inputs.ndim or any(
                    d is not None and d != got for d, got in zip(shape, inputs.shape))):
                raise GwqError(f"{reference_path(module)} holds inputs of shape {inputs.shape}; the module takes "
                               f"{tuple('N' if d is None else d for d in shape)}: recompile the module")
        else:
            if shape is None or any(d is None for d in shape[1:]):
                raise GwqError(f"no {reference_path(module).name} or static input shape beside {module}: pass inputs")
            inputs = np.zeros((shape[0] or 1,) + tuple(shape[1:]), np.float32)
    inputs = np.ascontiguousarray(inputs)
    device = "local" if tracker is None else f"{key}@{tracker}"
    left = max(1.0, deadline - time.monotonic())
    res = run_with_deadline(_bench_job, (str(module.resolve()), tracker, key, inputs, repeat, number, threads, left),
                            timeout=left, what=f"running {module.name} on {device}")
    outputs = res["outputs"]
    bit_exact = diff = None
    if ref is not None:
        expected = ref[1]
        bit_exact = bool(outputs.shape == expected.shape and np.array_equal(outputs, expected))
        diff = float(np.max(np.abs(outputs.astype(np.float64) - expected))) if outputs.shape == expected.shape else float("inf")
    return BenchResult(str(module), device, tuple(inputs.shape), res["runs_ms"], number, ref is not None, bit_exact, diff)


def _predict_job(module: str, tracker, key, inputs, step: int, fixed: bool, timeout: float) -> np.ndarray:
    from tvm import relax

    from ..runtime import batches

    sess = _session(tracker, key, timeout, session_timeout=timeout)
    lib = sess.load_module(upload(sess, module))
    dev = sess.cpu()
    vm = relax.VirtualMachine(lib, dev)
    return np.concatenate([_run_remote(vm, dev, chunk)[:n] for chunk, n in batches(inputs, step, padded=fixed)])


def predict_module(module, inputs: np.ndarray, *, tracker: str | None = None, key: str | None = None, batch: int = 250,
                   timeout: float = 300.0) -> np.ndarray:
    """The outputs of ``module`` for every row of ``inputs``, run on a board (``tracker`` + ``key``) or locally.

    Inputs go in batches of ``batch`` (or of the module's fixed batch size,
    read from ``<stem>.plan.json``; the last batch is padded with zeros and
    the padding dropped).  The whole job, connection to outputs, runs under
    the same ``timeout`` deadline as :func:`bench_module`.

    Raises
    ------
    GwqError
        Missing module, unreachable tracker, unknown key, or a job past ``timeout``.
    """
    module = Path(module)
    if not module.is_file():
        raise GwqError(f"module not found: {module}")
    if (tracker is None) != (key is None):
        raise GwqError("--rpc-tracker and --rpc-key go together")
    if tracker is not None:
        parse_address(tracker)
        check_key(tracker, key, timeout=min(timeout, 10.0))
    shape = _input_shape(module)
    fixed = shape[0] if shape is not None and shape[0] else None
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    device = "local" if tracker is None else f"{key}@{tracker}"
    return run_with_deadline(_predict_job, (str(module.resolve()), tracker, key, inputs, fixed or batch, fixed is not None,
                                            timeout), timeout=timeout, what=f"running {module.name} on {device}")
