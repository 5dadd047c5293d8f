"""The ``hfmem web`` page: a Gradio calculator on hfmem's own engine, whose settings are an ``hfmem`` command line.

The page holds no rules and no arithmetic. Its controls are hfmem's click options (choices, defaults and help come
from `hfmem.cli`); a query becomes the argument list of the equivalent ``hfmem`` command, which click parses with
the CLI's own types and checks, and the CLI's own translation turns the options into a `TrainingSetup` and an
`InferenceSetup` that `hfmem.api.Prepared.report` plans (what `hfmem.estimate` runs). Errors are formatted by the
CLI's error boundary, so the page shows the line the terminal would. Gradio is imported only inside `build_app` and
`serve` (the optional ``web`` extra); everything else here is plain Python, unit-tested without a browser.
"""

from __future__ import annotations

import html
import json
import os
import shlex
import tempfile
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hfmem.errors import HfmemError, WebExtraMissingError, WebPortError

if TYPE_CHECKING:
    import gradio as gr

    from hfmem.api import Prepared
    from hfmem.types import Report

__all__ = ["Answer", "CONTROLS", "TASKS", "answer", "build_app", "command_args", "serve"]

#: The tasks the page plans: the label shown, the ``hfmem`` command that plans it (``hfmem train`` / ``hfmem serve``)
#: and the options each one means.
TASKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "train": ("Train (all parameters)", "train", ()),
    "lora": ("Fine-tune: LoRA", "train", ("--method", "lora")),
    "qlora": ("Fine-tune: QLoRA (4-bit base)", "train", ("--method", "qlora")),
    "serve": ("Serve (inference)", "serve", ()),
}
TRAINING_TASKS = ("train", "lora", "qlora")

#: The settings of the page's first view: the question of issue 16 (does Llama-3.1-8B LoRA fit one RTX 4090 at 4k?).
DEFAULTS: dict[str, str] = {"model": "meta-llama/Llama-3.1-8B", "task": "lora", "gpu": "rtx-4090", "seq-len": "4096"}


@dataclass(frozen=True)
class Control:
    """One control of the page: the click parameter of the ``hfmem`` option it sets, its label, and the tasks it is
    shown for. Its kind, choices, default and help come from the option itself."""

    name: str
    label: str
    tasks: tuple[str, ...]
    more: bool = False  # under "More settings", closed at first
    hint: str | None = None  # the hint under the control (default: the option's help, first sentence)


#: The page's controls, in order. A control whose option this hfmem does not have (yet) is left out, so offering
#: a new option on the page is one line here. Two controls may set one option for different tasks.
CONTROLS: tuple[Control, ...] = (
    Control("precision", "Precision", TRAINING_TASKS),
    Control("optimizer", "Optimizer", TRAINING_TASKS),
    Control("optimizer_impl", "Optimizer implementation", TRAINING_TASKS, more=True),
    Control("optimizer_in_backward", "Optimizer step in the backward", TRAINING_TASKS, more=True),
    Control("lora_rank", "LoRA rank", ("lora", "qlora")),
    Control("zero_stages", "ZeRO stage", TRAINING_TASKS),
    Control("fsdp", "FSDP (instead of DeepSpeed ZeRO)", TRAINING_TASKS, more=True),
    Control("offload", "Offload to CPU", TRAINING_TASKS, more=True),
    Control("gpus_per_node", "GPUs per node", TRAINING_TASKS),
    Control("nodes", "Nodes", TRAINING_TASKS, more=True),
    Control("tp", "Tensor parallel", (*TRAINING_TASKS, "serve")),
    Control("batch_size", "Micro-batch per GPU", TRAINING_TASKS),
    Control("seq_len", "Sequence length (tokens)", TRAINING_TASKS),
    Control("target_len", "Decoder tokens (encoder-decoder models)", TRAINING_TASKS, more=True),
    Control("grad_accumulation", "Gradient accumulation steps", TRAINING_TASKS, more=True),
    Control("grad_checkpointing", "Activation checkpointing", TRAINING_TASKS),
    Control("checkpoint_every", "Checkpoint every N layers", TRAINING_TASKS, more=True),
    Control("loss", "Loss", TRAINING_TASKS),
    Control("loss_chunks", "Loss chunks", TRAINING_TASKS, more=True),
    Control("activation_offload", "Offload activations to CPU", TRAINING_TASKS, more=True),
    Control("attn", "Attention", TRAINING_TASKS, more=True),
    Control(
        "engine",
        "Engine",
        ("serve",),
        hint="transformers: generate(); vllm / sglang: the engine's start-up "
        "accounting (KV budget, concurrency, whether it starts). Needs a GPU",
    ),
    Control("weights_dtype", "Weights", ("serve",)),
    Control("kv_dtype", "KV cache", ("serve",)),
    Control("context", "Context (tokens per sequence)", ("serve",)),
    Control("batch_size", "Concurrent sequences", ("serve",), hint="Sequences served at once, each with its KV cache"),
)

#: What a choice control shows for "the option not given" (hfmem's default, often read from the model).
DEFAULT_CHOICE = "default"
#: `zero_stages` not given: every stage the setup allows, one bar each (one on one GPU: `hfmem.report.shown_stages`).
ALL_STAGES = "all"


def _context_choices() -> tuple[tuple[str, str], ...]:
    """The context control's named choices (a token count may be typed too): hfmem's default and ``--context max``."""
    from hfmem.cli import FULL_CONTEXT
    from hfmem.memory.activations import DEFAULT_SEQ_LEN_CAP

    return (
        (f"default: the model's context, at most {DEFAULT_SEQ_LEN_CAP:,} tokens", DEFAULT_CHOICE),
        (f"{FULL_CONTEXT}: the model's whole context", FULL_CONTEXT),
    )


# --------------------------------------------------------------------------------------------------- the options


def _options() -> dict[str, click.Option]:
    """hfmem's options by click parameter name."""
    from hfmem.cli import cli

    return {p.name: p for p in cli.params if isinstance(p, click.Option) and p.name}


def url_key(name: str) -> str:
    """The key of an option in the page's URL and settings: its flag without dashes (``seq-len``)."""
    option = _options().get(name)
    return option.opts[0].removeprefix("--") if option is not None else name.replace("_", "-")


def _inner(option: click.Option) -> click.ParamType:
    from hfmem.cli import Listed

    return option.type.inner if isinstance(option.type, Listed) else option.type


def _default(option: click.Option) -> Any:
    """The option's default as its help shows it (click's public info: None when it has none)."""
    default = option.to_info_dict().get("default")
    if isinstance(default, (list, tuple)):
        default = default[0] if default else None
    return None if default is None or callable(default) else default


@dataclass(frozen=True)
class Widget:
    """What a control is on the page: ``kind`` is "choice", "number", "flag" or "tokens" (a count, or a named
    choice: `_context_choices`)."""

    control: Control
    key: str
    kind: str
    default: Any
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    help: str | None = None


def widgets(tasks: Iterable[str] | None = None) -> list[Widget]:
    """The controls this hfmem offers (for ``tasks``, or all), each described by its click option; a control is
    left out of a task whose command (``hfmem train`` / ``hfmem serve``) does not take its option."""
    from hfmem.cli import ContextTokens, takes_option

    options = _options()
    wanted = None if tasks is None else set(tasks)
    found = []
    for control in CONTROLS:
        option = options.get(control.name)
        if option is None or (wanted is not None and not wanted & set(control.tasks)):
            continue
        plans = {TASKS[t][1] for t in (wanted & set(control.tasks) if wanted is not None else control.tasks)}
        if not any(takes_option(plan, control.name) for plan in plans):
            continue
        kind = _inner(option)
        key = url_key(control.name)
        if option.is_flag:
            found.append(Widget(control, key, "flag", bool(_default(option)), help=option.help))
        elif isinstance(kind, ContextTokens):  # --context: N tokens, or max
            choices = tuple(value for _, value in _context_choices())
            found.append(Widget(control, key, "tokens", DEFAULT_CHOICE, choices, minimum=1, help=option.help))
        elif isinstance(kind, click.Choice):
            default = _default(option)
            choices = tuple(str(c) for c in kind.choices)
            if default is None:
                choices, default = (DEFAULT_CHOICE, *choices), DEFAULT_CHOICE
            found.append(Widget(control, key, "choice", str(default), choices, help=option.help))
        elif option.multiple and isinstance(kind, click.IntRange):  # --zero: one stage, or every stage
            stages = range(int(kind.min or 0), int(kind.max if kind.max is not None else 3) + 1)
            choices = (ALL_STAGES, *(str(s) for s in stages))
            found.append(Widget(control, key, "choice", ALL_STAGES, choices, help=option.help))
        elif isinstance(kind, (click.IntRange, click.types.IntParamType)):
            minimum = kind.min if isinstance(kind, click.IntRange) else None
            found.append(Widget(control, key, "number", _default(option), minimum=minimum, help=option.help))
    return found


# ----------------------------------------------------------------------------------------- settings ⇄ command line


def _given(widget: Widget, value: Any) -> str | None:
    """The option's value as the command line spells it, or None when the control says "hfmem's default"."""
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return None
    if widget.kind == "flag":
        return "" if _truthy(value) and not widget.default else None
    if widget.kind == "choice" or (widget.kind == "tokens" and str(value) in widget.choices):
        text = str(value)
        return None if text in (DEFAULT_CHOICE, ALL_STAGES) or text == str(widget.default) else text
    number = value
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    text = str(number).strip()
    return None if widget.default is not None and text == str(widget.default) else text


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true", "on", "yes")


def command_args(settings: Mapping[str, Any], *, model: str | None = None) -> list[str]:
    """The ``hfmem`` arguments for the page's settings (keys as in the URL: ``model``, ``task``, ``gpu``, and each
    control's flag without dashes): the task's command (``train`` / ``serve``), the model, then the options not at
    their defaults; a GPU adds ``--max-batch`` to training, so the page can say the largest micro-batch that fits.
    ``model`` replaces ``settings["model"]`` (an uploaded config's path).

    Example:
        >>> command_args({"model": "Qwen/Qwen3-8B", "task": "lora", "gpu": "rtx-4090", "seq-len": "4096"})[:6]
        ['train', 'Qwen/Qwen3-8B', '--method', 'lora', '--seq-len', '4096']
    """
    task = str(settings.get("task") or DEFAULTS["task"])
    if task not in TASKS:
        raise click.BadParameter(f"{task!r} is not one of {', '.join(TASKS)}", param_hint="task")
    chosen = model if model is not None else str(settings.get("model") or "").strip()
    if not chosen:
        raise click.UsageError("give a model: a Hub id (the list offers the bundled catalogue) or a config.json")
    _, command, task_args = TASKS[task]
    args = [command, chosen, *task_args]
    done: set[str] = set()
    for widget in widgets([task]):
        if widget.key in done:
            continue
        done.add(widget.key)
        value = _given(widget, settings.get(widget.key))
        if value is None:
            continue
        flag = "--" + widget.key
        args += [flag] if widget.kind == "flag" else [flag, value]
    gpu = str(settings.get("gpu") or "").strip()
    if gpu:
        args += ["--gpu", gpu]
        if task in TRAINING_TASKS:
            args.append("--max-batch")
    return args


def command_line(args: Sequence[str], *, shown_model: str | None = None) -> str:
    """``hfmem …`` as a shell line; ``shown_model`` replaces the model (an upload's temporary path by its name)."""
    words = [args[0], shown_model, *args[2:]] if shown_model is not None else list(args)
    return "hfmem " + shlex.join(words)


def settings_query(settings: Mapping[str, Any], task: str | None = None) -> str:
    """The URL query that reloads these settings: model, task, GPU and every control of the task not at its
    default (keys are the options' flags without dashes, values as the command line spells them)."""
    task = str(task or settings.get("task") or DEFAULTS["task"])
    pairs: list[tuple[str, str]] = []
    for key in ("model", "task", "gpu"):
        value = settings.get(key)
        if value not in (None, ""):
            pairs.append((key, str(value)))
    seen: set[str] = set()
    for widget in widgets([task]):
        value = _given(widget, settings.get(widget.key))
        if value is not None and widget.key not in seen:
            seen.add(widget.key)
            pairs.append((widget.key, value or "1"))
    return urllib.parse.urlencode(pairs)


def settings_from_query(query: Mapping[str, str]) -> dict[str, Any]:
    """The page's settings from a URL's query parameters; unknown keys are ignored, missing ones take the page's
    defaults (`DEFAULTS`) when the URL names no model, else hfmem's."""
    known = {"model", "task", "gpu", *(w.key for w in widgets())}
    given = {key: str(value) for key, value in query.items() if key in known}
    if "model" not in given:
        return {**DEFAULTS, **given}
    return given


# ------------------------------------------------------------------------------------------------------ the answer


@dataclass(frozen=True)
class Answer:
    """What the page shows for one query: the plan (``report``) or the one-line ``error`` the CLI would print."""

    args: tuple[str, ...]
    command: str
    report: Report | None = None
    error: str | None = None
    notes: tuple[str, ...] = field(default=())


#: Models resolved in this process, most recent last: a repeat query neither fetches the config nor rebuilds.
_PREPARED: OrderedDict[tuple[str, str | None], Prepared] = OrderedDict()
_PREPARED_LIMIT = 16
_LOCK = threading.Lock()


def _prepared(model: str, revision: str | None, on_build: Callable[[str], None] | None) -> Prepared:
    from hfmem.api import Prepared, resolve

    key = (model, revision)
    prepared = _PREPARED.get(key)
    if prepared is None:
        prepared = Prepared(resolve(model, revision=revision), cache=True)  # never trust_remote_code: no Hub code
        _PREPARED[key] = prepared
        while len(_PREPARED) > _PREPARED_LIMIT:
            _PREPARED.popitem(last=False)
    _PREPARED.move_to_end(key)
    prepared.on_build = on_build  # say so before this query builds or traces what the cache lacks
    return prepared


def _parse(args: Sequence[str]) -> click.Context:
    """``hfmem COMMAND ARGS`` parsed by the command's own options (types, ranges, choices, messages)."""
    from hfmem.cli import SUBCOMMANDS

    return SUBCOMMANDS[args[0]].make_context(f"hfmem {args[0]}", list(args[1:]))


def _plan(ctx: click.Context, on_build: Callable[[str], None] | None) -> Report:
    """The CLI's own run of ``hfmem train`` / ``hfmem serve`` on parsed options (their setups, the engine's
    checks and plan), on the (memoised) model."""
    from hfmem.cli import _check_engines, _combinations, _finetune_given, _report, plan_options

    opts = plan_options(ctx.command, dict(ctx.params))  # type: ignore[arg-type]
    opts["finetune_given"] = _finetune_given(ctx, None)
    opts["token"] = None  # the page never sends a token
    combos = _combinations(opts)
    assert len(combos) == 1, "the page gives one value per option"
    _check_engines(combos, has_model=True)
    scalars = combos[0][1]
    prepared = _prepared(scalars["model"], scalars["revision"], on_build)
    return _report(prepared, scalars, spinner=False)


def error_line(error: Exception, ctx: click.Context | None = None) -> str:
    """The line the CLI prints on stderr for ``error`` (``Error: …``), by the CLI's own error translation."""
    from hfmem.cli import _translate, cli

    translated = _translate(ctx or click.Context(cli, info_name="hfmem"), error)
    return f"Error: {translated.format_message()}"


def _server_path(model: str) -> bool:
    """Whether the model box names a file or folder on the server (which the page does not read: a page may be
    public, and a local config is uploaded instead) rather than a Hub id."""
    return model.startswith(("/", "~", ".", "\\")) or Path(model).exists()


def answer(
    settings: Mapping[str, Any], *, upload: str | None = None, on_build: Callable[[str], None] | None = None
) -> Answer:
    """Plan the page's settings (or the uploaded config.json at ``upload``, never run as code); never raises for
    bad input: the `Answer` carries the CLI's one-line error instead. The model box takes Hub ids only: a path on
    the server is refused (`_server_path`)."""
    from hfmem.environment import check_environment
    from hfmem.limits import DEFAULT_TIMEOUT_SECONDS, NETWORK_BUDGET, NetworkBudget

    shown = Path(upload).name if upload else None
    try:
        args = command_args(settings, model=upload)
        if upload is None and _server_path(args[1]):
            raise click.UsageError(
                f"{args[1]!r} is a path on the server running the page; give a Hub id, or upload the config.json"
            )
    except click.ClickException as e:
        return Answer(args=(), command="", error=error_line(e))
    command = command_line(args, shown_model=shown)
    ctx = None
    budget = NETWORK_BUDGET.set(NetworkBudget(DEFAULT_TIMEOUT_SECONDS))
    try:
        with _LOCK:
            check_environment()
            ctx = _parse(args)
            report = _plan(ctx, on_build)
    except Exception as e:  # a bug too: the CLI's "internal error (…); rerun with --debug" line, not a dead page
        if "PYTEST_CURRENT_TEST" in os.environ and not isinstance(e, (HfmemError, click.ClickException)):
            raise
        message = error_line(e, ctx)
        if upload and shown:  # the upload by its name, as the command line shows it, not the server's temp path
            message = message.replace(upload, shown)
        return Answer(args=tuple(args), command=command, error=message)
    finally:
        NETWORK_BUDGET.reset(budget)
    from hfmem.report import training_notes

    training = training_notes(report.training) if report.training is not None else []
    notes = tuple(dict.fromkeys([*report.model.notes, *report.notes, *training]))
    return Answer(args=tuple(args), command=command, report=report, notes=notes)


# --------------------------------------------------------------------------------------------------- the rendering

GIB = 2**30

#: Bar components (`hfmem.report.stage_parts` / `inference_parts` labels): the name shown and a colour.
PART_STYLE: dict[str, tuple[str, str]] = {
    "weights": ("weights", "#4e79a7"),
    "master": ("master weights", "#76b7b2"),
    "grads": ("gradients", "#b07aa1"),
    "optim": ("optimizer states", "#edc948"),
    "activ": ("activations", "#59a14f"),
    "logits": ("logits", "#8cd17d"),
    "KV cache": ("KV cache", "#86bcb6"),
    "state": ("recurrent state", "#d4a6c8"),
    "overhead": ("overheads", "#9d9d9d"),
}


@dataclass(frozen=True)
class Bar:
    """One bar: a plan's per-GPU peak and what it is made of (bytes, straight from the report)."""

    key: str
    label: str
    parts: tuple[tuple[str, int], ...]
    total_bytes: int
    fits: bool | None
    headroom_bytes: int | None
    largest: str | None  # "largest micro-batch 3", "largest context 32,768 tokens"
    measured: bool = True


def _gpu_of(report: Report) -> Any:
    if report.training is not None:
        return report.training.setup.gpu
    return report.inference.setup.gpu if report.inference is not None else None


def bars(report: Report) -> list[Bar]:
    """The report's plans as bars: one per ZeRO stage (or FSDP strategy) the CLI shows when training
    (`hfmem.report.shown_stages`: ZeRO-0 alone on one GPU), one when serving."""
    from hfmem.report import inference_parts, shown_stages, stage_parts

    found = []
    training = report.training
    if training is not None:
        fsdp = training.setup.parallel.fsdp
        for stage in shown_stages(training):
            label = f"FSDP {fsdp}" if fsdp else f"ZeRO-{stage.zero_stage}"
            if stage.pipeline_stage is not None:
                label += f", pipeline stage {stage.pipeline_stage}"
            largest = None if stage.max_batch_size is None else f"largest micro-batch {stage.max_batch_size:,}"
            if stage.min_gpus is not None:
                largest = (largest + "; " if largest else "") + f"fits from {stage.min_gpus:,} GPUs"
            found.append(
                Bar(
                    key=f"zero-{stage.zero_stage}",
                    label=label,
                    parts=tuple(stage_parts(stage)),
                    total_bytes=stage.total_bytes,
                    fits=stage.fits,
                    headroom_bytes=stage.headroom_bytes,
                    largest=largest,
                    measured=training.unmeasured is None,
                )
            )
    served = report.inference
    if served is not None:
        largest = []
        if served.max_context is not None:
            largest.append(f"largest context {served.max_context:,} tokens")
        if served.max_batch_size is not None:
            largest.append(f"largest batch {served.max_batch_size:,} sequences")
        found.append(
            Bar(
                key="serve",
                label="serving" if report.engine is None else "transformers",
                parts=tuple(inference_parts(served)),
                total_bytes=served.total_bytes,
                fits=served.fits,
                headroom_bytes=served.headroom_bytes,
                largest="; ".join(largest) or None,
            )
        )
    return found


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GIB:,.2f} GiB"


def render_bars(report: Report) -> str:
    """An inline SVG: a stacked bar per plan (bytes per GPU by component) against the GPU's usable memory."""
    plans = bars(report)
    gpu = _gpu_of(report)
    if not plans:
        return "<p>No plan to draw.</p>"
    usable = gpu.usable_bytes if gpu is not None else None
    scale = max([*(b.total_bytes for b in plans), usable or 0, 1])
    left, width, row, top = 150, 520, 34, 24
    height = top + row * len(plans) + 16
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {left + width + 130} {height}" '
        f'width="100%" role="img" aria-label="memory per GPU by component">'
    ]
    for i, plan in enumerate(plans):
        y = top + i * row
        svg.append(
            f'<text x="{left - 8}" y="{y + 17}" text-anchor="end" font-size="13">{html.escape(plan.label)}</text>'
        )
        x = float(left)
        for part, size in plan.parts:
            if size <= 0:
                continue
            w = size * width / scale
            name, colour = PART_STYLE.get(part, (part, "#bab0ac"))
            svg.append(
                f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="24" fill="{colour}">'
                f"<title>{html.escape(name)}: {_gib(size)} ({size:,} bytes)</title></rect>"
            )
            x += w
        peak = ("≥ " if not plan.measured else "") + _gib(plan.total_bytes)
        svg.append(f'<text x="{x + 6:.2f}" y="{y + 17}" font-size="13">{peak}</text>')
    if usable is not None:
        ux = left + usable * width / scale
        svg.append(
            f'<line x1="{ux:.2f}" y1="{top - 14}" x2="{ux:.2f}" y2="{height - 8}" stroke="#d62728" '
            'stroke-width="2" stroke-dasharray="5,3"/>'
            f'<text x="{ux:.2f}" y="{top - 16}" font-size="12" fill="#d62728" '
            f'text-anchor="{"end" if ux > left + width / 2 else "start"}">'
            f"{html.escape(gpu.name)}: {_gib(usable)} usable</text>"
        )
    svg.append("</svg>")
    used = {part for plan in plans for part, size in plan.parts if size > 0}
    legend = " ".join(
        f'<span style="white-space:nowrap;margin-right:10px"><span style="display:inline-block;width:11px;'
        f'height:11px;background:{colour};margin-right:4px"></span>{html.escape(name)}</span>'
        for part, (name, colour) in PART_STYLE.items()
        if part in used
    )
    data = "".join(
        f'<span hidden class="hfmem-total" data-plan="{plan.key}" data-total-bytes="{plan.total_bytes}"></span>'
        for plan in plans
    )
    return f'<div id="hfmem-bars">{"".join(svg)}<div style="font-size:13px">{legend}</div>{data}</div>'


def _verdict(plan: Bar) -> str:
    if plan.fits is None:
        return "unknown (no GPU chosen)" if plan.headroom_bytes is None and plan.measured else "unknown"
    if plan.fits:
        return f"**fits**, {_gib(plan.headroom_bytes or 0)} to spare"
    short = "" if plan.headroom_bytes is None else f", {_gib(-plan.headroom_bytes)} short"
    return f"**does not fit**{short}"


def render_summary(report: Report) -> str:
    """Markdown: the model, its parameters, each plan's peak and verdict, and the largest batch or context."""
    from hfmem.report import describe_source
    from hfmem.units import format_count_short

    inv = report.inventory
    gpu = _gpu_of(report)
    lines = [
        f"### {report.model.model_id}",
        f"{inv.architecture or ''} · {describe_source(report)}",
        "",
        f"**Parameters:** {inv.total_params:,} ({format_count_short(inv.total_params)}) · "
        + (f"trainable {inv.trainable_params:,} · " if report.training is not None else "")
        + f"embedding {inv.embedding_params:,}",
        "",
    ]
    if report.training is not None and report.training.seq_len is not None:
        setup = report.training.setup
        lines += [f"Training: micro-batch {setup.batch_size} × {report.training.seq_len:,} tokens per GPU.", ""]
    if report.inference is not None:
        served = report.inference
        lines += [
            f"Serving: {served.setup.batch_size} sequence(s) × {served.context:,} tokens of context "
            f"({served.context_source}), weights {served.weights_name}, KV cache {served.kv_dtype}.",
            "",
        ]
    if report.inference_unmeasured:
        lines += [f"Serving not measured: {report.inference_unmeasured}", ""]
    target = f" on {gpu.name} ({_gib(gpu.usable_bytes)} usable)" if gpu is not None else ""
    lines += [f"| plan | peak per GPU | verdict{target} | largest that fits |", "|---|---:|---|---|"]
    for plan in bars(report):
        peak = ("≥ " if not plan.measured else "") + _gib(plan.total_bytes)
        lines.append(f"| {plan.label} | {peak} | {_verdict(plan)} | {plan.largest or '—'} |")
    if report.engine is not None:
        lines += ["", *render_engine(report)]
    return "\n".join(lines) + "\n"


def render_engine(report: Report) -> list[str]:
    """Markdown lines: the serving engine's verdict and its start-up accounting (KV budget, blocks, concurrency),
    as `hfmem.report` words them for the terminal."""
    from hfmem.report import engine_rows, engine_verdict_line

    engine = report.engine
    assert engine is not None
    lines = [f"**{html.escape(engine_verdict_line(report))}**", "", "| engine start-up | |", "|---|---|"]
    lines += [
        f"| {html.escape(what)} | {html.escape(value)} |".replace("\n", " ") for what, value in engine_rows(engine)
    ]
    return lines


def suggestions(settings: Mapping[str, Any], report: Report) -> list[tuple[str, str]]:
    """What to try when a plan does not fit: (what, the URL query that loads it). Settings only, no numbers: the
    page plans each when followed."""
    plans = bars(report)
    if not plans or not any(plan.fits is False for plan in plans):
        return []
    task = str(settings.get("task") or DEFAULTS["task"])
    options = _options()
    tries: list[tuple[str, dict[str, Any]]] = []
    if task in TRAINING_TASKS:
        if str(settings.get("grad-checkpointing") or "none") == "none" and "grad_checkpointing" in options:
            tries.append(("activation checkpointing (full)", {"grad-checkpointing": "full"}))
        if task == "lora":
            tries.append(("QLoRA (4-bit base weights)", {"task": "qlora"}))
        if task == "train":
            tries.append(("LoRA instead of full training", {"task": "lora"}))
        if str(settings.get("batch-size") or "1") != "1":
            tries.append(("micro-batch 1", {"batch-size": "1"}))
        seq = str(settings.get("seq-len") or "")
        if seq.isdigit() and int(seq) > 512:
            tries.append((f"sequence length {int(seq) // 2:,}", {"seq-len": str(int(seq) // 2)}))
        gpus = str(settings.get("gpus") or "1")
        if gpus.isdigit() and int(gpus) < 8:
            tries.append((f"{int(gpus) * 2} GPUs with ZeRO-3", {"gpus": str(int(gpus) * 2), "zero": "3"}))
    else:
        tries.append(("4-bit weights (int4)", {"weights-dtype": "int4"}))
        tries.append(("fp8 KV cache", {"kv-dtype": "fp8"}))
        if report.inference is not None:
            tries.append(
                (f"context {report.inference.context // 2:,}", {"context": str(report.inference.context // 2)})
            )
    found = []
    for what, change in tries:
        changed = {**settings, **change}
        found.append((what, settings_query(changed, str(changed.get("task")))))
    return found


def render_error(message: str) -> str:
    return f'<div id="hfmem-error" role="alert"><code>{html.escape(message)}</code></div>'


# ------------------------------------------------------------------------------------------------------ the page

_JSON_DIR: Path | None = None


def json_file(report: Report) -> str:
    """``hfmem … --json`` for this plan, written to a private temporary folder; its path (for the download). Named by
    its content, so a repeated query reuses its file instead of adding one."""
    import hashlib

    from hfmem.report import to_dict

    global _JSON_DIR
    if _JSON_DIR is None:
        _JSON_DIR = Path(tempfile.mkdtemp(prefix="hfmem-web-"))
    text = json.dumps(to_dict(report), indent=2)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in report.model.model_id.split("/")[-1])[:80]
    path = _JSON_DIR / f"hfmem-{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    if not path.exists():
        fd, partial = tempfile.mkstemp(suffix=".part", dir=_JSON_DIR)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(partial, path)  # whole or absent, whoever asks at the same time
    return str(path)


def _explanation(report: Report) -> str:
    from hfmem.explain import render_explanation

    return render_explanation(report, width=100)


#: Theme fonts from the machine (Gradio's default theme fetches Google Fonts: the page opens nothing remote).
_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
_MONO = ("ui-monospace", "SFMono-Regular", "monospace")

_INTRO = (
    "# hfmem — will it fit?\n"
    "Exact parameters and per-GPU memory of a Hugging Face model, for training, LoRA/QLoRA fine-tuning or serving: "
    "the model is built on PyTorch's meta device (no weights downloaded) and its activations traced, so every "
    "number below is the `hfmem` command line's, shown under the answer."
)


def build_app() -> gr.Blocks:
    """The page as a `gradio.Blocks` (not launched). Imports gradio; analytics off before it loads."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as e:
        raise WebExtraMissingError() from e
    from hfmem import catalogue
    from hfmem.gpus import GPUS

    model_ids = [e.model_id for e in catalogue.entries()]
    gpu_choices = [("none: no fit check", "")] + [(f"{g.name} · {_gib(g.usable_bytes)}", g.key) for g in GPUS]
    all_widgets = sorted(widgets(), key=lambda w: w.control.more)  # the controls' order on the page

    with gr.Blocks(title="hfmem: will it fit?", analytics_enabled=False) as demo:
        gr.Markdown(_INTRO)
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                model = gr.Dropdown(
                    model_ids,
                    value=DEFAULTS["model"],
                    label="Model",
                    info="A Hub id (offline: the bundled catalogue, listed here) …",
                    allow_custom_value=True,
                    filterable=True,
                    elem_id="hfmem-model",
                )
                upload = gr.File(
                    label="… or a config.json (read as data, never run)",
                    file_types=[".json"],
                    type="filepath",
                    elem_id="hfmem-upload",
                )
                task = gr.Radio(
                    [(label, key) for key, (label, _, _) in TASKS.items()],
                    value=DEFAULTS["task"],
                    label="Task",
                    elem_id="hfmem-task",
                )
                gpu = gr.Dropdown(gpu_choices, value=DEFAULTS["gpu"], label="GPU", elem_id="hfmem-gpu")
                controls: list[Any] = []
                for more in (False, True):
                    with gr.Accordion("More settings" if more else "Settings", open=not more):
                        for w in all_widgets:
                            if w.control.more == more:
                                controls.append(_control(gr, w))
                run = gr.Button("Estimate", variant="primary", elem_id="hfmem-run")
            with gr.Column(scale=3, min_width=420):
                error = gr.HTML("", elem_id="hfmem-error-box")
                summary = gr.Markdown(elem_id="hfmem-summary")
                chart = gr.HTML(elem_id="hfmem-chart")
                advice = gr.HTML(elem_id="hfmem-advice")
                command = gr.Code(
                    label="The same plan on the command line",
                    language="shell",
                    wrap_lines=True,
                    lines=1,
                    max_lines=4,
                    elem_id="hfmem-command",
                )
                download = gr.DownloadButton("Download the JSON (hfmem … --json)", elem_id="hfmem-json")
                with gr.Accordion("How every number is computed (--explain)", open=False):
                    explain = gr.Code(show_label=False, language=None, lines=24, max_lines=60, elem_id="hfmem-explain")
                notes = gr.Markdown(elem_id="hfmem-notes")
        query = gr.Textbox(visible=False, elem_id="hfmem-query")

        inputs = [model, upload, task, gpu, *controls]
        outputs = [error, summary, chart, advice, command, download, explain, notes, query]

        def settings_of(values: Sequence[Any]) -> dict[str, Any]:
            model_v, _, task_v, gpu_v, *rest = values
            found: dict[str, Any] = {"model": model_v, "task": task_v, "gpu": gpu_v}
            for w, value in zip(all_widgets, rest, strict=True):
                if task_v in w.control.tasks:
                    found[w.key] = value
            return found

        def compute(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            settings = settings_of(values)
            uploaded = values[1]
            progress(0, desc="planning")

            def building(model_id: str) -> None:
                progress(0.2, desc=f"first query of this shape: building {model_id} on the meta device and tracing it")

            return page_outputs(settings, answer(settings, upload=uploaded, on_build=building))

        def show_task(task_v: str) -> list[Any]:
            return [gr.update(visible=task_v in w.control.tasks) for w in all_widgets]

        def from_url(request: gr.Request) -> list[Any]:
            settings = settings_from_query(dict(request.query_params) if request else {})
            task_v = settings.get("task", DEFAULTS["task"])
            values = [settings.get("model", ""), None, task_v, settings.get("gpu", "")]
            for w in all_widgets:
                raw = settings.get(w.key)
                if raw is None:
                    value = w.default
                elif w.kind == "number":
                    value = int(raw) if str(raw).strip().lstrip("-").isdigit() else None
                elif w.kind == "flag":
                    value = _truthy(raw)
                elif w.kind == "tokens":
                    value = int(raw) if str(raw).strip().isdigit() else (raw if raw in w.choices else w.default)
                else:
                    value = raw if raw in w.choices else w.default
                values.append(gr.update(value=value, visible=task_v in w.control.tasks))
            return values

        # Gradio finds the request by the parameter's type hint, which it resolves in this module's globals,
        # where gradio is not imported (it is optional): name the type itself.
        from_url.__annotations__.update(request=gr.Request, **{"return": list})

        task.change(show_task, task, controls, queue=False)
        update_url = (
            "(q) => { const u = new URL(window.location.href); u.search = q; "
            "window.history.replaceState(null, '', u); }"
        )
        gr.on(
            [run.click, model.change, upload.change, task.change, gpu.change, *_triggers(gr, controls)],
            compute,
            inputs,
            outputs,
            trigger_mode="always_last",
            api_visibility="private",
        ).then(None, query, None, js=update_url)
        demo.load(from_url, None, inputs, queue=False).then(compute, inputs, outputs).then(
            None, query, None, js=update_url
        )
    return demo


def _triggers(gr: Any, controls: Sequence[Any]) -> list[Any]:
    """When a control's change is planned: a choice at once; a number once typed (Enter, or leaving the box), so
    typing 4096 does not trace 4, 40 and 409 tokens on the way."""
    found = []
    for control in controls:
        if isinstance(control, gr.Number):
            found += [control.submit, control.blur]
        else:
            found.append(control.change)
    return found


def _control(gr: Any, w: Widget) -> Any:
    """The Gradio component of one control."""
    common = {
        "label": w.control.label,
        "info": w.control.hint or _short_help(w.help),
        "elem_id": f"hfmem-{w.key}-{'-'.join(w.control.tasks)}",
        "visible": DEFAULTS["task"] in w.control.tasks,
    }
    if w.kind == "choice":
        return gr.Dropdown(list(w.choices), value=w.default, **common)
    if w.kind == "tokens":  # hfmem's default, the whole context, or a count typed in
        return gr.Dropdown(list(_context_choices()), value=w.default, allow_custom_value=True, **common)
    if w.kind == "flag":
        return gr.Checkbox(value=w.default, **common)
    start = DEFAULTS.get(w.key, w.default)
    return gr.Number(
        value=int(start) if start is not None else None,
        precision=0,
        minimum=w.minimum,
        placeholder="the model's default",
        **common,
    )


def page_outputs(settings: Mapping[str, Any], found: Answer) -> tuple[Any, ...]:
    """The page's outputs for one answer: error, summary, bars, advice, command line, JSON file, explanation,
    notes and the URL query (in `build_app`'s output order)."""
    query = settings_query(settings)
    if found.report is None:
        return (render_error(found.error or "Error"), "", "", "", found.command, None, "", "", query)
    report = found.report
    tries = suggestions(settings, report)
    advice = ""
    if tries:
        links = " · ".join(f'<a href="?{html.escape(q)}" target="_self">{html.escape(what)}</a>' for what, q in tries)
        advice = f"<p><strong>Does not fit. Try:</strong> {links}</p>"
    notes = "\n".join(f"- {note}" for note in found.notes)
    return (
        "",
        render_summary(report),
        render_bars(report),
        advice,
        found.command,
        json_file(report),
        _explanation(report),
        f"**Notes**\n\n{notes}" if notes else "",
        query,
    )


def _short_help(text: str | None) -> str | None:
    """An option's help, first sentence (the controls' hint)."""
    if not text:
        return None
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= 160 else first[:157] + "…"


def launch_options() -> dict[str, Any]:
    """How the page is launched, locally and as a Space: no share link, no analytics, no remote fonts."""
    import gradio as gr

    return {
        "share": False,
        "theme": gr.themes.Default(font=_FONTS, font_mono=_MONO),
        "ssr_mode": False,
        "mcp_server": False,
        "pwa": False,
        "enable_monitoring": False,
        "max_file_size": "1mb",
        "footer_links": [],
    }


def serve(port: int | None = None, *, echo: Callable[[str], None] = print) -> None:
    """Serve the page on 127.0.0.1 (``port``, or a free one), say its URL through ``echo`` and block until Ctrl-C.

    Raises:
        WebExtraMissingError: gradio is not installed (``pip install 'hfmem[web]'``).
        WebPortError: ``port`` is taken (or, without one, no port is free from 7860 up).
    """
    demo = build_app()
    try:
        _, url, _ = demo.launch(
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            inbrowser=False,
            **launch_options(),
        )
    except OSError as e:  # gradio: "Cannot find empty port in range: 7860-7860. …"
        raise WebPortError(port, str(e).split(".")[0]) from e
    echo(f"hfmem web: serving on {url} (Ctrl-C stops it)")
    try:
        demo.block_thread()
    finally:
        demo.close()
