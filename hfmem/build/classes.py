"""Which transformers class builds a model, and building it on the meta device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hfmem.build._util import _first_line
from hfmem.errors import (
    InvalidSetupError,
    RemoteCodeRequiredError,
    UnsupportedArchitectureError,
)
from hfmem.types import ResolvedModel

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig


# Auto classes tried, in order, when `architectures` names no class transformers has.
_AUTO_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_MAPPING_NAMES",
)


_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModel")


def _instantiate(
    model: ResolvedModel,
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


def _build_error(model: ResolvedModel, name: str, error: Exception) -> UnsupportedArchitectureError:
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


def _native_classes(model: ResolvedModel, config: PretrainedConfig, arch: str | None) -> list[tuple[Any, str]]:
    """The transformers classes to try, in order: the one ``architectures`` names, else the auto mappings'.

    Without a class name, the model type's causal-LM, seq2seq-LM, masked-LM and base classes come first (hfmem's
    preference), then the task classes of every other auto mapping (depth estimation, text-to-waveform…), so a
    model that only a task class builds is still counted. The caller builds the first one that works.
    """
    import transformers
    from transformers.models.auto import modeling_auto

    if arch and hasattr(transformers, arch):
        return [(getattr(transformers, arch), arch)]
    if model.architecture_given is not None:
        raise InvalidSetupError(
            f"transformers {transformers.__version__} has no class named {model.architecture_given!r} "
            "(--architecture); name one it has, such as BertForSequenceClassification, or drop --architecture"
        )
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
