"""Exception types. Every error a user can cause is a ForceGPError with a one-line message.

The CLI turns these into ``forcegp: error: <message>`` and exit status 2 (bad input) or 1
(numerical or resource failure), without a traceback.
"""

from __future__ import annotations


class ForceGPError(Exception):
    """Base class of all errors forcegp raises on purpose."""

    exit_code = 1


class InputError(ForceGPError, ValueError):
    """A data file or option is unusable. The message names the file (and frame) and the problem."""

    exit_code = 2


class ModelFileError(ForceGPError, ValueError):
    """A model or checkpoint file is missing, corrupt, of another version, dtype or molecule."""

    exit_code = 2


class NumericalError(ForceGPError, ArithmeticError):
    """The GP algebra failed (Cholesky failed even with raised jitter, non-finite parameters)."""

    exit_code = 1


class ResourceError(ForceGPError, MemoryError):
    """A requested computation does not fit in the allowed memory, or too few devices exist."""

    exit_code = 1
