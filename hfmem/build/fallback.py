"""Custom-code models → the native transformers architecture their config matches, when it does exactly."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from hfmem.build.classes import _AUTO_MAPPINGS, _remote_auto_class
from hfmem.build.config import MOE_NUM_EXPERTS_KEYS
from hfmem.errors import RemoteCodeRequiredError
from hfmem.types import ResolvedModel

__all__ = ["native_fallback"]


#: The head a class name ends with (``SomethingLlamaForCausalLM`` → ``ForCausalLM``); the rest is its stem.
_HEAD = re.compile(r"(For[A-Z]\w*|LMHeadModel|Model)$")


#: Size fields a native config must read from the custom one for a fallback to give the same shapes.
_SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")


#: Keys of other ways to size key/value heads (ChatGLM ``multi_query_group_num``, ``num_kv_heads``).
_KV_KEYS = re.compile(r"kv_heads|key_value|query_group|kv_groups")


def native_fallback(model: ResolvedModel) -> ResolvedModel:
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


def _custom_code_note(model: ResolvedModel, what: str, target: str, matched: str | None = None) -> str:
    nearest = f"the nearest native architecture to '{matched}'" if matched else "its model type's native class"
    return (
        f"'{model.model_id}' needs custom code ({what}) and --trust-remote-code is off: estimating transformers' "
        f"{target} instead ({nearest}); the repo's code may add or change modules, so review it and pass "
        "--trust-remote-code for its exact count"
    )


def _rewritten(model: ResolvedModel, raw: dict[str, Any], model_type: str, arch: str, note: str) -> ResolvedModel:
    """``model`` as a native ``model_type`` / ``arch`` config (no ``auto_map``), with ``note`` added."""
    config = {k: v for k, v in raw.items() if k != "auto_map"}
    config["model_type"], config["architectures"] = model_type, [arch]
    return dataclasses.replace(model, config=config, notes=(*model.notes, note))
