"""Serving engines' start-up memory accounting (vLLM 0.11.0 V1, SGLang 0.4.4): KV budget, blocks, tokens, maximum
concurrency and whether the engine starts; pure functions.

docs/engines.md has the research (file and line of every rule, read from the released wheels) and the hand check
of every public start-up log in tests/data/engine_logs.json. Everything here is arithmetic on the model's measured
KV layout and prefill trace (`hfmem.build.serve.profile_inference`) and its weights (`hfmem.memory.quantization`);
the formulas take plain numbers (the plan) or `hfmem.memory.expr` values (``--explain``), as the rest of
`hfmem.memory` does.

What is measured by the engines and modelled here (the error sits there; the rest is their exact arithmetic):

* **Activation peak** (vLLM ``profile_run``): the larger of hfmem's trace of one forward of
  ``max_num_batched_tokens`` tokens and the sampler's peak on ``min(max_num_seqs, max_num_batched_tokens)`` logit rows
  (the PyTorch-native top-k/top-p path of a plain ``pip install vllm``; with FlashInfer it is smaller).
* **Non-torch memory** (cuBLAS / attention workspaces allocated after the start-up snapshot): a published
  figure (`NON_TORCH_BYTES`).
* **CUDA graphs**: not subtracted from the KV budget in vLLM 0.11.0 (captured after the KV cache, out of the
  ``1 − gpu_memory_utilization`` head-room); SGLang leaves them to the ``1 − mem_fraction_static`` share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from hfmem.errors import InvalidSetupError
from hfmem.memory.expr import Value, ceil_div, cite, floor_div, maximum, minimum, total, trunc
from hfmem.memory.inference import weights_per_gpu_bytes
from hfmem.memory.parallel import PipelineStage, local_inventory
from hfmem.memory.quantization import QuantScheme, is_16bit_model, tensor_bytes
from hfmem.types import (
    EngineEstimate,
    EngineKvGroup,
    EngineSetup,
    InferenceProfile,
    KvLayer,
    ParallelSettings,
    ParameterInventory,
    TrainingSetup,
)

__all__ = [
    "VLLM_VERSION",
    "SGLANG_VERSION",
    "plan_engine",
    "vllm_default_batch",
    "vllm_default_max_model_len",
    "vllm_requested_bytes",
    "vllm_available_kv_bytes",
    "vllm_sampler_bytes",
    "vllm_activation_peak_bytes",
    "vllm_rope_cache_bytes",
    "vllm_padded_vocab",
    "kv_elements_per_gpu",
    "rotary_dim",
    "hidden_size",
    "page_bytes",
    "uniform_num_blocks",
    "hybrid_num_blocks",
    "kv_tokens",
    "full_blocks_per_request",
    "sliding_blocks_per_request",
    "max_concurrency",
    "needed_bytes",
    "estimate_max_model_len",
    "mamba_block_size",
    "sglang_default_mem_fraction",
    "sglang_default_chunked_prefill",
    "sglang_rest_bytes",
    "sglang_max_total_tokens",
    "sglang_pool_bytes",
    "sglang_max_num_reqs",
    "sglang_max_running_requests",
    "sglang_max_req_len",
]

#: The vLLM release whose accounting is modelled (docs/engines.md §1: the newest whose rules match every V1 log).
VLLM_VERSION = "0.11.0"
#: The SGLang release whose accounting is modelled (docs/engines.md §4.1; 0.4.1 has the same formula).
SGLANG_VERSION = "0.4.4"

GIB = 2**30

# --- sources (docs/engines.md gives the wheel and the commit read) -----------------------------------------------
SRC_VLLM_BUDGET = (
    "vLLM 0.11.0 v1/worker/gpu_worker.py init_device L182-184 (requested_memory = total_memory × "
    "gpu_memory_utilization) and determine_available_memory L279-280 (available = requested − non_kv_cache_memory); "
    "utils/__init__.py memory_profiling L2859 (non_kv = non_torch_increase + torch_peak_increase + weights_memory)"
)
SRC_VLLM_PROFILE = (
    "vLLM 0.11.0 v1/worker/gpu_model_runner.py profile_run L3325-3403 (_dummy_run of max_num_batched_tokens tokens "
    "over num_reqs = min(max_num_batched_tokens, max_num_seqs) requests, L2977; it returns the hidden states and "
    "one row per request, L3180) and _dummy_sampler_run L3183-3255 (rand_like of the rows, compute_logits "
    "[num_reqs, vocab] in the model dtype, the sampler with top_k and top_p set); v1/sample/sampler.py L86 "
    "(logits.to(torch.float32)); v1/sample/ops/topk_topp_sampler.py apply_top_k_top_p L164-204 (PyTorch-native "
    "path: FlashInfer is the optional extra vllm[flashinfer])"
)
SRC_VLLM_NON_TORCH = (
    "vLLM start-up log on an H100 (kubernetes-sigs/gateway-api-inference-extension PR #550, 2025-03-21): "
    "'non_torch_memory takes 0.16GiB' (RTX 3090, vllm-project/vllm#10517: 0.35GiB; docs/engines.md §6)"
)
SRC_VLLM_WEIGHTS = (
    "vLLM 0.11.0 model_executor/layers/vocab_parallel_embedding.py (DEFAULT_VOCAB_PADDING_SIZE = 64, L23; "
    "pad_vocab_size L60-63) and rotary_embedding/base.py L45-49 (cos_sin_cache: max positions × rotary_dim in the "
    "model dtype, counted in 'Model loading took'); logged 'Loading model weights took 14.9888 GB' for Llama-3.1-8B "
    "(vllm-project/vllm#10517)"
)
SRC_VLLM_SPEC = (
    "vLLM 0.11.0 v1/kv_cache_interface.py: AttentionSpec.page_size_bytes = 2 · block_size · num_kv_heads · "
    "head_size · dtype (L64-66), MLAAttentionSpec without the 2 (L142-172), SlidingWindowSpec "
    "max_memory_usage_bytes (L193-214), MambaSpec (L218-239); config/model.py get_num_kv_heads "
    "max(1, kv_heads // tp) (L1190-1191)"
)
SRC_VLLM_BLOCKS = (
    "vLLM 0.11.0 v1/core/kv_cache_utils.py get_num_blocks L813-827 (available // page_size // num_layers), "
    "_get_kv_cache_groups_uniform_page_size L894-1001 (hybrid: group_size = min layers per type), "
    "get_kv_cache_config_from_groups L1076-1092 ('GPU KV cache size', 'Maximum concurrency'), "
    "get_max_concurrency_for_kv_cache_config L780-796; min num_blocks over workers L1286-1290"
)
SRC_VLLM_REFUSE = (
    "vLLM 0.11.0 v1/core/kv_cache_utils.py check_enough_kv_cache_memory L678-715 and estimate_max_model_len "
    "L633-675 (binary search of the longest max_model_len whose KV cache fits)"
)
SRC_VLLM_DEFAULTS = (
    "vLLM 0.11.0 engine/arg_utils.py _set_default_args L1585-1625 (vllm serve: 8192 batched tokens / 1024 "
    "sequences on GPUs of ≥ 70 GiB other than A100, else 2048 / 256); config/cache.py gpu_memory_utilization 0.9; "
    "platforms/cuda.py L126-182 (block 16; MLA: 64 with FlashMLA, 128 with CUTLASS-MLA on Blackwell)"
)
SRC_VLLM_MAX_LEN = (
    "vLLM 0.11.0 config/model.py _get_and_verify_max_len (from L1763): the smallest context key of the config, "
    "times the RoPE-scaling factor except su/longrope/llama3 (yarn: original_max_position_embeddings × factor)"
)
SRC_VLLM_MAMBA = (
    "vLLM 0.11.0 model_executor/models/config.py HybridAttentionMambaModelConfig L314-400: attention block = "
    "16 · ⌈mamba_page / (16 · attention page per token)⌉, the Mamba page padded to the attention page"
)
SRC_SGLANG_BUDGET = (
    "SGLang 0.4.4 srt/model_executor/model_runner.py profile_max_num_token L612-637: rest = available now − "
    "free before the weights × (1 − mem_fraction_static); max_total_num_tokens = rest // cell_size"
)
SRC_SGLANG_POOL = (
    "SGLang 0.4.4 model_runner.py init_memory_pool L639-700 (max_num_reqs = min(max(⌊tokens / context_len × "
    "512⌋, 2048), 4096)) and srt/managers/tp_worker.py L106-124 (max_running_requests = min(tokens // 2, "
    "max_num_reqs + 1); max_req_len = min(context_len − 1, tokens − 1))"
)
SRC_SGLANG_DEFAULTS = (
    "SGLang 0.4.4 srt/server_args.py L203-235: mem_fraction_static 0.88 (tp 1), 0.87 (tp ≥ 2), 0.85 (tp ≥ 4), "
    "0.81 (tp ≥ 8), 0.79 (tp ≥ 16); chunked_prefill_size 2048 below 25,000 MB of GPU memory, else 8192; page 1"
)

#: vLLM's default ``--gpu-memory-utilization`` (config/cache.py ``CacheConfig``).
VLLM_GPU_MEMORY_UTILIZATION = 0.9
#: vLLM's default ``--block-size`` on CUDA (platforms/cuda.py L126-127).
VLLM_BLOCK_SIZE = 16
#: FlashMLA's block size, the MLA default on Hopper and older (platforms/cuda.py L131-182).
VLLM_MLA_BLOCK_SIZE = 64
#: CUTLASS-MLA's block size, the MLA default on Blackwell (compute capability 10.0).
VLLM_MLA_BLOCK_SIZE_BLACKWELL = 128
#: GPUs of the catalogue with compute capability 10.x (`hfmem.gpus`): CUTLASS-MLA is vLLM's default there.
BLACKWELL_GPUS = ("b200",)
#: ``DEFAULT_VOCAB_PADDING_SIZE`` (vocab_parallel_embedding.py L23).
VOCAB_PADDING = 64
#: Non-torch memory that appears after vLLM's start-up snapshot (cuBLAS and attention workspaces): 0.16 GiB, as a
#: published H100 start-up log measured it (`SRC_VLLM_NON_TORCH`).
NON_TORCH_BYTES = int(0.16 * GIB)
#: The alignment of the attention block raised for Mamba pages (``kernel_block_alignment_size``).
MAMBA_BLOCK_ALIGNMENT = 16
#: vLLM's batch defaults: (bytes of GPU memory from which the larger apply, large, small) per `vllm_default_batch`.
VLLM_LARGE_GPU_BYTES = 70 * GIB
VLLM_LARGE_BATCH = (8192, 1024)
VLLM_SMALL_BATCH = (2048, 256)
#: Context keys vLLM reads, in its order (`SRC_VLLM_MAX_LEN`).
VLLM_CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
#: SGLang 0.4.4's mem_fraction_static by TP size, largest threshold first (`SRC_SGLANG_DEFAULTS`).
SGLANG_MEM_FRACTIONS = ((16, 0.79), (8, 0.81), (4, 0.85), (2, 0.87), (1, 0.88))
SGLANG_SMALL_GPU_BYTES = 25_000 * 2**20
#: Bytes per logit live at the peak of vLLM's PyTorch-native top-k/top-p sampler, beside the logits in the model dtype
#: (`SRC_VLLM_PROFILE`): the fp32 copy 4, ``sort`` values 4 and int64 indices 8, the top-k mask 1, the top-p softmax
#: 4 (cumsum in place), the top-p mask 1, and the re-sorted ``scatter`` result 4, all live at the scatter.
SAMPLER_BYTES_PER_LOGIT = 4 + 4 + 8 + 1 + 4 + 1 + 4


# --- vLLM: defaults ------------------------------------------------------------------------------------------------


def vllm_default_batch(total_bytes: int, gpu_name: str) -> tuple[int, int]:
    """``(max_num_batched_tokens, max_num_seqs)`` of ``vllm serve``: 8192 / 1024 on a GPU of at least 70 GiB whose
    name does not contain "a100", else 2048 / 256 (`SRC_VLLM_DEFAULTS`).

    Example:
        >>> vllm_default_batch(int(79.11 * 2**30), "NVIDIA H100 80GB HBM3")
        (8192, 1024)
        >>> vllm_default_batch(int(79.15 * 2**30), "NVIDIA A100-SXM4-80GB")
        (2048, 256)
    """
    if total_bytes >= VLLM_LARGE_GPU_BYTES and "a100" not in gpu_name.lower():
        return VLLM_LARGE_BATCH
    return VLLM_SMALL_BATCH


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def vllm_default_max_model_len(config: Mapping[str, Any]) -> int | None:
    """vLLM's default ``max_model_len``: the smallest context key of the config, scaled by the RoPE factor except
    for su / longrope / llama3 (and Gemma-3); yarn scales ``original_max_position_embeddings`` (`SRC_VLLM_MAX_LEN`).

    Example:
        >>> vllm_default_max_model_len({"max_position_embeddings": 163840, "rope_scaling": {"type": "yarn",
        ...     "factor": 40, "original_max_position_embeddings": 4096}})
        163840
    """
    text = _text_config(config)
    found = [text[k] for k in VLLM_CONTEXT_KEYS if isinstance(text.get(k), int) and text[k] > 0]
    if not found:
        return None
    length = min(found)
    scaling = text.get("rope_scaling")
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    if isinstance(scaling, Mapping) and "gemma3" not in model_type:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("su", "longrope", "llama3"):
            factor = scaling.get("factor", 1.0)
            if kind == "yarn" and isinstance(scaling.get("original_max_position_embeddings"), int):
                length = scaling["original_max_position_embeddings"]
            if isinstance(factor, (int, float)) and factor > 0:
                length = int(length * factor)
    return length


# --- vLLM: the budget ----------------------------------------------------------------------------------------------


def vllm_requested_bytes(total_bytes: Value, utilization: Value) -> Value:
    """``⌊total × u⌋``: what the engine may use of the GPU's total memory (`SRC_VLLM_BUDGET`)."""
    return trunc(total_bytes * utilization)


def vllm_available_kv_bytes(requested: Value, weights: Value, activation_peak: Value, non_torch: Value) -> Value:
    """ "Available KV cache memory": ``requested − (non-torch + activation peak + weights)`` (`SRC_VLLM_BUDGET`).

    Example (record 3 of tests/data/engine_logs.json, in hundredths of a GiB: 71.29 − 14.96 − 1.26 − 1.79):
        >>> vllm_available_kv_bytes(7129, 1496, 126, 179)
        5328
    """
    return requested - (non_torch + activation_peak + weights)


def vllm_sampler_bytes(num_reqs: Value, vocab: Value, logits_element_bytes: Value) -> Value:
    """The profile run's sampler on one logit row per request: ``r × V × (w + 26)`` (the logits in the model dtype
    and what the PyTorch-native top-k/top-p sampler holds at its peak, `SAMPLER_BYTES_PER_LOGIT`).

    Example (Llama-3.1-8B, 1,024 requests × 128,256 logits, bf16):
        >>> vllm_sampler_bytes(1024, 128256, 2)
        3677356032
    """
    return num_reqs * vocab * (logits_element_bytes + cite(SAMPLER_BYTES_PER_LOGIT, SRC_VLLM_PROFILE, num_reqs, vocab))


def vllm_activation_peak_bytes(
    forward_peak: Value, batched_tokens: Value, num_reqs: Value, hidden: Value, element_bytes: Value, sampler: Value
) -> Value:
    """ "PyTorch activation peak": the larger of the profiling forward's peak and the sampler's, which runs while the
    forward's hidden states (``T × H``) and the rows per request with their random copy (``2 × r × H``) are alive:
    ``max(A, (T + 2r) × H × w + sampler)`` (`SRC_VLLM_PROFILE`)."""
    return maximum(forward_peak, (batched_tokens + 2 * num_reqs) * hidden * element_bytes + sampler)


def vllm_padded_vocab(vocab: int) -> int:
    """The vocabulary padded to a multiple of 64 (`SRC_VLLM_WEIGHTS`).

    Example:
        >>> vllm_padded_vocab(128256), vllm_padded_vocab(256000), vllm_padded_vocab(129280), vllm_padded_vocab(50257)
        (128256, 256000, 129280, 50304)
    """
    return -(-vocab // VOCAB_PADDING) * VOCAB_PADDING


def vllm_rope_cache_bytes(positions: Value, rotary_dim: Value, element_bytes: Value) -> Value:
    """The RoPE ``cos_sin_cache`` buffer: ``positions × rotary_dim × w`` (cos and sin halves of rotary_dim each;
    `SRC_VLLM_WEIGHTS`).

    Example (Llama-3.1-8B: 131,072 positions × 128 × bf16):
        >>> vllm_rope_cache_bytes(131072, 128, 2)
        33554432
    """
    return positions * rotary_dim * element_bytes


# --- vLLM: KV-cache specs, blocks and capacity -------------------------------------------------------------------


def kv_elements_per_gpu(elements: Value, heads: Value, tp: Value) -> Value:
    """Cached elements per token of one layer on one of ``tp`` GPUs: ``e / h × max(1, ⌊h / tp⌋)`` (vLLM's
    ``get_num_kv_heads``; MLA's one latent head is held whole on every GPU)."""
    if tp.__class__ is int and tp == 1:
        return elements
    return floor_div(elements, heads) * maximum(1, floor_div(heads, tp))


def page_bytes(block_size: Value, elements_per_token: Value, element_bytes: Value) -> Value:
    """One block of one layer: ``bs × e × β`` (full attention: e = 2 · kv_heads · head_size; MLA: e = kv_lora_rank
    + qk_rope_head_dim, no factor 2; `SRC_VLLM_SPEC`)."""
    return block_size * elements_per_token * element_bytes


def uniform_num_blocks(available: Value, page: Value, layers: Value) -> Value:
    """Blocks when every layer has the same spec: ``⌊⌊available / page⌋ / L⌋`` (`SRC_VLLM_BLOCKS`).

    Example (record 5: Llama-3.1-70B on 4 H100s, 32.06 GiB per GPU, 2 KV heads × 128 per GPU, 80 layers):
        >>> uniform_num_blocks(int(32.06 * 2**30), 2 * 16 * 2 * 128 * 2, 80)
        26263
    """
    return floor_div(floor_div(available, page), layers)


def hybrid_num_blocks(available: Value, page: Value, group_size: Value) -> Value:
    """Blocks of a hybrid model (pages equal, groups of ``group_size`` layers sharing tensors):
    ``⌊⌊available / page⌋ / group_size⌋`` (`SRC_VLLM_BLOCKS`)."""
    return floor_div(floor_div(available, page), group_size)


def kv_tokens(num_blocks: Value, groups: Value, block_size: Value) -> Value:
    """ "GPU KV cache size": ``⌊blocks / groups⌋ × bs`` tokens (`SRC_VLLM_BLOCKS`)."""
    return floor_div(num_blocks, groups) * block_size


def full_blocks_per_request(max_model_len: Value, block_size: Value) -> Value:
    """Blocks one request of ``max_model_len`` tokens takes in a full-attention layer: ``⌈len / bs⌉``."""
    return ceil_div(max_model_len, block_size)


def sliding_blocks_per_request(window: Value, batched_tokens: Value, max_model_len: Value, block_size: Value) -> Value:
    """Blocks in a sliding-window layer: ``⌈min(W − 1 + T, len) / bs⌉ + 1`` (`SRC_VLLM_SPEC`, SlidingWindowSpec).

    Example (gemma-2: window 4096, 8192 batched tokens, len 8192, block 16):
        >>> sliding_blocks_per_request(4096, 8192, 8192, 16)
        513
    """
    return ceil_div(minimum(window - 1 + batched_tokens, max_model_len), block_size) + 1


def max_concurrency(num_blocks: Value, blocks_per_request: Value) -> Value:
    """ "Maximum concurrency for … tokens per request": ``blocks / blocks per request`` (summed over the groups;
    `SRC_VLLM_BLOCKS`).

    Example (record 4: 25,633 blocks, 131,072 tokens per request):
        >>> round(max_concurrency(25633, full_blocks_per_request(131072, 16)), 2)
        3.13
    """
    return num_blocks / blocks_per_request


def needed_bytes(per_layer: Sequence[tuple[Value, Value]]) -> Value:
    """The KV cache of one ``max_model_len`` request: Σ over layers of blocks × page (`SRC_VLLM_REFUSE`)."""
    return total([blocks * page for blocks, page in per_layer])


def estimate_max_model_len(needed_at: Callable[[int], int], available: int, max_model_len: int) -> int:
    """The longest ``max_model_len`` whose `needed_bytes` fits ``available``: vLLM's binary search over
    [1, max_model_len]; 0 when not even one token fits (`SRC_VLLM_REFUSE`)."""
    if needed_at(1) > available:
        return 0
    left, right, result = 1, max_model_len, 1
    while left <= right:
        mid = (left + right) // 2
        if needed_at(mid) <= available:
            result, left = mid, mid + 1
        else:
            right = mid - 1
    return result


def mamba_block_size(mamba_page: Value, attention_page_per_token: Value) -> Value:
    """The attention block size vLLM raises for a hybrid Mamba model so one attention page holds a Mamba state:
    ``16 × ⌈state / (16 × attention bytes per token)⌉`` (`SRC_VLLM_MAMBA`)."""
    return MAMBA_BLOCK_ALIGNMENT * ceil_div(mamba_page, MAMBA_BLOCK_ALIGNMENT * attention_page_per_token)


# --- SGLang ------------------------------------------------------------------------------------------------------


def sglang_default_mem_fraction(tp: int) -> float:
    """SGLang 0.4.4's ``mem_fraction_static`` for a TP size (`SRC_SGLANG_DEFAULTS`).

    Example:
        >>> sglang_default_mem_fraction(1), sglang_default_mem_fraction(4), sglang_default_mem_fraction(8)
        (0.88, 0.85, 0.81)
    """
    return next(fraction for threshold, fraction in SGLANG_MEM_FRACTIONS if tp >= threshold)


def sglang_default_chunked_prefill(total_bytes: int) -> int:
    """SGLang 0.4.4's ``chunked_prefill_size``: 2048 below 25,000 MB of GPU memory, else 8192."""
    return 2048 if total_bytes < SGLANG_SMALL_GPU_BYTES else 8192


def sglang_rest_bytes(free_before: Value, weights: Value, fraction: Value) -> Value:
    """The KV pool's bytes: ``(free before − weights) − free before × (1 − f)`` (`SRC_SGLANG_BUDGET`).

    Example (record 12, in hundredths of a GiB: 78.81 free, 15.09 of weights, f = 0.88 → 54.26 GiB):
        >>> round(sglang_rest_bytes(7881, 1509, 0.88))
        5426
    """
    return (free_before - weights) - free_before * (1 - fraction)


def sglang_max_total_tokens(rest: Value, cell: Value, page: Value) -> Value:
    """``max_total_num_tokens = ⌊⌊rest / cell⌋ / page⌋ × page`` (cell: KV bytes of one token over all layers)."""
    return floor_div(trunc(floor_div(rest, cell)), page) * page


def sglang_pool_bytes(tokens: Value, page: Value, cell: Value) -> Value:
    """The KV buffers SGLang allocates: ``(tokens + page) × cell`` (``memory_pool.py`` L228-236: ``size + page_size``
    rows per layer); half of it is K and half V for ordinary attention, all of it one "KV size" for MLA.

    Example (record 12: 444,500 tokens of Llama-3.1-8B, 131,072 bytes per token; K size = half):
        >>> round(sglang_pool_bytes(444500, 1, 131072) / 2 / 2**30, 2)
        27.13
    """
    return (tokens + page) * cell


def sglang_max_num_reqs(tokens: Value, context_len: Value) -> Value:
    """``min(max(⌊tokens / context_len × 512⌋, 2048), 4096)`` (`SRC_SGLANG_POOL`)."""
    return minimum(maximum(trunc(tokens / context_len * 512), 2048), 4096)


def sglang_max_running_requests(tokens: Value, max_num_reqs: Value, given: int | None) -> Value:
    """``min(tokens // 2, max_num_reqs + 1)``, or ``--max-running-requests`` capped by the request pool."""
    if given is not None:
        return minimum(given, max_num_reqs + 1)
    return minimum(floor_div(tokens, 2), max_num_reqs + 1)


def sglang_max_req_len(context_len: Value, tokens: Value) -> Value:
    """The longest request SGLang accepts: ``min(context_len − 1, tokens − 1)`` (it caps, it does not refuse)."""
    return minimum(context_len - 1, tokens - 1)


# --- the plan ------------------------------------------------------------------------------------------------------


def _is_mla(config: Mapping[str, Any]) -> bool:
    text = _text_config(config)
    return isinstance(text.get("kv_lora_rank"), int) and text["kv_lora_rank"] > 0


def rotary_dim(config: Mapping[str, Any]) -> int:
    text = _text_config(config)
    if isinstance(text.get("qk_rope_head_dim"), int):
        return int(text["qk_rope_head_dim"])
    heads = text.get("num_attention_heads")
    head_dim = text.get("head_dim")
    if not isinstance(head_dim, int):
        hidden = text.get("hidden_size")
        head_dim = hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else 0
    factor = text.get("partial_rotary_factor", 1.0)
    return int(head_dim * (factor if isinstance(factor, (int, float)) else 1.0))


def hidden_size(config: Mapping[str, Any]) -> int:
    hidden = _text_config(config).get("hidden_size")
    return hidden if isinstance(hidden, int) and hidden > 0 else 0


def _vocab(config: Mapping[str, Any]) -> int:
    vocab = _text_config(config).get("vocab_size", config.get("vocab_size"))
    return vocab if isinstance(vocab, int) and vocab > 0 else 0


def pp_layers(num_layers: int, pp: int) -> list[tuple[int, ...]]:
    """The layers of each pipeline rank as vLLM splits them (``distributed/utils.py get_pp_indices``): ``L // pp``
    each, the remainder one each to the ranks before the last.

    Example:
        >>> [len(stage) for stage in pp_layers(61, 4)]
        [15, 15, 16, 15]
    """
    sizes = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        sizes[-i] += 1
    out, start = [], 0
    for size in sizes:
        out.append(tuple(range(start, start + size)))
        start += size
    return out


def vllm_weights_bytes(
    inventory: ParameterInventory, scheme: QuantScheme, stage: PipelineStage, tp: int, rope_bytes: int
) -> tuple[int, int]:
    """``(weights, vocab padding)`` one GPU of pipeline ``stage`` holds, as vLLM loads them: every ≥ 2-D tensor split
    ``tp`` ways (`weights_per_gpu_bytes`), embeddings and LM head padded to a multiple of 64 rows, and the RoPE
    cache of a rank holding layers (`SRC_VLLM_WEIGHTS`)."""
    if stage.holds_embeddings and stage.holds_head:  # one pipeline rank: the whole model
        local = inventory
    else:  # the stage's layers (and the embeddings / head it holds); any pp > 1 selects by `stage`
        local = local_inventory(inventory, TrainingSetup(parallel=ParallelSettings(pp=2)), stage)
    weights: int = weights_per_gpu_bytes(local, scheme, tp)  # type: ignore[assignment]
    padding = 0
    model_is_16bit = is_16bit_model(inventory)
    for param in local.parameters:
        if param.is_embedding and len(param.shape) == 2:
            rows = param.shape[0]
            data, meta = tensor_bytes(param, scheme, model_is_16bit=model_is_16bit)
            padded = data // rows * vllm_padded_vocab(rows)
            padding += -(-(padded + meta) // tp) - (-(-(data + meta) // tp))
    return weights + padding + (rope_bytes if stage.layers else 0), padding


def plan_engine(
    config: Mapping[str, Any],
    inventory: ParameterInventory,
    profile: InferenceProfile,
    scheme: QuantScheme,
    setup: EngineSetup,
    *,
    cuda_context_bytes: int,
    suggest: bool = True,
) -> EngineEstimate:
    """The engine's start-up accounting for ``setup`` on ``setup.gpu``, from the model's measured ``profile`` (its KV
    layout, and a forward traced at the engine's batched-token budget, `engine_batched_tokens`).

    Raises:
        InvalidSetupError: a model the engine's accounting here does not cover (encoder-decoder; SGLang with
            recurrent layers), or settings that cannot exist.
    """
    gpu = setup.gpu
    if gpu is None:
        raise InvalidSetupError(f"--engine {setup.engine} needs a GPU: pass --gpu NAME or --gpu-memory SIZE")
    if any(layer.kind == "cross" for layer in profile.layers):
        raise InvalidSetupError(
            f"encoder-decoder models are not modelled for --engine {setup.engine}; use --engine transformers"
        )
    pp = setup.pp
    num_layers = max(len(inventory.layer_names), 1)
    if pp > num_layers:
        raise InvalidSetupError(f"--pipeline-parallel-size {pp} is more than the model's {num_layers} layers")
    mla = _is_mla(config)
    dtype_bytes = 1 if setup.kv_cache_dtype == "fp8" else None
    kv_dtype = "fp8" if dtype_bytes else _short(profile.dtype)
    logits_w = 4 if profile.dtype == "float32" else 2
    vocab = _vocab(config)
    model_len = vllm_default_max_model_len(config)
    notes: list[str] = []
    if setup.engine == "vllm":
        return _plan_vllm(
            config,
            inventory,
            profile,
            scheme,
            setup,
            cuda_context_bytes,
            mla,
            dtype_bytes,
            kv_dtype,
            logits_w,
            vocab,
            model_len,
            notes,
            suggest,
        )
    return _plan_sglang(
        config,
        inventory,
        profile,
        scheme,
        setup,
        cuda_context_bytes,
        mla,
        dtype_bytes,
        kv_dtype,
        logits_w,
        model_len,
        notes,
        suggest,
    )


def engine_batched_tokens(setup: EngineSetup, total_bytes: int, gpu_name: str) -> int:
    """The tokens of the engine's largest forward step: vLLM ``max_num_batched_tokens``, SGLang
    ``chunked_prefill_size``, given or by default (what `plan_engine` needs traced)."""
    if setup.engine == "sglang":
        return setup.chunked_prefill_size or sglang_default_chunked_prefill(total_bytes)
    return setup.max_num_batched_tokens or vllm_default_batch(total_bytes, gpu_name)[0]


def _short(torch_name: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(torch_name, torch_name)


def _stages(num_layers: int, pp: int) -> list[PipelineStage]:
    layers = pp_layers(num_layers, pp)
    return [PipelineStage(k, layers[k], k == 0, k == pp - 1) for k in range(pp)]


def _layer_index(layer: KvLayer) -> int | None:
    return int(layer.name) if layer.name.isdigit() else None


def _kv_groups(
    layers: Sequence[KvLayer],
    states: Sequence[int],
    *,
    tp: int,
    block: int,
    dtype_bytes: int | None,
    mla: bool,
    max_model_len: int,
    batched_tokens: int,
) -> tuple[list[EngineKvGroup], int]:
    """The per-kind specs of one GPU's layers and the block size (raised for Mamba pages)."""
    kinds: dict[tuple[Any, ...], list[KvLayer]] = {}
    for layer in layers:
        beta = dtype_bytes or layer.element_bytes
        e = kv_elements_per_gpu(layer.elements_per_token, layer.heads, tp)
        kind = "sliding" if layer.kind == "sliding" else ("mla" if mla else "full")
        kinds.setdefault((kind, layer.window_tokens if kind == "sliding" else None, e, beta), []).append(layer)
    if states:
        attention_per_token = max((e * beta for (_, _, e, beta) in kinds), default=0)
        if attention_per_token:
            block = max(block, mamba_block_size(max(states), attention_per_token))  # type: ignore[arg-type]
    groups: list[EngineKvGroup] = []
    for (kind, window, e, beta), members in kinds.items():
        if kind == "sliding":
            blocks = sliding_blocks_per_request(window, batched_tokens, max_model_len, block)
        else:
            blocks = full_blocks_per_request(max_model_len, block)
        groups.append(
            EngineKvGroup(kind, len(members), e, beta, page_bytes(block, e, beta), blocks, window_tokens=window)  # type: ignore[arg-type]
        )
    if states:
        page = max((g.page_bytes for g in groups), default=max(states))
        groups.append(EngineKvGroup("mamba", len(states), 0, 1, max(page, max(states)), 1, state_bytes=max(states)))
    return groups, block


def _grouping(groups: list[EngineKvGroup]) -> tuple[list[EngineKvGroup], int, int]:
    """vLLM's grouping: one group of all layers when uniform; else ``group_size = min`` layers per kind, each kind
    cut into ``⌈n / group_size⌉`` groups. Returns the groups (with their counts), the group size and the total."""
    if len(groups) == 1:
        return [replace(groups[0], groups=1)], groups[0].layers, 1
    size = min(g.layers for g in groups)
    out = [replace(g, groups=-(-g.layers // size)) for g in groups]
    return out, size, sum(g.groups for g in out)


def _capacity(groups: list[EngineKvGroup], available: int) -> tuple[list[EngineKvGroup], str, int, int, int, int]:
    """``(groups, grouping, group_size, number of groups, num_blocks, blocks per request)`` for ``available`` bytes,
    as ``get_kv_cache_groups`` (kv_cache_utils.py L1150-1187) chooses: ``uniform`` (one spec), ``uniform_type`` (one
    kind of several shapes: a block spans every layer), ``hybrid`` (several kinds of one page size)."""
    available = max(available, 0)
    pages = {g.page_bytes for g in groups}
    kinds = {(g.kind, g.window_tokens) for g in groups}
    if len(groups) == 1:
        grouped, size, count = _grouping(groups)
        blocks = uniform_num_blocks(available, grouped[0].page_bytes, grouped[0].layers)
        return grouped, "uniform", size, count, int(blocks), grouped[0].blocks_per_request
    if len(kinds) == 1:
        blocks = available // sum(g.page_bytes * g.layers for g in groups)
        layers = sum(g.layers for g in groups)
        return [replace(g, groups=1) for g in groups], "uniform_type", layers, 1, blocks, groups[0].blocks_per_request
    if len(pages) != 1:
        raise InvalidSetupError(
            f"vLLM {VLLM_VERSION} cannot allocate this model's KV cache: its layers differ in kind and in page size "
            "(v1/core/kv_cache_utils.py get_kv_cache_groups raises NotImplementedError); use --engine transformers"
        )
    grouped, size, count = _grouping(groups)
    blocks = hybrid_num_blocks(available, grouped[0].page_bytes, size)
    per_request = sum(g.blocks_per_request * g.groups for g in grouped)
    return grouped, "hybrid", size, count, int(blocks), int(per_request)


def _needed(groups: Sequence[EngineKvGroup]) -> int:
    return int(needed_bytes([(g.blocks_per_request, g.page_bytes) for g in groups for _ in range(g.layers)]))


def _plan_vllm(
    config: Mapping[str, Any],
    inventory: ParameterInventory,
    profile: InferenceProfile,
    scheme: QuantScheme,
    setup: EngineSetup,
    cuda_context: int,
    mla: bool,
    dtype_bytes: int | None,
    kv_dtype: str,
    logits_w: int,
    vocab: int,
    model_len: int | None,
    notes: list[str],
    suggest: bool,
) -> EngineEstimate:
    gpu = setup.gpu
    assert gpu is not None
    tp, pp = setup.tp, setup.pp
    total_bytes = gpu.usable_bytes
    util = setup.gpu_memory_utilization if setup.gpu_memory_utilization is not None else VLLM_GPU_MEMORY_UTILIZATION
    default_tokens, default_seqs = vllm_default_batch(total_bytes, gpu.name)
    batched = setup.max_num_batched_tokens or default_tokens
    seqs = setup.max_num_seqs or default_seqs
    if batched < seqs:
        raise InvalidSetupError(
            f"max_num_batched_tokens {batched:,} is below max_num_seqs {seqs:,}, which vLLM refuses; pass "
            f"--max-num-batched-tokens {seqs} or more, or a smaller --max-num-seqs"
        )
    if setup.max_model_len is not None:
        max_len, len_source = setup.max_model_len, "--max-model-len"
    elif model_len is not None:
        max_len, len_source = model_len, "the model's, as vLLM derives it from the config"
    else:
        raise InvalidSetupError("the config states no context length; pass --max-model-len")
    if model_len is not None and max_len > model_len:
        notes.append(
            f"--max-model-len {max_len:,} is beyond the model's {model_len:,}; vLLM refuses it unless "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
        )
    if setup.block_size is not None:
        block = setup.block_size
    elif mla and _is_rocm(gpu.name):  # ROCm keeps the default block for MLA (docs/engines.md §2.1, record 10)
        block = VLLM_BLOCK_SIZE
    elif mla:
        block = VLLM_MLA_BLOCK_SIZE_BLACKWELL if _is_blackwell(gpu.name) else VLLM_MLA_BLOCK_SIZE
    else:
        block = VLLM_BLOCK_SIZE
    requested: int = vllm_requested_bytes(total_bytes, util)  # type: ignore[assignment]
    rope: int = vllm_rope_cache_bytes(model_len or max_len, rotary_dim(config), logits_w)  # type: ignore[assignment]
    num_reqs = min(seqs, batched)
    sampler: int = vllm_sampler_bytes(num_reqs, vocab, logits_w)  # type: ignore[assignment]
    hidden = hidden_size(config)
    activation: int = vllm_activation_peak_bytes(  # type: ignore[assignment]
        profile.activation_peak_bytes, batched, num_reqs, hidden, logits_w, sampler
    )
    non_torch = NON_TORCH_BYTES
    state_by_layer = {name: size for name, size in profile.state_layers}
    best: tuple[Any, ...] | None = None
    for stage in _stages(num_layers=max(len(inventory.layer_names), 1), pp=pp):
        held = set(stage.layers)
        layers = [ly for ly in profile.layers if pp == 1 or _layer_index(ly) in held]
        states = [size for name, size in state_by_layer.items() if pp == 1 or (name.isdigit() and int(name) in held)]
        weights, padding = vllm_weights_bytes(inventory, scheme, stage, tp, rope)
        available: int = vllm_available_kv_bytes(requested, weights, activation, non_torch)  # type: ignore[assignment]
        specs, stage_block = _kv_groups(
            layers,
            states,
            tp=tp,
            block=block,
            dtype_bytes=dtype_bytes,
            mla=mla,
            max_model_len=max_len,
            batched_tokens=batched,
        )
        if not specs:
            raise InvalidSetupError("the model's cache holds no layer vLLM allocates a KV cache for; report it")
        grouped, grouping, size, count, blocks, per_request = _capacity(specs, available)
        if best is None or blocks < best[6]:
            best = (
                stage,
                weights,
                padding,
                available,
                grouped,
                size,
                blocks,
                count,
                per_request,
                stage_block,
                grouping,
            )
    assert best is not None
    stage, weights, padding, available, grouped, size, blocks, count, per_request, block, grouping = best
    tokens: int = kv_tokens(blocks, count, block)  # type: ignore[assignment]
    concurrency: float = max_concurrency(blocks, per_request) if per_request else 0.0  # type: ignore[assignment]
    needed = _needed(grouped)
    refusal = None
    largest = None
    if available <= 0:
        refusal = (
            "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing "
            "the engine."
        )
    elif needed > available:

        def needed_at(length: int) -> int:
            specs_at, _ = _kv_groups(
                [ly for ly in profile.layers if pp == 1 or _layer_index(ly) in set(stage.layers)],
                [s for n, s in state_by_layer.items() if pp == 1 or (n.isdigit() and int(n) in set(stage.layers))],
                tp=tp,
                block=block,
                dtype_bytes=dtype_bytes,
                mla=mla,
                max_model_len=length,
                batched_tokens=batched,
            )
            return _needed(specs_at)

        largest = estimate_max_model_len(needed_at, available, max_len)
        refusal = (
            f"To serve at least one request with the models's max seq len ({max_len}), ({needed / GIB:.2f} GiB KV "
            f"cache is needed, which is larger than the available KV cache memory ({available / GIB:.2f} GiB). "
            f"Based on the available memory, the estimated maximum model length is {largest}. Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
        )
    starts = refusal is None
    meets = None if setup.min_concurrency is None else starts and concurrency >= setup.min_concurrency
    headroom = total_bytes - requested - cuda_context
    if tp > 1:
        notes.append(
            "the activation peak is that of one unsplit GPU (tensor parallelism splits part of it), so the KV budget "
            "is a lower bound"
        )
    if pp > 1:
        notes.append(f"the tightest pipeline rank is {stage.index} of {pp} (vLLM takes the fewest blocks of any rank)")
    if state_by_layer:
        notes.append(
            "Mamba / linear-attention states are counted whole on every GPU (vLLM splits their heads over tensor "
            "parallelism); the hybrid block sizing follows vLLM's source but no public log validates it"
            if tp > 1
            else "the hybrid Mamba / linear-attention block sizing follows vLLM's source; no public log validates it"
        )
    if any(g.kind == "sliding" for g in grouped):
        notes.append("sliding-window groups follow vLLM's source; no public log with their capacity lines was found")
    if headroom < 0:
        notes.append(
            f"gpu_memory_utilization {util} leaves {headroom / GIB:,.2f} GiB for the CUDA context; vLLM refuses when "
            "the free memory at start-up is below what it requests"
        )
    if not setup.enforce_eager:
        notes.append(
            f"CUDA graphs are captured after the KV cache in vLLM {VLLM_VERSION}, out of the "
            f"{(total_bytes - requested) / GIB:,.2f} GiB gpu_memory_utilization leaves (with the CUDA context); "
            "vLLM ≥ 0.21 subtracts their estimate from the KV budget"
        )
    per_token = sum(g.layers * g.elements_per_token * g.element_bytes for g in grouped)
    # vLLM allocates group_size tensors of num_blocks pages (one per layer when uniform; kv_cache_utils.py L1044-1060)
    if grouping != "uniform_type":
        pool = blocks * grouped[0].page_bytes * size
    else:
        pool = blocks * sum(g.page_bytes * g.layers for g in grouped)
    estimate = EngineEstimate(
        setup=setup,
        engine="vllm",
        engine_version=VLLM_VERSION,
        gpu=gpu,
        tp=tp,
        pp=pp,
        pp_rank=stage.index,
        total_bytes=total_bytes,
        requested_bytes=requested,
        weights_bytes=weights,
        rope_cache_bytes=rope if stage.layers else 0,
        vocab_padding_bytes=padding,
        activation_trace_bytes=profile.activation_peak_bytes,
        sampler_bytes=sampler,
        activation_peak_bytes=activation,
        non_torch_bytes=non_torch,
        cudagraph_bytes=0,
        kv_budget_bytes=available,
        kv_dtype=kv_dtype,
        block_size=block,
        kv_groups=tuple(grouped),
        group_size=size,
        num_blocks=blocks,
        kv_tokens=tokens,
        max_model_len=max_len,
        max_model_len_source=len_source,
        max_num_seqs=seqs,
        batched_tokens=batched,
        blocks_per_request=per_request,
        max_concurrency=concurrency,
        kv_needed_bytes=needed,
        starts=starts,
        refusal=refusal,
        largest_max_model_len=largest,
        vocab_size=vocab,
        logits_element_bytes=logits_w,
        headroom_bytes=headroom,
        cuda_context_bytes=cuda_context,
        gpu_memory_utilization=util,
        meets_min_concurrency=meets,
        notes=tuple(notes),
        kv_bytes_per_token=per_token,
        pool_bytes=pool,
        grouping=grouping,
        num_groups=count,
    )
    if suggest and (not starts or meets is False):
        estimate = replace(estimate, fixes=tuple(_fixes(estimate, config, inventory, profile, scheme)))
    return estimate


def _plan_sglang(
    config: Mapping[str, Any],
    inventory: ParameterInventory,
    profile: InferenceProfile,
    scheme: QuantScheme,
    setup: EngineSetup,
    cuda_context: int,
    mla: bool,
    dtype_bytes: int | None,
    kv_dtype: str,
    logits_w: int,
    model_len: int | None,
    notes: list[str],
    suggest: bool,
) -> EngineEstimate:
    gpu = setup.gpu
    assert gpu is not None
    tp = setup.tp
    if setup.pp > 1:
        raise InvalidSetupError(f"SGLang {SGLANG_VERSION} has no pipeline parallelism; drop --pipeline-parallel-size")
    if profile.state_layers:
        raise InvalidSetupError(
            f"SGLang {SGLANG_VERSION}'s pool for Mamba / linear-attention layers is not modelled; use --engine vllm"
        )
    total_bytes = gpu.usable_bytes
    fraction = setup.mem_fraction_static if setup.mem_fraction_static is not None else sglang_default_mem_fraction(tp)
    chunk = setup.chunked_prefill_size or sglang_default_chunked_prefill(total_bytes)
    page = setup.page_size or 1
    if setup.context_length is not None:
        context, source = setup.context_length, "--context-length"
    elif model_len is not None:
        context, source = model_len, "the model's context length"
    else:
        raise InvalidSetupError("the config states no context length; pass --context-length")
    free_before = total_bytes - cuda_context
    stage = _stages(max(len(inventory.layer_names), 1), 1)[0]
    # SGLang's layers are vLLM's (srt/layers: the same padded vocabulary and RoPE cos_sin_cache buffer).
    rope: int = vllm_rope_cache_bytes(model_len or context, rotary_dim(config), logits_w)  # type: ignore[assignment]
    weights, padding = vllm_weights_bytes(inventory, scheme, stage, tp, rope)
    rest: float = sglang_rest_bytes(free_before, weights, fraction)  # type: ignore[assignment]
    # SGLang 0.4.x sizes every layer as full attention (sliding windows get their own pool only in 0.5).
    specs = [
        EngineKvGroup(
            "mla" if mla else "full",
            1,
            int(kv_elements_per_gpu(layer.elements_per_token, layer.heads, tp)),
            dtype_bytes or layer.element_bytes,
            0,
            0,
        )
        for layer in profile.layers
    ]
    cell = sum(g.elements_per_token * g.element_bytes for g in specs)
    tokens: int = sglang_max_total_tokens(rest, cell, page) if rest > 0 and cell else 0  # type: ignore[assignment]
    reqs: int = sglang_max_num_reqs(tokens, context)  # type: ignore[assignment]
    running: int = sglang_max_running_requests(tokens, reqs, setup.max_running_requests)  # type: ignore[assignment]
    max_req: int = sglang_max_req_len(context, tokens)  # type: ignore[assignment]
    concurrency: float = minimum(tokens / context, running)  # type: ignore[assignment]
    starts = tokens > 0
    refusal = None if starts else "Not enough memory. Please try to increase --mem-fraction-static."
    meets = None if setup.min_concurrency is None else starts and concurrency >= setup.min_concurrency
    grouped = _merge_cells(specs, page, context)
    activation = profile.activation_peak_bytes + profile.logits_bytes
    headroom = int(free_before * (1 - fraction)) - activation
    if headroom < 0:
        notes.append(
            f"the {chunk:,}-token prefill's activations ({activation / GIB:,.2f} GiB, traced) exceed the "
            f"{free_before * (1 - fraction) / GIB:,.2f} GiB mem_fraction_static leaves: it may run out of memory at "
            "run time; lower --mem-fraction-static or --chunked-prefill-size"
        )
    if starts and max_req < context - 1:
        notes.append(
            f"one request of the full context ({context:,} tokens) does not fit: SGLang caps requests at "
            f"{max_req:,} tokens (it starts anyway)"
        )
    if any(layer.kind == "sliding" for layer in profile.layers):
        notes.append(f"SGLang {SGLANG_VERSION} caches sliding-window layers in full (0.5 gives them their own pool)")
    estimate = EngineEstimate(
        setup=setup,
        engine="sglang",
        engine_version=SGLANG_VERSION,
        gpu=gpu,
        tp=tp,
        pp=1,
        pp_rank=0,
        total_bytes=total_bytes,
        requested_bytes=free_before,
        weights_bytes=weights,
        rope_cache_bytes=rope,
        vocab_padding_bytes=padding,
        activation_trace_bytes=profile.activation_peak_bytes,
        sampler_bytes=0,
        activation_peak_bytes=activation,
        non_torch_bytes=0,
        cudagraph_bytes=0,
        kv_budget_bytes=int(rest),
        kv_dtype=kv_dtype,
        block_size=page,
        kv_groups=tuple(grouped),
        group_size=len(specs),
        num_blocks=tokens // page,
        kv_tokens=tokens,
        max_model_len=context,
        max_model_len_source=source,
        max_num_seqs=running,
        batched_tokens=chunk,
        blocks_per_request=-(-context // page),
        max_concurrency=concurrency,
        kv_needed_bytes=cell * context,
        starts=starts,
        refusal=refusal,
        largest_max_model_len=max_req + 1 if starts and max_req < context - 1 else None,
        vocab_size=_vocab(config),
        headroom_bytes=headroom,
        cuda_context_bytes=cuda_context,
        mem_fraction_static=fraction,
        max_running_requests=running,
        max_req_len=max_req,
        meets_min_concurrency=meets,
        notes=tuple(notes),
        kv_bytes_per_token=cell,
        pool_bytes=int(sglang_pool_bytes(tokens, page, cell)) if starts else 0,
    )
    if suggest and (not starts or meets is False):
        estimate = replace(estimate, fixes=tuple(_fixes(estimate, config, inventory, profile, scheme)))
    return estimate


def _merge_cells(specs: list[EngineKvGroup], page: int, context: int) -> list[EngineKvGroup]:
    merged: dict[tuple[str, int, int], int] = {}
    for g in specs:
        key = (g.kind, g.elements_per_token, g.element_bytes)
        merged[key] = merged.get(key, 0) + 1
    return [
        EngineKvGroup(kind, n, e, beta, page * e * beta, -(-context // page)) for (kind, e, beta), n in merged.items()
    ]


def _is_rocm(name: str) -> bool:
    lowered = name.lower()
    return "amd" in lowered or "instinct" in lowered


def _is_blackwell(name: str) -> bool:
    lowered = name.lower()
    return any(key in lowered for key in BLACKWELL_GPUS)


def _fixes(
    estimate: EngineEstimate,
    config: Mapping[str, Any],
    inventory: ParameterInventory,
    profile: InferenceProfile,
    scheme: QuantScheme,
) -> list[str]:
    """Settings that would make the engine start (and meet ``min_concurrency``), each checked by replanning."""
    setup = estimate.setup
    vllm = estimate.engine == "vllm"
    len_flag = "--max-model-len" if vllm else "--context-length"
    tp_flag = "--tensor-parallel-size"
    out: list[str] = []

    def works(**changes: Any) -> EngineEstimate | None:
        try:
            alt = plan_engine(
                config,
                inventory,
                profile,
                scheme,
                replace(setup, **changes),
                cuda_context_bytes=estimate.cuda_context_bytes,
                suggest=False,
            )
        except InvalidSetupError:
            return None
        return alt if alt.fits else None

    if setup.min_concurrency is not None and estimate.starts:
        # the longest max_model_len that still holds min_concurrency requests
        n = setup.min_concurrency
        low, high, found = 1, estimate.max_model_len, None
        while low <= high:
            mid = (low + high) // 2
            alt = works(**{"max_model_len" if vllm else "context_length": mid})
            if alt is not None:
                found, low = mid, mid + 1
            else:
                high = mid - 1
        if found:
            out.append(f"{len_flag} {found} (holds {n} concurrent requests of that length)")
    elif vllm and estimate.largest_max_model_len:
        out.append(f"{len_flag} {estimate.largest_max_model_len} (the longest that fits, vLLM's own estimate)")
    if setup.kv_cache_dtype != "fp8":
        alt = works(kv_cache_dtype="fp8")
        if alt is not None:
            out.append(f"--kv-cache-dtype fp8 (holds {alt.kv_tokens:,} tokens, {alt.max_concurrency:.2f}x)")
    heads = _text_config(config).get("num_attention_heads")
    for tp in (estimate.tp * 2, estimate.tp * 4, estimate.tp * 8):
        if tp > 8 or (isinstance(heads, int) and heads % tp):
            continue
        alt = works(tensor_parallel_size=tp)
        if alt is not None:
            out.append(f"{tp_flag} {tp} ({alt.kv_tokens:,} tokens, {alt.max_concurrency:.2f}x per replica)")
            break
    if vllm and (estimate.gpu_memory_utilization or 0) < 0.95:
        alt = works(gpu_memory_utilization=0.95)
        if alt is not None:
            out.append(f"--gpu-memory-utilization 0.95 ({alt.kv_tokens:,} tokens, {alt.max_concurrency:.2f}x)")
    return out
