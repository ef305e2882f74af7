"""medgrad's engine: a define-by-run autograd on NumPy arrays, with layers, losses and optimizers.

Public API: Tensor, no_grad, functional (as F), nn, optim. `import engine` needs only NumPy.
"""

from __future__ import annotations

from engine import functional, nn, optim
from engine.errors import MedgradError
from engine.function import no_grad
from engine.tensor import Tensor

__all__ = ["MedgradError", "Tensor", "functional", "nn", "no_grad", "optim"]
__version__ = "0.1.0"
