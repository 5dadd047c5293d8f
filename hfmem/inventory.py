"""ModelConfig → ParameterInventory, by building the model's real class on PyTorch's meta device.

The only module that imports torch, transformers and accelerate, and it does so lazily inside the functions, so
``hfmem --help`` and the formulas never pay for them. No weights are downloaded or allocated: meta tensors have
shapes and dtypes but no storage. transformers' errors become hfmem errors here and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import re
import sys
import warnings
from collections.abc import Callable, Hashable, Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from hfmem.errors import (
    InvalidConfigError,
    InvalidSetupError,
    RemoteCodeRequiredError,
    UnsupportedArchitectureError,
)
from hfmem.limits import check_config
from hfmem.memory.activations import CONTEXT_KEYS
from hfmem.memory.methods import matches_patterns
from hfmem.types import (
    ActivationProfile,
    Attention,
    FinetuneSettings,
    InferenceProfile,
    KvLayer,
    LayerProfile,
    ModelConfig,
    ParameterInfo,
    ParameterInventory,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

__all__ = [
    "count_parameters",
    "profile_activations",
    "profile_inference",
    "cuda_style_dropout",
    "build_transformers_config",
    "native_fallback",
    "MOE_NUM_EXPERTS_KEYS",
    "MOE_TOP_K_KEYS",
]

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


def count_parameters(
    model: ModelConfig, *, trust_remote_code: bool = False, finetune: FinetuneSettings | None = None
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


def apply_finetune(
    torch_model: nn.Module,
    finetune: FinetuneSettings | None,
    model_id: str,
    *,
    trace_dtype: Any = None,
) -> nn.Module:
    """Mark what ``finetune`` trains, on a meta model; returns the model to inventory or trace.

    ``lora``/``qlora``: ``peft.get_peft_model`` with a ``LoraConfig`` built from the settings, inside
    ``init_empty_weights`` so the adapters are meta tensors too; the returned module is peft's
    ``get_base_model()`` (the transformers model with the LoRA layers injected, names unchanged but for
    ``base_layer`` / ``lora_A`` / ``lora_B``). QLoRA's adapters are the same as LoRA's: bitsandbytes swaps the
    frozen base weights for 4-bit ones, which the memory model accounts for. ``freeze``: ``requires_grad`` follows
    ``train_modules``.

    Args:
        trace_dtype: for the activation trace, a 16-bit activation dtype: emulate training under autocast
            (HF Trainer ``bf16=True``). peft keeps the adapters in fp32 and casts each adapted layer's input to
            fp32 (``_cast_input_dtype``); autocast then runs ``lora_A`` in 16-bit on a fresh 16-bit copy of that
            input, which ``lora_A`` saves for backward. The trace casts the adapters to ``trace_dtype`` (the meta
            device cannot autocast) and gives each ``lora_A`` that copy, so it is measured.

    Raises:
        InvalidSetupError: peft rejects the settings (a target module that does not exist…), or a
            ``--train-modules`` pattern matches nothing.
    """
    if finetune is None or finetune.method == "full":
        return torch_model
    if finetune.method == "freeze":
        names = [name for name, _ in torch_model.named_parameters()]
        unmatched = [p for p in finetune.train_modules if not any(matches_patterns(n, (p,)) for n in names)]
        if not finetune.train_modules or unmatched:
            raise InvalidSetupError(
                f"--train-modules {' '.join(unmatched) or '(none given)'} matches no parameter of '{model_id}'; "
                f"pass module names or globs such as 'lm_head', 'model.layers.3?.*' or 're:layers\\.(30|31)\\.' "
                f"(parameters look like '{names[0] if names else ''}')"
            )
        for name, param in torch_model.named_parameters():
            param.requires_grad_(matches_patterns(name, finetune.train_modules))
        return torch_model
    import peft
    from accelerate import init_empty_weights

    targets: Any = None
    names = finetune.lora_targets or ()
    if names == ("all-linear",):
        targets = "all-linear"
    elif len(names) == 1 and names[0].startswith("re:"):  # an adapter's regex: peft re.fullmatch-es module names
        targets = names[0][3:]
    elif names:
        targets = list(names)
    try:
        lora = peft.LoraConfig(
            r=finetune.lora_rank,
            lora_alpha=finetune.lora_alpha if finetune.lora_alpha is not None else 8,
            target_modules=targets,
            modules_to_save=list(finetune.modules_to_save) or None,
            use_dora=finetune.dora,
        )
        with init_empty_weights(include_buffers=True):
            peft_model = peft.get_peft_model(torch_model, lora)
    except Exception as e:  # peft raises ValueError / TypeError / KeyError for settings it rejects
        raise InvalidSetupError(
            f"peft could not add LoRA adapters to '{model_id}' ({type(e).__name__}: {_first_line(e)}); "
            "check --lora-targets / --modules-to-save against the model's module names, or use "
            "--lora-targets all-linear"
        ) from e
    base = peft_model.get_base_model()
    if trace_dtype is not None:
        _emulate_autocast_adapters(base, trace_dtype)
    return base


def _emulate_autocast_adapters(model: nn.Module, dtype: Any) -> None:
    """Adapters in ``dtype``, each ``lora_A`` fed a fresh ``dtype`` copy of its input (see `apply_finetune`)."""
    import torch
    from peft.tuners.lora import LoraLayer

    if dtype == torch.float32:
        return

    def copy_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        (x, *rest) = args
        return (x.to(torch.float32).to(dtype), *rest)

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A.values():
                adapter.to(dtype)
                adapter.register_forward_pre_hook(copy_input)
            for adapter in module.lora_B.values():
                adapter.to(dtype)
            for magnitude in getattr(module, "lora_magnitude_vector", {}).values():
                magnitude.to(dtype)
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype == torch.float32 and "modules_to_save" in name:
            param.data = param.data.to(dtype)


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


#: The head a class name ends with (``SomethingLlamaForCausalLM`` → ``ForCausalLM``); the rest is its stem.
_HEAD = re.compile(r"(For[A-Z]\w*|LMHeadModel|Model)$")
#: Size fields a native config must read from the custom one for a fallback to give the same shapes.
_SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")
#: Keys of other ways to size key/value heads (ChatGLM ``multi_query_group_num``, ``num_kv_heads``).
_KV_KEYS = re.compile(r"kv_heads|key_value|query_group|kv_groups")


def native_fallback(model: ModelConfig) -> ModelConfig:
    """For a config that needs its repo's code, the nearest architecture transformers has, with a note saying so.

    Called when ``--trust-remote-code`` is off; the repo's code never runs. Three cases:

    * ``model_type`` is one transformers knows but ``architectures`` names a custom class from ``auto_map``: the
      model type's own class with the same head (``LlamaForCausalLM`` for ``MyLlamaForCausalLM``).
    * ``model_type`` is unknown and ``architectures`` names a transformers class: that class and its model type.
    * ``model_type`` is unknown and ``auto_map`` points at custom code: the transformers model type whose name
      starts or ends the architecture name, an ``auto_map`` class or the model type (``SomethingLlamaForCausalLM``,
      ``llama_custom`` → ``llama``; the longest name wins), provided its config reads the custom config's size
      fields under the same keys (else it would silently use its own defaults) and keeps its experts.

    NOTE: a guess by name. ``Phi3SmallForCausalLM`` matches ``phi3``, but Phi-3-small's ``ff_intermediate_size`` is
    not ``intermediate_size``, so the guess is refused; ``InternLM2ForCausalLM`` and ``ChatGLMModel`` match nothing.

    Returns:
        ``model`` itself when it needs no custom code (or an unknown model type names no transformers class and has
        no ``auto_map``: building it says to upgrade transformers); else the rewritten config (``model_type``,
        ``architectures``, no ``auto_map``) with a note.

    Raises:
        RemoteCodeRequiredError: the config needs custom code and no native architecture fits; says why.
    """
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = dict(model.config)
    model_type, arch = raw.get("model_type"), model.architecture
    auto_map = raw.get("auto_map") if isinstance(raw.get("auto_map"), dict) else {}
    if not isinstance(model_type, str) or not model_type:
        return model
    native_arch = bool(arch and isinstance(getattr(transformers, arch, None), type))
    if model_type in CONFIG_MAPPING:
        remote = _remote_auto_class(auto_map, arch)
        if remote is None or native_arch:
            return model
        target = _class_for(model_type, arch)
        note = _custom_code_note(model, f"architecture '{arch}' is defined by {_class_ref(auto_map[remote])}", target)
        return _rewritten(model, raw, model_type, target, note)
    if native_arch:
        assert arch is not None
        target_type = getattr(getattr(getattr(transformers, arch), "config_class", None), "model_type", None)
        if isinstance(target_type, str) and target_type in CONFIG_MAPPING:
            note = (
                f"model_type '{model_type}' of '{model.model_id}' is unknown to transformers "
                f"{transformers.__version__}; its architectures name transformers' {arch}, so it is built as "
                f"model_type '{target_type}'"
            )
            if auto_map:
                note += " (its auto_map code does not run without --trust-remote-code)"
            return _rewritten(model, raw, target_type, arch, note)
    if not auto_map:
        return model
    names = [a for a in raw.get("architectures") or [] if isinstance(a, str)]
    names += [_class_ref(ref).rsplit(".", 1)[-1] for key, ref in auto_map.items() if key.startswith("AutoModel")]
    names.append(model_type)
    what = f"model_type '{model_type}' is defined by {_class_ref(auto_map.get('AutoConfig', 'its repo'))}"
    refused: list[str] = []
    for native_type, matched in _types_named_in(names):
        reason = _fallback_refused(raw, CONFIG_MAPPING[native_type], native_type)
        if reason:
            refused.append(reason)
            continue
        target = _class_for(native_type, arch)
        note = _custom_code_note(model, what, target, matched)
        return _rewritten(model, raw, native_type, target, note)
    detail = refused[0] if refused else f"no transformers model type is named in {', '.join(sorted(set(names)))}"
    raise RemoteCodeRequiredError(model.model_id, f"{what}; no native architecture fits: {detail}")


def _class_ref(ref: Any) -> str:
    """An auto_map entry's class path, without a ``repo--`` prefix (entries may be ``[slow, fast]`` lists)."""
    ref = ref[0] if isinstance(ref, (list, tuple)) and ref else ref
    return str(ref).split("--")[-1]


def _types_named_in(names: list[str]) -> list[tuple[str, str]]:
    """``(model_type, name)`` for every transformers model type whose name starts or ends one of ``names``.

    Both the model type (``qwen2_moe``) and its config class's stem (``Qwen2Moe``) count, compared lower-case and
    alphanumeric only, from 3 characters up; longest first.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    def squash(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    stems: dict[str, str] = {}
    for native_type, config_name in CONFIG_MAPPING_NAMES.items():
        for stem in (squash(native_type), squash(config_name.removesuffix("Config"))):
            if len(stem) >= 3:
                stems.setdefault(stem, native_type)
    found: dict[str, tuple[int, str]] = {}
    for name in names:
        text = squash(_HEAD.sub("", name)) or squash(name)
        for stem, native_type in stems.items():
            if (text.startswith(stem) or text.endswith(stem)) and len(stem) > found.get(native_type, (0, ""))[0]:
                found[native_type] = (len(stem), name)
    return [(t, name) for t, (_, name) in sorted(found.items(), key=lambda item: -item[1][0])]


def _fallback_refused(raw: dict[str, Any], config_class: Any, native_type: str) -> str | None:
    """Why ``config_class`` cannot stand in for the custom config ``raw``, or None when it can."""
    try:
        native = config_class()
    except Exception:  # noqa: BLE001 - composite configs that need their parts
        return f"'{native_type}' has no default config to compare with"
    attribute_map = getattr(native, "attribute_map", None) or {}
    sized = [key for key in _SIZE_KEYS if hasattr(native, key)]
    if len(sized) < 3:
        return f"'{native_type}' is not a plain text model (its config has no {', '.join(_SIZE_KEYS[:3])})"
    for key in sized:
        aliases = {key, attribute_map.get(key)} | {alias for alias, target in attribute_map.items() if target == key}
        if not any(alias in raw for alias in aliases if alias):
            return f"'{native_type}' reads '{key}', which the config does not set"
    experts = next((k for k in MOE_NUM_EXPERTS_KEYS if isinstance(raw.get(k), int) and raw[k] > 1), None)
    if experts and not any(hasattr(native, k) for k in MOE_NUM_EXPERTS_KEYS):
        return f"the config has experts ({experts}={raw[experts]}) and '{native_type}' has none"
    unknown = [k for k in raw if _KV_KEYS.search(k) and not hasattr(native, k) and k not in attribute_map]
    if unknown:
        return f"'{native_type}' does not read '{unknown[0]}'"
    return None


def _class_for(model_type: str, arch: str | None) -> str:
    """The transformers class of ``model_type`` with ``arch``'s head (``ForCausalLM``…), else its preferred class."""
    import transformers
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    head = _HEAD.search(arch or "")
    if head and head.group(0).startswith("For"):
        name = CONFIG_MAPPING_NAMES[model_type].removesuffix("Config") + head.group(0)
        if hasattr(transformers, name):
            return name
    mappings = ("MODEL_MAPPING_NAMES",) if head and head.group(0) == "Model" else _AUTO_MAPPINGS
    for mapping_name in mappings:
        names = getattr(modeling_auto, mapping_name).get(model_type)
        for name in names if isinstance(names, (list, tuple)) else [names]:
            if isinstance(name, str) and hasattr(transformers, name):
                return name
    return CONFIG_MAPPING_NAMES[model_type].removesuffix("Config") + "Model"


def _custom_code_note(model: ModelConfig, what: str, target: str, matched: str | None = None) -> str:
    nearest = f"the nearest native architecture to '{matched}'" if matched else "its model type's native class"
    return (
        f"'{model.model_id}' needs custom code ({what}) and --trust-remote-code is off: estimating transformers' "
        f"{target} instead ({nearest}); the repo's code may add or change modules, so review it and pass "
        "--trust-remote-code for its exact count"
    )


def _rewritten(model: ModelConfig, raw: dict[str, Any], model_type: str, arch: str, note: str) -> ModelConfig:
    """``model`` as a native ``model_type`` / ``arch`` config (no ``auto_map``), with ``note`` added."""
    config = {k: v for k, v in raw.items() if k != "auto_map"}
    config["model_type"], config["architectures"] = model_type, [arch]
    return dataclasses.replace(model, config=config, notes=(*model.notes, note))


def build_transformers_config(model: ModelConfig, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The transformers config object for ``model`` (no network: custom code is read from ``model.directory``)."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    check_config(model.config, model.model_id)  # before any config class loops over a size
    raw = _decode_special_floats(dict(model.config))
    model_type = raw.get("model_type")
    auto_map = raw.get("auto_map") or {}
    if not isinstance(auto_map, dict):
        raise InvalidConfigError(
            f"config.json of '{model.model_id}' has an 'auto_map' that is a {type(auto_map).__name__}, not an object "
            'mapping auto classes to code ({"AutoConfig": "module.Class"}); fix or remove it'
        )
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


#: transformers writes the floats JSON cannot hold as ``{"__float__": "Infinity"}`` (``PreTrainedConfig.
#: _encode_special_floats``), e.g. Mamba-2's ``"time_step_limit": [0.0, {"__float__": "Infinity"}]``, and decodes them
#: when it reads a config.json; the config classes reject the tagged form.
_SPECIAL_FLOATS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def _decode_special_floats(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"} and value["__float__"] in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value["__float__"]]
        return {k: _decode_special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_special_floats(v) for v in value]
    return value


def _instantiate(
    model: ModelConfig,
    config: PretrainedConfig,
    *,
    trust_remote_code: bool,
    dtype: Any = None,
    attn_implementation: str | None = None,
) -> tuple[nn.Module, str]:
    import transformers
    from accelerate import init_empty_weights

    arch = model.architecture
    auto_map: dict[str, Any] = getattr(config, "auto_map", None) or {}
    if not isinstance(auto_map, dict):  # a custom config class may set anything
        auto_map = {}
    remote_auto = _remote_auto_class(auto_map, arch)
    if remote_auto is not None and (trust_remote_code or arch is None or not hasattr(transformers, arch)):
        if not trust_remote_code:
            raise RemoteCodeRequiredError(
                model.model_id, f"architecture '{arch}' is defined by {auto_map[remote_auto]}"
            )
        auto_cls = getattr(transformers, remote_auto)
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        name = arch or remote_auto
        try:
            with init_empty_weights(include_buffers=True):
                return auto_cls.from_config(config, trust_remote_code=True, **kwargs), name
        except (RemoteCodeRequiredError, UnsupportedArchitectureError):
            raise
        except Exception as e:
            raise _build_error(model, name, e) from e

    # By default build in the checkpoint's dtype (config `dtype` / `torch_dtype`), so each parameter's dtype is
    # what the checkpoint stores, modules transformers keeps in fp32 (`_keep_in_fp32_modules`) included.
    if dtype is None:
        dtype = getattr(config, "dtype", None)
    kwargs = {"dtype": dtype} if _is_floating_dtype(dtype) else {}
    failed: tuple[str, Exception] | None = None
    for cls, name in _native_classes(model, config, arch):
        class_config = _config_for_class(cls, config)
        try:
            return _build_on_meta(cls, class_config, kwargs, attn_implementation), name
        except Exception as e:
            # A class that builds with its default attention but not with the one asked for: say so (callers fall
            # back to eager attention) rather than switch to another class.
            if attn_implementation and _builds(cls, class_config, kwargs):
                raise _build_error(model, name, e) from e
            failed = failed or (name, e)
    assert failed is not None  # _native_classes returns at least one class or raises
    raise _build_error(model, failed[0], failed[1]) from failed[1]


def _build_on_meta(cls: Any, config: PretrainedConfig, kwargs: dict[str, Any], attn_implementation: str | None) -> Any:
    from accelerate import init_empty_weights

    if attn_implementation:
        kwargs = {**kwargs, "attn_implementation": attn_implementation}
    with init_empty_weights(include_buffers=True):
        return cls._from_config(config, **kwargs)


def _builds(cls: Any, config: PretrainedConfig, kwargs: dict[str, Any]) -> bool:
    try:
        _build_on_meta(cls, config, kwargs, None)
    except Exception:  # noqa: BLE001 - any failure means: not this class
        return False
    return True


def _build_error(model: ModelConfig, name: str, error: Exception) -> UnsupportedArchitectureError:
    import transformers

    # transformers raises ImportError naming the package a model needs (timm, PIL, scipy, natten…).
    fix = (
        "install the package it names and rerun"
        if isinstance(error, ImportError)
        else "check the config values or try another transformers version"
    )
    return UnsupportedArchitectureError(
        f"transformers {transformers.__version__} could not build {name} from the config of "
        f"'{model.model_id}' ({type(error).__name__}: {_first_line(error)}); {fix}"
    )


def _config_for_class(cls: Any, config: PretrainedConfig) -> PretrainedConfig:
    """The config transformers' auto classes give ``cls``: a text-only class gets a composite config's text part.

    ``AutoModelForCausalLM.from_config(Llama4Config())`` builds ``Llama4ForCausalLM`` from ``config.text_config``
    (transformers ``_BaseAutoModelClass.from_config``); building the class from the composite config instead fails
    (``'Llama4Config' object has no attribute 'pad_token_id'``). The parent's quantization config goes along.
    """
    text_class = (getattr(config, "sub_configs", None) or {}).get("text_config")
    if text_class is None or getattr(cls, "config_class", None) is not text_class:
        return config
    text_config = config.get_text_config()
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None:
        text_config.quantization_config = quantization
    return text_config


def _is_floating_dtype(dtype: object) -> bool:
    import torch

    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


def _remote_auto_class(auto_map: dict[str, Any], arch: str | None) -> str | None:
    """The auto_map key whose class is ``arch`` (or the most specific model key), if any."""
    model_keys = [k for k in auto_map if isinstance(k, str) and k.startswith("AutoModel")]
    for key in model_keys:
        value = auto_map[key]
        ref = value[0] if isinstance(value, (list, tuple)) and value else value
        if arch and isinstance(ref, str) and ref.rsplit(".", 1)[-1] == arch:
            return key
    for key in _AUTO_CLASSES:
        if key in model_keys:
            return key
    return None


def _native_classes(model: ModelConfig, config: PretrainedConfig, arch: str | None) -> list[tuple[Any, str]]:
    """The transformers classes to try, in order: the one ``architectures`` names, else the auto mappings'.

    Without a class name, the model type's causal-LM, seq2seq-LM, masked-LM and base classes come first (hfmem's
    preference), then the task classes of every other auto mapping (depth estimation, text-to-waveform…), so a
    model that only a task class builds is still counted. The caller builds the first one that works.
    """
    import transformers
    from transformers.models.auto import modeling_auto

    if arch and hasattr(transformers, arch):
        return [(getattr(transformers, arch), arch)]
    others = sorted(
        name
        for name in dir(modeling_auto)
        if name.startswith("MODEL_") and name.endswith("_MAPPING_NAMES") and name not in _AUTO_MAPPINGS
    )
    found: list[tuple[Any, str]] = []
    for mapping_name in (*_AUTO_MAPPINGS, *others):
        mapping = getattr(modeling_auto, mapping_name, None)
        names = mapping.get(config.model_type) if isinstance(mapping, dict) else None
        for name in names if isinstance(names, (list, tuple)) else [names]:
            if isinstance(name, str) and hasattr(transformers, name) and name not in (n for _, n in found):
                found.append((getattr(transformers, name), name))
                break
    if not found:
        raise UnsupportedArchitectureError(
            f"transformers {transformers.__version__} has no auto class for model_type {config.model_type!r} of "
            f"'{model.model_id}' and the config names no class it has (architectures={arch!r}); if it is part of a "
            'larger model pass that model\'s config, else name a transformers class in "architectures", upgrade '
            "transformers, or pass --trust-remote-code if the repo ships its own code"
        )
    return found


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
    )


def _context_tokens(config: PretrainedConfig) -> int | None:
    """The context length of the built config: its own keys, then its text config's (`CONTEXT_KEYS`, in order).

    Read from the config object, so the config class's defaults count (``Gemma3TextConfig.max_position_embeddings``
    is 131,072 in transformers models/gemma3/configuration_gemma3.py) and attribute maps apply (GPT-2's
    ``n_positions``).
    """
    for source in (config, _text_config(config)):
        for key in CONTEXT_KEYS:
            value = getattr(source, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


#: The name hfmem registers in transformers' AttentionInterface for its fused-kernel emulation.
FUSED_ATTENTION = "hfmem_fused"


def profile_activations(
    model: ModelConfig,
    *,
    batch_size: int,
    seq_len: int,
    attn: Attention,
    dtype: str,
    dropout: float | None = None,
    trust_remote_code: bool = False,
    finetune: FinetuneSettings | None = None,
    tensor_parallel: bool = False,
    images_per_sample: int = 0,
) -> ActivationProfile:
    """Measure what one training micro-batch saves for backward, by running the model on the meta device.

    The model's own class runs forward with labels under ``torch.autograd.graph.saved_tensors_hooks``: every
    tensor autograd keeps is seen once (by storage), parameters excluded, and attributed to the transformer layer
    that saved it. Meta tensors have shapes and dtypes but no storage, so this costs no memory and milliseconds
    per layer. Attention runs through a stand-in for a fused kernel (FlashAttention / SDPA's flash and
    memory-efficient kernels), which saves what they save: q, k and v at their own head counts, the output, and an
    fp32 log-sum-exp of shape [batch, heads, seq]. With ``attn="eager"`` the model's eager attention runs too, and
    its score matrices are measured as well.

    Args:
        batch_size: micro-batch per GPU.
        seq_len: tokens per sequence (encoder–decoder models: both the encoder and the decoder length).
        attn: ``sdpa`` and ``flash`` use the fused stand-in; ``eager`` the model's eager attention.
        dtype: activation dtype name (``bfloat16``, ``float16``, ``float32``).
        dropout: override every dropout probability (None: keep the config's).
        finetune: the method: a LoRA model is traced with its adapters (in the activation dtype, as under
            autocast) and frozen parameters, so what autograd does not need for frozen weights is not counted.
        tensor_parallel: also measure, per layer, the bytes Megatron TP would split (``tp_split_bytes``): a
            ``TorchFunctionMode`` follows which tensors lie between a column-parallel linear (a weight op on a
            replicated input) and a row-parallel one (a weight op on a split input). Off by default: it slows
            the trace.
        images_per_sample: for a model that takes images, feed each sample this many default images
            (`_image_inputs`); when the model cannot be traced with them, it is traced on token ids only and the
            profile says why (``images_not_traced``).

    Raises:
        UnsupportedArchitectureError: the model cannot run forward on the meta device.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    with _quiet_transformers():
        config = build_transformers_config(model, trust_remote_code=trust_remote_code)
        options = _TraceOptions(dropout, trust_remote_code, finetune, tensor_parallel, images_per_sample)
        text_only = dataclasses.replace(options, images=0)
        # With images first (a model that takes none ignores them), then on token ids only; each with the fused
        # stand-in, then the model's own attention. Only a failure of the fused-kernel stand-in is fixed by the
        # model's own attention: it is tried before saying so, and measures eager attention (score matrices
        # included; `attention_calls == 0` makes the plan say so). When every attempt fails, the token-ids-only
        # fused error stands, with no advice to pass --attn eager.
        attempts = [(FUSED_ATTENTION, options)] if images_per_sample else []
        attempts += [(FUSED_ATTENTION, text_only), ("eager", text_only)]
        fused, image_error, text_error = None, None, None
        for implementation, attempt in attempts:
            try:
                fused = _trace(model, config, implementation, torch_dtype, batch_size, seq_len, attempt)
                break
            except UnsupportedArchitectureError as e:
                if attempt.images:
                    image_error = e
                else:
                    text_error = text_error or e
        if fused is None:
            assert text_error is not None
            raise text_error
        if image_error is not None and fused.images_per_sample == 0:
            fused = dataclasses.replace(fused, images_not_traced=_image_failure(image_error))
        if attn == "eager":
            used = dataclasses.replace(options, images=fused.images_per_sample and images_per_sample)
            chosen = (
                fused
                if fused.attn == "eager"
                else _trace(model, config, "eager", torch_dtype, batch_size, seq_len, used)
            )
        else:
            chosen = fused
    return ActivationProfile(
        batch_size=batch_size,
        seq_len=seq_len,
        attn=attn,
        dtype=dtype,
        vocab_size=chosen.vocab_size,
        layers=chosen.layers,
        fused_layers=fused.layers,
        other_bytes=chosen.other_bytes,
        logits_saved_bytes=chosen.logits_saved_bytes,
        logits_bytes=chosen.logits_bytes,
        attention_calls=fused.attention_calls,
        other_after_bytes=chosen.other_after_bytes,
        images_per_sample=fused.images_per_sample,
        image_tokens=fused.image_tokens,
        images_not_traced=fused.images_not_traced,
    )


def _register_fused_attention() -> None:
    import torch
    from transformers import AttentionInterface

    if FUSED_ATTENTION in AttentionInterface._global_mapping:
        return

    class FusedAttention(torch.autograd.Function):
        """Shapes and saved tensors of a fused attention kernel; no arithmetic (it only ever sees meta tensors)."""

        @staticmethod
        def forward(ctx: Any, query: Any, key: Any, value: Any) -> Any:
            batch, heads, seq, _ = query.shape
            # Flash / SDPA kernels return [batch, seq, heads, head_dim] memory, so the o_proj input is this tensor.
            output = query.new_empty((batch, seq, heads, value.shape[-1]))
            logsumexp = query.new_empty((batch, heads, seq), dtype=torch.float32)
            ctx.save_for_backward(query, key, value, output, logsumexp)
            return output

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:  # pragma: no cover - never called on meta traces
            query, key, value, _, _ = ctx.saved_tensors
            return torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)

    def fused_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        _TRACE_STATE["attention_calls"] += 1
        return FusedAttention.apply(query, key, value), None

    AttentionInterface.register(FUSED_ATTENTION, fused_attention)


_TRACE_STATE: dict[str, Any] = {"attention_calls": 0, "full_length": False}


@dataclasses.dataclass(frozen=True)
class _TraceOptions:
    dropout: float | None
    trust_remote_code: bool
    finetune: FinetuneSettings | None
    tensor_parallel: bool
    images: int = 0


def _tensor_parallel_mode(params: set[int], replicated: set[int]) -> Any:
    """A TorchFunctionMode that marks the storages Megatron tensor parallelism would split.

    A weight op (an op taking a ≥ 2-D parameter: linear, addmm, matmul, a routed expert's slice) toggles: on an
    unsplit input it is column-parallel (output split), on a split input row-parallel (output all-reduced, whole).
    Embedding lookups, the MoE router and LoRA adapters (``replicated``) give whole outputs; any other op's output
    is split iff one of its inputs is. The mode is off inside an op, so each op is seen once, at the top level.
    """
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    class TensorParallelMode(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.split: set[int] = set()
            self.known: set[int] = set()
            self.keep_alive: list[Any] = []
            self.op_split_in = False

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            weights, activations = [], []
            for tensor in inputs:
                try:
                    key = tensor.untyped_storage()._cdata
                except Exception:  # noqa: BLE001 - tensors without storage (sparse, nested) are not tracked
                    continue
                (weights if key in params else activations).append((key, tensor))
            split_in = any(key in self.split for key, _ in activations)
            big = [key for key, t in weights if t.dim() >= 2]
            if func is torch.nn.functional.embedding or (big and all(key in replicated for key in big)):
                split_out = False
            elif big:
                split_out = not split_in
            else:
                split_out = split_in
            # Tensors an op saves that are new (its output, or copies it makes inside, such as matmul's
            # reshapes) take the side of the op's inputs.
            self.op_split_in = split_in
            out = func(*args, **kwargs)
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor) and not isinstance(tensor, torch.nn.Parameter):
                    with contextlib.suppress(Exception):
                        key = tensor.untyped_storage()._cdata
                        if key in params:
                            continue
                        self.known.add(key)
                        self.keep_alive.append(tensor)  # a freed storage's address must not be reused
                        if split_out:
                            self.split.add(key)
                        else:
                            self.split.discard(key)
            return out

        def is_split(self, key: int) -> bool:
            """Whether a tensor saved just now (inside the current op) lies in a split region."""
            return key in self.split if key in self.known else self.op_split_in

    return TensorParallelMode()


def _trace(
    model: ModelConfig,
    config: PretrainedConfig,
    attn_implementation: str,
    dtype: Any,
    batch_size: int,
    seq_len: int,
    options: _TraceOptions,
) -> ActivationProfile:
    """Build the model for training and measure one micro-batch (recurrent models: see `_sample_lengths`)."""
    dropout, trust_remote_code = options.dropout, options.trust_remote_code

    _register_fused_attention()
    try:
        torch_model, _ = _instantiate(
            model, config, trust_remote_code=trust_remote_code, dtype=dtype, attn_implementation=attn_implementation
        )
    except UnsupportedArchitectureError:
        if attn_implementation != FUSED_ATTENTION:
            raise
        # Models with their own attention classes (Falcon) reject registered implementations: measure their
        # eager attention instead; `attention_calls == 0` makes the plan say so.
        attn_implementation = "eager"
        torch_model, _ = _instantiate(
            model, config, trust_remote_code=trust_remote_code, dtype=dtype, attn_implementation="eager"
        )
    # Adapters in the activation dtype: under autocast their matmuls run in 16-bit like the base model's.
    torch_model = apply_finetune(torch_model, options.finetune, model.model_id, trace_dtype=dtype)
    torch_model.train()
    if dropout is not None:
        _set_dropout(torch_model, dropout)

    measured: list[ActivationProfile] = []

    def measure(tokens: int) -> tuple[Hashable, tuple[int, ...]]:
        profile = _trace_at(model, config, torch_model, attn_implementation, dtype, batch_size, tokens, options)
        measured[:] = [profile]
        return _profile_shape(profile), _profile_numbers(profile)

    # Images fill a fixed number of the positions: a model fed them is traced at its full length.
    takes_images = options.images > 0 and "pixel_values" in inspect.signature(torch_model.forward).parameters
    samples = () if takes_images else _sample_lengths(seq_len, config, torch_model)
    numbers = _at_length(measure, seq_len, samples)
    return _profile_with(measured[0], seq_len, numbers)


def _trace_at(
    model: ModelConfig,
    config: PretrainedConfig,
    torch_model: nn.Module,
    attn_implementation: str,
    dtype: Any,
    batch_size: int,
    seq_len: int,
    options: _TraceOptions,
) -> ActivationProfile:
    """One training forward of ``batch_size`` × ``seq_len`` tokens through ``torch_model``, what it saves counted."""
    import torch

    text_config = _text_config(config)
    vocab = int(getattr(text_config, "vocab_size", 0) or 0)

    # Outermost transformer layers, in forward order.
    layer_names = layer_modules(torch_model)
    stack: list[str] = []
    inputs: dict[str, int] = {}
    saved: dict[str, int] = {}
    order: list[str] = []

    held: set[int] = set()
    # Storages are identified by address (`_cdata`); keeping a reference to each one recorded stops a freed
    # storage's address from being reused by a new tensor during the trace.
    keep_alive: list[Any] = []

    def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # A checkpointed layer keeps every tensor argument until backward: the hidden states, and the mask,
        # rotary tables, position ids, T5's position biases, the encoder output… Shared ones count once.
        name = layer_names[id(module)]
        if name not in inputs:
            order.append(name)
            inputs[name] = 0
            for value in _tensors_in((*args, *kwargs.values())):
                key = value.untyped_storage()._cdata
                if key not in held and key not in params:
                    held.add(key)
                    keep_alive.append(value)
                    inputs[name] += value.untyped_storage().nbytes()
        stack.append(name)

    def post_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        stack.pop()

    params = {p.untyped_storage()._cdata for p in torch_model.parameters()}
    seen: set[int] = set()
    totals = {"other": 0, "logits": 0, "other_after": 0}
    # Bytes each layer saves inside tensor-parallel split regions.
    split_now: dict[str, int] = {}
    mode: Any = contextlib.nullcontext()
    if options.tensor_parallel:
        routing = _moe_routing(config)
        # Whole outputs: the MoE router (replicated in Megatron) and LoRA adapters (rank-r: lora_A's output is
        # replicated; lora_B's output is added to the base layer's, whose split it takes).
        replicated = {
            p.untyped_storage()._cdata
            for name, p in torch_model.named_parameters()
            if (routing and p.dim() == 2 and p.shape[0] == routing[0] and not _ROUTED_EXPERT.search(name))
            or ".lora_" in name
        }
        mode = _tensor_parallel_mode(params, replicated)

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in params or key in seen:
            return tensor.detach()  # a detached alias: returning `tensor` itself can form a reference cycle
        seen.add(key)
        keep_alive.append(tensor.detach())
        size = storage.nbytes()
        if vocab and tensor.dim() >= 1 and tensor.shape[-1] == vocab:
            totals["logits"] += size
        elif stack:
            saved[stack[-1]] = saved.get(stack[-1], 0) + size
            if options.tensor_parallel:
                split_now[stack[-1]] = split_now.get(stack[-1], 0) + (size if mode.is_split(key) else 0)
        else:
            totals["other"] += size
            if order:
                totals["other_after"] += size
        return tensor.detach()

    handles = []
    for module in torch_model.modules():
        if id(module) in layer_names:
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    ids = torch.zeros((batch_size, seq_len), dtype=torch.long, device="meta")
    accepted = inspect.signature(torch_model.forward).parameters
    kwargs: dict[str, Any] = {"input_ids": ids}
    if "labels" in accepted:
        kwargs["labels"] = ids
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in accepted:
        kwargs["decoder_input_ids"] = ids
    images, image_tokens = _image_inputs(torch_model, config, batch_size, seq_len, options.images, dtype)
    kwargs.update(images)
    _TRACE_STATE["attention_calls"] = 0
    try:
        with (
            cuda_style_dropout(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            mode,
            _placeholder_checks_off(torch_model),
        ):
            output = torch_model(**kwargs)
    except Exception as e:
        raise UnsupportedArchitectureError(
            f"could not trace the activations of '{model.model_id}' on the meta device "
            f"({type(e).__name__}: {_first_line(e)}); {_forward_fix(e, torch_model, 'report it')}"
        ) from e
    finally:
        for handle in handles:
            handle.remove()
    logits = getattr(output, "logits", None)
    logits_bytes = logits.untyped_storage().nbytes() if isinstance(logits, torch.Tensor) else 0
    layers = tuple(
        LayerProfile(name, saved.get(name, 0), inputs.get(name, 0), split_now.get(name, 0)) for name in order
    )
    return ActivationProfile(
        batch_size=batch_size,
        seq_len=seq_len,
        attn="eager" if attn_implementation == "eager" else "sdpa",
        dtype=str(dtype).removeprefix("torch."),
        vocab_size=vocab,
        layers=layers,
        fused_layers=layers,
        other_bytes=totals["other"],
        logits_saved_bytes=totals["logits"],
        logits_bytes=logits_bytes,
        attention_calls=_TRACE_STATE["attention_calls"],
        other_after_bytes=totals["other_after"],
        images_per_sample=options.images if images else 0,
        image_tokens=image_tokens,
    )


#: Cache layer types transformers gives layers that keep a recurrent or convolution state instead of keys and values
#: (``cache_utils.DYNAMIC_LAYER_TYPE_MAPPING``: ``LinearAttentionLayer`` and its hybrids): Mamba, Mamba-2, Jamba's
#: Mamba layers, RecurrentGemma's RG-LRU, gated delta nets, lightning attention, Zamba, Falcon-H1…
_RECURRENT_LAYER_TYPES = frozenset({"conv", "linear_attention", "hybrid", "hybrid_sliding"})
#: Model types whose forward scans the sequence token by token but whose configs name no such cache layer
#: (``modeling_rwkv.rwkv_linear_attention_cpu``, xLSTM's recurrent cells).
_SCANNING_MODEL_TYPES = frozenset({"rwkv", "xlstm"})
#: Config keys and modelling-code defaults that set a chunk or block length the sequence is padded to, or split by
#: (Mamba-2's ``chunk_size``, Bamba/Falcon-H1's ``mamba_chunk_size``, MiniMax's ``block_size``, the gated delta
#: rule's ``chunk_size: int = 64`` in ``torch_chunk_gated_delta_rule``).
_CHUNK_KEY = re.compile(r"(chunk|block)_size$")
_CHUNK_DEFAULT = re.compile(r"\b\w*(?:chunk|block)_size\s*(?::\s*int\s*)?=\s*(\d+)\b")
#: Sampled lengths are this many tokens apart at least (and start at least this long).
_SAMPLE_STEP = 8


@contextlib.contextmanager
def full_length_traces() -> Iterator[None]:
    """Trace every sequence at its full length, even where a few short traces determine it (`_sample_lengths`).

    Slow for recurrent models (their scans loop over every token on the meta device); used to check the scaling.
    """
    before = _TRACE_STATE["full_length"]
    _TRACE_STATE["full_length"] = True
    try:
        yield
    finally:
        _TRACE_STATE["full_length"] = before


def _scans_tokens(config: PretrainedConfig) -> bool:
    """Whether the model has recurrent or state-space layers (their slow path loops over the tokens in Python)."""
    text_config = _text_config(config)
    if getattr(text_config, "model_type", None) in _SCANNING_MODEL_TYPES:
        return True
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        layer_types, _ = get_layer_types_and_kwargs(text_config)
    except Exception:  # noqa: BLE001 - older transformers, or a config without layers: not recurrent
        return False
    return bool(_RECURRENT_LAYER_TYPES.intersection(layer_types))


def _sequence_period(config: PretrainedConfig, torch_model: nn.Module) -> int:
    """The least common multiple of the chunk and block lengths the config and the modelling code name (1: none).

    A chunked scan pads the sequence to a multiple of its chunk, so what it saves is a polynomial in the length only
    among lengths that leave the same remainder; the code's own defaults count because they are not in the config.
    """
    chunks = {
        value
        for key, value in _text_config(config).to_dict().items()
        if isinstance(value, int) and not isinstance(value, bool) and value > 1 and _CHUNK_KEY.search(key)
    }
    package = type(torch_model).__module__.rsplit(".", 1)[0]
    for name in sorted({type(module).__module__ for module in torch_model.modules()}):
        module = sys.modules.get(name)
        if module is None or not name.startswith(package):
            continue
        with contextlib.suppress(OSError, TypeError):  # no source on disk (compiled or frozen)
            chunks.update(int(found) for found in _CHUNK_DEFAULT.findall(inspect.getsource(module)))
    return math.lcm(*chunks) if chunks else 1


def _sample_lengths(
    seq_len: int, config: PretrainedConfig, torch_model: nn.Module, step: int = _SAMPLE_STEP
) -> tuple[tuple[int, ...], ...]:
    """Sets of four short lengths whose traces determine the one at ``seq_len``; none: trace ``seq_len`` itself.

    Only for recurrent and state-space models (`_scans_tokens`): transformers' slow path (the one that runs off
    CUDA, on the meta device too) loops over every token in Python, so a trace costs time in proportion to the
    length (issue 11: a mamba-130m-like config took 104 s at 4,096 tokens). What a forward saves is a sum of tensors
    whose sizes are products of the length and fixed sizes, a polynomial in the length, of degree 2 at most where a
    score matrix or a chunk-to-chunk state is kept (eager attention, Mamba-2's segment sums). The lengths are
    congruent to ``seq_len`` modulo every chunk length (`_sequence_period`), at least two chunks long (a single
    chunk takes shortcuts) and ``step`` tokens apart at least; a second set is 4 times as long, for what only
    settles past the shortest lengths (a peak that a fixed-size tensor holds in a very short prefill). A set is
    used only if its total is at most half of ``seq_len`` (else the full trace is as cheap).
    """
    if _TRACE_STATE["full_length"] or not _scans_tokens(config):
        return ()
    period = _sequence_period(config, torch_model)
    found = []
    for scale in (1, 4):
        floor = scale * step if period == 1 else 2 * period * scale
        apart = period * -(-scale * step // period)
        first = floor + (seq_len - floor) % period
        samples = tuple(first + i * apart for i in range(4))
        if 2 * sum(samples) <= seq_len:
            found.append(samples)
    return tuple(found)


def _at_length(
    measure: Callable[[int], tuple[Hashable, tuple[int, ...]]],
    seq_len: int,
    sample_sets: tuple[tuple[int, ...], ...],
) -> tuple[int, ...]:
    """The numbers ``measure`` gives at ``seq_len``, from short lengths where they determine them exactly.

    ``measure(length)`` returns a shape (the layers' names, the attention calls… which must not change with the
    length) and byte counts. For each set of lengths in turn, each count is fitted by the polynomial through the
    first lengths, of degree 1 (two, checked on a third) and else of degree 2 (three, checked on a fourth), in exact
    rational arithmetic; the value at ``seq_len`` must be a non-negative integer. When no fit checks out, or a short
    forward fails, ``seq_len`` itself is measured.
    """
    seen: dict[int, tuple[Hashable, tuple[int, ...]]] = {}
    try:
        for samples in sample_sets:
            points: list[tuple[int, Hashable, tuple[int, ...]]] = []
            for degree in (1, 2):
                while len(points) < degree + 2:
                    length = samples[len(points)]
                    if length not in seen:
                        seen[length] = measure(length)
                    points.append((length, *seen[length]))
                if len({shape for _, shape, _ in points}) > 1:
                    break
                fitted = _extrapolated(points[: degree + 1], points[degree + 1], seq_len)
                if fitted is not None:
                    return fitted
    except Exception:  # noqa: BLE001 - a forward that fails at a short length: the full length decides
        pass
    return measure(seq_len)[1]


def _extrapolated(
    fit: list[tuple[int, Hashable, tuple[int, ...]]], check: tuple[int, Hashable, tuple[int, ...]], x: int
) -> tuple[int, ...] | None:
    """Every count of the polynomial through ``fit`` (Lagrange form) at ``x``, if it also passes through ``check``."""
    xs = [length for length, _, _ in fit]

    def at(point: int, ys: list[int]) -> Fraction:
        total = Fraction(0)
        for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
            term = Fraction(yi)
            for j, xj in enumerate(xs):
                if j != i:
                    term *= Fraction(point - xj, xi - xj)
            total += term
        return total

    values = []
    for k, checked in enumerate(check[2]):
        ys = [numbers[k] for _, _, numbers in fit]
        value = at(x, ys)
        if at(check[0], ys) != checked or value.denominator != 1 or value < 0:
            return None
        values.append(int(value))
    return tuple(values)


def _profile_shape(profile: ActivationProfile) -> Hashable:
    return (tuple(layer.name for layer in profile.layers), profile.attention_calls, profile.vocab_size)


def _profile_numbers(profile: ActivationProfile) -> tuple[int, ...]:
    per_layer = (n for layer in profile.layers for n in (layer.saved_bytes, layer.input_bytes, layer.tp_split_bytes))
    totals = (profile.other_bytes, profile.logits_saved_bytes, profile.logits_bytes, profile.other_after_bytes)
    return (*per_layer, *totals)


def _profile_with(profile: ActivationProfile, seq_len: int, numbers: tuple[int, ...]) -> ActivationProfile:
    """``profile`` (measured at another length) with the byte counts at ``seq_len``."""
    values = iter(numbers)
    layers = tuple(LayerProfile(layer.name, next(values), next(values), next(values)) for layer in profile.layers)
    other, logits_saved, logits, other_after = values
    return dataclasses.replace(
        profile,
        seq_len=seq_len,
        layers=layers,
        fused_layers=layers,
        other_bytes=other,
        logits_saved_bytes=logits_saved,
        logits_bytes=logits,
        other_after_bytes=other_after,
    )


def _image_inputs(
    torch_model: nn.Module, config: PretrainedConfig, batch_size: int, seq_len: int, images: int, dtype: Any
) -> tuple[dict[str, Any], int]:
    """``pixel_values`` holding ``images`` default images per sample, and the sequence positions one image fills;
    ``({}, 0)`` for a model that takes no images or when ``images`` is 0.

    The default image is what the vision tower is built for: a square of the vision config's ``image_size``
    (Llava's CLIP 336 px, Gemma-3's SigLIP 896 px), ``num_channels`` deep, one batch of
    ``[batch_size × images, channels, size, size]`` (hfmem reads no processor config: it is not part of the model's
    config.json). Values do not matter on the meta device, so the token ids need no image placeholders: the
    image features replace the embeddings of ``image_tokens`` positions of the ``seq_len`` ones.

    Raises:
        UnsupportedArchitectureError: the vision config states no image size, the model's ``get_image_features``
            does not take a plain batch of images (Qwen2-VL's patches, Idefics3's 5-D tiles, LLaVA-NeXT's
            ``image_sizes``…), or the images' tokens do not fit ``seq_len``.
    """
    import torch

    if images <= 0 or "pixel_values" not in inspect.signature(torch_model.forward).parameters:
        return {}, 0
    vision = getattr(config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    size = (size, size) if isinstance(size, int) else size
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size)):
        raise UnsupportedArchitectureError(f"the vision config of {type(torch_model).__name__} states no image_size")
    channels = getattr(vision, "num_channels", 3) or 3
    pixel_values = torch.zeros((batch_size * images, channels, *size), dtype=dtype, device="meta")
    get_features = getattr(torch_model, "get_image_features", None) or getattr(
        getattr(torch_model, "model", None), "get_image_features", None
    )
    hidden = getattr(_text_config(config), "hidden_size", None)
    try:
        with torch.no_grad(), _placeholder_checks_off(torch_model):
            features = get_features(pixel_values=pixel_values[:1])  # type: ignore[misc]
        features = getattr(features, "pooler_output", features)
        features = features if isinstance(features, (list, tuple)) else [features]
        tokens = sum(t.numel() for t in features) // hidden  # type: ignore[operator]
    except Exception as e:
        raise UnsupportedArchitectureError(
            f"{type(torch_model).__name__}.get_image_features does not take a plain batch of "
            f"{size[0]}×{size[1]} images ({type(e).__name__}: {_first_line(e)})"
        ) from e
    if tokens * images > seq_len:
        raise UnsupportedArchitectureError(
            f"{images} image(s) of {tokens:,} tokens each do not fit a sequence of {seq_len:,} tokens"
        )
    return {"pixel_values": pixel_values}, tokens


@contextlib.contextmanager
def _placeholder_checks_off(torch_model: nn.Module) -> Iterator[None]:
    """Skip transformers' ``torch_compilable_check`` in the model's modelling modules while tracing.

    Multimodal models check that the image placeholders in the token ids match the image features
    (``get_placeholder_mask`` in transformers models/llava/modeling_llava.py, models/gemma3/modeling_gemma3.py):
    a value check, which meta tensors cannot answer (``Tensor.item()``). The trace feeds matching shapes by
    construction (`_image_inputs`); nothing else changes.
    """
    import sys

    modules = {sys.modules.get(type(m).__module__) for m in torch_model.modules()}
    patched = [(m, m.torch_compilable_check) for m in modules if m is not None and hasattr(m, "torch_compilable_check")]

    def unchecked(*args: Any, **kwargs: Any) -> None:
        return None

    for module, _ in patched:
        module.torch_compilable_check = unchecked  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, check in patched:
            module.torch_compilable_check = check  # type: ignore[attr-defined]


def _image_failure(error: UnsupportedArchitectureError) -> str:
    """Why a model was traced without images, in a phrase (the trace's own message names the model)."""
    return _first_line(error).removeprefix("could not trace the activations of ")


#: Inputs transformers' forwards ask for when they are not text models (their ValueError / TypeError name them).
_NON_TEXT_INPUTS = ("pixel_values", "input_features", "input_values", "image_embeddings", "bbox", "past_values")


def _forward_fix(error: Exception, torch_model: nn.Module, otherwise: str) -> str:
    """What to do about a forward that failed on the meta device, for the causes that recur across model types."""
    import inspect

    text = str(error)
    accepted = inspect.signature(torch_model.forward).parameters
    # CLIP-style models need their images: without pixel_values their vision tower reads `None.shape`.
    needs_images = "pixel_values" in accepted and "'NoneType' object" in text
    if "input_ids" not in accepted or needs_images or any(name in text for name in _NON_TEXT_INPUTS):
        return (
            f"{type(torch_model).__name__} takes inputs other than token ids (images, audio, boxes, series) and hfmem "
            "runs models on token ids only"
        )
    if "Expected inputs of BF16 type" in text:
        # torch.nn.functional.grouped_mm, transformers' default MoE experts kernel, is bfloat16-only.
        return (
            "PyTorch's grouped_mm (the MoE experts kernel) takes bfloat16 only: serve with --weights-dtype bf16, "
            "train with --precision bf16-mixed"
        )
    if "meta tensors" in text or "register_meta" in text:
        return "its forward reads tensor values (data-dependent shapes), which meta tensors do not have; report it"
    return otherwise


def _tensors_in(values: Any) -> Iterator[Any]:
    """The tensors among a layer's arguments, looking one level into tuples and lists (rotary cos/sin)."""
    import torch

    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from (item for item in value if isinstance(item, torch.Tensor))


@contextlib.contextmanager
def cuda_style_dropout() -> Iterator[None]:
    """Make ``F.dropout`` keep a 1-byte mask, as CUDA's fused kernel does (``torch.native_dropout``).

    Off CUDA (on the meta device too) ATen's dropout multiplies by a noise tensor and saves it in the activation
    dtype; on a GPU the fused kernel saves a bool mask. Models call ``nn.functional.dropout`` through the module
    attribute, so replacing it reaches them all; it is restored on exit.
    """
    import torch
    from torch import nn

    original = nn.functional.dropout

    def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        if training and 0.0 < p < 1.0:
            return torch.native_dropout(input, p, True)[0]
        return original(input, p, training, inplace)

    nn.functional.dropout = dropout
    try:
        yield
    finally:
        nn.functional.dropout = original


def _set_dropout(model: nn.Module, probability: float) -> None:
    """Override every dropout probability: nn.Dropout modules and the float rates attention modules keep."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
        for attr in ("attention_dropout", "dropout", "attn_dropout", "dropout_rate"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, probability)


def _moe_routing(config: PretrainedConfig) -> tuple[int, int] | None:
    """``(num_experts, experts_per_token)`` from an MoE config, else None."""
    text_config = _text_config(config)
    num = next((getattr(text_config, k) for k in MOE_NUM_EXPERTS_KEYS if getattr(text_config, k, None)), None)
    top_k = next((getattr(text_config, k) for k in MOE_TOP_K_KEYS if getattr(text_config, k, None)), None)
    if isinstance(num, int) and isinstance(top_k, int) and 0 < top_k <= num:
        return num, top_k
    return None


def _text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The config of the text model inside a composite one (the config itself when there is no single one).

    ``get_text_config`` raises when a config holds several text configs (MusicGen: ``text_encoder`` and
    ``decoder``); the top-level config is used then.
    """
    try:
        return config.get_text_config() if hasattr(config, "get_text_config") else config
    except ValueError:
        return config


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


def profile_inference(
    model: ModelConfig,
    *,
    batch_size: int,
    prefill_tokens: int,
    dtype: str,
    trust_remote_code: bool = False,
    images_per_sample: int = 0,
) -> InferenceProfile:
    """Measure the KV cache layout and the transient memory of one prefill chunk on the meta device.

    Two things, both from the model's own code (``DynamicCache``, the cache ``generate()`` uses):

    * **Cache layout.** The model runs forward with ``use_cache=True`` on 1 and then 2 tokens, and every tensor the
      returned cache holds is read per layer: elements that grow with each token (keys and values, MLA's
      compressed latent, cross-attention over the encoder) and elements that do not (Mamba / linear-attention
      states), the number of heads a tensor-parallel split divides, and each sliding layer's window.
    * **Prefill working set.** One forward of ``batch_size`` × ``prefill_tokens`` tokens under
      ``torch.inference_mode`` with a ``TorchDispatchMode`` that follows every tensor the operators create until its
      last reference dies, as the caching allocator sees them. The peak of live bytes, parameters and the cache
      being filled excluded, is the chunk's activation memory; the last position's logits are kept and upcast
      to fp32 as ``generate()`` does (``logits_to_keep=1``). Attention runs through hfmem's fused-kernel stand-in
      (no score matrices, as FlashAttention and SDPA's fused kernels). A model that takes images gets
      ``images_per_sample`` default images per sequence in the chunk (`_image_inputs`), so the vision tower runs
      too; when it cannot, the chunk is token ids only and the profile says why.

    Raises:
        UnsupportedArchitectureError: the model cannot run forward with a cache on the meta device.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    with _quiet_transformers():
        config = build_transformers_config(model, trust_remote_code=trust_remote_code)
        _register_fused_attention()
        try:
            torch_model, _ = _instantiate(
                model,
                config,
                trust_remote_code=trust_remote_code,
                dtype=torch_dtype,
                attn_implementation=FUSED_ATTENTION,
            )
            fused = True
        except UnsupportedArchitectureError:
            torch_model, _ = _instantiate(
                model, config, trust_remote_code=trust_remote_code, dtype=torch_dtype, attn_implementation="sdpa"
            )
            fused = False
        torch_model.eval()
        try:
            one = _cache_tensors(_forward_with_cache(torch_model, config, 1, 1)[1])
            two = _cache_tensors(_forward_with_cache(torch_model, config, 1, 2)[1])
            layers, states = _kv_layers(one, two)
            _TRACE_STATE["attention_calls"] = 0
            images, image_tokens, images_not_traced = {}, 0, None
            try:
                images, image_tokens = _image_inputs(
                    torch_model, config, batch_size, prefill_tokens, images_per_sample, torch_dtype
                )
                peak, logits_bytes = _prefill_peak(torch_model, config, batch_size, prefill_tokens, images)
            except Exception as e:  # noqa: BLE001 - any failure with images: measure token ids alone
                if not images_per_sample or "pixel_values" not in inspect.signature(torch_model.forward).parameters:
                    raise
                images, image_tokens, images_not_traced = {}, 0, _first_line(e)
                _TRACE_STATE["attention_calls"] = 0
                peak, logits_bytes = _prefill_peak(torch_model, config, batch_size, prefill_tokens, images)
        except UnsupportedArchitectureError:
            raise
        except Exception as e:
            raise UnsupportedArchitectureError(
                f"could not run '{model.model_id}' with a KV cache on the meta device "
                f"({type(e).__name__}: {_first_line(e)}); {_forward_fix(e, torch_model, 'report it')}"
            ) from e
    return InferenceProfile(
        layers=layers,
        batch_size=batch_size,
        prefill_tokens=prefill_tokens,
        dtype=dtype,
        activation_peak_bytes=peak,
        logits_bytes=logits_bytes,
        attention_calls=_TRACE_STATE["attention_calls"] if fused else 0,
        state_layers=states,
        images_per_sample=images_per_sample if images else 0,
        image_tokens=image_tokens,
        images_not_traced=images_not_traced,
    )


def _forward_with_cache(
    torch_model: nn.Module, config: PretrainedConfig, batch: int, tokens: int, extra: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """One forward with a fresh cache (what ``generate()`` builds), ``extra`` inputs (images) added; returns the
    output and the cache."""
    import inspect

    import torch

    ids = torch.zeros((batch, tokens), dtype=torch.long, device="meta")
    accepted = inspect.signature(torch_model.forward).parameters
    kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True}
    if getattr(config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids
    else:
        from transformers import DynamicCache

        # transformers 5.24 names the argument `cache`; earlier 5.x releases call it `past_key_values`.
        kwargs["cache" if "cache" in accepted else "past_key_values"] = DynamicCache(config=config)
    if "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1
    kwargs.update(extra or {})
    with torch.inference_mode(), _placeholder_checks_off(torch_model):
        output = torch_model(**kwargs)
    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    if cache is None:
        raise UnsupportedArchitectureError(
            f"{type(torch_model).__name__} returned no KV cache with use_cache=True, so hfmem cannot size it; "
            "pass --training-only"
        )
    return output, cache


def _cache_tensors(cache: Any) -> list[tuple[str, str, Any, int | None]]:
    """``(layer, kind, tensor, window)`` for every tensor a cache holds, layer by layer.

    Walks transformers' cache objects: ``DynamicCache.layers`` (``keys``/``values`` and any state tensors a
    layer keeps, such as the conv/recurrent states ``LinearAttentionLayer`` holds in dicts),
    ``EncoderDecoderCache`` (its self- and cross-attention caches) and, for other cache classes, tensors in their
    attributes. 0-d bookkeeping tensors are skipped.
    """
    import torch

    found: list[tuple[str, str, Any, int | None]] = []

    def tensors_of(obj: Any) -> Iterator[Any]:
        for value in vars(obj).values():
            # Linear-attention / Mamba layers keep their states in dicts by state index (transformers
            # cache_utils.py `LinearAttentionCacheLayerMixin.conv_states` / `.recurrent_states`).
            if isinstance(value, dict):
                items = list(value.values())
            else:
                items = value if isinstance(value, (list, tuple)) else [value]
            for item in items:
                if isinstance(item, torch.Tensor) and item.dim() > 0:
                    yield item

    def walk(obj: Any, prefix: str, kind: str) -> None:
        if hasattr(obj, "self_attention_cache") and hasattr(obj, "cross_attention_cache"):
            walk(obj.self_attention_cache, prefix + "self.", kind)
            walk(obj.cross_attention_cache, prefix + "cross.", "cross")
            return
        layers = getattr(obj, "layers", None)
        if isinstance(layers, (list, tuple)) and layers and not isinstance(layers[0], torch.Tensor):
            for index, layer in enumerate(layers):
                window = getattr(layer, "sliding_window", None)
                window = int(window) if isinstance(window, int) and window > 0 else None
                for tensor in tensors_of(layer):
                    found.append((f"{prefix}{index}", kind, tensor, window))
            return
        for tensor in tensors_of(obj):
            found.append((f"{prefix}0", kind, tensor, None))

    walk(cache, "", "self")
    return found


def _kv_layers(
    one: list[tuple[str, str, Any, int | None]], two: list[tuple[str, str, Any, int | None]]
) -> tuple[tuple[KvLayer, ...], tuple[tuple[str, int], ...]]:
    """The KV layers (elements per token) and the recurrent states (bytes per sequence), from the caches after 1
    and 2 tokens of one sequence.

    A tensor's growth between the two is its elements per token; what it holds beyond that does not grow with the
    tokens: a recurrent state (Mamba's conv state, ``[1, d_inner, conv_kernel]``, and SSM state,
    ``[1, d_inner, state_size]``, in transformers' ``LinearAttentionLayer``), counted in bytes tensor by tensor
    because a layer's states need not share a dtype (Mamba: a 16-bit conv state, an fp32 SSM state).
    """
    if len(one) != len(two):
        raise UnsupportedArchitectureError("the KV cache changed structure between 1 and 2 tokens; report it")
    per_layer: dict[str, dict[str, Any]] = {}
    for (name, kind, t1, window), (_, _, t2, _) in zip(one, two, strict=True):
        entry = per_layer.setdefault(
            name,
            {"kind": kind, "per_token": 0, "fixed": 0, "state_bytes": 0, "heads": 0, "bytes": 0, "window": window},
        )
        growth = t2.numel() - t1.numel()
        entry["per_token"] += growth
        if growth or kind == "cross":
            entry["bytes"] = entry["bytes"] or t1.element_size()
        if kind == "cross":
            entry["fixed"] += t1.numel() - growth
        else:
            entry["state_bytes"] += (t1.numel() - growth) * t1.element_size()
        if growth and t1.dim() == 4:  # [batch, heads, tokens, head_dim]: tensor parallelism splits heads
            entry["heads"] = max(entry["heads"], int(t1.shape[1]))
    layers = []
    states = []
    for name, e in per_layer.items():
        kind = e["kind"]
        if e["state_bytes"]:
            states.append((name, e["state_bytes"]))
        if kind == "self":
            if not e["per_token"]:
                continue  # a recurrent layer: its state is all it caches
            kind = "sliding" if e["window"] else "full"
        layers.append(
            KvLayer(
                name=name,
                kind=kind,
                elements_per_token=e["per_token"],
                fixed_elements=e["fixed"],
                heads=e["heads"] or 1,
                window_tokens=e["window"] if kind == "sliding" else None,
                element_bytes=e["bytes"] or 2,
            )
        )
    return tuple(layers), tuple(states)


def _prefill_peak(
    torch_model: nn.Module, config: PretrainedConfig, batch: int, tokens: int, extra: dict[str, Any]
) -> tuple[int, int]:
    """Peak live bytes of one prefill forward (parameters, buffers and the cache excluded), and the logits' bytes.

    Recurrent models fed token ids only: from short prefills where they determine it (`_sample_lengths`); the
    attention calls counted in ``_TRACE_STATE`` are those of one forward.
    """

    def measure(length: int) -> tuple[Hashable, tuple[int, ...]]:
        _TRACE_STATE["attention_calls"] = 0
        peak, logits_bytes = _prefill_peak_at(torch_model, config, batch, length, extra)
        return _TRACE_STATE["attention_calls"], (peak, logits_bytes)

    # A peak is the largest of the moments' live bytes, each a polynomial in the length: a fixed-size moment (the
    # last logits) can be the largest in a very short prefill, so the samples are twice as long as a trace's.
    samples = () if extra else _sample_lengths(tokens, config, torch_model, step=2 * _SAMPLE_STEP)
    peak, logits_bytes = _at_length(measure, tokens, samples)
    return peak, logits_bytes


def _prefill_peak_at(
    torch_model: nn.Module, config: PretrainedConfig, batch: int, tokens: int, extra: dict[str, Any]
) -> tuple[int, int]:
    """`_prefill_peak` of a prefill of exactly ``tokens`` tokens (``extra``: the images' inputs, if any)."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    excluded = {t.untyped_storage()._cdata for t in (*torch_model.parameters(), *torch_model.buffers())}
    live: dict[int, list[int]] = {}  # storage key -> [bytes, references, serial]
    events: list[tuple[int, int]] = []  # (serial, +bytes / -bytes) in order
    serial = iter(range(1, 1 << 62))

    def release(key: int) -> None:
        entry = live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del live[key]
            events.append((entry[2], -entry[0]))

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    key = tensor.untyped_storage()._cdata
                    if key in excluded:
                        continue
                    if key in live:
                        live[key][1] += 1
                    else:
                        live[key] = [tensor.untyped_storage().nbytes(), 1, next(serial)]
                        events.append((live[key][2], live[key][0]))
                    weakref.finalize(tensor, release, key)
            return out

    with Track():
        output, cache = _forward_with_cache(torch_model, config, batch, tokens, extra)
        logits = getattr(output, "logits", None)
        if isinstance(logits, torch.Tensor):
            with torch.inference_mode():
                logits = logits[:, -1:, :].float()  # generate(): next-token logits copied to fp32
    cached = {
        live[t.untyped_storage()._cdata][2]
        for _, _, t, _ in _cache_tensors(cache)
        if t.untyped_storage()._cdata in live
    }
    current = peak = 0
    for event_serial, change in events:
        if event_serial in cached:
            continue
        current += change
        peak = max(peak, current)
    logits_bytes = logits.untyped_storage().nbytes() if isinstance(logits, torch.Tensor) else 0
    del output, cache, logits
    return peak, logits_bytes
