"""hecnn: privacy-preserving CNN inference over CKKS homomorphic encryption.

Layers (one-way dependencies): ``ckks`` (our vectorized RNS-CKKS) ← ``compile`` / ``runtime``;
``nn`` (PyTorch modules, no crypto) and ``approx`` (polynomial approximation maths) are
independent of the cryptography.
"""

from hecnn.errors import HecnnError

__version__ = "0.1.0"
__all__ = ["HecnnError", "__version__"]


def __getattr__(name: str) -> object:
    """PEP 562: ``hecnn.approximate`` and ``hecnn.load`` (which need torch) are imported on
    first use."""
    if name == "approximate":
        from hecnn.approx.convert import approximate

        return approximate
    if name == "load":
        from hecnn.check import load

        return load
    raise AttributeError(f"module 'hecnn' has no attribute {name!r}")
