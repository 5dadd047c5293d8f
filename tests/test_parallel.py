"""Tensor, sequence, pipeline, context and expert parallelism, and FSDP: splits, stages, errors, JSON."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hfmem import estimate
from hfmem.build.inventory import count_parameters
from hfmem.build.trace import profile_activations
from hfmem.cli import cli
from hfmem.hub import resolve_model
from hfmem.memory.parallel import (
    in_flight_microbatches,
    korthikanti_layer_bytes,
    local_inventory,
    pipeline_stages,
)
from hfmem.types import ParallelSettings, ResolvedModel, TrainingSetup
from tests.conftest import TINY_LLAMA

# Korthikanti et al. 2022 (arXiv 2205.05198), Table 3 model configurations: attention heads a, hidden h, layers L,
# tensor-parallel t; sequence length s = 2048 for all; micro-batch b = 1 (175B, 530B, 1T) and 4 (22B).
PAPER_CONFIGS = {
    "22B": {"a": 64, "h": 6144, "L": 48, "t": 8, "b": 4},
    "175B": {"a": 96, "h": 12288, "L": 96, "t": 8, "b": 1},
    "530B": {"a": 128, "h": 20480, "L": 105, "t": 8, "b": 1},
    "1T": {"a": 160, "h": 25600, "L": 128, "t": 8, "b": 1},
}


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_korthikanti_table2(name: str) -> None:
    """Per-layer activation bytes, Table 2 of the paper, each row written out from the paper's formula."""
    c = PAPER_CONFIGS[name]
    s, b, h, a, t = 2048, c["b"], c["h"], c["a"], c["t"]
    sbh = s * b * h
    rows = {
        "no parallelism": (dict(t=1), sbh * (34 + 5 * a * s / h)),
        "tensor parallel": (dict(t=t), sbh * (10 + 24 / t + 5 * a * s / (h * t))),
        "tensor + sequence parallel": (dict(t=t, sp=True), sbh / t * (34 + 5 * a * s / h)),
        "tensor parallel + selective recompute": (dict(t=t, selective=True), sbh * (10 + 24 / t)),
        "tensor + sequence parallel + selective recompute": (dict(t=t, sp=True, selective=True), sbh * 34 / t),
    }
    for row, (kwargs, expected) in rows.items():
        got = korthikanti_layer_bytes(s=s, b=b, h=h, a=a, **kwargs)  # type: ignore[arg-type]
        assert got == pytest.approx(expected, rel=1e-12), row


def test_measured_tp_split_matches_korthikanti_for_gpt() -> None:
    """GPT-2 (a GPT-3-style block), eager attention, dropout 0.1: what the trace finds replicated under TP is the
    paper's 10·sbh (§4.1: 2 LayerNorm inputs, QKV and MLP-input linears' inputs, 2 dropout masks) plus each
    LayerNorm's fp32 mean and rstd (2 norms × 2 × 4 bytes per token)."""
    model = resolve_model("openai-community/gpt2")
    s, b, h = 16, 2, 768
    profile = profile_activations(
        model, batch_size=b, seq_len=s, attn="eager", dtype="bfloat16", dropout=0.1, tensor_parallel=True
    )
    layer = profile.layers[1]
    assert layer.saved_bytes - layer.tp_split_bytes == 10 * s * b * h + 16 * s * b


def test_measured_tp_split_for_llama() -> None:
    """Tiny Llama, bf16, fused attention: split = q, k, v, output (8h) + log-sum-exp (4a) + SwiGLU (8i); the two
    RMSNorms (fp32 input 4h, rsqrt 4, bf16 normalised 2h, output 2h each) are replicated."""
    s, b, h, i, a = 8, 2, 64, 128, 4
    profile = profile_activations(
        ResolvedModel("tiny", "local", TINY_LLAMA),
        batch_size=b,
        seq_len=s,
        attn="sdpa",
        dtype="bfloat16",
        tensor_parallel=True,
    )
    layer = profile.layers[1]
    assert layer.tp_split_bytes == (8 * h + 4 * a + 8 * i) * s * b
    assert layer.saved_bytes - layer.tp_split_bytes == 2 * (4 * h + 4 + 2 * h + 2 * h) * s * b


def _setup(**parallel: object) -> TrainingSetup:
    gpus = int(parallel.pop("gpus", 8))  # type: ignore[call-overload]
    return TrainingSetup(gpus_per_node=gpus, parallel=ParallelSettings(**parallel))  # type: ignore[arg-type]


def test_pipeline_partition_by_hand() -> None:
    assert [s.layers for s in pipeline_stages(5, _setup(pp=2))] == [(0, 1), (2, 3, 4)]
    assert [s.layers for s in pipeline_stages(8, _setup(pp=4))] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    # Interleaved, 2 chunks per GPU: 8 layers → chunks of 2, chunk c on rank c mod 2.
    interleaved = pipeline_stages(8, _setup(pp=2, pp_schedule="interleaved", virtual_stages=2))
    assert [s.layers for s in interleaved] == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert [s.holds for s in pipeline_stages(4, _setup(pp=2))] == [("embeddings",), ("LM head",)]


def test_pipeline_stage_parameters_by_hand(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = dict(TINY_LLAMA, num_hidden_layers=5)
    (tmp_path / "config.json").write_text(json.dumps(config))
    inventory = count_parameters(resolve_model(str(tmp_path)))
    h, i, vocab = 64, 128, 1000
    layer = 4 * h * h + 3 * h * i + 2 * h
    first, last = pipeline_stages(5, _setup(pp=2))
    assert local_inventory(inventory, _setup(pp=2), first).total_params == vocab * h + 2 * layer
    assert local_inventory(inventory, _setup(pp=2), last).total_params == 3 * layer + h + vocab * h
    # tp = 2 as well: linears and embeddings halve, the norms (1-D) stay whole.
    both = _setup(pp=2, tp=2)
    halved = (4 * h * h + 3 * h * i) // 2 + 2 * h
    assert local_inventory(inventory, both, first).total_params == vocab * h // 2 + 2 * halved


def test_tied_embeddings_copy_on_the_last_stage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_LLAMA, tie_word_embeddings=True)))
    inventory = count_parameters(resolve_model(str(tmp_path)))
    assert inventory.tied_embeddings
    _, last = pipeline_stages(2, _setup(pp=2))
    h, i = 64, 128
    # Megatron keeps a copy of the word embeddings on the last stage to compute the logits.
    assert local_inventory(inventory, _setup(pp=2), last).total_params == (4 * h * h + 3 * h * i + 2 * h) + h + 1000 * h


def test_in_flight_microbatches() -> None:
    # 1F1B: stage k keeps p − k micro-batches (Narayanan et al. 2021), capped by the micro-batches per step.
    assert [in_flight_microbatches(_setup(pp=4), k) for k in range(4)] == [4, 3, 2, 1]
    assert [in_flight_microbatches(_setup(pp=4, microbatches=2), k) for k in range(4)] == [2, 2, 2, 1]
    # Interleaved, v = 2: the first stage holds p·(1 + (p − 1)/(p·v)) micro-batches' worth (Korthikanti §4.2.3).
    interleaved = _setup(pp=4, pp_schedule="interleaved", virtual_stages=2)
    assert in_flight_microbatches(interleaved, 0) == pytest.approx(4 * (1 + 3 / (4 * 2)))


def test_llama70b_done_when_weights_by_hand() -> None:
    """`--gpus 8 --nodes 4 --tp 8 --pp 2 --sp --zero 1`: dp = 32 / 16 = 2; stage 0 holds 40 layers + embeddings."""
    setup = TrainingSetup(gpus_per_node=8, nodes=4, zero_stages=(1,), parallel=ParallelSettings(tp=8, pp=2, sp=True))
    report = estimate("meta-llama/Llama-3.1-70B", setup=setup)
    h, i, kv, vocab = 8192, 28672, 1024, 128256  # config.json: hidden, intermediate, 8 KV heads × 128, vocab
    linear = 2 * h * h + 2 * h * kv + 3 * h * i  # q, o; k, v; gate, up, down
    per_layer = linear // 8 + 2 * h  # TP splits the linears; the two RMSNorms are replicated
    local = 40 * per_layer + vocab * h // 8
    stage = report.training.stages[0]
    assert stage.pipeline_stage == 0 and stage.stage_holds == ("embeddings",)
    assert stage.weights_bytes == 2 * local
    assert stage.gradients_bytes == 2 * local
    shard = -(-local // 2)  # ZeRO-1 over dp = 2
    assert (stage.master_weights_bytes, stage.optimizer_states_bytes) == (4 * shard, 8 * shard)
    # Activations: 2 micro-batches in flight × 40 layers × 4096 tokens × per-token-per-layer bytes / 8 (SP):
    # RMSNorms 2·(8h + 4), attention q 2h + k, v 2·(h/8) each + output 2h + lse 4·64, SwiGLU 8i.
    per_token = 2 * (8 * h + 4) + (2 * h + 2 * 2 * h // 8 + 2 * h) + 4 * 64 + 8 * i
    layers_bytes = 2 * 40 * 4096 * per_token // 8
    assert layers_bytes <= stage.activations_bytes <= layers_bytes * 1.01  # + embeddings' output, rotary tables


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--gpus", "6", "--tp", "4"], "make gpus × nodes a multiple of 4"),
        (["--gpus", "3", "--tp", "3"], "attention heads cannot be split over --tp 3"),
        (["--sp"], "add --tp 2 or more"),
        (["--gpus", "2", "--ep", "2"], "this model has none"),
        (["--gpus", "4", "--pp", "4"], "more pipeline stages than the model's 2 layers"),
        (["--pp-schedule", "interleaved"], "needs --pp 2 or more"),
        (["--fsdp", "full_shard", "--zero", "3"], "give either --fsdp or --zero"),
        (["--cp", "2", "--gpus", "2", "--seq-len", "7"], "cannot be split evenly over --cp 2"),
        (["--gpus", "2", "--tp", "2", "--accounting", "deepspeed"], "use --accounting hfmem"),
    ],
)
def test_impossible_layouts_are_one_line(runner: CliRunner, tmp_path, args: list[str], needle: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    result = runner.invoke(cli, [str(tmp_path), "--seq-len", "8", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        result.stderr.splitlines()[-1]
    ]


def test_ep_must_divide_experts_and_dp(runner: CliRunner) -> None:
    # Mixtral has 8 experts: --ep 3 cannot split them; --ep 8 on 4 GPUs exceeds the data-parallel group.
    result = runner.invoke(cli, ["mistralai/Mixtral-8x7B-v0.1", "--gpus", "3", "--ep", "3", "--seq-len", "8"])
    assert result.exit_code == 2 and "8 experts cannot be split over --ep 3" in result.stderr
    result = runner.invoke(cli, ["mistralai/Mixtral-8x7B-v0.1", "--gpus", "4", "--ep", "8", "--seq-len", "8"])
    assert result.exit_code == 2 and "must divide it" in result.stderr


def test_ep_splits_experts_states(runner: CliRunner) -> None:
    base = ["mistralai/Mixtral-8x7B-v0.1", "--gpus", "8", "--zero", "0", "--seq-len", "8", "--json"]
    one = json.loads(runner.invoke(cli, base, catch_exceptions=False).stdout)
    eight = json.loads(runner.invoke(cli, [*base, "--ep", "8"], catch_exceptions=False).stdout)
    routed = one["parameters"]["moe"]["routed_expert_params"]
    saved = (
        one["training"]["stages"][0]["per_gpu_bytes"]["weights"]
        - eight["training"]["stages"][0]["per_gpu_bytes"]["weights"]
    )
    assert saved == 2 * (routed - routed // 8)  # bf16: each GPU keeps 1 of 8 experts


def test_fsdp_full_shard_uses_unit_buffers(runner: CliRunner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    result = runner.invoke(
        cli, [str(tmp_path), "--gpus", "8", "--fsdp", "full_shard", "--seq-len", "8", "--json"], catch_exceptions=False
    )
    doc = json.loads(result.stdout)
    (stage,) = doc["training"]["stages"]
    assert stage["zero_stage"] == 3 and doc["training"]["settings"]["parallel"]["fsdp"] == "full_shard"
    items = stage["overhead_items"]
    assert not any("DeepSpeed" in name or "ZeRO-3 gathered" in name for name in items)
    if stage["peak_phase"] in ("forward", "backward"):
        # The largest unit is the root (2 × 1000 × 64 embeddings + head + 64 final norm) > one layer (65,664).
        assert items["FSDP unsharded unit + prefetched unit (16-bit)"] == 2 * 2 * (2 * 1000 * 64 + 64)


def test_hybrid_shard_shards_within_a_node() -> None:
    setup = TrainingSetup(gpus_per_node=8, nodes=4, parallel=ParallelSettings(fsdp="hybrid_shard", tp=2))
    assert setup.data_parallel_size == 16 and setup.sharding_degree == 4  # 8 GPUs per node / tp 2


def test_parallel_json_keys(runner: CliRunner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    args = [str(tmp_path), "--gpus", "8", "--tp", "2", "--pp", "2", "--sp", "--zero", "1", "--seq-len", "8", "--json"]
    doc = json.loads(runner.invoke(cli, args, catch_exceptions=False).stdout)
    parallel = doc["training"]["settings"]["parallel"]
    assert (parallel["tp"], parallel["pp"], parallel["sp"], parallel["dp"], parallel["sharding_degree"]) == (
        2,
        2,
        True,
        2,
        2,
    )
    busiest = doc["training"]["stages"][0]["busiest_gpu"]
    assert busiest["pipeline_stage"] in (0, 1) and busiest["layers"] in ([0, 0], [1, 1])
