"""The CLI end to end through click's CliRunner: table, JSON, options, and every error path with its exit code."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hfmem.cli import cli
from tests.conftest import FIXTURES

GOLDEN = Path(__file__).parent / "golden"
LLAMA2_7B = 6_738_415_616  # keras-hub llama2_7b_en "params"; GGUF general.parameter_count


STATES = ("weights", "master_weights", "gradients", "optimizer_states")


def states_total(stage: dict) -> int:  # type: ignore[type-arg]
    """The model-state part of a stage's per-GPU bytes (what the ZeRO paper counts), the gradients as the step
    holds them (a row peaking before the step has freed ones absent from per_gpu_bytes)."""
    parts = {**stage["per_gpu_bytes"], "gradients": stage["gradients_at_step_bytes"]}
    return sum(parts[key] for key in STATES)


def run(runner: CliRunner, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_table_golden(runner: CliRunner) -> None:
    # The rendering is what this guards; its figures are checked by hand elsewhere: states 2·P = 12.55 GiB,
    # 4·P = 25.10, 8·P = 50.21 (stage 0), 12·ceil(P/8) split 3.14 + 6.28 (stages 1-3); activations in
    # tests/test_activations.py (22.89 GiB = 32 layers × 4096 tokens × 186,504 B + the final norm); logits
    # 14 B × 4096 × 32000 = 1.71 GiB. Inference: fp16 weights 2·P = 12.55 GiB, KV cache 524,288 B/token
    # (REFERENCE.md §4.2) × 4,096 tokens = 2.00 GiB. ZeRO-0 peaks at the optimizer step: torch's default foreach
    # AdamW adds one fp32 state-sized temporary, 4·P = 25.10 GiB (docs/techniques.md §4.1), beside the DDP bucket.
    # ZeRO-1/2 peak as backward starts, where the gradients freed after the last step do not exist yet (grads
    # 0.00; fragmentation, 10 % of the allocation, falls with them: ZeRO-1 66.55 − 12.55 × 1.1 = 52.75 GiB);
    # ZeRO-3 keeps its flat gradient buffer (2·ceil(P/8) = 1.57 GiB) from init.
    code, out, err = run(runner, "meta-llama/Llama-2-7b-hf", "--gpus", "8")
    assert code == 0, err
    assert out == (GOLDEN / "llama2_7b_gpus8.txt").read_text()
    assert err.count("\n") == 1 and "bundled catalogue" in err and "HF_HUB_OFFLINE" in err


def test_json_contract(runner: CliRunner) -> None:
    code, out, _ = run(runner, "meta-llama/Llama-2-7b-hf", "--gpus", "8", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["model"] == {
        "id": "meta-llama/Llama-2-7b-hf",
        "source": "catalogue",
        "revision": None,
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
    }
    params = doc["parameters"]
    assert params["total"] == params["trainable"] == params["active_per_token"] == LLAMA2_7B
    assert params["embedding"] + params["non_embedding"] == LLAMA2_7B
    assert params["largest_module"] == 32000 * 4096
    assert isinstance(params["buffers"], int)
    settings = doc["training"]["settings"]
    assert {k: settings[k] for k in ("precision", "optimizer", "gpus_per_node", "nodes", "offload")} == {
        "precision": "bf16-mixed",
        "optimizer": "adamw",
        "gpus_per_node": 8,
        "nodes": 1,
        "offload": "none",
    }
    # Defaults of the peak options: micro-batch 1, Llama-2's 4096-token context (config.json
    # max_position_embeddings), fused attention, no checkpointing, the config's dropout.
    assert (settings["batch_size"], settings["seq_len"], settings["attn"]) == (1, 4096, "sdpa")
    assert (settings["grad_checkpointing"], settings["dropout"]) == ("none", None)
    assert "4,096" in settings["seq_len_source"]
    assert doc["gpu"] is None
    shard = math.ceil(LLAMA2_7B / 8)
    expected_states = [16 * LLAMA2_7B, 4 * LLAMA2_7B + 12 * shard, 2 * LLAMA2_7B + 14 * shard, 16 * shard]
    stages = doc["training"]["stages"]
    assert [s["zero_stage"] for s in stages] == [0, 1, 2, 3]
    assert [states_total(s) for s in stages] == expected_states
    for s in stages:
        parts = s["per_gpu_bytes"]
        assert set(parts) == {*STATES, "activations", "logits", "overhead", "total"}
        assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
        assert parts["overhead"] == sum(s["overhead_items"].values())
        assert s["cpu_bytes_per_node"] == 0
        # no paged optimizer: PyTorch's allocator holds everything but the CUDA context
        assert s["paged_optimizer_states_bytes"] == 0
        assert s["allocator_peak_bytes"] == parts["total"] - s["overheads"]["cuda_context"]
        assert s["peak_phase"] in ("forward", "backward", "optimizer_step")
        assert s["fits"] is None and s["headroom_bytes"] is None


def test_params_reproduces_zero_paper(runner: CliRunner) -> None:
    # ZeRO paper Fig. 1: Ψ = 7.5B, N = 64 → 120 / 31.4 / 16.6 / 1.9 GB.
    code, out, err = run(
        runner, "--params", "7.5B", "--precision", "fp16-mixed", "--gpus", "8", "--nodes", "8", "--json"
    )
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["model"]["source"] == "params"
    assert [states_total(s) for s in doc["training"]["stages"]] == [
        120_000_000_000,
        31_406_250_000,
        16_640_625_000,
        1_875_000_000,
    ]


@pytest.mark.parametrize(("text", "count"), [("7.5B", 7_500_000_000), ("7.5e9", 7_500_000_000), ("125M", 125_000_000)])
def test_params_forms(runner: CliRunner, text: str, count: int) -> None:
    code, out, _ = run(runner, "--params", text, "--json")
    assert code == 0 and json.loads(out)["parameters"]["total"] == count


def test_offload_reports_cpu_ram_and_only_valid_stages(runner: CliRunner) -> None:
    code, out, _ = run(runner, "--params", "7.5B", "--gpus", "8", "--offload", "optimizer", "--json")
    assert code == 0
    stages = json.loads(out)["training"]["stages"]
    assert [s["zero_stage"] for s in stages] == [1, 2, 3]
    # per GPU shard ceil(7.5e9/8) × (fp32 params 4 + fp32 grads 4 + Adam 8), 8 GPUs per node.
    assert all(s["cpu_bytes_per_node"] == 8 * math.ceil(7.5e9 / 8) * 16 for s in stages)
    code, out, _ = run(runner, "--params", "7.5B", "--offload", "optimizer+params")
    assert code == 0 and "CPU/node" in out


def test_deepspeed_accounting(runner: CliRunner) -> None:
    code, out, _ = run(runner, "meta-llama/Llama-2-7b-hf", "--gpus", "8", "--accounting", "deepspeed", "--json")
    assert code == 0
    stages = json.loads(out)["training"]["stages"]
    p, ll = LLAMA2_7B, 32000 * 4096
    # estimate_zero2: 2P + int(18P/N); estimate_zero3: 4·LL + int(18P/N).
    assert [states_total(s) for s in stages] == [2 * p + int(18 * p / 8), 4 * ll + int(18 * p / 8)]


def test_adapter_folder_resolves_to_base(runner: CliRunner) -> None:
    code, out, err = run(runner, str(FIXTURES / "lora_adapter"), "--json")
    assert code == 0
    # The adapter's own LoRA (r 16 on q_proj, v_proj) on Llama-2-7B: 32 layers · 2 · 16 · (4096 + 4096).
    lora = 32 * 2 * 16 * (4096 + 4096)
    params = json.loads(out)["parameters"]
    assert (params["total"], params["trainable"]) == (LLAMA2_7B + lora, lora)
    assert "LORA adapter" in err and "meta-llama/Llama-2-7b-hf" in err


def test_list_catalogue(runner: CliRunner) -> None:
    code, out, _ = run(runner, "--list-catalogue")
    assert code == 0 and "meta-llama/Llama-2-7b-hf" in out and "6,738,415,616" in out
    code, out, _ = run(runner, "--list-catalogue", "--json")
    rows = json.loads(out)
    assert len(rows) >= 30
    assert {
        "id": "meta-llama/Llama-2-7b-hf",
        "architecture": "LlamaForCausalLM",
        "total_params": LLAMA2_7B,
        "aliases": ["meta-llama/Llama-2-7b-chat-hf"],
    } in rows


@pytest.mark.parametrize(
    ("args", "exit_code", "fragment"),
    [
        ((str(FIXTURES / "malformed_json"),), 5, "is not valid JSON (Expecting property name"),
        ((str(FIXTURES / "not_an_object"),), 5, "holds a JSON list"),
        ((str(FIXTURES / "unknown_model_type"),), 5, "unknown to the installed transformers"),
        ((str(FIXTURES / "remote_code"),), 5, "--trust-remote-code"),
        ((str(FIXTURES / "gguf_only"),), 4, "GGUF files only"),
        (("someone/not-in-the-catalogue",), 4, "HF_HUB_OFFLINE"),
        (("bad name!",), 2, "not a valid Hub repo id"),
        (("./no/such/folder",), 2, "no such file or directory"),
        ((), 2, "give a MODEL"),
        (("gpt2", "--params", "1B"), 2, "not both"),
        (("--params", "lots"), 2, "is not a parameter count"),
        (("--params", "1.5"), 2, "whole number"),
        (("--params", "7B", "--offload", "optimizer", "--zero", "0"), 2, "drop --zero 0"),
        (("--params", "7B", "--accounting", "deepspeed", "--zero", "1"), 2, "ZeRO-2 and ZeRO-3 only"),
        (("--params", "7B", "--optimizer", "adafactor"), 2, "Adafactor"),
        (("--params", "7B", "--zero", "4"), 2, "--zero"),
        (("--params", "7B", "--precision", "fp8"), 2, "--precision"),
    ],
)
def test_errors_are_one_line_with_exit_code(
    runner: CliRunner, args: tuple[str, ...], exit_code: int, fragment: str
) -> None:
    code, out, err = run(runner, *args)
    assert code == exit_code
    assert out == ""
    assert fragment in err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1


def test_debug_shows_the_traceback(runner: CliRunner) -> None:
    code, _, err = run(runner, str(FIXTURES / "malformed_json"), "--debug")
    assert code == 5 and "Traceback" in err and "JSONDecodeError" in err


def test_unexpected_errors_become_exit_1(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("boom")

    monkeypatch.setattr("hfmem.cli._report", broken)
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    code, _, err = run(runner, "--params", "7B")
    assert code == 1 and "internal error (TypeError: boom)" in err and "--debug" in err


def test_help_does_not_import_torch() -> None:
    script = (
        "import sys; from click.testing import CliRunner; from hfmem.cli import cli; "
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; "
        "from hfmem.memory import compute_training; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_python_dash_m() -> None:
    done = subprocess.run([sys.executable, "-m", "hfmem", "--version"], check=True, capture_output=True, text=True)
    assert done.stdout.startswith("hfmem, version ")


# --- issue 14: commands shaped like the tasks, --check on what the command plans, one default context -----------

RTX_4090_USABLE = "23.64 GiB"  # hfmem/gpus.py: 24,146,608,128 B nvidia-smi total less the CUDA reserve, as cited there


def test_train_and_serve_each_plan_one_part(runner: CliRunner) -> None:
    code, out, err = run(runner, "train", "meta-llama/Llama-2-7b-hf", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["inference"] is None and [s["zero_stage"] for s in doc["training"]["stages"]] == [0, 1, 2, 3]
    code, out, err = run(runner, "serve", "meta-llama/Llama-2-7b-hf", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["training"] is None
    # fp16 weights 2·P and the KV cache 524,288 B/token (REFERENCE.md §4.2) × 4,096 tokens = 2 GiB.
    assert doc["inference"]["per_gpu_bytes"]["weights"] == 2 * LLAMA2_7B
    assert doc["inference"]["per_gpu_bytes"]["kv_cache"] == 524_288 * 4096
    # Each command takes only its own options: a usage error names the option.
    code, _, err = run(runner, "train", "meta-llama/Llama-2-7b-hf", "--context", "1024")
    assert code == 2 and "--context" in err
    code, _, err = run(runner, "serve", "meta-llama/Llama-2-7b-hf", "--zero", "3")
    assert code == 2 and "--zero" in err


def test_check_gates_on_the_plan_of_the_command_and_says_which_failed(runner: CliRunner) -> None:
    model = "meta-llama/Llama-2-7b-hf"
    # Full fine-tuning on one 24 GB card: 16 bytes per parameter of states alone (ZeRO paper) = 100.4 GiB > 23.64.
    code, out, err = run(runner, "train", model, "--gpu", "rtx-4090", "--check")
    assert code == 3
    said = [line for line in err.splitlines() if line.startswith("hfmem: does not fit:")]
    assert len(said) == 1
    assert "training ZeRO-0 needs " in said[0] and f"NVIDIA GeForce RTX 4090 has {RTX_4090_USABLE} usable" in said[0]
    assert "serving" not in said[0] and "ZeRO-1" not in said[0]  # one GPU: ZeRO-0 is the row shown and checked
    doc = json.loads(run(runner, "train", model, "--gpu", "rtx-4090", "--json")[1])
    stage = doc["training"]["stages"][0]
    over = f"({-stage['headroom_bytes'] / 2**30:,.2f} GiB over)"
    assert f"needs {stage['per_gpu_bytes']['total'] / 2**30:,.2f} GiB" in said[0] and over in said[0]
    # Serving the same model: 2·P = 12.55 GiB of fp16 weights + a 2 GiB KV cache fit the card: exit 0.
    code, _, err = run(runner, "serve", model, "--gpu", "rtx-4090", "--check")
    assert code == 0, err
    # Both plans (hfmem MODEL): training fails, and the line names training only.
    code, _, err = run(runner, model, "--gpu", "rtx-4090", "--check")
    assert code == 3 and "does not fit: training ZeRO-0" in err and "serving" not in err
    # Serving at --context max on Llama-3.1-8B: 131,072 B/token (REFERENCE.md §4.2) × 131,072
    # tokens = 16 GiB of KV cache beside 2 × 8,030,261,248 B = 14.96 GiB of bf16 weights: over 23.64 GiB.
    code, _, err = run(runner, "serve", "meta-llama/Llama-3.1-8B", "--gpu", "rtx-4090", "--context", "max", "--check")
    assert code == 3 and "does not fit: serving 131,072 tokens of context needs" in err


def test_the_issue_example_is_gated_on_training(runner: CliRunner) -> None:
    # Issue 14: QLoRA on one RTX 4090 at 2,048 tokens fits; the serving plan at the model's full 131k context used
    # to fail --check. Now serving defaults to training's context (4,096) and `hfmem train` ignores serving.
    args = ["meta-llama/Llama-3.1-8B", "--method", "qlora", "--gpu", "rtx-4090", "--seq-len", "2048", "--zero", "0"]
    code, _, err = run(runner, "train", *args, "--check")
    assert code == 0, err
    code, _, err = run(runner, *args, "--check")
    assert code == 0, err


def test_one_default_context_and_context_max(runner: CliRunner, tmp_path: Path) -> None:
    from tests.conftest import TINY_LLAMA

    folder = tmp_path / "long"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY_LLAMA, "max_position_embeddings": 8192}))
    code, out, err = run(runner, str(folder), "--json")
    assert code == 0, err
    doc = json.loads(out)
    # Training caps the context at 4,096 (activations.DEFAULT_SEQ_LEN_CAP); serving uses the same by default.
    assert doc["training"]["settings"]["seq_len"] == doc["inference"]["settings"]["context"] == 4096
    assert "--context max serves all 8,192" in doc["inference"]["settings"]["context_source"]
    code, out, err = run(runner, "serve", str(folder), "--context", "max", "--json")
    assert code == 0, err
    assert json.loads(out)["inference"]["settings"]["context"] == 8192
    code, _, err = run(runner, "serve", str(folder), "--context", "most")
    assert code == 2 and "--context" in err


def test_help_is_grouped_and_lists_the_commands(runner: CliRunner) -> None:
    import click

    from hfmem.cli import OPTION_GROUPS, OTHER, HfmemCommand, serve, train

    root = runner.invoke(cli, ["--help"]).stdout
    assert "Commands:" in root and all(f"  {name} " in root for name in ("train", "serve", "compare"))
    train_help = runner.invoke(cli, ["train", "--help"]).stdout
    for section in ("Model:", "Precision & optimizer:", "Sharding & parallelism:", "Fine-tuning:"):
        assert section in train_help
    for section in ("Activations & loss:", "GPU fit:", "Output:"):
        assert section in train_help

    def listed(text: str, option: str) -> bool:  # an option's own help entry (not a mention in another's help)
        return re.search(rf"^  (-\w, )?{option}\b", text, re.MULTILINE) is not None

    assert not listed(train_help, "--context") and not listed(train_help, "--weights-dtype")
    assert "Serving:" not in train_help and listed(train_help, "--zero")
    serve_help = runner.invoke(cli, ["serve", "--help"]).stdout
    assert "Serving:" in serve_help and listed(serve_help, "--kv-dtype") and listed(serve_help, "--batch-size")
    assert not any(listed(serve_help, o) for o in ("--zero", "--method", "--seq-len"))
    # Every option of hfmem MODEL is filed in a section; one not filed yet is listed under "Other", not dropped.
    assert {p.name for p in cli.params if isinstance(p, click.Option)} <= set(OPTION_GROUPS)
    # Every planning option reaches train or serve (the root-only ones list, clear or pick a plan).
    root_only = {"clear_cache", "list_catalogue", "list_gpus", "training_only", "inference_only", "version"}
    planned = {p.name for p in (*train.params, *serve.params)}
    assert {p.name for p in cli.params} - planned == root_only
    extra = HfmemCommand("x", params=[click.Option(["--brand-new"], is_flag=True, help="Not filed.")])
    assert f"{OTHER}:\n  --brand-new" in runner.invoke(extra, ["--help"]).stdout


def test_serve_reports_training_settings_of_a_launch_file_as_not_planned(runner: CliRunner, tmp_path: Path) -> None:
    from tests.conftest import TINY_LLAMA

    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    launch = tmp_path / "ds_config.json"
    launch.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    code, out, err = run(runner, "serve", str(folder), "--launch-config", str(launch), "--json")
    assert code == 0, err
    skipped = json.loads(out)["launch"]["recognised_not_modelled"]
    assert [entry["reason"] for entry in skipped] == ["not planned by hfmem serve (hfmem MODEL plans it)"]


def test_a_closed_pipe_ends_quietly() -> None:
    # `hfmem --list-catalogue | head -1`: the reader is gone before hfmem writes (its end of the pipe is closed first,
    # so this does not race); hfmem says nothing and exits as a process SIGPIPE ends (128 + 13), not with an
    # internal error.
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        writer = subprocess.run(
            [sys.executable, "-m", "hfmem", "--list-catalogue"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert writer.stderr == ""
    assert writer.returncode == 141
