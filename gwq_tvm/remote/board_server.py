"""TVM's RPC server, registered with a tracker, that survives a crashed session (TVM 0.27 bug workaround).

Cause
-----
``tvm.rpc.server._serving`` runs each session in a child process and raises
``RuntimeError`` when that child exits abnormally (a module that segfaults
or aborts on load or run, e.g. re-uploading a loaded ``.so`` under the same
name).  The exception escapes ``_listen_loop``, whose thread ends: the
server process stays alive but never re-registers, so the board silently
drops out of the tracker and every later request for its key waits forever.
One bad tuning candidate takes a board out of the fleet.

Workaround
----------
This module runs the stock ``_listen_loop`` in-process (no PopenWorker, so
no re-exec of ``sys.executable`` is needed under qemu either) with
``_serving`` wrapped: a crashed session is logged and its connection
closed, and the server goes back to the tracker.  It imports only the
standard library and ``tvm``, so the emulated board runs a copy of this file
(and so can a real board: ``python3 board_server.py --tracker HOST:PORT --key KEY``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

logger = logging.getLogger("gwq_board_server")


def _install_crash_guard() -> None:
    """Wrap ``tvm.rpc.server._serving`` so a crashed session does not end the listen loop (idempotent)."""
    from tvm.rpc import server

    if getattr(server._serving, "_gwq_guard", False):
        return
    stock = server._serving

    def serving(sock, addr, opts, load_library):
        cwd = os.getcwd()
        try:
            stock(sock, addr, opts, load_library)
        except RuntimeError as err:  # the session's worker died; the stock code leaves cwd and sock behind
            logger.warning("session from %s ended abnormally (%s); serving on", addr, err)
            os.chdir(cwd)
            sock.close()

    serving._gwq_guard = True
    server._serving = serving


def _bind(host: str, port: int, port_end: int) -> tuple[socket.socket, int]:
    for p in range(port, port_end):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, p))
        except OSError:
            sock.close()
            continue
        sock.listen(1)
        return sock, p
    raise RuntimeError(f"no free port in {host}:{port}-{port_end}")


def serve(host: str, port: int, port_end: int, tracker: tuple[str, int] | None, key: str) -> None:
    """Listen on the first free port of ``[port, port_end)``, register ``key`` with ``tracker``, serve forever."""
    from tvm.rpc import server

    _install_crash_guard()
    sock, bound = _bind(host, port, port_end)
    logger.info("RPC server listening on %s:%d, key %s, tracker %s", host, bound, key, tracker)
    server._listen_loop(sock, bound, key, tracker, None, None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--port-end", type=int, default=9199)
    parser.add_argument("--tracker", default=None, help="HOST:PORT of the RPC tracker")
    parser.add_argument("--key", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tracker = None
    if args.tracker:
        thost, _, tport = args.tracker.rpartition(":")
        tracker = (thost, int(tport))
    serve(args.host, args.port, args.port_end, tracker, args.key)


if __name__ == "__main__":
    main()
