"""The ``hfmem`` command: parse options → TrainingSetup → `hfmem.estimate` → render; errors → one line + exit code.

No arithmetic here and no torch import: ``hfmem --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import traceback
from dataclasses import replace
from typing import Any

import click

from hfmem import catalogue
from hfmem.api import estimate, hfmem_version
from hfmem.errors import ExitCode, HfmemError
from hfmem.gpus import GPUS, find_gpu, parse_memory
from hfmem.memory.quantization import WEIGHTS_DTYPES
from hfmem.types import (
    ACCOUNTINGS,
    ATTENTIONS,
    CHECKPOINTINGS,
    FSDP_STRATEGIES,
    KV_DTYPES,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    PIPELINE_SCHEDULES,
    PRECISIONS,
    FinetuneSettings,
    GpuTarget,
    InferenceSetup,
    OverheadSettings,
    ParallelSettings,
    TrainingSetup,
)
from hfmem.units import format_count_short, parse_count

__all__ = ["cli"]


class HfmemClickError(click.ClickException):
    """An `HfmemError` on its way out: click prints ``Error: <message>`` on stderr and exits with its code."""

    def __init__(self, error: HfmemError, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(one_line(redact(str(error), secrets)))
        self.exit_code = int(error.exit_code)


#: Characters that end a line for a terminal or for ``str.splitlines`` (and other C0/C1 controls): escaped in messages.
_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def one_line(text: str) -> str:
    """``text`` with every control or line-breaking character written as an escape (``\\n``, ``\\x85``), so that a
    message quoting user input (a model id, a config key, an option value) stays one line, and lone surrogates from
    undecodable arguments cannot break the output encoding."""
    return _LINE_BREAKING.sub(lambda m: repr(m.group())[1:-1], text)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret replaced by ``<token>``."""
    for secret in secrets:
        text = text.replace(secret, "<token>")
    return text


def _secrets(ctx: click.Context) -> tuple[str, ...]:
    """The Hub tokens this run may send: --token, HF_TOKEN, and the saved login once huggingface_hub is loaded.

    Error text from other libraries (a server's message, an exception from the HTTP client) passes through hfmem
    only after these are cut out, tracebacks under --debug included.
    """
    found = {ctx.params.get("token"), os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}
    if "huggingface_hub" in sys.modules:  # never imported just for this (`hfmem --help` stays light)
        from huggingface_hub import get_token

        try:
            found.add(get_token())
        except Exception:  # an unreadable token file: nothing more to hide
            pass
    return tuple(sorted((t for t in found if isinstance(t, str) and len(t) >= 8), key=len, reverse=True))


def _debug_wanted(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("HFMEM_DEBUG", "") not in ("", "0")


class HfmemCommand(click.Command):
    """Translates errors inside click, so `CliRunner` sees exactly what users see."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:  # a bad option value, quoted in the message
            e.message = one_line(e.message)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HfmemError as e:
            if _debug_wanted(ctx):
                click.echo(redact(traceback.format_exc(), _secrets(ctx)), err=True, nl=False)
            raise HfmemClickError(e, _secrets(ctx)) from e
        except click.ClickException as e:
            e.message = one_line(redact(e.message, _secrets(ctx)))
            raise
        except (click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if "PYTEST_CURRENT_TEST" in os.environ:
                raise  # tests see the exception itself
            secrets = _secrets(ctx)
            if _debug_wanted(ctx):
                click.echo(redact(traceback.format_exc(), secrets), err=True, nl=False)
            first = str(e).splitlines()[0] if str(e) else ""
            error = click.ClickException(
                one_line(redact(f"internal error ({type(e).__name__}: {first}); ", secrets))
                + "rerun with --debug and report the traceback at the hfmem issue tracker"
            )
            error.exit_code = int(ExitCode.INTERNAL)
            raise error from e


def _parse_params(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_count(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from e


def _parse_memory(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_memory(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from e


def _parse_names(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[str, ...] | None:
    """Comma-separated (and/or repeated) names → a tuple; None when the option was not given."""
    if value is None or value == ():
        return None
    values = value if isinstance(value, tuple) else (value,)
    names = tuple(name.strip() for item in values for name in item.split(",") if name.strip())
    if not names:
        raise click.BadParameter("give at least one name", ctx=ctx, param=param)
    return names


#: ``--fsdp`` → the ZeRO stage with the same sharding (torch ``ShardingStrategy`` docstring; REFERENCE §2.5):
#: FULL_SHARD = ZeRO-3, SHARD_GRAD_OP = ZeRO-2, NO_SHARD = DDP (0), HYBRID_SHARD = ZeRO-3 inside a node.
FSDP_ZERO_STAGE = {"full_shard": 3, "shard_grad_op": 2, "no_shard": 0, "hybrid_shard": 3}

#: ``--tp``, defined once: tensor parallelism splits the weights (and, for training, the activations) Megatron-style.
tp_option = click.option(
    "--tp",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Tensor-parallel degree: attention/MLP linears split column-/row-parallel, embeddings and LM head "
    "vocab-parallel (Megatron); activations inside attention/MLP split too. Inference: KV heads split as well.",
)


def _list_gpus(json_: bool) -> None:
    if json_:
        doc = [{"key": g.key, "name": g.name, "usable_bytes": g.usable_bytes, "source": g.source} for g in GPUS]
        click.echo(json.dumps(doc, indent=2))
        return
    width = max(len(g.key) for g in GPUS)
    for g in GPUS:
        click.echo(f"{g.key:<{width}}  {g.usable_bytes / 2**30:>7,.2f} GiB  {g.name}")


def _list_catalogue(json_: bool) -> None:
    rows = catalogue.entries()
    if json_:
        doc = [
            {
                "id": e.model_id,
                "architecture": e.architecture,
                "total_params": e.total_params,
                "aliases": list(e.aliases),
            }
            for e in rows
        ]
        click.echo(json.dumps(doc, indent=2))
    else:
        width = max(len(e.model_id) for e in rows)
        for e in rows:
            short = format_count_short(e.total_params)
            line = f"{e.model_id:<{width}}  {e.total_params:>17,}  {short:>6}  {e.architecture}"
            if e.aliases:
                line += f"  (also: {', '.join(e.aliases)})"
            click.echo(line)


@click.command(
    "hfmem",
    cls=HfmemCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 ok, 1 internal error, 2 bad usage, 3 does not fit (--check), 4 model unavailable "
    "(Hub, cache, catalogue), 5 config cannot be built or traced. Docs: README.md.",
)
@click.argument("model", required=False)
@click.option("--revision", help="Hub branch, tag or commit sha (default: main).")
@click.option(
    "--token",
    help="Hub token for gated or private repos (default: HF_TOKEN or the saved `hf auth login`). Never printed.",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Allow a repo's own Python modelling code to run on this machine. Off by default, never implied.",
)
@click.option(
    "--params",
    "params",
    metavar="COUNT",
    callback=_parse_params,
    help="Plan for a hypothetical dense model of COUNT parameters instead of MODEL: 7.5B, 7.5e9, 125M.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="bf16-mixed",
    show_default=True,
    help="fp32 | tf32 (fp32 storage, TF32 matmuls) | bf16-mixed / fp16-mixed (16-bit weights and gradients, "
    "fp32 master weights and optimizer states) | bf16 / fp16 (everything 16-bit).",
)
@click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZERS),
    default="adamw",
    show_default=True,
    help="adamw-8bit is bitsandbytes' block-wise 8-bit AdamW; adafactor is HF's factored Adafactor.",
)
@click.option(
    "--zero",
    "zero_stages",
    type=click.IntRange(0, 3),
    multiple=True,
    help="ZeRO stage to report; repeat for several (default: 0 1 2 3, or the stages the offload allows).",
)
@click.option(
    "--gpus", "gpus_per_node", type=click.IntRange(min=1), default=1, show_default=True, help="GPUs per node."
)
@click.option(
    "--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Nodes; ZeRO shards over gpus × nodes."
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="full",
    show_default=True,
    help="full: train every parameter. lora: peft LoRA adapters on a frozen base. qlora: LoRA on a bitsandbytes "
    "NF4 base. freeze: train only --train-modules.",
)
@click.option(
    "--lora-rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank r (peft's default: 8)."
)
@click.option(
    "--lora-alpha", type=click.IntRange(min=1), help="LoRA alpha (peft's default: 8); scales the update, not memory."
)
@click.option(
    "--lora-targets",
    metavar="NAMES",
    callback=_parse_names,
    help="Modules to adapt: all-linear, or a comma list (q_proj,v_proj). Default: peft's default for the architecture.",
)
@click.option(
    "--modules-to-save",
    metavar="NAMES",
    callback=_parse_names,
    help="Comma list of modules trained in full next to the adapters (peft modules_to_save), e.g. lm_head.",
)
@click.option(
    "--dora", is_flag=True, help="DoRA: LoRA plus a trainable magnitude vector per adapted layer (peft use_dora)."
)
@click.option(
    "--double-quant",
    is_flag=True,
    help="NF4 double quantization (--method qlora, --weights-dtype nf4): 8-bit absmax in blocks of 256 "
    "(bitsandbytes bnb_4bit_use_double_quant).",
)
@click.option(
    "--train-modules",
    metavar="PATTERNS",
    multiple=True,
    callback=_parse_names,
    help="--method freeze: comma list of module names or globs to train (lm_head, 'model.layers.3?.*'; "
    "'re:' for a regex); everything else is frozen.",
)
@tp_option
@click.option(
    "--pp",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Pipeline-parallel degree: stages of consecutive layers; the busiest stage is reported.",
)
@click.option(
    "--cp",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Context-parallel degree: splits the sequence.",
)
@click.option(
    "--ep",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Expert-parallel degree (MoE): routed experts split over EP GPUs carved from data parallelism.",
)
@click.option("--sp", is_flag=True, help="Sequence parallelism with --tp: norms and dropouts split over the sequence.")
@click.option(
    "--pp-schedule",
    type=click.Choice(PIPELINE_SCHEDULES),
    default="1f1b",
    show_default=True,
    help="Pipeline schedule: 1f1b (stage k keeps pp − k micro-batches in flight) or interleaved (virtual stages).",
)
@click.option(
    "--microbatches",
    type=click.IntRange(min=1),
    help="Micro-batches per step per pipeline (default: at least --pp). Fewer than --pp caps what is in flight.",
)
@click.option(
    "--virtual-stages",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Model chunks per GPU with --pp-schedule interleaved.",
)
@click.option(
    "--fsdp",
    type=click.Choice(FSDP_STRATEGIES),
    help="Shard with PyTorch FSDP instead of DeepSpeed: full_shard = ZeRO-3, shard_grad_op = ZeRO-2, no_shard = "
    "DDP, hybrid_shard = ZeRO-3 within a node; FSDP's unit buffers replace DeepSpeed's buckets.",
)
@click.option(
    "--offload",
    type=click.Choice(OFFLOADS),
    default="none",
    show_default=True,
    help="Move sharded states to CPU RAM (ZeRO-Offload): optimizer (ZeRO 1-3) or optimizer+params (ZeRO-3).",
)
@click.option(
    "--accounting",
    type=click.Choice(ACCOUNTINGS),
    default="hfmem",
    show_default=True,
    help="hfmem: exact ZeRO-paper components. deepspeed: DeepSpeed's own estimator formulas (ZeRO-2/3, mixed Adam).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Micro-batch per GPU. Gradient accumulation does not change activations: pass the micro-batch only.",
)
@click.option(
    "--seq-len",
    type=click.IntRange(min=1),
    help="Tokens per sequence (default: the model's context length capped at 4096; the output says which).",
)
@click.option(
    "--attn",
    type=click.Choice(ATTENTIONS),
    default="sdpa",
    show_default=True,
    help="sdpa / flash: fused kernels (no seq² scores kept); eager keeps heads × seq² scores and probabilities.",
)
@click.option(
    "--grad-checkpointing",
    type=click.Choice(CHECKPOINTINGS),
    default="none",
    show_default=True,
    help="full: keep only each layer's input and recompute it; selective: recompute the attention core.",
)
@click.option(
    "--dropout",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Override every dropout probability (default: the config's).",
)
@click.option(
    "--gpu", "gpu_name", metavar="NAME", help="Check the plan against a GPU (--list-gpus): h100-sxm, a100-40gb…"
)
@click.option(
    "--gpu-memory",
    metavar="SIZE",
    callback=_parse_memory,
    help="Check the plan against this much GPU memory instead: 80GiB, 79.2GiB, 24G (binary), 80GB (decimal).",
)
@click.option("--max-batch", is_flag=True, help="Also find the largest micro-batch that fits the GPU, per stage.")
@click.option(
    "--check",
    is_flag=True,
    help="Make the verdict the exit code: 0 when every reported plan fits the GPU, 3 when one does not "
    "(pass --zero N for the stage you will launch, --training-only or --inference-only for one plan).",
)
@click.option(
    "--cuda-context",
    metavar="SIZE",
    callback=_parse_memory,
    help="CUDA context + cuBLAS workspace per GPU (default 512MiB).",
)
@click.option(
    "--fragmentation",
    type=click.FloatRange(0.0, 1.0),
    default=0.10,
    show_default=True,
    help="Allocator slack (reserved − allocated) as a fraction of the allocated peak.",
)
@click.option("--training-only", is_flag=True, help="Plan training only (no inference section).")
@click.option("--inference-only", is_flag=True, help="Plan inference only: weights + KV cache + prefill + overhead.")
@click.option(
    "--context",
    type=click.IntRange(min=1),
    help="Inference: tokens per sequence held in the KV cache, prompt + generated (default: the model's context "
    "length).",
)
@click.option(
    "--weights-dtype",
    type=click.Choice(WEIGHTS_DTYPES),
    help="Inference: store the weights as fp32/bf16/fp16, fp8 (E4M3 + scale), int8 (bitsandbytes LLM.int8), int4 "
    "(GPTQ/AWQ groups) or nf4 (bitsandbytes). Default: the checkpoint's quantization_config, else its dtype.",
)
@click.option(
    "--group-size",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="int4: inputs per scale/zero group.",
)
@click.option(
    "--kv-dtype",
    type=click.Choice(KV_DTYPES),
    help="Inference: KV cache element type (default: the compute dtype, bf16 for most models).",
)
@click.option(
    "--prefill-chunk",
    type=click.IntRange(min=1),
    help="Inference: prompt tokens per sequence in one forward (default: min(context, 2048); HF generate() "
    "prefills the whole prompt).",
)
@click.option(
    "--checkpoint/--no-checkpoint",
    default=True,
    show_default=True,
    help="Read the checkpoint's safetensors headers (no weights) and explain how the stored tensors differ from "
    "the built model. Skipped offline and for the bundled catalogue.",
)
@click.option("--json", "json_", is_flag=True, help="Print only JSON on stdout (bytes as integers).")
@click.option(
    "--list-catalogue",
    is_flag=True,
    help="List the models bundled for offline use, with their exact parameter counts, and exit.",
)
@click.option("--list-gpus", is_flag=True, help="List the built-in GPUs with the memory PyTorch sees, and exit.")
@click.option("--debug", is_flag=True, help="Show tracebacks (also HFMEM_DEBUG=1).")
@click.version_option(hfmem_version(), "--version", prog_name="hfmem")
def cli(
    model: str | None,
    revision: str | None,
    token: str | None,
    trust_remote_code: bool,
    params: int | None,
    precision: Any,
    optimizer: Any,
    zero_stages: tuple[int, ...],
    gpus_per_node: int,
    nodes: int,
    method: Any,
    lora_rank: int,
    lora_alpha: int | None,
    lora_targets: tuple[str, ...] | None,
    modules_to_save: tuple[str, ...] | None,
    dora: bool,
    double_quant: bool,
    train_modules: tuple[str, ...] | None,
    tp: int,
    pp: int,
    cp: int,
    ep: int,
    sp: bool,
    pp_schedule: Any,
    microbatches: int | None,
    virtual_stages: int,
    fsdp: Any,
    offload: Any,
    accounting: Any,
    batch_size: int,
    seq_len: int | None,
    attn: Any,
    grad_checkpointing: Any,
    dropout: float | None,
    gpu_name: str | None,
    gpu_memory: int | None,
    max_batch: bool,
    check: bool,
    cuda_context: int | None,
    fragmentation: float,
    training_only: bool,
    inference_only: bool,
    context: int | None,
    weights_dtype: str | None,
    group_size: int,
    kv_dtype: Any,
    prefill_chunk: int | None,
    checkpoint: bool,
    json_: bool,
    list_catalogue: bool,
    list_gpus: bool,
    debug: bool,
) -> None:
    """Exact parameters, peak per-GPU training memory and serving memory of a Hugging Face model, without
    downloading weights.

    MODEL is a Hub repo id (meta-llama/Llama-2-7b-hf), a local folder holding config.json or a PEFT
    adapter_config.json, or a path to a config.json. When the Hub cannot answer, hfmem uses the HF cache, then
    its bundled catalogue (--list-catalogue), and says so on stderr.
    """
    if list_catalogue:
        _list_catalogue(json_)
        return
    if list_gpus:
        _list_gpus(json_)
        return
    if model is None and params is None:
        raise click.UsageError("give a MODEL (a Hub id, folder or config.json) or --params COUNT")
    if model is not None and params is not None:
        raise click.UsageError("give either MODEL or --params, not both")
    if gpu_name is not None and gpu_memory is not None:
        raise click.UsageError("give either --gpu or --gpu-memory, not both")
    gpu = None
    if gpu_name is not None:
        spec = find_gpu(gpu_name)
        gpu = GpuTarget(spec.name, spec.usable_bytes)
    elif gpu_memory is not None:
        gpu = GpuTarget(f"a {gpu_memory / 2**30:,.2f} GiB GPU", gpu_memory)
    if training_only and inference_only:
        raise click.UsageError("--training-only and --inference-only exclude each other; drop one")
    if check and gpu is None:
        raise click.UsageError("--check needs a GPU to check against: pass --gpu NAME or --gpu-memory SIZE")
    if fsdp is not None:
        if zero_stages:
            raise click.UsageError("give either --fsdp or --zero, not both (--fsdp names its own sharding)")
        zero_stages = (FSDP_ZERO_STAGE[fsdp],)
    if not zero_stages:
        zero_stages = {"none": (0, 1, 2, 3), "optimizer": (1, 2, 3), "optimizer+params": (3,)}[offload]
        if accounting == "deepspeed":
            zero_stages = tuple(s for s in zero_stages if s in (2, 3))
    overheads = OverheadSettings(fragmentation=fragmentation)
    if cuda_context is not None:
        overheads = replace(overheads, cuda_context_bytes=cuda_context)
    setup = TrainingSetup(
        precision=precision,
        optimizer=optimizer,
        zero_stages=tuple(sorted(set(zero_stages))),
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        offload=offload,
        accounting=accounting,
        batch_size=batch_size,
        seq_len=seq_len,
        attn=attn,
        grad_checkpointing=grad_checkpointing,
        dropout=dropout,
        overheads=overheads,
        gpu=gpu,
        finetune=FinetuneSettings(
            method=method,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            modules_to_save=modules_to_save or (),
            dora=dora,
            double_quant=double_quant,
            train_modules=train_modules or (),
        ),
        parallel=ParallelSettings(
            tp=tp,
            pp=pp,
            cp=cp,
            ep=ep,
            sp=sp,
            pp_schedule=pp_schedule,
            microbatches=microbatches,
            virtual_stages=virtual_stages,
            fsdp=fsdp,
        ),
    )
    serve = None
    if not training_only and not (params is not None and not inference_only):
        serve = InferenceSetup(
            weights_dtype=weights_dtype,
            group_size=group_size,
            double_quant=double_quant,
            kv_dtype=kv_dtype,
            context=context,
            batch_size=batch_size,
            tp=tp,
            prefill_chunk=prefill_chunk,
            overheads=overheads,
            gpu=gpu,
        )
    report = estimate(
        model,
        params=params,
        revision=revision,
        token=token,
        trust_remote_code=trust_remote_code,
        setup=setup,
        find_max_batch=max_batch,
        training=not inference_only,
        inference=serve,
        checkpoint=checkpoint and serve is not None,
    )
    from hfmem.report import render_table, to_dict

    secrets = _secrets(click.get_current_context())
    for note in report.model.notes:
        click.echo(f"hfmem: {one_line(redact(note, secrets))}", err=True)
    if json_:
        click.echo(json.dumps(to_dict(report), indent=2))
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        width = shutil.get_terminal_size((100, 24)).columns
        click.echo(render_table(report, color=color, width=width), nl=False)
    verdicts = [stage.fits for stage in report.training.stages] if report.training is not None else []
    if report.inference is not None:
        verdicts.append(report.inference.fits)
    if check and not all(verdicts):
        raise click.exceptions.Exit(int(ExitCode.DOES_NOT_FIT))


def main() -> None:
    cli(prog_name="hfmem")
