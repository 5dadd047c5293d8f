"""Sweeps (list-valued options), `hfmem compare`, --format markdown, colour rules, bars and shell completion."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from hfmem import cli as cli_module
from hfmem.api import estimate
from hfmem.cli import cli
from hfmem.report import BAR_WIDTH, stacked_bar
from hfmem.types import GpuTarget, InferenceSetup, TrainingSetup
from tests.conftest import TINY_LLAMA, TINY_LLAMA_PARAMS


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    return folder


@pytest.fixture
def tiny3(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny3"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY_LLAMA, "num_hidden_layers": 3}))
    return folder


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_sweep_has_a_row_per_combination_equal_to_single_queries(tiny: Path) -> None:
    code, out, err = invoke(
        str(tiny),
        "--batch-size",
        "1,2",
        "--seq-len",
        "16,32",
        "--gpus",
        "2",
        "--precision",
        "bf16-mixed,fp32",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["swept"] == ["--precision", "--batch-size", "--seq-len"]
    assert len(doc["rows"]) == 2 * 2 * 2
    for row in doc["rows"]:
        values = row["values"]
        setup = TrainingSetup(
            precision=values["--precision"],
            batch_size=int(values["--batch-size"]),
            seq_len=int(values["--seq-len"].replace(",", "")),
            gpus_per_node=2,
        )
        single = estimate(str(tiny), setup=setup, inference=InferenceSetup(batch_size=setup.batch_size), cache=False)
        assert single.training is not None and single.inference is not None
        got = [s["per_gpu_bytes"]["total"] for s in row["training"]["stages"]]
        assert got == [s.total_bytes for s in single.training.stages]
        assert row["inference"]["per_gpu_bytes"]["total"] == single.inference.total_bytes


def test_sweep_table_marks_what_does_not_fit(tiny: Path) -> None:
    base = [str(tiny), "--batch-size", "1,8", "--seq-len", "64", "--zero", "0", "--training-only"]
    code, out, err = invoke(*base, "--json")
    assert code == 0, err
    small, big = (r["training"]["stages"][0]["per_gpu_bytes"]["total"] for r in json.loads(out)["rows"])
    assert small < big
    between = (small + big) // 2  # a GPU that holds batch 1 and not batch 8
    code, out, err = invoke(*base, "--gpu-memory", str(between))
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "8"]
    assert "✗" not in rows[0] and rows[1][-1] == "✗"
    code, _, _ = invoke(*base, "--gpu-memory", str(between), "--check")
    assert code == 3  # one plan of the sweep does not fit


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch-size", "1,,2"], "empty item"),
        (["--batch-size", "1,0"], "--batch-size"),
        (["--precision", "bf16-mixed,fp64"], "--precision"),
        (["--gpu", "h100-sxm,nonsense-gpu"], "nonsense-gpu"),
    ],
)
def test_bad_list_items_are_one_line_errors(tiny: Path, args: list[str], needle: str) -> None:
    code, out, err = invoke(str(tiny), *args, "--seq-len", "16")
    assert code != 0 and needle in err and "Traceback" not in err + out
    assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1


def test_too_many_combinations_are_refused_before_any_work(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_module, "MAX_COMBINATIONS", 5)
    code, _, err = invoke(str(tiny), "--batch-size", "1,2,3", "--seq-len", "8,16")
    assert code == 2 and "more than 5 combinations" in err


def test_compare_equals_each_model_alone(tiny: Path, tiny3: Path) -> None:
    code, out, err = invoke("compare", str(tiny), str(tiny3), "--gpus", "4", "--seq-len", "32", "--json")
    assert code == 0, err
    models = json.loads(out)["models"]
    assert [m["parameters"]["total"] for m in models][0] == TINY_LLAMA_PARAMS
    # By hand: one more layer of 4·64² attention + 3·64·128 MLP + 2·64 norms.
    assert models[1]["parameters"]["total"] - models[0]["parameters"]["total"] == 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64
    for folder, doc in zip((tiny, tiny3), models, strict=True):
        alone = estimate(
            str(folder), setup=TrainingSetup(gpus_per_node=4, seq_len=32), inference=InferenceSetup(), cache=False
        )
        assert alone.training is not None
        assert [s["per_gpu_bytes"]["total"] for s in doc["training"]["stages"]] == [
            s.total_bytes for s in alone.training.stages
        ]


def test_compare_table_and_markdown(tiny: Path, tiny3: Path) -> None:
    code, out, err = invoke("compare", str(tiny), str(tiny3), "--seq-len", "16", "--gpu", "h100-sxm", "--gpus", "2")
    assert code == 0, err
    assert "train peak ZeRO-3" in out and "verdict" in out and "trains with ZeRO-0" in out
    # One GPU: ZeRO has nothing to shard, so only ZeRO-0 is compared (issue 14: say each thing once).
    code, out, err = invoke("compare", str(tiny), str(tiny3), "--seq-len", "16", "--gpu", "h100-sxm")
    assert code == 0, err
    assert "train peak ZeRO-0" in out and "ZeRO-1" not in out and "trains with ZeRO-0" in out
    code, out, err = invoke("compare", str(tiny), str(tiny3), "--seq-len", "16", "--format", "markdown")
    assert code == 0, err
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[1].startswith("|---") and all(line.count("|") == 4 for line in table)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["compare", "only-one/model"], "at least two models"),
        (["compare", "a/b", "a/b"], "named twice"),
        (["compare", "a/b", "c/d", "--batch-size", "1,2"], "one value per option"),
    ],
)
def test_compare_usage_errors(args: list[str], needle: str) -> None:
    code, _, err = invoke(*args)
    assert code == 2 and needle in err


def test_markdown_report(tiny: Path) -> None:
    code, out, err = invoke(str(tiny), "--seq-len", "16", "--gpus", "2", "--gpu", "rtx-4090", "--format", "markdown")
    assert code == 0, err
    assert out.startswith(f"### {tiny}")
    tables = [line for line in out.splitlines() if line.startswith("|")]
    assert any(line.startswith("| ZeRO | weights") for line in tables)
    assert any(line.startswith("| weights | KV cache") for line in tables)
    assert "\x1b[" not in out


def test_json_flag_and_format_must_agree(tiny: Path) -> None:
    code, _, err = invoke(str(tiny), "--json", "--format", "markdown")
    assert code == 2 and "--json is --format json" in err


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(cli_module.sys, "stdout", Tty())
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert cli_module._console()["color"] is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert cli_module._console()["color"] is False


def test_table_has_no_escape_codes_off_a_terminal(tiny: Path) -> None:
    code, out, _ = invoke(str(tiny), "--seq-len", "16")
    assert code == 0
    assert "\x1b[" not in out
    assert "w=weights" in out  # the bar legend, once


def test_stacked_bar_cells_are_proportional() -> None:
    # 3 : 1 of a full-width total → 36 + 12 of 48 cells; the GPU at half the scale puts its mark at cell 24.
    parts = [("weights", 3), ("master", 0), ("optim", 1)]
    assert stacked_bar(parts, 4).plain == "w" * 36 + "o" * 12
    assert stacked_bar(parts, 4, capacity_bytes=2).plain == "w" * 24 + "|" + "w" * 11 + "o" * 12
    # Half the scale: 24 cells, then blanks; largest remainders round 1/3 + 2/3 of a cell to one cell.
    assert stacked_bar(parts, 8).plain.rstrip() == "w" * 18 + "o" * 6
    assert len(stacked_bar([("weights", 1), ("optim", 2)], 3 * 48 * 7).plain) == BAR_WIDTH


def test_shell_completion_covers_comma_lists() -> None:
    runner = CliRunner()
    script = runner.invoke(cli, [], prog_name="hfmem", env={"_HFMEM_COMPLETE": "bash_source"})
    assert script.exit_code == 0 and "_hfmem_completion" in script.output
    env = {"_HFMEM_COMPLETE": "bash_complete", "COMP_WORDS": "hfmem --precision bf16-mixed,fp", "COMP_CWORD": "2"}
    done = runner.invoke(cli, [], prog_name="hfmem", env=env)
    assert "bf16-mixed,fp32" in done.output and "bf16-mixed,fp16-mixed" in done.output


def test_gpu_target_in_sweep_labels(tiny: Path) -> None:
    code, out, err = invoke(str(tiny), "--seq-len", "16", "--gpu-memory", "24GiB,80GiB", "--training-only", "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [r["values"]["--gpu-memory"] for r in rows] == ["24.00 GiB", "80.00 GiB"]
    assert [r["gpu"]["usable_bytes"] for r in rows] == [24 * 2**30, 80 * 2**30]
    assert GpuTarget  # the type the rows were built with


# --- issue 14: one ZeRO row when sharding cannot differ; numbers never wrap ---------------------------------------


def test_one_gpu_shows_one_zero_row_and_json_keeps_every_stage(tiny: Path) -> None:
    code, out, err = invoke(str(tiny), "--seq-len", "16")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.strip()[:2] in ("0 ", "1 ", "2 ", "3 ")]
    assert [row[0] for row in rows] == ["0"]  # ZeRO-0 alone; the serving table has no such rows
    assert "one GPU: ZeRO has nothing to shard" in " ".join(out.split())
    assert "every stage holds the same" not in " ".join(out.split())  # said once, not twice
    doc = json.loads(invoke(str(tiny), "--seq-len", "16", "--json")[1])
    assert [s["zero_stage"] for s in doc["training"]["stages"]] == [0, 1, 2, 3]
    assert doc["training"]["shown_stages"] == [0]
    # Two GPUs shard: every stage differs and is shown; --zero asks for stages explicitly and gets them.
    doc = json.loads(invoke(str(tiny), "--seq-len", "16", "--gpus", "2", "--json")[1])
    assert doc["training"]["shown_stages"] == [0, 1, 2, 3]
    doc = json.loads(invoke(str(tiny), "--seq-len", "16", "--zero", "3", "--json")[1])
    assert doc["training"]["shown_stages"] == [3]


#: A number as the tables print it: 6,738,415,616 · 151.82 · +63.58 · 4,096.
NUMBER = re.compile(r"[+-]?\d[\d,]*(?:\.\d+)?")
SHAPES = {
    "report": ["meta-llama/Llama-2-7b-hf", "--gpus", "8", "--gpu", "h100-sxm"],
    "sweep": [
        "meta-llama/Llama-2-7b-hf",
        "--gpus",
        "8",
        "--gpu",
        "h100-sxm",
        "--batch-size",
        "1,2",
        "--seq-len",
        "1024,2048",
    ],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_numbers_never_wrap_at_60_80_120_columns(shape: str) -> None:
    args = SHAPES[shape]
    runner = CliRunner()
    wide = runner.invoke(cli, args, env={"COLUMNS": "1000"}).stdout
    doc = json.loads(runner.invoke(cli, [*args, "--json"]).stdout)
    reports = doc["rows"] if shape == "sweep" else [doc]
    totals = [
        f"{part['per_gpu_bytes']['total'] / 2**30:,.2f}"
        for report in reports
        for part in (*report["training"]["stages"], report["inference"])
    ]
    for columns in (60, 80, 120):
        out = runner.invoke(cli, args, env={"COLUMNS": str(columns)}).stdout
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= columns, columns
        # No number is cut: every number printed is one the unconstrained output prints whole.
        assert set(NUMBER.findall(out)) <= set(NUMBER.findall(wide)), columns
        # Every row's total is there, whole.
        printed = set(NUMBER.findall(out))
        assert all(total in printed for total in totals), columns


def test_check_names_each_failing_model_and_plan_in_compare(tiny: Path, tiny3: Path) -> None:
    # 1 MiB cannot hold even the weights of either model (TINY_LLAMA: 210,240 bf16 parameters = 420,480 B, plus
    # the 512 MiB CUDA context of OverheadSettings): every plan fails, and the line says which. Serving holds 2,048
    # tokens: transformers' LlamaConfig default max_position_embeddings (under the 4,096 cap), as training does.
    code, _, err = invoke("compare", str(tiny), str(tiny3), "--seq-len", "16", "--gpu-memory", "1MiB", "--check")
    assert code == 3
    (said,) = [line for line in err.splitlines() if line.startswith("hfmem: does not fit: ")]
    for folder in (tiny, tiny3):
        assert f"{folder}: training ZeRO-0 needs " in said and f"{folder}: serving 16 tokens" not in said
        assert f"{folder}: serving 2,048 tokens of context needs " in said
    assert said.count(" usable (") == 4


def test_reference_lines_only_with_verbose(tiny: Path) -> None:
    reference = ("Precision:", "Optimizer:", "Convention:", "Overhead, ZeRO-0:", "Overhead: CUDA context", "Modules")
    code, out, err = invoke(str(tiny), "--seq-len", "16")
    assert code == 0, err
    assert not any(line in out for line in reference)
    assert out.count("GiB = 2^30 bytes") == 1  # the legend, once per output
    code, out, err = invoke(str(tiny), "--seq-len", "16", "--verbose")
    assert code == 0, err
    assert all(line in out for line in reference)
    assert out.count("GiB = 2^30 bytes") == 1
