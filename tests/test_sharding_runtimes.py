"""Sharding runtimes (issue 13, "Why" item 5): FSDP-QLoRA gathers stored NF4 bytes and keeps the quant state whole;
FSDP under a pipeline schedule keeps the stage's parameters gathered and its gradients unsharded; interleaved
schedules take uneven layer splits. Numbers by hand from the configs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hfmem
from hfmem.cli import cli
from hfmem.memory.parallel import pipeline_stages
from hfmem.types import FinetuneSettings, ParallelSettings, StageMemory, TrainingSetup

from .conftest import TINY_LLAMA


def _write(folder: Path, config: dict[str, Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _items(stage: StageMemory) -> dict[str, int]:
    return {item.key: item.size_bytes for item in stage.overhead_items}


# --- FSDP-QLoRA ----------------------------------------------------------------------------------------------------

#: A Llama whose layers outweigh the root unit even when packed to 4 bits: vocabulary 16, MLP 512.
WIDE_MLP = {**TINY_LLAMA, "vocab_size": 16, "intermediate_size": 512}
# By hand, per layer: NF4 weights q, k, v, o 64 × 64 and gate, up, down 512 × 64 (bitsandbytes quantizes every
# frozen linear but the LM head); 16-bit: two RMSNorms (2 × 64) and LoRA r = 8 on q_proj, v_proj (8 × (64 + 64)
# each).
NF4_PER_LAYER = 4 * 64 * 64 + 3 * 512 * 64
PLAIN_PER_LAYER = 2 * 64 + 2 * 8 * (64 + 64)
#: FSDP-QLoRA gathers the packed codes as stored (bnb_4bit_quant_storage): n / 2 bytes; the rest at 16 bits.
GATHERED_LAYER = NF4_PER_LAYER // 2 + 2 * PLAIN_PER_LAYER  # 57,344 + 4,352
#: The root unit (embeddings 16 × 64, untied LM head 16 × 64, final norm 64) at 16 bits is smaller.
ROOT = 2 * (2 * 16 * 64 + 64)
#: Quant state: one fp32 absmax per 64 NF4 values (no double quantization), both layers.
QUANT_STATE = 2 * 4 * (4 * 64 * 64 // 64 + 3 * 512 * 64 // 64)


def test_fsdp_qlora_gathers_the_stored_nf4_bytes_and_keeps_the_quant_state_whole(tmp_path: Path) -> None:
    assert GATHERED_LAYER == 61_696 > ROOT and QUANT_STATE == 14_336
    setup = TrainingSetup(
        gpus_per_node=2,
        seq_len=8,
        finetune=FinetuneSettings(method="qlora", lora_rank=8, lora_targets=("q_proj", "v_proj")),
        parallel=ParallelSettings(fsdp="full_shard"),
    )
    report = hfmem.estimate(_write(tmp_path / "wide", WIDE_MLP), setup=setup)
    assert report.training is not None
    (stage,) = report.training.stages
    items = _items(stage)
    # The unit being computed and the one prefetched: 2 × 61,696 B, not 2 × 116,864 params × 2 B = 467,456 B.
    assert items["fsdp_unsharded_unit"] == 2 * GATHERED_LAYER == 123_392
    # Every GPU keeps all the absmax blocks; the weights line shards them over N = 2: Q − ⌈Q / 2⌉.
    assert items["fsdp_replicated_quant_state"] == QUANT_STATE - QUANT_STATE // 2 == 7_168


def test_fsdp_without_qlora_gathers_16_bit_units(tmp_path: Path) -> None:
    setup = TrainingSetup(gpus_per_node=2, seq_len=8, parallel=ParallelSettings(fsdp="full_shard"))
    report = hfmem.estimate(_write(tmp_path / "wide", WIDE_MLP), setup=setup)
    (stage,) = report.training.stages  # type: ignore[union-attr]
    items = _items(stage)
    assert items["fsdp_unsharded_unit"] == 2 * 2 * (4 * 64 * 64 + 3 * 512 * 64 + 2 * 64)
    assert "fsdp_replicated_quant_state" not in items


# --- FSDP under a pipeline schedule --------------------------------------------------------------------------------

DEEP = {**TINY_LLAMA, "num_hidden_layers": 4}
LAYER = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64  # attention, SwiGLU MLP, two RMSNorms
#: pp = 2, 1F1B: stage 0 holds the embeddings and layers 0-1, stage 1 layers 2-3, the final norm and the LM head.
STAGE_PARAMS = {0: 1000 * 64 + 2 * LAYER, 1: 2 * LAYER + 64 + 1000 * 64}


def test_fsdp_with_pipeline_keeps_the_stage_gathered_and_its_gradients_unsharded(tmp_path: Path) -> None:
    setup = TrainingSetup(
        gpus_per_node=4, seq_len=8, parallel=ParallelSettings(pp=2, fsdp="full_shard", microbatches=4)
    )
    report = hfmem.estimate(_write(tmp_path / "deep", DEEP), setup=setup)
    (stage,) = report.training.stages  # type: ignore[union-attr]
    assert stage.pipeline_stage is not None and stage.peak_phase == "backward"
    params = STAGE_PARAMS[stage.pipeline_stage]
    items = _items(stage)
    # torch pipelining: no reshard after each micro-batch's backward, no reduce-scatter until the last; torchtitan:
    # no reshard after forward with PP. So the whole stage at 16 bits, and its gradients in fp32 (reduce dtype).
    assert items["fsdp_pp_unsharded_stage"] == 2 * params
    assert items["fsdp_pp_unsharded_gradients"] == 4 * params
    assert "fsdp_unsharded_unit" not in items and "fsdp_unsharded_gradients" not in items


# --- interleaved schedules with uneven chunks ----------------------------------------------------------------------


def test_interleaved_chunks_may_be_uneven() -> None:
    setup = TrainingSetup(parallel=ParallelSettings(pp=2, pp_schedule="interleaved", virtual_stages=2))
    # 10 layers in 4 chunks, chunk c = layers ⌊10c/4⌋ … ⌊10(c+1)/4⌋ − 1: [0, 1], [2, 3, 4], [5, 6], [7, 8, 9];
    # chunks 0 and 2 on rank 0, 1 and 3 on rank 1.
    assert [s.layers for s in pipeline_stages(10, setup)] == [(0, 1, 5, 6), (2, 3, 4, 7, 8, 9)]
    # Even splits are unchanged: 8 layers, chunks of 2.
    assert [s.layers for s in pipeline_stages(8, setup)] == [(0, 1, 4, 5), (2, 3, 6, 7)]


@pytest.mark.parametrize(("layers", "code"), [(6, 0), (3, 2)])
def test_interleaved_needs_one_layer_per_chunk_only(tmp_path: Path, runner: CliRunner, layers: int, code: int) -> None:
    folder = _write(tmp_path / str(layers), {**TINY_LLAMA, "num_hidden_layers": layers})
    args = ["--gpus", "2", "--pp", "2", "--pp-schedule", "interleaved", "--virtual-stages", "2", "--zero", "0"]
    result = runner.invoke(cli, [folder, "--seq-len", "8", "--training-only", *args])
    assert result.exit_code == code, result.output
    if code:
        assert "chunks of at least one layer" in result.stderr and "Traceback" not in result.output
