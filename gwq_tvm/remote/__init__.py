"""Boards over TVM's RPC tracker: sessions with deadlines, remote benchmarks, an emulated aarch64 board."""

from .tracker import RemoteError, check_key, parse_address, request_session, tracker_keys, tracker_summary

__all__ = ["RemoteError", "check_key", "parse_address", "request_session", "tracker_keys", "tracker_summary"]
