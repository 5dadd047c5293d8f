"""The setup rules have one home (`hfmem.rules`): the API and the CLI give the same plans and the same refusals."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

import hfmem
from hfmem.cli import cli
from hfmem.errors import InvalidSetupError
from hfmem.gpus import GPUS
from hfmem.report import to_dict
from hfmem.rules import check_setup, planned_stages
from hfmem.types import InferenceSetup, OverheadSettings, ParallelSettings, TrainingSetup

PARAMS = 7_000_000_000


def _api_rows(setup: TrainingSetup) -> list[dict[str, object]]:
    return to_dict(hfmem.estimate(params=PARAMS, setup=setup, cache=False))["training"]["stages"]


def _cli_rows(runner: CliRunner, *args: str) -> list[dict[str, object]]:
    result = runner.invoke(cli, ["--params", "7B", "--json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["training"]["stages"]


@pytest.mark.parametrize(
    ("strategy", "stage"), [("full_shard", 3), ("shard_grad_op", 2), ("no_shard", 0), ("hybrid_shard", 3)]
)
def test_fsdp_through_the_api_gives_the_cli_rows(runner: CliRunner, strategy: str, stage: int) -> None:
    # torch's ShardingStrategy docstring: FULL_SHARD ≈ ZeRO-3, SHARD_GRAD_OP ≈ ZeRO-2, NO_SHARD ≈ DDP (REFERENCE §2.5).
    setup = TrainingSetup(gpus_per_node=8, parallel=ParallelSettings(fsdp=strategy))  # type: ignore[arg-type]
    api = _api_rows(setup)
    assert [row["zero_stage"] for row in api] == [stage]
    assert api == _cli_rows(runner, "--gpus", "8", "--fsdp", strategy)


@pytest.mark.parametrize(
    ("offload", "accounting", "stages"),
    [
        ("none", "hfmem", (0, 1, 2, 3)),
        ("optimizer", "hfmem", (1, 2, 3)),  # DeepSpeed offload_optimizer runs with ZeRO 1-3
        ("optimizer+params", "hfmem", (3,)),  # offload_param is ZeRO-3 only
        ("none", "deepspeed", (2, 3)),  # estimate_zero2/zero3_model_states_mem_needs
    ],
)
def test_default_stages_are_derived_once(runner: CliRunner, offload: str, accounting: str, stages: tuple) -> None:
    setup = TrainingSetup(gpus_per_node=8, offload=offload, accounting=accounting)  # type: ignore[arg-type]
    assert planned_stages(setup) == stages
    api = _api_rows(setup)
    assert tuple(row["zero_stage"] for row in api) == stages
    assert api == _cli_rows(runner, "--gpus", "8", "--offload", offload, "--accounting", accounting)


def test_a_gpu_by_name(runner: CliRunner) -> None:
    # The catalogue's H100 SXM entry; the API takes the name the CLI takes.
    h100 = next(spec for spec in GPUS if spec.key == "h100-sxm")
    setup = TrainingSetup(gpu="h100-sxm")  # type: ignore[arg-type]
    assert setup.gpu is not None and setup.gpu.usable_bytes == h100.usable_bytes
    assert InferenceSetup(gpu="H100 SXM").gpu == setup.gpu  # type: ignore[arg-type]
    api = _api_rows(setup)
    assert [row["fits"] for row in api] == [row["fits"] for row in _cli_rows(runner, "--gpu", "h100-sxm")]
    with pytest.raises(InvalidSetupError, match="unknown GPU 'h1000'"):
        TrainingSetup(gpu="h1000")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (TrainingSetup(zero_stages=(3,), parallel=ParallelSettings(fsdp="full_shard")), "give either --fsdp or --zero"),
        (TrainingSetup(batch_size=0), "--batch-size and --seq-len must be at least 1"),
        (TrainingSetup(dropout=1.0), "--dropout must be in"),
        (TrainingSetup(overheads=OverheadSettings(fragmentation=math.nan)), "--fragmentation must be a fraction"),
        (TrainingSetup(overheads=OverheadSettings(fragmentation=-0.1)), "--fragmentation must be a fraction"),
    ],
)
def test_the_api_refuses_what_the_cli_refuses(setup: TrainingSetup, message: str) -> None:
    with pytest.raises(InvalidSetupError, match=message):
        check_setup(setup)
    with pytest.raises(InvalidSetupError, match=message):
        hfmem.estimate(params=PARAMS, setup=setup, cache=False)


def test_nothing_to_plan_and_max_batch_without_a_gpu() -> None:
    with pytest.raises(InvalidSetupError, match="nothing to plan"):
        check_setup(TrainingSetup(), None, training=False)
    with pytest.raises(InvalidSetupError, match="--max-batch needs a GPU"):
        check_setup(TrainingSetup(), find_max_batch=True)
    with pytest.raises(InvalidSetupError, match="--prefill-chunk must be at least 1"):
        check_setup(TrainingSetup(), InferenceSetup(prefill_chunk=0))
