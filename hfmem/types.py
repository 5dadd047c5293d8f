"""Frozen dataclasses at the stage boundaries: ResolvedModel → ParameterInventory → TrainingEstimate → Report.

Counts are ``*_params`` (elements), sizes are ``*_bytes`` (integers). Nothing here imports torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from hfmem.dtypes import DTYPES

if TYPE_CHECKING:  # the quantization module imports these types; the hint needs no import at run time
    from hfmem.memory.quantization import WeightsBreakdown

__all__ = [
    "ModelSource",
    "Precision",
    "Optimizer",
    "Offload",
    "Accounting",
    "Loss",
    "LOSSES",
    "DEFAULT_LOSS_CHUNKS",
    "PRECISIONS",
    "OPTIMIZERS",
    "OptimizerImpl",
    "OPTIMIZER_IMPLS",
    "OFFLOADS",
    "ACCOUNTINGS",
    "ResolvedModel",
    "ParameterInfo",
    "MoeInfo",
    "ParameterInventory",
    "TrainingSetup",
    "FinetuneSettings",
    "ParallelSettings",
    "OverheadSettings",
    "GpuTarget",
    "LayerProfile",
    "ActivationProfile",
    "StageMemory",
    "TrainingEstimate",
    "KvLayer",
    "InferenceProfile",
    "InferenceSetup",
    "InferenceEstimate",
    "Engine",
    "ENGINES",
    "EngineSetup",
    "EngineKvGroup",
    "EngineEstimate",
    "Report",
]

ModelSource = Literal["hub", "local", "catalogue", "params"]
Precision = Literal["fp32", "tf32", "bf16-mixed", "fp16-mixed", "bf16", "fp16", "amp-bf16", "amp-fp16"]
Optimizer = Literal[
    "adamw", "adamw-8bit", "sgd", "sgd-momentum", "adafactor", "lion", "paged-adamw", "paged-adamw-8bit"
]
OptimizerImpl = Literal["foreach", "fused", "loop"]
Offload = Literal["none", "optimizer", "optimizer+params"]
Accounting = Literal["hfmem", "deepspeed"]
Attention = Literal["sdpa", "flash", "eager"]
Checkpointing = Literal["none", "full", "selective", "ops"]
Loss = Literal["hf", "chunked", "fused"]
PeakPhase = Literal["forward", "backward", "optimizer_step"]
KvKind = Literal["full", "sliding", "cross", "state"]
KvDtype = Literal["fp32", "bf16", "fp16", "fp8", "int8"]
KV_DTYPES: tuple[KvDtype, ...] = ("fp32", "bf16", "fp16", "fp8", "int8")
Method = Literal["full", "lora", "qlora", "freeze"]
PipelineSchedule = Literal["1f1b", "interleaved"]
FsdpStrategy = Literal["full_shard", "shard_grad_op", "no_shard", "hybrid_shard"]

PRECISIONS: tuple[Precision, ...] = ("fp32", "tf32", "bf16-mixed", "fp16-mixed", "bf16", "fp16", "amp-bf16", "amp-fp16")
OPTIMIZERS: tuple[Optimizer, ...] = (
    "adamw",
    "adamw-8bit",
    "sgd",
    "sgd-momentum",
    "adafactor",
    "lion",
    "paged-adamw",
    "paged-adamw-8bit",
)
#: torch AdamW's step implementations (``torch/optim/adam.py``: ``foreach``, ``fused``, the for-loop).
OPTIMIZER_IMPLS: tuple[OptimizerImpl, ...] = ("foreach", "fused", "loop")
OFFLOADS: tuple[Offload, ...] = ("none", "optimizer", "optimizer+params")
ACCOUNTINGS: tuple[Accounting, ...] = ("hfmem", "deepspeed")
ATTENTIONS: tuple[Attention, ...] = ("sdpa", "flash", "eager")
CHECKPOINTINGS: tuple[Checkpointing, ...] = ("none", "full", "selective", "ops")
LOSSES: tuple[Loss, ...] = ("hf", "chunked", "fused")
#: torchtune ``CEWithChunkedOutputLoss(num_output_chunks: int = 8)`` (modules/loss/ce_chunked_output_loss.py @ bd2a0fc):
#: the default of ``--loss-chunks``.
DEFAULT_LOSS_CHUNKS = 8
METHODS: tuple[Method, ...] = ("full", "lora", "qlora", "freeze")
PIPELINE_SCHEDULES: tuple[PipelineSchedule, ...] = ("1f1b", "interleaved")
FSDP_STRATEGIES: tuple[FsdpStrategy, ...] = ("full_shard", "shard_grad_op", "no_shard", "hybrid_shard")
Engine = Literal["transformers", "vllm", "sglang"]
ENGINES: tuple[Engine, ...] = ("transformers", "vllm", "sglang")
EngineKvDtype = Literal["auto", "fp8"]
ENGINE_KV_DTYPES: tuple[EngineKvDtype, ...] = ("auto", "fp8")


@dataclass(frozen=True)
class ResolvedModel:
    """A resolved model: where its config.json came from and what it says.

    Attributes:
        model_id: what the user asked for (a Hub id, or the path they typed).
        source: ``hub`` (fetched or read from the HF cache), ``local`` (a folder or file), ``catalogue``
            (the snapshot bundled with hfmem) or ``params`` (``--params``: no config at all).
        config: the parsed config.json (empty for ``params``).
        revision: the commit sha the Hub served, when known.
        directory: the folder holding config.json (custom-code models load their code from there).
        notes: one-line remarks for stderr: fallbacks taken and why, adapters resolved to their base.
        adapter: a PEFT LoRA adapter's own settings (its adapter_config.json: ``r``, ``lora_alpha``,
            ``target_modules``, ``modules_to_save``, ``use_dora``) when MODEL is such an adapter, else None.
            `hfmem.estimate` plans them unless the caller gives a `FinetuneSettings` (see `adapter_finetune`).
        adapter_origin: where ``adapter`` was read (``<folder>/adapter_config.json`` or ``<repo> adapter_config.json``).
        architecture_given: the class the caller named (``--architecture``, `hfmem.api.with_architecture`), which
            ``config["architectures"]`` now names too; building refuses a name transformers does not have rather
            than fall back to another class.
    """

    model_id: str
    source: ModelSource
    config: Mapping[str, Any]
    revision: str | None = None
    directory: Path | None = None
    notes: tuple[str, ...] = ()
    adapter: FinetuneSettings | None = None
    adapter_origin: str | None = None
    architecture_given: str | None = None

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return value if isinstance(value, str) else None

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures")
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            return archs[0]
        return None


@dataclass(frozen=True)
class ParameterInfo:
    """One unique parameter tensor (tied weights appear once, under their first name).

    ``is_linear``: the weight of an ``nn.Linear`` or transformers ``Conv1D`` (what quantizers replace).
    ``is_output_embedding``: an untied LM head (output embeddings); also flagged ``is_embedding``.
    ``layer_index``: the transformer layer holding it (index into `ParameterInventory.layer_names`), or None.
    ``after_layers``: outside the layers and after them (final norm, LM head), as opposed to before (embeddings).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool = True
    is_embedding: bool = False
    is_routed_expert: bool = False
    is_linear: bool = False
    is_output_embedding: bool = False
    layer_index: int | None = None
    after_layers: bool = False

    @functools.cached_property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def quantizable(self) -> bool:
        """A weight quantizers replace: an nn.Linear / Conv1D weight, or a stacked [experts, out, in] routed-expert
        weight (2-D routed tensors are per-expert biases)."""
        return (self.is_linear and len(self.shape) >= 2) or (self.is_routed_expert and len(self.shape) >= 3)


@dataclass(frozen=True)
class MoeInfo:
    """Routing of a mixture-of-experts model, from its config."""

    num_experts: int
    experts_per_token: int
    routed_expert_params: int


@dataclass(frozen=True)
class ParameterInventory:
    """Every parameter of a model, with the derived counts computed once.

    Build it with :meth:`from_parameters` (a real model) or :meth:`from_count` (``--params``).

    ``context_tokens``: the context length of the config transformers built (a composite model's text config, with
    the config class's defaults filled in), None when it has none. ``image_inputs``: the model's forward takes images
    (``pixel_values``) next to token ids, which the traces do not feed it. ``attention_modules``: modules whose class
    is an attention (its name contains ``Attention``); 0 for a recurrent model (Mamba), None when unknown.
    ``encoder_decoder``: the built config says ``is_encoder_decoder`` (T5, BART…: a decoder of its own, whose length
    ``--target-len`` sets).
    """

    total_params: int
    trainable_params: int
    embedding_params: int
    buffer_params: int
    largest_module_params: int
    active_params_per_token: int
    parameters: tuple[ParameterInfo, ...] = ()
    largest_module_name: str | None = None
    module_params: tuple[tuple[str, int], ...] = ()
    architecture: str | None = None
    model_type: str | None = None
    moe: MoeInfo | None = None
    layer_names: tuple[str, ...] = ()
    tied_embeddings: bool = False
    context_tokens: int | None = None
    image_inputs: bool = False
    attention_modules: int | None = None
    encoder_decoder: bool = False

    @property
    def non_embedding_params(self) -> int:
        return self.total_params - self.embedding_params

    @property
    def has_shapes(self) -> bool:
        """False for a ``--params`` plan, which knows the count but no tensor shapes."""
        return bool(self.parameters)

    @classmethod
    def from_parameters(
        cls,
        parameters: Sequence[ParameterInfo],
        *,
        buffer_params: int,
        largest_module: tuple[str, int],
        module_params: Sequence[tuple[str, int]],
        architecture: str | None,
        model_type: str | None,
        moe_routing: tuple[int, int] | None = None,
        layer_names: Sequence[str] = (),
        tied_embeddings: bool = False,
        context_tokens: int | None = None,
        image_inputs: bool = False,
        attention_modules: int | None = None,
        encoder_decoder: bool = False,
    ) -> ParameterInventory:
        """Derive every count from the parameter list.

        Args:
            moe_routing: ``(num_experts, experts_per_token)`` for MoE models. Routed-expert parameters are
                active for ``experts_per_token / num_experts`` of them per token; everything else (attention,
                router, shared experts, embeddings) is active for every token.
        """
        total = sum(p.numel for p in parameters)
        routed = sum(p.numel for p in parameters if p.is_routed_expert)
        moe = None
        active = total
        if moe_routing is not None and routed:
            num_experts, top_k = moe_routing
            moe = MoeInfo(num_experts=num_experts, experts_per_token=top_k, routed_expert_params=routed)
            # Each routed tensor holds all experts stacked (transformers >= 5 fuses them) or one expert of
            # `num_experts`; either way a token uses top_k / num_experts of the routed total, exactly.
            from hfmem.memory.parallel import active_params_per_token

            active = active_params_per_token(total, routed, top_k, num_experts)
        return cls(
            total_params=total,
            trainable_params=sum(p.numel for p in parameters if p.trainable),
            embedding_params=sum(p.numel for p in parameters if p.is_embedding),
            buffer_params=buffer_params,
            largest_module_params=largest_module[1],
            largest_module_name=largest_module[0],
            active_params_per_token=active,
            parameters=tuple(parameters),
            module_params=tuple(module_params),
            architecture=architecture,
            model_type=model_type,
            moe=moe,
            layer_names=tuple(layer_names),
            tied_embeddings=tied_embeddings,
            context_tokens=context_tokens,
            image_inputs=image_inputs,
            attention_modules=attention_modules,
            encoder_decoder=encoder_decoder,
        )

    @classmethod
    def from_count(cls, total_params: int) -> ParameterInventory:
        """A hypothetical dense model of ``total_params`` parameters, all trainable, shapes unknown.

        The largest module is unknown; it is reported as 0.
        """
        return cls(
            total_params=total_params,
            trainable_params=total_params,
            embedding_params=0,
            buffer_params=0,
            largest_module_params=0,
            active_params_per_token=total_params,
        )


@dataclass(frozen=True)
class OverheadSettings:
    """Memory that is neither a model state nor an activation, with hfmem's defaults
    (docs/formulas.md: "Peak memory: activations, logits, overheads").

    Attributes:
        cuda_context_bytes: CUDA context + cuBLAS/cuBLASLt workspaces, created on first use; not seen by
            ``torch.cuda.memory_allocated``. PyTorch with lazy module loading measures 287 MB-430 MiB
            (pytorch/pytorch#86509, #109888) plus a 32 MiB cuBLAS workspace on Hopper (#120925): 512 MiB.
        fragmentation: allocator slack as a fraction of the allocated peak (reserved − allocated); reports range
            from 5 % to 30 % (REFERENCE.md §5); 10 % by default.
        reduce_bucket_elements: DeepSpeed ``reduce_bucket_size`` (default 5e8 elements, zero/config.py).
        allgather_bucket_elements: DeepSpeed ``allgather_bucket_size`` (default 5e8).
        prefetch_bucket_elements: DeepSpeed ``stage3_prefetch_bucket_size`` (default 5e7).
        sub_group_elements: DeepSpeed ``sub_group_size`` (default 1e9): ZeRO-3's optimizer-step tile.
    """

    cuda_context_bytes: int = 512 * 2**20
    fragmentation: float = 0.10
    reduce_bucket_elements: int = 500_000_000
    allgather_bucket_elements: int = 500_000_000
    prefetch_bucket_elements: int = 50_000_000
    sub_group_elements: int = 1_000_000_000


@dataclass(frozen=True)
class GpuTarget:
    """The GPU a plan must fit: its name and the bytes PyTorch can see."""

    name: str
    usable_bytes: int


def gpu_target(gpu: GpuTarget | str | None) -> GpuTarget | None:
    """``gpu`` as a `GpuTarget`: a name is looked up in the GPU catalogue (`hfmem.gpus.find_gpu`).

    Raises:
        InvalidSetupError: an unknown name (the message lists the known ones).
    """
    if not isinstance(gpu, str):
        return gpu
    from hfmem.gpus import find_gpu

    spec = find_gpu(gpu)
    return GpuTarget(spec.name, spec.usable_bytes)


@dataclass(frozen=True)
class FinetuneSettings:
    """What is trained: the whole model, LoRA / QLoRA adapters (built with peft), or chosen modules.

    Attributes:
        method: ``full`` (every parameter), ``lora`` (peft LoRA adapters on a frozen base), ``qlora`` (LoRA on a
            base whose linear weights are bitsandbytes NF4), ``freeze`` (only ``train_modules``).
        lora_rank: LoRA ``r`` (peft's default is 8).
        lora_alpha: LoRA ``lora_alpha`` (None: peft's default, 8); scales the update, not memory.
        lora_targets: ``None`` (peft's default for the architecture), ``("all-linear",)`` or module names.
        modules_to_save: modules trained in full next to the adapters (peft makes a trainable copy).
        dora: DoRA (``use_dora=True``): adds a trainable magnitude vector per adapted layer.
        double_quant: QLoRA double quantization (``bnb_4bit_use_double_quant``): 8-bit absmax.
        train_modules: ``freeze``: glob patterns (``re:`` prefix for a regex) of the parameters to train.
    """

    method: Method = "full"
    lora_rank: int = 8
    lora_alpha: int | None = None
    lora_targets: tuple[str, ...] | None = None
    modules_to_save: tuple[str, ...] = ()
    dora: bool = False
    double_quant: bool = False
    train_modules: tuple[str, ...] = ()

    @property
    def uses_peft(self) -> bool:
        return self.method in ("lora", "qlora")


@dataclass(frozen=True)
class ParallelSettings:
    """Model parallelism, Megatron-style, and FSDP.

    Attributes:
        tp: tensor-parallel degree (Megatron column/row-parallel linears, vocab-parallel embeddings).
        pp: pipeline-parallel degree (stages of consecutive layers).
        cp: context-parallel degree (the sequence split across GPUs).
        ep: expert-parallel degree (routed experts split across GPUs, carved out of data parallelism).
        sp: sequence parallelism with TP (Korthikanti et al. 2022): norms and dropouts split over the sequence.
        pp_schedule: ``1f1b`` or ``interleaved`` (Narayanan et al. 2021).
        microbatches: micro-batches per step per pipeline (None: at least ``pp``, the steady state).
        virtual_stages: model chunks per GPU with the interleaved schedule.
        fsdp: FSDP sharding strategy (replaces the ZeRO stages), or None.
    """

    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    sp: bool = False
    pp_schedule: PipelineSchedule = "1f1b"
    microbatches: int | None = None
    virtual_stages: int = 2
    fsdp: FsdpStrategy | None = None

    @property
    def model_parallel_size(self) -> int:
        """GPUs one model replica spans: tp × pp × cp."""
        return self.tp * self.pp * self.cp


@dataclass(frozen=True)
class TrainingSetup:
    """What the user plans: precision, optimizer, sharding, offload, and the micro-batch that runs.

    ``zero_stages`` lists the ZeRO stages to report (one row each); ``None``: every stage the setup allows
    (`hfmem.rules.planned_stages`: FSDP's own stage, else 0-3 less those offload or DeepSpeed's accounting exclude).
    ``seq_len=None`` means the model's context length capped at 4096. ``dropout=None`` keeps the config's dropout
    probabilities. ``gpu`` may be given by name (``"h100-sxm"``, any `hfmem.gpus.find_gpu` alias): it is looked up
    when the setup is made. ``images_per_sample``: images in each sample for a model that takes images
    (`ParameterInventory.image_inputs`): the trace feeds the vision tower that many default images, whose tokens are
    part of ``seq_len``; ignored for text-only models.

    ``optimizer_in_backward``: each parameter's optimizer step runs in backward as soon as its gradient is complete,
    and the gradient is freed right after (torchtune ``optimizer_in_bwd``), so the gradients are never all live.
    ``optimizer_impl``: torch AdamW's step implementation, which decides the step's temporaries
    (`hfmem.memory.peak.optimizer_step_bytes`); it applies where torch's AdamW runs (ZeRO 0, FSDP).
    Loss and recompute (issue 13; docs/techniques.md §1–3): ``loss`` is the path the vocabulary-sized tensors take
    (``hf``: transformers' ``ForCausalLMLoss`` on the whole logits; ``chunked``: torchtune's
    ``CEWithChunkedOutputLoss`` over ``loss_chunks`` chunks; ``fused``: a fused linear + cross-entropy kernel, Liger's
    ``LigerFusedLinearCrossEntropy`` or Cut Cross-Entropy, where the full logits never exist). ``checkpoint_every``:
    with checkpointing, every k-th layer is checkpointed and the others keep everything (transformers'
    ``every_n_layers``: layers 0, k, 2k…). ``activation_offload``: the saved activations live in CPU RAM (torchtune's
    ``OffloadActivations``).
    part of ``seq_len``; ignored for text-only models. ``target_len``: decoder tokens per sample of an
    encoder–decoder model (T5, BART…), ``seq_len`` being the encoder's; None: the same as ``seq_len``; refused for
    models without a decoder of their own (`hfmem.rules.check_target_len`). ``grad_accumulation``: micro-batches
    whose gradients are summed before each optimizer step. With 1, the gradients freed after each step
    (``zero_grad(set_to_none=True)``) are absent in forward and as backward starts; with more they persist between
    micro-batches (`hfmem.memory.peak.phase_gradient_bytes`).
    """

    precision: Precision = "bf16-mixed"
    optimizer: Optimizer = "adamw"
    zero_stages: tuple[int, ...] | None = None
    gpus_per_node: int = 1
    nodes: int = 1
    offload: Offload = "none"
    accounting: Accounting = "hfmem"
    batch_size: int = 1
    seq_len: int | None = None
    attn: Attention = "sdpa"
    grad_checkpointing: Checkpointing = "none"
    dropout: float | None = None
    overheads: OverheadSettings = field(default_factory=OverheadSettings)
    gpu: GpuTarget | None = None
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    images_per_sample: int = 1
    optimizer_in_backward: bool = False
    optimizer_impl: OptimizerImpl = "foreach"
    loss: Loss = "hf"
    loss_chunks: int = DEFAULT_LOSS_CHUNKS
    checkpoint_every: int = 1
    activation_offload: bool = False
    target_len: int | None = None
    grad_accumulation: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu", gpu_target(self.gpu))

    @property
    def method(self) -> Method:
        return self.finetune.method

    @property
    def world_size(self) -> int:
        """Every GPU of every node."""
        return self.gpus_per_node * self.nodes

    @property
    def data_parallel_size(self) -> int:
        """``gpus × nodes / (tp · pp · cp)``: the model replicas (`hfmem.memory.parallel.data_parallel_degree`)."""
        from hfmem.memory.parallel import data_parallel_degree

        par = self.parallel
        return data_parallel_degree(self.world_size, par.tp, par.pp, par.cp)  # type: ignore[return-value]

    @property
    def sharding_degree(self) -> int:
        """The ZeRO / FSDP sharding degree of the dense parameters (`hfmem.memory.parallel.sharding_degree`).

        Computed once per setup (sweeps and bisections read it thousands of times) and kept beside the fields.
        """
        cached = self.__dict__.get("_sharding_degree")
        if cached is None:
            from hfmem.memory.parallel import sharding_degree

            par = self.parallel
            hybrid = par.fsdp == "hybrid_shard"
            cached = sharding_degree(self.gpus_per_node, self.nodes, par.tp, par.pp, par.cp, hybrid_shard=hybrid)
            object.__setattr__(self, "_sharding_degree", cached)
        return cached  # type: ignore[no-any-return]

    @property
    def expert_sharding_degree(self) -> int:
        """ZeRO / FSDP degree of routed experts (`hfmem.memory.parallel.expert_sharding_degree`)."""
        from hfmem.memory.parallel import expert_sharding_degree

        return expert_sharding_degree(self.sharding_degree, self.parallel.ep)  # type: ignore[return-value]


@dataclass(frozen=True)
class LayerProfile:
    """What one transformer layer saves for backward, measured on the meta device (bytes).

    Attributes:
        name: the module path (``model.layers.0``).
        saved_bytes: tensors autograd keeps for backward inside this layer, each storage once, parameters excluded.
        input_bytes: the layer's tensor arguments (hidden states, mask, rotary tables…; shared ones counted at
            their first layer): all that full activation checkpointing keeps.
        tp_split_bytes: the part of ``saved_bytes`` that Megatron tensor parallelism splits across the TP group
            (everything between a column-parallel and a row-parallel linear); the rest (norms, the linears'
            replicated inputs, residual dropout) is replicated unless sequence parallelism splits it. Measured
            only when asked for (``--tp`` > 1), else 0.
        ops_saved_bytes: the outputs of the operators torchtitan's op-level selective checkpointing saves inside this
            layer (``--grad-checkpointing ops``: every matmul but every second ``mm``, attention kernels' outputs),
            each storage once, parameters and the layer's inputs excluded.
        ops_reused_bytes: the part of ``saved_bytes`` that is such an output: the recompute in backward takes it
            from the checkpoint's cache instead of allocating it again.
        ops_tp_split_bytes: the part of ``ops_saved_bytes`` tensor parallelism splits (``--tp`` > 1 only, else 0).
    """

    name: str
    saved_bytes: int
    input_bytes: int
    tp_split_bytes: int = 0
    ops_saved_bytes: int = 0
    ops_reused_bytes: int = 0
    ops_tp_split_bytes: int = 0


@dataclass(frozen=True)
class ActivationProfile:
    """Activations of one micro-batch of ``batch_size`` × ``seq_len`` tokens, as the real model saves them.

    Measured by running the model's class on the meta device under ``saved_tensors_hooks`` (no memory used).
    ``layers`` use the requested attention; ``fused_layers`` the fused-kernel emulation (same as ``layers``
    unless ``attn == "eager"``), which selective checkpointing keeps.

    Attributes:
        other_bytes: saved outside the layers and not vocabulary-sized (token ids, embeddings' outputs, rotary
            tables, the final norm, the LM head's input).
        logits_saved_bytes: vocabulary-sized tensors autograd saves (the loss's fp32 log-softmax).
        logits_bytes: the logits tensor the model returns (held until backward ends).
        attention_calls: how many times the emulated attention ran (0 = the model computes attention itself).
        other_after_bytes: the part of ``other_bytes`` saved after the layers (final norm, LM head input): it
            lives on the last pipeline stage, the rest on the first.
        images_per_sample: images each sample fed the vision tower in the trace (0: token ids only).
        image_tokens: the sequence positions one image fills (its features replace those tokens' embeddings).
        images_not_traced: why a model that takes images was traced on token ids only (None: it was not).
        hidden_size: the LM head's input features h (0: no LM head), which a fused linear + cross-entropy loss
            keeps the gradient of, ``tokens × h``.
        head_trainable: the LM head's weight is trained (its ``V × h`` gradient is computed inside a fused loss).
        head_saved_bytes: of ``other_after_bytes``, what the LM head itself saves (its input): a fused loss does not
            run the head, and activation offloading leaves it on the GPU.
        head: the task head that was traced, with the labels its loss takes (`hfmem.build.trace.HEADS`): ``lm``
            (causal or masked LM: token labels, vocabulary-sized logits), ``seq2seq-lm`` (decoder labels of
            ``target_len`` tokens), ``sequence-classification``, ``token-classification``, ``question-answering``,
            ``multiple-choice``, or ``none`` (a base model: no labels, no loss).
        logits_shape: the shape of what the head returns (``logits``; question answering: start and end logits,
            one ``[b, s, 2]`` tensor); () when it returns none. Only an LM head's is vocabulary-sized.
        target_len: decoder tokens per sample of an encoder–decoder model (None: not one).
    """

    batch_size: int
    seq_len: int
    attn: Attention
    dtype: str
    vocab_size: int
    layers: tuple[LayerProfile, ...]
    fused_layers: tuple[LayerProfile, ...]
    other_bytes: int
    logits_saved_bytes: int
    logits_bytes: int
    attention_calls: int = 0
    other_after_bytes: int = 0
    images_per_sample: int = 0
    image_tokens: int = 0
    images_not_traced: str | None = None
    hidden_size: int = 0
    head_trainable: bool = False
    head_saved_bytes: int = 0
    head: str = "lm"
    logits_shape: tuple[int, ...] = ()
    target_len: int | None = None


@dataclass(frozen=True)
class OverheadItem:
    """One overhead line: a stable ``key`` (never depends on a setting's value), a ``label`` for people, its bytes.

    Iterating gives ``(label, size_bytes)``, the pair the ``overhead_items`` of JSON output has always held.
    """

    key: str
    label: str
    size_bytes: int

    def __iter__(self) -> Iterator[str | int]:
        yield self.label
        yield self.size_bytes


@dataclass(frozen=True)
class StageMemory:
    """Memory of one ZeRO stage per GPU (bytes) at its peak, and CPU RAM per node when offloading.

    With pipeline parallelism the row is the busiest GPU: ``pipeline_stage`` (0-based), the layers it holds
    (``stage_layers``, first and last index, inclusive) and what else (``stage_holds``: embeddings, LM head).

    Weights, master weights and optimizer states are always live. ``gradients``, ``activations``, ``logits`` and
    ``overhead`` are those live at ``peak_phase`` (gradients freed after each step are absent in forward and as
    backward starts: `hfmem.memory.peak.phase_gradient_bytes`); ``gradients_at_step_bytes`` is what the gradients
    take at the optimizer step (all of them). ``total_bytes`` is the sum: the predicted peak per GPU (the device
    total).

    ``paged_states_bytes``: the part of ``optimizer_states_bytes`` a bitsandbytes paged optimizer keeps in CUDA
    managed memory (``cudaMallocManaged``), which PyTorch's allocator statistics do not see; ``allocator_bytes``
    is the peak PyTorch's allocator reports (``torch.cuda.max_memory_reserved``-like: the total less the paged
    states and the CUDA context).
    """

    zero_stage: int
    weights_bytes: int
    master_weights_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    cpu_bytes_per_node: int = 0
    activations_bytes: int = 0
    logits_bytes: int = 0
    overhead_bytes: int = 0
    overhead_items: tuple[OverheadItem, ...] = ()
    peak_phase: PeakPhase | None = None
    activation_saved_bytes: int = 0
    activation_recompute_bytes: int = 0
    logits_saved_bytes: int = 0
    fits: bool | None = None
    headroom_bytes: int | None = None
    min_gpus: int | None = None
    max_batch_size: int | None = None
    pipeline_stage: int | None = None
    stage_layers: tuple[int, int] | None = None
    stage_holds: tuple[str, ...] = ()
    paged_states_bytes: int = 0
    activation_offloaded_bytes: int = 0
    gradients_at_step_bytes: int | None = None
    total_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        total = (
            self.weights_bytes
            + self.master_weights_bytes
            + self.gradients_bytes
            + self.optimizer_states_bytes
            + self.activations_bytes
            + self.logits_bytes
            + self.overhead_bytes
        )
        object.__setattr__(self, "total_bytes", total)

    @property
    def states_bytes(self) -> int:
        return self.weights_bytes + self.master_weights_bytes + self.gradients_bytes + self.optimizer_states_bytes

    @property
    def allocator_bytes(self) -> int:
        """What PyTorch's caching allocator holds at the peak: the total less the paged optimizer states (managed
        memory) and the CUDA context (not allocator memory)."""
        context = sum(item.size_bytes for item in self.overhead_items if item.key == "cuda_context")
        return self.total_bytes - self.paged_states_bytes - context


@dataclass(frozen=True)
class TrainingEstimate:
    """Per-GPU model-state memory for each requested ZeRO stage (the accounting convention is ``setup.accounting``).

    ``profile`` is the measured activation profile of the whole model at the planned micro-batch (None for a
    ``--params`` plan): what `hfmem.explain` shows per layer.

    ``unmeasured``: why the model could not be traced (None when it was). The rows then hold the model states and
    overheads only: activations and logits are unknown, so each peak is a lower bound and ``fits`` is False (the
    states alone do not fit) or None (unknown).
    """

    setup: TrainingSetup
    stages: tuple[StageMemory, ...]
    notes: tuple[str, ...] = ()
    seq_len: int | None = None
    seq_len_source: str | None = None
    profile: ActivationProfile | None = None
    unmeasured: str | None = None


@dataclass(frozen=True)
class KvLayer:
    """What one layer's KV cache holds, per sequence (batch row), measured from the model's own ``DynamicCache``.

    Attributes:
        name: the cache layer (``"0"``…; encoder–decoders ``self.N`` / ``cross.N``).
        kind: ``full`` (grows with every token), ``sliding`` (holds at most ``window_tokens``), ``cross``
            (cross-attention over the encoder's tokens) or ``state`` (Mamba / linear attention: a fixed-size state).
        elements_per_token: cached elements per token (keys + values of every head; MLA: the compressed latent).
        fixed_elements: elements that do not grow with the tokens (recurrent / convolution states).
        heads: heads of the cached tensors, which tensor parallelism divides (1 for MLA's shared latent, so every
            tensor-parallel rank holds it whole).
        window_tokens: the sliding window (``sliding`` only).
        element_bytes: bytes per element as the model caches them (before ``--kv-dtype``).
    """

    name: str
    kind: KvKind
    elements_per_token: int
    fixed_elements: int = 0
    heads: int = 1
    window_tokens: int | None = None
    element_bytes: int = 2


@dataclass(frozen=True)
class InferenceProfile:
    """The KV cache layout and one prefill chunk's transient memory, measured on the meta device.

    Attributes:
        activation_peak_bytes: peak of the tensors live during the chunk's forward, parameters and cache excluded.
        logits_bytes: the next-token logits generate() keeps (fp32).
        attention_calls: 0 when the model computes attention itself (no fused-kernel stand-in).
        state_layers: ``(cache layer, bytes per sequence)`` of every layer that keeps a fixed-size recurrent state
            (Mamba's convolution and SSM states, linear attention's), each tensor at the dtype the model caches it
            in. It does not grow with the tokens, so it is not part of ``layers``.
        images_per_sample / image_tokens: images each sequence of the prefill chunk fed the vision tower (0: token
            ids only) and the positions one image fills; ``images_not_traced``: why not, when it takes images.
    """

    layers: tuple[KvLayer, ...]
    batch_size: int
    prefill_tokens: int
    dtype: str
    activation_peak_bytes: int
    logits_bytes: int
    attention_calls: int = 0
    state_layers: tuple[tuple[str, int], ...] = ()
    images_per_sample: int = 0
    image_tokens: int = 0
    images_not_traced: str | None = None


@dataclass(frozen=True)
class InferenceSetup:
    """What the user plans to serve.

    ``weights_dtype=None`` uses the checkpoint: its ``quantization_config`` if it has one, else its dtype.
    ``kv_dtype=None`` caches in the compute dtype. ``context=None`` means the training default (the model's context
    length capped at 4096, `hfmem.memory.inference.default_context`), or the whole context with ``full_context``.
    ``prefill_chunk=None`` means min(context, 2048) tokens per sequence. ``images_per_sample``: images in each
    sequence's prefill chunk, for a model that takes images (the vision tower runs in the prefill).
    """

    weights_dtype: str | None = None
    group_size: int = 128
    double_quant: bool = False
    kv_dtype: KvDtype | None = None
    context: int | None = None
    batch_size: int = 1
    tp: int = 1
    prefill_chunk: int | None = None
    overheads: OverheadSettings = field(default_factory=OverheadSettings)
    gpu: GpuTarget | None = None
    images_per_sample: int = 1
    full_context: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu", gpu_target(self.gpu))


@dataclass(frozen=True)
class InferenceEstimate:
    """Per-GPU serving memory: weights + KV cache + recurrent state + a prefill chunk's activations + overheads.

    ``recurrent_state_bytes``: the fixed-size states of recurrent layers (Mamba, linear attention) for every
    sequence of the batch, independent of the context (0 for a pure-attention model).
    ``weights`` is the whole model's `hfmem.memory.quantization.WeightsBreakdown`; the ``*_bytes`` fields are per GPU.
    ``profile`` is the measured `InferenceProfile` the plan was computed from.
    """

    setup: InferenceSetup
    context: int
    context_source: str
    prefill_tokens: int
    weights_name: str
    weights_source: str
    weights: WeightsBreakdown
    kv_dtype: str
    kv_layers: tuple[KvLayer, ...]
    weights_bytes: int
    kv_cache_bytes: int
    kv_cache_bytes_per_token: int
    activations_bytes: int
    overhead_bytes: int
    overhead_items: tuple[OverheadItem, ...] = ()
    fits: bool | None = None
    headroom_bytes: int | None = None
    max_context: int | None = None
    max_batch_size: int | None = None
    notes: tuple[str, ...] = ()
    profile: InferenceProfile | None = None
    recurrent_state_bytes: int = 0
    #: elements of the largest bitsandbytes 4-bit linear (its dequantized copy is an overhead line), else 0
    dequant_params: int = 0
    total_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        total = (
            self.weights_bytes
            + self.kv_cache_bytes
            + self.recurrent_state_bytes
            + self.activations_bytes
            + self.overhead_bytes
        )
        object.__setattr__(self, "total_bytes", total)


@dataclass(frozen=True)
class EngineSetup:
    """A serving engine's start-up settings, by the engine's own names (`hfmem.memory.engine` models them).

    ``None`` means the engine's default for this model and GPU (`hfmem.memory.engine` says which and why).
    ``engine="transformers"`` is today's `InferenceSetup` plan: it takes none of the engine settings
    (`hfmem.rules.check_engine` refuses them).

    Attributes:
        engine: ``vllm`` (V1 engine, 0.11.0 accounting) or ``sglang`` (0.4.x accounting).
        gpu_memory_utilization: vLLM: the fraction of the GPU's total memory the engine may use (0.9).
        max_model_len / context_length: the longest request (vLLM / SGLang name); default the config's.
        max_num_seqs / max_running_requests: concurrent sequences (vLLM / SGLang name).
        max_num_batched_tokens / chunked_prefill_size: tokens per forward step (vLLM / SGLang name).
        block_size / page_size: tokens per KV block (vLLM 16; MLA forces 64/128) / per page (SGLang 1).
        kv_cache_dtype: ``auto`` (the model dtype) or ``fp8`` (one byte per element).
        enforce_eager: vLLM without CUDA graphs.
        tensor_parallel_size / pipeline_parallel_size: GPUs per replica splitting heads / layers.
        mem_fraction_static: SGLang: the share of the free memory before the weights that weights + KV may use.
        min_concurrency: the number of concurrent ``max_model_len`` requests a deployment must hold (``--check``).
        gpu: the GPU (a name from the catalogue or a `GpuTarget`); required.
    """

    engine: Engine = "vllm"
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    kv_cache_dtype: EngineKvDtype | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    mem_fraction_static: float | None = None
    context_length: int | None = None
    max_running_requests: int | None = None
    chunked_prefill_size: int | None = None
    page_size: int | None = None
    min_concurrency: int | None = None
    gpu: GpuTarget | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu", gpu_target(self.gpu))

    @property
    def tp(self) -> int:
        return self.tensor_parallel_size or 1

    @property
    def pp(self) -> int:
        return self.pipeline_parallel_size or 1


@dataclass(frozen=True)
class EngineKvGroup:
    """One kind of KV-cache layer as the engine allocates it, on the tightest GPU.

    Attributes:
        kind: ``full`` (full attention), ``mla`` (MLA latent), ``sliding`` (sliding window), ``mamba``
            (Mamba / linear-attention state).
        layers: layers of this kind on the GPU.
        elements_per_token: cached elements per token per layer on this GPU (its share of the KV heads); 0 for a
            state.
        element_bytes: bytes per cached element (``--kv-cache-dtype``).
        page_bytes: one block of one layer (vLLM ``page_size_bytes``); a state's page is padded to the attention page.
        blocks_per_request: blocks one ``max_model_len`` request needs in one layer of this kind.
        groups: KV-cache groups of this kind (vLLM's hybrid allocator; 1 for a uniform model).
        window_tokens: the sliding window, for ``sliding``.
        state_bytes: one sequence's state before padding, for ``mamba``.
    """

    kind: str
    layers: int
    elements_per_token: int
    element_bytes: int
    page_bytes: int
    blocks_per_request: int
    groups: int = 1
    window_tokens: int | None = None
    state_bytes: int = 0


@dataclass(frozen=True)
class EngineEstimate:
    """A serving engine's start-up accounting on one GPU (the tightest one), as `hfmem.memory.engine` models it.

    Bytes are per GPU. vLLM: ``kv_budget_bytes = requested_bytes − (weights + activation peak + non-torch)``;
    SGLang: ``kv_budget_bytes = free after the weights − free before × (1 − mem_fraction_static)``.

    Attributes:
        engine / engine_version: the engine and the release whose accounting is modelled.
        total_bytes: the GPU's memory as the engine reads it (``torch.cuda.mem_get_info()[1]``).
        requested_bytes: vLLM ``gpu_memory_utilization × total``; SGLang the free memory before the weights.
        activation_trace_bytes / sampler_bytes: the traced forward of ``batched_tokens`` tokens and the sampler's
            peak on one logit row per request (vLLM's profile run); ``activation_peak_bytes`` is the larger moment
            (`hfmem.memory.engine.vllm_activation_peak_bytes`). SGLang: the traced prefill chunk (not subtracted).
        kv_groups: the per-kind KV-cache specs; ``group_size`` layers share a block table (vLLM).
        num_blocks / kv_tokens: blocks per layer and the tokens the engine reports ("GPU KV cache size").
        max_concurrency: ``max_model_len`` requests the cache holds at once.
        kv_needed_bytes: the KV cache of one ``max_model_len`` request (vLLM refuses to start when it exceeds the
            budget); ``largest_max_model_len``: the longest that fits.
        starts: whether the engine starts; ``refusal``: its error message when not.
        meets_min_concurrency: ``max_concurrency ≥ setup.min_concurrency`` (None without one).
        fixes: settings that would make it start or meet the concurrency, each checked by replanning.
        kv_bytes_per_token: one token's KV cache over the GPU's layers (SGLang's ``cell_size``).
        pool_bytes: SGLang's KV buffers as allocated (``(tokens + page) × cell``); vLLM: ``num_blocks`` × pages.
        grouping / num_groups: how vLLM groups the layers (``uniform``: one spec; ``uniform_type``: one kind of
            several shapes, one group; ``hybrid``: several kinds of one page size) and its KV-cache groups.
    """

    setup: EngineSetup
    engine: str
    engine_version: str
    gpu: GpuTarget
    tp: int
    pp: int
    pp_rank: int
    total_bytes: int
    requested_bytes: int
    weights_bytes: int
    rope_cache_bytes: int
    vocab_padding_bytes: int
    activation_trace_bytes: int
    sampler_bytes: int
    activation_peak_bytes: int
    non_torch_bytes: int
    cudagraph_bytes: int
    kv_budget_bytes: int
    kv_dtype: str
    block_size: int
    kv_groups: tuple[EngineKvGroup, ...]
    group_size: int
    num_blocks: int
    kv_tokens: int
    max_model_len: int
    max_model_len_source: str
    max_num_seqs: int
    batched_tokens: int
    blocks_per_request: int
    max_concurrency: float
    kv_needed_bytes: int
    starts: bool
    refusal: str | None = None
    largest_max_model_len: int | None = None
    vocab_size: int = 0
    logits_element_bytes: int = 2
    headroom_bytes: int = 0
    cuda_context_bytes: int = 0
    mem_fraction_static: float | None = None
    gpu_memory_utilization: float | None = None
    max_running_requests: int | None = None
    max_req_len: int | None = None
    meets_min_concurrency: bool | None = None
    fixes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    kv_bytes_per_token: int = 0
    pool_bytes: int = 0
    grouping: str = "uniform"
    num_groups: int = 1

    @property
    def fits(self) -> bool:
        """Starts, and holds ``min_concurrency`` requests when one is asked for."""
        return self.starts and self.meets_min_concurrency is not False


@dataclass(frozen=True)
class Report:
    """Everything `hfmem.estimate` found: the model, its inventory and the training memory.

    ``notes``: every remark on the result, one line each: first the model's (a catalogue or offline fallback, an
    adapter resolved to its base; also in ``model.notes``, which the CLI prints on stderr), then the plan's (what was
    skipped or assumed). ``training.notes`` and ``inference.notes`` hold the notes of each plan.

    In a notebook a report shows as its table (``_repr_html_``, rich's ``__rich_console__``); ``str(report)`` is the
    same table as plain text, as ``hfmem MODEL`` prints it.

    ``inference_unmeasured``: why serving was asked for but could not be planned (the model could not run with a
    cache on the meta device); ``inference`` is None then.
    """

    model: ResolvedModel
    inventory: ParameterInventory
    training: TrainingEstimate | None
    hfmem_version: str
    notes: tuple[str, ...] = ()
    inference: InferenceEstimate | None = None
    checkpoint: CheckpointComparison | None = None
    inference_unmeasured: str | None = None
    engine: EngineEstimate | None = None

    # --- display: every form is the one table renderer (`hfmem.report.render_table`), the model's notes above it ---

    def __str__(self) -> str:
        """The table ``hfmem MODEL`` prints, as plain text at 100 columns, under the model's notes."""
        from hfmem.report import render_table

        return "".join(f"Note: {note}.\n" for note in self.model.notes) + render_table(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython's plain-text display: `__str__`."""
        printer.text("Report(...)" if cycle else str(self))

    def __rich_console__(self, console: Any, options: Any) -> Any:
        """rich's protocol (``rich.print(report)``, rich's Jupyter display): the table in colour at the console's
        width, under the model's notes."""
        from rich.text import Text

        from hfmem.report import render_table

        for note in self.model.notes:
            yield Text(f"Note: {note}.", style="dim")
        yield Text.from_ansi(render_table(self, color=True, width=options.max_width).rstrip("\n"))

    def _repr_html_(self) -> str:
        """Jupyter's display: the rich rendering as an HTML ``<pre>`` block with inline styles."""
        import io

        from rich.console import Console
        from rich.jupyter import JUPYTER_HTML_FORMAT  # rich's own <pre> for Jupyter: monospace, scrolls sideways

        console = Console(record=True, file=io.StringIO(), width=100, force_terminal=True, force_jupyter=False)
        console.print(self)
        return console.export_html(inline_styles=True, code_format=JUPYTER_HTML_FORMAT)


# --- a checkpoint's stored tensors beside the built model (`hfmem.memory.checkpoint`) ---------------------------

#: Bits per element of the safetensors dtypes: the names of safetensors ``Dtype`` (Rust ``safetensors/src/tensor.rs``;
#: Python ``safetensors/torch.py`` ``_TYPES``/``_SIZE``), as `huggingface_hub.utils._safetensors.TensorInfo.dtype`
#: reports them. F4/F6 are the sub-byte microscaling element types. A view of `hfmem.dtypes.DTYPES`.
SAFETENSORS_DTYPE_BITS: Mapping[str, int] = MappingProxyType(
    {d.safetensors_name: d.bits for d in DTYPES if d.safetensors_name is not None}
)

#: Group keys, in report order, with what each says.
DIFFERENCE_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "extra_modules": "modules transformers does not build",
        "quantization_metadata": "quantization metadata (scales, zeros, absmax)",
        "packed_quantized_values": "packed quantized values (several per stored element)",
        "persistent_buffers": "buffers stored in the checkpoint (not parameters)",
        "tied_duplicates": "tied weights stored twice",
        "built_not_stored": "parameters built but not stored",
    }
)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors header: its name, safetensors dtype (``BF16``, ``F8_E4M3``…) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # a scalar (shape ()) holds one element, as huggingface_hub counts it

    @property
    def nbytes(self) -> int:
        """Bytes of the data, from the dtype's width (sub-byte dtypes rounded up to whole bytes)."""
        return -(-self.numel * SAFETENSORS_DTYPE_BITS.get(self.dtype, 8) // 8)


@dataclass(frozen=True)
class CheckpointSummary:
    """Every tensor a checkpoint stores, with per-dtype totals computed once.

    Attributes:
        source: where the headers came from (``hub:org/name@sha``, a local folder).
        tensors: the stored tensors, in header order.
        params_by_dtype: elements per safetensors dtype (what the Hub's ``safetensors.parameters`` shows).
        bytes_by_dtype: data bytes per dtype.
    """

    source: str
    tensors: tuple[StoredTensor, ...]
    params_by_dtype: Mapping[str, int] = field(init=False, repr=False, compare=False)
    bytes_by_dtype: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        params: dict[str, int] = {}
        nbytes: dict[str, int] = {}
        for tensor in self.tensors:
            params[tensor.dtype] = params.get(tensor.dtype, 0) + tensor.numel
            nbytes[tensor.dtype] = nbytes.get(tensor.dtype, 0) + tensor.nbytes
        object.__setattr__(self, "params_by_dtype", MappingProxyType(dict(sorted(params.items()))))
        object.__setattr__(self, "bytes_by_dtype", MappingProxyType(dict(sorted(nbytes.items()))))

    @property
    def total_params(self) -> int:
        return sum(self.params_by_dtype.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)


@dataclass(frozen=True)
class DifferenceGroup:
    """One named part of stored − built: ``params`` > 0 when the checkpoint holds more, < 0 when less.

    ``tensors`` counts stored tensors (built parameters for ``built_not_stored``); ``examples`` names a few.
    """

    reason: str
    tensors: int
    params: int
    bytes: int = 0
    examples: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        return DIFFERENCE_REASONS.get(self.reason, self.reason)


@dataclass(frozen=True)
class CheckpointComparison:
    """A checkpoint beside the built model: ``difference_params = Σ explained params + unexplained_params``.

    Attributes:
        summary: the stored tensors.
        built_params: the built model's unique parameters (`ParameterInventory.total_params`).
        explained: the named groups, in `DIFFERENCE_REASONS` order, empty ones left out.
        unexplained_params: stored − built that no rule explains (stored tensors nothing matches, and matched
            tensors whose element count differs without a packed dtype); ``unexplained_examples`` names them.
        num_hidden_layers: the layer count that tells built layers from extra ones (None: not checked).
        scheme_metadata_bytes: what hfmem's quantization formula (`weights_breakdown`) predicts for the built
            model's quantization metadata under ``scheme``, beside ``quantization_metadata`` bytes actually stored.
    """

    summary: CheckpointSummary
    built_params: int
    explained: tuple[DifferenceGroup, ...]
    unexplained_params: int
    unexplained_tensors: int = 0
    unexplained_examples: tuple[str, ...] = ()
    num_hidden_layers: int | None = None
    scheme_name: str | None = None
    scheme_metadata_bytes: int | None = None

    @property
    def difference_params(self) -> int:
        return self.summary.total_params - self.built_params

    def group(self, reason: str) -> DifferenceGroup | None:
        return next((g for g in self.explained if g.reason == reason), None)
