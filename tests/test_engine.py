"""Serving engines (issue 15): vLLM 0.11.0 and SGLang 0.4.4 start-up accounting (`hfmem.memory.engine`).

The expected numbers are the LOGGED ones of tests/data/engine_logs.json (each record cites its public source;
docs/engines.md checks each by hand), or hand computations written out here. The formulas are fed the record's own
logged budget and the KV layout derived from the model's config (the record's ``kv_layout``), and must give the
logged KV-cache tokens and maximum concurrency within 2 % and the logged weights exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hfmem.api import Prepared, resolve
from hfmem.cli import cli
from hfmem.errors import InvalidSetupError
from hfmem.memory.engine import (
    estimate_max_model_len,
    full_blocks_per_request,
    kv_tokens,
    mamba_block_size,
    max_concurrency,
    needed_bytes,
    page_bytes,
    plan_engine,
    sglang_default_chunked_prefill,
    sglang_default_mem_fraction,
    sglang_max_num_reqs,
    sglang_max_running_requests,
    sglang_max_total_tokens,
    sglang_pool_bytes,
    sglang_rest_bytes,
    sliding_blocks_per_request,
    uniform_num_blocks,
    vllm_available_kv_bytes,
    vllm_default_batch,
    vllm_default_max_model_len,
    vllm_padded_vocab,
)
from hfmem.memory.quantization import QuantScheme
from hfmem.rules import check_engine
from hfmem.types import (
    EngineSetup,
    GpuTarget,
    InferenceProfile,
    InferenceSetup,
    KvLayer,
    ParameterInventory,
    TrainingSetup,
)

GIB = 2**30
RECORDS = {r["id"]: r for r in json.loads((Path(__file__).parent / "data" / "engine_logs.json").read_text())["records"]}
TOLERANCE = 0.02


def _close(value: float, logged: float) -> bool:
    return abs(value - logged) <= TOLERANCE * abs(logged)


def _page(layout: dict[str, Any]) -> int:
    """One block of one layer from a record's config-derived layout: K and V (2 ×) of the GPU's heads, MLA's one
    latent (no 2 ×)."""
    per_head = layout["head_size"] * (1 if layout["kind"] == "mla" else 2)
    return int(page_bytes(layout["block_size"], layout["kv_heads_per_gpu"] * per_head, layout["kv_dtype_bytes"]))


VLLM_CAPACITY = [
    "vllm-v0-llama31-8b-rtx3090-len20000",
    "vllm-v0-llama31-8b-rtx3090-len29000-refused",
    "vllm-v1-llama31-8b-eagle-h100",
    "vllm-v1-llama31-70b-tp4-h100",
    "vllm-v1-qwen3-8b",
    "vllm-v1-qwen3-32b-tp2-h100",
    "vllm-v1-qwen3-14b-len32768",
    "vllm-v1-qwen3-235b-a22b-fp8-tp4-h100",
]


@pytest.mark.parametrize("record_id", VLLM_CAPACITY)
def test_vllm_records_tokens_and_concurrency_from_the_logged_budget(record_id: str) -> None:
    record = RECORDS[record_id]
    layout, logged = record["kv_layout"], record["logged"]
    available = int(logged["available_kv_cache_gib"] * GIB)
    blocks = uniform_num_blocks(available, _page(layout), layout["attention_layers_per_gpu"])
    tokens = kv_tokens(blocks, 1, layout["block_size"])
    logged_tokens = logged.get("gpu_kv_cache_tokens") or logged["num_gpu_blocks"] * layout["block_size"]
    assert _close(tokens, logged_tokens), (tokens, logged_tokens)
    if logged.get("max_concurrency") is not None:
        length = logged["concurrency_tokens_per_request"]
        concurrency = max_concurrency(blocks, full_blocks_per_request(length, layout["block_size"]))
        assert _close(concurrency, logged["max_concurrency"]), (concurrency, logged["max_concurrency"])


def test_vllm_refuses_when_one_full_length_request_does_not_fit_record_2() -> None:
    # 29,000 tokens × 32 layers need 32 × ⌈29000/16⌉ × 65,536 B = 3.80 GiB > 2.89 GiB available: the log refused.
    record = RECORDS["vllm-v0-llama31-8b-rtx3090-len29000-refused"]
    layout = record["kv_layout"]
    page, layers = _page(layout), layout["attention_layers_per_gpu"]
    needed = needed_bytes([(full_blocks_per_request(29000, 16), page)] * layers)
    assert needed == 32 * 1813 * 65536
    assert needed > int(record["logged"]["available_kv_cache_gib"] * GIB)
    assert record["logged"]["starts"] is False


@pytest.mark.parametrize("run", [0, 1])
def test_vllm_estimated_max_model_len_record_11(run: int) -> None:
    record = RECORDS["vllm-v1-qwen3-coder-480b-fp8-dp8-h20-refused"]
    logged = record["logged"]["runs"][run]
    layout = record["kv_layout"]
    page, layers = _page(layout), layout["attention_layers_per_gpu"]

    def needed_at(length: int) -> int:
        return int(needed_bytes([(full_blocks_per_request(length, 16), page)] * layers))

    available = int(logged["available_kv_cache_gib"] * GIB)
    assert round(needed_at(262144) / GIB, 2) == logged["needed_kv_gib"]  # "62.00 GiB KV cache is needed"
    assert needed_at(262144) > available
    estimate = estimate_max_model_len(needed_at, available, 262144)
    assert _close(estimate, logged["estimated_max_model_len"]), (estimate, logged["estimated_max_model_len"])


def test_vllm_budget_record_3() -> None:
    # "the current vLLM instance can use 71.29GiB; model weights take 14.96GiB; non_torch_memory 1.79GiB;
    # PyTorch activation peak memory 1.26GiB; available_kv_cache_memory 53.29GiB"
    logged = RECORDS["vllm-v0-llama3-8b-80gb-budget"]["logged"]
    available = vllm_available_kv_bytes(
        logged["requested_memory_gib"], logged["weights_gib"], logged["activation_peak_gib"], logged["non_torch_gib"]
    )
    assert _close(available, logged["available_kv_cache_gib"])


def test_vllm_mla_concurrency_record_10() -> None:
    # MI308 (ROCm keeps block 16): 107,824 tokens = 6,739 blocks; 32,768 tokens need 2,048 blocks each.
    record = RECORDS["vllm-v1-deepseek-v3-mi308-len32768"]
    blocks = record["logged"]["gpu_kv_cache_tokens"] // record["kv_layout"]["block_size"]
    concurrency = max_concurrency(blocks, full_blocks_per_request(32768, 16))
    assert _close(concurrency, record["logged"]["max_concurrency"])


def _sglang_tokens(record: dict[str, Any], fraction: float, free_before_gib: float) -> int:
    layout, logged = record["kv_layout"], record["logged"]
    cell = layout["attention_layers_per_gpu"] * page_bytes(1, 2 * layout["kv_heads_per_gpu"] * layout["head_size"], 2)
    weights = (free_before_gib - logged["avail_after_weights_gib"]) * GIB
    rest = sglang_rest_bytes(free_before_gib * GIB, weights, fraction)
    return int(sglang_max_total_tokens(rest, cell, 1))


@pytest.mark.parametrize(
    ("record_id", "fraction", "free_before"),
    [
        ("sglang-llama31-8b-docs-80gb", 0.88, 78.81),
        ("sglang-llama31-8b-pr4760", sglang_default_mem_fraction(1), 63.48 + 15.11),  # avail + mem usage
        ("sglang-qwq-32b-tp4-l4", 0.85, 21.63),
    ],
)
def test_sglang_records_tokens_and_k_size(record_id: str, fraction: float, free_before: float) -> None:
    record = RECORDS[record_id]
    logged, layout = record["logged"], record["kv_layout"]
    tokens = _sglang_tokens(record, fraction, free_before)
    assert _close(tokens, logged["max_total_num_tokens"]), (tokens, logged["max_total_num_tokens"])
    cell = layout["attention_layers_per_gpu"] * 2 * layout["kv_heads_per_gpu"] * layout["head_size"] * 2
    k_size = sglang_pool_bytes(logged["max_total_num_tokens"], 1, cell) / 2 / GIB
    assert round(k_size, 2) == logged["k_size_gib"]
    if "max_running_requests" in logged:
        n = logged["max_total_num_tokens"]
        reqs = sglang_max_num_reqs(n, logged["context_len"])
        assert sglang_max_running_requests(n, reqs, None) == logged["max_running_requests"]


def test_sglang_k_size_and_mla_kv_size_records_15_16() -> None:
    record = RECORDS["sglang-qwen3-235b-a22b-fp8-tp4-h100"]
    cell = 94 * 2 * 1 * 128 * 2  # 94 layers, 1 KV head per GPU (4 / tp 4), head_dim 128, bf16
    assert round(sglang_pool_bytes(record["logged"]["max_total_num_tokens"], 1, cell) / 2 / GIB, 2) == 8.23
    record = RECORDS["sglang-deepseek-v3-mla-tp2-forced-10000"]
    cell = 61 * (512 + 64) * 2  # MLA latent per token per layer, every TP rank holds it whole
    assert round(sglang_pool_bytes(record["logged"]["max_total_num_tokens"], 1, cell) / GIB, 2) == 0.65


def test_defaults_hand_checked() -> None:
    # docs/engines.md §2.5 / §4.1; record 14's L4 (22.03 GiB < 25,000 MB) logged chunked_prefill_size=2048.
    assert vllm_default_batch(int(79.11 * GIB), "NVIDIA H100 80GB HBM3") == (8192, 1024)
    assert vllm_default_batch(int(79.15 * GIB), "NVIDIA A100-SXM4-80GB") == (2048, 256)
    assert sglang_default_chunked_prefill(int(22.03 * GIB)) == 2048
    assert sglang_default_chunked_prefill(int(79.11 * GIB)) == 8192
    assert [sglang_default_mem_fraction(tp) for tp in (1, 2, 4, 8, 16)] == [0.88, 0.87, 0.85, 0.81, 0.79]
    assert (
        vllm_default_max_model_len(
            {"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
        )
        == 131072
    )
    assert vllm_padded_vocab(50257) == 50304  # 786 × 64
    # gemma-2 (window 4096, len 8192, 8192 batched tokens): ⌈min(4095 + 8192, 8192) / 16⌉ + 1 = 513
    assert sliding_blocks_per_request(4096, 8192, 8192, 16) == 513
    assert sliding_blocks_per_request(4096, 2048, 8192, 16) == 385  # ⌈6143 / 16⌉ + 1
    # a 16-aligned attention block holding a Mamba state of 1,000,000 B at 4,096 B per token: 16 × ⌈1e6 / 65,536⌉
    assert mamba_block_size(1_000_000, 4096) == 16 * 16


# --- end to end: the implementation on the bundled catalogue ------------------------------------------------------


@pytest.fixture(scope="module")
def prepared() -> dict[str, Prepared]:
    """One in-memory `Prepared` per model for the module (cache off: nothing on disk)."""
    return {}


def _engine(prepared: dict[str, Prepared], model: str, engine: EngineSetup) -> Any:
    if model not in prepared:
        prepared[model] = Prepared(resolve(model), cache=False)
    return prepared[model].report(TrainingSetup(), training=False, inference=InferenceSetup(), engine=engine)


def test_weights_exactly_as_logged_records_1_to_3(prepared: dict[str, Prepared]) -> None:
    # "Loading model weights took 14.9888 GB" (records 1-2, Llama-3.1-8B-Instruct): 8,030,261,248 × 2 B + the RoPE
    # cache 131,072 × 128 × 2 B; "model weights take 14.96GiB" (record 3, Meta-Llama-3-8B: 8,192 positions).
    report = _engine(
        prepared, "meta-llama/Llama-3.1-8B-Instruct", EngineSetup("vllm", gpu="rtx-3090", max_model_len=20000)
    )
    assert report.engine.weights_bytes == 8_030_261_248 * 2 + 131_072 * 128 * 2
    assert (
        round(report.engine.weights_bytes / GIB, 4)
        == RECORDS["vllm-v0-llama31-8b-rtx3090-len20000"]["logged"]["weights_gib"]
    )
    report = _engine(prepared, "meta-llama/Meta-Llama-3-8B-Instruct", EngineSetup("vllm", gpu="h100-sxm"))
    assert (
        round(report.engine.weights_bytes / GIB, 2) == RECORDS["vllm-v0-llama3-8b-80gb-budget"]["logged"]["weights_gib"]
    )


def test_llama31_8b_vllm_h100_default(prepared: dict[str, Prepared]) -> None:
    report = _engine(prepared, "meta-llama/Llama-3.1-8B", EngineSetup("vllm", gpu="h100-sxm"))
    engine = report.engine
    assert engine.starts and engine.max_model_len == 131072 and engine.block_size == 16
    assert (engine.batched_tokens, engine.max_num_seqs) == (8192, 1024)
    # The capacity follows from the budget as vLLM computes it (by hand: 65,536 B pages, 32 layers).
    assert engine.num_blocks == engine.kv_budget_bytes // 65536 // 32
    assert engine.kv_tokens == engine.num_blocks * 16
    assert engine.max_concurrency == engine.num_blocks / 8192
    # The nearest public log (record 4: Llama-3.1-8B-Instruct on an H100, 0.9.1 V1) logged 51.63 GiB available; it
    # also loaded an EAGLE draft model, so this is the closest comparison there is, not an exact one.
    assert _close(
        engine.kv_budget_bytes / GIB, RECORDS["vllm-v1-llama31-8b-eagle-h100"]["logged"]["available_kv_cache_gib"]
    )
    # Its tokens for the 32 target layers from the logged budget: ⌊51.63 GiB / 65,536 / 32⌋ × 16 = 422,944 (docs §6).
    assert _close(engine.kv_tokens, 422_944)


def test_deepseek_v3_vllm_h200_tp8_mla(prepared: dict[str, Prepared]) -> None:
    report = _engine(prepared, "deepseek-ai/DeepSeek-V3", EngineSetup("vllm", gpu="h200", tensor_parallel_size=8))
    engine = report.engine
    (group,) = engine.kv_groups
    # FlashMLA's block of 64 tokens × (kv_lora_rank 512 + qk_rope_head_dim 64) × bf16, no factor 2, whole per rank
    assert (group.kind, group.layers, engine.block_size, group.page_bytes) == ("mla", 61, 64, 64 * 576 * 2)
    assert engine.num_blocks == engine.kv_budget_bytes // 73728 // 61
    assert engine.max_concurrency == engine.num_blocks / (163840 // 64)
    assert engine.starts
    from hfmem.explain import explain, render_explanation

    text = render_explanation(report)
    assert "SERVING ENGINE" in text and "MLA" in text and "⌊⌊avail / (bs × e × β)⌋ / L⌋" in text
    # Every explained number is the plan's own (one formula, two renderings).
    values = {(e.component, c.label): c.value for e in explain(report) if e.section == "engine" for c in e.calculations}
    assert values[("Memory vLLM may use", "requested")] == engine.requested_bytes
    assert values[('Weights ("Model loading took")', "per GPU")] == engine.weights_bytes
    assert values[("PyTorch activation peak (profile run)", "per GPU")] == engine.activation_peak_bytes
    assert values[('"Available KV cache memory"', "per GPU")] == engine.kv_budget_bytes
    assert values[("Blocks, tokens, concurrency", "blocks")] == engine.num_blocks
    assert values[("Blocks, tokens, concurrency", '"GPU KV cache size"')] == engine.kv_tokens
    label = '"Maximum concurrency for 163,840 tokens per request"'
    assert values[("Blocks, tokens, concurrency", label)] == engine.max_concurrency
    assert values[("Blocks, tokens, concurrency", "KV cache of one 163,840-token request")] == engine.kv_needed_bytes


def test_gemma2_sliding_window_groups(prepared: dict[str, Prepared]) -> None:
    report = _engine(prepared, "google/gemma-2-9b-it", EngineSetup("vllm", gpu="h100-sxm"))
    engine = report.engine
    kinds = {g.kind: g for g in engine.kv_groups}
    # docs/engines.md §6: 21 sliding (window 4096) + 21 full layers of 2 × 16 × 8 × 256 × 2 = 131,072 B pages, two
    # groups of 21; one 8,192-token request needs 512 full + 513 sliding blocks.
    assert kinds["sliding"].layers == kinds["full"].layers == 21 and engine.group_size == 21
    assert kinds["sliding"].page_bytes == kinds["full"].page_bytes == 131072
    assert (kinds["full"].blocks_per_request, kinds["sliding"].blocks_per_request) == (512, 513)
    assert engine.num_blocks == engine.kv_budget_bytes // 131072 // 21
    assert engine.kv_tokens == engine.num_blocks // 2 * 16
    assert engine.max_concurrency == engine.num_blocks / 1025
    from hfmem.explain import explain

    values = {
        c.label: c.value
        for e in explain(report)
        if e.component == "Blocks, tokens, concurrency"
        for c in e.calculations
    }
    assert values["blocks"] == engine.num_blocks and values['"GPU KV cache size"'] == engine.kv_tokens
    assert values['"Maximum concurrency for 8,192 tokens per request"'] == engine.max_concurrency
    assert values["KV cache of one 8,192-token request"] == engine.kv_needed_bytes


def test_sglang_llama31_8b_h100(prepared: dict[str, Prepared]) -> None:
    report = _engine(prepared, "meta-llama/Llama-3.1-8B", EngineSetup("sglang", gpu="h100-sxm"))
    engine = report.engine
    assert engine.mem_fraction_static == 0.88 and engine.kv_bytes_per_token == 131072
    # By hand: the H100's 84,943,715,696 B less the 512 MiB CUDA context free before the weights; the weights
    # 16,094,076,928 B (as vLLM's: SGLang's layers are vLLM's); 12 % of the free memory kept back.
    free_before = 84_943_715_696 - 512 * 2**20
    assert engine.weights_bytes == 16_094_076_928
    assert engine.kv_tokens == int((free_before - 16_094_076_928 - free_before * (1 - 0.88)) // 131072)
    # record 12 (78.81 GiB free before weights on an 80 GB GPU) logged 444,500 tokens
    assert _close(engine.kv_tokens, RECORDS["sglang-llama31-8b-docs-80gb"]["logged"]["max_total_num_tokens"])
    assert engine.max_running_requests == 2049  # min(tokens // 2, 2048 + 1), as record 12 logged
    from hfmem.explain import explain

    values = {c.label: c.value for e in explain(report) if e.section == "engine" for c in e.calculations}
    assert values["max_total_num_tokens"] == engine.kv_tokens
    assert values["concurrent full-length requests"] == engine.max_concurrency
    by_component = {e.component: e.calculations[0].value for e in explain(report) if e.section == "engine"}
    assert by_component["Weights"] == engine.weights_bytes
    assert int(by_component["KV pool budget"]) == engine.kv_budget_bytes
    assert by_component["Free memory before the weights"] == engine.requested_bytes


def test_refusal_and_the_longest_length_that_fits(prepared: dict[str, Prepared]) -> None:
    report = _engine(prepared, "meta-llama/Llama-3.1-8B", EngineSetup("vllm", gpu="rtx-3090", max_model_len=131072))
    engine = report.engine
    assert not engine.starts and "estimated maximum model length" in engine.refusal
    # vLLM's estimate for full attention: ⌊available / (L × page)⌋ × block
    assert engine.largest_max_model_len == engine.kv_budget_bytes // (32 * 65536) * 16
    assert any(fix.startswith(f"--max-model-len {engine.largest_max_model_len}") for fix in engine.fixes)


def test_json_has_engine_beside_inference(runner: Any) -> None:
    result = runner.invoke(
        cli, ["meta-llama/Llama-3.2-1B", "--engine", "vllm", "--gpu", "l4", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["inference"]["per_gpu_bytes"]["weights"] > 0  # today's keys stay
    engine = doc["engine"]
    assert engine["engine"] == "vllm" and engine["engine_version"] == "0.11.0"
    assert all(isinstance(v, int) for v in engine["per_gpu_bytes"].values())
    assert engine["log_lines"][2].startswith("GPU KV cache size: ")
    assert engine["kv_tokens"] == engine["num_blocks"] * 16  # one uniform group (16 layers of Llama-3.2-1B)


def test_check_min_concurrency_gates(runner: Any) -> None:
    args = ["meta-llama/Llama-3.2-1B", "--engine", "vllm", "--gpu", "l4", "--max-model-len", "8192", "--check"]
    result = runner.invoke(cli, [*args, "--min-concurrency", "1000000"])
    assert result.exit_code == 3
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("hfmem: does not fit:")]
    assert "below --min-concurrency 1000000" in line
    result = runner.invoke(cli, [*args, "--min-concurrency", "2"])
    assert result.exit_code == 0, result.output
    assert "Maximum concurrency for 8,192 tokens per request:" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-model-len", "4096", "--gpu", "l4"], "--max-model-len configure a serving engine; add --engine vllm"),
        (["--engine", "vllm"], "--engine vllm needs a GPU"),
        (["--engine", "vllm", "--gpu", "l4", "--mem-fraction-static", "0.8"], "--mem-fraction-static is an --engine"),
        (["--engine", "sglang", "--gpu", "l4", "--block-size", "16"], "--block-size is an --engine vllm setting"),
        (["--min-concurrency", "4", "--gpu", "l4"], "add --engine vllm or --engine sglang"),
    ],
)
def test_bad_engine_input_is_one_line(runner: Any, args: list[str], message: str) -> None:
    result = runner.invoke(cli, ["meta-llama/Llama-3.2-1B", *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_rules() -> None:
    with pytest.raises(InvalidSetupError, match="needs the model's KV-cache layout"):
        check_engine(EngineSetup("vllm", gpu="h100-sxm"), has_model=False)
    with pytest.raises(InvalidSetupError, match="below --max-num-seqs"):
        check_engine(EngineSetup("vllm", gpu="h100-sxm", max_num_batched_tokens=256, max_num_seqs=512))
    with pytest.raises(InvalidSetupError, match="--block-size 24 is not one vLLM takes"):
        check_engine(EngineSetup("vllm", gpu="h100-sxm", block_size=24))
    check_engine(EngineSetup("transformers"))


def test_fp8_kv_and_pipeline_parallel(prepared: dict[str, Prepared]) -> None:
    # Llama-3.2-1B: 16 layers, 8 KV heads × head_dim 64 → e = 1,024 elements per token; fp8: 1 byte each.
    report = _engine(prepared, "meta-llama/Llama-3.2-1B", EngineSetup("vllm", gpu="l4", kv_cache_dtype="fp8"))
    engine = report.engine
    assert engine.kv_groups[0].page_bytes == 16 * 1024 * 1 and engine.kv_dtype == "fp8"
    assert engine.num_blocks == engine.kv_budget_bytes // 16384 // 16
    # Two pipeline ranks of 8 layers each (vLLM's get_pp_indices): the tightest one holds half the layers.
    split = _engine(prepared, "meta-llama/Llama-3.2-1B", EngineSetup("vllm", gpu="l4", pipeline_parallel_size=2))
    assert split.engine.kv_groups[0].layers == 8 and split.engine.pp == 2
    assert (
        split.engine.weights_bytes
        < _engine(prepared, "meta-llama/Llama-3.2-1B", EngineSetup("vllm", gpu="l4")).engine.weights_bytes
    )


@given(
    available=st.integers(0, 2**42),
    layers=st.integers(1, 256),
    elements=st.integers(1, 8192),
    beta=st.sampled_from((1, 2, 4)),
    block=st.sampled_from((1, 8, 16, 32, 64, 128)),
)
def test_blocks_are_the_most_that_fit(available: int, layers: int, elements: int, beta: int, block: int) -> None:
    page = page_bytes(block, elements, beta)
    blocks = uniform_num_blocks(available, page, layers)
    assert blocks * page * layers <= available < (blocks + 1) * page * layers


def _synthetic(layers: tuple[KvLayer, ...], states: tuple[tuple[str, int], ...] = ()) -> Any:
    """A hand-made model: ``layers`` / ``states`` as the cache holds them, 1,000 parameters, no traced activations,
    on a 10 GiB GPU (vLLM's small defaults: 2,048 batched tokens, 256 sequences), max_model_len 4,096."""
    config = {"max_position_embeddings": 4096, "vocab_size": 1000, "hidden_size": 64, "num_attention_heads": 8}
    profile = InferenceProfile(layers, 1, 2048, "bfloat16", 0, 0, state_layers=states)
    scheme = QuantScheme("bf16", "plain", plain_bytes=2, source="test")
    setup = EngineSetup("vllm", gpu=GpuTarget("a 10 GiB GPU", 10 * GIB))
    return plan_engine(config, ParameterInventory.from_count(1000), profile, scheme, setup, cuda_context_bytes=0)


def test_one_kind_of_two_shapes_is_one_group() -> None:
    # vLLM's UniformTypeKVCacheSpecs: one block spans every layer, 16 × 2,048 × 2 + 16 × 1,024 × 2 = 98,304 B.
    engine = _synthetic((KvLayer("0", "full", 2048, heads=8), KvLayer("1", "full", 1024, heads=4)))
    assert engine.grouping == "uniform_type" and engine.num_groups == 1
    assert engine.num_blocks == engine.kv_budget_bytes // 98304
    assert engine.kv_tokens == engine.num_blocks * 16
    assert engine.max_concurrency == engine.num_blocks / 256  # ⌈4096 / 16⌉


def test_hybrid_mamba_block_and_groups() -> None:
    # 2 attention layers of 512 elements × 2 B = 1,024 B per token; 3 states of 100,000 B. vLLM raises the block to
    # 16 × ⌈100,000 / (16 × 1,024)⌉ = 112 tokens, page 112 × 1,024 = 114,688 B (states padded to it); groups of
    # min(2, 3) = 2 layers: 1 attention group + ⌈3 / 2⌉ = 2 state groups; one 4,096-token request needs
    # ⌈4096 / 112⌉ = 37 attention blocks + 1 block per state group.
    layers = (KvLayer("0", "full", 512, heads=1), KvLayer("1", "full", 512, heads=1))
    engine = _synthetic(layers, (("2", 100_000), ("3", 100_000), ("4", 100_000)))
    assert engine.block_size == 112 and {g.page_bytes for g in engine.kv_groups} == {114_688}
    assert (engine.grouping, engine.group_size, engine.num_groups) == ("hybrid", 2, 3)
    assert engine.num_blocks == engine.kv_budget_bytes // 114_688 // 2
    assert engine.kv_tokens == engine.num_blocks // 3 * 112
    assert engine.max_concurrency == engine.num_blocks / (37 + 2)


def test_kinds_of_different_pages_are_refused() -> None:
    layers = (KvLayer("0", "full", 2048, heads=8), KvLayer("1", "sliding", 1024, heads=4, window_tokens=512))
    with pytest.raises(InvalidSetupError, match="differ in kind and in page size"):
        _synthetic(layers)
