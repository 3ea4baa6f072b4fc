import resource
from pathlib import Path

import numpy as np
import pytest

# ---- peak resident memory per test (issue 22: the whole .ci/run must peak under 8 GB) -------------------------
# Linux keeps a process's peak RSS in VmHWM and resets it when "5" is written to /proc/self/clear_refs; the
# children's peak (CLI tests run gwq-tvm in subprocesses) is RUSAGE_CHILDREN's ru_maxrss, which only grows.  The
# terminal summary lists the tests with the largest peaks, so every CI log shows where the memory goes.
_PEAKS: list = []


def _vm_hwm_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(autouse=True)
def _record_peak_memory(request):
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # pragma: no cover - not Linux
        pass
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    yield
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    _PEAKS.append((_vm_hwm_mb(), children if children > children_before else 0.0, request.node.nodeid))


def pytest_terminal_summary(terminalreporter):
    if not _PEAKS:
        return
    own = max(_PEAKS)
    child = max(_PEAKS, key=lambda p: p[1])
    terminalreporter.write_sep("-", "peak resident memory (MB)")
    terminalreporter.write_line(f"largest in the test process: {own[0]:.0f} MB ({own[2]})")
    if child[1]:
        terminalreporter.write_line(f"largest in a child process: {child[1]:.0f} MB ({child[2]})")
    for mb, _, nodeid in sorted(_PEAKS, reverse=True)[:5]:
        terminalreporter.write_line(f"  {mb:8.0f} MB  {nodeid}")


@pytest.fixture(scope="session")
def fmnist():
    from gwq_tvm.data import fashion_mnist

    calib, _ = fashion_mnist("calib")
    test_x, test_y = fashion_mnist("test")
    return calib, test_x, test_y


@pytest.fixture(scope="session")
def bundled_int8(fmnist):
    import gwq_tvm

    calib, _, _ = fmnist
    return gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:256], gwq_tvm.QuantConfig())


def compile_and_run(mod, x):
    import tvm
    from tvm import relax

    from gwq_tvm.runtime import host_target

    vm = relax.VirtualMachine(tvm.compile(mod, host_target()), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def tensorized_dot_16x4(intrin: str, a_dtype: str, target, b_dtype: str = "int8", k: int = 4):
    """A standalone ``C[16] += A[k] . B[16, k]`` (``A`` of ``a_dtype``, ``B`` of ``b_dtype``) tensorized with ``intrin``, built for ``target``."""
    import tvm
    from tvm import s_tir, te

    a = te.placeholder((k,), a_dtype, name="a")
    b = te.placeholder((16, k), b_dtype, name="b")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((16,), lambda i: te.sum(a[r].astype("int32") * b[i, r].astype("int32"), axis=r), name="c")
    sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("c")
    sch.decompose_reduction(block, sch.get_loops(block)[0])
    sch.tensorize(sch.get_loops(block)[0], intrin)
    return tvm.compile(sch.mod, target)


@pytest.fixture(scope="module")
def host_board(tmp_path_factory):
    """A tracker and an RPC server of this machine's Python on free loopback ports (stopped afterwards)."""
    from gwq_tvm.remote import board as B

    root = tmp_path_factory.mktemp("host-board")
    running = B.start_board(B.HOST, tracker_port=B.free_port(), key="x86", root=root, timeout=120, log=lambda _: None)
    yield running
    run_dir = running.state_file.parent
    assert sorted(p.name for p in run_dir.glob("*.log")) == [f"server-{running.tracker[1]}-x86.log",
                                                             f"tracker-{running.tracker[1]}.log"]
    B.stop_board(running)
    assert not B._alive(running.server_pid) and not B._alive(running.tracker_pid)
    assert not list(run_dir.iterdir()), "stop_board leaves no state file or log of what it stopped"


@pytest.fixture(scope="session")
def aarch64_board(tmp_path_factory):
    """The emulated aarch64 board, started through the CLI on a free loopback tracker port; stopped at the end.

    The set-up (qemu-user, Debian's arm64 Python, the aarch64 TVM wheel) is
    cached in ``~/.cache/gwq-tvm`` (or ``$GWQ_TVM_CACHE``).  A machine without
    apt/dpkg cannot build it: the tests that need it are skipped there; any
    other set-up failure fails them.
    """
    import shutil

    from gwq_tvm.cli import main
    from gwq_tvm.remote import board as B

    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        pytest.skip("the emulated aarch64 board is built from Debian packages (no apt-get/dpkg here)")
    port, key = B.free_port(), "aarch64-test"
    assert main(["board", "start", "--emulated", "aarch64", "--tracker-port", str(port), "--key", key]) == 0
    running = next(b for b in B.running_boards("aarch64") if b.tracker[1] == port and b.key == key)
    yield running
    assert main(["board", "stop", "--emulated", "aarch64", "--tracker-port", str(port), "--key", key]) == 0
    assert not B._alive(running.server_pid)


@pytest.fixture(scope="module")
def aarch64_remote(aarch64_board):
    """A ``tvm.rpc`` session to the emulated aarch64 board (one per test module)."""
    from gwq_tvm.remote import request_session

    return request_session(aarch64_board.tracker_address, aarch64_board.key, timeout=120, session_timeout=900)
