"""`hfmem.memory.peak` directly: the three moments, the choice of the peak, and a hand value for every overhead line.

Every expected number below is computed here from the source the code cites (REFERENCE.md §2.5 and §5, DeepSpeed
``deepspeed/runtime/zero/config.py`` defaults, the torch DDP docs, bitsandbytes ``MatMul4Bit.forward``,
transformers' Adafactor), on a small hand-built model whose sizes are easy to follow:

* two transformer layers, each a 64 × 64 and a 64 × 256 linear (4,096 + 16,384 = 20,480 parameters) and a 64-element
  norm (20,544 per layer), an embedding 1,000 × 64 (64,000) before them and a final 64-element norm after.
* Ψ = 64,000 + 2 × 20,544 + 64 = 105,152 parameters; the largest module (the embedding) 64,000.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hfmem.memory.activations import ActivationEstimate
from hfmem.memory.inference import SERVING_OVERHEAD_LABELS, dequant_transient_bytes
from hfmem.memory.peak import (
    OVERHEAD_LABELS,
    overhead_items,
    phase_candidates,
    plan_training,
)
from hfmem.memory.states import compute_training
from hfmem.types import (
    ActivationProfile,
    FinetuneSettings,
    LayerProfile,
    OverheadSettings,
    ParallelSettings,
    ParameterInfo,
    ParameterInventory,
    TrainingSetup,
)

MIB = 2**20
PSI = 105_152
EMBEDDING = 64_000
LAYER = 20_544
#: OverheadSettings defaults, as the code cites them: 512 MiB CUDA context (pytorch#86509/#109888 + a 32 MiB cuBLAS
#: workspace, #120925), 10 % fragmentation (REFERENCE.md §5), DeepSpeed zero/config.py bucket defaults.
CUDA = 512 * MIB
REDUCE_BUCKET = ALLGATHER_BUCKET = 500_000_000
PREFETCH_BUCKET = 50_000_000
SUB_GROUP = 1_000_000_000


def model(*, trainable: bool = True) -> ParameterInventory:
    params = [ParameterInfo("embed.weight", (1000, 64), "bfloat16", trainable=trainable, is_embedding=True)]
    for i in range(2):
        params += [
            ParameterInfo(f"layers.{i}.q.weight", (64, 64), "bfloat16", trainable, is_linear=True, layer_index=i),
            ParameterInfo(f"layers.{i}.up.weight", (256, 64), "bfloat16", trainable, is_linear=True, layer_index=i),
            ParameterInfo(f"layers.{i}.norm.weight", (64,), "bfloat16", trainable, layer_index=i),
        ]
    params.append(ParameterInfo("norm.weight", (64,), "bfloat16", trainable, after_layers=True))
    return ParameterInventory.from_parameters(
        params,
        buffer_params=0,
        largest_module=("embed", EMBEDDING),
        module_params=[],
        architecture=None,
        model_type=None,
        layer_names=("layers.0", "layers.1"),
    )


def items(setup: TrainingSetup, phase: str, inventory: ParameterInventory | None = None) -> dict[str, int]:
    inv = inventory or model()
    states = compute_training(inv, setup).stages[0]
    return {i.key: i.size_bytes for i in overhead_items(inv, setup, states, phase)}  # type: ignore[arg-type]


def test_the_hand_model() -> None:
    inv = model()
    assert inv.total_params == PSI == EMBEDDING + 2 * LAYER + 64
    assert inv.largest_module_params == EMBEDDING


# ---------------------------------------------------------------------------------------------------------------
# A hand value for every training overhead line


def test_cuda_context_is_live_at_every_moment() -> None:
    for phase in ("forward", "backward", "optimizer_step"):
        assert items(TrainingSetup(zero_stages=(0,)), phase)["cuda_context"] == CUDA


def test_ddp_bucket_is_a_second_copy_of_the_gradients() -> None:
    # torch DDP docs (gradient_as_bucket_view=False): "the saved memory size will be equal to the total gradients
    # size" — bf16-mixed gradients are 2 bytes each (ZeRO paper §3.1).
    got = items(TrainingSetup(zero_stages=(0,), gpus_per_node=2), "forward")
    assert got["ddp_gradient_buckets"] == 2 * PSI
    assert "ddp_gradient_buckets" not in items(TrainingSetup(zero_stages=(0,)), "forward")  # one GPU: plain training


def test_deepspeed_buckets_are_capped_by_the_gradients() -> None:
    # reduce_bucket_size 5e8 elements > Ψ, so the bucket holds every gradient: min(5e8, Ψ) × 2 bytes.
    setup = TrainingSetup(zero_stages=(2,), gpus_per_node=4)
    assert items(setup, "backward")["deepspeed_reduce_bucket"] == min(REDUCE_BUCKET, PSI) * 2 == 2 * PSI
    # allgather_bucket_size 5e8 for the updated 16-bit weights after the step (ZeRO-1/2 only).
    step = items(setup, "optimizer_step")
    assert step["param_allgather_bucket"] == 2 * PSI
    # DeepSpeed converts this GPU's gradient partition to fp32 at the step (docs memory.rst): 4 × ⌈Ψ / 4⌉.
    assert step["fp32_gradient_partition"] == 4 * -(-PSI // 4)
    small = replace(setup, overheads=OverheadSettings(reduce_bucket_elements=1000))
    assert items(small, "backward")["deepspeed_reduce_bucket"] == 1000 * 2


def test_zero3_gathers_the_largest_module_and_prefetches() -> None:
    # DeepSpeed's estimator: 16-bit params + grads of the largest module (2 + 2 bytes), plus the prefetch bucket
    # (stage3_prefetch_bucket_size 5e7 > Ψ, so all Ψ at 2 bytes).
    setup = TrainingSetup(zero_stages=(3,), gpus_per_node=4)
    assert items(setup, "forward")["zero3_gathered_params"] == EMBEDDING * (2 + 2) + min(PREFETCH_BUCKET, PSI) * 2
    # ZeRO-3 steps over sub_group_size (1e9) at a time: the whole 1/4 partition here.
    assert items(setup, "optimizer_step")["fp32_gradient_partition"] == 4 * min(-(-PSI // 4), SUB_GROUP)
    assert "zero3_gathered_params" not in items(setup, "optimizer_step")


def test_fsdp_gathers_one_unit_and_prefetches_the_next() -> None:
    # FSDP with transformer_auto_wrap_policy: the root unit (embedding + final norm, 64,064) is larger than a layer
    # (20,544); two units are gathered at 2 bytes (forward_prefetch / BACKWARD_PRE, REFERENCE §2.5).
    setup = TrainingSetup(zero_stages=(3,), gpus_per_node=4, parallel=ParallelSettings(fsdp="full_shard"))
    root = EMBEDDING + 64
    assert items(setup, "forward")["fsdp_unsharded_unit"] == 2 * root * 2
    backward = items(setup, "backward")
    assert backward["fsdp_unsharded_gradients"] == root * 2  # that unit's 16-bit gradients before reduce-scatter
    assert "deepspeed_reduce_bucket" not in backward  # FSDP's buffers replace DeepSpeed's


def test_qlora_holds_one_dequantized_weight() -> None:
    # bitsandbytes MatMul4Bit.forward dequantizes the largest NF4 weight (the 256 × 64 up projection) to 16 bits.
    inv = model(trainable=False)
    setup = TrainingSetup(zero_stages=(0,), finetune=FinetuneSettings("qlora"))
    assert items(setup, "forward", inv)["qlora_dequantized_weight"] == 256 * 64 * 2


def test_adafactor_upcasts_one_tensor() -> None:
    # transformers Adafactor.step: grad.float() / p.float() of one tensor at a time: the largest (the embedding).
    setup = TrainingSetup(zero_stages=(0,), optimizer="adafactor")
    assert items(setup, "optimizer_step")["adafactor_fp32_upcast"] == 4 * EMBEDDING
    # Under ZeRO the optimizer sees one flat partition: ⌈Ψ / 2⌉ elements at 4 bytes.
    sharded = TrainingSetup(zero_stages=(1,), optimizer="adafactor", gpus_per_node=2)
    assert items(sharded, "optimizer_step")["adafactor_fp32_upcast"] == 4 * -(-PSI // 2)


def test_fragmentation_is_a_fraction_of_what_is_allocated() -> None:
    # REFERENCE.md §5: reserved − allocated is 5–30 % of the allocated peak; 10 % by default. Allocated at the step of
    # ZeRO-0 on one GPU, bf16-mixed AdamW: 16 bytes per parameter (ZeRO paper) and no activations (--params-like),
    # plus torch's default foreach step temporary, one fp32 state-sized tensor per parameter (4 bytes each,
    # torch/optim/adam.py _multi_tensor_adam's _foreach_sqrt; docs/techniques.md §4.1): 20 bytes per parameter.
    setup = TrainingSetup(zero_stages=(0,))
    stage = plan_training(model(), setup, None).stages[0]
    keyed = {i.key: i for i in stage.overhead_items}
    assert keyed["adamw_foreach_temporary"].size_bytes == 4 * PSI
    assert keyed["allocator_fragmentation"].size_bytes == int(20 * PSI * 0.10)
    assert keyed["allocator_fragmentation"].label == "allocator fragmentation (10%)"
    other = plan_training(model(), replace(setup, overheads=OverheadSettings(fragmentation=0.15)), None).stages[0]
    keyed15 = {i.key: i for i in other.overhead_items}
    assert keyed15["allocator_fragmentation"].size_bytes == int(20 * PSI * 0.15)
    assert keyed15["allocator_fragmentation"].label == "allocator fragmentation (15%)"  # the label follows the value
    assert set(keyed15) == set(keyed)  # the key never does


def test_every_training_line_has_a_stable_key_and_label() -> None:
    assert len(set(OVERHEAD_LABELS)) == len(OVERHEAD_LABELS)
    assert all(key.islower() and " " not in key for key in OVERHEAD_LABELS)
    assert set(SERVING_OVERHEAD_LABELS) == {
        "cuda_context",
        "kv_append_copy",
        "bnb_dequantized_weight",
        "allocator_fragmentation",
    }


def test_serving_dequant_copy_by_hand() -> None:
    # bitsandbytes dequantizes the largest 4-bit linear (Llama-2-7B's 11,008 × 4,096 MLP) to 16 bits, split over tp.
    assert dequant_transient_bytes(11008 * 4096, 2) == 11008 * 4096 // 2 * 2


# ---------------------------------------------------------------------------------------------------------------
# The three moments and the peak


def profile() -> ActivationProfile:
    layer = LayerProfile("layers.0", saved_bytes=1_000_000, input_bytes=10_000)
    return ActivationProfile(
        batch_size=1,
        seq_len=128,
        attn="sdpa",
        dtype="bfloat16",
        vocab_size=1000,
        layers=(layer, replace(layer, name="layers.1")),
        fused_layers=(layer, replace(layer, name="layers.1")),
        other_bytes=50_000,
        logits_saved_bytes=512_000,  # fp32 log-softmax: 128 tokens × 1,000 × 4
        logits_bytes=256_000,  # bf16 logits: 128 × 1,000 × 2
    )


def test_moments_hold_what_the_readme_says() -> None:
    setup = TrainingSetup(zero_stages=(0,))
    states = compute_training(model(), setup).stages[0]
    saved = 2 * 1_000_000 + 50_000
    acts = ActivationEstimate(saved, 0, 512_000, 256_000 + 2 * 512_000, 256_000 + 3 * 512_000)
    forward, backward, step = phase_candidates(model(), setup, states, acts)
    # forward: every saved activation + logits, the fp32 copy and the log-softmax (G + 2Λ, ForCausalLMLoss).
    assert (forward.activations_bytes, forward.logits_bytes) == (saved, 256_000 + 2 * 512_000)
    # backward: the loss gradients join (G + 3Λ).
    assert (backward.activations_bytes, backward.logits_bytes) == (saved, 256_000 + 3 * 512_000)
    # step: activations are freed.
    assert (step.activations_bytes, step.logits_bytes) == (0, 0)
    # Weights (2), master (4) and Adam (8) bytes per parameter live throughout; the 2-byte bf16 gradients are freed
    # after each step (zero_grad(set_to_none=True)) and, with one micro-batch per step, exist only at the step.
    assert [m.states_bytes for m in (forward, backward, step)] == [14 * PSI, 14 * PSI, 16 * PSI]
    assert [m.gradients_at_step_bytes for m in (forward, backward, step)] == [2 * PSI] * 3
    for moment in (forward, backward, step):
        assert moment.total_bytes == moment.states_bytes + moment.activations_bytes + moment.logits_bytes + sum(
            i.size_bytes for i in moment.overhead_items
        )


@pytest.mark.parametrize(
    ("setup", "persist"),
    [
        (TrainingSetup(zero_stages=(0,), grad_accumulation=4), True),  # summed over micro-batches
        (TrainingSetup(zero_stages=(2,), gpus_per_node=2), False),  # ZeRO-1/2 free them at step
        (TrainingSetup(zero_stages=(3,), gpus_per_node=2), True),  # grad_partitions_flat_buffer, from init
        (TrainingSetup(zero_stages=(3,), gpus_per_node=2, grad_accumulation=2), True),
        (TrainingSetup(zero_stages=(2,), gpus_per_node=2, accounting="deepspeed"), True),  # the estimator's own
    ],
)
def test_which_setups_keep_the_gradients_through_the_step(setup: TrainingSetup, persist: bool) -> None:
    states = compute_training(model(), setup).stages[0]
    acts = ActivationEstimate(1_000, 0, 512, 1_280, 1_792)
    forward, backward, step = phase_candidates(model(), setup, states, acts)
    assert step.gradients_bytes == states.gradients_bytes > 0
    expected = states.gradients_bytes if persist else 0
    assert (forward.gradients_bytes, backward.gradients_bytes) == (expected, expected)


def test_pipeline_micro_batches_keep_the_gradients() -> None:
    setup = TrainingSetup(zero_stages=(0,), gpus_per_node=2, parallel=ParallelSettings(pp=2), seq_len=128)
    planned = plan_training(model(), setup, profile()).stages[0]
    assert planned.gradients_bytes == planned.gradients_at_step_bytes > 0


def test_recompute_replaces_the_loss_gradients_when_larger() -> None:
    setup = TrainingSetup(zero_stages=(0,))
    states = compute_training(model(), setup).stages[0]
    acts = ActivationEstimate(20_000, 5_000_000, 512_000, 1_280_000, 1_792_000)
    backward = phase_candidates(model(), setup, states, acts)[1]
    assert (backward.activations_bytes, backward.logits_bytes) == (20_000 + 5_000_000, 0)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_the_peak_is_the_largest_moment(stage: int) -> None:
    setup = TrainingSetup(zero_stages=(stage,), gpus_per_node=2, seq_len=128)
    planned = plan_training(model(), setup, profile()).stages[0]
    states = compute_training(model(), setup).stages[0]
    from hfmem.memory.peak import stage_activations

    candidates = phase_candidates(model(), setup, states, stage_activations(profile(), setup, _only_stage(setup)))
    best = max(candidates, key=lambda c: c.total_bytes)
    assert planned.total_bytes == best.total_bytes
    assert planned.peak_phase == next(c.peak_phase for c in candidates if c.total_bytes == best.total_bytes)


def _only_stage(setup: TrainingSetup):  # type: ignore[no-untyped-def]
    from hfmem.memory.parallel import pipeline_stages

    return pipeline_stages(2, setup)[0]


# ---------------------------------------------------------------------------------------------------------------
# A hand value for every serving overhead line


def test_serving_overhead_lines_by_hand() -> None:
    from hfmem import InferenceSetup, estimate

    # Llama-2-7B (config: 32 layers, 32 KV heads × 128 dims, fp16 cache; MLP 11,008 × 4,096), NF4 weights, 1,024
    # tokens of context, one sequence.
    served = estimate(
        "meta-llama/Llama-2-7b-hf", training=False, inference=InferenceSetup(weights_dtype="nf4", context=1024)
    ).inference
    assert served is not None
    lines = {i.key: i.size_bytes for i in served.overhead_items}
    layer = 2 * 32 * 128 * 1024 * 2  # K and V × heads × head dim × tokens × 2 bytes: one layer's cache
    assert served.kv_cache_bytes == 32 * layer
    assert lines["cuda_context"] == CUDA
    # transformers DynamicLayer.update: torch.cat allocates the grown layer beside the old one (one layer).
    assert lines["kv_append_copy"] == layer
    # bitsandbytes MatMul4Bit.forward dequantizes the largest 4-bit linear (the 11,008 × 4,096 MLP) to 16 bits.
    assert lines["bnb_dequantized_weight"] == 11008 * 4096 * 2
    # REFERENCE.md §5: 10 % of what is allocated while serving (cache, activations, the transients above).
    allocated = served.kv_cache_bytes + served.activations_bytes + layer + 11008 * 4096 * 2
    assert lines["allocator_fragmentation"] == int(allocated * 0.10)


# ---------------------------------------------------------------------------------------------------------------
# Gradients freed after each step (--grad-accumulation 1) against accumulated ones, on a real model


def test_llama_full_finetune_without_accumulation_has_no_gradients_before_the_step() -> None:
    import json

    from click.testing import CliRunner

    from hfmem.cli import cli
    from hfmem.types import OverheadSettings

    # Llama-3.2-1B by hand (config: vocab 128,256, hidden 2,048, 16 layers, 32 heads / 8 KV heads of 64, MLP 8,192,
    # tied embeddings): embeddings + per layer (q, o 2048²; k, v 2048 × 512; gate, up, down 2048 × 8192; 2 norms)
    # + the final norm.
    layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192 + 2 * 2048
    psi = 128_256 * 2048 + 16 * layer + 2048
    assert psi == 1_235_814_400  # the model card's "1.24B"
    grads = 2 * psi  # bf16-mixed: 2-byte gradients (ZeRO paper §3.1)
    args = ["train", "meta-llama/Llama-3.2-1B", "--seq-len", "2048", "--batch-size", "4", "--zero", "0", "--json"]
    runs = {}
    for n in (1, 4):
        result = CliRunner().invoke(cli, [*args, "--grad-accumulation", str(n)], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["training"]["settings"]["grad_accumulation"] == n
        runs[n] = doc["training"]["stages"][0]
    one, four = runs[1], runs[4]
    # 4 × 2048 tokens × 128,256 × (2 + 3 × 4) bytes of logits at the loss: both peak as backward starts.
    assert one["peak_phase"] == four["peak_phase"] == "backward"
    assert four["per_gpu_bytes"]["gradients"] == four["gradients_at_step_bytes"] == grads  # accumulated: live
    assert one["per_gpu_bytes"]["gradients"] == 0 and one["gradients_at_step_bytes"] == grads  # freed by zero_grad
    # The same moment less the gradients: weights 2 + master 4 + Adam 8 bytes per parameter stay.
    for key in ("weights", "master_weights", "optimizer_states", "activations", "logits"):
        assert one["per_gpu_bytes"][key] == four["per_gpu_bytes"][key]
    assert one["per_gpu_bytes"]["weights"] + one["per_gpu_bytes"]["optimizer_states"] == 10 * psi

    def allocated(stage: dict) -> int:  # type: ignore[type-arg]
        return (
            stage["per_gpu_bytes"]["total"]
            - stage["overheads"]["allocator_fragmentation"]
            - (stage["overheads"]["cuda_context"])
        )

    assert allocated(one) == allocated(four) - grads
    phi = OverheadSettings().fragmentation
    assert one["overheads"]["allocator_fragmentation"] == int(allocated(one) * phi)
