"""Every error hecnn raises on bad input derives from :class:`HecnnError`.

Callers (the CLI, the HTTP service) catch ``HecnnError`` and report its message; anything else
escaping is a bug in hecnn.
"""


class HecnnError(Exception):
    """Base class of all errors hecnn raises deliberately."""


class ParameterError(HecnnError, ValueError):
    """Invalid or mismatched CKKS parameters (ring degree, moduli, scale)."""


class SecurityError(ParameterError):
    """A parameter set below the 128-bit HE Standard bound without the explicit test-only switch."""


class ShapeError(HecnnError, ValueError):
    """An array, batch or weight matrix has the wrong shape."""


class LevelError(HecnnError):
    """The modulus chain is exhausted, or operands sit at levels that cannot be aligned."""


class ScaleError(HecnnError):
    """Operand scales are incompatible, or a scale would overflow the remaining modulus."""


class MissingKeyError(HecnnError, KeyError):
    """A required key (relinearization, Galois for a rotation step) is missing."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class SerializationError(HecnnError, ValueError):
    """Truncated, corrupted, foreign or wrongly-typed serialized data."""


class UnsupportedLayerError(HecnnError):
    """The compiler met an operation it cannot evaluate homomorphically."""


class ServiceError(HecnnError):
    """The hecnn server refused a request or could not be reached (``status`` is the HTTP code,
    0 when no answer came)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class DistributedError(HecnnError):
    """A job on a Ray cluster could not complete: Ray is missing, the cluster cannot be reached,
    or a task kept failing (its worker or node died) after every retry Ray was allowed."""
