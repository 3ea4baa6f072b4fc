"""Errors that gwq-tvm raises for things a user can fix.

Every error a user can cause (a bad file, bad data, a bad setting, an op we
cannot quantize) is a :class:`GwqError`; the CLI prints its message on one line
and exits non-zero.  Anything else is a bug in gwq-tvm.
"""


def last_line(err: BaseException) -> str:
    """The last non-blank line of ``err``'s message (where TVM and compilers put the cause), or its type name."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


class GwqError(Exception):
    """Base class of all user-facing gwq-tvm errors."""


class ConfigError(GwqError, ValueError):
    """A configuration value is out of range or inconsistent."""


class ModelError(GwqError):
    """A model file or module cannot be read or imported."""


class UnsupportedOpError(GwqError):
    """The model holds ops that cannot be quantized (and float fallback is off)."""


class CalibrationDataError(GwqError, ValueError):
    """Calibration or evaluation data is empty, non-finite or of the wrong shape."""


class PlanError(GwqError):
    """A QuantPlan is malformed or does not match the model it is applied to."""


class IntegerOnlyError(GwqError):
    """A program that should be integer-only still holds float ops."""
