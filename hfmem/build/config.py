"""config.json → a transformers ``PretrainedConfig`` (special floats decoded, limits checked), and what it states."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hfmem.build._util import _first_line
from hfmem.errors import (
    InvalidConfigError,
    RemoteCodeRequiredError,
    UnsupportedArchitectureError,
)
from hfmem.limits import check_config
from hfmem.memory.activations import CONTEXT_KEYS
from hfmem.types import ResolvedModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["build_transformers_config", "MOE_NUM_EXPERTS_KEYS", "MOE_TOP_K_KEYS"]


#: Config keys that name the number of routed experts (Mixtral/gpt-oss, Qwen-MoE, DeepSeek) and the experts used
#: per token. The first key present wins.
MOE_NUM_EXPERTS_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


MOE_TOP_K_KEYS = ("num_experts_per_tok", "experts_per_token", "moe_top_k", "top_k")


def build_transformers_config(model: ResolvedModel, *, trust_remote_code: bool = False) -> PretrainedConfig:
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
