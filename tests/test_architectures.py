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
from hfmem.build.fallback import native_fallback
from hfmem.build.inventory import count_parameters
from hfmem.cli import cli
from hfmem.errors import RemoteCodeRequiredError, UnsupportedArchitectureError
from hfmem.types import ResolvedModel, TrainingSetup

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
    resolved = native_fallback(ResolvedModel("org/custom", "local", config))
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
        native_fallback(ResolvedModel("org/custom", "local", config))
    assert reason in str(caught.value) and "--trust-remote-code" in str(caught.value)


def test_config_without_custom_code_is_unchanged() -> None:
    model = ResolvedModel("org/llama", "local", {**CUSTOM_LLAMA, "model_type": "llama", "auto_map": {}})
    assert native_fallback(model) is model


# --- what transformers cannot build: one line, exit code 5 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("model_type", "fragment"),
    [
        ("sam_prompt_encoder", "no auto class for model_type 'sam_prompt_encoder'"),  # a part of SAM
        ("time_series_transformer", "prediction_length"),  # its default config cannot build a model
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
    inventory = count_parameters(ResolvedModel(f"default-{model_type}", "local", default_config(model_type)))
    assert (inventory.architecture, inventory.total_params) == (type(model).__name__, expected)


# --- built and counted, but not traced: the inventory with what is missing, exit 0 (5 under --check) ---------------

#: Tiny configs of the issue's reproducers (Llama-4, DBRX with its Hub config's structure).
TINY_UNTRACEABLE: dict[str, dict[str, Any]] = {
    "llama4": {  # transformers 5.24's Llama4ForConditionalGeneration.forward reads outputs.image_outputs, absent
        "model_type": "llama4",
        "architectures": ["Llama4ForConditionalGeneration"],
        "text_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "intermediate_size_mlp": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 300,
            "num_local_experts": 4,
            "num_experts_per_tok": 1,
            "interleave_moe_layer_step": 1,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
            "vision_output_dim": 64,
            "projector_input_dim": 64,
            "projector_output_dim": 64,
        },
        "torch_dtype": "bfloat16",
    },
    "dbrx": {  # its experts index tokens with torch.nonzero (a data-dependent shape)
        "model_type": "dbrx",
        "architectures": ["DbrxForCausalLM"],
        "attn_config": {"clip_qkv": 8, "kv_n_heads": 2, "rope_theta": 500000},
        "d_model": 64,
        "ffn_config": {"ffn_hidden_size": 96, "moe_jitter_eps": 0.01, "moe_num_experts": 4, "moe_top_k": 2},
        "max_seq_len": 256,
        "n_heads": 4,
        "n_layers": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 128,
    },
}


def transformers_param_count(config: dict[str, Any], folder: Path) -> int:
    """The parameters of the named class, built by transformers itself on the meta device (tied weights once)."""
    import torch
    import transformers

    built = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = getattr(transformers, config["architectures"][0])._from_config(built)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(TINY_UNTRACEABLE))
def test_untraceable_model_reports_its_inventory(tmp_path: Path, runner: CliRunner, name: str) -> None:
    config = TINY_UNTRACEABLE[name]
    folder = write_config(tmp_path / name, config)
    result = runner.invoke(cli, [folder, "--json", "--gpu-memory", "80GiB"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["parameters"]["total"] == transformers_param_count(config, Path(folder))
    training = doc["training"]
    assert training["activations_not_measured"].startswith(f"could not trace the activations of '{folder}'")
    assert "--attn eager" not in training["activations_not_measured"]
    for stage in training["stages"]:
        bytes_ = stage["per_gpu_bytes"]
        assert bytes_["activations"] is None and bytes_["logits"] is None and bytes_["total"] is None
        states = bytes_["weights"] + bytes_["master_weights"] + bytes_["gradients"] + bytes_["optimizer_states"]
        assert bytes_["total_without_activations"] == states + bytes_["overhead"]
        assert stage["fits"] is None and stage["headroom_bytes"] is None  # small states: fit unknown, not "yes"
    assert doc["inference"] is None
    assert doc["inference_not_measured"].startswith(f"could not run '{folder}' with a KV cache")
    table = runner.invoke(cli, [folder, "--gpu-memory", "80GiB"], catch_exceptions=False)
    assert table.exit_code == 0
    assert "not measured" in table.stdout and "unknown" in table.stdout and "Inference: not measured" in table.stdout
    # --check asks for a verdict hfmem cannot give: one line, exit 5 (README: Errors and exit codes).
    checked = runner.invoke(cli, [folder, "--gpu-memory", "80GiB", "--check"])
    assert checked.exit_code == 5
    assert checked.stderr.startswith("Error: --check cannot give a verdict") and checked.stderr.count("\n") == 1


#: CLIP: its forward needs images (without pixel_values the vision tower reads ``None.shape``) and it has no cache.
TINY_CLIP: dict[str, Any] = {
    "model_type": "clip",
    "architectures": ["CLIPModel"],
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "vocab_size": 99,
        "max_position_embeddings": 16,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 30,
        "patch_size": 2,
    },
    "projection_dim": 16,
}


def test_clip_is_traced_with_an_image_and_not_served(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "clip", TINY_CLIP)
    report = hfmem.estimate(folder, inference=hfmem.InferenceSetup())
    assert report.inventory.total_params == transformers_param_count(TINY_CLIP, Path(folder))
    assert report.training is not None and report.training.unmeasured is None
    assert report.training.profile is not None and report.training.profile.images_per_sample == 1
    assert report.inference is None and report.inference_unmeasured is not None
    assert "--attn eager" not in report.inference_unmeasured
    # Token ids alone: not measured, and why.
    text_only = hfmem.estimate(folder, setup=hfmem.TrainingSetup(images_per_sample=0))
    assert text_only.training is not None and text_only.training.unmeasured is not None
    assert "CLIPModel takes inputs other than token ids" in text_only.training.unmeasured
    assert "--attn eager" not in text_only.training.unmeasured


def test_states_that_cannot_fit_say_no_even_unmeasured(tmp_path: Path, runner: CliRunner) -> None:
    folder = write_config(tmp_path / "dbrx", TINY_UNTRACEABLE["dbrx"])
    result = runner.invoke(cli, [folder, "--json", "--gpu-memory", "1MiB", "--training-only", "--check"])
    assert result.exit_code == 3  # the states alone exceed 1 MiB: a verdict after all
    assert all(stage["fits"] is False for stage in json.loads(result.stdout)["training"]["stages"])


def test_serving_fails_but_training_is_measured(tmp_path: Path) -> None:
    """Phi-3.5-MoE in fp32: training traces in bf16, serving in fp32 hits grouped_mm's bf16-only kernel."""
    config = {
        "model_type": "phimoe",
        "architectures": ["PhimoeForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "vocab_size": 128,
        "max_position_embeddings": 256,
        "torch_dtype": "float32",
    }
    folder = write_config(tmp_path / "phimoe", config)
    report = hfmem.estimate(folder, inference=hfmem.InferenceSetup())
    assert report.inventory.total_params == transformers_param_count(config, Path(folder))
    assert report.training is not None and report.training.unmeasured is None
    assert report.inference is None and report.inference_unmeasured is not None
    assert "--weights-dtype bf16" in report.inference_unmeasured


def test_vit_without_token_ids_is_counted(tmp_path: Path, runner: CliRunner) -> None:
    import torch
    import transformers

    folder = write_config(tmp_path / "vit", default_config("vit"))
    result = runner.invoke(cli, [folder, "--json", "--training-only"], catch_exceptions=False)
    assert result.exit_code == 0
    with torch.device("meta"):
        model = transformers.ViTModel(transformers.ViTConfig())
    doc = json.loads(result.stdout)
    assert doc["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert "takes inputs other than token ids" in doc["training"]["activations_not_measured"]


# --- models that take images: the vision tower is traced with default images ---------------------------------------

TINY_LLAVA = {
    "model_type": "llava",
    "architectures": ["LlavaForConditionalGeneration"],
    "text_config": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 400,
        "max_position_embeddings": 256,
    },
    "vision_config": {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
        "projection_dim": 32,
    },
    "image_token_index": 300,
    "vision_feature_layer": -2,
    "torch_dtype": "bfloat16",
}


def test_llava_traces_its_vision_tower(tmp_path: Path) -> None:
    """One 28 px image in 14 px patches: (28 / 14)² = 4 patch tokens; Llava's default vision_feature_select_strategy
    drops CLIP's class token (transformers models/llava/modeling_llava.py ``get_image_features``)."""
    folder = write_config(tmp_path / "llava", TINY_LLAVA)
    # Gradient accumulation keeps the gradients live at the loss, so this tiny model peaks where the activations
    # are (without it, freed gradients put the peak at the step, which holds no activations).
    setup = hfmem.TrainingSetup(zero_stages=(0,), seq_len=64, grad_accumulation=4)
    with_image = hfmem.estimate(folder, setup=setup, inference=hfmem.InferenceSetup(prefill_chunk=64))
    text_only = hfmem.estimate(
        folder,
        setup=hfmem.TrainingSetup(zero_stages=(0,), seq_len=64, images_per_sample=0, grad_accumulation=4),
        inference=hfmem.InferenceSetup(prefill_chunk=64, images_per_sample=0),
    )
    assert with_image.inventory.image_inputs
    assert with_image.training is not None and text_only.training is not None
    profile = with_image.training.profile
    assert profile is not None and (profile.images_per_sample, profile.image_tokens) == (1, 4)
    # The vision tower's saved tensors are added; the language model sees the same 64 positions either way.
    assert with_image.training.stages[0].activations_bytes > text_only.training.stages[0].activations_bytes
    assert any("1 default image(s) per sample traced" in note for note in with_image.training.notes)
    assert any("are not counted (--images-per-sample 0)" in note for note in text_only.training.notes)
    assert with_image.inference is not None and text_only.inference is not None
    assert with_image.inference.profile is not None and with_image.inference.profile.images_per_sample == 1
    assert with_image.inference.activations_bytes > text_only.inference.activations_bytes


def test_images_that_do_not_fit_are_left_out_with_a_note(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "llava", TINY_LLAVA)
    report = hfmem.estimate(folder, setup=hfmem.TrainingSetup(zero_stages=(0,), seq_len=6, images_per_sample=2))
    assert report.training is not None and report.training.profile is not None
    assert report.training.profile.images_per_sample == 0
    assert any(
        "not counted (2 image(s) of 4 tokens each do not fit a sequence of 6 tokens)" in note
        for note in report.training.notes
    )


def test_sweep_of_an_untraceable_model_says_why(tmp_path: Path, runner: CliRunner) -> None:
    folder = write_config(tmp_path / "dbrx", TINY_UNTRACEABLE["dbrx"])
    result = runner.invoke(cli, [folder, "--batch-size", "1,2", "--zero", "0"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "≥ " in result.stdout and "Note: ≥: activations and logits not measured (" in result.stdout
    assert "Note: serving not measured: could not run" in result.stdout
