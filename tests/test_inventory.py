"""Meta-device parameter counts against published exact integers, and the odd configs.

Each catalogue entry's expected.json names the source of its count (keras-hub presets, the Hub's safetensors
total, GGUF metadata) and, for entries added since the field exists, the public copy its config.json comes from
(``config_source``: repository, path, commit) and the published integer itself (``published_params``). Tests
parametrize over the folder, so adding a model is adding a folder: a fast test checks each entry's provenance fields,
a slower one builds every model on the meta device and compares its count with the published figure.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from hfmem.build.inventory import count_parameters
from hfmem.catalogue import entries
from hfmem.errors import InvalidConfigError, RemoteCodeRequiredError, UnsupportedArchitectureError
from hfmem.hub import resolve_model
from tests.conftest import CATALOGUE, FIXTURES

CATALOGUE_DIRS = sorted(p.parent for p in CATALOGUE.glob("*/expected.json"))


def inventory_of(path: Path, **kwargs: bool):  # type: ignore[no-untyped-def]
    return count_parameters(resolve_model(str(path)), **kwargs)


#: Entries bundled before expected.json recorded where config.json was copied from (``config_source``) and the
#: published integer (``published_params``); their notes say so where it is known. This number may only shrink.
ENTRIES_WITHOUT_PROVENANCE_FIELDS = 37


def test_catalogue_has_at_least_100_models() -> None:
    ids = [e.model_id.lower() for e in entries()]
    aliases = [alias.lower() for e in entries() for alias in e.aliases]
    assert len(ids) >= 100
    assert len(set(ids)) == len(ids)
    # An id resolves to one entry: no alias repeats another alias or names an entry of its own.
    assert len(set(aliases)) == len(aliases)
    assert not set(aliases) & set(ids)
    legacy = [d.name for d in CATALOGUE_DIRS if "config_source" not in json.loads((d / "expected.json").read_text())]
    assert len(legacy) <= ENTRIES_WITHOUT_PROVENANCE_FIELDS


@pytest.mark.parametrize("folder", CATALOGUE_DIRS, ids=lambda p: p.name)
def test_catalogue_entry_provenance(folder: Path) -> None:
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    config_bytes = (folder / "config.json").read_bytes()
    config = json.loads(config_bytes)
    assert isinstance(config, dict) and config.get("model_type")
    assert folder.name == expected["model_id"].replace("/", "__")
    assert expected["architecture"] == config["architectures"][0]
    assert expected["source_of_truth"], "every count needs its source"
    total = expected["total_params"]
    assert 0 < expected.get("trainable_params", total) <= total
    if "published_params" in expected:
        published = expected["published_params"]
        # The integer is quoted where it is cited, and any gap between it and the built model is explained.
        assert f"{published:,}" in expected["source_of_truth"] or str(published) in expected["source_of_truth"]
        if published != total:
            assert f"differs from the built count by {total - published:+,} (built - stated):" in expected["notes"]
    assert ("config_source" in expected) == ("published_params" in expected)
    if "config_source" not in expected:
        return  # one of the ENTRIES_WITHOUT_PROVENANCE_FIELDS
    source = expected["config_source"]
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", source["repo"]) and source["path"]
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    if "sha256" in source:  # the copy's own checksum of the Hub file: these bytes are the Hub's bytes
        assert hashlib.sha256(config_bytes).hexdigest() == source["sha256"]


@pytest.mark.parametrize("folder", CATALOGUE_DIRS, ids=lambda p: p.name)
def test_catalogue_counts_match_published_figures(folder: Path) -> None:
    expected = json.loads((folder / "expected.json").read_text())
    assert expected["source_of_truth"], "every count needs its source"
    inv = inventory_of(folder)
    assert inv.total_params == expected["total_params"]
    assert inv.architecture == expected["architecture"]
    if "trainable_params" in expected:
        assert inv.trainable_params == expected["trainable_params"]
    if "active_params_per_token" in expected:
        assert inv.active_params_per_token == expected["active_params_per_token"]
    # Shapes and dtypes are kept for every parameter, and they add up.
    assert sum(p.numel for p in inv.parameters) == inv.total_params
    assert all(p.dtype for p in inv.parameters)


@pytest.mark.parametrize(
    ("folder", "largest"),
    [
        # REFERENCE.md §7 "largest module" column (DeepSpeed's largest_layer_params, meta-device count):
        ("meta-llama__Llama-2-7b-hf", 32000 * 4096),  # embed_tokens / lm_head V·h
        ("meta-llama__Llama-3.1-8B", 128256 * 4096),
        # transformers >= 5 fuses the 8 experts: gate_up (8·2·14336·4096) + down (8·4096·14336) in one module.
        ("mistralai__Mixtral-8x7B-v0.1", 8 * 3 * 14336 * 4096),
        ("deepseek-ai__DeepSeek-V3", 256 * 3 * 2048 * 7168),
    ],
)
def test_largest_module(folder: str, largest: int) -> None:
    assert inventory_of(CATALOGUE / folder).largest_module_params == largest


def test_embedding_split_llama2() -> None:
    # Untied: embed_tokens and lm_head are both 32000 × 4096.
    inv = inventory_of(CATALOGUE / "meta-llama__Llama-2-7b-hf")
    assert inv.embedding_params == 2 * 32000 * 4096
    assert inv.non_embedding_params == 6_738_415_616 - 2 * 32000 * 4096
    assert dict(inv.module_params) == {
        "model.embed_tokens": 32000 * 4096,
        "model.layers": 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096),
        "model.norm": 4096,
        "lm_head": 32000 * 4096,
    }


def test_tied_head_counted_once() -> None:
    # Llama-3.2-1B ties lm_head to embed_tokens: keras-hub's 1,498,482,688 counts the head twice (+V·h).
    inv = inventory_of(CATALOGUE / "meta-llama__Llama-3.2-1B")
    assert inv.total_params == 1_498_482_688 - 128256 * 2048
    assert inv.embedding_params == 128256 * 2048


def test_moe_active_parameters_mixtral() -> None:
    # 2 of 8 experts per token: total − 32 layers × 3 · 14336 · 4096 · 8 × (1 − 2/8).
    inv = inventory_of(CATALOGUE / "mistralai__Mixtral-8x7B-v0.1")
    routed = 32 * 3 * 14336 * 4096 * 8
    assert inv.moe is not None and (inv.moe.num_experts, inv.moe.experts_per_token) == (8, 2)
    assert inv.moe.routed_expert_params == routed
    assert inv.active_params_per_token == 46_702_792_704 - routed * 6 // 8


def test_deepseek_v3_active_parameters() -> None:
    # DeepSeek-V3 technical report: 671B total, 37B activated per token (REFERENCE.md §7: 37,552,282,624).
    inv = inventory_of(CATALOGUE / "deepseek-ai__DeepSeek-V3")
    assert inv.total_params == 671_026_404_352
    assert inv.active_params_per_token == 37_552_282_624


def test_encoder_only_uses_the_architecture_class(tmp_path: Path) -> None:
    # bert-base-uncased as BertModel (with pooler) is keras-hub's 109,482,240; as BertForMaskedLM 109,514,298.
    config = json.loads((CATALOGUE / "google-bert__bert-base-uncased" / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert inventory_of(tmp_path).total_params == 109_482_240


def test_unknown_architecture_falls_back_to_the_auto_mapping(tmp_path: Path) -> None:
    # An architecture name transformers lacks: the causal-LM class for model_type llama keeps the LM head.
    config = json.loads((CATALOGUE / "meta-llama__Llama-2-7b-hf" / "config.json").read_text())
    config["architectures"] = ["LlamaForSomethingElse"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    inv = inventory_of(tmp_path)
    assert (inv.architecture, inv.total_params) == ("LlamaForCausalLM", 6_738_415_616)


def test_buffers_are_not_parameters() -> None:
    inv = inventory_of(CATALOGUE / "meta-llama__Llama-2-7b-hf")
    assert inv.buffer_params > 0  # rotary inv_freq
    assert inv.total_params == 6_738_415_616


@pytest.mark.parametrize(
    ("fixture", "error", "message"),
    [
        ("unknown_model_type", UnsupportedArchitectureError, "unknown to the installed transformers 5."),
        ("no_model_type", InvalidConfigError, "no 'model_type'"),
        ("bad_values", InvalidConfigError, "not a multiple of the number of attention heads"),
        ("remote_code", RemoteCodeRequiredError, "--trust-remote-code"),
    ],
)
def test_bad_configs(fixture: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        inventory_of(FIXTURES / fixture)


def test_remote_code_runs_only_when_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = tmp_path / "repo"
    shutil.copytree(FIXTURES / "remote_code", folder)
    inv = inventory_of(folder, trust_remote_code=True)
    # modeling_tiny.py: V·h + L·(h·h + h) + h·V with h = 64, L = 2, V = 1000.
    assert inv.total_params == 1000 * 64 + 2 * (64 * 64 + 64) + 64 * 1000


def test_aliases_are_unique_and_do_not_shadow_entries() -> None:
    ids = {e.model_id.lower() for e in entries()}
    aliases = [a.lower() for e in entries() for a in e.aliases]
    assert len(aliases) == len(set(aliases))
    assert not ids & set(aliases)


def test_parameters_keep_the_checkpoint_dtype() -> None:
    # Llama-2-7b-hf's config.json says "torch_dtype": "float16"; DeepSeek-V3's says bfloat16 but transformers keeps
    # its MoE routers in fp32 (`_keep_in_fp32_modules`).
    llama = inventory_of(CATALOGUE / "meta-llama__Llama-2-7b-hf")
    assert {p.dtype for p in llama.parameters} == {"float16"}
    deepseek = inventory_of(CATALOGUE / "deepseek-ai__DeepSeek-V3")
    assert {p.dtype for p in deepseek.parameters} == {"bfloat16", "float32"}
    assert all("gate" in p.name for p in deepseek.parameters if p.dtype == "float32")
