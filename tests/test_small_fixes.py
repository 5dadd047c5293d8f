"""Small wrong things of issue 14, each pinned: count rounding at unit boundaries, ``--params`` gives no fit, the KV
line under TP says "per GPU", compare's header, offload sweeps' CPU RAM column, compare's help, notes on the result,
and the notebook renderings of a `Report`.

Expected values are worked out by hand in each test (the arithmetic is in the comments), never pasted from hfmem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hfmem
from hfmem.cli import cli, compare
from hfmem.report import render_table, to_dict
from hfmem.types import TrainingSetup
from hfmem.units import format_count_short
from tests.conftest import TINY_LLAMA, TINY_LLAMA_PARAMS

GIB = 2**30


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        # google/gemma-3-1b: 999,885,952 parameters (issue 14 printed "1e+03M"); /1e9 = 0.99989 → 3 digits → 1.00.
        (999_885_952, "1B"),
        (999_999_999, "1B"),  # 999.999999M rounds to 1000M → one unit up
        (999_500_000, "1B"),  # 999.5M → 3 significant digits → 1000M (round half to even of 999.5 → 1000)
        (999_499_999, "999M"),  # 999.499999M → 999M
        (999_500, "1M"),  # 999.5K → 1000K → 1M
        (999, "999"),
        (1_000, "1K"),
        (10**12, "1T"),  # 1e12 / 1e12 = 1
        (6_738_415_616, "6.74B"),  # Llama-2-7b (its paper's appendix / model card count): 6.738… → 6.74
        (1_500 * 10**12, "1,500T"),  # no unit above T: whole trillions with separators, not 1.5e+03T
    ],
)
def test_short_counts_round_before_choosing_the_unit(count: int, expected: str) -> None:
    assert format_count_short(count) == expected
    assert "e+" not in format_count_short(count)


def _tiny(folder: Path, **overrides: Any) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**TINY_LLAMA, **overrides}))
    return str(folder)


# --- --params: model states only, no "fits" --------------------------------------------------------------------


def test_params_gives_no_fits_verdict(runner: CliRunner) -> None:
    # 13B × 16 B/param (bf16 weights + grads, fp32 master + 2 Adam states; ZeRO paper) / 8 GPUs at ZeRO-3 = 26e9 B
    # = 24.2 GiB of states on an 80 GB H100: they fit, but activations are not counted, so the fit is unknown.
    args = ["--params", "13B", "--gpu", "h100-sxm", "--gpus", "8", "--zero", "3", "--training-only"]
    doc = json.loads(runner.invoke(cli, [*args, "--json"], catch_exceptions=False).stdout)
    (stage,) = doc["training"]["stages"]
    assert stage["fits"] is None and stage["headroom_bytes"] is None
    assert "--params" in doc["training"]["activations_not_measured"]
    table = runner.invoke(cli, args, catch_exceptions=False, env={"COLUMNS": "120"}).stdout
    assert "unknown" in table and " yes " not in table
    assert "Activations and logits not measured: --params" in table


@pytest.mark.parametrize(
    ("args", "code"),
    [
        # 16 B × 13e9 / 8 = 24.2 GiB of states < 79.11 GiB: no verdict without activations → exit 5 (not measured).
        (["--gpus", "8", "--zero", "3"], 5),
        # 16 B × 13e9 = 193.7 GiB of states on one GPU > 79.11 GiB: certainly does not fit → exit 3.
        (["--zero", "0"], 3),
    ],
)
def test_params_check_gates_only_on_what_it_knows(runner: CliRunner, args: list[str], code: int) -> None:
    result = runner.invoke(cli, ["--params", "13B", "--gpu", "h100-sxm", "--training-only", "--check", *args])
    assert result.exit_code == code, result.stderr
    if code == 5:
        assert "--check cannot give a verdict" in result.stderr and "--params" in result.stderr


# --- the KV line under tensor parallelism says "per GPU" -------------------------------------------------------


@pytest.mark.parametrize(("tp", "expected"), [(1, "512 bytes per token per sequence;"), (2, "256 bytes per token")])
def test_kv_line_says_per_gpu_under_tp(runner: CliRunner, tmp_path: Path, tp: int, expected: str) -> None:
    # TINY_LLAMA: 2 layers × K and V × 4 KV heads × head_dim 64/4 = 16 × 2 B (bf16) = 512 B per token per sequence;
    # TP 2 splits the 4 heads 2 + 2, so each GPU holds 256 B.
    model = _tiny(tmp_path / "m")
    args = [model, "--inference-only", "--tp", str(tp), "--kv-dtype", "bf16", "--context", "128"]
    out = runner.invoke(cli, args, catch_exceptions=False, env={"COLUMNS": "300"}).stdout
    line = next(line for line in out.splitlines() if line.startswith("KV cache:"))
    assert expected in line
    if tp > 1:
        assert "per sequence per GPU (its share of the KV heads under tensor parallel 2); whole layers: 2 ×" in line
    else:
        assert "per GPU" not in line


# --- compare: header, help -------------------------------------------------------------------------------------


def test_compare_header_gives_sequence_length_and_checkpointing(runner: CliRunner, tmp_path: Path) -> None:
    a, b = _tiny(tmp_path / "a", max_position_embeddings=256), _tiny(tmp_path / "b", max_position_embeddings=512)
    env = {"COLUMNS": "300"}
    out = runner.invoke(compare, [a, b, "--training-only"], catch_exceptions=False, env=env).stdout
    # Without --seq-len each trains at its own context (256 and 512, both under the 4,096-token cap).
    assert "micro-batch 1 × 256 / 512 tokens (each model's, in column order), checkpointing none" in out.splitlines()[0]
    args = [a, b, "--training-only", "--seq-len", "64", "--grad-checkpointing", "full"]
    out = runner.invoke(compare, args, catch_exceptions=False, env=env).stdout
    assert "micro-batch 1 × 64 tokens (--seq-len), checkpointing full" in out.splitlines()[0]


def test_compare_help_shows_no_list_markers_and_compare_refuses_lists(runner: CliRunner) -> None:
    assert "[,…]" in runner.invoke(cli, ["--help"]).stdout  # the single command sweeps lists
    help_text = runner.invoke(compare, ["--help"]).stdout
    assert "[,…]" not in help_text and "--gpus INTEGER RANGE" in help_text
    result = runner.invoke(compare, ["a/b", "c/d", "--gpus", "1,2"])
    assert result.exit_code == 2 and "compare takes one value per option" in result.stderr


# --- offload sweeps keep the CPU RAM column --------------------------------------------------------------------


def test_offload_sweep_shows_cpu_ram_per_node(runner: CliRunner) -> None:
    args = ["--params", "7B", "--offload", "none,optimizer", "--gpus", "8", "--training-only", "--format", "markdown"]
    out = runner.invoke(cli, args, catch_exceptions=False).stdout
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]
    header, body = rows[0], rows[2:]
    assert header[:5] == ["--offload", "ZeRO-0 peak", "ZeRO-1 peak", "ZeRO-2 peak", "ZeRO-3 peak"]
    assert header[5:] == ["ZeRO-1 CPU/node", "ZeRO-2 CPU/node", "ZeRO-3 CPU/node"]
    none, optimizer = (dict(zip(header, row, strict=True)) for row in body)
    # ZeRO-Offload (Ren et al. 2021): fp32 gradients, master weights and 2 Adam states on CPU, 16 B/param for the
    # node's 8 GPUs together: 16 × 7e9 / 2^30 = 104.31 GiB; nothing without offload.
    assert [optimizer[f"ZeRO-{z} CPU/node"] for z in (1, 2, 3)] == [f"{16 * 7e9 / GIB:,.2f}"] * 3 == ["104.31"] * 3
    assert [none[f"ZeRO-{z} CPU/node"] for z in (1, 2, 3)] == ["0.00"] * 3
    assert optimizer["ZeRO-0 peak"] == "—"  # DeepSpeed offloads with ZeRO 1-3 only: no column shift


# --- notes on the result ---------------------------------------------------------------------------------------


def test_catalogue_fallback_note_is_on_the_result_and_printed_once(runner: CliRunner) -> None:
    # HF_HUB_OFFLINE=1 (pytest-env): a catalogue model falls back to the bundled snapshot and says so.
    report = hfmem.estimate("openai-community/gpt2", setup=TrainingSetup(seq_len=64, zero_stages=(0,)))
    (note,) = [n for n in report.notes if "bundled catalogue snapshot" in n]
    assert note in report.model.notes
    assert to_dict(report)["notes"].count(note) == 1
    assert note not in render_table(report)  # the CLI puts it on stderr, once
    result = runner.invoke(cli, ["openai-community/gpt2", "--seq-len", "64", "--zero", "0", "--inference-only"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("bundled catalogue snapshot") == 1 and "bundled catalogue" not in result.stdout
    assert note in str(report)  # a notebook shows it above the table
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in report._repr_html_()


# --- notebook display ------------------------------------------------------------------------------------------


def test_report_renders_in_a_notebook_as_the_table_shows_it(tmp_path: Path) -> None:
    # Two GPUs: the ZeRO stages differ, so the table shows each (on one GPU it shows ZeRO-0 alone).
    setup = TrainingSetup(seq_len=64, gpu="h100-sxm", gpus_per_node=2)
    report = hfmem.estimate(_tiny(tmp_path / "m"), setup=setup)
    html = report._repr_html_()
    assert html.startswith("<pre") and "<html" not in html
    # By hand (conftest): embeddings + untied head 2·1000·64 + 2 layers × (4·64² + 3·64·128 + 2·64) + norm 64.
    assert TINY_LLAMA_PARAMS == 210_240 and "210,240" in html
    text = str(report)
    for stage in report.training.stages:  # type: ignore[union-attr]
        peak = f"{stage.total_bytes / GIB:,.2f}"  # the table's two-decimal GiB
        assert peak in html and peak in text
    printed: list[str] = []

    class Printer:
        def text(self, value: str) -> None:
            printed.append(value)

    report._repr_pretty_(Printer(), False)
    assert printed == [text] and text == render_table(report)
