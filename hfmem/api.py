"""The public API: ``estimate()`` composes model id → config → inventory → memory into a `Report`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from hfmem.errors import InvalidSetupError
from hfmem.memory import compute_training
from hfmem.types import ModelConfig, ParameterInventory, Report, TrainingSetup

__all__ = ["estimate", "hfmem_version"]


def hfmem_version() -> str:
    try:
        return version("hfmem")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def estimate(
    model: str | None = None,
    *,
    params: int | None = None,
    revision: str | None = None,
    token: str | None = None,
    trust_remote_code: bool = False,
    setup: TrainingSetup | None = None,
) -> Report:
    """Estimate per-GPU training memory for a model or a hypothetical parameter count.

    Args:
        model: a Hub repo id, a local folder holding config.json (or adapter_config.json), or a config.json path.
        params: plan for a dense model of this many parameters instead (no config, no torch).
        revision: Hub branch, tag or commit sha.
        token: Hub token (default: ``HF_TOKEN`` or the saved login). Never printed.
        trust_remote_code: allow the repo's own modelling code to run (off by default, never implied).
        setup: precision, optimizer, ZeRO stages, GPUs, offload; defaults to bf16-mixed AdamW, ZeRO 0-3, 1 GPU.

    Returns:
        A `Report` with the resolved model, its exact parameter inventory and per-GPU model-state memory.

    Raises:
        HfmemError: a subclass naming the cause and the fix (see `hfmem.errors`).

    Example:
        >>> report = estimate("meta-llama/Llama-2-7b-hf")  # doctest: +SKIP
        >>> report.inventory.total_params  # doctest: +SKIP
        6738415616
    """
    setup = setup or TrainingSetup()
    if (model is None) == (params is None):
        raise InvalidSetupError("give either a model or a parameter count (--params), not both or neither")
    if params is not None:
        if params <= 0:
            raise InvalidSetupError(f"--params must be positive, got {params}")
        resolved = ModelConfig(model_id=f"{params:,} parameters", source="params", config={})
        inventory = ParameterInventory.from_count(params)
    else:
        from hfmem.hub import fetch_remote_code, resolve_model
        from hfmem.inventory import count_parameters

        assert model is not None
        resolved = resolve_model(model, revision=revision, token=token)
        if trust_remote_code:
            resolved = fetch_remote_code(resolved, token=token)
        inventory = count_parameters(resolved, trust_remote_code=trust_remote_code)
    training = compute_training(inventory, setup)
    return Report(model=resolved, inventory=inventory, training=training, hfmem_version=hfmem_version())
