"""Pure memory formulas, one module per component (model states today; activations and inference next)."""

from hfmem.memory.states import PRECISION_SPECS, compute_training

__all__ = ["PRECISION_SPECS", "compute_training"]
