"""hecnn: privacy-preserving CNN inference over CKKS homomorphic encryption.

Layers (one-way dependencies): ``ckks`` (our vectorized RNS-CKKS) ← ``compile`` / ``runtime``;
``nn`` (PyTorch modules, no crypto) and ``approx`` (polynomial approximation maths) are
independent of the cryptography.
"""

from hecnn.errors import HecnnError

__version__ = "0.1.0"
__all__ = ["HecnnError", "__version__"]
