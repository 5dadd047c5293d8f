"""hfmem/build/: the one package that imports torch, each trace its own state, its patches undone after it."""

from __future__ import annotations

import ast
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import hfmem
from hfmem.build import trace
from hfmem.build.serve import profile_inference
from hfmem.build.trace import Trace, full_length_traces, profile_activations, tracing
from hfmem.errors import UnsupportedArchitectureError
from hfmem.types import ResolvedModel
from tests.conftest import TINY_LLAMA

TINY = ResolvedModel(model_id="tiny-llama", source="local", config=dict(TINY_LLAMA))
#: By hand: TINY_LLAMA has num_hidden_layers = 2, one self-attention call each per forward.
TINY_ATTENTION_CALLS = 2

HEAVY = ("torch", "transformers", "accelerate", "peft")


def profile(seq_len: int = 16) -> object:
    return profile_activations(TINY, batch_size=1, seq_len=seq_len, attn="sdpa", dtype="bfloat16")


# --- patches are scoped to the trace ----------------------------------------------------------------------------------


def test_dropout_is_the_original_after_a_trace() -> None:
    original = torch.nn.functional.dropout
    profile()
    assert torch.nn.functional.dropout is original


def test_dropout_is_patched_during_a_training_trace_and_restored_after_a_failing_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = torch.nn.functional.dropout
    seen: list[bool] = []

    @contextlib.contextmanager
    def failing(torch_model: object) -> Iterator[None]:
        # Entered inside the trace's context, just before the forward.
        seen.append(torch.nn.functional.dropout is original)
        raise RuntimeError("forward failed")
        yield  # pragma: no cover

    monkeypatch.setattr(trace, "_placeholder_checks_off", failing)
    with pytest.raises(UnsupportedArchitectureError, match="forward failed"):
        profile()
    assert seen and not any(seen)  # every attempt (fused stand-in, then eager) ran with the CUDA-style dropout
    assert torch.nn.functional.dropout is original


def test_a_serving_trace_leaves_dropout_alone() -> None:
    original = torch.nn.functional.dropout
    with tracing(training=False):
        assert torch.nn.functional.dropout is original
    with tracing(training=True):
        assert torch.nn.functional.dropout is not original
    assert torch.nn.functional.dropout is original


def test_tracing_restores_everything_on_error() -> None:
    original = torch.nn.functional.dropout
    with pytest.raises(ValueError), tracing(training=True):
        raise ValueError("boom")
    assert torch.nn.functional.dropout is original
    assert trace._CURRENT_TRACE.get() is None


# --- each trace counts for itself -------------------------------------------------------------------------------------


def test_each_forward_is_its_own_trace() -> None:
    first, second = profile(16), profile(32)
    assert first.attention_calls == second.attention_calls == TINY_ATTENTION_CALLS  # type: ignore[attr-defined]
    served = profile_inference(TINY, batch_size=1, prefill_tokens=16, dtype="bfloat16")
    assert served.attention_calls == TINY_ATTENTION_CALLS


def test_traces_have_independent_counters() -> None:
    """The fused stand-in counts into the current trace only; an enclosing trace is untouched and current again."""
    with tracing(training=False) as outer:
        assert profile().attention_calls == TINY_ATTENTION_CALLS  # type: ignore[attr-defined]
        assert trace._CURRENT_TRACE.get() is outer
    assert outer == Trace(attention_calls=0)


def test_two_traces_count_separately() -> None:
    from transformers import AttentionInterface

    trace._register_fused_attention()
    fused = AttentionInterface._global_mapping[trace.FUSED_ATTENTION]
    q = torch.empty((1, 2, 3, 4), device="meta")
    with tracing(training=False) as first:
        fused(None, q, q, q, None)
        with tracing(training=False) as second:
            fused(None, q, q, q, None)
            fused(None, q, q, q, None)
        fused(None, q, q, q, None)
    fused(None, q, q, q, None)  # outside any trace: counted nowhere
    assert (first.attention_calls, second.attention_calls) == (2, 2)


def test_full_length_traces_is_scoped() -> None:
    assert not trace._FULL_LENGTH.get()
    with pytest.raises(ValueError), full_length_traces():
        assert trace._FULL_LENGTH.get()
        raise ValueError("boom")
    assert not trace._FULL_LENGTH.get()


# --- one package imports torch ----------------------------------------------------------------------------------------


def test_only_the_build_package_imports_torch() -> None:
    root = Path(hfmem.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "build":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}:{node.lineno} {name}" for name in names if name.split(".")[0] in HEAVY]
    assert offenders == []


def test_the_cli_imports_neither_torch_nor_transformers() -> None:
    script = (
        "import sys, hfmem.cli\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
        "heavy += [m for m in sys.modules if m.startswith('hfmem.build')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hfmem", "--help"], check=True, capture_output=True, text=True
    )
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not {name for name in imported if name.split(".")[0] in ("torch", "transformers")}
