"""Hypothesis strategies and the no-traceback property, shared by tests/test_fuzz.py and benchmarks/fuzz.py.

Two kinds of input, each run through the real CLI (`click.testing.CliRunner` on `hfmem.cli.cli`):

* **config.json documents**: real configs (the bundled catalogue, the test fixtures) mutated: keys dropped, values
  replaced by wrong types (str, list, dict, None, bool), zeros, negatives, huge ints (10**30), floats, NaN and
  infinities, unicode, deeply nested objects; and whole documents broken (not an object, bad JSON, not UTF-8,
  nesting thousands deep).
* **command lines**: the options are read from the click command's own ``params``, so an option added later is
  fuzzed without touching this file; each option gets values of its type (good ones, and bad numbers, negatives,
  huge, unicode, empty strings, unknown names).

The property (`classify`): every input ends in a result (exit 0, or 3 for ``--check`` saying "does not fit", with
output on stdout) or in exactly one ``Error: …`` line on stderr with a non-zero exit and nothing on stdout; never an
exception escaping the CLI, never "Traceback" in the output. An "internal error" line counts as a finding too: it
is how the CLI reports a bug.
"""

from __future__ import annotations

import copy
import json
import math
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner
from hypothesis import strategies as st

from hfmem.cli import cli
from tests.conftest import FIXTURES

ROOT = Path(__file__).parent.parent
CATALOGUE = ROOT / "hfmem" / "catalogue"

#: Keys that count layers: shrinking them keeps a real config cheap to build (mutations may still make them huge).
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "n_layers")
#: Keys worth hitting even when a config lacks them: sizes, types, the fields hfmem itself reads.
INTERESTING_KEYS = (
    "model_type",
    "architectures",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "n_positions",
    "sliding_window",
    "layer_types",
    "tie_word_embeddings",
    "torch_dtype",
    "dtype",
    "quantization_config",
    "rope_scaling",
    "rope_parameters",
    "auto_map",
    "text_config",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "n_routed_experts",
    "is_encoder_decoder",
    "kv_lora_rank",
    "hidden_act",
    "attention_dropout",
)
#: Real model types (some other model's config under this type), and odd ones.
MODEL_TYPES = ("llama", "gpt2", "bert", "t5", "qwen2", "mistral", "gemma2", "mamba", "whisper", "clip", "nope", "")


def _is_object(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except ValueError:
        return False


#: (label, config) for every bundled catalogue config and every fixture config that parses as a JSON object.
BASE_CONFIGS = tuple(
    (f"{path.parent.parent.name}/{path.parent.name}", json.loads(path.read_text(encoding="utf-8")))
    for path in sorted([*CATALOGUE.glob("*/config.json"), *FIXTURES.glob("*/config.json")])
    if _is_object(path)
)

_DEEP = "__hfmem_fuzz_deep__"  # placeholder replaced by raw nested JSON text (json.dumps would recurse too deep)
_DEEP_MARKER = re.compile(r'"__hfmem_fuzz_deep__([\[{])(\d+)"')


def _nested(bracket: str, depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth if bracket == "{" else "[" * depth + "]" * depth


# --- values -------------------------------------------------------------------------------------------------------

_special_ints = st.sampled_from(
    [0, -1, 1, 2, 3, 7, 2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64, 10**12, 10**30, -(10**30)]
)
_special_floats = st.sampled_from(
    [0.0, -0.0, 0.5, 1.5, -2.5, 1e-300, 1e300, 4096.0, math.nan, math.inf, -math.inf, 1e30]
)
_special_text = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-1",
        "1e3",
        "NaN",
        "llama",
        "bfloat16",
        "float8_e4m3fn",
        "auto",
        "int4",
        "💥",
        "ä" * 3,
        "x" * 500,
        "LlamaForCausalLM",
        "BertModel",
        "AutoTokenizer",
        "__class__",
        "a.b.C",
        "\u0000",
        "\u202e",
        "\ud800",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    _special_ints,
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(),
    _special_floats,
    st.floats(),
    _special_text,
    st.text(max_size=12),
)
#: Any JSON value: scalars, and lists and objects of them (a few levels deep).
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
#: Nesting far deeper than Python's recursion limit (json.loads raises RecursionError on it).
deep_values = st.tuples(st.integers(min_value=100, max_value=100_000), st.sampled_from("[{"))


# --- config documents -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigCase:
    """A config.json to write: its text (or raw bytes) and how it was made."""

    label: str
    content: str | bytes

    def write(self, folder: Path) -> Path:
        path = folder / "config.json"
        if isinstance(self.content, bytes):
            path.write_bytes(self.content)
        else:
            path.write_text(self.content, encoding="utf-8", errors="surrogatepass")
        return path


def shrink(config: dict[str, Any]) -> dict[str, Any]:
    """Two layers instead of dozens (per-layer lists cut to match), so one run costs a fraction of a second."""
    out = dict(config)
    for key in LAYER_KEYS:
        layers = out.get(key)
        if isinstance(layers, int) and not isinstance(layers, bool) and layers > 2:
            out[key] = 2
            for other, value in out.items():
                if isinstance(value, list) and len(value) == layers:
                    out[other] = value[:2]
    return out


def _paths(value: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    """Every key path into nested objects and lists (at most 3 levels), for mutations to aim at."""
    found: list[tuple[Any, ...]] = []
    if depth > 3:
        return found
    items: Sequence[tuple[Any, Any]]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))[:4]
    else:
        return found
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key), depth + 1))
    return found


def _parent(config: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        config = config[key]
    return config


@st.composite
def mutated_configs(draw: st.DrawFn, *, always_shrink: bool = False) -> ConfigCase:
    """A real config with 1–4 mutations, or (rarely) a whole document that is not a usable config."""
    label, base = draw(st.sampled_from(BASE_CONFIGS))
    if draw(st.integers(min_value=0, max_value=19)) == 0:
        return draw(broken_documents(base, label))
    config: dict[str, Any] = copy.deepcopy(shrink(base) if always_shrink or draw(st.booleans()) else base)
    steps = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["drop", "replace", "replace", "replace", "interesting", "add", "deep"]))
        paths = _paths(config)
        if op in ("drop", "replace", "deep") and not paths:
            op = "interesting"
        if op == "drop":
            path = draw(st.sampled_from(paths))
            parent = _parent(config, path)
            del parent[path[-1]]
            steps.append(f"drop {'.'.join(map(str, path))}")
            continue
        if op in ("replace", "deep"):
            path = draw(st.sampled_from(paths))
        elif op == "interesting":
            path = (draw(st.sampled_from(INTERESTING_KEYS)),)
        else:
            path = (draw(st.text(max_size=10)),)
        value: Any
        if op == "deep":
            depth, bracket = draw(deep_values)
            value = f"{_DEEP}{bracket}{depth}"
        elif path[-1] == "model_type" and draw(st.booleans()):
            value = draw(st.sampled_from(MODEL_TYPES))
        else:
            value = draw(json_values)
        _parent(config, path)[path[-1]] = value
        steps.append(f"{'.'.join(map(str, path))}={_short(value)}")
    text = json.dumps(config)  # NaN / Infinity are written as Python's json writes them, and read back the same way
    text = _DEEP_MARKER.sub(lambda m: _nested(m.group(1), int(m.group(2))), text)
    return ConfigCase(f"{label}: {'; '.join(steps)}", text)


@st.composite
def broken_documents(draw: st.DrawFn, base: dict[str, Any], label: str) -> ConfigCase:
    """Whole documents that are no config: other JSON types, broken syntax, bad encodings, absurd nesting."""
    text = json.dumps(base)
    kind = draw(
        st.sampled_from(["value", "truncated", "bom", "latin1", "invalid-utf8", "deep-array", "deep-object", "empty"])
    )
    content: str | bytes
    if kind == "value":
        content = json.dumps(draw(json_values))
    elif kind == "truncated":
        content = text[: draw(st.integers(min_value=0, max_value=max(0, len(text) - 1)))]
    elif kind == "bom":
        content = "\ufeff" + text
    elif kind == "latin1":
        content = text.replace("}", ', "name": "caf\u00e9"}', 1).encode("latin-1", errors="replace")
    elif kind == "invalid-utf8":
        content = text.encode() + b"\xff\xfe"
    elif kind == "deep-array":
        depth = draw(st.integers(min_value=1000, max_value=200_000))
        content = "[" * depth + "]" * depth
    elif kind == "deep-object":
        depth = draw(st.integers(min_value=1000, max_value=100_000))
        content = '{"a": ' * depth + "{}" + "}" * depth
    else:
        content = ""
    return ConfigCase(f"{label}: document {kind}", content)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: Cheap ways to run a config: training of one ZeRO stage on short sequences, inference on a short context, both.
CHEAP_RUNS: tuple[tuple[str, ...], ...] = (
    ("--training-only", "--zero", "3", "--seq-len", "32"),
    ("--inference-only", "--context", "64"),
    ("--zero", "3", "--seq-len", "16", "--context", "16", "--json"),
)


# --- command lines -------------------------------------------------------------------------------------------------

#: Options never fuzzed: --debug shows tracebacks on purpose.
SKIPPED_OPTIONS = ("debug",)
_bad_strings = st.sampled_from(
    ["", " ", "-1", "0", "1.5", "1e400", "nan", "inf", "-inf", "💥", "ä", "\udcff", "x" * 300]
)
_count_like = st.sampled_from(
    ["7B", "7.5e9", "125M", "1", "1T", "0", "-5", "1.5", "1e30", "1e999", "1e9999999", "1e999999999999", "7 B", "B"]
)
_size_like = st.sampled_from(
    ["80GiB", "24G", "80GB", "1", "0B", "1e30GiB", "1e9999999GiB", "0.5B", "-1GiB", "79.2 GiB", "1KiB", "nan GiB"]
)
_names_like = st.sampled_from(
    [
        "all-linear",
        "q_proj,v_proj",
        "lm_head",
        "model.layers.1*",
        "re:layers\\.(0|1)\\.",
        "re:(",
        ",",
        "embed_tokens",
        "nope",
        "h100-sxm",
        "a100-40gb",
        "rtx-4090",
        "H100",
        "NVIDIA H100 80GB HBM3",
        "tpu-v9",
        "main",
        "v1.0",
    ]
)


def _option_values(param: click.Option) -> st.SearchStrategy[str]:
    """Values for one option, from its click type: mostly plausible, often wrong."""
    kind = param.type
    noise = st.one_of(_bad_strings, st.text(max_size=8).filter(lambda s: "\x00" not in s))
    if isinstance(kind, click.Choice):
        good = st.sampled_from([str(c) for c in kind.choices])
        return st.one_of(good, good, good, good.map(str.upper), noise)
    if isinstance(kind, (click.types.IntParamType, click.IntRange)):
        ints = st.one_of(
            st.integers(min_value=-2, max_value=8),
            st.sampled_from([16, 64, 1000, 4096, 2**31, 10**12, 10**18, 10**30, 10**400]),
            st.integers(),
        )
        return st.one_of(ints.map(str), ints.map(str), noise)
    if isinstance(kind, (click.types.FloatParamType, click.FloatRange)):
        floats = st.one_of(st.floats(min_value=-1, max_value=2), st.floats())
        return st.one_of(floats.map(repr), floats.map(str), noise)
    return st.one_of(_count_like, _size_like, _names_like, noise)


def _option_args(param: click.Option) -> st.SearchStrategy[list[str]]:
    name = param.opts[0]
    if param.is_flag:
        flags = [*param.opts, *param.secondary_opts]
        return st.sampled_from(flags).map(lambda flag: [flag])
    return _option_values(param).map(lambda value: [name, value])


def fuzzed_options() -> list[click.Option]:
    return [p for p in cli.params if isinstance(p, click.Option) and p.name not in SKIPPED_OPTIONS]


@st.composite
def command_lines(draw: st.DrawFn, model_folder: Path) -> list[str]:
    """A MODEL (a tiny config folder, a catalogue id, --params, or junk) and 0–6 options with fuzzed values."""
    options = fuzzed_options()
    chosen = draw(st.lists(st.sampled_from(options), max_size=6, unique_by=lambda p: p.name))
    args: list[str] = []
    target = draw(st.sampled_from(["tiny", "tiny", "tiny", "catalogue", "params", "junk", "none"]))
    if target == "tiny":
        args.append(str(model_folder))
    elif target == "catalogue":
        args.append(
            draw(st.sampled_from(["openai-community/gpt2", "Qwen/Qwen3-0.6B", "google-bert/bert-base-uncased"]))
        )
    elif target == "params":
        args += ["--params", draw(st.one_of(_count_like, _bad_strings))]
    elif target == "junk":
        args.append(draw(st.one_of(_bad_strings, _names_like, st.text(max_size=20).filter(lambda s: "\x00" not in s))))
    for param in chosen:
        args += draw(_option_args(param))
    if draw(st.booleans()):
        args += ["--seq-len", "64"] if "--seq-len" not in args else []
    return args


# --- the property ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one input ended: ``result``, ``error`` (one line, non-zero exit), or a finding (anything else)."""

    kind: str  # "result" | "error" | "traceback" | "internal" | "malformed"
    exit_code: int
    detail: str

    @property
    def ok(self) -> bool:
        return self.kind in ("result", "error")


_CLICK_USAGE_PREFIXES = ("Usage: ", "Try '")


def run_cli(args: Sequence[str]) -> Outcome:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    return classify(result, json_wanted="--json" in args)


def classify(result: Any, *, json_wanted: bool = False) -> Outcome:
    """Sort one CLI run into a result, a one-line error, or a finding (see the module docstring)."""
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        detail = "".join(traceback.format_exception(*result.exc_info))
        return Outcome("traceback", code, detail)
    out, err = result.stdout, result.stderr
    if "Traceback" in out or "Traceback" in err:
        return Outcome("traceback", code, err or out)
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    others = [line for line in lines if line and not line.startswith(("Error: ", "hfmem: ", *_CLICK_USAGE_PREFIXES))]
    if code == 0 or (code == 3 and not errors):
        if not out.strip() or errors or others:
            return Outcome("malformed", code, f"exit {code} with stdout {out[:200]!r}, stderr {err[:500]!r}")
        if json_wanted and "--help" not in out and not out.startswith("hfmem, version"):
            try:
                json.loads(out, parse_constant=_reject_constant)
            except ValueError as e:
                return Outcome("malformed", code, f"--json printed invalid JSON ({e}): {out[:300]!r}")
        return Outcome("result", code, "")
    if len(errors) != 1 or others or out:
        return Outcome("malformed", code, f"exit {code} with stdout {out[:200]!r}, stderr {err[:1000]!r}")
    if "internal error" in errors[0]:
        return Outcome("internal", code, errors[0])
    return Outcome("error", code, errors[0])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
