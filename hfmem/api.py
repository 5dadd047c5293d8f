"""The public API: ``estimate()`` composes model id → config → inventory → memory into a `Report`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from hfmem.errors import InvalidSetupError
from hfmem.limits import check_params, check_setup
from hfmem.memory.activations import activation_dtype, default_seq_len
from hfmem.memory.inference import DEFAULT_PREFILL_CHUNK, choose_scheme, compute_dtype, default_context, plan_inference
from hfmem.memory.methods import check_finetune
from hfmem.memory.parallel import check_parallel
from hfmem.memory.peak import plan_training
from hfmem.types import (
    ActivationProfile,
    InferenceEstimate,
    InferenceSetup,
    ModelConfig,
    ParameterInventory,
    Report,
    TrainingEstimate,
    TrainingSetup,
)

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
    find_max_batch: bool = False,
    training: bool = True,
    inference: InferenceSetup | None = None,
    checkpoint: bool = False,
) -> Report:
    """Estimate per-GPU training memory for a model or a hypothetical parameter count.

    Args:
        model: a Hub repo id, a local folder holding config.json (or adapter_config.json), or a config.json path.
        params: plan for a dense model of this many parameters instead (no config, no torch).
        revision: Hub branch, tag or commit sha.
        token: Hub token (default: ``HF_TOKEN`` or the saved login). Never printed.
        trust_remote_code: allow the repo's own modelling code to run (off by default, never implied).
        setup: precision, optimizer, ZeRO stages, GPUs, offload, micro-batch, sequence length, attention,
            checkpointing, overheads and the GPU to fit; defaults to bf16-mixed AdamW, ZeRO 0-3, 1 GPU, batch 1.
        find_max_batch: also search the largest micro-batch that fits ``setup.gpu`` (per stage).
        training: plan training (``False``: inference only).
        inference: also plan serving with these settings (weights, KV cache, prefill, overheads per GPU).
        checkpoint: read the checkpoint's safetensors headers (Hub or local folder; no weights) and compare the
            stored tensors with the built model. Skipped with a note offline or for the bundled catalogue.

    Returns:
        A `Report` with the resolved model, its exact parameter inventory and per-GPU peak memory per stage.

    Raises:
        HfmemError: a subclass naming the cause and the fix (see `hfmem.errors`).

    Example:
        >>> report = estimate("meta-llama/Llama-2-7b-hf")  # doctest: +SKIP
        >>> report.inventory.total_params  # doctest: +SKIP
        6738415616
    """
    setup = setup or TrainingSetup()
    check_setup(setup, inference)
    if (model is None) == (params is None):
        raise InvalidSetupError("give either a model or a parameter count (--params), not both or neither")
    check_finetune(setup.finetune, has_model=model is not None)
    if params is not None:
        if params <= 0:
            raise InvalidSetupError(f"--params must be positive, got {params}")
        check_params(params)
        resolved = ModelConfig(model_id=f"{params:,} parameters", source="params", config={})
        inventory = ParameterInventory.from_count(params)
    else:
        from hfmem.hub import fetch_remote_code, resolve_model
        from hfmem.inventory import count_parameters

        assert model is not None
        resolved = resolve_model(model, revision=revision, token=token)
        if trust_remote_code:
            resolved = fetch_remote_code(resolved, token=token)
        inventory = count_parameters(resolved, trust_remote_code=trust_remote_code, finetune=setup.finetune)
    base_inventory = inventory
    lora = setup.finetune.method in ("lora", "qlora")
    if lora and resolved.source != "params" and (inference is not None or checkpoint):
        # Serving and the checkpoint concern the base model; peft renames its modules and adds adapters.
        from hfmem.inventory import count_parameters

        base_inventory = count_parameters(resolved, trust_remote_code=trust_remote_code)
    if not training and inference is None:
        raise InvalidSetupError("nothing to plan: ask for training, inference or both")
    plan = (
        _plan(resolved, inventory, setup, find_max_batch=find_max_batch, trust_remote_code=trust_remote_code)
        if training
        else None
    )
    notes: list[str] = []
    served = None
    if inference is not None:
        if resolved.source == "params":
            if not training:
                raise InvalidSetupError(
                    "inference memory needs the model's KV-cache layout, which --params does not give; pass a model id"
                )
            notes.append("inference skipped: --params gives no KV-cache layout (pass a model id)")
        else:
            served = _serve(resolved, base_inventory, inference, trust_remote_code=trust_remote_code)
            if lora:
                notes.append("inference plans the base model with the LoRA adapters merged (unmerged, they add theirs)")
    comparison = None
    if checkpoint and resolved.source != "params":
        comparison, note = _checkpoint(resolved, base_inventory, served, token=token)
        if note:
            notes.append(note)
    return Report(
        model=resolved,
        inventory=inventory,
        training=plan,
        hfmem_version=hfmem_version(),
        notes=tuple(notes),
        inference=served,
        checkpoint=comparison,
    )


def _serve(
    resolved: ModelConfig, inventory: ParameterInventory, setup: InferenceSetup, *, trust_remote_code: bool
) -> InferenceEstimate:
    """Measure the cache layout and a prefill chunk on the meta device, then plan the serving memory."""
    from hfmem.inventory import profile_inference

    if setup.batch_size < 1 or (setup.prefill_chunk is not None and setup.prefill_chunk < 1):
        raise InvalidSetupError("--batch-size and --prefill-chunk must be at least 1")
    scheme, _ = choose_scheme(resolved.config, setup, inventory)
    context = setup.context if setup.context is not None else default_context(resolved.config)[0]
    chunk = setup.prefill_chunk if setup.prefill_chunk is not None else min(context, DEFAULT_PREFILL_CHUNK)
    profile = profile_inference(
        resolved,
        batch_size=setup.batch_size,
        prefill_tokens=chunk,
        dtype=compute_dtype(scheme, inventory),
        trust_remote_code=trust_remote_code,
    )
    return plan_inference(resolved.config, inventory, profile, setup)


def _checkpoint(
    resolved: ModelConfig, inventory: ParameterInventory, served: InferenceEstimate | None, *, token: str | None
) -> tuple[object | None, str | None]:
    """The stored tensors compared with the built model, or None and why it was skipped."""
    from hfmem.hub import fetch_checkpoint
    from hfmem.memory.checkpoint import compare_checkpoint

    summary, note = fetch_checkpoint(resolved, token=token)
    if summary is None:
        return None, note
    layers = resolved.config.get("num_hidden_layers")
    scheme = served.weights.scheme if served is not None else None
    comparison = compare_checkpoint(
        summary, inventory, num_hidden_layers=layers if isinstance(layers, int) else None, scheme=scheme
    )
    return comparison, note


def _plan(
    resolved: ModelConfig,
    inventory: ParameterInventory,
    setup: TrainingSetup,
    *,
    find_max_batch: bool,
    trust_remote_code: bool,
) -> TrainingEstimate:
    """Measure the activations (a model only) and plan the peak of every stage."""
    if setup.batch_size < 1 or (setup.seq_len is not None and setup.seq_len < 1):
        raise InvalidSetupError("--batch-size and --seq-len must be at least 1")
    if setup.dropout is not None and not 0.0 <= setup.dropout < 1.0:
        raise InvalidSetupError(f"--dropout must be in [0, 1), got {setup.dropout}")
    if find_max_batch and setup.gpu is None:
        raise InvalidSetupError("--max-batch needs a GPU to fill: pass --gpu NAME or --gpu-memory SIZE")
    if resolved.source == "params":
        check_parallel(setup, inventory)
        return plan_training(inventory, setup, None)
    from hfmem.inventory import profile_activations

    if setup.seq_len is not None:
        seq_len, why = setup.seq_len, "--seq-len"
    else:
        seq_len, why = default_seq_len(resolved.config)
    check_parallel(setup, inventory, resolved.config, seq_len=seq_len)
    # Context parallelism: each GPU runs its 1/cp of the sequence (Megatron splits it into 2·cp chunks for load
    # balance; the tokens per GPU are the same).
    local_seq_len = seq_len // setup.parallel.cp

    def profile(batch: int) -> ActivationProfile:
        return profile_activations(
            resolved,
            batch_size=batch,
            seq_len=local_seq_len,
            attn=setup.attn,
            dtype=activation_dtype(setup.precision),
            dropout=setup.dropout,
            trust_remote_code=trust_remote_code,
            finetune=setup.finetune,
            tensor_parallel=setup.parallel.tp > 1,
        )

    measured = profile(setup.batch_size)
    pair = None
    if find_max_batch:
        one = measured if setup.batch_size == 1 else profile(1)
        two = measured if setup.batch_size == 2 else profile(2)
        pair = (one, two)
    return plan_training(inventory, setup, measured, batch_profiles=pair, seq_len=seq_len, seq_len_source=why)
