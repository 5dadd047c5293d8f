"""hfmem: exact parameter counts and per-GPU memory of Hugging Face models, before you launch the job."""

from hfmem.api import estimate, hfmem_version
from hfmem.errors import ExitCode, HfmemError
from hfmem.types import (
    EngineEstimate,
    EngineSetup,
    InferenceEstimate,
    InferenceSetup,
    ParameterInfo,
    ParameterInventory,
    Report,
    ResolvedModel,
    StageMemory,
    TrainingEstimate,
    TrainingSetup,
)

__version__ = hfmem_version()

__all__ = [
    "estimate",
    "ExitCode",
    "HfmemError",
    "EngineEstimate",
    "EngineSetup",
    "InferenceEstimate",
    "InferenceSetup",
    "ResolvedModel",
    "ParameterInfo",
    "ParameterInventory",
    "Report",
    "StageMemory",
    "TrainingEstimate",
    "TrainingSetup",
    "__version__",
]
