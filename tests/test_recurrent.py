"""Recurrent and state-space models: a few short traces give the long one exactly, and the CLI says when it builds.

transformers' slow path (the one that runs off CUDA, on the meta device too) loops over every token in Python for
Mamba's selective scan (`modeling_mamba.mamba_selective_scan`), Jamba's Mamba layers and RecurrentGemma's RG-LRU
(`RecurrentGemmaRglru._rnn_scan`), so hfmem traces a few short lengths and extrapolates (`trace._at_length`).
The reference for every comparison here is the model's own full-length trace (`full_length_traces`), not a number
hfmem printed: the claim under test is that the two agree to the byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import AutoConfig

from hfmem.build import classes, serve, trace
from hfmem.build.config import build_transformers_config
from hfmem.build.serve import profile_inference
from hfmem.build.trace import full_length_traces, profile_activations
from hfmem.cli import cli
from hfmem.errors import UnsupportedArchitectureError
from hfmem.types import ResolvedModel
from tests.conftest import TINY_LLAMA

#: Prime, so no dimension that grows with the length equals it (a last dimension of the vocabulary's size is counted
#: as logits).
VOCAB = 997


def tiny(model_type: str, **overrides: object) -> ResolvedModel:
    """transformers' default config of ``model_type`` shrunk by ``overrides``, as a config.json would hold it."""
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, pad_token_id=0, **overrides).to_dict()
    config["model_type"] = model_type
    return ResolvedModel(f"tiny-{model_type}", "local", json.loads(json.dumps(config, default=str)))


MAMBA = tiny("mamba", hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4)
#: hidden · expand = heads · head_dim (64); chunks of 16 tokens, so lengths are compared modulo 16.
MAMBA2 = tiny(
    "mamba2", hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, expand=2, state_size=8, n_groups=1,
    chunk_size=16,
)  # fmt: skip
#: Layer 0 Mamba, layer 1 attention with a mixture of experts.
JAMBA = tiny(
    "jamba", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=4,
    num_experts_per_tok=2, mamba_d_state=8,
)  # fmt: skip
#: Two RG-LRU blocks and a local-attention block whose 24-token window the long lengths cross.
RECURRENT_GEMMA = tiny(
    "recurrent_gemma", hidden_size=32, lru_width=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=1, attention_window_size=24,
)  # fmt: skip


def measure(model: ResolvedModel, seq_len: int, attn: str = "sdpa", **kwargs: object) -> object:
    return profile_activations(model, batch_size=2, seq_len=seq_len, attn=attn, dtype="bfloat16", **kwargs)  # type: ignore[arg-type]


def counts(profile: object) -> list[int]:
    """Every byte count of a profile, per layer (saved, inputs, tensor-parallel split) and outside the layers."""
    return list(trace._profile_numbers(profile))  # type: ignore[arg-type]


@pytest.fixture
def traced_lengths(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The lengths of every training trace and prefill the test runs."""
    lengths: list[int] = []
    trace_at, prefill_at = trace._trace_at, serve._prefill_peak_at

    def traced(*args: object) -> object:
        lengths.append(args[6])  # type: ignore[arg-type]
        return trace_at(*args)  # type: ignore[arg-type]

    def prefill(torch_model: object, config: object, batch: int, tokens: int, extra: object) -> tuple[int, int]:
        lengths.append(tokens)
        return prefill_at(torch_model, config, batch, tokens, extra)  # type: ignore[arg-type]

    monkeypatch.setattr(trace, "_trace_at", traced)
    monkeypatch.setattr(serve, "_prefill_peak_at", prefill)
    yield lengths


@pytest.mark.parametrize(
    ("model", "attn", "lengths", "degree"),
    [
        (MAMBA, "sdpa", (20, 36, 52, 68), 1),
        (JAMBA, "sdpa", (20, 36, 52, 68), 1),
        (RECURRENT_GEMMA, "sdpa", (8, 20, 32, 44), 1),  # the window (24) between the lengths
        (JAMBA, "eager", (20, 36, 52, 68), 2),  # the score matrices: s² per head
        (MAMBA2, "sdpa", (36, 52, 68, 84), 2),  # ≡ 4 (mod 16); chunk-to-chunk states: (s/16)²
    ],
    ids=["mamba", "jamba", "recurrent_gemma", "jamba-eager", "mamba2"],
)
def test_saved_bytes_are_polynomials_in_the_length(
    model: ResolvedModel, attn: str, lengths: tuple[int, ...], degree: int
) -> None:
    # Equally spaced lengths: a polynomial of degree d has constant d-th differences, zero (d+1)-th ones.
    with full_length_traces():
        rows = [counts(measure(model, length, attn)) for length in lengths]
    columns = list(zip(*rows, strict=True))

    def differences(cols: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [tuple(b - a for a, b in zip(col, col[1:], strict=False)) for col in cols]

    highest = columns
    for _ in range(degree + 1):
        highest = differences(highest)
    assert all(set(col) == {0} for col in highest)
    if degree == 2:  # and not of degree 1: some count's first differences change
        assert any(len(set(col)) > 1 for col in differences(columns))


@pytest.mark.parametrize(
    ("model", "attn", "seq_len", "settings"),
    [
        (MAMBA, "sdpa", 200, {}),
        (MAMBA, "sdpa", 203, {"dropout": 0.1, "tensor_parallel": True}),
        (JAMBA, "sdpa", 200, {"tensor_parallel": True}),
        (JAMBA, "eager", 200, {}),
        (RECURRENT_GEMMA, "sdpa", 200, {}),
        (MAMBA2, "sdpa", 500, {}),
    ],
    ids=["mamba", "mamba-dropout-tp", "jamba-tp", "jamba-eager", "recurrent_gemma", "mamba2"],
)
def test_short_traces_give_the_long_one_byte_for_byte(
    model: ResolvedModel, attn: str, seq_len: int, settings: dict[str, object], traced_lengths: list[int]
) -> None:
    scaled = measure(model, seq_len, attn, **settings)
    assert traced_lengths and max(traced_lengths) < seq_len // 2  # only short traces ran
    traced_lengths.clear()
    with full_length_traces():
        full = measure(model, seq_len, attn, **settings)
    assert seq_len in traced_lengths
    assert scaled == full


@pytest.mark.parametrize(("model", "tokens"), [(MAMBA, 400), (JAMBA, 400)], ids=["mamba", "jamba"])
def test_prefill_peak_from_short_prefills(model: ResolvedModel, tokens: int, traced_lengths: list[int]) -> None:
    scaled = profile_inference(model, batch_size=2, prefill_tokens=tokens, dtype="bfloat16")
    assert max(traced_lengths) < tokens // 2
    with full_length_traces():
        full = profile_inference(model, batch_size=2, prefill_tokens=tokens, dtype="bfloat16")
    assert scaled == full


def test_sample_lengths_keep_the_chunk_remainder() -> None:
    config = build_transformers_config(MAMBA2)
    torch_model, _ = classes._instantiate(MAMBA2, config, trust_remote_code=False)
    assert trace._sequence_period(config, torch_model) == 16  # chunk_size
    # 500 = 31·16 + 4: the first length at least two chunks long with remainder 4, then 16 apart.
    # The set 4 times as long (36, 100, 164, 228) adds up to more than half of 500.
    assert trace._sample_lengths(500, config, torch_model) == ((36, 52, 68, 84),)
    assert trace._sample_lengths(400, config, torch_model) == ()  # 2·(32+48+64+80) > 400: trace it whole
    # 2,048 = 128·16: remainder 0; 4 times as long: from 4·32 = 128, 4·8 = 32 apart.
    assert trace._sample_lengths(2048, config, torch_model) == ((32, 48, 64, 80), (128, 160, 192, 224))
    with full_length_traces():
        assert trace._sample_lengths(500, config, torch_model) == ()


def test_attention_models_are_traced_at_full_length(traced_lengths: list[int]) -> None:
    llama = ResolvedModel("tiny-llama", "local", TINY_LLAMA)
    measure(llama, 300)
    assert traced_lengths == [300]


def test_gated_delta_rule_chunk_comes_from_the_code() -> None:
    # Qwen3-Next's config has no chunk size; `torch_chunk_gated_delta_rule(..., chunk_size: int = 64)` pads to 64.
    model = tiny(
        "qwen3_next", hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=8,
        linear_value_head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
    )  # fmt: skip
    config = build_transformers_config(model)
    torch_model, _ = classes._instantiate(model, config, trust_remote_code=False)
    assert trace._scans_tokens(config)
    assert trace._sequence_period(config, torch_model) == 64


def write_config(folder: Path, config: dict[str, object]) -> str:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_a_build_is_announced_once_on_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HFMEM_NO_SPINNER")
    model = write_config(tmp_path / "tiny", TINY_LLAMA)
    first = CliRunner().invoke(cli, [model, "--json"])
    assert first.exit_code == 0, first.output
    assert [line for line in first.stderr.splitlines() if "building" in line] == [
        f"hfmem: building {model} on the meta device and tracing it…"
    ]
    again = CliRunner().invoke(cli, [model, "--json"])  # every answer cached: nothing is built
    assert again.exit_code == 0 and "building" not in again.stderr
    assert again.stdout == first.stdout
    monkeypatch.setenv("HFMEM_NO_SPINNER", "1")
    quiet = CliRunner().invoke(cli, [model, "--json", "--no-cache"])
    assert quiet.exit_code == 0 and "building" not in quiet.stderr


def test_the_fit_is_exact_or_the_full_length_is_measured() -> None:
    calls: list[int] = []

    def poly(coefficients: tuple[int, ...], shape: object = ()) -> object:
        def measure(n: int) -> tuple[object, tuple[int, ...]]:
            calls.append(n)
            return (shape(n) if callable(shape) else shape), (sum(c * n**k for k, c in enumerate(coefficients)),)

        return measure

    samples = ((8, 16, 24, 32),)
    # 7 + 5s: two lengths fit it, the third checks it.
    assert trace._at_length(poly((7, 5)), 1000, samples) == (5_007,)  # type: ignore[arg-type]
    assert calls == [8, 16, 24]
    calls.clear()
    # 5 + 3s²: the line through 8 and 16 misses 24, the parabola through 8, 16, 24 meets 32.
    assert trace._at_length(poly((5, 0, 3)), 1000, samples) == (3_000_005,)  # type: ignore[arg-type]
    assert calls == [8, 16, 24, 32]
    calls.clear()
    # s³ fits neither: the full length is measured.
    assert trace._at_length(poly((0, 0, 0, 1)), 1000, samples) == (10**9,)  # type: ignore[arg-type]
    assert calls == [8, 16, 24, 32, 1000]
    calls.clear()
    # max(100, 6s), a peak a fixed-size tensor holds in short prefills: neither degree fits 8…32 (100, 100, 144,
    # 192), the set 4 times as long (192, 384, 576) is a line.
    sets = ((8, 16, 24, 32), (32, 64, 96, 128))
    assert trace._at_length(lambda n: (calls.append(n), ((), (max(100, 6 * n),)))[1], 1000, sets) == (6000,)
    assert calls == [8, 16, 24, 32, 64, 96]
    calls.clear()
    # A shape that changes with the length (another layer list): measured in full.
    assert trace._at_length(poly((7, 5), shape=lambda n: n > 10), 1000, samples) == (5_007,)  # type: ignore[arg-type]
    assert calls == [8, 16, 24, 1000]


def test_a_forward_that_fails_when_short_is_traced_at_full_length(monkeypatch: pytest.MonkeyPatch) -> None:
    trace_at = trace._trace_at

    def needs_100_tokens(*args: object) -> object:
        if args[6] < 100:  # type: ignore[operator]
            raise UnsupportedArchitectureError("too short")
        return trace_at(*args)  # type: ignore[arg-type]

    with full_length_traces():
        full = measure(MAMBA, 200)
    monkeypatch.setattr(trace, "_trace_at", needs_100_tokens)
    assert measure(MAMBA, 200) == full
