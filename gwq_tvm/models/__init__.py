"""Bundled models and the data that ship with gwq-tvm."""
