"""Talking to TVM's RPC tracker with bounded waits and one-line errors.

TVM's client (``tvm.rpc.connect_tracker(...).request(key)``) retries a
refused tracker for 60 s and waits forever for a key no server has
registered.  These helpers check first, with a deadline, and say what is
wrong: the tracker is unreachable, it is not a tracker, or no board has
registered the key (listing the keys that are there).
"""

from __future__ import annotations

import socket
import struct
import time

from ..errors import GwqError


class RemoteError(GwqError):
    """A tracker or board cannot be reached, or did not answer in time."""


def parse_board(text: str) -> tuple[str, str]:
    """``"KEY@HOST:PORT"`` (a board's key at a tracker) -> ``("HOST:PORT", KEY)``.

    Raises
    ------
    RemoteError
        For anything else.
    """
    key, sep, tracker = str(text).partition("@")
    if not sep or not key:
        raise RemoteError(f"bad board {text!r}: expected KEY@HOST:PORT, e.g. rpi4@127.0.0.1:9190")
    parse_address(tracker)
    return tracker, key


def parse_address(text: str, what: str = "tracker") -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``.

    Raises
    ------
    RemoteError
        For anything else.
    """
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteError(f"bad {what} address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host.strip("[]"), int(port)


def _open(address: tuple[str, int], timeout: float) -> socket.socket:
    from tvm.rpc import base

    host, port = address
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise RemoteError(f"RPC tracker {host}:{port} did not answer within {timeout:g}s") from None
    except OSError as err:
        raise RemoteError(f"cannot reach the RPC tracker at {host}:{port} ({err.strerror or err}); "
                          "is 'python -m tvm.exec.rpc_tracker' running there?") from None
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except (OSError, RuntimeError, struct.error):
        sock.close()
        raise RemoteError(f"{host}:{port} did not answer as an RPC tracker within {timeout:g}s") from None
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise RemoteError(f"{host}:{port} is not a TVM RPC tracker")
    return sock


def tracker_summary(address, *, timeout: float = 10.0) -> dict:
    """The tracker's summary (``queue_info`` per key, ``server_info``), read within ``timeout`` seconds."""
    from tvm.rpc import base

    addr = parse_address(address) if isinstance(address, str) else tuple(address)
    sock = _open(addr, timeout)
    try:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    except (OSError, RuntimeError, ValueError):
        raise RemoteError(f"RPC tracker {addr[0]}:{addr[1]} did not send its summary within {timeout:g}s") from None
    finally:
        sock.close()
    if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
        raise RemoteError(f"RPC tracker {addr[0]}:{addr[1]} sent an unexpected answer: {value!r}")
    return value[1]


def tracker_keys(address, *, timeout: float = 10.0) -> dict[str, dict]:
    """``{key: {"free": n, "pending": m}}`` of the boards registered at the tracker."""
    return dict(tracker_summary(address, timeout=timeout).get("queue_info", {}))


def check_key(address, key: str, *, timeout: float = 10.0) -> dict:
    """Raise :class:`RemoteError` unless a board with ``key`` is registered; return its queue info."""
    keys = tracker_keys(address, timeout=timeout)
    if key not in keys:
        have = ", ".join(sorted(keys)) or "none"
        raise RemoteError(f"no board with key {key!r} is registered at the tracker {address} (registered keys: {have}); "
                          f"start one with 'python -m tvm.exec.rpc_server --tracker {address} --key {key}'")
    return keys[key]


def request_session(address, key: str, *, timeout: float = 60.0, session_timeout: float = 0.0):
    """An RPC session to a board with ``key``, requested from the tracker at ``address``.

    Parameters
    ----------
    address : str
        ``HOST:PORT`` of the tracker.
    key : str
    timeout : float
        Seconds for the tracker to hand out a free board (it queues the
        request while the board is busy).
    session_timeout : float
        Seconds after which the board ends the session (0: no limit).

    Raises
    ------
    RemoteError
        Unreachable tracker, unknown key, or no free board within ``timeout``.

    Notes
    -----
    A board that hangs after handing out a session is not detected here:
    run the session inside :func:`gwq_tvm.remote.bench.run_with_deadline`.
    """
    from tvm import rpc
    from tvm.rpc import base

    check_key(address, key, timeout=min(timeout, 10.0))
    host, port = parse_address(address)
    t0 = time.monotonic()
    sock = _open((host, port), timeout)
    try:
        sock.settimeout(max(1.0, timeout - (time.monotonic() - t0)))
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        value = base.recvjson(sock)
    except (socket.timeout, OSError, RuntimeError):
        raise RemoteError(f"the tracker {address} found no free board with key {key!r} within {timeout:g}s "
                          "(all busy or hung?)") from None
    finally:
        sock.close()
    if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
        raise RemoteError(f"the tracker {address} refused the request for {key!r}: {value!r}")
    url, board_port, match_key = value[1]
    try:
        return rpc.connect(url, board_port, match_key, session_timeout)
    except Exception as err:  # noqa: BLE001 - TVM raises TVMError/RuntimeError with multi-line text
        raise RemoteError(f"the board {key!r} at {url}:{board_port} refused the session: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(err).__name__
