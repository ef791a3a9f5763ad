"""Plaintext PyTorch side of hecnn (no cryptography): HE-friendly activations, models, data,
training / distillation, and the small trained models bundled for the demo.

The encrypted compiler reads the models built here through ``torch.fx`` and the
:class:`~hecnn.nn.activations.PolyActivation` attributes (``degree``, ``coefficients()``,
``granularity``, ``range_*`` buffers, ``valid_range``).
"""

from hecnn.nn.activations import PolyActivation, Square, SwishPoly4, TrainablePoly
from hecnn.nn.models import ACTIVATIONS, MODELS, build_model

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "PolyActivation",
    "Square",
    "SwishPoly4",
    "TrainablePoly",
    "build_model",
]
