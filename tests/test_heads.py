"""Task heads (issue 13): the labels each head's loss takes, the head's own logits, --architecture, --target-len for
encoder-decoder models, and encoder-only models without a serving plan.

Numbers are by hand from the configs and transformers' modelling code (docs/techniques.md §6).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hfmem
from hfmem.cli import cli
from hfmem.errors import InvalidSetupError, NoKvCacheError
from hfmem.types import ActivationProfile, ParallelSettings, TrainingSetup

from .conftest import FIXTURES, TINY_LLAMA

BERT_LARGE = str(FIXTURES / "bert_large_uncased")
#: bert-large-uncased (config.json): hidden 1024, MLP 4096, 24 layers, vocabulary 30,522, 512 positions, 2 token types.
#: By hand, with BERT's biases and LayerNorms (transformers models/bert/modeling_bert.py):
_EMBEDDINGS = 30522 * 1024 + 512 * 1024 + 2 * 1024 + 2 * 1024  # word, position, token-type embeddings + LayerNorm
_LAYER = 4 * (1024 * 1024 + 1024) + 2 * 1024 + (1024 * 4096 + 4096) + (4096 * 1024 + 1024) + 2 * 1024
_POOLER = 1024 * 1024 + 1024
#: BertForSequenceClassification with the config default of 2 labels (PretrainedConfig.num_labels): Linear(1024, 2).
BERT_LARGE_CLS_PARAMS = _EMBEDDINGS + 24 * _LAYER + _POOLER + (1024 * 2 + 2)


def _write(folder: Path, config: dict[str, Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _profile(report: hfmem.Report) -> ActivationProfile:
    assert report.training is not None and report.training.unmeasured is None, report.training
    assert report.training.profile is not None
    return report.training.profile


# --- BERT-large classifier: the transformers docs' memory example ------------------------------------------------


@pytest.mark.parametrize("batch_size", [4, 8])
def test_bert_large_classifier_trains_and_its_logits_are_b_times_labels(batch_size: int) -> None:
    report = hfmem.estimate(
        BERT_LARGE,
        architecture="BertForSequenceClassification",
        setup=TrainingSetup(precision="fp32", batch_size=batch_size, seq_len=512, attn="eager", zero_stages=(0,)),
    )
    assert report.inventory.architecture == "BertForSequenceClassification"
    assert report.inventory.total_params == BERT_LARGE_CLS_PARAMS == 335_143_938
    profile = _profile(report)
    assert profile.head == "sequence-classification"
    # The head returns [b, num_labels] fp32 scores: b × 2 × 4 bytes, not b × s × V.
    assert profile.logits_shape == (batch_size, 2)
    assert profile.logits_bytes == batch_size * 2 * 4
    assert profile.logits_saved_bytes == 0  # nothing vocabulary-sized: the loss's [b, 2] tensors are activations
    (stage,) = report.training.stages  # type: ignore[union-attr]
    assert stage.logits_bytes == batch_size * 2 * 4
    assert stage.activations_bytes > 0
    assert any("one label per sequence" in note for note in report.training.notes)  # type: ignore[union-attr]
    assert any("--architecture" in note and "BertForMaskedLM" in note for note in report.notes)


def test_bert_large_classifier_cli_json_names_the_head(runner: CliRunner) -> None:
    result = runner.invoke(
        cli,
        [BERT_LARGE, "--architecture", "BertForSequenceClassification", "--seq-len", "128", "--batch-size", "4"]
        + ["--precision", "fp32", "--zero", "0", "--training-only", "--json"]
        + ["--optimizer-impl", "fused"]  # no step temporary: the row peaks at the loss, where the logits are,
        + ["--grad-accumulation", "4"],  # and the gradients stay live there
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["training"]["settings"]["head"] == "sequence-classification"
    assert data["training"]["settings"]["target_len"] is None
    assert data["training"]["stages"][0]["per_gpu_bytes"]["logits"] == 4 * 2 * 4


# --- every head gets the labels its loss takes ------------------------------------------------------------------

TINY_BERT: dict[str, Any] = {
    "model_type": "bert",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
}
_THREE = {"id2label": {"0": "a", "1": "b", "2": "c"}}
B, S = 3, 16


@pytest.mark.parametrize(
    ("extra", "head", "shape"),
    [
        # transformers BertForSequenceClassification: logits [b, num_labels]; int64 labels → single-label CE
        ({"architectures": ["BertForSequenceClassification"], **_THREE}, "sequence-classification", (B, 3)),
        # num_labels 1 → regression (MSELoss on float labels)
        ({"architectures": ["BertForSequenceClassification"], "num_labels": 1}, "sequence-classification", (B, 1)),
        # problem_type multi_label_classification → BCEWithLogitsLoss on float [b, num_labels] labels
        (
            {
                "architectures": ["BertForSequenceClassification"],
                "problem_type": "multi_label_classification",
                **_THREE,
            },
            "sequence-classification",
            (B, 3),
        ),
        # BertForTokenClassification: logits [b, s, num_labels], labels [b, s]
        ({"architectures": ["BertForTokenClassification"], **_THREE}, "token-classification", (B, S, 3)),
        # BertForQuestionAnswering: start and end logits, [b, s] each; start/end positions [b]
        ({"architectures": ["BertForQuestionAnswering"]}, "question-answering", (B, S, 2)),
        # BertForMultipleChoice: logits reshaped to [b, choices]; 4 choices per question (SWAG)
        ({"architectures": ["BertForMultipleChoice"]}, "multiple-choice", (B, 4)),
        # BertForMaskedLM: token labels, vocabulary-sized logits [b, s, V]
        ({"architectures": ["BertForMaskedLM"]}, "lm", (B, S, 1000)),
        # BertModel: no labels, no loss, no logits
        ({"architectures": ["BertModel"]}, "none", ()),
    ],
)
def test_each_head_is_traced_with_its_labels(tmp_path: Path, extra: dict[str, Any], head: str, shape: tuple) -> None:
    folder = _write(tmp_path / head, {**TINY_BERT, **extra})
    report = hfmem.estimate(folder, setup=TrainingSetup(precision="fp32", batch_size=B, seq_len=S, zero_stages=(0,)))
    profile = _profile(report)
    assert profile.head == head
    assert profile.logits_shape == shape
    assert profile.logits_bytes == (math.prod(shape) * 4 if shape else 0)
    # Only an LM head's log-softmax is vocabulary-sized: fp32 [b, s, V] (ForMaskedLMLoss upcasts).
    assert profile.logits_saved_bytes == (B * S * 1000 * 4 if head == "lm" else 0)


def test_multiple_choice_runs_four_sequences_per_question(tmp_path: Path) -> None:
    setup = TrainingSetup(precision="fp32", batch_size=B, seq_len=S, zero_stages=(0,))
    choice = _profile(
        hfmem.estimate(_write(tmp_path / "mc", {**TINY_BERT, "architectures": ["BertForMultipleChoice"]}), setup=setup)
    )
    single = _profile(
        hfmem.estimate(
            _write(tmp_path / "cls", {**TINY_BERT, "architectures": ["BertForSequenceClassification"]}), setup=setup
        )
    )
    # The encoder runs b × 4 rows: every layer saves 4 times what the classifier's does at batch b.
    assert [layer.saved_bytes for layer in choice.layers] == [4 * layer.saved_bytes for layer in single.layers]


# --- encoder-decoder: --target-len ------------------------------------------------------------------------------

T5_VOCAB = 32128  # google-t5/t5-small config.json vocab_size


def _t5(target_len: int | None) -> ActivationProfile:
    setup = TrainingSetup(batch_size=2, seq_len=256, target_len=target_len, zero_stages=(0,))  # bf16-mixed
    return _profile(hfmem.estimate("google-t5/t5-small", setup=setup))


def test_t5_decoder_follows_target_len_and_the_encoder_does_not() -> None:
    profiles = {t: _t5(t) for t in (32, 64, 96)}
    for t, profile in profiles.items():
        assert profile.head == "seq2seq-lm" and profile.target_len == t
        # lm_logits [b, t, V] in bf16; T5's CrossEntropyLoss does not upcast, so its log-softmax is bf16 too
        # (transformers 5.24 models/t5/modeling_t5.py; docs/techniques.md §6).
        assert profile.logits_shape == (2, t, T5_VOCAB)
        assert profile.logits_bytes == 2 * t * T5_VOCAB * 2
        assert profile.logits_saved_bytes == 2 * t * T5_VOCAB * 2

    def layers(part: str) -> list[tuple[str, int, int, int]]:
        """Per layer named ``part.*``: name, second and first difference of its saved bytes over t = 32, 64, 96,
        and its input bytes at those lengths."""
        rows = []
        for i, layer in enumerate(profiles[32].layers):
            if layer.name.startswith(part):
                saved = [profiles[t].layers[i].saved_bytes for t in (32, 64, 96)]
                inputs = [profiles[t].layers[i].input_bytes for t in (32, 64, 96)]
                rows.append((layer.name, saved[2] - 2 * saved[1] + saved[0], saved[1] - saved[0], inputs))
        return rows

    # The encoder runs --seq-len tokens whatever the decoder's length.
    for i, layer in enumerate(profiles[32].layers):
        if layer.name.startswith("encoder"):
            assert profiles[64].layers[i] == layer == profiles[96].layers[i]
    # The decoder's tensors are per decoder token (self-attention; cross-attention's queries, its [1, 8, t, s]
    # position bias) or per pair of decoder tokens. Second differences over t = 32, 64, 96 (step 32) are
    # 2 · 32² · (bytes per t² element): only T5's relative position bias is t × t (modeling_t5.py compute_bias):
    # block 0 saves the bucket indices [t, t] int64 (8 B; the bias embedding's lookup keeps them) and hands the
    # bias [1, heads = 8, t, t] in bf16 (16 B) to every later block (counted once, as block 1's input).
    step2 = 2 * 32 * 32
    for name, second, first, inputs in layers("decoder"):
        assert first > 0, name
        assert second == (8 * step2 if name == "decoder.block.0" else 0), name
        assert inputs[2] - 2 * inputs[1] + inputs[0] == (2 * 8 * step2 if name == "decoder.block.1" else 0), name


def test_t5_target_len_defaults_to_seq_len() -> None:
    assert _t5(None).target_len == 256


def test_target_len_is_refused_for_a_decoder_only_model(tmp_path: Path, runner: CliRunner) -> None:
    folder = _write(tmp_path / "llama", TINY_LLAMA)
    with pytest.raises(InvalidSetupError, match="--target-len .* LlamaForCausalLM has no separate decoder"):
        hfmem.estimate(folder, setup=TrainingSetup(seq_len=8, target_len=4))
    result = runner.invoke(cli, [folder, "--seq-len", "8", "--target-len", "4", "--training-only"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert "drop --target-len" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-len", "0"], "--target-len"),
        (["--architecture", "BertForNothing"], "has no class named 'BertForNothing'"),
    ],
)
def test_bad_head_options_are_one_line_usage_errors(runner: CliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(cli, ["google-bert/bert-base-uncased", "--seq-len", "8", "--training-only", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_architecture_with_params_is_refused(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--params", "7B", "--architecture", "BertForSequenceClassification"])
    assert result.exit_code == 2
    assert "--params has none" in result.stderr


# --- encoder-only: no KV cache, no serving plan --------------------------------------------------------------------


def test_encoder_only_default_plan_skips_serving_with_a_note(runner: CliRunner) -> None:
    args = ["google-bert/bert-base-uncased", "--seq-len", "16", "--zero", "0", "--json", "--optimizer-impl", "fused"]
    args += ["--grad-accumulation", "4"]  # gradients live at the loss: the row peaks in backward, with the activations
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["inference"] is None and data["inference_not_measured"] is None
    assert data["training"]["stages"][0]["per_gpu_bytes"]["activations"] > 0
    assert any("serving plan skipped" in note and "keeps no KV cache" in note for note in data["notes"])


def test_encoder_only_serving_alone_is_a_one_line_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["google-bert/bert-base-uncased", "--inference-only"])
    assert result.exit_code == 2
    assert "BertForMaskedLM keeps no KV cache" in result.stderr and "drop --inference-only" in result.stderr
    assert "Traceback" not in result.output
    with pytest.raises(NoKvCacheError):
        hfmem.estimate("google-bert/bert-base-uncased", training=False, inference=hfmem.InferenceSetup())


def test_tensor_parallel_keeps_a_classifier_head_whole(tmp_path: Path) -> None:
    # Only an LM head is vocab-parallel; a classifier's [b, 3] fp32 scores are on every TP rank whole.
    folder = _write(tmp_path / "cls", {**TINY_BERT, "architectures": ["BertForSequenceClassification"], **_THREE})
    setup = TrainingSetup(
        precision="fp32",
        batch_size=B,
        seq_len=S,
        zero_stages=(0,),
        gpus_per_node=2,
        parallel=ParallelSettings(tp=2),
        optimizer_impl="fused",  # no step temporary: the row peaks at the loss, where the logits are,
        grad_accumulation=4,  # and the gradients stay live there
    )
    report = hfmem.estimate(folder, setup=setup)
    (stage,) = report.training.stages  # type: ignore[union-attr]
    assert stage.logits_bytes == B * 3 * 4
