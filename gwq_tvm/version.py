"""The gwq-tvm version (a module of its own so that pure-numpy parts can name it without importing TVM)."""

__version__ = "0.1.0"
