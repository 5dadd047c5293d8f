"""The persistent inventory/trace cache: a repeat query does not import torch, and never answers stale."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from hfmem import cache as cache_module
from hfmem.api import estimate, resolve
from hfmem.cache import MARKER_NAME, ProfileCache, cache_dir, cache_key, clear_cache
from hfmem.cli import cli
from hfmem.errors import CacheFolderError, ExitCode
from hfmem.types import FinetuneSettings, ParameterInfo, ParameterInventory, ResolvedModel, TrainingSetup
from tests.conftest import FIXTURES, TINY_LLAMA, TINY_LLAMA_PARAMS

#: Keys are SHA-256 digests in hex; these stand for any two.
KEY = "a" * 64
OTHER_KEY = "b" * 64


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
    monkeypatch.setenv("HFMEM_CACHE", "")  # empty counts as unset
    assert cache_dir() == tmp_path / "xdg" / "hfmem"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG spec: a relative value is ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "hfmem"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HFMEM_CACHE", "here")  # a relative HFMEM_CACHE is taken from the current folder
    assert cache_dir() == tmp_path / "here"


def test_key_changes_with_config_method_and_remote_code() -> None:
    model = ResolvedModel(model_id="m", source="local", config=dict(TINY_LLAMA))
    base = cache_key(model, FinetuneSettings(), trust_remote_code=False)
    assert base == cache_key(
        ResolvedModel("other name", "hub", dict(TINY_LLAMA)), FinetuneSettings(), trust_remote_code=False
    )
    bigger = ResolvedModel(model_id="m", source="local", config={**TINY_LLAMA, "num_hidden_layers": 3})
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
    assert (cache_dir() / MARKER_NAME).read_bytes().startswith(b"Signature: 8a477f597d28d172789f06886806bc55\n")
    entry = next(cache_dir().glob("*.json")).name
    result = runner.invoke(cli, ["--clear-cache"])
    assert result.exit_code == 0 and result.stdout == f"removed 1 cached model from {cache_dir()}\n"
    assert sorted(p.name for p in cache_dir().iterdir()) == [MARKER_NAME]  # the tag and the folder stay
    result = runner.invoke(cli, ["--clear-cache", "--json"])
    cleared = json.loads(result.stdout)
    assert cleared == {"cache_dir": str(cache_dir()), "removed": 0, "removed_files": [], "skipped": []}
    runner.invoke(cli, [str(folder), "--training-only", "--seq-len", "16"])
    result = runner.invoke(cli, ["--clear-cache", "--json"])
    assert json.loads(result.stdout)["removed_files"] == [entry]


def _tree(folder: Path) -> dict[str, bytes | str]:
    """Every path under ``folder`` with its content (files) or kind, to prove nothing changed."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = "symlink -> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "folder"
        else:
            found[rel] = path.read_bytes()
    return found


def _foreign_folder(folder: Path) -> Path:
    """The issue's reproducer: a user's folder with photos, notes and a stray config.json."""
    (folder / "photos").mkdir(parents=True)
    (folder / "photos" / "me.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "todo.txt").write_text("buy milk\n")
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    return folder


def test_clear_cache_refuses_a_folder_that_is_not_hfmems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _foreign_folder(tmp_path / "mine")
    before = _tree(folder)
    monkeypatch.setenv("HFMEM_CACHE", str(folder))
    result = CliRunner().invoke(cli, ["--clear-cache"])
    assert result.exit_code == ExitCode.USAGE == 2
    assert result.stdout == ""
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in result.output
    assert repr(str(folder)) in error and "nothing was deleted" in error and "HFMEM_CACHE" in error
    assert "'config.json', 'photos', 'todo.txt'" in error
    assert _tree(folder) == before
    with pytest.raises(CacheFolderError):
        clear_cache()
    assert _tree(folder) == before


def test_hfmem_cache_dot_in_a_users_folder_deletes_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HFMEM_CACHE=.`` in a folder of the user's files: --clear-cache refuses, a query warns once and writes
    nothing there."""
    work = _foreign_folder(tmp_path / "work")
    model = _write_config(tmp_path / "tiny", TINY_LLAMA)
    before = _tree(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HFMEM_CACHE", ".")
    runner = CliRunner()
    result = runner.invoke(cli, ["--clear-cache"])
    assert result.exit_code == 2 and "is not hfmem's" in result.stderr and repr(str(work)) in result.stderr
    assert _tree(work) == before
    result = runner.invoke(cli, [str(model), "--training-only", "--seq-len", "16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parameters"]["total"] == TINY_LLAMA_PARAMS
    warnings = [line for line in result.stderr.splitlines() if "continuing without the cache" in line]
    assert len(warnings) == 1 and "is not hfmem's" in warnings[0]
    assert _tree(work) == before


def test_clear_cache_removes_only_hfmems_files(tmp_path: Path) -> None:
    """In hfmem's own folder: entries and leftover temporary files go; the user's files, a sub-folder and a symlink
    named like entries, and the tag stay."""
    cache = ProfileCache(KEY)
    cache.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(5), ParameterInventory)
    folder = cache_dir()
    leftover = folder / f".{OTHER_KEY}.json.abcd1234.tmp"
    leftover.write_text("{half")
    (folder / "notes.txt").write_text("mine")
    (folder / ("c" * 64 + ".json")).mkdir()
    target = tmp_path / "precious.json"
    target.write_text("{}")
    (folder / ("d" * 64 + ".json")).symlink_to(target)
    result = clear_cache()
    assert result.removed_entries == (f"{KEY}.json",)
    assert result.removed_temp_files == (leftover.name,)
    assert result.skipped == ("c" * 64 + ".json", "d" * 64 + ".json")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MARKER_NAME, "notes.txt", "c" * 64 + ".json", "d" * 64 + ".json"]
    )
    assert target.read_text() == "{}"


def test_a_tag_written_by_another_tool_does_not_make_a_folder_hfmems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "other-cache"
    folder.mkdir()
    (folder / MARKER_NAME).write_text("Signature: 8a477f597d28d172789f06886806bc55\n# created by some other tool\n")
    (folder / ("e" * 64 + ".json")).write_text("{}")
    monkeypatch.setenv("HFMEM_CACHE", str(folder))
    with pytest.raises(CacheFolderError, match="is not hfmem's"):
        clear_cache()
    assert (folder / ("e" * 64 + ".json")).exists()


def test_a_cache_from_before_the_tag_is_adopted(tmp_path: Path) -> None:
    """A folder holding only files named like hfmem's entries (what hfmem wrote before it tagged its folder) is
    hfmem's: a query reads it and tags it, and --clear-cache empties it."""
    first = ProfileCache(KEY)
    first.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(5), ParameterInventory)
    (cache_dir() / MARKER_NAME).unlink()
    again = ProfileCache(KEY)
    value = again.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(99), ParameterInventory)
    assert value.total_params == 5 and again.hits == 1
    other = ProfileCache(OTHER_KEY)
    other.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(6), ParameterInventory)
    assert (cache_dir() / MARKER_NAME).exists()
    (cache_dir() / MARKER_NAME).unlink()
    assert clear_cache().removed_entries == (f"{KEY}.json", f"{OTHER_KEY}.json")


def test_leftover_temporary_files_are_swept_on_write(tmp_path: Path) -> None:
    """A temporary file older than an hour was left by a killed process: the next write removes it; a fresh one may
    be another process's write in flight and stays."""
    ProfileCache(KEY).get_or_build("inventory", {}, lambda: ParameterInventory.from_count(5), ParameterInventory)
    old = cache_dir() / f".{OTHER_KEY}.json.old12345.tmp"
    fresh = cache_dir() / f".{OTHER_KEY}.json.new12345.tmp"
    old.write_text("{")
    fresh.write_text("{")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(old, (two_hours_ago, two_hours_ago))
    ProfileCache(OTHER_KEY).get_or_build("inventory", {}, lambda: ParameterInventory.from_count(6), ParameterInventory)
    assert not old.exists() and fresh.exists()


def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    ProfileCache(KEY).get_or_build("inventory", {}, lambda: ParameterInventory.from_count(5), ParameterInventory)
    monkeypatch.setattr(cache_module.os, "replace", refuse)
    cache = ProfileCache(OTHER_KEY)
    value = cache.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(6), ParameterInventory)
    assert value.total_params == 6 and not cache.persistent
    assert "could not write the cache" in capsys.readouterr().err
    assert sorted(p.name for p in cache_dir().iterdir()) == sorted([MARKER_NAME, f"{KEY}.json"])


def test_a_corrupt_entry_is_rebuilt(tmp_path: Path) -> None:
    cache = ProfileCache(KEY)
    built = cache.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(5), ParameterInventory)
    assert built.total_params == 5
    assert cache.path is not None
    doc = json.loads(cache.path.read_text())
    slot = next(iter(doc))
    doc[slot]["total_params"] = "five"  # a wrong type, as from an incompatible layout
    cache.path.write_text(json.dumps(doc))
    again = ProfileCache(KEY)
    rebuilt = again.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(5), ParameterInventory)
    assert rebuilt.total_params == 5 and again.misses == 1
    cache.path.write_text("{not json")
    third = ProfileCache(KEY)
    assert (
        third.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(7), ParameterInventory).total_params
        == 7
    )


def _five() -> ParameterInventory:
    """An inventory of one 5-element parameter, so every nested type has a value to spoil."""
    info = ParameterInfo(name="w", shape=(5,), dtype="float32", layer_index=0)
    return replace(ParameterInventory.from_count(5), parameters=(info,), layer_names=("layer.0",))


def _wrong_shapes(good: dict[str, object]) -> list[object]:
    """Slot values that are JSON but not what the decoder expects."""
    parameters = good["parameters"]
    assert isinstance(parameters, list) and parameters
    missing = dict(good)
    del missing["total_params"]
    extra = {**good, "surprise": 1}
    bad_info = {**good, "parameters": [{**parameters[0], "shape": "8x8"}]}
    bad_bool = {**good, "tied_embeddings": 1}
    bad_optional = {**good, "moe": [1, 2]}
    bool_count = {**good, "total_params": True}
    return [[1, 2], "inventory", None, 5, {}, missing, extra, bad_info, bad_bool, bad_optional, bool_count]


def test_an_entry_of_the_wrong_shape_is_a_miss_and_is_overwritten(tmp_path: Path) -> None:
    """The issue: an entry whose slots have the wrong shape failed on every run until the cache was cleared."""
    cache = ProfileCache(KEY)
    cache.get_or_build("inventory", {}, _five, ParameterInventory)
    assert cache.path is not None
    good = json.loads(cache.path.read_text())
    (slot,) = good
    for bad in _wrong_shapes(good[slot]):
        cache.path.write_text(json.dumps({slot: bad}))
        again = ProfileCache(KEY)
        value = again.get_or_build("inventory", {}, _five, ParameterInventory)
        assert value == _five() and again.misses == 1, bad
        assert json.loads(cache.path.read_text()) == good, bad  # overwritten with a good one
        third = ProfileCache(KEY)
        third.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(99), ParameterInventory)
        assert third.hits == 1
    for doc in ([1, 2], "x", None):  # a whole entry that is not an object
        cache.path.write_text(json.dumps(doc))
        assert (
            ProfileCache(KEY)
            .get_or_build("inventory", {}, lambda: ParameterInventory.from_count(5), ParameterInventory)
            .total_params
            == 5
        )


def test_every_slot_of_a_real_entry_replaced_by_a_list_is_rebuilt(tmp_path: Path) -> None:
    """The issue's reproducer end to end: the native-fallback, inventory and activation slots all wrong."""
    folder = _write_config(tmp_path / "tiny", TINY_LLAMA)
    args = [str(folder), "--json", "--training-only", "--seq-len", "16"]
    runner = CliRunner()
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    (entry,) = cache_dir().glob("*.json")
    doc = json.loads(entry.read_text())
    assert {slot.split("{")[0] for slot in doc} == {"native", "inventory", "activations"}
    entry.write_text(json.dumps({slot: [1, 2] for slot in doc}))
    again = runner.invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert json.loads(entry.read_text()) == doc


def test_something_other_than_a_file_where_an_entry_should_be_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO (reading it would block forever), a folder or a symlink in place of an entry: skipped with one
    warning, never read, never written over."""
    probe = ProfileCache(KEY)
    assert probe.path is not None
    path = probe.path
    path.parent.mkdir(parents=True)
    target = tmp_path / "precious.json"
    target.write_text('{"mine": 1}')
    makers = {
        "a FIFO": lambda: os.mkfifo(path),
        "a folder": lambda: path.mkdir(),
        "a symlink": lambda: path.symlink_to(target),
    }
    for kind, make in makers.items():
        make()
        results: list[ParameterInventory] = []

        def query(into: list[ParameterInventory] = results) -> None:
            cache = ProfileCache(KEY)
            into.append(cache.get_or_build("inventory", {}, _five, ParameterInventory))

        worker = threading.Thread(target=query, daemon=True)
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), f"reading {kind} blocked"
        assert results and results[0].total_params == 5
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"it is {kind}" in err and repr(str(path)) in err
        assert os.path.lexists(path) and not (path.is_file() and not path.is_symlink())
        if kind == "a folder":
            path.rmdir()
        else:
            path.unlink()
    assert target.read_text() == '{"mine": 1}'


def test_an_explicit_hfmem_cache_that_cannot_be_a_folder_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HFMEM_CACHE names a file, a path under one, or '~nosuchuser/…' (an internal error before): one line, exit 2,
    with the fix; --no-cache still works."""
    model = _write_config(tmp_path / "tiny", TINY_LLAMA)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    runner = CliRunner()
    for value, says in [
        (str(blocker), "it is a file"),
        (str(blocker / "cache"), "a part of the path is a file"),
        ("~nosuchuser-hfmem/x", "no home folder for '~nosuchuser-hfmem'"),
    ]:
        monkeypatch.setenv("HFMEM_CACHE", value)
        for args in ([str(model), "--training-only", "--seq-len", "16"], ["--clear-cache"]):
            result = runner.invoke(cli, args)
            assert result.exit_code == 2, (value, args, result.output)
            assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("Error: ")
            assert says in result.stderr and "HFMEM_CACHE" in result.stderr, result.stderr
        result = runner.invoke(cli, [str(model), "--training-only", "--seq-len", "16", "--no-cache", "--json"])
        assert result.exit_code == 0 and json.loads(result.stdout)["parameters"]["total"] == TINY_LLAMA_PARAMS
    assert blocker.read_text() == "not a folder"


def test_an_unusable_default_location_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default location (not the user's choice) cannot be a folder: one warning, and the run goes on."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("HFMEM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    cache = ProfileCache(KEY)
    value = cache.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(3), ParameterInventory)
    assert value.total_params == 3 and not cache.persistent
    ProfileCache(OTHER_KEY)  # warned once per process
    err = capsys.readouterr().err
    assert err.count("continuing without the cache") == 1 and "cannot be a folder" in err
    assert blocker.read_text() == "not a folder"


def test_an_unwritable_cache_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.tempfile, "mkstemp", no_space)
    cache = ProfileCache(KEY)
    value = cache.get_or_build("inventory", {}, lambda: ParameterInventory.from_count(3), ParameterInventory)
    assert value.total_params == 3
    assert "could not write the cache" in capsys.readouterr().err


# --- the key holds everything the answer depends on ------------------------------------------------------------------


def test_cache_does_not_import_the_api() -> None:
    """The key lives in cache.py; api imports cache, never the reverse (no cycle)."""
    tree = ast.parse(Path(cache_module.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & {"hfmem.api", "hfmem.cli", "torch", "transformers"}
    assert not [name for name in imported if name and name.split(".")[:2] == ["hfmem", "build"]]


def _copy_sources(to: Path) -> Path:
    shutil.copytree(cache_module.SOURCE_ROOT, to, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    return to


def test_a_change_to_hfmems_code_is_a_new_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte of one source file changes the key (on a copy of the package, never the real one)."""
    model = ResolvedModel(model_id="m", source="local", config=dict(TINY_LLAMA))
    real = cache_key(model, FinetuneSettings(), trust_remote_code=False)
    copy = _copy_sources(tmp_path / "hfmem")
    monkeypatch.setattr(cache_module, "SOURCE_ROOT", copy)
    assert cache_key(model, FinetuneSettings(), trust_remote_code=False) == real  # same files, same key
    edited = _copy_sources(tmp_path / "edited" / "hfmem")
    source = edited / "memory" / "states.py"
    text = source.read_bytes()
    source.write_bytes(text[:-1] + (b" " if text[-1:] != b" " else b"\n"))
    monkeypatch.setattr(cache_module, "SOURCE_ROOT", edited)
    assert cache_key(model, FinetuneSettings(), trust_remote_code=False) != real
    changed = cache_key(model, FinetuneSettings(), trust_remote_code=False)
    assert changed != real
    (edited / "catalogue" / "x.json").write_text("{}")  # data files are not code (configs are keyed by content)
    cache_module._tree_digest.cache_clear()
    assert cache_key(model, FinetuneSettings(), trust_remote_code=False) == changed


@pytest.mark.parametrize(
    ("package", "method", "changes"),
    [
        ("torch", "full", True),
        ("transformers", "full", True),
        ("accelerate", "full", True),
        ("peft", "lora", True),
        ("peft", "qlora", True),
        ("peft", "full", False),  # peft builds nothing for a full fine-tune
    ],
)
def test_a_library_upgrade_is_a_new_key(
    monkeypatch: pytest.MonkeyPatch, package: str, method: str, changes: bool
) -> None:
    model = ResolvedModel(model_id="m", source="local", config=dict(TINY_LLAMA))
    finetune = FinetuneSettings(method=method)  # type: ignore[arg-type]
    before = cache_key(model, finetune, trust_remote_code=False)
    real = cache_module._package_version

    def upgraded(name: str) -> str:
        return real(name) + ".post1" if name == package else real(name)

    monkeypatch.setattr(cache_module, "_package_version", upgraded)
    assert (cache_key(model, finetune, trust_remote_code=False) != before) is changes


def test_versions_are_read_without_importing_torch() -> None:
    script = (
        "import sys; from hfmem.cache import cache_key, _package_version; "
        "from hfmem.types import ResolvedModel, FinetuneSettings; "
        "cache_key(ResolvedModel('m', 'local', {'model_type': 'llama'}), FinetuneSettings(method='lora'), "
        "trust_remote_code=False); "
        "print(_package_version('torch'), sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.split()
    import torch

    assert out[0] == str(torch.__version__)  # the metadata says what torch itself reports
    assert out[1:] == ["[]"]


#: A tiny custom-code model, as a Hub repo with ``auto_map`` ships it. By hand: embedding 16·8 = 128, each layer
#: Linear(8, 8) with bias 8·8 + 8 = 72, head 8·16 = 128 (no bias, untied).
TINY_REMOTE_CONFIG = json.loads((FIXTURES / "remote_code_counted" / "config.json").read_text(encoding="utf-8"))
TINY_REMOTE_CONFIGURATION = (FIXTURES / "remote_code_counted" / "configuration_tiny.py").read_text(encoding="utf-8")
TINY_REMOTE_MODELING = (FIXTURES / "remote_code_counted" / "modeling_tiny.py").read_text(encoding="utf-8")


def tiny_remote_model(folder: Path) -> Path:
    """Write the tiny custom-code model into ``folder`` (config.json + its two code files)."""
    _write_config(folder, TINY_REMOTE_CONFIG)
    (folder / "configuration_tiny.py").write_text(TINY_REMOTE_CONFIGURATION)
    (folder / "modeling_tiny.py").write_text(TINY_REMOTE_MODELING)
    return folder


def tiny_remote_params(layers: int) -> int:
    return 16 * 8 + layers * (8 * 8 + 8) + 8 * 16


def test_a_change_to_trusted_remote_code_is_a_new_key(tmp_path: Path) -> None:
    """Every top-level ``*.py`` of the model folder is in the key with --trust-remote-code (and only then)."""
    folder = tiny_remote_model(tmp_path / "tiny-remote")
    model = resolve(str(folder), trust_remote_code=True)
    before = cache_key(model, FinetuneSettings(), trust_remote_code=True)
    untrusted = cache_key(model, FinetuneSettings(), trust_remote_code=False)
    (folder / "modeling_tiny.py").write_text(TINY_REMOTE_MODELING.replace("EXTRA_LAYERS = 0", "EXTRA_LAYERS = 10"))
    after = cache_key(model, FinetuneSettings(), trust_remote_code=True)
    assert after != before
    assert cache_key(model, FinetuneSettings(), trust_remote_code=False) == untrusted  # untrusted code never runs
    (folder / "helpers.py").write_text("# a file a relative import could load\n")
    assert cache_key(model, FinetuneSettings(), trust_remote_code=True) != after
    (folder / "helpers.py").unlink()
    (folder / "README.md").write_text("not code")
    assert cache_key(model, FinetuneSettings(), trust_remote_code=True) == after


def test_edited_remote_code_gives_the_new_count_in_the_next_run(tmp_path: Path) -> None:
    """The issue: with --trust-remote-code on a local folder, adding 10 layers to the modelling file still returned
    the old count. Here, in fresh processes as a user runs it: 2 layers → 400 parameters; 10 more layers in the code →
    12 layers → 1,120 (by hand, `tiny_remote_params`); run again unchanged → 1,120 from the cache."""
    assert tiny_remote_params(2) == 400 and tiny_remote_params(12) == 1_120
    folder = tiny_remote_model(tmp_path / "tiny-remote")
    script = (
        "import sys, json; from click.testing import CliRunner; from hfmem.cli import cli; "
        f"r = CliRunner().invoke(cli, [{str(folder)!r}, '--trust-remote-code', '--json', '--training-only', "
        "'--seq-len', '8']); assert r.exit_code == 0, r.output; "
        "print(json.loads(r.stdout)['parameters']['total'], 'torch' in sys.modules)"
    )

    def run() -> list[str]:
        done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
        return done.stdout.split()

    assert run() == ["400", "True"]
    (folder / "modeling_tiny.py").write_text(TINY_REMOTE_MODELING.replace("EXTRA_LAYERS = 0", "EXTRA_LAYERS = 10"))
    assert run() == ["1120", "True"]
    assert run() == ["1120", "False"]  # unchanged: the cache answers, torch is not imported
