"""`hfmem web`'s handlers: the page's settings become the equivalent ``hfmem`` command line, planned by the same
engine (checked against `hfmem.estimate` called directly and against ``hfmem … --json``), and bad input shows the
CLI's own one-line error. The page itself is driven in a real browser by tests/test_web_browser.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hfmem
from hfmem import web
from hfmem.cli import cli, takes_option
from hfmem.types import EngineSetup, FinetuneSettings, InferenceSetup, TrainingSetup

from .conftest import FIXTURES, TINY_LLAMA, TINY_LLAMA_PARAMS

#: A small catalogue model: the bundled config is used offline (HF_HUB_OFFLINE=1 in the test environment).
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(autouse=True)
def fresh_models() -> None:
    """Each test resolves its models anew (the memo would otherwise hold a previous test's cache folder)."""
    web._PREPARED.clear()


def cli_json(runner: CliRunner, args: list[str]) -> dict[str, Any]:
    result = runner.invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def cli_error(runner: CliRunner, args: list[str]) -> str:
    result = runner.invoke(cli, args)
    assert result.exit_code != 0
    return result.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------- settings → command line


def test_the_first_view_is_the_issue_question_as_a_command() -> None:
    # Issue 16's "done when": does Llama-3.1-8B LoRA fit one RTX 4090 at 4k tokens? A GPU adds --max-batch.
    assert web.command_args(web.DEFAULTS) == [
        "train",
        "meta-llama/Llama-3.1-8B",
        "--method",
        "lora",
        "--seq-len",
        "4096",
        "--gpu",
        "rtx-4090",
        "--max-batch",
    ]


def test_defaults_and_other_tasks_controls_are_left_out() -> None:
    settings = {
        "model": MODEL,
        "task": "serve",
        "precision": "bf16-mixed",  # a training control: not the serving plan's
        "batch-size": 4.0,  # gradio numbers arrive as floats
        "context": 2048,
        "kv-dtype": "default",
        "tp": 1,  # hfmem's default
    }
    assert web.command_args(settings) == ["serve", MODEL, "--context", "2048", "--batch-size", "4"]
    assert web.command_line(web.command_args(settings)) == f"hfmem serve {MODEL} --context 2048 --batch-size 4"
    # The context's default is hfmem serve's own (no --context); "max" is --context max, the model's whole context.
    assert web.command_args({**settings, "context": "default"}) == ["serve", MODEL, "--batch-size", "4"]
    assert web.command_args({**settings, "context": "max"}) == ["serve", MODEL, "--context", "max", "--batch-size", "4"]


def test_every_control_is_an_option_of_hfmem_and_a_missing_one_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = {opt for p in cli.params for opt in getattr(p, "opts", [])}
    shown = web.widgets()
    assert shown and all("--" + w.key in flags for w in shown)
    # Each task offers only what its command takes: hfmem train has no serving options, hfmem serve no training ones.
    for task, (_, command, _) in web.TASKS.items():
        assert all(takes_option(command, w.control.name) for w in web.widgets([task]))
    assert {"engine", "context", "kv-dtype"} <= {w.key for w in web.widgets(["serve"])}
    assert not {"precision", "seq-len", "optimizer-impl"} & {w.key for w in web.widgets(["serve"])}
    assert {"optimizer-impl", "optimizer-in-backward"} <= {w.key for w in web.widgets(["train"])}
    extra = web.Control("no_such_option", "Nothing", web.TRAINING_TASKS)
    monkeypatch.setattr(web, "CONTROLS", (*web.CONTROLS, extra))
    assert [w.key for w in web.widgets()] == [w.key for w in shown]


def test_choices_come_from_the_option() -> None:
    from hfmem.types import CHECKPOINTINGS, FSDP_STRATEGIES

    by_key = {w.key: w for w in web.widgets(["train"])}
    assert by_key["grad-checkpointing"].choices == tuple(CHECKPOINTINGS)
    assert by_key["grad-checkpointing"].default == "none"
    assert by_key["fsdp"].choices == (web.DEFAULT_CHOICE, *FSDP_STRATEGIES)  # no default: "hfmem's default"
    assert by_key["zero"].choices == (web.ALL_STAGES, "0", "1", "2", "3")
    assert by_key["batch-size"].kind == "number" and by_key["batch-size"].default == 1


def test_the_url_carries_the_settings() -> None:
    settings = {"model": MODEL, "task": "qlora", "gpu": "a100-40gb-sxm", "lora-rank": 16.0, "zero": "3", "gpus": 4}
    query = web.settings_query(settings)
    assert query == f"model={MODEL.replace('/', '%2F')}&task=qlora&gpu=a100-40gb-sxm&lora-rank=16&zero=3&gpus=4"
    back = web.settings_from_query(dict(re.findall(r"([^&=]+)=([^&]*)", query.replace("%2F", "/"))))
    assert web.command_args(back) == web.command_args(settings)
    assert web.settings_from_query({}) == web.DEFAULTS  # a bare URL opens on the issue's question
    assert "evil" not in web.settings_from_query({"model": MODEL, "evil": "1"})


# -------------------------------------------------------------------------------------- the plan is estimate()'s


def test_lora_answer_is_estimate_and_the_cli_json() -> None:
    settings = {"model": MODEL, "task": "lora", "gpu": "rtx-4090", "seq-len": 512, "batch-size": 2, "lora-rank": 16}
    found = web.answer(settings)
    assert found.error is None and found.report is not None
    # The same plan through the Python API, with the setup written out by hand.
    setup = TrainingSetup(
        batch_size=2, seq_len=512, gpu="rtx-4090", finetune=FinetuneSettings(method="lora", lora_rank=16)
    )
    expected = hfmem.estimate(MODEL, setup=setup, find_max_batch=True)
    assert found.report.training == expected.training
    assert found.report.inventory == expected.inventory
    assert found.report.inference is None
    assert [stage.max_batch_size for stage in expected.training.stages][0] is not None  # --max-batch was asked
    # The download is `hfmem … --json` for the command line the page shows.
    assert (
        found.command
        == f"hfmem train {MODEL} --method lora --lora-rank 16 --batch-size 2 --seq-len 512 --gpu rtx-4090 "
        "--max-batch"
    )
    doc = json.loads(Path(web.json_file(found.report)).read_text())
    assert doc == cli_json(CliRunner(), list(found.args))


def test_serving_answer_is_estimate() -> None:
    settings = {"model": MODEL, "task": "serve", "gpu": "rtx-4090", "context": 4096, "batch-size": 8, "tp": 1}
    found = web.answer(settings)
    assert found.report is not None and found.report.training is None
    expected = hfmem.estimate(
        MODEL,
        training=False,
        inference=InferenceSetup(context=4096, batch_size=8, gpu="rtx-4090"),
        setup=TrainingSetup(gpu="rtx-4090", batch_size=8),
    )
    assert found.report.inference == expected.inference
    assert found.report.inference.max_context is not None  # the largest context that fits is on the page
    assert "largest context" in web.render_summary(found.report)
    doc = json.loads(Path(web.json_file(found.report)).read_text())
    assert doc == cli_json(CliRunner(), list(found.args))


def test_the_serving_context_is_hfmem_serves_default_or_the_whole_context() -> None:
    # SmolLM2-135M-Instruct's config.json: max_position_embeddings 8192. Issue 14: serving defaults to training's
    # sequence length, the model's context capped at 4096; --context max serves all of it.
    for choice, context in (("default", 4096), ("max", 8192)):
        found = web.answer({"model": MODEL, "task": "serve", "context": choice})
        assert found.report is not None and found.report.inference is not None
        assert found.report.inference.context == context
        expected = hfmem.estimate(
            MODEL, training=False, inference=InferenceSetup(full_context=choice == "max"), setup=TrainingSetup()
        )
        assert found.report.inference == expected.inference
        assert f"× {context:,} tokens of context" in web.render_summary(found.report)
        assert json.loads(Path(web.json_file(found.report)).read_text()) == cli_json(CliRunner(), list(found.args))


def test_an_engine_shows_its_start_up_accounting() -> None:
    settings = {"model": MODEL, "task": "serve", "gpu": "rtx-4090", "engine": "vllm"}
    found = web.answer(settings)
    assert found.command == f"hfmem serve {MODEL} --engine vllm --gpu rtx-4090"
    assert found.report is not None and found.report.engine is not None
    expected = hfmem.estimate(
        MODEL,
        training=False,
        inference=InferenceSetup(gpu="rtx-4090"),
        setup=TrainingSetup(gpu="rtx-4090"),
        engine=EngineSetup(engine="vllm", gpu="rtx-4090"),
    )
    assert found.report.engine == expected.engine
    summary = web.render_summary(found.report)
    engine = expected.engine
    assert f"{engine.kv_budget_bytes / 2**30:,.2f} GiB" in summary  # vLLM's "Available KV cache memory"
    assert f"{engine.kv_tokens:,} tokens" in summary and f"{engine.max_concurrency:.2f}x" in summary
    assert json.loads(Path(web.json_file(found.report)).read_text()) == cli_json(CliRunner(), list(found.args))
    # An engine plans against a GPU: without one, the CLI's own line.
    bare = web.answer({**settings, "gpu": ""})
    assert bare.report is None and bare.error == cli_error(CliRunner(), list(bare.args))


def test_one_gpu_shows_one_zero_row_as_the_cli() -> None:
    # Issue 14: on one GPU without offload or --zero, the stages shard nothing: only ZeRO-0 is shown.
    found = web.answer({"model": MODEL, "task": "train", "gpu": "rtx-4090", "seq-len": 256, "optimizer-impl": "fused"})
    report = found.report
    assert report is not None and report.training is not None and len(report.training.stages) == 4
    assert found.command == f"hfmem train {MODEL} --optimizer-impl fused --seq-len 256 --gpu rtx-4090 --max-batch"
    assert report.training.setup.optimizer_impl == "fused"
    (plan,) = web.bars(report)
    zero0 = next(stage for stage in report.training.stages if stage.zero_stage == 0)
    assert plan.label == "ZeRO-0" and plan.total_bytes == zero0.total_bytes
    assert re.findall(r'data-total-bytes="(\d+)"', web.render_bars(report)) == [str(zero0.total_bytes)]
    assert any(note.startswith("one GPU: ZeRO has nothing to shard") for note in found.notes)
    # ZeRO-3 chosen: that row, as `hfmem train … --zero 3` shows it.
    three = web.answer({"model": MODEL, "task": "train", "seq-len": 256, "zero": "3"}).report
    assert three is not None and [plan.label for plan in web.bars(three)] == ["ZeRO-3"]


def test_the_bars_hold_the_reports_bytes_against_the_gpu_line() -> None:
    found = web.answer({"model": MODEL, "task": "train", "gpu": "rtx-4090", "seq-len": 256, "gpus": 2})
    report = found.report
    assert report is not None and report.training is not None
    page = web.render_bars(report)
    totals = [int(t) for t in re.findall(r'data-total-bytes="(\d+)"', page)]
    assert totals == [stage.total_bytes for stage in report.training.stages] and len(totals) == 4
    # Each segment's tooltip states its bytes; a row's segments add up to its peak (the report's own sum).
    weights = report.training.stages[0].weights_bytes
    assert f"<title>weights: {weights / 2**30:,.2f} GiB ({weights:,} bytes)</title>" in page
    # The RTX 4090's usable memory, 23.64 GiB (hfmem/gpus.py: PyTorch's total_memory), is the dashed line.
    assert all(sum(size for _, size in plan.parts) == plan.total_bytes for plan in web.bars(report))
    assert "NVIDIA GeForce RTX 4090: 23.64 GiB usable" in page
    assert found.notes and "bundled catalogue" in found.notes[0]


def test_a_repeat_query_builds_nothing() -> None:
    builds: list[str] = []
    settings = {"model": MODEL, "task": "lora", "seq-len": 128}
    first = web.answer(settings, on_build=builds.append)
    assert builds == [MODEL]  # the first query of a model says it is building (the page shows progress)
    again = web.answer(settings, on_build=builds.append)
    assert builds == [MODEL] and again.report == first.report


def test_an_uploaded_config_is_planned_by_its_contents(tmp_path: Path) -> None:
    upload = tmp_path / "upload-123" / "config.json"
    upload.parent.mkdir()
    upload.write_text(json.dumps(TINY_LLAMA))
    found = web.answer({"model": "ignored/when-uploading", "task": "train", "seq-len": 32}, upload=str(upload))
    assert found.report is not None
    assert found.report.inventory.total_params == TINY_LLAMA_PARAMS  # counted by hand in conftest.py
    assert found.command.startswith("hfmem train config.json --seq-len 32")  # the upload's name, not its temp path


# ------------------------------------------------------------------------------------- errors are the CLI's line


def test_unknown_model_offline_is_the_cli_error() -> None:
    runner = CliRunner()
    found = web.answer({"model": "nobody-x/no-such-model", "task": "lora"})
    assert found.report is None
    assert found.error == cli_error(runner, list(found.args))
    assert found.error.startswith("Error: cannot fetch config.json of 'nobody-x/no-such-model': offline mode is on")
    assert "\n" not in web.render_error(found.error)


def test_an_impossible_parallel_split_is_the_cli_error() -> None:
    # SmolLM2-135M has 9 attention heads (its config.json): tensor parallelism 2 cannot split them.
    found = web.answer({"model": MODEL, "task": "train", "tp": 2, "gpus": 2, "seq-len": 64})
    assert found.error == cli_error(CliRunner(), list(found.args))
    assert "9 attention heads cannot be split over --tp 2" in found.error


def test_a_bad_value_is_the_cli_error() -> None:
    found = web.answer({"model": MODEL, "task": "train", "batch-size": -3})
    assert found.error == cli_error(CliRunner(), list(found.args))
    assert found.error.startswith("Error: Invalid value for '--batch-size'")
    assert web.answer({"model": " ", "task": "train"}).error == (
        "Error: give a model: a Hub id (the list offers the bundled catalogue) or a config.json"
    )


def test_the_model_box_reads_no_file_of_the_server(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    for path in (str(tmp_path), str(tmp_path / "config.json"), "/etc", "./x", "~/models/llama"):
        found = web.answer({"model": path, "task": "train"})
        assert found.report is None
        assert found.error == (
            f"Error: {path!r} is a path on the server running the page; give a Hub id, or upload the config.json"
        )


def test_a_malformed_upload_is_the_cli_error(tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    shutil.copytree(FIXTURES / "malformed_json", folder)
    upload = str(folder / "config.json")
    found = web.answer({"model": MODEL, "task": "train"}, upload=upload)
    assert found.error is not None
    # The CLI's line, with the upload named as the command line shows it (its name, not the server's temp path).
    assert found.error == cli_error(CliRunner(), list(found.args)).replace(upload, "config.json")
    assert upload not in found.error and "config.json is not valid JSON" in found.error


def test_an_upload_is_never_run(tmp_path: Path) -> None:
    # A config with auto_map next to its code: without --trust-remote-code (which the page never passes) the code
    # must not run. The modules here would leave a file behind if imported.
    folder = tmp_path / "upload"
    shutil.copytree(FIXTURES / "remote_code", folder)
    for module in folder.glob("*.py"):
        module.write_text(f"open({str(folder / 'RAN')!r}, 'w').close()\n" + module.read_text())
    found = web.answer({"model": MODEL, "task": "train", "seq-len": 16}, upload=str(folder / "config.json"))
    assert not (folder / "RAN").exists()
    runner_says = CliRunner().invoke(cli, list(found.args))
    assert not (folder / "RAN").exists()
    if found.error is not None:
        assert found.error == runner_says.stderr.strip().splitlines()[-1].replace(
            str(folder / "config.json"), "config.json"
        )
    else:
        assert runner_says.exit_code == 0


# ------------------------------------------------------------------------------------------------ the command


def test_web_without_gradio_is_one_line_and_exit_2(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    result = runner.invoke(cli, ["web"])
    assert result.exit_code == 2
    assert (
        result.stderr
        == "Error: hfmem web needs Gradio, which is not installed; install it with: pip install 'hfmem[web]'\n"
    )


def test_web_on_a_taken_port_is_one_line_and_exit_2(runner: CliRunner) -> None:
    pytest.importorskip("gradio")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["web", "--port", str(port)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: port {port} on 127.0.0.1 is not free (")  # (Gradio's reason)
    assert result.stderr.endswith("; pass another --port, or none for a free one\n")
    assert result.stderr.count("\n") == 1


def test_web_help_imports_neither_torch_nor_gradio() -> None:
    script = (
        "import sys; from click.testing import CliRunner; from hfmem.cli import cli; "
        "r = CliRunner().invoke(cli, ['web', '--help']); assert r.exit_code == 0 and '--port' in r.output, r.output; "
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = {'torch', 'transformers', 'gradio'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_the_page_builds_and_its_handler_fills_every_output() -> None:
    pytest.importorskip("gradio")
    demo = web.build_app()
    assert demo.title == "hfmem: will it fit?"
    settings = {"model": MODEL, "task": "lora", "gpu": "rtx-4090", "seq-len": 128}
    outputs = web.page_outputs(settings, web.answer(settings))
    error, summary, chart, advice, command, download, explain, notes, query = outputs
    assert error == "" and MODEL in summary and "hfmem-total" in chart
    assert command.startswith(f"hfmem train {MODEL} --method lora")
    assert json.loads(Path(download).read_text())["model"]["id"] == MODEL
    assert "Weights" in explain or "weights" in explain
    assert query.startswith("model=")
    bad = web.page_outputs({"model": "nobody-x/none", "task": "lora"}, web.answer({"model": "nobody-x/none"}))
    assert bad[0].startswith('<div id="hfmem-error"') and bad[1] == "" and bad[5] is None


def test_the_space_app_is_the_same_page() -> None:
    # app.py, as a Space imports it (not as __main__: nothing is launched here), builds the page of `build_app`.
    pytest.importorskip("gradio")
    root = Path(__file__).parent.parent
    script = (
        "import runpy, gradio; ns = runpy.run_path('app.py', run_name='space'); "
        "assert isinstance(ns['demo'], gradio.Blocks) and ns['demo'].title == 'hfmem: will it fit?', ns['demo']"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root, timeout=300)


def test_the_pages_own_handlers_map_controls_to_the_command() -> None:
    # The functions Gradio calls: the URL's settings fill the controls, and the controls' values (in the page's
    # order) become the command line, for the task's controls only.
    pytest.importorskip("gradio")
    demo = web.build_app()
    handlers = {f.fn.__name__: f for f in demo.fns.values() if f.fn is not None}
    compute, from_url = handlers["compute"], handlers["from_url"]
    labels = [getattr(block, "label", None) for block in compute.inputs]
    assert labels[:4] == ["Model", "… or a config.json (read as data, never run)", "Task", "GPU"]

    class Request:
        query_params = {"model": MODEL, "task": "serve", "gpu": "rtx-4090", "context": "2048", "batch-size": "3"}

    filled = from_url.fn(Request())
    values = [v["value"] if isinstance(v, dict) else v for v in filled]
    by_label = dict(zip(labels, values, strict=True))
    assert by_label["Context (tokens per sequence)"] == 2048 and by_label["Concurrent sequences"] == 3
    outputs = compute.fn(*values)
    command = outputs[4]
    assert command == f"hfmem serve {MODEL} --context 2048 --batch-size 3 --gpu rtx-4090"
    found = web.answer(web.settings_from_query(Request.query_params))
    assert f'data-total-bytes="{found.report.inference.total_bytes}"' in outputs[2]
