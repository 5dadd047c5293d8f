"""benchmarks/published.py: the rows it maps, how it compares like with like, and docs/published.md being current.

The two model configs beside published.json that are not in the catalogue are checked against parameter counts
computed here by hand from their shapes (and the published round figures: BERT-large "340M" in Google's BERT README,
which counts the pre-training heads too; StarCoder/octocoder "15.5B" in the StarCoder paper, arXiv:2305.06161).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hfmem.build.inventory import count_parameters
from hfmem.cli import cli
from hfmem.hub import resolve_model

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "published.py"


@pytest.fixture(scope="module")
def published():  # noqa: ANN201 — the benchmark script, imported as a module
    spec = importlib.util.spec_from_file_location("published", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["published"] = module  # dataclasses resolve their module's globals through sys.modules
    spec.loader.exec_module(module)
    return module


def test_every_published_row_has_exactly_one_mapping(published) -> None:  # type: ignore[no-untyped-def]
    rows = [row["id"] for row in published.load_rows()]
    mapped = [m.row_id for m in published.MAPPINGS]
    assert sorted(mapped) == sorted(rows)
    assert len(set(mapped)) == len(mapped)


def test_every_mapping_names_a_model_hfmem_can_find_offline_and_says_why_for_each_flag(published) -> None:  # type: ignore[no-untyped-def]
    from hfmem import catalogue

    for m in published.MAPPINGS:
        local = published.MEASUREMENTS / m.model
        assert (local / "config.json").is_file() or catalogue.find(m.model) is not None, m.model
        assert all(f.why for f in m.flags), m.row_id
        plans = {"--training-only", "--inference-only"} & {f.option for f in m.flags}
        assert len(plans) == 1, f"{m.row_id}: say which plan the measurement is of"


def test_like_with_like(published) -> None:  # type: ignore[no-untyped-def]
    # A plan as hfmem --json writes it: components, then the overhead lines inside "overhead".
    plan = {
        "per_gpu_bytes": {"weights": 1000, "gradients": 1000, "activations": 500, "overhead": 950, "total": 3450},
        "overheads": {"cuda_context": 600, "bnb_dequantized_weight": 100, "allocator_fragmentation": 250},
    }
    # nvidia-smi sees everything; the allocator's peaks see neither the context nor the slack, but do see the
    # dequantised weight (a tensor): 3450 − 600 − 250 = 2600 = 1000 + 1000 + 500 + 100.
    assert published.predicted_bytes(plan, "smi") == 3450
    assert published.predicted_bytes(plan, "oom") == 3450
    assert published.predicted_bytes(plan, "reserved") == 3450 - 600
    assert published.predicted_bytes(plan, "alloc") == 2600
    assert published.predicted_bytes(plan, "active") == 2600
    assert published.allocated_bytes(plan) == 1000 + 1000 + 500 + 100
    with pytest.raises(ValueError, match="unknown metric"):
        published.predicted_bytes(plan, "mystery")
    # bitsandbytes paged optimizer states live in CUDA managed memory: nvidia-smi sees them, the allocator does not.
    paged = {**plan, "paged_optimizer_states_bytes": 400}
    assert published.predicted_bytes(paged, "smi") == 3450
    assert published.predicted_bytes(paged, "reserved") == 3450 - 600 - 400
    assert published.predicted_bytes(paged, "active") == 2600 - 400


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--no-such-flag-for-this-test"], ("--no-such-flag-for-this-test", "--no-such-flag-for-this-test")),
        (["--attn", "quantum"], ("--attn", "--attn quantum")),
    ],
)
def test_a_flag_the_cli_does_not_know_is_recognised_from_clicks_own_message(published, argv, expected) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, ["gpt2", *argv])
    assert result.exit_code == 2
    assert published._rejected_flag(result.stderr) == expected


def test_a_rejected_flag_marks_the_row_and_every_other_missing_flag_is_found_too(published) -> None:  # type: ignore[no-untyped-def]
    # Two flags no CLI will have: the row is marked with both and never run (parsing fails before any build).
    F = published.Flag
    mapping = published.Mapping(
        "X1",
        "openai-community/gpt2",
        "test",
        "test",
        (F("--future-flag-one", None, "test"), F("--attn", "quantum", "test"), F("--training-only", None, "test")),
    )
    row = {"id": "X1", "metric": "alloc", "measured_mib": 1.0}
    result = published.run_row(mapping, row)
    assert result.needs == ("--future-flag-one", "--attn quantum")
    assert result.predicted_bytes is None and result.error_pct is None


def test_error_and_oom_verdict(published) -> None:  # type: ignore[no-untyped-def]
    mapping = published.MAPPINGS[0]
    over = published.Result(mapping, {"metric": "alloc", "measured_mib": 100.0}, predicted_bytes=110 * 1024**2)
    assert over.error_pct == pytest.approx(10.0)
    oom = published.Result(mapping, {"metric": "oom", "measured_mib": 81920}, predicted_bytes=81921 * 1024**2)
    assert oom.error_pct is None and oom.oom_ok is True


# BERT-large (24 layers, hidden 1024, FFN 4096, vocab 30522, 512 positions, 2 token types) with the 2-label
# classifier AutoModelForSequenceClassification adds, counted by hand:
_BERT_EMBEDDINGS = 30522 * 1024 + 512 * 1024 + 2 * 1024 + 2 * 1024  # word, position, token type, LayerNorm
_BERT_LAYER = 4 * (1024 * 1024 + 1024) + 2 * 1024 + (1024 * 4096 + 4096) + (4096 * 1024 + 1024) + 2 * 1024
_BERT_POOLER = 1024 * 1024 + 1024
_BERT_CLASSIFIER = 1024 * 2 + 2
BERT_LARGE_CLS2_PARAMS = _BERT_EMBEDDINGS + 24 * _BERT_LAYER + _BERT_POOLER + _BERT_CLASSIFIER  # 335,143,938

# GPTBigCode 15.5B (octocoder = StarCoder's shapes): 40 layers, hidden 6144, 48 heads of 128, multi-query (one K and
# one V head), FFN 24576, vocab 49152, 8192 learned positions, biases everywhere, LM head tied to the embedding.
_OCTO_LAYER = (
    (2 * 6144)  # ln_1
    + (6144 * (6144 + 2 * 128) + (6144 + 2 * 128))  # c_attn: Q for 48 heads, one K and one V head
    + (6144 * 6144 + 6144)  # attention c_proj
    + (2 * 6144)  # ln_2
    + (6144 * 24576 + 24576)  # mlp c_fc
    + (24576 * 6144 + 6144)  # mlp c_proj
)
OCTOCODER_PARAMS = 49152 * 6144 + 8192 * 6144 + 40 * _OCTO_LAYER + 2 * 6144  # 15,517,456,384


@pytest.mark.parametrize(
    ("folder", "by_hand", "published_round", "unit"),
    [
        ("google-bert__bert-large-uncased-cls2", BERT_LARGE_CLS2_PARAMS, 340, 1e6),  # "340M" (with MLM/NSP heads)
        ("bigcode__octocoder", OCTOCODER_PARAMS, 15.5, 1e9),
    ],
)
def test_config_beside_published_json_builds_the_model_measured(  # type: ignore[no-untyped-def]
    published, folder, by_hand, published_round, unit
) -> None:
    inventory = count_parameters(resolve_model(str(published.MEASUREMENTS / "configs" / folder)))
    assert inventory.total_params == by_hand
    assert abs(by_hand / unit - published_round) / published_round < 0.02


def test_published_json_is_the_shared_copy_with_its_metrics_known(published) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(published.PUBLISHED.read_text())
    assert {row["metric"] for row in data["rows"]} <= {"smi", "reserved", "alloc", "active", "oom"}


@pytest.mark.slow  # about two minutes: every row is built and traced
def test_docs_published_md_is_current(published) -> None:  # type: ignore[no-untyped-def]
    block = published.render(published.run_all())
    page = published.PAGE.read_text(encoding="utf-8")
    assert published.current_block(page) == block, (
        "docs/published.md is stale: run python benchmarks/published.py --write"
    )
