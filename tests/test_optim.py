"""Issue 13, optimizer and precision: torch AdamW's step temporaries, the optimizer in backward, bitsandbytes paged
optimizers and autocast on fp32 weights (``--precision amp-*``).

Every expected number is computed here by hand from the rule docs/techniques.md cites for it (§4.1 torch
``_multi_tensor_adam`` / ``_single_tensor_adam``; §4.3 torchtune ``register_optim_in_bwd_hooks``; §4.4 bitsandbytes
``get_state_buffer``; §5 aten ``cached_cast``) or measured independently (a published peak, a real CPU run).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from hfmem.cli import cli
from hfmem.memory.peak import phase_candidates, plan_training
from hfmem.memory.states import compute_training
from hfmem.types import (
    OverheadSettings,
    ParallelSettings,
    ParameterInfo,
    ParameterInventory,
    TrainingSetup,
)

#: No CUDA context, no allocator slack: the allocated bytes a measurement of ``max_memory_allocated`` sees.
BARE = OverheadSettings(cuda_context_bytes=0, fragmentation=0.0)


def small_model() -> ParameterInventory:
    """Tensors on both sides of bitsandbytes' thresholds: 128,000 elements (≥ 1e5: paged; the largest), 6,400
    (≥ 4096: 8-bit, not paged) and 64 (fp32 states)."""
    params = [
        ParameterInfo("embed.weight", (1000, 128), "float32", is_embedding=True),
        ParameterInfo("layers.0.proj.weight", (100, 64), "float32", is_linear=True, layer_index=0),
        ParameterInfo("layers.0.norm.weight", (64,), "float32", layer_index=0),
    ]
    return ParameterInventory.from_parameters(
        params,
        buffer_params=0,
        largest_module=("embed", 128_000),
        module_params=[("embed", 128_000), ("layers", 6_464)],
        architecture=None,
        model_type=None,
        layer_names=["layers.0"],
    )


SMALL = 128_000 + 6_400 + 64
SMALL_LARGEST = 128_000


def phases(inventory: ParameterInventory, setup: TrainingSetup) -> dict[str, dict[str, int]]:
    states = compute_training(inventory, setup).stages[0]
    return {
        p.peak_phase: {"total": p.total_bytes, **{i.key: i.size_bytes for i in p.overhead_items}}  # type: ignore[misc]
        for p in phase_candidates(inventory, setup, states, None)
    }


# --- torch AdamW's step temporaries -------------------------------------------------------------------------------


def test_a_7b_full_finetune_peaks_at_the_foreach_step_at_five_times_the_bf16_parameters() -> None:
    # fms-acceleration scripts/benchmarks/refs/a100_80gb.csv@24bdadb, Mistral-7B full fine-tune in pure bf16 on one
    # A100 (torch 2.4.1, transformers 4.48.1 whose default optim adamw_torch is foreach): peak allocated
    # 72,434,837,504 B at batch 4 and 72,435,230,720 B at batch 8 (independent of the batch: the step).
    # Rule (docs/techniques.md §4.1): weights + grads + 2 states + _foreach_sqrt's state-sized list = 5 × 2 B × P.
    params = 7_241_732_096
    setup = TrainingSetup(precision="bf16", zero_stages=(0,), overheads=BARE)
    plan = plan_training(ParameterInventory.from_count(params), setup, None)
    stage = plan.stages[0]
    assert stage.peak_phase == "optimizer_step"
    # the report says which phase peaks and why
    why = "ZeRO-0 peaks at the optimizer step, where the activations are gone but the AdamW foreach step temporary"
    assert any(note.startswith(why) and "--optimizer-impl fused" in note for note in plan.notes)
    assert {i.key: i.size_bytes for i in stage.overhead_items} == {"adamw_foreach_temporary": 2 * params}
    assert stage.total_bytes == 5 * 2 * params == 72_417_320_960
    measured = 72_434_837_504
    assert abs(stage.total_bytes - measured) / measured < 0.001  # 17.5 MB apart (0.024 %)


def test_fsdp_steps_shards_so_the_foreach_temporary_halves_on_two_gpus() -> None:
    # The same table's 2-GPU FSDP row: 36,225,939,968 B. Each GPU's optimizer steps ⌈P/2⌉ elements of each state.
    params = 7_241_732_096
    setup = TrainingSetup(
        precision="bf16", gpus_per_node=2, overheads=BARE, parallel=ParallelSettings(fsdp="full_shard")
    )
    step = phases(ParameterInventory.from_count(params), setup)["optimizer_step"]
    half = -(-params // 2)
    assert step["adamw_foreach_temporary"] == 2 * half
    assert step["total"] == 5 * 2 * half
    assert abs(step["total"] - 36_225_939_968) / 36_225_939_968 < 0.001


@pytest.mark.parametrize(
    ("impl", "expected"),
    [
        ("foreach", {"adamw_foreach_temporary": 4 * SMALL}),  # one fp32 state per element of the group
        ("fused", {}),  # torch._fused_adamw_ updates in place
        ("loop", {"adamw_loop_temporary": 2 * 4 * SMALL_LARGEST}),  # sqrt() and the division of the largest tensor
    ],
)
def test_each_impl_allocates_its_own_step_temporary(impl: str, expected: dict[str, int]) -> None:
    setup = TrainingSetup(precision="fp32", zero_stages=(0,), optimizer_impl=impl, overheads=BARE)  # type: ignore[arg-type]
    by_phase = phases(small_model(), setup)
    states = 16 * SMALL  # fp32 weights, gradients and two AdamW states
    assert by_phase["optimizer_step"] == {"total": states + sum(expected.values()), **expected}
    # No accumulation: the 4-byte gradients are freed after each step, absent in forward and as backward starts.
    assert by_phase["forward"] == by_phase["backward"] == {"total": states - 4 * SMALL}


def test_deepspeed_zero_steps_its_own_optimizer_so_no_torch_temporary() -> None:
    setup = TrainingSetup(precision="fp32", zero_stages=(1, 2, 3), gpus_per_node=2, overheads=BARE)
    for stage in (1, 2, 3):
        step = phases(small_model(), replace(setup, zero_stages=(stage,)))["optimizer_step"]
        assert not {"adamw_foreach_temporary", "adamw_loop_temporary"} & set(step)


# --- optimizer in backward ----------------------------------------------------------------------------------------


def test_optimizer_in_backward_keeps_one_gradient_and_steps_in_backward() -> None:
    setup = TrainingSetup(precision="fp32", optimizer_in_backward=True, overheads=BARE)
    states = compute_training(small_model(), setup).stages
    assert [s.zero_stage for s in states] == [0]  # DeepSpeed's ZeRO stages are not planned with it
    assert states[0].gradients_bytes == 4 * SMALL_LARGEST  # the largest tensor's fp32 gradient
    assert states[0].optimizer_states_bytes == 8 * SMALL  # one optimizer per parameter: the same states
    by_phase = phases(small_model(), setup)
    base = 4 * SMALL + 4 * SMALL_LARGEST + 8 * SMALL
    # foreach on a one-tensor list: the largest parameter's state size, while backward runs
    assert by_phase["backward"] == {"total": base + 4 * SMALL_LARGEST, "adamw_foreach_temporary": 4 * SMALL_LARGEST}
    assert by_phase["optimizer_step"] == {"total": base}  # no separate step
    notes = plan_training(small_model(), setup, None).notes
    assert any("no separate step peak" in note for note in notes)


def test_optimizer_in_backward_under_fsdp_keeps_one_gradient_shard() -> None:
    setup = TrainingSetup(
        precision="fp32", gpus_per_node=2, optimizer_in_backward=True, parallel=ParallelSettings(fsdp="full_shard")
    )
    stage = compute_training(small_model(), setup).stages[0]
    assert stage.gradients_bytes == 4 * (SMALL_LARGEST // 2)
    assert stage.optimizer_states_bytes == 8 * -(-SMALL // 2)


# --- bitsandbytes paged optimizers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer", "states", "paged"),
    [
        # 8-bit: 2 × (n + 4 B × ⌈n/256⌉) per tensor ≥ 4096 elements, 8 B per element below; the 128,000-element
        # tensor's two uint8 states are paged (≥ 1e5 elements), its absmax is not.
        ("paged-adamw-8bit", 2 * (128_000 + 4 * 500) + 2 * (6_400 + 4 * 25) + 8 * 64, 2 * 128_000),
        # 32-bit: fp32 states whatever the parameter dtype, 8 B per element; ≥ 1e5 elements paged.
        ("paged-adamw", 8 * SMALL, 8 * 128_000),
    ],
)
def test_paged_states_are_their_own_line_outside_the_allocator(optimizer: str, states: int, paged: int) -> None:
    setup = TrainingSetup(precision="bf16", zero_stages=(0,), optimizer=optimizer)  # type: ignore[arg-type]
    stage = plan_training(small_model(), setup, None).stages[0]
    assert (stage.optimizer_states_bytes, stage.paged_states_bytes) == (states, paged)
    # 10 % allocator slack on what the allocator holds (bf16 weights + grads + unpaged states), not on managed memory
    allocated = 2 * SMALL + 2 * SMALL + states - paged
    keyed = {i.key: i.size_bytes for i in stage.overhead_items}
    assert keyed["allocator_fragmentation"] == int(allocated * 0.10)
    assert stage.allocator_bytes == allocated + keyed["allocator_fragmentation"]
    assert stage.total_bytes == stage.allocator_bytes + paged + keyed["cuda_context"]


# --- autocast on fp32 weights -------------------------------------------------------------------------------------

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
}


@pytest.fixture
def tiny_llama(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    return folder


def test_amp_traces_what_a_real_autocast_forward_saves(tiny_llama: Path) -> None:
    # An independent measurement: the same model run for real on the CPU under torch.autocast("cpu", bf16), every
    # tensor autograd saves counted once by storage, parameters excluded. For Llama with SDPA the CPU and CUDA lists
    # agree on every op the model runs (linear/matmul 16-bit; RMSNorm upcasts itself; no softmax or layer_norm).
    import torch
    import transformers

    import hfmem

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k != "architectures"})
    model = transformers.LlamaForCausalLM._from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        seen.setdefault(tensor.untyped_storage()._cdata, tensor.untyped_storage().nbytes())
        return tensor

    ids = torch.zeros((2, 128), dtype=torch.long)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    measured = sum(size for key, size in seen.items() if key not in params)

    setup = TrainingSetup(precision="amp-bf16", zero_stages=(0,), batch_size=2, seq_len=128, dropout=0.0)
    profile = hfmem.estimate(str(tiny_llama), setup=setup, training=True, cache=False).training.profile
    assert profile is not None
    assert sum(layer.saved_bytes for layer in profile.layers) + profile.other_bytes + profile.logits_saved_bytes == (
        measured
    )
    assert profile.logits_bytes == 2 * 128 * 2048 * 2  # bf16 logits out of the autocast LM head
    # Vocabulary-sized saved tensors: only the loss's fp32 log-softmax (the LM head's bf16 weight copy, which its
    # matmul saves transposed to [h, V], is a weight cast, not a logit)
    assert profile.logits_saved_bytes == 2 * 128 * 2048 * 4


def test_amp_keeps_fp32_states_and_caches_weight_copies_through_a_checkpointed_forward(tiny_llama: Path) -> None:
    import hfmem

    setup = TrainingSetup(
        precision="amp-bf16", zero_stages=(0,), batch_size=2, seq_len=128, grad_checkpointing="full", overheads=BARE
    )
    report = hfmem.estimate(str(tiny_llama), setup=setup, training=True, cache=False)
    params = report.inventory.total_params
    stage = report.training.stages[0]
    # fp32 weights, fp32 gradients (at the step), fp32 AdamW states, no master copy: 16 bytes per parameter
    assert (stage.weights_bytes, stage.master_weights_bytes, stage.gradients_at_step_bytes) == (
        4 * params,
        0,
        4 * params,
    )
    assert stage.optimizer_states_bytes == 8 * params
    # The cache at the loss: a bf16 copy of every layer linear, per layer q 64×64 + k 32×64 + v 32×64 + o 64×64
    # + gate/up/down 3 × 176×64 = 46,080 elements, two layers.
    forward = phase_candidates(report.inventory, setup, stage, None)[0]
    assert {i.key: i.size_bytes for i in forward.overhead_items}["autocast_weight_cache"] == 2 * 2 * 46_080


# --- the CLI: each flag, and the combinations frameworks refuse ---------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (["--optimizer-impl", "loop"], "adamw_loop_temporary"),
        (["--optimizer-impl", "foreach"], "adamw_foreach_temporary"),
        (["--optimizer-in-backward"], "adamw_foreach_temporary"),
    ],
)
def test_each_flag_reaches_the_json(flags: list[str], key: str) -> None:
    code, out, err = run("--params", "1B", "--zero", "0", "--json", *flags)
    assert code == 0, err
    doc = json.loads(out)
    settings = doc["training"]["settings"]
    assert settings["optimizer_impl"] == (flags[1] if flags[0] == "--optimizer-impl" else "foreach")
    assert settings["optimizer_in_backward"] == ("--optimizer-in-backward" in flags)
    assert key in doc["training"]["stages"][0]["overheads"]


def test_the_paged_line_in_json_and_table() -> None:
    code, out, err = run("--params", "1B", "--zero", "0", "--optimizer", "paged-adamw-8bit", "--json")
    assert code == 0, err
    stage = json.loads(out)["training"]["stages"][0]
    # --params is one flat tensor of 10^9 elements: its two uint8 states are paged
    assert stage["paged_optimizer_states_bytes"] == 2 * 10**9
    assert stage["allocator_peak_bytes"] is None  # like "total": --params has no activations to add
    code, out, _ = run("--params", "1B", "--zero", "0", "--optimizer", "paged-adamw-8bit")
    assert "Paged optimizer states, ZeRO-0: 1.86 GiB" in out.replace("\n", " ")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--optimizer-in-backward", "--zero", "1"], "--optimizer-in-backward steps each parameter in backward"),
        (["--optimizer-in-backward", "--gpus", "2", "--pp", "2"], "cannot accumulate gradients over a pipeline"),
        (["--optimizer-impl", "fused", "--optimizer", "sgd"], "--optimizer-impl fused chooses torch AdamW's step"),
        (["--optimizer", "paged-adamw", "--offload", "optimizer"], "bitsandbytes' GPU states (paged-adamw)"),
    ],
)
def test_refused_combinations_are_one_line_exit_2(flags: list[str], message: str) -> None:
    code, out, err = run("--params", "1B", *flags)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and message in err
    assert "Traceback" not in err


def test_the_autocast_emulation_follows_cudas_lists_and_weight_cache() -> None:
    # PyTorch docs/source/amp.md@4e0ff98: linear and matmul run in 16-bit, softmax and layer_norm in fp32 (on CUDA;
    # CPU autocast runs them in 16-bit), others in their inputs' promoted dtype. aten cached_cast: one 16-bit copy per
    # fp32 leaf that requires grad, reused within the region; frozen weights are cast at every use.
    import torch
    import torch.nn.functional as F

    from hfmem.build.trace import cuda_autocast

    weight = torch.nn.Parameter(torch.empty(8, 4, device="meta"))
    frozen = torch.nn.Parameter(torch.empty(8, 4, device="meta"), requires_grad=False)
    x = torch.empty(2, 4, device="meta")
    casts: set[int] = set()
    with cuda_autocast(torch.bfloat16, casts) as cache:
        y = F.linear(x, weight)
        assert y.dtype == torch.bfloat16
        assert (x @ weight.t()).dtype == torch.bfloat16
        assert F.softmax(y, dim=-1).dtype == torch.float32
        assert F.layer_norm(y, (8,)).dtype == torch.float32
        assert F.gelu(y).dtype == torch.bfloat16  # not listed: runs in its input's dtype
        assert (y + torch.empty(2, 8, device="meta")).dtype == torch.float32  # promotion
        F.linear(x, weight)
        assert list(cache) == [id(weight)] and cache[id(weight)].dtype == torch.bfloat16  # one cached copy
        F.linear(x, frozen)
        F.linear(x, frozen)
        assert id(frozen) not in cache
    assert len(casts) == 3  # the cached copy of `weight` and one copy of `frozen` per use
    assert F.linear(x, weight).dtype == torch.float32  # outside the region: nothing is cast
