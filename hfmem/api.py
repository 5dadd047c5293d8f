"""The public API: ``estimate()`` composes model id → config → inventory → memory into a `Report`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from hfmem.cache import ProfileCache, cache_key
from hfmem.errors import InvalidSetupError, NoKvCacheError, UnsupportedArchitectureError
from hfmem.limits import check_config, check_params
from hfmem.memory.activations import activation_dtype, default_seq_len
from hfmem.memory.inference import DEFAULT_PREFILL_CHUNK, choose_scheme, compute_dtype, plan_inference, serving_context
from hfmem.memory.peak import NO_MODEL_NOTE, plan_training
from hfmem.memory.states import PRECISION_SPECS
from hfmem.rules import check_engine, check_parallel, check_setup, check_target_len
from hfmem.types import (
    ActivationProfile,
    EngineEstimate,
    EngineSetup,
    FinetuneSettings,
    InferenceEstimate,
    InferenceProfile,
    InferenceSetup,
    ParameterInventory,
    Report,
    ResolvedModel,
    TrainingEstimate,
    TrainingSetup,
)

__all__ = ["estimate", "resolve", "with_architecture", "Prepared", "hfmem_version", "adapter_finetune"]

T = TypeVar("T")


@functools.cache
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
    cache: bool = True,
    engine: EngineSetup | None = None,
    architecture: str | None = None,
) -> Report:
    """Estimate per-GPU training memory for a model or a hypothetical parameter count.

    Args:
        model: a Hub repo id, a local folder holding config.json (or adapter_config.json), or a config.json path.
        params: plan for a dense model of this many parameters instead (no config, no torch).
        revision: Hub branch, tag or commit sha.
        token: Hub token (default: ``HF_TOKEN`` or the saved login). Never printed.
        trust_remote_code: allow the repo's own modelling code to run (off by default, never implied). Off, a config
            that needs it is estimated as the nearest native architecture, with a note (`inventory.native_fallback`).
        setup: precision, optimizer, ZeRO stages, GPUs, offload, micro-batch, sequence length, attention,
            checkpointing, overheads and the GPU to fit; defaults to bf16-mixed AdamW, ZeRO 0-3, 1 GPU, batch 1.
            When ``model`` is a PEFT LoRA adapter and ``setup.finetune`` is the default ``FinetuneSettings()``, the
            adapter's own LoRA is planned (its ``r``, ``lora_alpha``, ``target_modules``, ``modules_to_save``,
            ``use_dora``; `adapter_finetune`), with a note; any other ``setup.finetune`` is planned as given.
        find_max_batch: also search the largest micro-batch that fits ``setup.gpu`` (per stage).
        training: plan training (``False``: inference only).
        inference: also plan serving with these settings (weights, KV cache, prefill, overheads per GPU).
        checkpoint: read the checkpoint's safetensors headers (Hub or local folder; no weights) and compare the
            stored tensors with the built model. Skipped with a note offline or for the bundled catalogue.
        cache: read and write the persistent cache of inventories and traces (`hfmem.cache`); off: always build.
        engine: also reproduce a serving engine's start-up accounting (vLLM 0.11.0 or SGLang 0.4.4: KV budget,
            blocks, tokens, maximum concurrency, whether it starts; `hfmem.memory.engine`) on ``engine.gpu`` (or
            ``inference.gpu``). The report's ``inference`` is then transformers' plan for one request of the
            engine's ``max_model_len``, traced at the engine's batched tokens, and ``engine`` the engine's.
        architecture: build this transformers class instead of the one config.json names (`with_architecture`):
            ``"BertForSequenceClassification"`` for a classifier fine-tuned from ``bert-large-uncased``.

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
    # Refused before anything is fetched; `Prepared.report` checks again for callers that come through it.
    check_setup(setup, inference, has_model=model is not None, training=training, find_max_batch=find_max_batch)
    if engine is not None:
        check_engine(_engine_gpu(engine, inference), has_model=model is not None)
    if (model is None) == (params is None):
        raise InvalidSetupError("give either a model or a parameter count (--params), not both or neither")
    if params is not None:
        if params <= 0:
            raise InvalidSetupError(f"--params must be positive, got {params}")
        check_params(params)
        resolved = ResolvedModel(model_id=f"{params:,} parameters", source="params", config={})
    else:
        assert model is not None
        resolved = resolve(model, revision=revision, token=token, trust_remote_code=trust_remote_code)
        resolved = with_architecture(resolved, architecture)
    prepared = Prepared(resolved, trust_remote_code=trust_remote_code, cache=cache, params=params)
    return prepared.report(
        setup,
        training=training,
        inference=inference,
        find_max_batch=find_max_batch,
        checkpoint=checkpoint,
        token=token,
        engine=engine,
    )


def _engine_gpu(engine: EngineSetup, inference: InferenceSetup | None) -> EngineSetup:
    """``engine`` with the inference plan's GPU when it names none itself."""
    if engine.gpu is None and inference is not None and inference.gpu is not None:
        return replace(engine, gpu=inference.gpu)
    return engine


def resolve(
    model: str, *, revision: str | None = None, token: str | None = None, trust_remote_code: bool = False
) -> ResolvedModel:
    """The model's config (Hub, local folder or bundled catalogue), with its code when ``trust_remote_code``."""
    from hfmem.hub import fetch_remote_code, resolve_model

    resolved = resolve_model(model, revision=revision, token=token)
    if trust_remote_code:
        resolved = fetch_remote_code(resolved, token=token)
    return resolved


def with_architecture(resolved: ResolvedModel, architecture: str | None) -> ResolvedModel:
    """``resolved`` built as ``architecture``, a transformers class (``--architecture``), with a note; None: as is.

    Which class hfmem builds: the first name in config.json's ``architectures`` when transformers has it, else the
    model type's causal-LM, seq2seq-LM, masked-LM and base classes (`hfmem.build.classes._native_classes`). A
    checkpoint's config names the class it was saved from (``bert-large-uncased``: ``BertForMaskedLM``), not the
    head a fine-tune puts on it (``AutoModelForSequenceClassification``); naming the class here builds and traces
    that head. A name transformers does not have is refused when the model is built.
    """
    if architecture is None:
        return resolved
    if resolved.source == "params":
        raise InvalidSetupError("--architecture names the class to build from a config; --params has none")
    named = resolved.architecture
    note = f"built as {architecture} (--architecture); config.json names {named or 'no class'}"
    return replace(
        resolved,
        config={**resolved.config, "architectures": [architecture]},
        notes=(*resolved.notes, note) if named != architecture else resolved.notes,
        architecture_given=architecture,
    )


_FINETUNE_FIELDS = tuple(f.name for f in fields(FinetuneSettings))


def adapter_finetune(
    model: ResolvedModel, given: FinetuneSettings, given_fields: Collection[str] | None = None
) -> tuple[FinetuneSettings, str | None]:
    """What to plan for a model that may be a PEFT LoRA adapter: the settings and a note saying which and why.

    ``given_fields`` names the `FinetuneSettings` fields the caller chose (the CLI: the options typed or set by a
    launch file, whose names are the fields'); those come from ``given``, the rest from the adapter's own
    (``model.adapter``). ``None`` (the Python API): the adapter's settings when ``given`` is the default
    ``FinetuneSettings()``, else ``given`` whole. A method other than lora/qlora chosen over an adapter plans
    ``given`` as it is (the base model, trained that way). Not an adapter: ``given``, no note.
    """
    adapter = model.adapter
    if adapter is None:
        return given, None
    origin = model.adapter_origin or "adapter_config.json"
    if given_fields is None and given != FinetuneSettings():
        return given, f"the adapter's own LoRA ({origin}) is not planned: the setup's FinetuneSettings were given"
    chosen = [name for name in _FINETUNE_FIELDS if name in (given_fields or ())]
    merged = replace(adapter, **{name: getattr(given, name) for name in chosen})
    if not merged.uses_peft:
        return given, f"the adapter's own LoRA ({origin}) is not planned: --method {given.method} was chosen"
    targets = ",".join(merged.lora_targets) if merged.lora_targets is not None else "peft's default"
    note = (
        f"planned the adapter's own LoRA: r={merged.lora_rank}, targets={targets}, "
        f"modules_to_save={','.join(merged.modules_to_save) or 'none'}, DoRA={'yes' if merged.dora else 'no'}; "
        f"from {origin}"
    )
    overridden = [name for name in chosen if getattr(given, name) != getattr(adapter, name)]
    if overridden:
        flags = [
            f"--{name.replace('_', '-')} {_shown(getattr(given, name))} (adapter: {_shown(getattr(adapter, name))})"
            for name in overridden
        ]
        note += "; overridden by " + ", ".join(flags)
    return merged, note


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "default" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class NativeFallback:
    """What `Prepared._native` caches: the config as the nearest native architecture, and the notes it added."""

    config: dict[str, Any]
    notes: tuple[str, ...]


class Prepared:
    """One resolved model and everything measured on it, memoised: the plans of many setups reuse one inventory
    and one trace per distinct (batch, sequence, …), and the persistent cache (`hfmem.cache`) keeps them for the
    next process, so a repeat query never imports torch.

    ``on_build(model_id)`` is called once, before the first thing that is not in the cache is built (the CLI says
    so on stderr: a first query imports torch and transformers and traces the model, which takes seconds).
    """

    def __init__(
        self,
        resolved: ResolvedModel,
        *,
        trust_remote_code: bool = False,
        cache: bool = True,
        params: int | None = None,
        on_build: Callable[[str], None] | None = None,
    ) -> None:
        self.resolved = resolved
        self.on_build = on_build
        self.trust_remote_code = trust_remote_code
        self.cache = cache
        self.params = params
        self._memos: dict[FinetuneSettings, ProfileCache] = {}
        self._stored: tuple[object | None, str | None] | None = None  # the checkpoint's headers, fetched once
        self._keyed_by = resolved  # the config as fetched: the cache key, whatever the fallback rewrites
        if params is not None:
            if params <= 0:
                raise InvalidSetupError(f"--params must be positive, got {params}")
            check_params(params)
        if resolved.source != "params":
            check_config(resolved.config, resolved.model_id)  # before hashing, caching or building it
        if not trust_remote_code and resolved.source != "params":
            self.resolved = self._native(resolved)

    def _native(self, resolved: ResolvedModel) -> ResolvedModel:
        """Custom code runs only when trusted; otherwise the nearest native architecture, with a note
        (`hfmem.build.fallback.native_fallback`). Cached with the model, so a repeat query does not import transformers.
        """

        def build() -> NativeFallback:
            from hfmem.build.fallback import native_fallback

            native = native_fallback(resolved)
            added = tuple(note for note in native.notes if note not in resolved.notes)
            return NativeFallback(config=dict(native.config), notes=added)

        found = self._measured(FinetuneSettings(), "native", {}, build, NativeFallback)
        return replace(resolved, config=found.config, notes=(*resolved.notes, *found.notes))

    def memo(self, finetune: FinetuneSettings) -> ProfileCache:
        """The measurements of the model trained by ``finetune`` (in memory, and on disk unless disabled)."""
        if finetune not in self._memos:
            if self.resolved.source == "params":
                self._memos[finetune] = ProfileCache(None, persistent=False)
            else:
                key = cache_key(self._keyed_by, finetune, trust_remote_code=self.trust_remote_code)
                self._memos[finetune] = ProfileCache(key, persistent=self.cache)
        return self._memos[finetune]

    def _measured(
        self, finetune: FinetuneSettings, kind: str, args: dict[str, Any], build: Callable[[], T], cls: type[T]
    ) -> T:
        """``memo(finetune).get_or_build``, calling ``on_build`` before the first build of this model."""

        def announced() -> T:
            if self.on_build is not None:
                on_build, self.on_build = self.on_build, None
                on_build(self.resolved.model_id)
            return build()

        return self.memo(finetune).get_or_build(kind, args, announced, cls)

    def inventory(self, finetune: FinetuneSettings) -> ParameterInventory:
        if self.params is not None:
            return ParameterInventory.from_count(self.params)

        def build() -> ParameterInventory:
            from hfmem.build.inventory import count_parameters

            return count_parameters(self.resolved, trust_remote_code=self.trust_remote_code, finetune=finetune)

        return self._measured(finetune, "inventory", {}, build, ParameterInventory)

    def report(
        self,
        setup: TrainingSetup,
        *,
        training: bool = True,
        inference: InferenceSetup | None = None,
        find_max_batch: bool = False,
        checkpoint: bool = False,
        token: str | None = None,
        finetune_given: Collection[str] | None = None,
        engine: EngineSetup | None = None,
    ) -> Report:
        """Plan ``setup`` (and ``inference``) for this model; see `estimate`. For a PEFT LoRA adapter,
        ``finetune_given`` names the fine-tuning settings the caller chose over the adapter's (`adapter_finetune`).
        """
        resolved = self.resolved
        finetune, adapter_note = adapter_finetune(resolved, setup.finetune, finetune_given)
        setup = replace(setup, finetune=finetune)
        check_setup(  # the setup rules (`hfmem.rules`), before anything is built
            setup, inference, has_model=resolved.source != "params", training=training, find_max_batch=find_max_batch
        )
        if engine is not None:
            engine = _engine_gpu(engine, inference)
            check_engine(engine, has_model=resolved.source != "params")
            if engine.engine == "transformers":
                engine = None
            else:
                inference = inference or InferenceSetup()
        inventory = self.inventory(setup.finetune)
        # Serving and the checkpoint concern the base model; peft renames its modules and adds adapters.
        lora = setup.finetune.method in ("lora", "qlora")
        base = FinetuneSettings() if lora else setup.finetune
        plan = self._plan(inventory, setup, find_max_batch=find_max_batch) if training else None
        notes: list[str] = [adapter_note] if adapter_note else []
        served = None
        unserved = None
        engine_plan = None
        if inference is not None:
            if resolved.source == "params":
                if not training:
                    raise InvalidSetupError(
                        "inference memory needs the model's KV-cache layout, which --params does not give; "
                        "pass a model id"
                    )
                notes.append("inference skipped: --params gives no KV-cache layout (pass a model id)")
            else:
                base_inventory = self.inventory(base)
                try:
                    if engine is not None:
                        served, engine_plan = self._engine(base_inventory, base, inference, engine)
                    else:
                        served = self._serve(base_inventory, base, inference)
                except NoKvCacheError as e:
                    # Encoder-only: nothing to serve with a cache. Next to a training plan that is a note; asked for
                    # alone it is an error (the one question asked has no answer).
                    if not training:
                        raise
                    notes.append(f"serving plan skipped: {e.reason} (pass --training-only to skip it silently)")
                except UnsupportedArchitectureError as e:  # built and counted, but it cannot run with a cache
                    unserved = str(e)
                if lora and served is not None:
                    notes.append(
                        "inference plans the base model with the LoRA adapters merged (unmerged, they add theirs)"
                    )
        comparison = None
        if checkpoint and resolved.source != "params":
            comparison, note = self._checkpoint(self.inventory(base), served, token=token)
            if note:
                notes.append(note)
        return Report(
            model=resolved,
            inventory=inventory,
            training=plan,
            hfmem_version=hfmem_version(),
            notes=(*resolved.notes, *notes),  # the model's (fallbacks, adapters) first: all of them on the result
            inference=served,
            checkpoint=comparison,
            inference_unmeasured=unserved,
            engine=engine_plan,
        )

    def _serve(
        self, inventory: ParameterInventory, finetune: FinetuneSettings, setup: InferenceSetup
    ) -> InferenceEstimate:
        """Measure the cache layout and a prefill chunk on the meta device, then plan the serving memory."""
        resolved = self.resolved
        scheme, _ = choose_scheme(resolved.config, setup, inventory)
        built = inventory.context_tokens
        context = serving_context(resolved.config, setup, built)[0]
        chunk = setup.prefill_chunk if setup.prefill_chunk is not None else min(context, DEFAULT_PREFILL_CHUNK)
        args: dict[str, Any] = {
            "batch_size": setup.batch_size,
            "prefill_tokens": chunk,
            "dtype": compute_dtype(scheme, inventory),
        }
        if inventory.image_inputs:
            args["images_per_sample"] = setup.images_per_sample

        def build() -> InferenceProfile:
            from hfmem.build.serve import profile_inference

            return profile_inference(resolved, trust_remote_code=self.trust_remote_code, **args)

        profile = self._measured(finetune, "inference", args, build, InferenceProfile)
        served = plan_inference(resolved.config, inventory, profile, setup)
        note = image_note(inventory, profile, setup.images_per_sample, "prefill chunk")
        return replace(served, notes=(*served.notes, note)) if note else served

    def _engine(
        self, inventory: ParameterInventory, finetune: FinetuneSettings, inference: InferenceSetup, engine: EngineSetup
    ) -> tuple[InferenceEstimate, EngineEstimate]:
        """The engine's accounting, from one trace: transformers' plan of one request of the engine's longest length,
        its prefill traced at the engine's batched tokens (what the engine profiles), then `plan_engine` on it."""
        from hfmem.memory.engine import engine_batched_tokens, plan_engine, vllm_default_max_model_len

        gpu = engine.gpu
        assert gpu is not None  # `check_engine`
        config = self.resolved.config
        length = engine.max_model_len or engine.context_length or vllm_default_max_model_len(config)
        served_setup = replace(
            inference,
            context=length,
            batch_size=1,
            tp=engine.tp,
            prefill_chunk=engine_batched_tokens(engine, gpu.usable_bytes, gpu.name),
            gpu=gpu,
            kv_dtype="fp8" if engine.kv_cache_dtype == "fp8" else None,
        )
        served = self._serve(inventory, finetune, served_setup)
        assert served.profile is not None
        plan = plan_engine(
            config,
            inventory,
            served.profile,
            served.weights.scheme,
            engine,
            cuda_context_bytes=inference.overheads.cuda_context_bytes,
        )
        return served, plan

    def _checkpoint(
        self, inventory: ParameterInventory, served: InferenceEstimate | None, *, token: str | None
    ) -> tuple[object | None, str | None]:
        """The stored tensors compared with the built model, or None and why it was skipped."""
        from hfmem.hub import fetch_checkpoint
        from hfmem.memory.checkpoint import compare_checkpoint

        resolved = self.resolved
        if self._stored is None:
            self._stored = fetch_checkpoint(resolved, token=token)
        summary, note = self._stored
        if summary is None:
            return None, note
        layers = resolved.config.get("num_hidden_layers")
        scheme = served.weights.scheme if served is not None else None
        comparison = compare_checkpoint(
            summary,  # type: ignore[arg-type]
            inventory,
            num_hidden_layers=layers if isinstance(layers, int) else None,
            scheme=scheme,
        )
        return comparison, note

    def _plan(self, inventory: ParameterInventory, setup: TrainingSetup, *, find_max_batch: bool) -> TrainingEstimate:
        """Measure the activations (a model only) and plan the peak of every stage."""
        resolved = self.resolved
        check_target_len(setup, inventory)
        if resolved.source == "params":
            # A count has no model to trace: activations and logits are unknown, so no "fits" beyond "the states
            # alone do not fit" (the same plan as a model that could not be traced).
            check_parallel(setup, inventory)
            return _states_only(inventory, setup, NO_MODEL_NOTE, seq_len=None, seq_len_source=None)
        if setup.seq_len is not None:
            seq_len, why = setup.seq_len, "--seq-len"
        else:
            seq_len, why = default_seq_len(resolved.config, inventory.context_tokens)
        check_parallel(setup, inventory, resolved.config, seq_len=seq_len)
        # Context parallelism: each GPU runs its 1/cp of the sequence (Megatron splits it into 2·cp chunks for load
        # balance; the tokens per GPU are the same).
        local_seq_len = seq_len // setup.parallel.cp

        def profile(batch: int) -> ActivationProfile:
            args = {
                "batch_size": batch,
                "seq_len": local_seq_len,
                "attn": setup.attn,
                "dtype": activation_dtype(setup.precision),
                "dropout": setup.dropout,
                "tensor_parallel": setup.parallel.tp > 1,
            }
            if inventory.image_inputs:
                args["images_per_sample"] = setup.images_per_sample
            autocast = PRECISION_SPECS[setup.precision].autocast
            if autocast is not None:  # amp-*: the fp32 model traced under CUDA autocast to this dtype
                args["autocast"] = autocast.torch_name
            if setup.target_len is not None:
                args["target_len"] = setup.target_len

            def build() -> ActivationProfile:
                from hfmem.build.trace import profile_activations

                return profile_activations(
                    resolved, trust_remote_code=self.trust_remote_code, finetune=setup.finetune, **args
                )

            return self._measured(setup.finetune, "activations", args, build, ActivationProfile)

        try:
            measured = profile(setup.batch_size)
        except UnsupportedArchitectureError as e:  # built and counted, but it cannot be traced
            return _states_only(inventory, setup, str(e), seq_len=seq_len, seq_len_source=why)
        pair = None
        if find_max_batch:
            pair = (profile(1), profile(2))
        plan = plan_training(inventory, setup, measured, batch_profiles=pair, seq_len=seq_len, seq_len_source=why)
        notes = [image_note(inventory, measured, setup.images_per_sample, "sample"), head_note(measured)]
        added = tuple(note for note in notes if note)
        return replace(plan, notes=(*plan.notes, *added)) if added else plan


def _states_only(
    inventory: ParameterInventory,
    setup: TrainingSetup,
    reason: str,
    *,
    seq_len: int | None,
    seq_len_source: str | None,
) -> TrainingEstimate:
    """The plan of a model that was built (its inventory is exact) but could not be traced: model states and
    overheads per stage, activations unknown (``unmeasured``). A stage fits only as far as is known: ``False`` when
    the states alone exceed the GPU, else None; headroom, smallest GPU count and largest micro-batch are unknown.
    """
    plan = plan_training(inventory, setup, None, seq_len=seq_len, seq_len_source=seq_len_source)
    stages = tuple(
        replace(
            stage,
            fits=False if stage.fits is False else None,
            headroom_bytes=None,
            min_gpus=None,
            max_batch_size=None,
        )
        for stage in plan.stages
    )
    notes = tuple(note for note in plan.notes if note != NO_MODEL_NOTE)
    return replace(plan, stages=stages, notes=notes, unmeasured=reason)


def head_note(profile: ActivationProfile) -> str | None:
    """What a task head other than an LM head was traced with (its labels; how --batch-size maps), else None."""
    from hfmem.build.trace import MULTIPLE_CHOICE_CHOICES  # a constant; torch is imported lazily inside trace

    if profile.head == "multiple-choice":
        return (
            f"multiple-choice head: each of the {profile.batch_size} question(s) (--batch-size) runs "
            f"{MULTIPLE_CHOICE_CHOICES} choices (SWAG's, transformers' multiple-choice guide), so the encoder sees "
            f"{profile.batch_size * MULTIPLE_CHOICE_CHOICES} sequences of {profile.seq_len:,} tokens"
        )
    labels = {
        "sequence-classification": "one label per sequence",
        "token-classification": "one label per token",
        "question-answering": "start and end positions per sequence",
    }.get(profile.head)
    if profile.head == "none":
        return "traced without labels: the class has no task head or loss (--architecture names one to train)"
    if labels is None:
        return None
    return f"{profile.head.replace('-', ' ')} head traced with {labels}; its logits are the head's few scores"


def image_note(
    inventory: ParameterInventory, profile: ActivationProfile | InferenceProfile, asked: int, where: str
) -> str | None:
    """What a model that takes images was traced with: its images, or why its image tokens and vision tower's
    activations are not counted. None for a text-only model."""
    if not inventory.image_inputs:
        return None
    if profile.images_per_sample:
        fills = f"; each fills {profile.image_tokens:,} of the tokens" if profile.image_tokens else ""
        return (
            f"{profile.images_per_sample} default image(s) per {where} traced through the vision tower (the vision "
            f"config's image_size){fills} (--images-per-sample to change)"
        )
    why = "--images-per-sample 0" if asked <= 0 else (profile.images_not_traced or "it was traced on token ids only")
    return (
        f"image tokens and the vision tower's activations are not counted ({why}); the {where} is token ids only, "
        "the vision tower's parameters are counted"
    )
