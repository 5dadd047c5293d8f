"""A meta model → its `ParameterInventory`: every parameter counted, grouped and attributed to a layer."""

from __future__ import annotations

import contextlib
import inspect
import re
from typing import TYPE_CHECKING

from hfmem.build._util import _quiet_transformers
from hfmem.build.classes import _instantiate
from hfmem.build.config import _context_tokens, _moe_routing, build_transformers_config
from hfmem.build.finetune import apply_finetune
from hfmem.types import (
    FinetuneSettings,
    ParameterInfo,
    ParameterInventory,
    ResolvedModel,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

__all__ = ["count_parameters", "layer_modules"]


#: A routed-expert parameter: inside a module called ``experts`` (fused 3-D tensors in transformers >= 5, or an
#: ``experts.<i>`` ModuleList in older code). ``shared_experts`` / ``shared_expert`` do not match.
_ROUTED_EXPERT = re.compile(r"(^|\.)experts\.")


def count_parameters(
    model: ResolvedModel, *, trust_remote_code: bool = False, finetune: FinetuneSettings | None = None
) -> ParameterInventory:
    """Build ``model`` on the meta device and take its exact inventory.

    Uses the class the checkpoint names in ``architectures`` (so an untied LM head is counted), falling back
    through transformers' auto mappings for the ``model_type``.

    Args:
        model: a resolved config (see `hfmem.hub.resolve_model`).
        trust_remote_code: allow running the repo's own modelling code when the config needs it.
        finetune: what is trained. ``lora``/``qlora`` wrap the meta model with peft's ``get_peft_model`` (so the
            adapters, their shapes and ``requires_grad`` are exactly peft's); ``freeze`` trains only the parameters
            ``train_modules`` matches. None or ``full``: every parameter is trainable.

    Returns:
        Unique parameters (tied weights once) with shapes and dtypes, buffers counted apart, the largest single
        module, per-module counts and, for MoE models, the parameters active per token.

    Raises:
        InvalidConfigError: the config cannot be read as its model type's config.
        UnsupportedArchitectureError: the installed transformers does not know the model, or cannot build it.
        RemoteCodeRequiredError: the model needs its repo's code and ``trust_remote_code`` is False.
    """
    with _quiet_transformers():
        config = build_transformers_config(model, trust_remote_code=trust_remote_code)
        torch_model, arch = _instantiate(model, config, trust_remote_code=trust_remote_code)
        torch_model = apply_finetune(torch_model, finetune, model.model_id)
    return _inventory(torch_model, config, arch)


def layer_modules(torch_model: nn.Module) -> dict[int, str]:
    """The outermost transformer layers (`GradientCheckpointingLayer`), by module id, in registration order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    names: dict[int, str] = {}
    for name, module in torch_model.named_modules():
        if isinstance(module, GradientCheckpointingLayer) and not any(
            name.startswith(outer + ".") for outer in names.values()
        ):
            names[id(module)] = name
    return names


def _inventory(model: nn.Module, config: PretrainedConfig, arch: str) -> ParameterInventory:
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    input_embedding_ids = set(embedding_ids)
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, Conv1D))}
    output_id: int | None = None
    with contextlib.suppress(Exception):  # some models implement neither accessor
        out = model.get_output_embeddings()
        if out is not None and getattr(out, "weight", None) is not None:
            embedding_ids.add(id(out.weight))
            output_id = id(out.weight)
    tied = output_id is not None and output_id in input_embedding_ids
    layer_names = list(layer_modules(model).values())
    seen_layer = False

    base_prefix = getattr(model, "base_model_prefix", "") or ""
    parameters: list[ParameterInfo] = []
    per_module: dict[str, int] = {}
    for name, param in model.named_parameters():  # remove_duplicate=True: tied weights once
        layer_index = next((i for i, layer in enumerate(layer_names) if name.startswith(layer + ".")), None)
        seen_layer = seen_layer or layer_index is not None
        parameters.append(
            ParameterInfo(
                name=name,
                shape=tuple(param.shape),
                dtype=str(param.dtype).removeprefix("torch."),
                trainable=param.requires_grad,
                is_embedding=id(param) in embedding_ids,
                is_routed_expert=bool(_ROUTED_EXPERT.search(name)),
                is_linear=id(param) in linear_ids,
                is_output_embedding=id(param) == output_id and not tied,
                layer_index=layer_index,
                after_layers=layer_index is None and seen_layer,
            )
        )
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == base_prefix and len(parts) > 2 else parts[0]
        per_module[key] = per_module.get(key, 0) + param.numel()

    # DeepSpeed's largest_layer_params: the most parameters owned directly by one module (recurse=False).
    largest = ("", 0)
    for module_name, module in model.named_modules():
        owned = sum(p.numel() for p in module.parameters(recurse=False))
        if owned > largest[1]:
            largest = (module_name, owned)

    buffers = sum(b.numel() for _, b in model.named_buffers())
    return ParameterInventory.from_parameters(
        parameters,
        buffer_params=buffers,
        largest_module=largest,
        module_params=list(per_module.items()),
        architecture=arch,
        model_type=getattr(config, "model_type", None),
        moe_routing=_moe_routing(config),
        layer_names=layer_names,
        tied_embeddings=tied,
        context_tokens=_context_tokens(config),
        image_inputs="pixel_values" in inspect.signature(model.forward).parameters,
        attention_modules=sum("Attention" in type(m).__name__ for m in model.modules()),
        encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
    )
