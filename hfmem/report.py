"""Report → JSON-ready dict or a rendered table. Pure: no click, no printing, no environment reads."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from hfmem.launch import LaunchOutcome
from hfmem.memory.parallel import in_flight_microbatches
from hfmem.memory.peak import step_notes
from hfmem.memory.states import ONE_GPU_NOTE, PRECISION_SPECS
from hfmem.rules import stages_alike
from hfmem.types import (
    Accounting,
    CheckpointComparison,
    EngineEstimate,
    FinetuneSettings,
    InferenceEstimate,
    KvLayer,
    Optimizer,
    OverheadItem,
    Report,
    StageMemory,
    TrainingEstimate,
    TrainingSetup,
)
from hfmem.units import GIB, format_count_short, format_gib

#: What each accounting convention counts (``--accounting``), said once per table and in JSON.
CONVENTIONS: dict[Accounting, str] = {
    "hfmem": (
        "model states by the ZeRO paper (Rajbhandari et al. 2020): 16-bit weights and gradients, fp32 master weights "
        "and optimizer states, sharded per stage, exact bytes; activations and logits as the model's own code saves "
        "them (traced on the meta device); overheads as listed below"
    ),
    "deepspeed": (
        "DeepSpeed estimator accounting (estimate_zero2/zero3_model_states_mem_needs): 18 bytes per sharded "
        "parameter, 4 x largest module gathered at ZeRO-3, CPU x 1.5 buffer factor"
    ),
}

#: One line per optimizer: the states it keeps and where that is read from.
OPTIMIZER_DESCRIPTIONS: dict[Optimizer, str] = {
    "adamw": "AdamW: exp_avg + exp_avg_sq, 2 states per parameter (torch/optim/adamw.py)",
    "adamw-8bit": "bitsandbytes AdamW8bit: 2 uint8 states + one fp32 absmax per 256-element block; "
    "tensors under 4096 elements keep fp32 states",
    "sgd": "SGD without momentum: no state",
    "sgd-momentum": "SGD with momentum: one momentum_buffer per parameter",
    "adafactor": "HF Adafactor (beta1=None): fp32 row + column second-moment factors for >=2-D tensors, "
    "a full fp32 second moment for 1-D tensors",
    "lion": "Lion: one momentum per parameter (Chen et al. 2023)",
    "paged-adamw": "bitsandbytes PagedAdamW: 2 fp32 states per parameter; those of tensors with >= 100,000 elements "
    "in CUDA managed memory (outside PyTorch's allocator)",
    "paged-adamw-8bit": "bitsandbytes PagedAdamW8bit: 2 uint8 states + one fp32 absmax per 256-element block; the "
    "uint8 states of tensors with >= 100,000 elements in CUDA managed memory (outside PyTorch's allocator)",
}

__all__ = [
    "SCHEMA_VERSION",
    "to_dict",
    "render_table",
    "render_markdown",
    "render_sweep",
    "sweep_to_dict",
    "render_compare",
    "compare_to_dict",
    "describe_source",
    "legend",
    "stacked_bar",
    "launch_to_dict",
    "render_launch",
    "engine_to_dict",
    "engine_log_lines",
    "engine_rows",
    "engine_verdict_line",
    "shown_stages",
    "fit_failures",
]

#: Bumped only when a key changes meaning or disappears; new keys keep the version.
SCHEMA_VERSION = 1


def overhead_bytes_by_key(items: Sequence[OverheadItem]) -> dict[str, int]:
    """``overheads`` of JSON output: bytes by the line's stable key (``overhead_items`` keeps label → bytes for
    compatibility; its keys change with settings, these never do)."""
    return {item.key: item.size_bytes for item in items}


def overhead_labels(groups: Iterable[Sequence[OverheadItem]]) -> dict[str, str]:
    """``overhead_labels`` of JSON output: each key's label for people, once per plan (in order of first use)."""
    return {item.key: item.label for items in groups for item in items}


def describe_source(report: Report) -> str:
    """Where the config came from, in words: ``hub @ 01c7f73d`` / ``catalogue (bundled snapshot)`` / …"""
    model = report.model
    if model.source == "hub":
        return f"hub @ {model.revision[:12]}" if model.revision else "hub"
    if model.source == "catalogue":
        return "catalogue (bundled snapshot)"
    if model.source == "local":
        return f"local ({model.directory})" if model.directory else "local"
    return "--params (hypothetical dense model)"


#: What the table shows in place of a number hfmem could not measure (JSON: null, with the reason beside it).
NOT_MEASURED = "not measured"


def shown_stages(training: TrainingEstimate) -> tuple[StageMemory, ...]:
    """The ZeRO rows the table shows and ``--check`` gates on: ZeRO-0 alone when the stages cannot differ in what
    they shard (`hfmem.rules.stages_alike`: one GPU, no offload, no --zero), else every stage planned."""
    if stages_alike(training.setup):
        plain = tuple(stage for stage in training.stages if stage.zero_stage == 0)
        return plain or training.stages
    return training.stages


def _one_row_note(training: TrainingEstimate) -> str | None:
    """The line that says why the table has one ZeRO row (None when it shows every stage)."""
    if len(shown_stages(training)) == len(training.stages):
        return None
    return (
        "one GPU: ZeRO has nothing to shard, so ZeRO-0 (plain data parallel) is shown; --zero 1|2|3 adds DeepSpeed's "
        "buffers, --gpus / --nodes shard"
    )


def training_notes(training: TrainingEstimate) -> list[str]:
    """The training plan's notes as the table says them: with one ZeRO row, why (in place of the note that every
    stage holds the same)."""
    one_row = _one_row_note(training)
    if one_row is None:
        return list(training.notes)
    # The step notes of the row shown, not of the stages it stands for.
    every_step_note = step_notes(training.setup, list(training.stages))
    kept = [note for note in training.notes if note != ONE_GPU_NOTE and note not in every_step_note]
    return [one_row, *kept, *step_notes(training.setup, list(shown_stages(training)))]


def fit_failures(report: Report) -> list[str]:
    """What does not fit the GPU, one phrase per plan and stage: ``training ZeRO-0 needs 27.30 GiB, NVIDIA GeForce
    RTX 4090 has 23.64 GiB usable (3.66 GiB over)``; the stages are `shown_stages` (what ``--check`` gates on)."""
    out = []
    training, inference = report.training, report.inference
    if training is not None and training.setup.gpu is not None:
        gpu = training.setup.gpu
        for stage in shown_stages(training):
            if stage.fits is False:
                needs = "needs" if training.unmeasured is None else "needs at least"
                out.append(
                    f"training ZeRO-{stage.zero_stage} {needs} {format_gib(stage.total_bytes)}, {gpu.name} has "
                    f"{format_gib(gpu.usable_bytes)} usable ({format_gib(-(stage.headroom_bytes or 0))} over)"
                )
    if report.engine is not None:
        if report.engine.fits is False:
            out.append(engine_verdict_line(report))
    elif inference is not None and inference.fits is False and inference.setup.gpu is not None:
        gpu = inference.setup.gpu
        out.append(
            f"serving {inference.context:,} tokens of context needs {format_gib(inference.total_bytes)}, {gpu.name} "
            f"has {format_gib(gpu.usable_bytes)} usable ({format_gib(-(inference.headroom_bytes or 0))} over)"
        )
    return out


def loss_words(setup: TrainingSetup) -> str:
    """The recompute, offload and loss settings that differ from the defaults, as a phrase to append after
    ``checkpointing …`` (empty for the defaults)."""
    words = ""
    if setup.grad_checkpointing != "none" and setup.checkpoint_every > 1:
        words += f" every {setup.checkpoint_every} layers"
    if setup.activation_offload:
        words += ", activations offloaded to CPU"
    if setup.loss == "chunked":
        words += f", loss chunked ({setup.loss_chunks} chunks)"
    elif setup.loss != "hf":
        words += f", loss {setup.loss}"
    return words


def _stage_dict(stage: StageMemory, *, measured: bool = True) -> dict[str, Any]:
    """One ZeRO row. Unmeasured activations (the trace failed): activations, logits and total are null and
    ``total_without_activations`` holds the lower bound."""
    return {
        "zero_stage": stage.zero_stage,
        "per_gpu_bytes": {
            "weights": stage.weights_bytes,
            "master_weights": stage.master_weights_bytes,
            "gradients": stage.gradients_bytes,
            "optimizer_states": stage.optimizer_states_bytes,
            "activations": stage.activations_bytes if measured else None,
            "logits": stage.logits_bytes if measured else None,
            "overhead": stage.overhead_bytes,
            "total": stage.total_bytes if measured else None,
            **({} if measured else {"total_without_activations": stage.total_bytes}),
        },
        # bitsandbytes paged states (CUDA managed memory; part of optimizer_states) and what PyTorch's allocator
        # holds at the peak (the total less the paged states and the CUDA context); total is the device total
        "paged_optimizer_states_bytes": stage.paged_states_bytes,
        "allocator_peak_bytes": stage.allocator_bytes if measured else None,
        "cpu_bytes_per_node": stage.cpu_bytes_per_node,
        "peak_phase": stage.peak_phase,
        # all the gradients, live at the step; per_gpu_bytes.gradients is what is live at the peak (none before
        # the step when they are freed after each step: --grad-accumulation 1)
        "gradients_at_step_bytes": stage.gradients_at_step_bytes,
        "fits": stage.fits,
        "headroom_bytes": stage.headroom_bytes,
        "min_gpus": stage.min_gpus,
        "max_batch_size": stage.max_batch_size,
        "overhead_items": dict(stage.overhead_items),
        "overheads": overhead_bytes_by_key(stage.overhead_items),
        "activation_detail": {
            "saved_bytes": stage.activation_saved_bytes,
            "recompute_bytes": stage.activation_recompute_bytes,
            "logits_saved_bytes": stage.logits_saved_bytes,
            "offloaded_bytes": stage.activation_offloaded_bytes,
        },
        "busiest_gpu": None
        if stage.pipeline_stage is None
        else {
            "pipeline_stage": stage.pipeline_stage,
            "layers": list(stage.stage_layers) if stage.stage_layers else None,
            "holds": list(stage.stage_holds),
        },
    }


def _settings_extra(setup: TrainingSetup) -> dict[str, Any]:
    """The method, adapter and parallel settings added to ``training.settings`` (schema 1, new keys)."""
    ft, par = setup.finetune, setup.parallel
    return {
        "method": ft.method,
        "adapter": None
        if not ft.uses_peft
        else {
            "lora_rank": ft.lora_rank,
            "lora_alpha": ft.lora_alpha,
            "lora_targets": list(ft.lora_targets) if ft.lora_targets is not None else None,
            "modules_to_save": list(ft.modules_to_save),
            "dora": ft.dora,
            "double_quant": ft.double_quant,
        },
        "train_modules": list(ft.train_modules),
        "optimizer_impl": setup.optimizer_impl,
        "optimizer_in_backward": setup.optimizer_in_backward,
        "parallel": {
            "tp": par.tp,
            "pp": par.pp,
            "cp": par.cp,
            "ep": par.ep,
            "sp": par.sp,
            "dp": setup.data_parallel_size,
            "sharding_degree": setup.sharding_degree,
            "expert_sharding_degree": setup.expert_sharding_degree,
            "pp_schedule": par.pp_schedule,
            "microbatches": par.microbatches,
            "virtual_stages": par.virtual_stages if par.pp_schedule == "interleaved" else None,
            "fsdp": par.fsdp,
        },
        "loss": setup.loss,
        "loss_chunks": setup.loss_chunks if setup.loss == "chunked" else None,
        "checkpoint_every": setup.checkpoint_every,
        "activation_offload": setup.activation_offload,
        "grad_accumulation": setup.grad_accumulation,
    }


def _head_settings(training: TrainingEstimate) -> dict[str, Any]:
    """The task head traced and the decoder length of an encoder-decoder model (new keys; None when not traced)."""
    profile = training.profile
    return {
        "head": profile.head if profile is not None else None,
        "target_len": profile.target_len if profile is not None else training.setup.target_len,
    }


def _training_dict(report: Report) -> dict[str, Any] | None:
    training = report.training
    if training is None:
        return None
    setup = training.setup
    return {
        "settings": {
            "precision": setup.precision,
            "optimizer": setup.optimizer,
            "gpus_per_node": setup.gpus_per_node,
            "nodes": setup.nodes,
            "offload": setup.offload,
            "accounting": setup.accounting,
            "batch_size": setup.batch_size,
            "seq_len": training.seq_len,
            "seq_len_source": training.seq_len_source,
            "attn": setup.attn,
            "grad_checkpointing": setup.grad_checkpointing,
            "dropout": setup.dropout,
            "cuda_context_bytes": setup.overheads.cuda_context_bytes,
            "fragmentation": setup.overheads.fragmentation,
            **_settings_extra(setup),
            **_head_settings(training),
        },
        "convention": CONVENTIONS[training.setup.accounting],
        "stages": [_stage_dict(s, measured=training.unmeasured is None) for s in training.stages],
        "shown_stages": [s.zero_stage for s in shown_stages(training)],
        "overhead_labels": overhead_labels(s.overhead_items for s in training.stages),
        "activations_not_measured": training.unmeasured,
        "notes": list(training.notes),
    }


def kv_layer_summary(layers: tuple[KvLayer, ...]) -> list[dict[str, Any]]:
    """Cache layers grouped by what they hold: kind, window, heads and elements per token, with a count."""
    groups: dict[tuple[Any, ...], int] = {}
    for layer in layers:
        key = (layer.kind, layer.window_tokens, layer.heads, layer.elements_per_token, layer.fixed_elements)
        groups[key] = groups.get(key, 0) + 1
    return [
        {
            "kind": kind,
            "layers": count,
            "window_tokens": window,
            "heads": heads,
            "elements_per_token": per_token,
            "fixed_elements": fixed,
        }
        for (kind, window, heads, per_token, fixed), count in groups.items()
    ]


def _inference_dict(report: Report) -> dict[str, Any] | None:
    inference = report.inference
    if inference is None:
        return None
    setup, weights = inference.setup, inference.weights
    checkpoint = None
    if report.checkpoint is not None:
        checkpoint = comparison_to_dict(report.checkpoint)
    return {
        "settings": {
            "weights_dtype": inference.weights_name,
            "weights_source": inference.weights_source,
            "group_size": setup.group_size,
            "double_quant": setup.double_quant,
            "kv_dtype": inference.kv_dtype,
            "context": inference.context,
            "context_source": inference.context_source,
            "batch_size": setup.batch_size,
            "tp": setup.tp,
            "prefill_chunk": inference.prefill_tokens,
            "cuda_context_bytes": setup.overheads.cuda_context_bytes,
            "fragmentation": setup.overheads.fragmentation,
        },
        "per_gpu_bytes": {
            "weights": inference.weights_bytes,
            "kv_cache": inference.kv_cache_bytes,
            "recurrent_state": inference.recurrent_state_bytes,
            "activations": inference.activations_bytes,
            "overhead": inference.overhead_bytes,
            "total": inference.total_bytes,
        },
        "kv_cache_bytes_per_token": inference.kv_cache_bytes_per_token,
        "kv_cache_layers": kv_layer_summary(inference.kv_layers),
        "recurrent_state": _state_summary(inference),
        "weights": {
            "quantized_params": weights.quantized_params,
            "quantized_data_bytes": weights.quantized_data_bytes,
            "quantization_metadata_bytes": weights.quantization_metadata_bytes,
            "unquantized_params": weights.unquantized_params,
            "unquantized_bytes": weights.unquantized_bytes,
            "total_bytes": weights.total_bytes,
        },
        "overhead_items": dict(inference.overhead_items),
        "overheads": overhead_bytes_by_key(inference.overhead_items),
        "overhead_labels": overhead_labels([inference.overhead_items]),
        "fits": inference.fits,
        "headroom_bytes": inference.headroom_bytes,
        "max_context": inference.max_context,
        "max_batch_size": inference.max_batch_size,
        "checkpoint": checkpoint,
        "notes": list(inference.notes),
    }


def _state_summary(inference: InferenceEstimate) -> dict[str, Any]:
    """The recurrent states per sequence: layers holding one and their bytes (independent of the context)."""
    states = inference.profile.state_layers if inference.profile is not None else ()
    return {"layers": len(states), "bytes_per_sequence": sum(size for _, size in states)}


def _gpu(report: Report) -> Any:
    if report.training is not None:
        return report.training.setup.gpu
    if report.engine is not None:
        return report.engine.gpu
    return report.inference.setup.gpu if report.inference is not None else None


def to_dict(report: Report) -> dict[str, Any]:
    """The ``--json`` document. Keys documented in docs/json.md are never renamed; later versions only add keys."""
    inv = report.inventory
    moe = inv.moe
    gpu = _gpu(report)
    return {
        "hfmem_version": report.hfmem_version,
        "schema_version": SCHEMA_VERSION,
        "model": {
            "id": report.model.model_id,
            "source": report.model.source,
            "revision": report.model.revision,
            "architecture": inv.architecture,
            "model_type": inv.model_type,
        },
        "parameters": {
            "total": inv.total_params,
            "trainable": inv.trainable_params,
            "embedding": inv.embedding_params,
            "non_embedding": inv.non_embedding_params,
            "buffers": inv.buffer_params,
            "largest_module": inv.largest_module_params,
            "active_per_token": inv.active_params_per_token,
            "largest_module_name": inv.largest_module_name,
            "modules": dict(inv.module_params),
            "moe": None
            if moe is None
            else {
                "num_experts": moe.num_experts,
                "experts_per_token": moe.experts_per_token,
                "routed_expert_params": moe.routed_expert_params,
            },
        },
        "training": _training_dict(report),
        "inference": _inference_dict(report),
        "inference_not_measured": report.inference_unmeasured,
        "engine": None if report.engine is None else engine_to_dict(report.engine),
        "gpu": None if gpu is None else {"name": gpu.name, "usable_bytes": gpu.usable_bytes},
        "notes": list(dict.fromkeys([*report.model.notes, *report.notes])),  # the model's are in both: once
    }


def _summary(report: Report, *, verbose: bool = False) -> Table:
    inv = report.inventory
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    arch = inv.architecture or "—"
    if inv.model_type:
        arch += f" ({inv.model_type})"
    grid.add_row("Model", report.model.model_id)
    grid.add_row("Config", describe_source(report))
    if report.model.source != "params":
        grid.add_row("Architecture", arch)
    grid.add_row("Parameters", f"{inv.total_params:,} ({format_count_short(inv.total_params)})")
    if report.model.source != "params":
        grid.add_row(
            "",
            f"trainable {inv.trainable_params:,} · embedding {inv.embedding_params:,} · "
            f"non-embedding {inv.non_embedding_params:,} · buffers {inv.buffer_params:,} (not trained)",
        )
        if inv.moe is not None:
            grid.add_row(
                "Active per token",
                f"{inv.active_params_per_token:,} ({format_count_short(inv.active_params_per_token)}) — "
                f"{inv.moe.experts_per_token} of {inv.moe.num_experts} routed experts + shared/dense parts",
            )
        if verbose:
            grid.add_row("Largest module", f"{inv.largest_module_name} {inv.largest_module_params:,}")
            grid.add_row("Modules", " · ".join(f"{name} {count:,}" for name, count in inv.module_params))
    return grid


def _stage_title(report: Report) -> str:
    training = report.training
    assert training is not None
    setup = training.setup
    gpus = f"{setup.gpus_per_node} GPU{'s' if setup.gpus_per_node > 1 else ''} × {setup.nodes} node"
    gpus += "s" if setup.nodes > 1 else ""
    title = f"Peak memory per GPU (GiB) — {setup.precision}, {setup.optimizer}, {gpus}, offload {setup.offload}"
    if setup.accounting == "deepspeed":
        title += ", DeepSpeed accounting"
    if setup.method != "full":
        title += f", method {setup.method}"
    par = setup.parallel
    layout = [
        f"{name} {value}"
        for name, value in (("tp", par.tp), ("pp", par.pp), ("cp", par.cp), ("ep", par.ep))
        if value > 1
    ]
    if par.sp:
        layout.append("sp")
    if par.fsdp:
        layout.append(f"FSDP {par.fsdp}")
    if layout:
        title += (
            "\n"
            + " · ".join(layout)
            + f" · data parallel {setup.data_parallel_size}, states sharded over {setup.sharding_degree}"
        )
    if training.seq_len is not None:
        title += (
            f"\nmicro-batch {setup.batch_size} × {training.seq_len:,} tokens ({training.seq_len_source}), "
            + _decoder_tokens(training)
            + (f"{setup.grad_accumulation} micro-batches accumulated, " if setup.grad_accumulation > 1 else "")
            + f"attention {setup.attn}, checkpointing {setup.grad_checkpointing}{loss_words(setup)}"
        )
        if setup.dropout is not None:
            title += f", dropout {setup.dropout}"
    return title


def _decoder_tokens(training: TrainingEstimate) -> str:
    """``decoder t tokens (--target-len), `` for an encoder-decoder model's trace, else nothing."""
    profile = training.profile
    if profile is None or profile.target_len is None:
        return ""
    why = "--target-len" if training.setup.target_len is not None else "as --seq-len"
    return f"decoder {profile.target_len:,} tokens ({why}), "


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GIB:,.2f}"


#: The stacked bar's components: (label, bar letter without colour, colour), in the tables' column order.
BAR_PARTS = (
    ("weights", "w", "blue"),
    ("master", "m", "cyan"),
    ("grads", "g", "magenta"),
    ("optim", "o", "yellow"),
    ("activ", "a", "green"),
    ("logits", "l", "bright_green"),
    ("KV cache", "k", "bright_cyan"),
    ("state", "r", "bright_magenta"),
    ("overhead", "x", "bright_black"),
)
BAR_WIDTH = 48


def stage_parts(stage: StageMemory) -> list[tuple[str, int]]:
    """A training row's components in bar order (what the peak is made of)."""
    return [
        ("weights", stage.weights_bytes),
        ("master", stage.master_weights_bytes),
        ("grads", stage.gradients_bytes),
        ("optim", stage.optimizer_states_bytes),
        ("activ", stage.activations_bytes),
        ("logits", stage.logits_bytes),
        ("overhead", stage.overhead_bytes),
    ]


def inference_parts(inference: InferenceEstimate) -> list[tuple[str, int]]:
    return [
        ("weights", inference.weights_bytes),
        ("KV cache", inference.kv_cache_bytes),
        *([("state", inference.recurrent_state_bytes)] if inference.recurrent_state_bytes else []),
        ("activ", inference.activations_bytes),
        ("overhead", inference.overhead_bytes),
    ]


def peak_cell(stage: StageMemory, measured: bool) -> str:
    """A training row's peak in GiB; ``≥`` when the activations are unknown (the trace failed)."""
    return _gib(stage.total_bytes) if measured else f"≥ {_gib(stage.total_bytes)}"


def _fits_cell(fits: bool | None) -> str:
    return {True: "yes", False: "NO", None: "unknown"}[fits]


def stacked_bar(parts: list[tuple[str, int]], full_bytes: int, *, capacity_bytes: int | None = None) -> Text:
    """A bar of `BAR_WIDTH` cells: each component gets cells in proportion to its bytes (largest remainders),
    ``full_bytes`` is the whole width; a ``|`` marks the GPU's usable memory when it falls inside the bar. Cells
    are coloured blocks on a colour terminal and the components' letters (`BAR_PARTS`) otherwise."""
    style = {label: (letter, colour) for label, letter, colour in BAR_PARTS}
    full_bytes = max(full_bytes, 1)
    exact = [(label, size * BAR_WIDTH / full_bytes) for label, size in parts if size > 0]
    cells = {label: int(x) for label, x in exact}
    total_cells = min(BAR_WIDTH, round(sum(x for _, x in exact)))
    for label, _ in sorted(exact, key=lambda item: item[1] - int(item[1]), reverse=True):
        if sum(cells.values()) >= total_cells:
            break
        cells[label] += 1
    text = Text()
    for label, _ in parts:
        letter, colour = style[label]
        for _ in range(cells.get(label, 0)):
            text.append(letter, style=f"{colour} reverse")
    text.append(" " * (BAR_WIDTH - len(text.plain)))
    if capacity_bytes is not None and capacity_bytes < full_bytes:
        mark = min(BAR_WIDTH - 1, round(capacity_bytes * BAR_WIDTH / full_bytes))
        plain = text.plain
        text = text[:mark] + Text("|", style="bold red") + text[mark + 1 :] if mark < len(plain) else text
    return text


def _stage_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    training = report.training
    assert training is not None
    headers = ["ZeRO", "weights", "master", "grads", "optim", "activ", "logits", "overhead", "peak", "at"]
    show_stage = any(s.pipeline_stage is not None for s in shown_stages(training))
    show_cpu = any(s.cpu_bytes_per_node for s in shown_stages(training))
    headers += ["busiest"] * show_stage + ["CPU/node"] * show_cpu
    rows = []
    measured = training.unmeasured is None
    for stage in shown_stages(training):
        row = [
            str(stage.zero_stage),
            _gib(stage.weights_bytes),
            _gib(stage.master_weights_bytes),
            _gib(stage.gradients_bytes),
            _gib(stage.optimizer_states_bytes),
            _gib(stage.activations_bytes) if measured else NOT_MEASURED,
            _gib(stage.logits_bytes) if measured else NOT_MEASURED,
            _gib(stage.overhead_bytes),
            peak_cell(stage, measured),
            (stage.peak_phase or "").replace("optimizer_step", "step") if measured else "",
        ]
        if show_stage:
            row.append(f"stage {stage.pipeline_stage}")
        if show_cpu:
            row.append(_gib(stage.cpu_bytes_per_node))
        rows.append(row)
    return headers, rows


def _bar_scale(totals: list[int], gpu_bytes: int | None) -> int:
    return max([*totals, gpu_bytes or 0, 1])


def _plain_table(headers: list[str], rows: list[list[Any]], *, bold: str | None = None, compact: bool = False) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0) if compact else (0, 1))
    for name in headers:
        left = name in ("at", "fits") or not name
        table.add_column(
            name, justify="left" if left else "right", style="bold" if name == bold else None, overflow="fold"
        )
    for row in rows:
        table.add_row(*row)
    return table


def _turned(headers: list[str], rows: list[list[Any]], *, bold: str | None = None) -> Table:
    """``rows`` as columns: a column of the headers, then one column per row (a narrow table's first fallback)."""
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column(justify="left", no_wrap=True)
    for _ in rows:
        table.add_column(justify="right", no_wrap=True)
    for i, name in enumerate(headers):
        table.add_row(name, *(row[i] for row in rows), style="bold" if name == bold else None)
    return table


def _natural_width(renderable: Any) -> int:
    """The columns ``renderable`` takes when nothing constrains it."""
    console = Console(width=10_000, file=io.StringIO())
    return console.measure(renderable).maximum


#: Shorter column names for a narrow terminal (`_rich_table`), tried before the table is turned.
SHORT_HEADERS = {
    "smallest GPU count": "min GPUs",
    "largest micro-batch": "max batch",
    "max context": "max ctx",
    "headroom": "room",
}


def _rich_table(headers: list[str], rows: list[list[Any]], *, bold: str | None = None, width: int | None = None) -> Any:
    """A table that never wraps a number: as is when it fits ``width`` columns; else compact (`SHORT_HEADERS`, one
    space between columns); else turned (a column per row); else stacked (each row on its own, a line per column)."""
    table = _plain_table(headers, rows, bold=bold)
    if width is None or _natural_width(table) <= width:
        return table
    short = [SHORT_HEADERS.get(name, name) for name in headers]
    bold = SHORT_HEADERS.get(bold, bold) if bold else None
    table = _plain_table(short, rows, bold=bold, compact=True)
    if _natural_width(table) <= width:
        return table
    turned = _turned(short, rows, bold=bold)
    if _natural_width(turned) <= width:
        return Group(Text(""), turned, Text(""))
    blocks: list[Any] = [Text("")]
    for row in rows:
        blocks += [_turned(short, [row], bold=bold), Text("")]
    return Group(*blocks)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; text columns left-aligned, numbers right-aligned."""

    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", " ")

    def numeric(column: int) -> bool:
        values = [r[column] for r in rows if r[column] not in ("", "—")]
        return bool(values) and all(
            v.lstrip("+-").replace(",", "").replace(".", "").split(" ")[0].isdigit() for v in values
        )

    aligns = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _stage_table(report: Report, width: int | None = None) -> Any:
    return _rich_table(*_stage_rows(report), bold="peak", width=width)


def _bar_block(labels: list[str], parts: list[list[tuple[str, int]]], capacity_bytes: int | None) -> Table:
    """One stacked bar per row, all on one scale (the largest total, or the GPU when it is larger)."""
    scale = _bar_scale([sum(size for _, size in p) for p in parts], capacity_bytes)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right")
    grid.add_column(no_wrap=True)
    for label, row in zip(labels, parts, strict=True):
        grid.add_row(label, stacked_bar(row, scale, capacity_bytes=capacity_bytes))
    return grid


def _verdict_rows(report: Report) -> tuple[list[str], list[list[str]]] | None:
    assert report.training is not None
    gpu = report.training.setup.gpu
    if gpu is None:
        return None
    headers = ["ZeRO", "fits", "headroom", "smallest GPU count", "largest micro-batch"]
    rows = []
    for stage in shown_stages(report.training):
        rows.append(
            [
                str(stage.zero_stage),
                _fits_cell(stage.fits),
                "—" if stage.headroom_bytes is None else f"{stage.headroom_bytes / GIB:+,.2f} GiB",
                "—" if stage.min_gpus is None else str(stage.min_gpus),
                "—" if stage.max_batch_size is None else str(stage.max_batch_size),
            ]
        )
    return headers, rows


def _verdict_table(report: Report, width: int | None = None) -> Any:
    verdict = _verdict_rows(report)
    return None if verdict is None else _rich_table(*verdict, width=width)


def _optimizer_step_words(setup: TrainingSetup) -> str:
    """How the step runs, when it is not torch's default (foreach, after backward)."""
    words = []
    if setup.optimizer_impl != "foreach":
        words.append(f"torch {setup.optimizer_impl} step")
    if setup.optimizer_in_backward:
        words.append("stepped in backward, one gradient live at a time")
    return "; " + ", ".join(words) if words else ""


def _footer(report: Report, *, verbose: bool = False) -> Text:
    """The lines under the training table: what answers the question (the method, the busiest pipeline stage, why
    one row, what was not measured, notes); with ``verbose`` also the reference (precision, optimizer, accounting
    convention, each overhead item)."""
    assert report.training is not None
    training = report.training
    setup = training.setup
    lines = []
    if verbose:
        lines += [
            f"Precision: {PRECISION_SPECS[setup.precision].description}.",
            f"Optimizer: {OPTIMIZER_DESCRIPTIONS[setup.optimizer]}{_optimizer_step_words(setup)}.",
            f"Convention: {CONVENTIONS[setup.accounting]}.",
        ]
    if setup.method != "full":
        lines.append(f"Method: {describe_finetune(setup.finetune)}.")
    for stage in shown_stages(training):
        if stage.pipeline_stage is not None:
            first, last = stage.stage_layers or (0, -1)
            holds = f" + {', '.join(stage.stage_holds)}" if stage.stage_holds else ""
            in_flight = in_flight_microbatches(setup, stage.pipeline_stage)
            lines.append(
                f"Busiest GPU, ZeRO-{stage.zero_stage}: pipeline stage {stage.pipeline_stage} of {setup.parallel.pp} "
                f"(layers {first}–{last}{holds}), {in_flight:g} micro-batches of activations in flight "
                f"({setup.parallel.pp_schedule})."
            )
        if verbose and stage.overhead_items:
            parts = " · ".join(f"{name} {size / GIB:,.2f}" for name, size in stage.overhead_items)
            lines.append(f"Overhead, ZeRO-{stage.zero_stage}: {parts}.")
        if stage.paged_states_bytes:
            lines.append(
                f"Paged optimizer states, ZeRO-{stage.zero_stage}: {stage.paged_states_bytes / GIB:,.2f} GiB of "
                "'optim' in CUDA managed memory, outside PyTorch's allocator statistics: allocator peak "
                f"{stage.allocator_bytes / GIB:,.2f} GiB, device total (peak) {stage.total_bytes / GIB:,.2f} GiB."
            )
    if training.unmeasured is not None:
        lines.append(
            f"Activations and logits not measured: {training.unmeasured.rstrip('.')}; each peak is the model "
            "states and overheads only (a lower bound), and a fit is 'unknown' unless the states alone do not fit."
        )
    lines += [f"Note: {note}." for note in training_notes(training)]
    return Text("\n".join(lines), style="dim")


def legend(report: Report, *, bars: bool = True) -> str:
    """The conventions of a report's tables, said once after them: units, what a peak and a total sum, the bar
    letters of the parts shown, and where the reference is."""
    parts = ["GiB = 2^30 bytes", "a peak or total is its row's parts summed (training: at the phase in 'at')"]
    labels: list[str] = []
    if report.training is not None:
        labels += ["weights", "master", "grads", "optim", "activ", "logits"]
    if report.inference is not None:
        labels += ["weights", "KV cache"] + (["state"] if report.inference.recurrent_state_bytes else [])
    if bars and labels:
        letters = {label: letter for label, letter, _ in BAR_PARTS}
        keys = " ".join(f"{letters[label]}={label}" for label in dict.fromkeys([*labels, "activ", "overhead"]))
        mark = ", | = the GPU's usable memory" if _gpu(report) is not None else ""
        parts.append(f"bars: {keys}{mark}")
    parts.append("-v: conventions and overheads; --explain: every formula")
    return "; ".join(parts) + "."


def _inference_title(inference: InferenceEstimate) -> str:
    setup = inference.setup
    gpus = f", tensor parallel {setup.tp}" if setup.tp > 1 else ""
    return (
        f"Inference per GPU (GiB) — weights {inference.weights_name}, KV cache {inference.kv_dtype}{gpus}\n"
        f"batch {setup.batch_size} × {inference.context:,} tokens of context ({inference.context_source}), "
        f"prefill chunk {inference.prefill_tokens:,} tokens"
    )


def _inference_rows(inference: InferenceEstimate) -> tuple[list[str], list[list[str]]]:
    parts = inference_parts(inference)
    headers = [label for label, _ in parts] + ["total"]
    row = [_gib(size) for _, size in parts] + [_gib(inference.total_bytes)]
    if inference.setup.gpu is not None:
        headers += ["fits", "headroom", "max context", "max batch"]
        row += [
            "yes" if inference.fits else "NO",
            f"{(inference.headroom_bytes or 0) / GIB:+,.2f} GiB",
            "—" if inference.max_context is None else f"{inference.max_context:,}",
            "—" if inference.max_batch_size is None else f"{inference.max_batch_size:,}",
        ]
    return headers, [row]


def _inference_table(inference: InferenceEstimate, width: int | None = None) -> Any:
    return _rich_table(*_inference_rows(inference), bold="total", width=width)


def _kv_phrase(group: dict[str, Any]) -> str:
    count, kind = group["layers"], group["kind"]
    what = {
        "full": "full attention",
        "sliding": f"sliding window {group['window_tokens'] or 0:,}",
        "cross": "cross-attention (encoder tokens)",
        "state": "recurrent state",
    }[kind]
    if kind == "state":
        return f"{count} × {what} {group['fixed_elements']:,} elements"
    heads = f"{group['heads']} head{'s' if group['heads'] != 1 else ''}"
    return f"{count} × {what}: {heads}, {group['elements_per_token']:,} elements/token"


def _kv_line(inference: InferenceEstimate) -> str:
    if not inference.kv_layers:
        return "KV cache: none (no attention layer caches keys and values)."
    tp = inference.setup.tp
    return (
        f"KV cache: {inference.kv_cache_bytes_per_token:,} bytes per token per sequence"
        + (f" per GPU (its share of the KV heads under tensor parallel {tp})" if tp > 1 else "")
        + (" (until the sliding windows fill)" if any(layer.kind == "sliding" for layer in inference.kv_layers) else "")
        + ("; whole layers: " if tp > 1 else "; ")
        + "; ".join(_kv_phrase(g) for g in kv_layer_summary(inference.kv_layers))
        + "."
    )


def _state_lines(inference: InferenceEstimate) -> list[str]:
    summary = _state_summary(inference)
    if not summary["layers"]:
        return []
    return [
        f"Recurrent state: {summary['bytes_per_sequence']:,} bytes per sequence ({summary['layers']} layers), "
        f"whatever the context; for {inference.setup.batch_size:,} "
        f"sequence{'s' if inference.setup.batch_size != 1 else ''}: "
        f"{inference.recurrent_state_bytes / GIB:,.2f} GiB."
    ]


def _inference_footer(report: Report, inference: InferenceEstimate, *, verbose: bool = False) -> Text:
    weights = inference.weights
    lines = [
        "Weights: "
        + (
            f"{weights.quantized_params:,} parameters quantized ({weights.quantized_data_bytes / GIB:,.2f} GiB "
            f"+ {weights.quantization_metadata_bytes / GIB:,.3f} GiB scales/zeros), "
            f"{weights.unquantized_params:,} kept in 16/32-bit ({weights.unquantized_bytes / GIB:,.2f} GiB)"
            if weights.quantized_params
            else f"{weights.unquantized_params:,} parameters, {weights.total_bytes / GIB:,.2f} GiB"
        )
        + f"; source: {inference.weights_source}"
        + (f"; split over {inference.setup.tp} GPUs" if inference.setup.tp > 1 else "")
        + ".",
        _kv_line(inference),
        *_state_lines(inference),
        *(
            ["Overhead: " + " · ".join(f"{name} {size / GIB:,.2f}" for name, size in inference.overhead_items) + "."]
            if verbose
            else []
        ),
    ]
    lines += [f"Note: {note}." for note in inference.notes]
    if report.checkpoint is not None:
        lines += render_comparison(report.checkpoint)
    lines += [f"Note: {note}." for note in _plan_notes(report)]
    return Text("\n".join(lines), style="dim")


def render_table(report: Report, *, color: bool = False, width: int = 100, verbose: bool = False) -> str:
    """The human report: model summary, the training plan (a row per ZeRO stage that differs), the serving plan,
    then one legend. Tables adapt to ``width`` (turned or stacked, `_rich_table`) so that no number wraps;
    ``verbose`` adds the reference lines (conventions, overhead items, modules)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False)
    console.print(_summary(report, verbose=verbose))
    if report.training is not None:
        console.print()
        console.print(Text(_stage_title(report), style="bold"))
        console.print(_stage_table(report, width))
        gpu_bytes = report.training.setup.gpu.usable_bytes if report.training.setup.gpu else None
        stages = shown_stages(report.training)
        console.print(_bar_block([f"ZeRO-{s.zero_stage}" for s in stages], [stage_parts(s) for s in stages], gpu_bytes))
        verdict = _verdict_table(report, width)
        if verdict is not None:
            gpu = report.training.setup.gpu
            assert gpu is not None
            console.print(
                Text(f"Fit on {gpu.name} ({gpu.usable_bytes / GIB:,.2f} GiB usable by PyTorch)", style="bold")
            )
            console.print(verdict)
        footer = _footer(report, verbose=verbose)
        if footer.plain:
            console.print(footer)
    inference = report.inference
    if report.engine is not None:
        console.print()
        console.print(Text(_engine_title(report.engine), style="bold"))
        console.print(_rich_table(["", "per GPU"], [list(row) for row in engine_rows(report.engine)]))
        console.print(Text("\n".join(_engine_footer(report)), style="dim"))
    elif inference is not None:
        console.print()
        console.print(Text(_inference_title(inference), style="bold"))
        if inference.setup.gpu is not None:
            gpu = inference.setup.gpu
            console.print(Text(f"on {gpu.name} ({gpu.usable_bytes / GIB:,.2f} GiB usable by PyTorch)"))
        console.print(_inference_table(inference, width))
        gpu_bytes = inference.setup.gpu.usable_bytes if inference.setup.gpu else None
        console.print(_bar_block(["serve"], [inference_parts(inference)], gpu_bytes))
        console.print()
        console.print(_inference_footer(report, inference, verbose=verbose))
    else:
        lines = _unmeasured_inference_lines(report) + [f"Note: {note}." for note in _plan_notes(report)]
        if lines:
            console.print(Text("\n".join(lines), style="dim"))
    console.print()
    console.print(Text(legend(report), style="dim"))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def _plan_notes(report: Report) -> list[str]:
    """``report.notes`` less the model's own (``model.notes``), which the CLI prints on stderr before the output."""
    return [note for note in report.notes if note not in report.model.notes]


def _unmeasured_inference_lines(report: Report) -> list[str]:
    if report.inference_unmeasured is None:
        return []
    return [f"Inference: {NOT_MEASURED}: {report.inference_unmeasured.rstrip('.')}."]


def _footer_lines(text: Text) -> list[str]:
    return text.plain.splitlines()


def render_markdown(report: Report, *, verbose: bool = False) -> str:
    """The report as GitHub-flavoured Markdown (for PR comments and issues): the same tables and notes, no bars."""
    inv = report.inventory
    out = [f"### {report.model.model_id}", ""]
    out.append(f"- Config: {describe_source(report)}")
    if report.model.source != "params":
        arch = (inv.architecture or "—") + (f" ({inv.model_type})" if inv.model_type else "")
        out.append(f"- Architecture: {arch}")
    out.append(
        f"- Parameters: {inv.total_params:,} ({format_count_short(inv.total_params)}), "
        f"trainable {inv.trainable_params:,}"
    )
    if inv.moe is not None:
        out.append(f"- Active per token: {inv.active_params_per_token:,}")
    if report.training is not None:
        out += ["", "**" + _stage_title(report).replace("\n", "; ") + "**", "", markdown_table(*_stage_rows(report))]
        verdict = _verdict_rows(report)
        gpu = report.training.setup.gpu
        if verdict is not None and gpu is not None:
            out += ["", f"**Fit on {gpu.name} ({gpu.usable_bytes / GIB:,.2f} GiB usable by PyTorch)**", ""]
            out.append(markdown_table(*verdict))
        out += ["", *(f"- {line}" for line in _footer_lines(_footer(report, verbose=verbose)))]
    if report.engine is not None:
        out += ["", "**" + _engine_title(report.engine).replace("\n", "; ") + "**", ""]
        out.append(markdown_table(["", "per GPU"], [list(row) for row in engine_rows(report.engine)]))
        out += ["", *(f"- {line}" for line in _engine_footer(report) if line)]
    elif report.inference is not None:
        inference = report.inference
        out += ["", "**" + _inference_title(inference).replace("\n", "; ") + "**", ""]
        out.append(markdown_table(*_inference_rows(inference)))
        out += ["", *(f"- {line}" for line in _footer_lines(_inference_footer(report, inference, verbose=verbose)))]
    else:
        lines = _unmeasured_inference_lines(report) + [f"Note: {note}." for note in _plan_notes(report)]
        if lines:
            out += ["", *(f"- {line}" for line in lines)]
    out += ["", f"- {legend(report, bars=False)}"]
    return "\n".join(out) + "\n"


# --- sweeps: one row per combination of list-valued options ------------------------------------------------------

SweepRow = tuple[tuple[tuple[str, str], ...], Report]


def _sweep_rows(rows: list[SweepRow]) -> tuple[list[str], list[list[str]], list[list[bool | None]]]:
    """Headers, cells and fit marks of a sweep. Columns are keyed by ZeRO stage over all rows (an offload list plans
    different stages per row: "—" where a row has no such stage), and CPU RAM per node gets a column per stage that
    offloads in any row, as in the single report."""
    first = rows[0][1]
    headers = [name for name, _ in rows[0][0]]
    by_row = [{s.zero_stage: s for s in shown_stages(report.training)} if report.training else {} for _, report in rows]
    stages = sorted({z for planned in by_row for z in planned})
    cpu_stages = [z for z in stages if any(planned.get(z) and planned[z].cpu_bytes_per_node for planned in by_row)]
    headers += [f"ZeRO-{z} peak" for z in stages] + [f"ZeRO-{z} CPU/node" for z in cpu_stages]
    engines = first.engine is not None
    if engines:
        headers += ["KV tokens", "max concurrency", "starts"]
    elif first.inference is not None or first.inference_unmeasured is not None:
        headers.append("serve total")
    table: list[list[str]] = []
    fits: list[list[bool | None]] = []
    for (values, report), planned in zip(rows, by_row, strict=True):
        row = [value for _, value in values]
        marks: list[bool | None] = [None] * len(row)
        measured = report.training is None or report.training.unmeasured is None
        for z in stages:
            stage = planned.get(z)
            row.append("—" if stage is None else peak_cell(stage, measured) + ("" if stage.fits is not False else " ✗"))
            marks.append(None if stage is None else stage.fits)
        for z in cpu_stages:
            stage = planned.get(z)
            row.append("—" if stage is None else _gib(stage.cpu_bytes_per_node))
            marks.append(None)
        if engines:
            engine = report.engine
            if engine is None:
                row += ["—", "—", NOT_MEASURED if report.inference_unmeasured is not None else "—"]
                marks += [None, None, None]
            else:
                mark = "" if engine.fits else " ✗"
                row += [f"{engine.kv_tokens:,}", f"{engine.max_concurrency:,.2f}x{mark}", _yes(engine.starts)]
                marks += [None, engine.fits, engine.starts]
        elif report.inference is not None:
            row.append(_gib(report.inference.total_bytes) + ("" if report.inference.fits is not False else " ✗"))
            marks.append(report.inference.fits)
        elif report.inference_unmeasured is not None:
            row.append(NOT_MEASURED)
            marks.append(None)
        table.append(row)
        fits.append(marks)
    return headers, table, fits


def _sweep_title(rows: list[SweepRow]) -> str:
    first = rows[0][1]
    if first.engine is not None:
        engine = first.engine
        title = f"{first.model.model_id}: {len(rows):,} combinations, {_engine_name(engine)} start-up per GPU"
        wanted = f", at least {engine.setup.min_concurrency}x" if engine.setup.min_concurrency else ""
        return title + f"; ✗ = does not start{wanted}"
    gpu = (first.training.setup.gpu if first.training else None) or (
        first.inference.setup.gpu if first.inference else None
    )
    title = f"{first.model.model_id}: {len(rows):,} combinations, per-GPU peak (GiB)"
    if gpu is not None:
        title += f"; ✗ = does not fit {gpu.name} ({gpu.usable_bytes / GIB:,.2f} GiB usable)"
    return title


def render_sweep(rows: list[SweepRow], *, color: bool = False, width: int = 100, markdown: bool = False) -> str:
    """One table, a row per combination of the swept options: training peak per ZeRO stage and serving total."""
    headers, table, fits = _sweep_rows(rows)
    missing = _sweep_missing(rows)
    if markdown:
        return (
            f"**{_sweep_title(rows)}**\n\n"
            + markdown_table(headers, table)
            + "\n"
            + "".join(f"\n- Note: {line}" for line in missing)
            + ("\n" if missing else "")
        )
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False)
    console.print(Text(_sweep_title(rows), style="bold"))
    styled = [
        [
            Text(cell, style="red" if mark is False else ("green" if mark else ""))
            for cell, mark in zip(row, marks, strict=True)
        ]
        for row, marks in zip(table, fits, strict=True)
    ]
    console.print(_rich_table(headers, styled, width=width))
    if missing:
        console.print(Text("\n".join(f"Note: {line}" for line in missing), style="dim"))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()).rstrip("\n") + "\n"


def _sweep_missing(rows: list[SweepRow]) -> list[str]:
    """Why a sweep's peaks are lower bounds (``≥``) or its serving totals are missing, each reason once."""
    lines: dict[str, None] = {}
    for _, report in rows:
        if report.training is not None and len(shown_stages(report.training)) < len(report.training.stages):
            lines["—: " + (_one_row_note(report.training) or "") + "."] = None
        if report.training is not None and report.training.unmeasured is not None:
            lines[f"≥: activations and logits not measured ({report.training.unmeasured.rstrip('.')})."] = None
        if report.inference_unmeasured is not None:
            lines[f"serving {NOT_MEASURED}: {report.inference_unmeasured.rstrip('.')}."] = None
    return list(lines)


def sweep_to_dict(rows: list[SweepRow]) -> dict[str, Any]:
    """The model once, then a row per combination: ``{"schema_version", "hfmem_version", "model", "swept":
    [option], "rows": [{"values": {option: value}, "parameters", "training", "inference", "engine", "gpu",
    "notes"}]}``;
    each row's keys mean what they mean in `to_dict` (``parameters`` without the per-module counts)."""
    first = to_dict(rows[0][1])
    out_rows = []
    for values, report in rows:
        doc = to_dict(report)
        doc["parameters"].pop("modules", None)
        out_rows.append(
            {
                "values": dict(values),
                **{k: doc[k] for k in ("parameters", "training", "inference", "engine", "gpu", "notes")},
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "hfmem_version": first["hfmem_version"],
        "model": first["model"],
        "swept": [name for name, _ in rows[0][0]],
        "rows": out_rows,
    }


# --- compare: the same settings on several models, side by side --------------------------------------------------


def _compare_rows(reports: list[Report]) -> tuple[list[str], list[list[str]]]:
    short = [r.model.model_id.rstrip("/").rsplit("/", 1)[-1] for r in reports]
    names = short if len(set(short)) == len(short) else [r.model.model_id for r in reports]
    headers = ["", *names]

    def line(label: str, cell: Any) -> list[str]:
        return [label, *(cell(r) for r in reports)]

    rows = [
        line("parameters", lambda r: f"{r.inventory.total_params:,} ({format_count_short(r.inventory.total_params)})"),
        line("trainable", lambda r: f"{r.inventory.trainable_params:,}"),
        line("architecture", lambda r: r.inventory.architecture or "—"),
    ]
    stages = sorted({s.zero_stage for r in reports if r.training for s in shown_stages(r.training)})
    for z in stages:

        def peak(r: Report, z: int = z) -> str:
            stage = next((s for s in shown_stages(r.training) if s.zero_stage == z), None) if r.training else None
            if stage is None:
                return "—"
            mark = {True: " fits", False: " ✗", None: ""}[stage.fits]
            assert r.training is not None
            return f"{peak_cell(stage, r.training.unmeasured is None)} GiB{mark}"

        rows.append(line(f"train peak ZeRO-{z}", peak))
    if any(r.inference for r in reports):
        rows.append(
            line(
                "serve total",
                lambda r: (
                    (NOT_MEASURED if r.inference_unmeasured is not None else "—")
                    if r.inference is None
                    else f"{_gib(r.inference.total_bytes)} GiB"
                    + {True: " fits", False: " ✗", None: ""}[r.inference.fits]
                ),
            )
        )
        rows.append(
            line(
                "KV cache per token",
                lambda r: "—" if r.inference is None else f"{r.inference.kv_cache_bytes_per_token:,} B",
            )
        )
    if any(r.engine for r in reports):
        rows += [
            line("engine KV budget", lambda r: "—" if r.engine is None else _g(r.engine.kv_budget_bytes)),
            line("engine KV tokens", lambda r: "—" if r.engine is None else f"{r.engine.kv_tokens:,}"),
            line(
                "max concurrency",
                lambda r: "—" if r.engine is None else _concurrency_cell(r.engine),
            ),
            line("engine starts", lambda r: "—" if r.engine is None else _starts_cell(r.engine)),
        ]
    rows.append(line("verdict", _verdict_words))
    return headers, rows


def _verdict_words(report: Report) -> str:
    """What fits, in a few words: the least-sharded ZeRO stage that fits, and serving."""
    parts = []
    if report.training is not None and report.training.unmeasured is not None:
        fails = any(s.fits is False for s in shown_stages(report.training))
        parts.append("does not train here" if fails else "training not measured")
    elif report.training is not None:
        if report.training.setup.gpu is None:
            best = min(shown_stages(report.training), key=lambda s: s.total_bytes)
            parts.append(f"lowest peak ZeRO-{best.zero_stage}")
        else:
            fitting = [s.zero_stage for s in shown_stages(report.training) if s.fits]
            parts.append(f"trains with ZeRO-{fitting[0]}" if fitting else "does not train here")
    if report.engine is not None:
        name = report.engine.engine
        parts.append(f"{name} serves" if report.engine.fits else f"{name} does not serve")
    elif report.inference is not None and report.inference.fits is not None:
        parts.append("serves" if report.inference.fits else "does not serve")
    return "; ".join(parts) or "—"


def render_compare(reports: list[Report], *, color: bool = False, width: int = 100, markdown: bool = False) -> str:
    """Several models under the same settings, one column each."""
    headers, rows = _compare_rows(reports)
    first = reports[0]
    setup = first.training.setup if first.training else None
    gpu = (setup.gpu if setup else None) or (first.inference.setup.gpu if first.inference else None)
    title = "Same settings, side by side (per-GPU GiB)"
    if setup is not None:
        gpus = setup.gpus_per_node * setup.nodes
        title += f" — {setup.precision}, {setup.optimizer}, {gpus} GPU(s), micro-batch {setup.batch_size}"
        # Without --seq-len each model trains at its own default: one figure when they agree, else each model's.
        trained = [r.training for r in reports if r.training is not None and r.training.seq_len]
        lengths = [(training.seq_len_source, training.seq_len) for training in trained]
        if lengths and len({length for _, length in lengths}) == 1:
            sources = {source for source, _ in lengths}
            title += f" × {lengths[0][1]:,} tokens" + (f" ({sources.pop()})" if len(sources) == 1 else "")
        elif lengths:
            each = " / ".join(f"{length:,}" for _, length in lengths)
            title += f" × {each} tokens (each model's, in column order)"
        title += f", checkpointing {setup.grad_checkpointing}{loss_words(setup)}"
    if gpu is not None:
        title += f"; fit on {gpu.name} ({gpu.usable_bytes / GIB:,.2f} GiB usable)"
    notes = [
        f"{r.model.model_id}: {n}"
        for r in reports
        for n in (
            *(training_notes(r.training) if r.training else ()),
            *(
                [f"activations not measured: {r.training.unmeasured.rstrip('.')}"]
                if r.training and r.training.unmeasured
                else []
            ),
            *([f"inference not measured: {r.inference_unmeasured.rstrip('.')}"] if r.inference_unmeasured else []),
            *_plan_notes(r),
        )
    ]
    if markdown:
        return (
            f"**{title}**\n\n"
            + markdown_table(headers, rows)
            + "\n"
            + "".join(f"\n- Note: {n}." for n in notes)
            + ("\n" if notes else "")
        )
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False)
    console.print(Text(title, style="bold"))
    console.print(_rich_table(headers, rows, width=width))
    if notes:
        console.print(Text("\n".join(f"Note: {n}." for n in notes), style="dim"))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def compare_to_dict(reports: list[Report]) -> dict[str, Any]:
    """``{"schema_version", "models": [to_dict(report) per model, in the order given]}``."""
    return {"schema_version": SCHEMA_VERSION, "models": [to_dict(r) for r in reports]}


# --- the checkpoint cross-check ---------------------------------------------------------------------------------


def comparison_to_dict(comparison: CheckpointComparison) -> dict[str, Any]:
    """The comparison as JSON-ready data: integers, stable keys."""
    summary = comparison.summary
    return {
        "source": summary.source,
        "tensors": summary.tensor_count,
        "params_by_dtype": dict(summary.params_by_dtype),
        "bytes_by_dtype": dict(summary.bytes_by_dtype),
        "total_params": summary.total_params,
        "total_bytes": summary.total_bytes,
        "built_params": comparison.built_params,
        "difference_params": comparison.difference_params,
        "explained": [
            {
                "reason": g.reason,
                "description": g.description,
                "tensors": g.tensors,
                "params": g.params,
                "bytes": g.bytes,
                "examples": list(g.examples),
            }
            for g in comparison.explained
        ],
        "unexplained_params": comparison.unexplained_params,
        "unexplained_examples": list(comparison.unexplained_examples),
        "scheme": comparison.scheme_name,
        "scheme_metadata_bytes": comparison.scheme_metadata_bytes,
    }


def render_comparison(comparison: CheckpointComparison) -> list[str]:
    """Short lines for the table output (no label column; GiB = 2^30 bytes, labelled)."""
    summary = comparison.summary
    lines = [
        f"{summary.tensor_count:,} tensors, {summary.total_params:,} values, {format_gib(summary.total_bytes)} "
        f"({summary.source})",
        " · ".join(
            f"{dtype} {summary.params_by_dtype[dtype]:,} ({format_gib(summary.bytes_by_dtype[dtype])})"
            for dtype in summary.params_by_dtype
        ),
        f"stored − built = {summary.total_params:,} − {comparison.built_params:,} = {comparison.difference_params:+,}",
    ]
    for group in comparison.explained:
        what = group.description
        if group.reason == "extra_modules" and comparison.num_hidden_layers is not None:
            what += f" (layer index ≥ num_hidden_layers {comparison.num_hidden_layers})"
        shown = group.examples
        if group.reason in ("quantization_metadata", "persistent_buffers"):  # the kinds: weight_scale_inv, inv_freq…
            shown = tuple(dict.fromkeys(name.rsplit(".", 1)[-1] for name in group.examples))
        examples = f": {', '.join(shown[:2])}" if shown else ""
        lines.append(f"  {group.params:+,} {what}, {group.tensors:,} tensors{examples}")
    if comparison.scheme_metadata_bytes is not None:
        stored_meta = comparison.group("quantization_metadata")
        lines.append(
            f"  quantization metadata: stored {format_gib(stored_meta.bytes if stored_meta else 0)}, "
            f"hfmem's {comparison.scheme_name} formula {format_gib(comparison.scheme_metadata_bytes)}"
        )
    if comparison.unexplained_params or comparison.unexplained_tensors:
        names = f": {', '.join(comparison.unexplained_examples)}" if comparison.unexplained_examples else ""
        count = comparison.unexplained_tensors
        lines.append(f"  {comparison.unexplained_params:+,} unexplained, {count:,} tensors{names}")
    else:
        lines.append("  fully explained (unexplained 0)")
    return lines


def describe_finetune(finetune: FinetuneSettings) -> str:
    """One line for the report: the method and its settings."""
    if finetune.method == "full":
        return "full fine-tuning: every parameter trained"
    if finetune.method == "freeze":
        return f"frozen base, trained: {', '.join(finetune.train_modules)}"
    targets = (
        "peft's default for the architecture" if finetune.lora_targets is None else ",".join(finetune.lora_targets)
    )
    text = f"{'DoRA' if finetune.dora else 'LoRA'} rank {finetune.lora_rank} on {targets}"
    if finetune.modules_to_save:
        text += f", modules_to_save {','.join(finetune.modules_to_save)}"
    text += "; adapters fp32 (peft autocast_adapter_dtype)"
    if finetune.method == "qlora":
        text += "; base linears NF4 (bitsandbytes, blocks of 64"
        text += ", double quant)" if finetune.double_quant else ")"
        text += ", other frozen tensors 16-bit"
    else:
        text += "; frozen base in the working precision"
    return text


# --- settings taken from --launch-config files -------------------------------------------------------------------


def launch_to_dict(outcome: LaunchOutcome) -> dict[str, Any]:
    """The ``"launch"`` object of the JSON: the files read and what became of each of their settings."""
    return {
        "files": [{"path": path, "format": fmt} for path, fmt in outcome.files],
        "applied": list(outcome.applied),
        "overridden_by_flags": list(outcome.overridden_by_flags),
        "recognised_not_modelled": list(outcome.recognised_not_modelled),
        "unresolved": list(outcome.unresolved),
        "not_understood": list(outcome.not_understood),
        "no_memory_effect": list(outcome.no_memory_effect),
    }


def _launch_value(value: Any) -> str:
    return "" if value is True else f" {value}"


def render_launch(outcome: LaunchOutcome, *, markdown: bool = False) -> str:
    """The short "Settings from launch files" block printed after the table: one line per setting and origin."""
    lines = [f"{a['option']}{_launch_value(a['value'])}  ← {a['origin']}" for a in outcome.applied]
    lines += [
        f"{o['option']}{_launch_value(o['flag_value'])} (typed) over {json.dumps(o['value'])}  ← {o['origin']}"
        for o in outcome.overridden_by_flags
    ]
    lines += [
        f"not modelled: {n['option']}{_launch_value(n['value'])}  ← {n['origin']} ({n['reason']})"
        for n in outcome.recognised_not_modelled
    ]
    lines += [f"unresolved: {u['origin']} ({u['option']}): {u['reason']}" for u in outcome.unresolved]
    lines += [f"not understood: {key}" for key in outcome.not_understood]
    if outcome.no_memory_effect:
        count = len(outcome.no_memory_effect)
        lines.append(f"{count} key{'s' if count != 1 else ''} with no effect on memory (listed by --json)")
    if markdown:
        return "\n**Settings from launch files**\n\n" + "".join(f"- {line}\n" for line in lines)
    return "\nSettings from launch files\n" + "".join(f"  {line}\n" for line in lines)


# --- serving engines: the start-up accounting (`hfmem.memory.engine`) ----------------------------------------------

ENGINE_NAMES = {"vllm": "vLLM", "sglang": "SGLang"}


def _engine_name(engine: EngineEstimate) -> str:
    return f"{ENGINE_NAMES.get(engine.engine, engine.engine)} {engine.engine_version}"


def _engine_title(engine: EngineEstimate) -> str:
    parallel = f", tensor parallel {engine.tp}" if engine.tp > 1 else ""
    if engine.pp > 1:
        parallel += f", pipeline parallel {engine.pp} (rank {engine.pp_rank}, the tightest)"
    return (
        f"{_engine_name(engine)} start-up on {engine.gpu.name} ({engine.total_bytes / GIB:,.2f} GiB){parallel}\n"
        f"max_model_len {engine.max_model_len:,} ({engine.max_model_len_source}), KV cache {engine.kv_dtype}"
    )


def _g(num_bytes: int, places: int = 2) -> str:
    return f"{num_bytes / GIB:,.{places}f} GiB"


def _kv_spec_text(engine: EngineEstimate) -> str:
    words = {"full": "full attention", "mla": "MLA latent", "sliding": "sliding window", "mamba": "Mamba/linear state"}
    parts = []
    for g in engine.kv_groups:
        what = words.get(g.kind, g.kind) + (f" {g.window_tokens:,}" if g.window_tokens else "")
        if g.kind == "mamba":
            size = f"{g.state_bytes:,} B state per sequence, padded to a {g.page_bytes:,} B page"
        else:
            size = f"{g.elements_per_token:,} elements/token × {g.element_bytes} B, page {g.page_bytes:,} B"
        parts.append(f"{g.layers} × {what}: {size}")
    return "; ".join(parts)


def engine_rows(engine: EngineEstimate) -> list[tuple[str, str]]:
    """The engine's start-up accounting, line by line: ``(what, value)``, the engine's own wording in quotes."""
    if engine.engine == "sglang":
        return _sglang_rows(engine)
    rows = [
        ("GPU total memory", _g(engine.total_bytes)),
        (
            f"× gpu_memory_utilization {engine.gpu_memory_utilization:g} = what vLLM may use",
            _g(engine.requested_bytes),
        ),
        ('− weights "Model loading took"', _g(engine.weights_bytes, 4) + _weights_detail(engine)),
        (
            "− PyTorch activation peak (profile run)",
            f"{_g(engine.activation_peak_bytes)} (forward of {engine.batched_tokens:,} tokens "
            f"{_g(engine.activation_trace_bytes)}; sampler on {min(engine.max_num_seqs, engine.batched_tokens):,} × "
            f"{engine.vocab_size:,} logits {_g(engine.sampler_bytes)}: the larger moment)",
        ),
        ("− non-torch memory", f"{_g(engine.non_torch_bytes)} (published figure; measured by vLLM)"),
        ('= "Available KV cache memory"', _g(engine.kv_budget_bytes)),
        ("KV cache spec per layer", _kv_spec_text(engine) + f"; blocks of {engine.block_size} tokens"),
        (
            "blocks",
            f"{engine.num_blocks:,}"
            + (
                f" ({engine.num_groups} KV-cache groups of {engine.group_size} layers sharing one pool)"
                if engine.grouping == "hybrid"
                else ""
            ),
        ),
        ('"GPU KV cache size"', f"{engine.kv_tokens:,} tokens"),
        (
            f'"Maximum concurrency for {engine.max_model_len:,} tokens per request"',
            f"{engine.max_concurrency:.2f}x ({engine.blocks_per_request:,} blocks per request)",
        ),
        (f"KV cache of one {engine.max_model_len:,}-token request", _g(engine.kv_needed_bytes)),
        (
            "CUDA graphs",
            "none (--enforce-eager)"
            if engine.setup.enforce_eager
            else f"not subtracted in {engine.engine_version} (captured after the KV cache)",
        ),
        ("starts", _starts_cell(engine)),
    ]
    if engine.meets_min_concurrency is not None:
        rows.append((f"holds {engine.setup.min_concurrency:,} concurrent requests", _yes(engine.meets_min_concurrency)))
    return rows


def _weights_detail(engine: EngineEstimate) -> str:
    parts = [f"RoPE cache {engine.rope_cache_bytes / 2**20:,.0f} MiB"] if engine.rope_cache_bytes else []
    if engine.vocab_padding_bytes:
        parts.append(f"vocabulary padded to a multiple of 64: {engine.vocab_padding_bytes / 2**20:,.0f} MiB")
    return f" (incl. {', '.join(parts)})" if parts else ""


def _sglang_rows(engine: EngineEstimate) -> list[tuple[str, str]]:
    fraction = engine.mem_fraction_static or 0.0
    rows = [
        ("GPU total memory", _g(engine.total_bytes)),
        ('free before the weights ("Load weight begin. avail mem")', _g(engine.requested_bytes)),
        ('− weights ("mem usage")', _g(engine.weights_bytes) + _weights_detail(engine)),
        (
            f"− free before × (1 − mem_fraction_static {fraction:g}), left for activations and CUDA graphs",
            _g(int(engine.requested_bytes * (1 - fraction))),
        ),
        ("= KV pool budget", _g(engine.kv_budget_bytes)),
        ("KV cache per token (cell size)", f"{engine.kv_bytes_per_token:,} B: {_kv_spec_text(engine)}"),
        ('"max_total_num_tokens"', f"{engine.kv_tokens:,} tokens (pages of {engine.block_size})"),
        ('"max_running_requests"', f"{engine.max_running_requests or 0:,}"),
        (
            f"concurrent {engine.max_model_len:,}-token requests",
            f"{engine.max_concurrency:.2f} (max_total_num_tokens / context_len, at most max_running_requests)",
        ),
        ("longest request (max_req_len)", f"{engine.max_req_len or 0:,} tokens"),
        (
            f"prefill activations ({engine.batched_tokens:,}-token chunk, traced)",
            f"{_g(engine.activation_peak_bytes)}; head-room left {_g(engine.headroom_bytes)}",
        ),
        ("starts", _starts_cell(engine)),
    ]
    if engine.meets_min_concurrency is not None:
        rows.append((f"holds {engine.setup.min_concurrency:,} concurrent requests", _yes(engine.meets_min_concurrency)))
    return rows


def _concurrency_cell(engine: EngineEstimate) -> str:
    return f"{engine.max_concurrency:,.2f}x at {engine.max_model_len:,}" + ("" if engine.fits else " ✗")


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _starts_cell(engine: EngineEstimate) -> str:
    if engine.starts:
        return "yes"
    if engine.largest_max_model_len:
        return f"NO — the longest max_model_len that fits is {engine.largest_max_model_len:,}"
    return "NO — no memory left for the KV cache"


def engine_log_lines(engine: EngineEstimate) -> list[str]:
    """The start-up lines the engine logs, in its own wording, with hfmem's numbers."""
    if engine.engine == "sglang":
        free_after = engine.requested_bytes - engine.weights_bytes
        lines = [
            f"Load weight begin. avail mem={engine.requested_bytes / GIB:.2f} GB",
            f"Load weight end. avail mem={free_after / GIB:.2f} GB, mem usage={engine.weights_bytes / GIB:.2f} GB.",
        ]
        if not engine.starts:
            return [*lines, f"RuntimeError: {engine.refusal}"]
        if any(g.kind == "mla" for g in engine.kv_groups):
            pool = f"KV size: {engine.pool_bytes / GIB:.2f} GB"
        else:
            pool = f"K size: {engine.pool_bytes / 2 / GIB:.2f} GB, V size: {engine.pool_bytes / 2 / GIB:.2f} GB"
        return [
            *lines,
            f"KV Cache is allocated. #tokens: {engine.kv_tokens}, {pool}",
            f"max_total_num_tokens={engine.kv_tokens}, chunked_prefill_size={engine.batched_tokens}, "
            f"max_running_requests={engine.max_running_requests}, context_len={engine.max_model_len}",
        ]
    lines = [
        f"Model loading took {engine.weights_bytes / GIB:.4f} GiB",
        f"Available KV cache memory: {engine.kv_budget_bytes / GIB:.2f} GiB",
    ]
    if not engine.starts:
        return [*lines, f"ValueError: {engine.refusal}"]
    return [
        *lines,
        f"GPU KV cache size: {engine.kv_tokens:,} tokens",
        f"Maximum concurrency for {engine.max_model_len:,} tokens per request: {engine.max_concurrency:.2f}x",
    ]


def engine_verdict_line(report: Report) -> str:
    """One line saying why a deployment fails its check (or that it passes)."""
    engine = report.engine
    assert engine is not None
    who = f"{_engine_name(engine)} on {engine.gpu.name}"
    fixes = f"; try {' or '.join(engine.fixes)}" if engine.fixes else ""
    if not engine.starts:
        why = (
            f"one {engine.max_model_len:,}-token request needs {_g(engine.kv_needed_bytes)} of KV cache, "
            f"{_g(max(engine.kv_budget_bytes, 0))} is available"
            if engine.kv_budget_bytes > 0
            else "no memory is left for the KV cache"
        )
        return f"{report.model.model_id} does not start with {who}: {why}{fixes}"
    if engine.meets_min_concurrency is False:
        return (
            f"{report.model.model_id} holds {engine.max_concurrency:.2f} concurrent {engine.max_model_len:,}-token "
            f"requests with {who}, below --min-concurrency {engine.setup.min_concurrency}{fixes}"
        )
    return (
        f"{report.model.model_id} starts with {who}: {engine.max_concurrency:.2f}x at {engine.max_model_len:,} tokens"
    )


def _engine_footer(report: Report) -> list[str]:
    engine = report.engine
    assert engine is not None
    lines = [f"As {ENGINE_NAMES.get(engine.engine, engine.engine)} would log it:"]
    lines += [f"  {line}" for line in engine_log_lines(engine)]
    lines.append(f"Verdict: {engine_verdict_line(report)}.")
    if engine.fixes:
        lines.append("What would change it: " + "; ".join(engine.fixes) + ".")
    lines.append(
        f"Accounting of {_engine_name(engine)}, read from its source (docs/engines.md); the weights and the KV layout "
        "are exact, the activation peak and non-torch memory are modelled (the engine measures them)."
    )
    lines += [f"Note: {note}." for note in engine.notes]
    lines += [f"Note: {note}." for note in _plan_notes(report)]
    return lines


def engine_to_dict(engine: EngineEstimate) -> dict[str, Any]:
    """The ``"engine"`` object of the JSON: settings as resolved, bytes per GPU (integers), capacity and verdict."""
    setup = engine.setup
    return {
        "engine": engine.engine,
        "engine_version": engine.engine_version,
        "settings": {
            "gpu_memory_utilization": engine.gpu_memory_utilization,
            "mem_fraction_static": engine.mem_fraction_static,
            "max_model_len": engine.max_model_len,
            "max_model_len_source": engine.max_model_len_source,
            "max_num_seqs": engine.max_num_seqs,
            "max_num_batched_tokens": engine.batched_tokens,
            "block_size": engine.block_size,
            "kv_cache_dtype": engine.kv_dtype,
            "enforce_eager": setup.enforce_eager,
            "tensor_parallel_size": engine.tp,
            "pipeline_parallel_size": engine.pp,
            "max_running_requests": engine.max_running_requests,
            "min_concurrency": setup.min_concurrency,
        },
        "per_gpu_bytes": {
            "total": engine.total_bytes,
            "requested": engine.requested_bytes,
            "weights": engine.weights_bytes,
            "rope_cache": engine.rope_cache_bytes,
            "vocab_padding": engine.vocab_padding_bytes,
            "activation_peak": engine.activation_peak_bytes,
            "activation_forward": engine.activation_trace_bytes,
            "sampler": engine.sampler_bytes,
            "non_torch": engine.non_torch_bytes,
            "cudagraph": engine.cudagraph_bytes,
            "kv_budget": engine.kv_budget_bytes,
            "kv_pool": engine.pool_bytes,
            "kv_needed_per_request": engine.kv_needed_bytes,
        },
        "kv_bytes_per_token": engine.kv_bytes_per_token,
        "kv_cache_groups": [
            {
                "kind": g.kind,
                "layers": g.layers,
                "elements_per_token": g.elements_per_token,
                "element_bytes": g.element_bytes,
                "page_bytes": g.page_bytes,
                "blocks_per_request": g.blocks_per_request,
                "groups": g.groups,
                "window_tokens": g.window_tokens,
                "state_bytes": g.state_bytes,
            }
            for g in engine.kv_groups
        ],
        "grouping": engine.grouping,
        "num_groups": engine.num_groups,
        "group_size": engine.group_size,
        "num_blocks": engine.num_blocks,
        "kv_tokens": engine.kv_tokens,
        "blocks_per_request": engine.blocks_per_request,
        "max_concurrency": engine.max_concurrency,
        "max_req_len": engine.max_req_len,
        "starts": engine.starts,
        "refusal": engine.refusal,
        "largest_max_model_len": engine.largest_max_model_len,
        "meets_min_concurrency": engine.meets_min_concurrency,
        "fits": engine.fits,
        "fixes": list(engine.fixes),
        "log_lines": engine_log_lines(engine),
        "pipeline_rank": engine.pp_rank,
        "notes": list(engine.notes),
    }
