"""Frozen dataclasses at the stage boundaries: ModelConfig → ParameterInventory → TrainingEstimate → Report.

Counts are ``*_params`` (elements), sizes are ``*_bytes`` (integers). Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ModelSource",
    "Precision",
    "Optimizer",
    "Offload",
    "Accounting",
    "PRECISIONS",
    "OPTIMIZERS",
    "OFFLOADS",
    "ACCOUNTINGS",
    "ModelConfig",
    "ParameterInfo",
    "MoeInfo",
    "ParameterInventory",
    "TrainingSetup",
    "StageMemory",
    "TrainingEstimate",
    "Report",
]

ModelSource = Literal["hub", "local", "catalogue", "params"]
Precision = Literal["fp32", "tf32", "bf16-mixed", "fp16-mixed", "bf16", "fp16"]
Optimizer = Literal["adamw", "adamw-8bit", "sgd", "sgd-momentum", "adafactor", "lion"]
Offload = Literal["none", "optimizer", "optimizer+params"]
Accounting = Literal["hfmem", "deepspeed"]

PRECISIONS: tuple[Precision, ...] = ("fp32", "tf32", "bf16-mixed", "fp16-mixed", "bf16", "fp16")
OPTIMIZERS: tuple[Optimizer, ...] = ("adamw", "adamw-8bit", "sgd", "sgd-momentum", "adafactor", "lion")
OFFLOADS: tuple[Offload, ...] = ("none", "optimizer", "optimizer+params")
ACCOUNTINGS: tuple[Accounting, ...] = ("hfmem", "deepspeed")


@dataclass(frozen=True)
class ModelConfig:
    """A resolved model: where its config.json came from and what it says.

    Attributes:
        model_id: what the user asked for (a Hub id, or the path they typed).
        source: ``hub`` (fetched or read from the HF cache), ``local`` (a folder or file), ``catalogue``
            (the snapshot bundled with hfmem) or ``params`` (``--params``: no config at all).
        config: the parsed config.json (empty for ``params``).
        revision: the commit sha the Hub served, when known.
        directory: the folder holding config.json (custom-code models load their code from there).
        notes: one-line remarks for stderr: fallbacks taken and why, adapters resolved to their base.
    """

    model_id: str
    source: ModelSource
    config: Mapping[str, Any]
    revision: str | None = None
    directory: Path | None = None
    notes: tuple[str, ...] = ()

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
    """One unique parameter tensor (tied weights appear once, under their first name)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool = True
    is_embedding: bool = False
    is_routed_expert: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


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
            active = total - routed + routed * top_k // num_experts
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
class TrainingSetup:
    """What the user plans: precision, optimizer, sharding and offload.

    ``zero_stages`` lists the ZeRO stages to report (one row each).
    """

    precision: Precision = "bf16-mixed"
    optimizer: Optimizer = "adamw"
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)
    gpus_per_node: int = 1
    nodes: int = 1
    offload: Offload = "none"
    accounting: Accounting = "hfmem"

    @property
    def num_gpus(self) -> int:
        """The data-parallel (ZeRO sharding) degree: every GPU of every node."""
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class StageMemory:
    """Model-state memory of one ZeRO stage, per GPU (bytes), and CPU RAM per node when offloading."""

    zero_stage: int
    weights_bytes: int
    master_weights_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    cpu_bytes_per_node: int = 0
    total_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        total = self.weights_bytes + self.master_weights_bytes + self.gradients_bytes + self.optimizer_states_bytes
        object.__setattr__(self, "total_bytes", total)


@dataclass(frozen=True)
class TrainingEstimate:
    """Per-GPU model-state memory for each requested ZeRO stage, with the convention used."""

    setup: TrainingSetup
    stages: tuple[StageMemory, ...]
    convention: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    """Everything `hfmem.estimate` found: the model, its inventory and the training memory."""

    model: ModelConfig
    inventory: ParameterInventory
    training: TrainingEstimate
    hfmem_version: str
    notes: tuple[str, ...] = ()
