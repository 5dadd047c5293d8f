"""Architecture coverage: model types built from their default configs, the custom-code fallback, and the one-line
refusals. The full sweep over every registered model type is `benchmarks/architectures.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hfmem
from hfmem.cli import cli
from hfmem.errors import RemoteCodeRequiredError, UnsupportedArchitectureError
from hfmem.inventory import count_parameters, native_fallback
from hfmem.types import ModelConfig, TrainingSetup

#: A Llama-shaped model behind custom code: a model_type transformers does not know and an auto_map.
CUSTOM_LLAMA: dict[str, Any] = {
    "architectures": ["SomethingLlamaForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_something.SomethingConfig",
        "AutoModelForCausalLM": "modeling_something.SomethingLlamaForCausalLM",
    },
    "model_type": "something_llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
}
# By hand, head_dim = 64 / 8 = 8, so k and v project to 2·8 = 16: per layer q 64·64 + k 64·16 + v 64·16 + o 64·64,
# MLP gate/up/down 3·64·176, two RMSNorms 2·64; then the embedding and the untied head 2·1000·64 and the final norm.
CUSTOM_LLAMA_PARAMS = 3 * (64 * 64 + 64 * 16 + 64 * 16 + 64 * 64 + 3 * 64 * 176 + 2 * 64) + 2 * 1000 * 64 + 64


def write_config(folder: Path, config: dict[str, Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def default_config(model_type: str) -> dict[str, Any]:
    """``CONFIG_MAPPING[model_type]()`` as a config.json would hold it, every field written out."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return json.loads(CONFIG_MAPPING[model_type]().to_json_string(use_diff=False))


# --- custom code without --trust-remote-code ---------------------------------------------------------------------


def test_custom_code_falls_back_to_the_named_native_architecture(tmp_path: Path) -> None:
    report = hfmem.estimate(write_config(tmp_path / "repo", CUSTOM_LLAMA), setup=TrainingSetup(seq_len=8))
    assert report.inventory.architecture == "LlamaForCausalLM"
    assert report.inventory.total_params == CUSTOM_LLAMA_PARAMS
    (note,) = report.model.notes
    assert "needs custom code" in note and "LlamaForCausalLM" in note and "--trust-remote-code" in note


def test_custom_code_fallback_through_the_cli(tmp_path: Path, runner: CliRunner) -> None:
    folder = write_config(tmp_path / "repo", CUSTOM_LLAMA)
    result = runner.invoke(cli, [folder, "--seq-len", "8", "--training-only", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["parameters"]["total"] == CUSTOM_LLAMA_PARAMS
    assert result.stderr.startswith("hfmem: ") and "estimating transformers' LlamaForCausalLM" in result.stderr


def test_trusted_custom_code_is_not_replaced(tmp_path: Path) -> None:
    # With --trust-remote-code the repo's own code is what counts: here it is missing, so that is the error.
    with pytest.raises(UnsupportedArchitectureError, match="custom config code"):
        hfmem.estimate(write_config(tmp_path / "repo", CUSTOM_LLAMA), trust_remote_code=True)


@pytest.mark.parametrize(
    ("changes", "model_type", "architecture", "note"),
    [
        # A custom class over a model type transformers knows: the type's own class with the same head.
        (
            {
                "model_type": "qwen2",
                "architectures": ["MyQwen2ForSequenceClassification"],
                "auto_map": {"AutoModelForSequenceClassification": "modeling_my.MyQwen2ForSequenceClassification"},
            },
            "qwen2",
            "Qwen2ForSequenceClassification",
            "its model type's native class",
        ),
        # An unknown model type whose architectures name a transformers class: that class, no custom code needed.
        ({"model_type": "my_llama", "architectures": ["LlamaForCausalLM"]}, "llama", "LlamaForCausalLM", "unknown"),
        # Only the model type names a known base.
        ({"model_type": "mistral_custom", "architectures": ["CustomForCausalLM"]}, "mistral", "MistralForCausalLM", ""),
    ],
)
def test_fallback_targets(changes: dict[str, Any], model_type: str, architecture: str, note: str) -> None:
    config = {**CUSTOM_LLAMA, **changes}
    resolved = native_fallback(ModelConfig("org/custom", "local", config))
    assert (resolved.model_type, resolved.architecture) == (model_type, architecture)
    assert "auto_map" not in resolved.config and note in resolved.notes[-1]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"model_type": "tiny_custom", "architectures": ["TinyForCausalLM"], "auto_map": {"AutoConfig": "c.X"}},
            "no transformers model type",
        ),
        # Phi-3-small names its MLP width ff_intermediate_size: Phi3Config would silently use its default.
        (
            {
                "model_type": "phi3small",
                "architectures": ["Phi3SmallForCausalLM"],
                "auto_map": {"AutoModelForCausalLM": "modeling_phi3_small.Phi3SmallForCausalLM"},
                "intermediate_size": None,
                "ff_intermediate_size": 176,
            },
            "reads 'intermediate_size'",
        ),
        ({"num_local_experts": 8}, "has experts"),
        ({"multi_query_group_num": 2}, "does not read 'multi_query_group_num'"),
    ],
)
def test_no_native_fallback_is_a_remote_code_error(changes: dict[str, Any], reason: str) -> None:
    config = {k: v for k, v in {**CUSTOM_LLAMA, **changes}.items() if v is not None}
    with pytest.raises(RemoteCodeRequiredError, match="no native architecture fits") as caught:
        native_fallback(ModelConfig("org/custom", "local", config))
    assert reason in str(caught.value) and "--trust-remote-code" in str(caught.value)


def test_config_without_custom_code_is_unchanged() -> None:
    model = ModelConfig("org/llama", "local", {**CUSTOM_LLAMA, "model_type": "llama", "auto_map": {}})
    assert native_fallback(model) is model


# --- what transformers cannot build: one line, exit code 5 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("model_type", "fragment"),
    [
        ("sam_prompt_encoder", "no auto class for model_type 'sam_prompt_encoder'"),  # a part of SAM
        ("time_series_transformer", "prediction_length"),  # its default config cannot build a model
        ("vit", "takes inputs other than token ids"),  # inventoried, but its forward needs pixel_values
    ],
)
def test_unsupported_is_one_line(tmp_path: Path, runner: CliRunner, model_type: str, fragment: str) -> None:
    folder = write_config(tmp_path / model_type, default_config(model_type))
    result = runner.invoke(cli, [folder, "--training-only"])
    assert result.exit_code == 5
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert fragment in result.stderr and "Traceback" not in result.stderr


# --- a sample of the benchmark's model types: hfmem counts what transformers builds ----------------------------------


@pytest.mark.parametrize(
    ("model_type", "auto_class"),
    [
        ("gpt2", "AutoModelForCausalLM"),  # tied head
        ("t5", "AutoModelForSeq2SeqLM"),
        ("mamba2", "AutoModelForCausalLM"),  # time_step_limit holds {"__float__": "Infinity"}
        ("llama4", "AutoModelForCausalLM"),  # a text-only class under a composite config
        ("reformer", "AutoModelForMaskedLM"),  # its causal-LM class refuses is_decoder=False
        ("depth_anything", "AutoModelForDepthEstimation"),  # only a task class maps it
    ],
)
def test_default_config_inventories_like_transformers(model_type: str, auto_class: str) -> None:
    import torch
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    with torch.device("meta"):
        model = getattr(transformers, auto_class).from_config(CONFIG_MAPPING[model_type]())
    expected = sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once
    inventory = count_parameters(ModelConfig(f"default-{model_type}", "local", default_config(model_type)))
    assert (inventory.architecture, inventory.total_params) == (type(model).__name__, expected)
