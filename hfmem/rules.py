"""Setup rules, in one place: which combinations of options exist, checked once at the API boundary.

`hfmem.api` runs `check_setup` on every plan before anything is fetched, built or computed, and `check_parallel`
once the model's inventory is known; the CLI and the page only translate input into `TrainingSetup` /
`InferenceSetup` and rely on these. Defaults that depend on other settings (which ZeRO stages a setup reports)
are derived here too, so the API and the CLI give the same rows.

Pure: no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hfmem.errors import InvalidSetupError
from hfmem.limits import MAX_BATCH, MAX_DEGREE, MAX_TOKENS
from hfmem.limits import check_setup as check_bounds
from hfmem.types import ENGINES, EngineSetup, FinetuneSettings, InferenceSetup, ParameterInventory, TrainingSetup

__all__ = [
    "FSDP_ZERO_STAGE",
    "MAX_DROPOUT_EXCLUSIVE",
    "MAX_FRAGMENTATION",
    "planned_stages",
    "stages_alike",
    "check_setup",
    "check_finetune",
    "check_recompute",
    "check_parallel",
    "check_target_len",
    "check_engine",
    "VLLM_BLOCK_SIZES",
]

#: ``--fsdp`` → the ZeRO stage with the same sharding (torch ``ShardingStrategy`` docstring; REFERENCE §2.5):
#: FULL_SHARD = ZeRO-3, SHARD_GRAD_OP = ZeRO-2, NO_SHARD = DDP (0), HYBRID_SHARD = ZeRO-3 inside a node.
FSDP_ZERO_STAGE = {"full_shard": 3, "shard_grad_op": 2, "no_shard": 0, "hybrid_shard": 3}

#: The optimizers bitsandbytes implements (their states live on the GPU; CPU-Adam cannot run them).
BNB_OPTIMIZERS = ("adamw-8bit", "paged-adamw", "paged-adamw-8bit")

#: ``--dropout`` is a probability below 1 (``torch.nn.functional.dropout`` scales kept values by 1/(1 − p)).
MAX_DROPOUT_EXCLUSIVE = 1.0
#: ``--fragmentation``: allocator slack as a fraction of the allocated peak, at most all of it.
MAX_FRAGMENTATION = 1.0

#: config.json keys of the attention heads and the key/value heads, across architectures.
HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")
KV_HEAD_KEYS = ("num_key_value_heads", "num_kv_heads", "multi_query_group_num")


def planned_stages(setup: TrainingSetup) -> tuple[int, ...]:
    """The ZeRO stages a plan reports: ``setup.zero_stages``, or every stage the setup allows.

    FSDP names its own sharding (one row, `FSDP_ZERO_STAGE`); optimizer offload needs a stage ≥ 1 (DeepSpeed's
    ``offload_optimizer``), parameter offload stage 3 (``offload_param``); DeepSpeed's estimator covers stages 2
    and 3 only (``estimate_zero2/zero3_model_states_mem_needs``).
    """
    if setup.zero_stages is not None:
        return setup.zero_stages
    if setup.parallel.fsdp is not None:
        return (FSDP_ZERO_STAGE[setup.parallel.fsdp],)
    if setup.optimizer_in_backward:  # DeepSpeed's ZeRO steps its own optimizer after backward (`_check_optimizer`)
        return (0,)
    stages = {"none": (0, 1, 2, 3), "optimizer": (1, 2, 3), "optimizer+params": (3,)}[setup.offload]
    if setup.accounting == "deepspeed":
        stages = tuple(s for s in stages if s in (2, 3))
    return stages


def stages_alike(setup: TrainingSetup) -> bool:
    """Whether the ZeRO stages of a plan cannot differ in what they shard, so one row says it all: sharding degree
    1 for dense and expert parameters (one GPU, or every GPU in a TP/PP/CP group), no offload (whose stages move
    different states to the CPU), the stages not asked for (``--zero``), no FSDP and hfmem's own accounting.

    Stages 1-3 then differ from ZeRO-0 only by DeepSpeed's buffers (the fp32 gradient partition at the step, the
    ZeRO-3 prefetch), which a one-GPU run does not launch: the table shows ZeRO-0 (plain data parallel) with a
    note, ``--check`` gates on it, and the JSON keeps every stage planned.
    """
    return (
        setup.zero_stages is None
        and setup.sharding_degree == 1
        and setup.expert_sharding_degree == 1
        and setup.offload == "none"
        and setup.parallel.fsdp is None
        and setup.accounting == "hfmem"
    )


def check_setup(
    setup: TrainingSetup,
    inference: InferenceSetup | None = None,
    *,
    has_model: bool = True,
    training: bool = True,
    find_max_batch: bool = False,
) -> None:
    """Refuse a plan that cannot exist, before anything is fetched or built; each error names the option to change.

    Raises:
        InvalidSetupError: sizes beyond any real run (`hfmem.limits`), ZeRO stages, offload or accounting that do
            not go together, fine-tuning options of another method, batch/sequence/dropout out of range.
    """
    check_bounds(setup, inference)  # absurd sizes first: nothing below may loop over them
    if not training and inference is None:
        raise InvalidSetupError("nothing to plan: ask for training, inference or both")
    if setup.parallel.fsdp is not None and setup.zero_stages is not None:
        raise InvalidSetupError("give either --fsdp or --zero, not both (--fsdp names its own sharding)")
    _check_stages(setup, planned_stages(setup))
    _check_optimizer(setup, planned_stages(setup))
    check_finetune(setup.finetune, has_model=has_model)
    if setup.batch_size < 1 or (setup.seq_len is not None and setup.seq_len < 1):
        raise InvalidSetupError("--batch-size and --seq-len must be at least 1")
    if setup.target_len is not None and setup.target_len < 1:
        raise InvalidSetupError(f"--target-len must be at least 1, got {setup.target_len}")
    if setup.dropout is not None and not 0.0 <= setup.dropout < MAX_DROPOUT_EXCLUSIVE:
        raise InvalidSetupError(f"--dropout must be in [0, {MAX_DROPOUT_EXCLUSIVE:g}), got {setup.dropout}")
    _check_fragmentation(setup.overheads.fragmentation)
    check_recompute(setup)
    if training and find_max_batch and setup.gpu is None:
        raise InvalidSetupError("--max-batch needs a GPU to fill: pass --gpu NAME or --gpu-memory SIZE")
    if inference is not None:
        if inference.batch_size < 1 or (inference.prefill_chunk is not None and inference.prefill_chunk < 1):
            raise InvalidSetupError("--batch-size and --prefill-chunk must be at least 1")
        if inference.full_context and inference.context is not None:
            raise InvalidSetupError("give either --context N or --context max (the model's whole context), not both")
        _check_fragmentation(inference.overheads.fragmentation)


def check_recompute(setup: TrainingSetup) -> None:
    """Refuse loss, recompute and offload settings that do not exist, naming the fix.

    Raises:
        InvalidSetupError: ``--loss-chunks`` or ``--checkpoint-every`` below 1; ``--checkpoint-every`` > 1 or
            ``--activation-offload`` without checkpointing (torchtune's recipes raise "enable_activation_offloading
            should only be True when enable_activation_checkpointing is True"; HF's ``offload`` is an argument of
            ``activation_checkpointing_enable``). ``--loss-chunks`` with another loss is ignored, not refused: a
            torchtune recipe names its chunks even when ``--loss`` typed on the command line overrides its loss.
    """
    if setup.loss_chunks < 1:
        raise InvalidSetupError(f"--loss-chunks must be at least 1, got {setup.loss_chunks}")
    if setup.checkpoint_every < 1:
        raise InvalidSetupError(f"--checkpoint-every must be at least 1, got {setup.checkpoint_every}")
    if setup.grad_checkpointing == "none":
        if setup.checkpoint_every != 1:
            raise InvalidSetupError(
                "--checkpoint-every chooses which layers --grad-checkpointing recomputes; add --grad-checkpointing "
                "full, selective or ops"
            )
        if setup.activation_offload:
            raise InvalidSetupError(
                "--activation-offload moves the checkpointed layers' inputs to CPU RAM (torchtune requires "
                "activation checkpointing with it); add --grad-checkpointing full, selective or ops"
            )


def check_target_len(setup: TrainingSetup, inventory: ParameterInventory) -> None:
    """Refuse ``--target-len`` for a model without a decoder of its own: only an encoder–decoder model (T5, BART…:
    ``is_encoder_decoder``) runs decoder tokens apart from the encoder's; a decoder-only or encoder-only model's
    whole sequence is ``--seq-len``.

    Raises:
        InvalidSetupError: ``target_len`` given for such a model (or for ``--params``, which has no model).
    """
    if setup.target_len is None or inventory.encoder_decoder:
        return
    what = f"{inventory.architecture or inventory.model_type} has" if inventory.has_shapes else "--params gives"
    raise InvalidSetupError(
        f"--target-len sets the decoder length of an encoder-decoder model (T5, BART…); {what} no separate decoder, "
        "so drop --target-len and give the whole sequence with --seq-len"
    )


def _check_fragmentation(fraction: float) -> None:
    if not math.isfinite(fraction) or not 0.0 <= fraction <= MAX_FRAGMENTATION:
        raise InvalidSetupError(f"--fragmentation must be a fraction in [0, {MAX_FRAGMENTATION:g}], got {fraction}")


def _check_stages(setup: TrainingSetup, stages: tuple[int, ...]) -> None:
    """Refuse setups that do not exist, with a message that says which option to change."""
    if setup.gpus_per_node < 1 or setup.nodes < 1:
        raise InvalidSetupError("--gpus and --nodes must be at least 1")
    if not stages:
        raise InvalidSetupError("no ZeRO stage requested; pass --zero 0, 1, 2 or 3")
    for stage in stages:
        if stage not in (0, 1, 2, 3):
            raise InvalidSetupError(f"ZeRO stage {stage} does not exist; use 0, 1, 2 or 3")
    if setup.offload == "optimizer" and 0 in stages:
        raise InvalidSetupError(
            "--offload optimizer needs ZeRO stage 1, 2 or 3 (DeepSpeed's offload_optimizer); drop --zero 0"
        )
    if setup.offload == "optimizer+params" and set(stages) != {3}:
        raise InvalidSetupError(
            "--offload optimizer+params needs ZeRO stage 3 (DeepSpeed's offload_param); use --zero 3"
        )
    if setup.offload != "none" and setup.optimizer in BNB_OPTIMIZERS:
        raise InvalidSetupError(
            "--offload runs the optimizer step on the CPU (DeepSpeed's CPU-Adam, fp32 states), where "
            f"bitsandbytes' GPU states ({setup.optimizer}) do not apply; use --optimizer adamw with --offload, "
            "or --offload none"
        )
    if setup.accounting == "deepspeed":
        if set(stages) - {2, 3}:
            raise InvalidSetupError(
                "DeepSpeed's estimator covers ZeRO-2 and ZeRO-3 only; use --zero 2 and/or --zero 3, "
                "or --accounting hfmem"
            )
        if setup.precision not in ("bf16-mixed", "fp16-mixed") or setup.optimizer != "adamw":
            raise InvalidSetupError(
                "DeepSpeed's estimator assumes 16-bit mixed precision with Adam; use --precision bf16-mixed "
                "or fp16-mixed with --optimizer adamw, or --accounting hfmem"
            )


def _check_optimizer(setup: TrainingSetup, stages: tuple[int, ...]) -> None:
    """The optimizer's implementation and where it steps: what the frameworks accept."""
    if setup.optimizer_impl != "foreach" and setup.optimizer != "adamw":
        raise InvalidSetupError(
            f"--optimizer-impl {setup.optimizer_impl} chooses torch AdamW's step; --optimizer {setup.optimizer} "
            "has its own, so drop --optimizer-impl (or use --optimizer adamw)"
        )
    if not setup.optimizer_in_backward:
        return
    if setup.parallel.fsdp is None and set(stages) != {0}:
        # DeepSpeed's engine reduces gradients in buckets and steps the fp32 partition in engine.step(), after
        # backward; torchtune runs optimizer-in-backward with FSDP (full_finetune_distributed.py@015b39c).
        raise InvalidSetupError(
            "--optimizer-in-backward steps each parameter in backward, which DeepSpeed's ZeRO (stage ≥ 1) does "
            "not do; use --zero 0 or --fsdp"
        )
    if setup.parallel.pp > 1:
        raise InvalidSetupError(
            "--optimizer-in-backward cannot accumulate gradients over a pipeline's micro-batches (torchtune refuses "
            "gradient accumulation with it); drop --pp or --optimizer-in-backward"
        )
    if setup.accounting == "deepspeed":
        raise InvalidSetupError(
            "DeepSpeed's estimator has no optimizer in backward; use --accounting hfmem or drop --optimizer-in-backward"
        )


def check_finetune(finetune: FinetuneSettings, *, has_model: bool) -> None:
    """Refuse settings that cannot be planned, naming the fix.

    Raises:
        InvalidSetupError: adapters or frozen modules without a model to build, a bad rank, options of another method.
    """
    method = finetune.method
    if method != "full" and not has_model:
        raise InvalidSetupError(
            f"--method {method} needs the model's modules (peft builds the adapters on them); "
            "pass a model id or config instead of --params"
        )
    if finetune.lora_rank < 1:
        raise InvalidSetupError(f"--lora-rank must be at least 1, got {finetune.lora_rank}")
    lora_only = finetune.lora_targets is not None or finetune.modules_to_save or finetune.dora
    if lora_only and not finetune.uses_peft:
        raise InvalidSetupError(
            "--lora-targets, --modules-to-save and --dora configure LoRA adapters; add --method lora or qlora"
        )
    if finetune.double_quant and method != "qlora":
        raise InvalidSetupError("--double-quant quantizes QLoRA's 4-bit base; add --method qlora")
    if finetune.train_modules and method != "freeze":
        raise InvalidSetupError("--train-modules chooses what --method freeze trains; add --method freeze")
    if method == "freeze" and not finetune.train_modules:
        raise InvalidSetupError("--method freeze needs --train-modules PATTERN (e.g. lm_head, 'model.layers.3?.*')")


def check_parallel(
    setup: TrainingSetup,
    inventory: ParameterInventory,
    config: Mapping[str, Any] | None = None,
    *,
    seq_len: int | None = None,
) -> None:
    """Refuse parallel layouts that cannot exist, each with one line naming the fix.

    Raises:
        InvalidSetupError: GPUs not divisible by tp·pp·cp, heads not divisible by tp, ep not dividing the experts
            or the data-parallel group, SP without TP, more stages than layers, an interleaved schedule it cannot
            run, a sequence CP cannot split, FSDP with ZeRO options.
    """
    par = setup.parallel
    for name, value in (("--tp", par.tp), ("--pp", par.pp), ("--cp", par.cp), ("--ep", par.ep)):
        if value < 1:
            raise InvalidSetupError(f"{name} must be at least 1, got {value}")
    world, mp = setup.world_size, par.model_parallel_size
    if world % mp:
        raise InvalidSetupError(
            f"{world} GPUs (--gpus {setup.gpus_per_node} × --nodes {setup.nodes}) cannot hold replicas of "
            f"tp·pp·cp = {par.tp}·{par.pp}·{par.cp} = {mp} GPUs; make gpus × nodes a multiple of {mp}"
        )
    if par.sp and par.tp == 1:
        raise InvalidSetupError(
            "--sp (sequence parallelism) splits what tensor parallelism replicates; add --tp 2 or more"
        )
    config = config or {}
    heads = first_int(config, HEAD_KEYS)
    if par.tp > 1 and heads is not None and heads % par.tp:
        raise InvalidSetupError(
            f"{heads} attention heads cannot be split over --tp {par.tp}; use a --tp that divides {heads}"
        )
    kv_heads = first_int(config, KV_HEAD_KEYS)
    if par.tp > 1 and kv_heads is not None and kv_heads % par.tp:
        raise InvalidSetupError(
            f"{kv_heads} key/value heads cannot be split over --tp {par.tp} (Megatron needs num_query_groups "
            f"divisible by the TP size); use a --tp that divides {kv_heads}"
        )
    if par.ep > 1:
        if inventory.moe is None:
            raise InvalidSetupError("--ep splits routed experts, and this model has none; drop --ep")
        if inventory.moe.num_experts % par.ep:
            raise InvalidSetupError(
                f"{inventory.moe.num_experts} experts cannot be split over --ep {par.ep}; use a --ep that divides "
                f"{inventory.moe.num_experts}"
            )
        group = setup.data_parallel_size * par.cp
        if group % par.ep:
            raise InvalidSetupError(
                f"--ep {par.ep} is carved out of the data-parallel × context-parallel group of {group} GPUs and "
                f"must divide it; add GPUs or use a smaller --ep"
            )
    layers = len(inventory.layer_names)
    if par.pp > 1 and inventory.has_shapes and par.pp > layers:
        raise InvalidSetupError(
            f"--pp {par.pp} is more pipeline stages than the model's {layers} layers; use --pp ≤ {layers}"
        )
    if par.pp_schedule == "interleaved":
        if par.pp == 1:
            raise InvalidSetupError("--pp-schedule interleaved needs --pp 2 or more")
        if par.virtual_stages < 2:
            raise InvalidSetupError("--pp-schedule interleaved needs --virtual-stages 2 or more")
        # Uneven chunks are fine (torch pipelining, torchtitan, Megatron's layouts: `pipeline_stages`); an empty
        # one is not (torchtitan generate_llm_fqn_per_model_part: "Configuration would result in empty stages").
        if inventory.has_shapes and layers < par.pp * par.virtual_stages:
            raise InvalidSetupError(
                f"the interleaved schedule splits the {layers} layers into pp × virtual stages = "
                f"{par.pp * par.virtual_stages} chunks of at least one layer; choose --pp / --virtual-stages whose "
                f"product is at most {layers}"
            )
        if par.microbatches is not None and par.microbatches % par.pp:
            raise InvalidSetupError(
                f"Megatron's interleaved schedule needs the micro-batch count to be a multiple of --pp {par.pp}; "
                f"got --microbatches {par.microbatches}"
            )
    if par.microbatches is not None and par.microbatches < 1:
        raise InvalidSetupError(f"--microbatches must be at least 1, got {par.microbatches}")
    if par.cp > 1 and seq_len is not None and seq_len % par.cp:
        raise InvalidSetupError(
            f"--seq-len {seq_len} cannot be split evenly over --cp {par.cp}; use a multiple of {par.cp}"
        )
    if par.cp > 1 and setup.attn == "eager":
        raise InvalidSetupError(
            "context parallelism runs ring attention with fused kernels; use --attn sdpa or flash with --cp"
        )
    if par.fsdp is not None and setup.offload != "none":
        raise InvalidSetupError("--offload models DeepSpeed's ZeRO-Offload; drop it with --fsdp (or drop --fsdp)")
    if setup.accounting == "deepspeed" and (mp > 1 or par.ep > 1 or par.fsdp or setup.method != "full"):
        raise InvalidSetupError(
            "DeepSpeed's estimator covers full fine-tuning with data parallelism only; use --accounting hfmem "
            "with --tp/--pp/--cp/--ep, --fsdp or --method"
        )


def first_int(config: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else None
    for source in (config, text or {}):
        for key in keys:
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


#: ``--block-size`` values vLLM accepts on CUDA (vLLM 0.11.0 config/cache.py ``BlockSize = Literal[1, 8, 16, 32, 64,
#: 128]``).
VLLM_BLOCK_SIZES = (1, 8, 16, 32, 64, 128)
#: Engine settings by the engine that takes them (their click options are these names, dashed).
VLLM_ONLY = (
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "block_size",
    "enforce_eager",
)
SGLANG_ONLY = ("mem_fraction_static", "context_length", "max_running_requests", "chunked_prefill_size", "page_size")
ENGINE_SHARED = ("kv_cache_dtype", "tensor_parallel_size", "pipeline_parallel_size", "min_concurrency")


def _flags(setup: EngineSetup, names: tuple[str, ...]) -> list[str]:
    """The ``--options`` among ``names`` that ``setup`` sets (None / False: not set)."""
    return ["--" + n.replace("_", "-") for n in names if getattr(setup, n) not in (None, False)]


def check_engine(engine: EngineSetup, *, has_model: bool = True) -> None:
    """Refuse engine settings that cannot exist, each with the option to change (before anything is built).

    ``engine="transformers"`` is the plain transformers plan: it takes no engine setting. vLLM and SGLang take their
    own names only, and need a model (its KV layout) and a GPU (their budgets are fractions of it).

    Raises:
        InvalidSetupError: naming the option and the fix.
    """
    if engine.engine not in ENGINES:
        raise InvalidSetupError(f"unknown --engine '{engine.engine}'; choose one of {', '.join(ENGINES)}")
    if engine.engine == "transformers":
        given = _flags(engine, VLLM_ONLY + SGLANG_ONLY + ENGINE_SHARED)
        if given:
            raise InvalidSetupError(
                f"{', '.join(given)} configure a serving engine; add --engine vllm or --engine sglang"
            )
        return
    other, other_name = (SGLANG_ONLY, "sglang") if engine.engine == "vllm" else (VLLM_ONLY, "vllm")
    wrong = _flags(engine, other)
    if wrong:
        what = "is an" if len(wrong) == 1 else "are"
        raise InvalidSetupError(
            f"{', '.join(wrong)} {what} --engine {other_name} setting{'s' if len(wrong) > 1 else ''}; use "
            f"--engine {other_name}, or the --engine {engine.engine} names (see --help)"
        )
    if not has_model:
        raise InvalidSetupError(
            f"--engine {engine.engine} needs the model's KV-cache layout; pass a model, not --params"
        )
    if engine.gpu is None:
        raise InvalidSetupError(f"--engine {engine.engine} needs a GPU: pass --gpu NAME or --gpu-memory SIZE")
    for name in ("gpu_memory_utilization", "mem_fraction_static"):
        value = getattr(engine, name)
        if value is not None and not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise InvalidSetupError(f"--{name.replace('_', '-')} must be a fraction in (0, 1], got {value}")
    bounds = {
        "max_model_len": MAX_TOKENS,
        "context_length": MAX_TOKENS,
        "max_num_batched_tokens": MAX_TOKENS,
        "chunked_prefill_size": MAX_TOKENS,
        "max_num_seqs": MAX_BATCH,
        "max_running_requests": MAX_BATCH,
        "min_concurrency": MAX_BATCH,
        "page_size": MAX_TOKENS,
        "tensor_parallel_size": MAX_DEGREE,
        "pipeline_parallel_size": MAX_DEGREE,
    }
    for name, bound in bounds.items():
        value = getattr(engine, name)
        if value is not None and not 1 <= value <= bound:
            raise InvalidSetupError(f"--{name.replace('_', '-')} must be between 1 and {bound:,}, got {value:,}")
    if engine.block_size is not None and engine.block_size not in VLLM_BLOCK_SIZES:
        raise InvalidSetupError(
            f"--block-size {engine.block_size} is not one vLLM takes; choose one of "
            f"{', '.join(map(str, VLLM_BLOCK_SIZES))}"
        )
    if engine.kv_cache_dtype not in (None, "auto", "fp8"):
        raise InvalidSetupError(f"unknown --kv-cache-dtype '{engine.kv_cache_dtype}'; choose auto or fp8")
    tokens, seqs = engine.max_num_batched_tokens, engine.max_num_seqs
    if tokens is not None and seqs is not None and tokens < seqs:
        raise InvalidSetupError(
            f"--max-num-batched-tokens {tokens:,} is below --max-num-seqs {seqs:,}, which vLLM refuses; raise it "
            "or lower --max-num-seqs"
        )
