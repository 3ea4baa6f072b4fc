"""An emulated aarch64 board: qemu-user, Debian's aarch64 CPython and the aarch64 TVM wheel, behind TVM's RPC tracker.

For users without hardware, and for the tests: :func:`setup_emulated_board`
assembles (once, cached) a folder holding

* ``rootfs/``: Debian's ``python3.X:arm64`` and the libraries it needs
  (``apt-get download`` + ``dpkg -x``, nothing installed system-wide except the
  ``arm64`` dpkg architecture),
* ``site/``: the aarch64 wheels of the TVM runtime this host runs (same
  versions: ``apache-tvm``, ``apache-tvm-ffi``, ``numpy``, ...),
* ``python``: an x86 wrapper script that runs that interpreter under
  ``qemu-aarch64-static``.

:func:`start_board` then starts ``tvm.exec.rpc_tracker`` (host Python) and
an RPC server registered with it under the emulated Python, on 127.0.0.1
only, in their own process groups, and waits until the server is
registered: what ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key
KEY`` does on a real board.  The server is TVM's own listen loop, run by
:mod:`gwq_tvm.remote.board_server` (copied into ``site/``), which keeps a
crashed session from taking the board off the tracker (a TVM 0.27 bug).
:func:`stop_board` ends both.  Emulated timings mean nothing; outputs, the
flow and the generated code are real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..errors import GwqError

ARCHES = ("aarch64",)
"""Emulated board architectures."""

HOST = "host"
"""``start_board(HOST)``: an RPC server of this machine's own Python (no emulation), to try the flow."""

_DEBIAN_ARCH = {"aarch64": "arm64"}
_WHEEL_PLATFORMS = {"aarch64": ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")}
_QEMU = {"aarch64": "qemu-aarch64-static"}

#: The board's Python packages: TVM's runtime and what its RPC server imports (pinned to the host's versions).
RUNTIME_PACKAGES = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions", "psutil", "cloudpickle",
                    "tornado")
_NOT_NEEDED_DEBS = ("dpkg", "tar", "install-info", "perl")  # pulled in by maintainer scripts we never run

BOARD_SERVER_MODULE = "gwq_board_server"
"""Name of the copy of :mod:`gwq_tvm.remote.board_server` in the board's ``site/``."""


class BoardError(GwqError):
    """The emulated board cannot be set up, started or reached."""


def cache_root() -> Path:
    """``$GWQ_TVM_CACHE``, else ``$XDG_CACHE_HOME/gwq-tvm``, else ``~/.cache/gwq-tvm``."""
    if os.environ.get("GWQ_TVM_CACHE"):
        return Path(os.environ["GWQ_TVM_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gwq-tvm"


@dataclass(frozen=True)
class EmulatedBoard:
    """A set-up emulated board folder (see the module docstring)."""

    arch: str
    root: Path

    @property
    def python(self) -> Path:
        """The host-executable wrapper that runs the board's Python under qemu."""
        return self.root / "python"

    @property
    def run_dir(self) -> Path:
        """Logs and the state files of started boards."""
        return self.root / "run"

    def run(self, code: str, timeout: float = 300.0) -> str:
        """Run ``code`` with the board's Python and return its stdout (for checks and tests)."""
        proc = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, timeout=timeout)
        if proc.returncode:
            raise BoardError(f"the emulated {self.arch} Python failed: {_tail(proc.stderr)}")
        return proc.stdout


# --- set-up -----------------------------------------------------------------
def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "(no output)"


def _check_call(cmd: list[str], what: str, **kwargs) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        raise BoardError(f"{what} failed ({' '.join(cmd[:3])} ...): {_tail(proc.stderr or proc.stdout)}")
    return proc.stdout


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_qemu(arch: str, log) -> str:
    exe = _QEMU[arch]
    if shutil.which(exe):
        return exe
    if not (_is_root() and shutil.which("apt-get")):
        raise BoardError(f"the emulated board needs {exe}: apt-get install qemu-user-static")
    log("installing qemu-user-static (apt-get)")
    _check_call(["apt-get", "update", "-qq"], "apt-get update")
    _check_call(["apt-get", "install", "-y", "-qq", "qemu-user-static"], "apt-get install qemu-user-static",
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return exe


def _ensure_dpkg_arch(deb_arch: str, log) -> None:
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise BoardError("the emulated board takes its Python from Debian packages: apt-get/dpkg are needed")
    if deb_arch in _check_call(["dpkg", "--print-foreign-architectures"], "dpkg").split():
        return
    if not _is_root():
        raise BoardError(f"the emulated board needs Debian's {deb_arch} packages; as root run: "
                         f"dpkg --add-architecture {deb_arch} && apt-get update")
    log(f"adding the dpkg architecture {deb_arch} (apt-get update)")
    _check_call(["dpkg", "--add-architecture", deb_arch], "dpkg --add-architecture")
    _check_call(["apt-get", "update", "-qq"], "apt-get update")


def _debian_python(deb_arch: str) -> str:
    """``3.X`` of the Debian release's ``python3`` for ``deb_arch``."""
    out = _check_call(["apt-cache", "depends", f"python3-minimal:{deb_arch}"], "apt-cache depends")
    for line in out.splitlines():
        name = line.split(":", 1)[-1].strip().split(":")[0]
        if name.startswith("python3.") and name.endswith("-minimal"):
            return name[len("python"):-len("-minimal")]
    raise BoardError(f"cannot tell which python3.X Debian ships for {deb_arch} (apt-cache depends python3-minimal)")


def _debian_packages(py: str, deb_arch: str) -> list[str]:
    """``python3.X`` and ``libstdc++6`` for ``deb_arch`` with every dependency, recursively."""
    cmd = ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
           "--no-replaces", "--no-enhances", "--no-pre-depends", f"python{py}:{deb_arch}", f"libstdc++6:{deb_arch}"]
    names = set()
    for line in _check_call(cmd, "apt-cache depends").splitlines():
        if line.startswith((" ", "<")) or not line.endswith(f":{deb_arch}"):
            continue
        if not line.startswith(_NOT_NEEDED_DEBS):
            names.add(line.strip())
    return sorted(names)


def _pinned(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def _stamp_ok(stamp: Path, content: str) -> bool:
    return stamp.is_file() and stamp.read_text() == content


def _write_stamp(stamp: Path, content: str) -> None:
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(content)
    tmp.replace(stamp)


def setup_emulated_board(arch: str = "aarch64", *, root=None, log=print) -> EmulatedBoard:
    """Assemble the emulated board folder (idempotent: finished steps are skipped).

    Parameters
    ----------
    arch : str
        Only ``"aarch64"``.
    root : path, optional
        Folder of the board (default ``cache_root()/board-<arch>``).
    log : callable
        Receives one line per step that does work.

    Raises
    ------
    BoardError
        Naming what is missing (qemu-user-static, the dpkg architecture, a
        download that failed).

    Notes
    -----
    Downloads (~15 MB of Debian packages, ~110 MB of wheels) go to
    ``root/debs`` and ``root/wheels`` and are reused.  Each step writes a
    stamp naming what it installed; a step whose stamp is missing or names
    other versions (the host's TVM changed) is redone.
    """
    if arch not in ARCHES:
        raise BoardError(f"no emulated board for {arch!r}; available: {', '.join(ARCHES)}")
    root = Path(root) if root else cache_root() / f"board-{arch}"
    board = EmulatedBoard(arch, root)
    root.mkdir(parents=True, exist_ok=True)
    deb_arch = _DEBIAN_ARCH[arch]
    qemu = _ensure_qemu(arch, log)

    rootfs, debs = root / "rootfs", root / "debs"
    stamp = root / ".rootfs.done"
    if not stamp.is_file():
        _ensure_dpkg_arch(deb_arch, log)
        py = _debian_python(deb_arch)
        packages = _debian_packages(py, deb_arch)
        log(f"downloading {len(packages)} Debian {deb_arch} packages (python{py} and its libraries)")
        debs.mkdir(exist_ok=True)
        _check_call(["apt-get", "download", "-q", *packages], "apt-get download", cwd=debs)
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir()
        for deb in sorted(debs.glob("*.deb")):
            _check_call(["dpkg", "-x", str(deb), str(rootfs)], f"unpacking {deb.name}")
        _write_stamp(stamp, py)
    py = stamp.read_text()

    site, wheels = root / "site", root / "wheels"
    wanted = [_pinned(n) for n in RUNTIME_PACKAGES]
    stamp = root / ".site.done"
    if not _stamp_ok(stamp, "\n".join(wanted)):
        log(f"downloading the {arch} wheels: {', '.join(wanted)}")
        platforms = [a for p in _WHEEL_PLATFORMS[arch] for a in ("--platform", p)]
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        common = ["--only-binary=:all:", *platforms, "--python-version", py, "--implementation", "cp", "--no-deps"]
        _check_call([*pip, "download", *common, "-d", str(wheels), *wanted], "pip download")
        shutil.rmtree(site, ignore_errors=True)
        _check_call([*pip, "install", *common, "--target", str(site), "--no-index", "--find-links", str(wheels),
                     *wanted], "pip install --target")
        _write_stamp(stamp, "\n".join(wanted))
    server_src = (Path(__file__).with_name("board_server.py")).read_text()
    server_copy = site / f"{BOARD_SERVER_MODULE}.py"
    if not server_copy.is_file() or server_copy.read_text() != server_src:
        server_copy.write_text(server_src)

    wrapper = (
        "#!/bin/sh\n"
        f"# gwq-tvm: the emulated {arch} board's python (runs under {qemu})\n"
        f'ROOT="{root}"\n'
        'export PYTHONPATH="$ROOT/site" PYTHONNOUSERSITE=1\n'
        f'exec {qemu} -L "$ROOT/rootfs" "$ROOT/rootfs/usr/bin/python{py}" "$@"\n'
    )
    if not board.python.is_file() or board.python.read_text() != wrapper:
        board.python.write_text(wrapper)
        board.python.chmod(0o755)
    return board


# --- start / stop -------------------------------------------------------------
@dataclass(frozen=True)
class RunningBoard:
    """A started board: the tracker it registered with and the processes gwq-tvm started for it."""

    tracker: tuple[str, int]
    key: str
    server_pid: int
    tracker_pid: int | None
    """``None`` when the tracker was already running (someone else's)."""
    state_file: Path

    @property
    def tracker_address(self) -> str:
        return f"{self.tracker[0]}:{self.tracker[1]}"


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for tests and ad-hoc boards)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _kill_group(pid: int | None, grace: float = 5.0) -> None:
    """SIGTERM the process group of ``pid`` (started with ``start_new_session``), SIGKILL after ``grace`` s."""
    if not pid:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _alive(pid):
                return
            time.sleep(0.1)


def _spawn(cmd: list[str], log_path: Path) -> int:
    """Start ``cmd`` as a daemon (own session and process group, output to ``log_path``); return its pid.

    The daemon is a grandchild (``sh`` starts it in the background and
    exits), so it outlives this process and no ``Popen`` is left to reap.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    script = 'setsid "$@" >"$LOG" 2>&1 </dev/null & echo $!'
    out = subprocess.run(["sh", "-c", script, "sh", *cmd], capture_output=True, text=True, check=True,
                         env={**os.environ, "LOG": str(log_path)})
    return int(out.stdout.split()[-1])


def _state_path(board: EmulatedBoard, port: int, key: str) -> Path:
    return board.run_dir / f"board-{port}-{key}.json"


def _tracker_log(run_dir: Path, port: int) -> Path:
    return run_dir / f"tracker-{port}.log"


def _server_log(run_dir: Path, port: int, key: str) -> Path:
    return run_dir / f"server-{port}-{key}.log"


def _load_state(path: Path) -> RunningBoard | None:
    try:
        s = json.loads(path.read_text())
        return RunningBoard((s["host"], int(s["port"])), s["key"], int(s["server_pid"]), s.get("tracker_pid"), path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def start_board(arch: str = "aarch64", *, tracker_port: int = 9190, key: str | None = None, root=None,
                timeout: float = 180.0, log=print) -> RunningBoard:
    """Set up (if needed) and start an emulated board registered with a tracker on 127.0.0.1.

    Parameters
    ----------
    arch : str
        ``"aarch64"`` (emulated) or :data:`HOST` (this machine's Python).
    tracker_port : int
        Tracker port on 127.0.0.1.  A tracker already listening there is used
        (and left running by :func:`stop_board`); otherwise one is started.
    key : str, optional
        The board's tracker key (default: ``arch``).
    timeout : float
        Seconds to wait for the server to register (TVM's import under qemu
        takes ~10-30 s).
    log : callable

    Returns
    -------
    RunningBoard
        Also written to a state file; starting the same board again returns
        the running one.

    Raises
    ------
    BoardError
        When set-up fails, or the server does not register in ``timeout``
        (the processes are stopped and the log's tail is shown).
    """
    key = key or arch
    if arch == HOST:
        board = EmulatedBoard(HOST, Path(root) if root else cache_root() / "board-host")
        server = [sys.executable, "-m", "gwq_tvm.remote.board_server"]
    else:
        board = setup_emulated_board(arch, root=root, log=log)
        server = [str(board.python), "-m", BOARD_SERVER_MODULE]
    host = "127.0.0.1"
    state_file = _state_path(board, tracker_port, key)
    running = _load_state(state_file) if state_file.is_file() else None
    if running and _alive(running.server_pid) and key in _safe_keys(host, tracker_port):
        log(f"board '{key}' is already running at tracker {running.tracker_address}")
        return running
    tracker_pid = None
    if running:  # stale: its server died or dropped out of the tracker; a live tracker is kept (others may use it)
        _kill_group(running.server_pid)
        if _alive(running.tracker_pid) and port_open(host, tracker_port):
            tracker_pid = running.tracker_pid
        else:
            _kill_group(running.tracker_pid)
        state_file.unlink(missing_ok=True)

    if not port_open(host, tracker_port):
        log(f"starting an RPC tracker on {host}:{tracker_port}")
        tracker_pid = _spawn([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port",
                              str(tracker_port), "--port-end", str(tracker_port + 1), "--silent"],
                             _tracker_log(board.run_dir, tracker_port))
        deadline = time.monotonic() + 120  # importing TVM takes 20 s on a loaded 2-core machine
        while not port_open(host, tracker_port):
            if not _alive(tracker_pid) or time.monotonic() > deadline:
                _kill_group(tracker_pid)
                raise BoardError(f"the RPC tracker did not start on {host}:{tracker_port}: "
                                 f"{_tail(_tracker_log(board.run_dir, tracker_port).read_text())}")
            time.sleep(0.2)

    log(f"starting the {arch} RPC server (key '{key}')" + ("" if arch == HOST else " under qemu"))
    server_log = _server_log(board.run_dir, tracker_port, key)
    server_log.unlink(missing_ok=True)
    server_port = free_port(host)
    server_pid = _spawn([*server, "--host", host, "--port", str(server_port),
                   "--port-end", str(server_port + 100), "--tracker", f"{host}:{tracker_port}", "--key", key],
                  server_log)
    state = RunningBoard((host, tracker_port), key, server_pid, tracker_pid, state_file)
    deadline = time.monotonic() + timeout
    while key not in _safe_keys(host, tracker_port):
        if not _alive(server_pid) or time.monotonic() > deadline:
            _kill_group(server_pid)
            _kill_group(tracker_pid)
            why = "exited" if not _alive(server_pid) else f"did not register within {timeout:.0f}s"
            raise BoardError(f"the emulated board {why}: {_tail(server_log.read_text() if server_log.exists() else '')}")
        time.sleep(1.0)
    board.run_dir.mkdir(parents=True, exist_ok=True)
    _write_stamp(state_file, json.dumps({"host": host, "port": tracker_port, "key": key, "server_pid": server_pid,
                                         "tracker_pid": tracker_pid, "arch": arch}))
    log(f"board '{key}' registered at tracker {host}:{tracker_port}")
    return state


def _safe_keys(host: str, port: int) -> dict:
    from .tracker import tracker_keys

    try:
        return tracker_keys(f"{host}:{port}", timeout=2.0)
    except GwqError:
        return {}


def running_boards(arch: str = "aarch64", *, root=None) -> list[RunningBoard]:
    """Boards started by :func:`start_board` whose server is still alive."""
    root = Path(root) if root else cache_root() / f"board-{arch}"
    run_dir = root / "run"
    boards = [_load_state(p) for p in sorted(run_dir.glob("board-*.json"))] if run_dir.is_dir() else []
    return [b for b in boards if b is not None and _alive(b.server_pid)]


def _other_servers(board: RunningBoard) -> list[str]:
    """Keys of servers other than ``board``'s registered at its tracker."""
    from .tracker import tracker_summary

    try:
        info = tracker_summary(board.tracker, timeout=2.0).get("server_info", [])
    except GwqError:
        return []
    keys = [str(s.get("key", "")).split(":", 1)[-1] for s in info]
    return [k for k in keys if k and k != board.key]


def stop_board(board: RunningBoard) -> None:
    """Stop the server, and the tracker if :func:`start_board` started it and no other board is registered there.

    Removes the state file and the logs of the processes it stopped (tests start
    boards on fresh ports, so kept logs would pile up, one pair per port).
    """
    run_dir, port = board.state_file.parent, board.tracker[1]
    _kill_group(board.server_pid)
    _server_log(run_dir, port, board.key).unlink(missing_ok=True)
    if board.tracker_pid and not _other_servers(board):
        _kill_group(board.tracker_pid)
        _tracker_log(run_dir, port).unlink(missing_ok=True)
    board.state_file.unlink(missing_ok=True)
