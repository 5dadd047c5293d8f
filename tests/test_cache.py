"""The persistent inventory/trace cache: a repeat query does not import torch, and never answers stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hfmem.api import estimate
from hfmem.cache import ProfileCache, cache_dir, cache_key, clear_cache
from hfmem.cli import cli
from hfmem.types import FinetuneSettings, ModelConfig, ParameterInventory, TrainingSetup
from tests.conftest import TINY_LLAMA, TINY_LLAMA_PARAMS


def _write_config(folder: Path, config: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HFMEM_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("HFMEM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "hfmem"


def test_key_changes_with_config_method_and_remote_code() -> None:
    model = ModelConfig(model_id="m", source="local", config=dict(TINY_LLAMA))
    base = cache_key(model, FinetuneSettings(), trust_remote_code=False)
    assert base == cache_key(
        ModelConfig("other name", "hub", dict(TINY_LLAMA)), FinetuneSettings(), trust_remote_code=False
    )
    bigger = ModelConfig(model_id="m", source="local", config={**TINY_LLAMA, "num_hidden_layers": 3})
    assert cache_key(bigger, FinetuneSettings(), trust_remote_code=False) != base
    assert cache_key(model, FinetuneSettings(method="lora"), trust_remote_code=False) != base
    assert cache_key(model, FinetuneSettings(method="lora", lora_rank=16), trust_remote_code=False) != cache_key(
        model, FinetuneSettings(method="lora"), trust_remote_code=False
    )
    assert cache_key(model, FinetuneSettings(), trust_remote_code=True) != base


def test_repeat_query_reads_the_cache_without_torch(tmp_path: Path) -> None:
    """A fresh process, the second time: same JSON, and neither torch nor transformers imported."""
    folder = _write_config(tmp_path / "tiny", TINY_LLAMA)
    env = {**os.environ, "HFMEM_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    args = [str(folder), "--json", "--gpus", "2", "--seq-len", "64"]
    script = (
        "import sys, json; from click.testing import CliRunner; from hfmem.cli import cli; "
        f"r = CliRunner().invoke(cli, {args!r}); assert r.exit_code == 0, r.output; "
        "print(json.dumps({'heavy': sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules), "
        "'out': json.loads(r.stdout)}))"
    )
    first = json.loads(
        subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True).stdout
    )
    second = json.loads(
        subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True).stdout
    )
    assert "torch" in first["heavy"]  # the first query builds the model
    assert second["heavy"] == []
    assert second["out"] == first["out"]
    assert second["out"]["parameters"]["total"] == TINY_LLAMA_PARAMS


def test_cached_values_equal_fresh_ones(tmp_path: Path) -> None:
    """Everything a report is made of survives the JSON round trip: cached and uncached reports are equal."""
    folder = _write_config(tmp_path / "tiny", TINY_LLAMA)
    setup = TrainingSetup(gpus_per_node=2, seq_len=32, batch_size=2)
    from hfmem.types import InferenceSetup

    fresh = estimate(str(folder), setup=setup, inference=InferenceSetup(context=128), cache=False)
    first = estimate(str(folder), setup=setup, inference=InferenceSetup(context=128))
    again = estimate(str(folder), setup=setup, inference=InferenceSetup(context=128))
    assert list(cache_dir().glob("*.json"))
    assert fresh.inventory == first.inventory == again.inventory
    assert fresh.training == again.training
    assert fresh.inference == again.inference


def test_no_cache_writes_nothing_and_clear_cache_removes_entries(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "tiny", TINY_LLAMA)
    runner = CliRunner()
    result = runner.invoke(cli, [str(folder), "--no-cache", "--training-only", "--seq-len", "16"])
    assert result.exit_code == 0, result.output
    assert not cache_dir().exists()
    result = runner.invoke(cli, [str(folder), "--training-only", "--seq-len", "16"])
    assert result.exit_code == 0 and len(list(cache_dir().glob("*.json"))) == 1
    result = runner.invoke(cli, ["--clear-cache"])
    assert result.exit_code == 0 and "removed 1 cached model" in result.stdout
    assert not cache_dir().exists()
    assert clear_cache()[1] == 0


def test_a_corrupt_entry_is_rebuilt(tmp_path: Path) -> None:
    cache = ProfileCache("k")
    built = cache.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(5), ParameterInventory)
    assert built.total_params == 5
    assert cache.path is not None
    doc = json.loads(cache.path.read_text())
    slot = next(iter(doc))
    doc[slot]["total_params"] = "five"  # a wrong type, as from an incompatible layout
    cache.path.write_text(json.dumps(doc))
    again = ProfileCache("k")
    rebuilt = again.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(5), ParameterInventory)
    assert rebuilt.total_params == 5 and again.misses == 1
    cache.path.write_text("{not json")
    third = ProfileCache("k")
    assert (
        third.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(7), ParameterInventory).total_params
        == 7
    )


def test_an_unwritable_cache_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HFMEM_CACHE", str(blocker / "cache"))
    cache = ProfileCache("k")
    value = cache.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(3), ParameterInventory)
    assert value.total_params == 3
    assert "could not write the cache" in capsys.readouterr().err
