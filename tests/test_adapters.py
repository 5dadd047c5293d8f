"""A PEFT adapter as MODEL plans the adapter's own LoRA (r, targets, modules_to_save, DoRA) on its base (issue 14.4).

Every count is by hand: LoRA adds ``lora_A`` (in × r) and ``lora_B`` (r × out) per adapted Linear (Hu et al. 2021;
peft ``tuners/lora/layer.py`` ``LoraLayer.update_layer``), DoRA one magnitude per output feature of each adapted
Linear (Liu et al. 2024; peft ``tuners/lora/dora.py`` ``DoraLinearLayer.weight``), and ``modules_to_save`` a
trainable copy of the module (peft ``utils/other.py`` ``ModulesToSaveWrapper``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hfmem import estimate
from hfmem.api import adapter_finetune
from hfmem.cli import cli
from hfmem.errors import InvalidConfigError
from hfmem.hub import adapter_settings, resolve_model
from hfmem.types import FinetuneSettings, ResolvedModel, TrainingSetup
from tests.conftest import FIXTURES, TINY_LLAMA, TINY_LLAMA_PARAMS

H, INTER, LAYERS, VOCAB = 64, 128, 2, 1000  # TINY_LLAMA: hidden, intermediate, layers, vocabulary (untied head)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: (in, out) of each Linear of a TINY_LLAMA layer (4 heads × 16 = 64 for q/k/v/o; SwiGLU MLP).
SHAPES = {
    "q_proj": (H, H),
    "k_proj": (H, H),
    "v_proj": (H, H),
    "o_proj": (H, H),
    "gate_proj": (H, INTER),
    "up_proj": (H, INTER),
    "down_proj": (INTER, H),
}


def lora_params(r: int, targets: list[str], *, dora: bool = False) -> int:
    """By hand: r·(in + out) per adapted Linear per layer, plus ``out`` magnitudes each with DoRA."""
    per_layer = sum(r * (SHAPES[t][0] + SHAPES[t][1]) + (SHAPES[t][1] if dora else 0) for t in targets)
    return LAYERS * per_layer


def make_adapter(tmp_path: Path, **fields: Any) -> Path:
    """A base folder (TINY_LLAMA config.json) and an adapter folder whose adapter_config.json points at it."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(TINY_LLAMA))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"base_model_name_or_path": str(base), "peft_type": "LORA", "task_type": "CAUSAL_LM", **fields}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


# --- reading adapter_config.json ------------------------------------------------------------------------------------


def test_adapter_settings_read_from_the_file() -> None:
    settings, notes = adapter_settings(
        {
            "peft_type": "LORA",
            "r": 32,
            "lora_alpha": 64,
            "target_modules": ["q_proj", "v_proj"],
            "modules_to_save": None,  # peft writes null for none
            "use_dora": True,
        },
        "org/a",
        "org/a adapter_config.json",
    )
    assert settings == FinetuneSettings(
        "lora", lora_rank=32, lora_alpha=64, lora_targets=("q_proj", "v_proj"), modules_to_save=(), dora=True
    )
    assert notes == ()


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ("all-linear", ("all-linear",)),
        (r".*\.(q_proj|v_proj)", (r"re:.*\.(q_proj|v_proj)",)),  # peft: a string is a regex, full-matched
        (None, None),  # peft's default for the architecture
    ],
)
def test_adapter_target_forms(targets: Any, expected: Any) -> None:
    settings, _ = adapter_settings({"peft_type": "LORA", "target_modules": targets}, "a", "a/adapter_config.json")
    assert settings is not None and settings.lora_targets == expected
    assert settings.lora_rank == 8  # peft LoraConfig.r default when the file omits it


@pytest.mark.parametrize(
    ("field", "value"),
    [("r", 0), ("r", "16"), ("r", True), ("target_modules", [1]), ("modules_to_save", "lm_head"), ("use_dora", "y")],
)
def test_bad_adapter_fields_are_one_line_errors(field: str, value: Any) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        adapter_settings({"peft_type": "LORA", field: value}, "a", "a/adapter_config.json")
    message = str(caught.value)
    assert "\n" not in message and field in message and "a/adapter_config.json" in message


def test_other_peft_types_are_not_planned_as_lora() -> None:
    settings, [note] = adapter_settings({"peft_type": "IA3", "target_modules": ["k_proj"]}, "org/ia3", "x")
    assert settings is None
    assert "LoRA adapters only" in note and "IA3" in note and "full fine-tune" in note


def test_unmodelled_lora_fields_are_noted() -> None:
    settings, [note] = adapter_settings(
        {"peft_type": "LORA", "r": 8, "rank_pattern": {"q_proj": 16}, "bias": "all"}, "a", "a/adapter_config.json"
    )
    assert settings is not None and settings.lora_rank == 8
    assert "rank_pattern" in note and "bias='all'" in note and "does not model" in note
    _, notes = adapter_settings({"peft_type": "LORA", "rank_pattern": {}, "bias": "none"}, "a", "x")
    assert notes == ()  # peft's neutral values say nothing


def test_resolve_model_carries_the_adapter(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    resolved = resolve_model(str(adapter))
    assert resolved.config == TINY_LLAMA and resolved.model_id == str(tmp_path / "base")
    assert resolved.adapter == FinetuneSettings(
        "lora", lora_rank=4, lora_targets=("q_proj",), modules_to_save=("lm_head",)
    )
    assert resolved.adapter_origin == str(adapter / "adapter_config.json")


# --- what is planned ------------------------------------------------------------------------------------------------


def test_api_plans_the_adapters_own_lora(tmp_path: Path) -> None:
    adapter = make_adapter(
        tmp_path, r=4, lora_alpha=8, target_modules=ALL_LINEAR, modules_to_save=["lm_head"], use_dora=True
    )
    report = estimate(str(adapter), inference=None)
    # LoRA on every linear with DoRA magnitudes, plus peft's trainable copy of the untied head (vocab × hidden).
    expected = lora_params(4, ALL_LINEAR, dora=True) + VOCAB * H
    assert expected == 2 * (4 * 4 * 128 + 3 * 4 * 192 + (4 * 64 + 2 * 128 + 64)) + 64_000 == 73_856
    assert report.inventory.trainable_params == expected
    assert report.training is not None and report.training.setup.finetune.method == "lora"
    [note] = [n for n in report.notes if "adapter's own LoRA" in n]
    assert "r=4" in note and "targets=" + ",".join(ALL_LINEAR) in note
    assert "modules_to_save=lm_head" in note and "DoRA=yes" in note
    assert str(adapter / "adapter_config.json") in note


def test_api_explicit_finetune_wins(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, r=4, target_modules=ALL_LINEAR)
    given = FinetuneSettings("lora", lora_rank=2, lora_targets=("q_proj", "v_proj"))
    report = estimate(str(adapter), setup=TrainingSetup(finetune=given), inference=None)
    assert report.inventory.trainable_params == lora_params(2, ["q_proj", "v_proj"]) == 2 * 2 * 2 * 128
    [note] = [n for n in report.notes if "adapter's own LoRA" in n]
    assert "is not planned" in note and "FinetuneSettings were given" in note


def test_adapter_finetune_merges_only_the_given_fields() -> None:
    adapter = FinetuneSettings("lora", lora_rank=16, lora_targets=("q_proj", "v_proj"), dora=True)
    model = ResolvedModel("m", "local", {}, adapter=adapter, adapter_origin="a/adapter_config.json")
    given = FinetuneSettings("qlora", lora_rank=4)
    merged, note = adapter_finetune(model, given, {"method", "lora_rank", "seq_len"})
    assert merged == FinetuneSettings("qlora", lora_rank=4, lora_targets=("q_proj", "v_proj"), dora=True)
    assert note is not None and "--lora-rank 4 (adapter: 16)" in note and "--method qlora (adapter: lora)" in note
    # A method other than LoRA chosen over an adapter: the caller's settings, said so.
    full, note = adapter_finetune(model, FinetuneSettings("full"), {"method"})
    assert full == FinetuneSettings("full") and note is not None and "--method full" in note
    # Not an adapter: untouched, no note.
    plain = ResolvedModel("m", "local", {})
    assert adapter_finetune(plain, given, None) == (given, None)


def test_cli_flags_override_the_adapter(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, r=4, target_modules=["q_proj", "v_proj"], use_dora=True)
    code, out, err = run(str(adapter), "--training-only", "--zero", "0", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["parameters"]["trainable"] == lora_params(4, ["q_proj", "v_proj"], dora=True) == 2 * (2 * 512 + 128)
    assert doc["training"]["settings"]["method"] == "lora"
    assert doc["training"]["settings"]["adapter"]["lora_rank"] == 4
    assert doc["training"]["settings"]["adapter"]["dora"] is True
    assert any("adapter's own LoRA" in n and "DoRA=yes" in n for n in doc["notes"])

    code, out, err = run(str(adapter), "--training-only", "--zero", "0", "--json", "--lora-rank", "2")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["parameters"]["trainable"] == lora_params(2, ["q_proj", "v_proj"], dora=True) == 2 * (2 * 256 + 128)
    [note] = [n for n in doc["notes"] if "adapter's own LoRA" in n]
    assert "r=2" in note and "overridden by --lora-rank 2 (adapter: 4)" in note

    code, out, err = run(str(adapter), "--training-only", "--zero", "0", "--method", "full")
    assert code == 0, err
    assert "adapter's own LoRA" in out and "--method full was chosen" in out
    assert f"trainable {TINY_LLAMA_PARAMS:,}" in out  # the base trained in full


def test_cli_table_says_so(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, r=4, target_modules=["q_proj"])
    code, out, err = run(str(adapter), "--training-only", "--zero", "0")
    assert code == 0, err
    assert "Method: LoRA rank 4 on q_proj" in " ".join(out.split())
    assert "planned the adapter's own LoRA: r=4, targets=q_proj" in " ".join(out.split())


def test_adapter_settings_reach_the_cache_key(tmp_path: Path) -> None:
    from hfmem.cache import cache_key

    adapter = make_adapter(tmp_path, r=4, target_modules=["q_proj"])
    resolved = resolve_model(str(adapter))
    finetune, _ = adapter_finetune(resolved, FinetuneSettings())
    base = resolve_model(str(tmp_path / "base"))
    assert base.adapter is None and base.config == resolved.config
    assert cache_key(resolved, finetune, trust_remote_code=False) != cache_key(
        base, FinetuneSettings(), trust_remote_code=False
    )
    assert cache_key(resolved, finetune, trust_remote_code=False) == cache_key(
        base, FinetuneSettings("lora", lora_rank=4, lora_targets=("q_proj",)), trust_remote_code=False
    )


def test_regex_targets_reach_peft(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, r=4, target_modules=r".*\.(q_proj|down_proj)")
    report = estimate(str(adapter), inference=None)
    assert report.inventory.trainable_params == lora_params(4, ["q_proj", "down_proj"])


def test_issue_14_numbers() -> None:
    # The issue's adapter, on Mistral-7B-v0.1's shapes (h 4096, 8 KV heads × 128 = 1024, 32 layers): peft's default
    # r = 8 on q_proj, v_proj gave 32 · 8 · ((4096 + 4096) + (4096 + 1024)) = 3,407,872; the adapter's own r = 64 on
    # the same targets is 32 · 64 · 13,312 = 27,262,976 (r = 32 on q,k,v,o gives the same total).
    folder = FIXTURES / "lora_adapter_r64"
    code, out, err = run(str(folder), "--training-only", "--zero", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["parameters"]["trainable"] == 32 * 64 * ((4096 + 4096) + (4096 + 1024)) == 27_262_976
    code, out, err = run(str(folder), "--training-only", "--zero", "0", "--json", "--lora-rank", "8")
    assert code == 0, err
    assert json.loads(out)["parameters"]["trainable"] == 32 * 8 * ((4096 + 4096) + (4096 + 1024)) == 3_407_872


def test_a_launch_file_overrides_the_adapter_as_flags_do(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, r=4, target_modules=["q_proj", "v_proj"])
    launch = tmp_path / "axolotl.yml"
    launch.write_text("adapter: lora\nlora_r: 2\n")  # axolotl's keys (hfmem/launch.py `axolotl`)
    code, out, err = run(str(adapter), "--training-only", "--zero", "0", "--json", "--launch-config", str(launch))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["parameters"]["trainable"] == lora_params(2, ["q_proj", "v_proj"]) == 2 * 2 * 2 * 128
    assert any("overridden by --lora-rank 2 (adapter: 4)" in n for n in doc["notes"])
