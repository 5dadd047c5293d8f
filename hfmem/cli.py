"""The ``hfmem`` command: parse options → TrainingSetup → `hfmem.estimate` → render; errors → one line + exit code.

No arithmetic here and no torch import: ``hfmem --help`` stays fast.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import shutil
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import click

from hfmem import catalogue
from hfmem.api import Prepared, hfmem_version, resolve, with_architecture
from hfmem.environment import check_environment, prepare_cli_environment, switched_on
from hfmem.errors import ExitCode, HfmemError, LaunchConfigError, NotMeasuredError
from hfmem.gpus import GPUS, parse_memory
from hfmem.launch import LaunchOutcome, option_flag, read_launch_files, show_value
from hfmem.limits import DEFAULT_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS, NETWORK_BUDGET, NetworkBudget
from hfmem.memory.quantization import WEIGHTS_DTYPES
from hfmem.rules import MAX_DROPOUT_EXCLUSIVE, MAX_FRAGMENTATION
from hfmem.types import (
    ACCOUNTINGS,
    ATTENTIONS,
    CHECKPOINTINGS,
    DEFAULT_LOSS_CHUNKS,
    ENGINE_KV_DTYPES,
    ENGINES,
    FSDP_STRATEGIES,
    KV_DTYPES,
    LOSSES,
    METHODS,
    OFFLOADS,
    OPTIMIZER_IMPLS,
    OPTIMIZERS,
    PIPELINE_SCHEDULES,
    PRECISIONS,
    EngineSetup,
    FinetuneSettings,
    GpuTarget,
    InferenceSetup,
    OverheadSettings,
    ParallelSettings,
    Report,
    ResolvedModel,
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
    """The Hub tokens this run may send: --token, HF_TOKEN, and the saved login once huggingface_hub has read it.

    Error text from other libraries (a server's message, an exception from the HTTP client) passes through hfmem
    only after these are cut out, tracebacks under --debug included. Imports nothing: it runs on the error path,
    where huggingface_hub may be the thing that failed to import.
    """
    found = {ctx.params.get("token"), os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}
    auth = sys.modules.get("huggingface_hub.utils._auth")  # loaded only if huggingface_hub read a token
    if auth is not None:
        try:
            found.add(auth.get_token())
        except Exception:  # a half-imported module, an unreadable token file: nothing more to hide
            pass
    return tuple(sorted((t for t in found if isinstance(t, str) and len(t) >= 8), key=len, reverse=True))


def _debug_wanted(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or switched_on(os.environ.get("HFMEM_DEBUG"))


#: The last resort, when even an error's own message cannot be formatted: fixed text, nothing computed.
FALLBACK_MESSAGE = (
    "hfmem failed and could not describe the error; rerun with --debug and report the traceback at the hfmem issue "
    "tracker"
)


def _fallback(exit_code: int) -> click.ClickException:
    error = click.ClickException(FALLBACK_MESSAGE)
    error.exit_code = exit_code
    return error


def _interrupted() -> click.exceptions.Exit:
    """Ctrl-C: one line on stderr and exit 130 (128 + SIGINT), not click's "Aborted!" and 1 (a bug, per
    docs/errors.md)."""
    try:
        click.echo("hfmem: interrupted", err=True)
    except Exception:  # stderr closed: the exit code still says it
        pass
    return click.exceptions.Exit(int(ExitCode.INTERRUPTED))


def _translate(ctx: click.Context, error: Exception) -> click.ClickException:
    """``error`` → the one-line `click.ClickException` the user sees (with the traceback first under --debug)."""
    secrets = _secrets(ctx)
    if isinstance(error, click.ClickException):
        error.message = one_line(redact(str(error.message), secrets))
        return error
    if _debug_wanted(ctx):
        click.echo(redact(traceback.format_exc(), secrets), err=True, nl=False)
    if isinstance(error, HfmemError):
        return HfmemClickError(error, secrets)
    text = str(error)
    first = text.splitlines()[0] if text else ""
    internal = click.ClickException(
        one_line(redact(f"internal error ({type(error).__name__}: {first}); ", secrets))
        + "rerun with --debug and report the traceback at the hfmem issue tracker"
    )
    internal.exit_code = int(ExitCode.INTERNAL)
    return internal


#: ``--help``'s sections, in order. Options go to a section by `OPTION_GROUPS`; any option missing there is listed
#: under `OTHER` (never dropped), so a new option shows up before it is filed.
MODEL, PRECISION, SHARDING, FINETUNING, ACTIVATIONS, SERVING, GPU_FIT, OUTPUT, TOOL, OTHER = (
    "Model",
    "Precision & optimizer",
    "Sharding & parallelism",
    "Fine-tuning",
    "Activations & loss",
    "Serving",
    "GPU fit",
    "Output",
    "Lists, cache & help",
    "Other",
)
GROUP_ORDER = (MODEL, PRECISION, SHARDING, FINETUNING, ACTIVATIONS, SERVING, GPU_FIT, OUTPUT, TOOL, OTHER)

#: Option (click parameter name) → its ``--help`` section. Adding an option to hfmem is one line here.
OPTION_GROUPS: dict[str, str] = {
    "revision": MODEL,
    "token": MODEL,
    "timeout": MODEL,
    "trust_remote_code": MODEL,
    "params": MODEL,
    "architecture": MODEL,
    "launch_configs": MODEL,
    "checkpoint": MODEL,
    "cache": MODEL,
    "precision": PRECISION,
    "optimizer": PRECISION,
    "optimizer_in_backward": PRECISION,
    "optimizer_impl": PRECISION,
    "accounting": PRECISION,
    "zero_stages": SHARDING,
    "gpus_per_node": SHARDING,
    "nodes": SHARDING,
    "tp": SHARDING,
    "pp": SHARDING,
    "cp": SHARDING,
    "ep": SHARDING,
    "sp": SHARDING,
    "pp_schedule": SHARDING,
    "microbatches": SHARDING,
    "virtual_stages": SHARDING,
    "fsdp": SHARDING,
    "offload": SHARDING,
    "method": FINETUNING,
    "lora_rank": FINETUNING,
    "lora_alpha": FINETUNING,
    "lora_targets": FINETUNING,
    "modules_to_save": FINETUNING,
    "dora": FINETUNING,
    "double_quant": FINETUNING,
    "train_modules": FINETUNING,
    "batch_size": ACTIVATIONS,
    "grad_accumulation": ACTIVATIONS,
    "seq_len": ACTIVATIONS,
    "target_len": ACTIVATIONS,
    "attn": ACTIVATIONS,
    "grad_checkpointing": ACTIVATIONS,
    "checkpoint_every": ACTIVATIONS,
    "activation_offload": ACTIVATIONS,
    "loss": ACTIVATIONS,
    "loss_chunks": ACTIVATIONS,
    "dropout": ACTIVATIONS,
    "images_per_sample": ACTIVATIONS,
    "context": SERVING,
    "weights_dtype": SERVING,
    "group_size": SERVING,
    "kv_dtype": SERVING,
    "prefill_chunk": SERVING,
    "engine": SERVING,  # issue 15's engine flags (vLLM, SGLang): serving only
    "gpu_memory_utilization": SERVING,
    "max_model_len": SERVING,
    "max_num_seqs": SERVING,
    "max_num_batched_tokens": SERVING,
    "block_size": SERVING,
    "kv_cache_dtype": SERVING,
    "enforce_eager": SERVING,
    "tensor_parallel_size": SERVING,
    "pipeline_parallel_size": SERVING,
    "mem_fraction_static": SERVING,
    "context_length": SERVING,
    "max_running_requests": SERVING,
    "chunked_prefill_size": SERVING,
    "page_size": SERVING,
    "min_concurrency": GPU_FIT,
    "gpu_name": GPU_FIT,
    "gpu_memory": GPU_FIT,
    "max_batch": GPU_FIT,
    "check": GPU_FIT,
    "cuda_context": GPU_FIT,
    "fragmentation": GPU_FIT,
    "format_": OUTPUT,
    "json_": OUTPUT,
    "explain": OUTPUT,
    "verbose": OUTPUT,
    "training_only": OUTPUT,
    "inference_only": OUTPUT,
    "clear_cache": TOOL,
    "list_catalogue": TOOL,
    "list_gpus": TOOL,
    "debug": TOOL,
    "version": TOOL,
    "help": TOOL,
}

#: Which command takes an option, by section: ``hfmem train`` has no serving options, ``hfmem serve`` none of the
#: training ones; `PLAN_EXCEPTIONS` names the options of a section that go elsewhere. ``hfmem MODEL`` takes all.
SECTION_PLANS: dict[str, frozenset[str]] = {
    PRECISION: frozenset({"train"}),
    SHARDING: frozenset({"train"}),
    FINETUNING: frozenset({"train"}),
    ACTIVATIONS: frozenset({"train"}),
    SERVING: frozenset({"serve"}),
    TOOL: frozenset(),
}
PLAN_EXCEPTIONS: dict[str, frozenset[str]] = {
    "tp": frozenset({"train", "serve"}),  # serving splits the KV heads and weights too
    "batch_size": frozenset({"train", "serve"}),  # sequences per GPU in both plans
    "images_per_sample": frozenset({"train", "serve"}),
    "double_quant": frozenset({"train", "serve"}),  # NF4 base (qlora) or NF4 served weights
    "checkpoint": frozenset({"serve"}),  # the safetensors cross-check is printed with the serving plan
    "max_batch": frozenset({"train"}),  # serving's largest batch is always reported with a GPU
    "training_only": frozenset(),  # the command names its plan
    "inference_only": frozenset(),
    "version": frozenset(),
    "debug": frozenset({"train", "serve"}),
    "min_concurrency": frozenset({"serve"}),  # issue 15: --check gates a deployment's concurrency
}
#: Sections per command, for ``hfmem serve --help`` (where --batch-size and --tp are serving settings).
SERVE_SECTIONS = {"batch_size": SERVING, "tp": SERVING, "images_per_sample": SERVING, "double_quant": SERVING}


def option_section(name: str | None, overrides: dict[str, str] | None = None) -> str:
    """The ``--help`` section of option ``name``: `OPTION_GROUPS`, or `OTHER` for one not filed yet."""
    if name is None:
        return OTHER
    return (overrides or {}).get(name) or OPTION_GROUPS.get(name, OTHER)


def takes_option(plan: str, name: str | None) -> bool:
    """Whether the command of ``plan`` (``train`` / ``serve``) takes option ``name``."""
    if name in PLAN_EXCEPTIONS:
        return plan in PLAN_EXCEPTIONS[name]
    return plan in SECTION_PLANS.get(option_section(name), frozenset({"train", "serve"}))


class HfmemCommand(click.Command):
    """Translates errors inside click, so `CliRunner` sees exactly what users see; ``hfmem train|serve|compare …``
    goes to that command (a model cannot be named so: Hub ids have an owner, local paths can be ``./train``).
    ``--help`` lists the options in sections (`OPTION_GROUPS`), and the root lists the commands."""

    #: ``--help`` section overrides of this command (option name → section).
    sections: dict[str, str] = {}
    #: The options a plan command sets itself (``hfmem train``: ``training_only``); see `plan_options`.
    plan_defaults: dict[str, Any] = {}

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if self is cli and argv[:1] and argv[0] in SUBCOMMANDS:
            command = SUBCOMMANDS[argv[0]]
            return command.main(argv[1:], prog_name=f"{prog_name or 'hfmem'} {argv[0]}", **extra)
        return super().main(argv, prog_name=prog_name, **extra)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self is cli:
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(80)) for name, command in SUBCOMMANDS.items()])
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                name = "help" if param is self.get_help_option(ctx) else param.name
                sections.setdefault(option_section(name, self.sections), []).append(record)
        for title in (*GROUP_ORDER, *sorted(set(sections) - set(GROUP_ORDER))):
            if sections.get(title):
                with formatter.section(title):
                    formatter.write_dl(sections[title])

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:  # a bad option value, quoted in the message
            try:
                e.message = one_line(str(e.message))
            except Exception:
                raise _fallback(e.exit_code) from e
            raise
        except KeyboardInterrupt:
            raise _interrupted() from None

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command behind the one error boundary: every exception leaves as one line and an exit code.

        The environment is checked first (before huggingface_hub reads it), and the run's network deadline set
        from --timeout. The handlers below import nothing and only format strings; if even that fails, a fixed
        message goes out with the error's exit code.
        """
        budget = NETWORK_BUDGET.set(NetworkBudget(ctx.params.get("timeout") or DEFAULT_TIMEOUT_SECONDS))
        try:
            check_environment()
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _interrupted() from None
        except (click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # The reader went away (`hfmem --list-catalogue | head`): nothing to say and no one to say it to. Python's
            # recipe (docs.python.org, signal: "Note on SIGPIPE"): point stdout at devnull so the interpreter's final
            # flush cannot fail again; exit as a process killed by SIGPIPE would (128 + 13).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(int(ExitCode.OUTPUT_CLOSED)) from None
        except Exception as e:
            if "PYTEST_CURRENT_TEST" in os.environ and not isinstance(e, (HfmemError, click.ClickException)):
                raise  # tests see the exception itself
            try:
                error = _translate(ctx, e)
            except KeyboardInterrupt:
                raise _interrupted() from None
            except Exception:
                code = e.exit_code if isinstance(e, (HfmemError, click.ClickException)) else ExitCode.INTERNAL
                raise _fallback(int(code) if isinstance(code, int) else int(ExitCode.INTERNAL)) from e
            if error is e:
                raise
            raise error from e
        finally:
            NETWORK_BUDGET.reset(budget)


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


class Listed(click.ParamType):
    """A comma list of ``inner`` values ("1,2,4"), each converted and checked by ``inner``; a tuple."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = f"list of {inner.name}"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        inner = self.inner.get_metavar(param, ctx) or self.inner.name.upper()
        return f"{inner}[,…]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[Any, ...]:
        if isinstance(value, tuple):
            return value
        if not isinstance(value, str):
            return (self.inner.convert(value, param, ctx),)
        items = [item.strip() for item in value.split(",")]
        if not all(items):
            self.fail(f"{value!r} has an empty item; give values separated by commas, e.g. 1,2,4", param, ctx)
        return tuple(self.inner.convert(item, param, ctx) for item in items)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        head, _, last = incomplete.rpartition(",")
        prefix = head + "," if head else ""
        return [type(item)(prefix + item.value, type=item.type) for item in self.inner.shell_complete(ctx, param, last)]


class OneValue(Listed):
    """`Listed` as ``compare`` takes it: the same conversion, one value, and no ``[,…]`` list marker in its help."""

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return (super().get_metavar(param, ctx) or "").removesuffix("[,…]")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[Any, ...]:
        values = super().convert(value, param, ctx)
        if isinstance(value, str) and len(values) != 1:
            self.fail(f"{value!r}: compare takes one value per option; sweep a list with hfmem MODEL", param, ctx)
        return values


def _one_value(param: click.Parameter) -> click.Parameter:
    """``param`` as ``compare`` takes it: a list option becomes a one-value copy (`OneValue`); others as they are."""
    if not isinstance(param.type, Listed):
        return param
    single = copy.copy(param)
    single.type = OneValue(param.type.inner)
    if isinstance(single.metavar, str):
        single.metavar = single.metavar.removesuffix("[,…]")
    return single


class FiniteFloatRange(click.FloatRange):
    """`click.FloatRange` that also refuses nan and ±inf (a range check alone lets nan through: nan < 0 is False)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give a decimal such as 0.1", param, ctx)
        return super().convert(number, param, ctx)


class MemorySize(click.ParamType):
    """A memory size: 80GiB, 79.2GiB, 24G (binary), 80GB (decimal) → bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_memory(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class ContextTokens(click.ParamType):
    """``--context``: a token count (≥ 1), or ``max`` for the model's whole context length."""

    name = "tokens"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return "N|max"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, str) and value.strip().lower() == FULL_CONTEXT:
            return FULL_CONTEXT
        return int(click.IntRange(min=1).convert(value, param, ctx))


#: ``--context max``: serve the model's whole context length (`InferenceSetup.full_context`).
FULL_CONTEXT = "max"


def _clear_cache(fmt: str) -> None:
    from hfmem.cache import clear_cache

    done = clear_cache()
    removed, temps = len(done.removed_entries), len(done.removed_temp_files)
    if fmt == "json":
        files = sorted((*done.removed_entries, *done.removed_temp_files))
        click.echo(
            json.dumps(
                {"cache_dir": str(done.folder), "removed": removed, "removed_files": files, "skipped": done.skipped},
                indent=2,
            )
        )
    else:
        line = f"removed {removed} cached model{'s' if removed != 1 else ''}"
        if temps:
            line += f" and {temps} unfinished temporary file{'s' if temps != 1 else ''}"
        click.echo(one_line(f"{line} from {done.folder}"))


#: ``--tp``, defined once: tensor parallelism splits the weights (and, for training, the activations) Megatron-style.
tp_option = click.option(
    "--tp",
    type=Listed(click.IntRange(min=1)),
    default=1,
    show_default=True,
    help="Tensor-parallel degree: attention/MLP linears split column-/row-parallel, embeddings and LM head "
    "vocab-parallel (Megatron); activations inside attention/MLP split too. Inference: KV heads split as well.",
)


#: The serving-engine options (issue 15), by the engines' own names, defined once: `engine_options` applies them to a
#: command. vLLM's take effect with --engine vllm, SGLang's with --engine sglang; `hfmem.rules.check_engine` refuses
#: the others, and any of them with --engine transformers.
ENGINE_OPTIONS = (
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="transformers",
        show_default=True,
        help="Serving: transformers (generate() with a DynamicCache, the plan above), or reproduce the start-up memory "
        "accounting of vllm (0.11.0) or sglang (0.4.4): KV budget, blocks, tokens, maximum concurrency, whether it "
        "starts. Needs --gpu; plans serving only.",
    ),
    click.option(
        "--gpu-memory-utilization",
        type=FiniteFloatRange(0.0, 1.0, min_open=True),
        help="vLLM: fraction of the GPU's total memory the engine may use (default 0.9).",
    ),
    click.option(
        "--max-model-len",
        type=Listed(click.IntRange(min=1)),
        help="vLLM: the longest request in tokens (default: the config's, as vLLM derives it).",
    ),
    click.option(
        "--max-num-seqs",
        type=click.IntRange(min=1),
        help="vLLM: sequences per step (default 1024 on GPUs of 70 GiB or more other than A100, else 256).",
    ),
    click.option(
        "--max-num-batched-tokens",
        type=click.IntRange(min=1),
        help="vLLM: tokens per step, the size of its profiling forward (default 8192 on GPUs of 70 GiB or more "
        "other than A100, else 2048).",
    ),
    click.option(
        "--block-size",
        type=click.Choice([str(n) for n in (1, 8, 16, 32, 64, 128)]),
        help="vLLM: tokens per KV block (default 16; MLA models 64 with FlashMLA, 128 on Blackwell).",
    ),
    click.option(
        "--kv-cache-dtype",
        type=Listed(click.Choice(ENGINE_KV_DTYPES)),
        help="vLLM / SGLang: KV cache element type: auto (the model dtype) or fp8 (one byte). Default auto.",
    ),
    click.option("--enforce-eager", is_flag=True, help="vLLM: no CUDA graphs."),
    click.option(
        "--tensor-parallel-size",
        type=Listed(click.IntRange(min=1)),
        help="vLLM / SGLang: GPUs splitting each layer's heads and weights (default --tp, else 1).",
    ),
    click.option(
        "--pipeline-parallel-size",
        type=click.IntRange(min=1),
        help="vLLM: GPUs splitting the layers; the tightest rank is reported (default 1).",
    ),
    click.option(
        "--mem-fraction-static",
        type=FiniteFloatRange(0.0, 1.0, min_open=True),
        help="SGLang: share of the free memory before the weights that weights + KV pool may use (default by TP "
        "size: 0.88 at 1 GPU … 0.79 at 16).",
    ),
    click.option(
        "--context-length",
        type=Listed(click.IntRange(min=1)),
        help="SGLang: the longest request in tokens (default: the config's).",
    ),
    click.option(
        "--max-running-requests",
        type=click.IntRange(min=1),
        help="SGLang: concurrent requests (default from the pool size).",
    ),
    click.option(
        "--chunked-prefill-size",
        type=click.IntRange(min=1),
        help="SGLang: prefill tokens per step (default 8192, 2048 below 25,000 MB of GPU memory).",
    ),
    click.option(
        "--page-size",
        type=click.IntRange(min=1),
        help="SGLang: tokens per KV page (default 1).",
    ),
    click.option(
        "--min-concurrency",
        type=click.IntRange(min=1),
        metavar="N",
        help="With --engine: the deployment must hold N concurrent requests of the longest length; --check exits 3 "
        "with one line on stderr when it does not (or the engine does not start).",
    ),
)


def engine_options(command: Any) -> Any:
    """Apply `ENGINE_OPTIONS` to a click command (in help order)."""
    for option in reversed(ENGINE_OPTIONS):
        command = option(command)
    return command


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
    "(Hub, cache, catalogue), 5 config cannot be built or traced, 130 interrupted, 141 output pipe closed. "
    "Docs: README.md, docs/.",
)
@click.argument("model", required=False)
@click.option("--revision", help="Hub branch, tag or commit sha (default: main).")
@click.option(
    "--token",
    help="Hub token for gated or private repos (default: HF_TOKEN or the saved `hf auth login`). Never printed.",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(0.0, MAX_TIMEOUT_SECONDS, min_open=True),
    default=DEFAULT_TIMEOUT_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="Deadline of each network operation as a whole (config.json, custom code, safetensors headers: every "
    "request, retry and wait of it); past it hfmem falls back to the HF cache and the catalogue, or stops.",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Allow a repo's own Python modelling code to run on this machine. Off by default, never implied.",
)
@click.option(
    "--architecture",
    metavar="CLASS",
    help="Build this transformers class instead of the one config.json names, e.g. BertForSequenceClassification "
    "to fine-tune a classifier from bert-large-uncased (its config names BertForMaskedLM).",
)
@click.option(
    "--params",
    "params",
    metavar="COUNT",
    callback=_parse_params,
    help="Plan for a hypothetical dense model of COUNT parameters instead of MODEL: 7.5B, 7.5e9, 125M. "
    "Model states only: activations are not counted, so a fit is never 'yes' (--check exits 3 when the states "
    "alone do not fit, else 5).",
)
@click.option(
    "--launch-config",
    "launch_configs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    metavar="FILE",
    help="Take settings from a file you launch with: DeepSpeed JSON, accelerate YAML, HF TrainingArguments/TRL "
    "(JSON or YAML), torchtune or axolotl YAML (recognised by their keys). Repeatable; options typed here win. "
    "The report lists each setting with its file and key, and the keys hfmem does not model.",
)
@click.option(
    "--precision",
    type=Listed(click.Choice(PRECISIONS)),
    default="bf16-mixed",
    show_default=True,
    help="fp32 | tf32 (fp32 storage, TF32 matmuls) | bf16-mixed / fp16-mixed (16-bit weights and gradients, "
    "fp32 master weights and optimizer states) | bf16 / fp16 (everything 16-bit) | amp-bf16 / amp-fp16 (torch "
    "autocast on an fp32 model, the HF Trainer's bf16=True / fp16=True: fp32 weights, gradients and states, "
    "16-bit matmuls on cached weight copies; traced under an emulation of CUDA autocast).",
)
@click.option(
    "--optimizer",
    type=Listed(click.Choice(OPTIMIZERS)),
    default="adamw",
    show_default=True,
    help="adamw-8bit is bitsandbytes' block-wise 8-bit AdamW; adafactor is HF's factored Adafactor; paged-adamw / "
    "paged-adamw-8bit are bitsandbytes' paged AdamW (fp32 / 8-bit states), whose states of tensors with ≥ 100,000 "
    "elements live in CUDA managed memory: reported as their own line (allocator peak vs device total).",
)
@click.option(
    "--optimizer-impl",
    type=click.Choice(OPTIMIZER_IMPLS),
    default="foreach",
    show_default=True,
    help="torch AdamW's step: foreach (torch's CUDA default; a state-sized temporary of all parameters), fused "
    "(none; the HF Trainer's adamw_torch_fused) or loop (2 × the largest parameter). Applies at ZeRO 0 and with "
    "--fsdp; DeepSpeed's ZeRO ≥ 1 steps its own optimizer.",
)
@click.option(
    "--optimizer-in-backward",
    is_flag=True,
    help="Step each parameter in backward and free its gradient (torchtune optimizer_in_bwd): one gradient live, "
    "no separate step peak. ZeRO 0 or --fsdp; no --pp.",
)
@click.option(
    "--zero",
    "zero_stages",
    type=click.IntRange(0, 3),
    multiple=True,
    help="ZeRO stage to report; repeat for several (default: 0 1 2 3, or the stages the offload allows).",
)
@click.option(
    "--gpus", "gpus_per_node", type=Listed(click.IntRange(min=1)), default=1, show_default=True, help="GPUs per node."
)
@click.option(
    "--nodes",
    type=Listed(click.IntRange(min=1)),
    default=1,
    show_default=True,
    help="Nodes; ZeRO shards over gpus × nodes.",
)
@click.option(
    "--method",
    type=Listed(click.Choice(METHODS)),
    default="full",
    show_default=True,
    help="full: train every parameter. lora: peft LoRA adapters on a frozen base. qlora: LoRA on a bitsandbytes "
    "NF4 base. freeze: train only --train-modules.",
)
@click.option(
    "--lora-rank",
    type=Listed(click.IntRange(min=1)),
    default=8,
    show_default=True,
    help="LoRA rank r (peft's default: 8).",
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
    type=Listed(click.IntRange(min=1)),
    default=1,
    show_default=True,
    help="Pipeline-parallel degree: stages of consecutive layers; the busiest stage is reported.",
)
@click.option(
    "--cp",
    type=Listed(click.IntRange(min=1)),
    default=1,
    show_default=True,
    help="Context-parallel degree: splits the sequence.",
)
@click.option(
    "--ep",
    type=Listed(click.IntRange(min=1)),
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
    type=Listed(click.Choice(OFFLOADS)),
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
    type=Listed(click.IntRange(min=1)),
    default=1,
    show_default=True,
    help="Micro-batch per GPU. Gradient accumulation does not change activations: pass the micro-batch only.",
)
@click.option(
    "--grad-accumulation",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Micro-batches per optimizer step. 1: gradients are freed after each step (zero_grad), so none are live "
    "in forward or as backward starts; more: they persist between micro-batches (as they do when a loop zeroes "
    "instead of freeing: zero_grad(set_to_none=False), torch < 2.0's default).",
)
@click.option(
    "--seq-len",
    type=Listed(click.IntRange(min=1)),
    help="Tokens per sequence (default: the model's context length capped at 4096; the output says which).",
)
@click.option(
    "--target-len",
    type=click.IntRange(min=1),
    help="Encoder-decoder models (T5, BART…): decoder tokens per sample (the labels), --seq-len being the "
    "encoder's (default: the same as --seq-len).",
)
@click.option(
    "--attn",
    type=Listed(click.Choice(ATTENTIONS)),
    default="sdpa",
    show_default=True,
    help="sdpa / flash: fused kernels (no seq² scores kept); eager keeps heads × seq² scores and probabilities.",
)
@click.option(
    "--grad-checkpointing",
    type=Listed(click.Choice(CHECKPOINTINGS)),
    default="none",
    show_default=True,
    help="full: keep only each layer's input and recompute it; selective: recompute the attention core (saves "
    "nothing extra with sdpa/flash, which never keep the scores); ops: torchtitan's op-level policy (keep the "
    "matmul and attention outputs but every second mm, recompute the rest).",
)
@click.option(
    "--checkpoint-every",
    type=click.INT,
    default=1,
    show_default=True,
    metavar="K",
    help="With --grad-checkpointing, checkpoint layers 0, K, 2K… (transformers' every_n_layers); the others keep "
    "everything.",
)
@click.option(
    "--activation-offload",
    is_flag=True,
    help="Keep the checkpointed activations in CPU RAM (torchtune's OffloadActivations): the LM head's input and up "
    "to 5 copies in flight stay on the GPU. Needs --grad-checkpointing.",
)
@click.option(
    "--loss",
    type=Listed(click.Choice(LOSSES)),
    default="hf",
    show_default=True,
    help="hf: transformers' cross-entropy on the whole fp32-upcast logits; chunked: torchtune's chunked cross-entropy "
    "(one chunk upcast at a time); fused: fused linear + cross-entropy (Liger, Cut Cross-Entropy), no full logits.",
)
@click.option(
    "--loss-chunks",
    type=click.INT,
    default=DEFAULT_LOSS_CHUNKS,
    show_default=True,
    metavar="N",
    help="Chunks of --loss chunked (torchtune's num_output_chunks); other losses ignore it.",
)
@click.option(
    "--dropout",
    type=FiniteFloatRange(0.0, MAX_DROPOUT_EXCLUSIVE, max_open=True),
    help="Override every dropout probability (default: the config's).",
)
@click.option(
    "--gpu",
    "gpu_name",
    type=Listed(click.STRING),
    metavar="NAME[,…]",
    help="Check the plan against a GPU (--list-gpus): h100-sxm, a100-40gb-pcie…",
)
@click.option(
    "--gpu-memory",
    type=Listed(MemorySize()),
    metavar="SIZE[,…]",
    help="Check the plan against this much GPU memory instead: 80GiB, 79.2GiB, 24G (binary), 80GB (decimal).",
)
@click.option("--max-batch", is_flag=True, help="Also find the largest micro-batch that fits the GPU, per stage.")
@click.option(
    "--check",
    is_flag=True,
    help="Make the verdict the exit code: 0 when every plan shown fits the GPU, 3 when one does not, with a line "
    "on stderr naming it and by how much. hfmem train / hfmem serve check their own plan; hfmem MODEL checks both "
    "(or --training-only / --inference-only); pass --zero N for the stage you will launch.",
)
@click.option(
    "--cuda-context",
    metavar="SIZE",
    callback=_parse_memory,
    help="CUDA context + cuBLAS workspace per GPU (default 512MiB).",
)
@click.option(
    "--fragmentation",
    type=FiniteFloatRange(0.0, MAX_FRAGMENTATION),
    default=0.10,
    show_default=True,
    help="Allocator slack (reserved − allocated) as a fraction of the allocated peak.",
)
@click.option("--training-only", is_flag=True, help="Plan training only (no inference section).")
@click.option("--inference-only", is_flag=True, help="Plan inference only: weights + KV cache + prefill + overhead.")
@click.option(
    "--context",
    type=Listed(ContextTokens()),
    help="Inference: tokens per sequence held in the KV cache, prompt + generated (default: the same as --seq-len's, "
    "the model's context length capped at 4096); max: the model's whole context length.",
)
@click.option(
    "--weights-dtype",
    type=Listed(click.Choice(WEIGHTS_DTYPES)),
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
    type=Listed(click.Choice(KV_DTYPES)),
    help="Inference: KV cache element type (default: the compute dtype, bf16 for most models).",
)
@click.option(
    "--prefill-chunk",
    type=Listed(click.IntRange(min=1)),
    help="Inference: prompt tokens per sequence in one forward (default: min(context, 2048); HF generate() "
    "prefills the whole prompt).",
)
@click.option(
    "--images-per-sample",
    type=click.IntRange(min=0, max=64),
    default=1,
    show_default=True,
    help="Models that take images (Llava, Gemma-3): default-size images per training sample and per prefill chunk, "
    "traced through the vision tower; their tokens count in --seq-len / --context. 0: token ids only.",
)
@engine_options
@click.option(
    "--checkpoint/--no-checkpoint",
    default=True,
    show_default=True,
    help="Read the checkpoint's safetensors headers (no weights) and explain how the stored tensors differ from "
    "the built model. Skipped offline and for the bundled catalogue.",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(("table", "json", "markdown")),
    help="table (default): for the terminal, with bars · json: bytes as integers, for scripts · markdown: for PR "
    "comments and issues.",
)
@click.option("--json", "json_", is_flag=True, help="Same as --format json: only JSON on stdout.")
@click.option(
    "--cache/--no-cache",
    default=True,
    show_default=True,
    help="Keep each model's inventory and traces in the user cache ($HFMEM_CACHE or ~/.cache/hfmem), so a repeat "
    "query does not import torch.",
)
@click.option(
    "--clear-cache",
    is_flag=True,
    help="Delete the entries hfmem wrote to its cache (nothing else) and exit.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="After the tables, explain every number: what it is, its formula, the values substituted and the sources "
    "of its constants, per component. With --json: an 'explanation' list in the JSON.",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Also print the reference under each table: what the precision, optimizer and accounting convention keep, "
    "each overhead item, the model's modules.",
)
@click.option(
    "--list-catalogue",
    is_flag=True,
    help="List the models bundled for offline use, with their exact parameter counts, and exit.",
)
@click.option("--list-gpus", is_flag=True, help="List the built-in GPUs with the memory PyTorch sees, and exit.")
@click.option("--debug", is_flag=True, help="Show tracebacks (also HFMEM_DEBUG=1).")
@click.version_option(hfmem_version(), "--version", prog_name="hfmem")
def cli(**opts: Any) -> None:
    """Exact parameters, peak per-GPU training memory and serving memory of a Hugging Face model, without
    downloading weights: hfmem MODEL plans both; hfmem train MODEL or hfmem serve MODEL plans one.

    MODEL is a Hub repo id (meta-llama/Llama-2-7b-hf), a local folder holding config.json or a PEFT
    adapter_config.json, or a path to a config.json. When the Hub cannot answer, hfmem uses the HF cache, then
    its bundled catalogue (--list-catalogue), and says so on stderr.

    Options whose value ends in [,…] take comma lists (--batch-size 1,2,4 --seq-len 2048,4096): one table, a row
    per combination.
    """
    _run(opts)


def _run(opts: dict[str, Any]) -> None:
    """``hfmem MODEL``, ``hfmem train`` and ``hfmem serve``: the options of the command (every option of ``cli``,
    those a command lacks at their defaults) → plan(s) → output → exit code."""
    fmt = _output_format(opts)
    if opts["clear_cache"]:
        _clear_cache(fmt)
        return
    if opts["list_catalogue"]:
        _list_catalogue(fmt == "json")
        return
    if opts["list_gpus"]:
        _list_gpus(fmt == "json")
        return
    launch = _apply_launch_configs(click.get_current_context(), opts)
    opts["finetune_given"] = _finetune_given(click.get_current_context(), launch)
    model, params = opts["model"], opts["params"]
    if model is None and params is None:
        raise click.UsageError("give a MODEL (a Hub id, folder or config.json) or --params COUNT")
    if model is not None and params is not None:
        raise click.UsageError("give either MODEL or --params, not both")
    combos = _combinations(opts)
    _check_engines(combos, has_model=model is not None)
    prepared = _prepare(model, params, opts)
    if len(combos) == 1:
        report = _report(prepared, combos[0][1])
        _emit_report(report, fmt, explain=opts["explain"], verbose=opts["verbose"], launch=launch)
        _exit_on_verdict(opts, [report])
        return
    if opts["explain"]:
        raise click.UsageError("--explain explains one plan; give one value per option (no lists) to use it")
    from hfmem.report import render_sweep, sweep_to_dict

    rows = []
    with _spinner(f"planning {len(combos):,} combinations"):
        for values, scalars in combos:
            rows.append((values, _report(prepared, scalars)))
    secrets = _secrets(click.get_current_context())
    for note in rows[0][1].model.notes:
        click.echo(f"hfmem: {one_line(redact(note, secrets))}", err=True)
    if fmt == "json":
        click.echo(_sweep_json(_with_launch(sweep_to_dict(rows), launch)))
    else:
        click.echo(render_sweep(rows, markdown=fmt == "markdown", **_console()), nl=False)
        _echo_launch(launch, fmt)
    _exit_on_verdict(opts, [r for _, r in rows], [" ".join(f"{k} {v}" for k, v in values) for values, _ in rows])


#: Options that take comma lists; a sweep is the product of every one given more than one value.
LIST_OPTIONS = (
    "precision",
    "optimizer",
    "gpus_per_node",
    "nodes",
    "method",
    "lora_rank",
    "tp",
    "pp",
    "cp",
    "ep",
    "offload",
    "batch_size",
    "seq_len",
    "attn",
    "grad_checkpointing",
    "loss",
    "gpu_name",
    "gpu_memory",
    "context",
    "weights_dtype",
    "kv_dtype",
    "prefill_chunk",
    "max_model_len",
    "kv_cache_dtype",
    "tensor_parallel_size",
    "context_length",
)


def _combinations(opts: dict[str, Any]) -> list[tuple[tuple[tuple[str, str], ...], dict[str, Any]]]:
    """Every combination of the list-valued options: (the swept options' labels and values, scalar options)."""
    swept = [name for name in LIST_OPTIONS if isinstance(opts.get(name), tuple) and len(opts[name]) > 1]
    lists = [opts[name] for name in swept]
    combos = []
    for values in itertools.product(*lists):
        scalars = dict(opts)
        for name in LIST_OPTIONS:
            value = opts.get(name)
            if isinstance(value, tuple):
                scalars[name] = value[0]
        scalars.update(zip(swept, values, strict=True))
        labels = tuple(
            (_OPTION_LABELS.get(n, "--" + n.replace("_", "-")), _label(v)) for n, v in zip(swept, values, strict=True)
        )
        combos.append((labels, scalars))
        if len(combos) > MAX_COMBINATIONS:
            raise click.UsageError(
                f"the lists make more than {MAX_COMBINATIONS:,} combinations; shorten them or split the sweep"
            )
    return combos


MAX_COMBINATIONS = 100_000
_OPTION_LABELS = {"gpus_per_node": "--gpus", "gpu_name": "--gpu"}


def _label(value: Any) -> str:
    if isinstance(value, int) and value >= 2**30:
        return f"{value / 2**30:,.2f} GiB"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _output_format(opts: dict[str, Any]) -> str:
    fmt = opts.get("format_") or "table"
    if opts.get("json_"):
        if opts.get("format_") not in (None, "json"):
            raise click.UsageError("--json is --format json; give one of them")
        fmt = "json"
    return str(fmt)


def _console() -> dict[str, Any]:
    """Colour only on a terminal and never with NO_COLOR (https://no-color.org); the terminal's width."""
    color = sys.stdout.isatty() and os.environ.get("NO_COLOR", "") == ""
    return {"color": color, "width": shutil.get_terminal_size((100, 24)).columns}


@contextmanager
def _spinner(message: str) -> Iterator[None]:
    """A spinner on stderr while fetching, building and tracing, only when stderr is a terminal."""
    if not sys.stderr.isatty() or os.environ.get("HFMEM_NO_SPINNER"):
        yield
        return
    from rich.console import Console

    console = Console(stderr=True, no_color=os.environ.get("NO_COLOR", "") != "")
    with console.status(f"hfmem: {message}…", spinner="dots"):
        yield


def _prepare(model: str | None, params: int | None, opts: dict[str, Any]) -> Prepared:
    """Resolve the model once; every combination is planned on it (one inventory, one trace per shape)."""
    if params is not None:
        resolved = with_architecture(  # refuses --architecture: a count has no class to build
            ResolvedModel(model_id=f"{params:,} parameters", source="params", config={}), opts["architecture"]
        )
        return Prepared(resolved, cache=False, params=params)
    assert model is not None
    with _spinner(f"fetching the config of {model}"):
        resolved = resolve(
            model, revision=opts["revision"], token=opts["token"], trust_remote_code=opts["trust_remote_code"]
        )
    resolved = with_architecture(resolved, opts["architecture"])
    return Prepared(resolved, trust_remote_code=opts["trust_remote_code"], cache=opts["cache"], on_build=_building_note)


def _building_note(model_id: str) -> None:
    """One line on stderr before a model is first built, where no spinner shows it (pipes, CI, logs)."""
    if sys.stderr.isatty() or os.environ.get("HFMEM_NO_SPINNER"):
        return
    secrets = _secrets(click.get_current_context())
    click.echo(f"hfmem: building {one_line(redact(model_id, secrets))} on the meta device and tracing it…", err=True)


def _report(prepared: Prepared, o: dict[str, Any], *, spinner: bool = True) -> Report:
    """Plan one combination of scalar options on ``prepared`` (``spinner``: say so on a terminal's stderr)."""
    setup, serve, training = _setups(o, is_params=prepared.params is not None)
    engine = _engine_setup(o, setup.gpu)
    if engine is not None and engine.engine != "transformers":
        if o["training_only"]:
            raise click.UsageError(f"--engine {engine.engine} plans serving; drop --training-only")
        training = False
        serve = serve or _setups({**o, "training_only": False, "inference_only": True}, is_params=False)[1]
    building = f"building {prepared.resolved.model_id} on the meta device and tracing it"
    with _spinner(building) if spinner else nullcontext():
        return prepared.report(
            setup,
            training=training,
            inference=serve,
            find_max_batch=o["max_batch"],
            checkpoint=o["checkpoint"] and serve is not None,
            token=o["token"],
            finetune_given=o["finetune_given"],
            engine=engine,
        )


def _check_engines(combos: list[tuple[Any, dict[str, Any]]], *, has_model: bool) -> None:
    """The engine rules (`hfmem.rules.check_engine`) on every combination, before a model is fetched or built."""
    from hfmem.rules import check_engine

    for _, o in combos:
        gpu = o["gpu_name"] or (GpuTarget("--gpu-memory", o["gpu_memory"]) if o["gpu_memory"] else None)
        check_engine(_engine_setup(o, gpu), has_model=has_model)


def _engine_setup(o: dict[str, Any], gpu: GpuTarget | str | None) -> EngineSetup:
    """The engine options → `EngineSetup` (validated by `hfmem.rules.check_engine` in the API)."""
    engine = o["engine"]
    tp = o["tensor_parallel_size"]
    if tp is None and engine != "transformers" and o["tp"] > 1:
        tp = o["tp"]
    return EngineSetup(
        engine=engine,
        gpu_memory_utilization=o["gpu_memory_utilization"],
        max_model_len=o["max_model_len"],
        max_num_seqs=o["max_num_seqs"],
        max_num_batched_tokens=o["max_num_batched_tokens"],
        block_size=int(o["block_size"]) if o["block_size"] is not None else None,
        kv_cache_dtype=o["kv_cache_dtype"],
        enforce_eager=o["enforce_eager"],
        tensor_parallel_size=tp,
        pipeline_parallel_size=o["pipeline_parallel_size"],
        mem_fraction_static=o["mem_fraction_static"],
        context_length=o["context_length"],
        max_running_requests=o["max_running_requests"],
        chunked_prefill_size=o["chunked_prefill_size"],
        page_size=o["page_size"],
        min_concurrency=o["min_concurrency"],
        gpu=gpu,
    )


def _finetune_given(ctx: click.Context, launch: LaunchOutcome | None) -> frozenset[str]:
    """The options typed (or set by a launch file); over a PEFT adapter, those naming `FinetuneSettings` fields
    replace the adapter's own settings (`hfmem.api.adapter_finetune`)."""
    from click.core import ParameterSource

    from_files = {entry["option"] for entry in launch.applied} if launch else set()
    return frozenset(
        p.name
        for p in ctx.command.params
        if isinstance(p, click.Option)
        and p.name is not None
        and (
            ctx.get_parameter_source(p.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
            or p.opts[0] in from_files
        )
    )


def _setups(o: dict[str, Any], *, is_params: bool) -> tuple[TrainingSetup, InferenceSetup | None, bool]:
    """Scalar options → the training setup, the inference setup (or None) and whether training is planned."""
    if o["gpu_name"] is not None and o["gpu_memory"] is not None:
        raise click.UsageError("give either --gpu or --gpu-memory, not both")
    gpu: GpuTarget | str | None = o["gpu_name"]  # a name is looked up by the setup (`hfmem.types.gpu_target`)
    if o["gpu_memory"] is not None:
        gpu = GpuTarget(f"a {o['gpu_memory'] / 2**30:,.2f} GiB GPU", o["gpu_memory"])
    if o["training_only"] and o["inference_only"]:
        raise click.UsageError("--training-only and --inference-only exclude each other; drop one")
    if o["check"] and gpu is None:
        raise click.UsageError("--check needs a GPU to check against: pass --gpu NAME or --gpu-memory SIZE")
    overheads = OverheadSettings(fragmentation=o["fragmentation"])
    if o["cuda_context"] is not None:
        overheads = replace(overheads, cuda_context_bytes=o["cuda_context"])
    setup = TrainingSetup(
        precision=o["precision"],
        optimizer=o["optimizer"],
        zero_stages=tuple(o["zero_stages"]) or None,  # None: the stages the setup allows (`hfmem.rules`)
        gpus_per_node=o["gpus_per_node"],
        nodes=o["nodes"],
        offload=o["offload"],
        accounting=o["accounting"],
        batch_size=o["batch_size"],
        seq_len=o["seq_len"],
        target_len=o["target_len"],
        attn=o["attn"],
        grad_checkpointing=o["grad_checkpointing"],
        dropout=o["dropout"],
        overheads=overheads,
        gpu=gpu,
        finetune=FinetuneSettings(
            method=o["method"],
            lora_rank=o["lora_rank"],
            lora_alpha=o["lora_alpha"],
            lora_targets=o["lora_targets"],
            modules_to_save=o["modules_to_save"] or (),
            dora=o["dora"],
            double_quant=o["double_quant"],
            train_modules=o["train_modules"] or (),
        ),
        parallel=ParallelSettings(
            tp=o["tp"],
            pp=o["pp"],
            cp=o["cp"],
            ep=o["ep"],
            sp=o["sp"],
            pp_schedule=o["pp_schedule"],
            microbatches=o["microbatches"],
            virtual_stages=o["virtual_stages"],
            fsdp=o["fsdp"],
        ),
        images_per_sample=o["images_per_sample"],
        optimizer_in_backward=o["optimizer_in_backward"],
        optimizer_impl=o["optimizer_impl"],
        loss=o["loss"],
        loss_chunks=o["loss_chunks"],
        checkpoint_every=o["checkpoint_every"],
        activation_offload=o["activation_offload"],
        grad_accumulation=o["grad_accumulation"],
    )
    serve = None
    if not o["training_only"] and not (is_params and not o["inference_only"]):
        serve = InferenceSetup(
            weights_dtype=o["weights_dtype"],
            group_size=o["group_size"],
            double_quant=o["double_quant"],
            kv_dtype=o["kv_dtype"],
            context=None if o["context"] == FULL_CONTEXT else o["context"],
            batch_size=o["batch_size"],
            tp=o["tp"],
            prefill_chunk=o["prefill_chunk"],
            images_per_sample=o["images_per_sample"],
            overheads=overheads,
            gpu=gpu,
            full_context=o["context"] == FULL_CONTEXT,
        )
    return setup, serve, not o["inference_only"]


def _apply_launch_configs(ctx: click.Context, opts: dict[str, Any]) -> LaunchOutcome | None:
    """Apply the ``--launch-config`` files to ``opts`` (in place), except options the user typed; what became of
    each setting, for the report. Settings for options (or choices) this hfmem lacks are reported, not applied."""
    if not opts.get("launch_configs"):
        return None
    from click.core import ParameterSource

    found = read_launch_files(opts["launch_configs"])
    params = {p.name: p for p in ctx.command.params if p.name}
    typed = {
        n for n in params if ctx.get_parameter_source(n) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }
    if "params" in typed or "models" in params:  # --params, or compare's own list of models, replace MODEL
        typed.add("model")
    if {"zero_stages", "fsdp"} & typed:  # one sharding: a typed --zero replaces a file's FSDP, and the reverse
        typed |= {"zero_stages", "fsdp"}
    applied, overridden, unmodelled = [], [], []
    for setting in found.settings:
        param = params.get(setting.option)
        flag = param.opts[0] if isinstance(param, click.Option) else option_flag(setting.option)
        entry = {"option": flag, "value": setting.value, "origin": setting.origin}
        if setting.option in typed:
            typed_value = opts.get(setting.option)
            if setting.option == "model" and typed_value is None:  # --params, or compare's models
                typed_value = f"--params {opts['params']:,}" if opts.get("params") else "the models compared"
            overridden.append({**entry, "flag_value": _typed_value(typed_value)})
        elif setting.unmodelled or param is None or not _accepts(param, setting.value):
            why = setting.unmodelled or (
                "not a choice of this hfmem yet"
                if param is not None
                else f"not planned by hfmem {ctx.command.name} (hfmem MODEL plans it)"
                if any(p.name == setting.option for p in cli.params)
                else "not an option of this hfmem yet"
            )
            unmodelled.append({**entry, "reason": why})
        else:
            try:
                opts[setting.option] = param.process_value(ctx, (setting.value,) if param.multiple else setting.value)
            except click.BadParameter as e:
                problem = f"{flag} {setting.value} is refused ({e.message.rstrip('.')}); fix the file or pass {flag}"
                raise LaunchConfigError(setting.origin, problem) from e
            except (ValueError, TypeError, OverflowError) as e:  # click's int() of a huge float, a list…
                problem = f"{flag} {show_value(setting.value)} is not a value it takes; fix the file or pass {flag}"
                raise LaunchConfigError(setting.origin, problem) from e
            applied.append(entry)
    unresolved = []
    for item in found.unresolved:
        entry = {"option": option_flag(item.option), "value": item.value, "origin": item.origin, "reason": item.reason}
        if item.option in typed:
            del entry["reason"]
            overridden.append({**entry, "flag_value": _typed_value(opts.get(item.option))})
        else:
            unresolved.append(entry)
    return LaunchOutcome(
        files=found.files,
        applied=tuple(applied),
        overridden_by_flags=tuple(overridden),
        recognised_not_modelled=tuple(unmodelled),
        unresolved=tuple(unresolved),
        not_understood=found.not_understood,
        no_memory_effect=found.no_memory_effect,
    )


def _accepts(param: click.Parameter, value: Any) -> bool:
    """Whether ``value`` is among the choices of ``param`` (always, for options without a fixed set of choices)."""
    kind = param.type.inner if isinstance(param.type, Listed) else param.type
    return not isinstance(kind, click.Choice) or str(value) in kind.choices


def _typed_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


def _with_launch(doc: dict[str, Any], launch: LaunchOutcome | None) -> dict[str, Any]:
    if launch is not None:
        from hfmem.report import launch_to_dict

        doc["launch"] = launch_to_dict(launch)
    return doc


def _echo_launch(launch: LaunchOutcome | None, fmt: str) -> None:
    """The "Settings from launch files" block after a table or Markdown report."""
    if launch is not None:
        from hfmem.report import render_launch

        text = render_launch(launch, markdown=fmt == "markdown")
        click.echo("".join(one_line(line) + "\n" for line in text.splitlines()), nl=False)  # keys quote the files


def _sweep_json(doc: dict[str, Any]) -> str:
    """A sweep's JSON with one row per line: still readable, and each row goes through json's C encoder (``indent``
    makes json fall back to its pure-Python encoder, which cost most of a large sweep's time)."""
    head = {key: value for key, value in doc.items() if key != "rows"}
    rows = ",\n".join("    " + json.dumps(row) for row in doc["rows"])
    return json.dumps(head, indent=2)[:-2] + ',\n  "rows": [\n' + rows + "\n  ]\n}"


def _emit_report(
    report: Report, fmt: str, *, explain: bool = False, verbose: bool = False, launch: LaunchOutcome | None = None
) -> None:
    from hfmem.report import render_markdown, render_table, to_dict

    secrets = _secrets(click.get_current_context())
    for note in report.model.notes:
        click.echo(f"hfmem: {one_line(redact(note, secrets))}", err=True)
    if fmt == "json":
        doc = to_dict(report)
        if explain:
            from hfmem.explain import explanation_records

            doc["explanation"] = explanation_records(report)
        click.echo(json.dumps(_with_launch(doc, launch), indent=2))
    elif fmt == "markdown":
        click.echo(render_markdown(report, verbose=verbose), nl=False)
        if explain:
            from hfmem.explain import render_explanation

            click.echo("\n```text\n" + render_explanation(report, width=100) + "```\n", nl=False)
    else:
        console = _console()
        click.echo(render_table(report, verbose=verbose, **console), nl=False)
        if explain:
            from hfmem.explain import render_explanation

            click.echo(render_explanation(report, width=console["width"]), nl=False)
    if fmt != "json":
        _echo_launch(launch, fmt)


def _exit_on_verdict(opts: dict[str, Any], reports: list[Report], labels: list[str] | None = None) -> None:
    """--check: exit 3 when a plan the command shows does not fit (the training rows of `shown_stages`, serving),
    after one line on stderr naming each plan and stage and by how much (`fit_failures`; ``labels`` name each
    report: a sweep's combination, compare's model); else 5 (`NotMeasuredError`) when a plan could not be measured
    (its fit is unknown)."""
    if not opts["check"]:
        return
    from hfmem.report import fit_failures, shown_stages

    verdicts: list[bool | None] = []
    failures: list[str] = []
    for i, report in enumerate(reports):
        if report.training is not None:
            verdicts += [stage.fits for stage in shown_stages(report.training)]
        if report.engine is not None:  # the engine's verdict; its transformers plan only measured the model
            verdicts.append(report.engine.fits)
        elif report.inference is not None:
            verdicts.append(report.inference.fits)
        label = f"{labels[i]}: " if labels else ""
        failures += [label + line for line in fit_failures(report)]
    if any(verdict is False for verdict in verdicts):
        shown = failures[:MAX_FAILURES_SAID]
        more = len(failures) - len(shown)
        said = "; ".join(shown) + (f"; and {more:,} more" if more else "")
        secrets = _secrets(click.get_current_context())
        click.echo(f"hfmem: does not fit: {one_line(redact(said, secrets))}", err=True)
        raise click.exceptions.Exit(int(ExitCode.DOES_NOT_FIT))
    for report in reports:
        if report.training is not None and report.training.unmeasured is not None:
            raise NotMeasuredError(report.model.model_id, "activations", report.training.unmeasured)
        if report.inference_unmeasured is not None:
            raise NotMeasuredError(report.model.model_id, "serving memory", report.inference_unmeasured)
    if not all(verdicts):
        raise click.exceptions.Exit(int(ExitCode.DOES_NOT_FIT))


#: --check names at most this many failing plans on its stderr line (a sweep can have thousands), then a count.
MAX_FAILURES_SAID = 4


def _compare(**opts: Any) -> None:
    """Several models under the same settings, side by side: parameters, the training peak per ZeRO stage,
    serving memory and a verdict. Takes every option of `hfmem MODEL` except lists (one setting per run).

    Example: hfmem compare meta-llama/Llama-3.1-8B mistralai/Mistral-7B-v0.1 Qwen/Qwen2.5-7B --gpu h100-sxm
    """
    fmt = _output_format(opts)
    models = opts.pop("models")
    if len(models) < 2:
        raise click.UsageError("compare needs at least two models; for one, run hfmem MODEL")
    if len(set(models)) != len(models):
        raise click.UsageError("a model is named twice; give each once")
    opts.update(model=None, params=None, list_catalogue=False, list_gpus=False, clear_cache=False)
    launch = _apply_launch_configs(click.get_current_context(), opts)
    opts["finetune_given"] = _finetune_given(click.get_current_context(), launch)
    combos = _combinations(opts)
    if len(combos) != 1:
        raise click.UsageError("compare takes one value per option; sweep one model at a time with lists")
    if opts["explain"]:
        raise click.UsageError("--explain explains one plan; run hfmem MODEL --explain for each model")
    _check_engines(combos, has_model=True)
    reports = []
    for model in models:
        report = _report(_prepare(model, None, opts), combos[0][1])
        secrets = _secrets(click.get_current_context())
        for note in report.model.notes:
            click.echo(f"hfmem: {one_line(redact(note, secrets))}", err=True)
        reports.append(report)
    from hfmem.report import compare_to_dict, render_compare

    if fmt == "json":
        click.echo(json.dumps(_with_launch(compare_to_dict(reports), launch), indent=2))
    else:
        click.echo(render_compare(reports, markdown=fmt == "markdown", **_console()), nl=False)
        _echo_launch(launch, fmt)
    _exit_on_verdict(opts, reports, [r.model.model_id for r in reports])


_NOT_FOR_COMPARE = {"model", "params", "list_catalogue", "list_gpus", "clear_cache"}
compare = HfmemCommand(
    "compare",
    callback=_compare,
    params=[click.Argument(["models"], nargs=-1, required=True)]
    + [_one_value(p) for p in cli.params if p.name not in _NOT_FOR_COMPARE],
    help=_compare.__doc__,
    short_help="Several models under the same settings, side by side.",
    context_settings=cli.context_settings,
    epilog=cli.epilog,
)


def _web(port: int | None, debug: bool) -> None:
    """Serve a calculator page on 127.0.0.1 (a Gradio app on the same engine) and print its URL; Ctrl-C stops it.
    Needs the web extra: pip install 'hfmem[web]'. The page's settings travel in its URL, so a result can be shared.
    """
    from hfmem.web import serve

    serve(port=port, echo=click.echo)


web = HfmemCommand(
    "web",
    callback=_web,
    params=[
        click.Option(
            ["--port"], type=click.IntRange(1, 65535), help="Port on 127.0.0.1 (default: a free one from 7860 up)."
        ),
        click.Option(["--debug"], is_flag=True, help="Show tracebacks (also HFMEM_DEBUG=1)."),
    ],
    help=_web.__doc__,
    context_settings=cli.context_settings,
)


def _plan_command(plan: str, short_help: str, doc: str, **defaults: Any) -> HfmemCommand:
    """``hfmem train`` / ``hfmem serve``: the options of `cli` that `takes_option` gives ``plan``, the same run."""
    taken = [p for p in cli.params if p.name == "model" or takes_option(plan, p.name)]

    def callback(**opts: Any) -> None:
        _run(plan_options(command, opts))

    command = HfmemCommand(
        plan,
        callback=callback,
        params=taken,
        help=doc,
        short_help=short_help,
        context_settings=cli.context_settings,
        epilog=cli.epilog,
    )
    command.plan_defaults = defaults
    if plan == "serve":
        command.sections = SERVE_SECTIONS
    return command


def plan_options(command: HfmemCommand, opts: dict[str, Any]) -> dict[str, Any]:
    """The options of a run of ``command`` (``hfmem train`` / ``hfmem serve``): those it takes as given, every other
    option of `cli` at its default (as click gives it), and the plan the command names (`HfmemCommand.plan_defaults`).
    """
    with cli.make_context("hfmem", []) as bare:
        lacking = {name: value for name, value in bare.params.items() if name not in opts}
    return {**lacking, **opts, **command.plan_defaults}


train = _plan_command(
    "train",
    "Plan training only: peak memory per GPU per ZeRO stage; --check gates on it.",
    """The training plan of MODEL: exact parameters and the peak memory per GPU for each ZeRO stage, and whether
    it fits a GPU. --check gates on training only.

    Example: hfmem train meta-llama/Llama-3.1-8B --method qlora --gpu rtx-4090 --seq-len 2048 --check
    """,
    training_only=True,
)
serve = _plan_command(
    "serve",
    "Plan serving only: weights, KV cache, prefill and overheads per GPU; --check gates on it.",
    """The serving plan of MODEL: weights, KV cache, a prefill chunk and overheads per GPU, and whether it fits a
    GPU. --check gates on serving only.

    Example: hfmem serve meta-llama/Llama-3.1-8B --gpu l4 --context max
    """,
    inference_only=True,
)
#: ``hfmem NAME …`` commands beside ``hfmem MODEL …``.
SUBCOMMANDS: dict[str, HfmemCommand] = {"train": train, "serve": serve, "compare": compare, "web": web}


def main() -> None:
    """The ``hfmem`` program (console script and ``python -m hfmem``): a process of its own, so it sets what
    hfmem's requests need before huggingface_hub is imported (`prepare_cli_environment`)."""
    prepare_cli_environment()
    cli.main(prog_name="hfmem")
