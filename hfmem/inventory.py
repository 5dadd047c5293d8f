"""ModelConfig → ParameterInventory, by building the model's real class on PyTorch's meta device.

The only module that imports torch, transformers and accelerate, and it does so lazily inside the functions, so
``hfmem --help`` and the formulas never pay for them. No weights are downloaded or allocated: meta tensors have
shapes and dtypes but no storage. transformers' errors become hfmem errors here and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hfmem.errors import (
    InvalidConfigError,
    RemoteCodeRequiredError,
    UnsupportedArchitectureError,
)
from hfmem.types import ModelConfig, ParameterInfo, ParameterInventory

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

__all__ = ["count_parameters", "build_transformers_config", "MOE_NUM_EXPERTS_KEYS", "MOE_TOP_K_KEYS"]

#: Config keys that name the number of routed experts (Mixtral/gpt-oss, Qwen-MoE, DeepSeek) and the experts used
#: per token. The first key present wins.
MOE_NUM_EXPERTS_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
MOE_TOP_K_KEYS = ("num_experts_per_tok", "experts_per_token", "moe_top_k", "top_k")
#: A routed-expert parameter: inside a module called ``experts`` (fused 3-D tensors in transformers >= 5, or an
#: ``experts.<i>`` ModuleList in older code). ``shared_experts`` / ``shared_expert`` do not match.
_ROUTED_EXPERT = re.compile(r"(^|\.)experts\.")

# Auto classes tried, in order, when `architectures` names no class transformers has.
_AUTO_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_MAPPING_NAMES",
)
_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModel")


def count_parameters(model: ModelConfig, *, trust_remote_code: bool = False) -> ParameterInventory:
    """Build ``model`` on the meta device and take its exact inventory.

    Uses the class the checkpoint names in ``architectures`` (so an untied LM head is counted), falling back
    through transformers' auto mappings for the ``model_type``.

    Args:
        model: a resolved config (see `hfmem.hub.resolve_model`).
        trust_remote_code: allow running the repo's own modelling code when the config needs it.

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
    return _inventory(torch_model, config, arch)


def build_transformers_config(model: ModelConfig, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The transformers config object for ``model`` (no network: custom code is read from ``model.directory``)."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = dict(model.config)
    model_type = raw.get("model_type")
    auto_map = raw.get("auto_map") if isinstance(raw.get("auto_map"), dict) else {}
    if trust_remote_code and auto_map and "AutoConfig" in auto_map:
        if model.directory is None:
            raise RemoteCodeRequiredError(model.model_id, "its code is not on disk")
        try:
            return AutoConfig.from_pretrained(str(model.directory), trust_remote_code=True)
        except Exception as e:
            raise UnsupportedArchitectureError(
                f"the custom config code of '{model.model_id}' failed ({type(e).__name__}: {_first_line(e)}); "
                "check the repo's code or pass a config transformers knows"
            ) from e
    if not isinstance(model_type, str) or not model_type:
        raise InvalidConfigError(
            f"config.json of '{model.model_id}' has no 'model_type'; is it a transformers config.json?"
        )
    if model_type not in CONFIG_MAPPING:
        if "AutoConfig" in auto_map:
            raise RemoteCodeRequiredError(
                model.model_id, f"model_type '{model_type}' is defined by {auto_map['AutoConfig']}"
            )
        raise UnsupportedArchitectureError(
            f"model_type '{model_type}' of '{model.model_id}' is unknown to the installed transformers "
            f"{transformers.__version__}; upgrade it (`pip install -U transformers`) or check the model_type"
        )
    raw.pop("model_type")
    try:
        return CONFIG_MAPPING[model_type](**raw)
    except Exception as e:  # config classes validate in __init__/__post_init__ and raise many types
        raise InvalidConfigError(
            f"config.json of '{model.model_id}' is not a valid '{model_type}' config "
            f"({type(e).__name__}: {_first_line(e)}); fix the field it names"
        ) from e


def _instantiate(model: ModelConfig, config: PretrainedConfig, *, trust_remote_code: bool) -> tuple[nn.Module, str]:
    import transformers
    from accelerate import init_empty_weights

    arch = model.architecture
    auto_map: dict[str, Any] = getattr(config, "auto_map", None) or {}
    remote_auto = _remote_auto_class(auto_map, arch)
    builder: Any = None
    if remote_auto is not None and (trust_remote_code or arch is None or not hasattr(transformers, arch)):
        if not trust_remote_code:
            raise RemoteCodeRequiredError(
                model.model_id, f"architecture '{arch}' is defined by {auto_map[remote_auto]}"
            )
        auto_cls = getattr(transformers, remote_auto)
        builder = lambda: auto_cls.from_config(config, trust_remote_code=True)  # noqa: E731
        name = arch or remote_auto
    else:
        cls, name = _native_class(model, config, arch)
        # Build in the checkpoint's dtype (config `dtype` / `torch_dtype`), so each parameter's dtype is what the
        # checkpoint stores, modules transformers keeps in fp32 (`_keep_in_fp32_modules`) included.
        dtype = getattr(config, "dtype", None)
        kwargs = {"dtype": dtype} if _is_floating_dtype(dtype) else {}
        builder = lambda: cls._from_config(config, **kwargs)  # noqa: E731
    try:
        with init_empty_weights(include_buffers=True):
            return builder(), name
    except (RemoteCodeRequiredError, UnsupportedArchitectureError):
        raise
    except Exception as e:
        raise UnsupportedArchitectureError(
            f"transformers {transformers.__version__} could not build {name} from the config of "
            f"'{model.model_id}' ({type(e).__name__}: {_first_line(e)}); check the config values or try "
            "another transformers version"
        ) from e


def _is_floating_dtype(dtype: object) -> bool:
    import torch

    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


def _remote_auto_class(auto_map: dict[str, Any], arch: str | None) -> str | None:
    """The auto_map key whose class is ``arch`` (or the most specific model key), if any."""
    model_keys = [k for k in auto_map if k.startswith("AutoModel")]
    for key in model_keys:
        ref = auto_map[key][0] if isinstance(auto_map[key], (list, tuple)) else auto_map[key]
        if arch and isinstance(ref, str) and ref.rsplit(".", 1)[-1] == arch:
            return key
    for key in _AUTO_CLASSES:
        if key in model_keys:
            return key
    return None


def _native_class(model: ModelConfig, config: PretrainedConfig, arch: str | None) -> tuple[Any, str]:
    import transformers
    from transformers.models.auto import modeling_auto

    if arch and hasattr(transformers, arch):
        return getattr(transformers, arch), arch
    for mapping_name in _AUTO_MAPPINGS:
        mapping = getattr(modeling_auto, mapping_name, {})
        name = mapping.get(config.model_type)
        if isinstance(name, (list, tuple)):
            name = name[0]
        if name and hasattr(transformers, name):
            return getattr(transformers, name), name
    raise UnsupportedArchitectureError(
        f"transformers {transformers.__version__} has no model class for '{model.model_id}' "
        f"(architectures={arch!r}, model_type={config.model_type!r}); upgrade transformers or pass "
        "--trust-remote-code if the repo ships its own code"
    )


def _inventory(model: nn.Module, config: PretrainedConfig, arch: str) -> ParameterInventory:
    from torch import nn

    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    with contextlib.suppress(Exception):  # some models implement neither accessor
        out = model.get_output_embeddings()
        if out is not None and getattr(out, "weight", None) is not None:
            embedding_ids.add(id(out.weight))

    base_prefix = getattr(model, "base_model_prefix", "") or ""
    parameters: list[ParameterInfo] = []
    per_module: dict[str, int] = {}
    for name, param in model.named_parameters():  # remove_duplicate=True: tied weights once
        parameters.append(
            ParameterInfo(
                name=name,
                shape=tuple(param.shape),
                dtype=str(param.dtype).removeprefix("torch."),
                trainable=param.requires_grad,
                is_embedding=id(param) in embedding_ids,
                is_routed_expert=bool(_ROUTED_EXPERT.search(name)),
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
    )


def _moe_routing(config: PretrainedConfig) -> tuple[int, int] | None:
    """``(num_experts, experts_per_token)`` from an MoE config, else None."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num = next((getattr(text_config, k) for k in MOE_NUM_EXPERTS_KEYS if getattr(text_config, k, None)), None)
    top_k = next((getattr(text_config, k) for k in MOE_TOP_K_KEYS if getattr(text_config, k, None)), None)
    if isinstance(num, int) and isinstance(top_k, int) and 0 < top_k <= num:
        return num, top_k
    return None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' logging and warnings while building (hfmem's own notes go to stderr instead)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    """The error's text on one line (validators put the useful part on the second line), at most 300 chars."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return (text[:297] + "...") if len(text) > 300 else (text or type(error).__name__)
