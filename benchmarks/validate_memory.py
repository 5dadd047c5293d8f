"""Check hfmem's memory predictions against measurements on small, randomly initialised real models.

Each model is a bundled catalogue config with fewer layers (2; 1 for Mixtral), written to a temporary folder that
both sides read: hfmem predicts from it, and this script builds the same transformers class from it on the CPU
(real tensors, ``model.train()``) and measures:

* **saved activations** — one forward with labels under ``torch.autograd.graph.saved_tensors_hooks``: every
  storage autograd keeps for backward is counted once (parameters and buffers excluded) and split into *logits*
  (last dimension = vocabulary size) and *activations* (the rest). Compared with
  ``activation_detail.saved_bytes`` and ``activation_detail.logits_saved_bytes``.
* **model states after one optimizer step** (ZeRO stage 0, one process) — bytes of the parameters, their
  ``.grad``, the fp32 master copies and the optimizer-state tensors. Compared with ``per_gpu_bytes``.

Kernel choices, so the CPU saves what a GPU would (the output repeats these notes):

* ``sdpa`` runs use dropout 0 on both sides. With dropout > 0, CPU SDPA falls back to the math kernel and saves
  the s×s attention matrix, which a GPU's fused kernel does not.
* Dropout runs through ``torch.native_dropout``, the fused kernel CUDA uses (it saves a 1-byte bool mask). CPU's
  own ``F.dropout`` multiplies by a noise tensor and saves it in the activation dtype.
* Full checkpointing is reentrant (``use_reentrant=True``): each checkpoint saves its inputs with
  ``ctx.save_for_backward``, which the outer hook sees. The one-layer recompute during backward is not measured.
* ``bf16-mixed`` follows the ZeRO/DeepSpeed convention: the model in bf16 (activations bf16), fp32 master copies
  given to ``torch.optim.AdamW``, gradients copied to the masters as fp32 before the step. ``fp32`` is plain AdamW
  on the fp32 model. AdamW's per-parameter ``step`` scalars are listed but not gated: hfmem, like the ZeRO paper,
  counts only the per-element states.

Exit status 1 when an activation or logits prediction is off by more than ±5 % or a model-state component is not
exact, so the script can gate a change. ``--cuda`` additionally runs one real training step per setting on a GPU
and compares ``torch.cuda.max_memory_allocated()`` with ``per_gpu_bytes.total`` (informational, not gated).

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/validate_memory.py [--quick] [--models ID ...] [--markdown docs/validation.md]
                                                          [--measure-only] [--cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import platform
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

import hfmem
from hfmem import catalogue
from hfmem.report import to_dict

ACTIVATION_TOLERANCE_PCT = 5.0
#: Config keys holding a layer count; every one present is cut down (``num_decoder_layers`` is T5's decoder).
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers")
#: TrainingSetup fields this script needs; they arrived with hfmem's activation model.
ACTIVATION_FIELDS = ("batch_size", "seq_len", "attn", "grad_checkpointing", "dropout")
SEED = 0


@dataclass(frozen=True)
class Case:
    """One model to validate: a catalogue id, the layers kept, and which precisions run."""

    model_id: str
    layers: int = 2
    precisions: tuple[str, ...] = ("fp32", "bf16-mixed")
    #: Measure model states too (needs weights + gradients + masters + Adam in RAM at once).
    states: bool = True
    #: Also check Adafactor's factored states on the fp32 model.
    adafactor: bool = False
    note: str = ""


CASES = (
    Case("meta-llama/Llama-3.2-1B"),
    Case("mistralai/Mistral-7B-v0.1"),
    Case("Qwen/Qwen2.5-0.5B-Instruct"),
    Case("google/gemma-2b"),
    Case("openai-community/gpt2", adafactor=True),
    Case("google-bert/bert-base-uncased"),
    Case("google-t5/t5-base"),
    # NOTE: one Mixtral layer is 1.4B parameters (8 experts × 3 × 4096 × 14336): with embeddings 1.7B. A bf16
    # forward fits in 24 GiB of RAM; one AdamW step does not (bf16 weights + grads, fp32 masters + their grads +
    # two Adam states = 30 GiB), so Mixtral checks activations only, in bf16.
    Case(
        "mistralai/Mixtral-8x7B-v0.1",
        layers=1,
        precisions=("bf16-mixed",),
        states=False,
        note="1 layer, bf16-mixed only, activations only (an optimizer step needs ~30 GiB of RAM)",
    ),
)
QUICK_MODELS = ("openai-community/gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "google-t5/t5-base")

FULL_MATRIX = {"shapes": ((1, 128), (2, 256)), "attns": ("sdpa", "eager"), "checkpointing": ("none", "full")}
QUICK_MATRIX = {"shapes": ((1, 128),), "attns": ("sdpa", "eager"), "checkpointing": ("none", "full")}
QUICK_PRECISIONS = ("bf16-mixed",)


@dataclass(frozen=True)
class Setting:
    """One activation measurement: precision, micro-batch, attention kernel, checkpointing and dropout.

    ``dropout`` is what both sides use: 0.0 (every dropout off) or None (the config's probabilities).
    """

    precision: str
    batch_size: int
    seq_len: int
    attn: str
    grad_checkpointing: str
    dropout: float | None

    def label(self) -> str:
        dropout = "config dropout" if self.dropout is None else f"dropout {self.dropout:g}"
        return (
            f"{self.precision} b={self.batch_size} s={self.seq_len} {self.attn} "
            f"ckpt={self.grad_checkpointing} {dropout}"
        )


@dataclass
class Row:
    """One line of the result table. ``predicted`` is None with ``--measure-only`` or for unmodelled items."""

    model_id: str
    setting: str
    component: str
    measured: int
    predicted: int | None = None
    #: "activation" rows pass within ±5 %, "state" rows only when exact, "info" rows never fail.
    kind: str = "activation"

    @property
    def error_pct(self) -> float | None:
        if self.predicted is None:
            return None
        if self.measured == 0:
            return 0.0 if self.predicted == 0 else float("inf")
        return 100.0 * (self.predicted - self.measured) / self.measured

    @property
    def passed(self) -> bool:
        if self.predicted is None or self.kind == "info":
            return True
        if self.kind == "state":
            return self.predicted == self.measured
        error = self.error_pct
        return error is not None and abs(error) <= ACTIVATION_TOLERANCE_PCT


# ---------------------------------------------------------------------------------------------------------------
# The model under test: a reduced catalogue config, built for real on the CPU


def write_reduced_config(model_id: str, layers: int, root: Path) -> Path:
    """Copy the catalogue config of ``model_id`` into ``root/<org>__<name>/`` with ``layers`` layers.

    Every layer-count key present is set to ``layers`` and a ``layer_types`` list is truncated to match, so
    hfmem and the measured model read the very same file.
    """
    found = catalogue.find(model_id)
    if found is None:
        raise SystemExit(f"'{model_id}' is not in hfmem's catalogue (hfmem --list-catalogue)")
    config = found[0].load_config()
    for key in LAYER_KEYS:
        if key in config:
            config[key] = layers
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = config["layer_types"][:layers]
    folder = root / model_id.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def build_model(folder: Path, dtype: torch.dtype, device: str = "cpu") -> nn.Module:
    """Randomly initialise the class named in ``architectures`` (the class hfmem builds), in training mode."""
    config = transformers.AutoConfig.from_pretrained(folder)
    # NOTE: `use_cache` stays as the config says, as in a Trainer run: in train mode HF still builds a DynamicCache
    # (unless checkpointing), whose torch.cat copies of k and v are what attention then saves. For a fused QKV
    # projection (GPT-2's c_attn) that is 2 extra [b, heads, s, head_dim] tensors per layer over use_cache=False.
    cls = getattr(transformers, config.architectures[0])
    torch.manual_seed(SEED)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.train()


def vocab_size(model: nn.Module) -> int:
    return int(model.config.get_text_config().vocab_size)


def make_inputs(model: nn.Module, batch_size: int, seq_len: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random token ids used as inputs and labels (T5 gets decoder inputs of the same length)."""
    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab_size(model), (batch_size, seq_len), generator=generator).to(device)
    inputs = {"input_ids": ids, "labels": ids}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids
    return inputs


class DropoutSwitch:
    """Sets every dropout probability of a model to 0, or back to what the config gave.

    Covers ``nn.Dropout`` modules and the float attributes attention modules keep (``attention_dropout``,
    T5's ``dropout``), which HF passes to the attention function.
    """

    def __init__(self, model: nn.Module) -> None:
        self.original: list[tuple[Any, str, float]] = []
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                self.original.append((module, "p", module.p))
            for name, value in vars(module).items():
                if "dropout" in name and isinstance(value, float):
                    self.original.append((module, name, value))

    def set(self, zero: bool) -> None:
        for owner, name, value in self.original:
            setattr(owner, name, 0.0 if zero else value)


@contextlib.contextmanager
def fused_dropout_kernel() -> Iterator[None]:
    """Route ``F.dropout`` through ``torch.native_dropout`` (CUDA's kernel: it saves a bool mask).

    On the CPU, ``F.dropout`` computes ``input * noise`` and autograd saves ``noise`` in the activation dtype
    (2-4 bytes per element) where a GPU saves 1. nn.Dropout and HF's attention code call ``F.dropout`` through
    the module attribute, so replacing it here reaches them all.
    """
    cpu_dropout = nn.functional.dropout

    def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if training and 0.0 < p < 1.0:
            return torch.native_dropout(input, p, True)[0]
        return cpu_dropout(input, p, training, inplace)

    nn.functional.dropout = dropout
    try:
        yield
    finally:
        nn.functional.dropout = cpu_dropout


def configure(model: nn.Module, dropouts: DropoutSwitch, setting: Setting) -> None:
    """Attention kernel, dropout and checkpointing of ``model`` as ``setting`` asks."""
    model.set_attn_implementation(setting.attn)
    if model.config._attn_implementation != setting.attn:
        raise SystemExit(f"{type(model).__name__} did not switch to attn_implementation='{setting.attn}'")
    dropouts.set(zero=setting.dropout == 0.0)
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_* (the old names still warn).
    if setting.grad_checkpointing == "full":
        kwargs = {"use_reentrant": True}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(model, "activation_checkpointing_disable"):
        if model.is_activation_checkpointing:
            model.activation_checkpointing_disable()
    elif model.is_gradient_checkpointing:
        model.gradient_checkpointing_disable()


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def measure_saved(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Bytes autograd holds for backward after one forward: ``(activations, logits)``.

    Each saved tensor's storage is counted once, and only if still alive when the forward ends (a storage whose
    graph was dropped mid-forward can hand its address to a new one). Parameters and buffers are model state,
    not activations, so their storages (and views of them, such as a transposed weight) are skipped.
    """
    state_ptrs = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    vocab = vocab_size(model)
    seen: dict[int, list[tuple[weakref.ref[torch.Tensor], int, bool]]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in state_ptrs:
            is_logits = tensor.dim() > 0 and tensor.shape[-1] == vocab
            seen.setdefault(ptr, []).append((weakref.ref(tensor), storage.nbytes(), is_logits))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(**inputs)
    activations = logits = 0
    for entries in seen.values():
        alive = [(nbytes, is_logits) for ref, nbytes, is_logits in entries if ref() is not None]
        if alive:
            nbytes = max(n for n, _ in alive)
            if any(is_logits for _, is_logits in alive):
                logits += nbytes
            else:
                activations += nbytes
    del output
    return activations, logits


def tensor_bytes(tensors: Any) -> int:
    """Bytes of distinct tensors (by identity: tied parameters appear once in ``model.parameters()``)."""
    unique = {id(t): t for t in tensors if t is not None}
    return sum(t.numel() * t.element_size() for t in unique.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """``(per-element states, scalar step counters)`` held in ``optimizer.state``, each storage once."""
    storages: dict[int, tuple[int, bool]] = {}
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                storages[storage.data_ptr()] = (storage.nbytes(), value.dim() == 0)
    per_element = sum(n for n, scalar in storages.values() if not scalar)
    scalars = sum(n for n, scalar in storages.values() if scalar)
    return per_element, scalars


def measure_states(
    model: nn.Module, precision: str, optimizer_name: str, inputs: dict[str, torch.Tensor]
) -> dict[str, int]:
    """Model states after one forward, backward and optimizer step at ZeRO stage 0 on one process.

    ``bf16-mixed``: the (bf16) model computes; fp32 master copies carry the optimizer; the bf16 gradients are
    copied to the masters as fp32 before the step and the updated masters back into the model (ZeRO's mixed
    precision, Rajbhandari et al. 2020 §3.1). ``fp32``: the optimizer works on the model's own parameters.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    mixed = precision == "bf16-mixed"
    masters = [p.detach().float().requires_grad_(True) for p in params] if mixed else params
    if optimizer_name == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(masters, lr=1e-3)
    elif optimizer_name == "adafactor":
        optimizer = transformers.optimization.Adafactor(masters, lr=1e-3, scale_parameter=False, relative_step=False)
    else:
        raise ValueError(optimizer_name)

    model.zero_grad(set_to_none=True)
    model(**inputs).loss.backward()
    measured = {
        "weights": tensor_bytes(model.parameters()),
        "master_weights": tensor_bytes(masters) if mixed else 0,
        "gradients": tensor_bytes(p.grad for p in model.parameters()),
    }
    if mixed:
        for param, master in zip(params, masters, strict=True):
            master.grad = param.grad.float()
            param.grad = None  # the model's copy is no longer needed: keeps peak RAM down
    optimizer.step()
    if mixed:
        with torch.no_grad():
            for param, master in zip(params, masters, strict=True):
                param.copy_(master)
    measured["optimizer_states"], measured["step_counters"] = optimizer_state_bytes(optimizer)
    model.zero_grad(set_to_none=True)
    return measured


# ---------------------------------------------------------------------------------------------------------------
# Predictions


def require_activation_fields() -> None:
    """Stop with a clear message when the installed hfmem predates its activation model."""
    fields = {f.name for f in dataclasses.fields(hfmem.TrainingSetup)}
    missing = [name for name in ACTIVATION_FIELDS if name not in fields]
    if missing:
        raise SystemExit(
            f"hfmem {hfmem.__version__}: TrainingSetup has no {', '.join(missing)}; this script validates hfmem's "
            "activation memory model, which this checkout does not have yet (run with --measure-only to see the "
            "measurements alone)"
        )


def predict(folder: Path, setting: Setting, optimizer: str = "adamw") -> dict[str, Any]:
    """hfmem's ZeRO-0 stage document for ``folder`` under ``setting``."""
    setup = hfmem.TrainingSetup(
        precision=setting.precision,
        optimizer=optimizer,
        zero_stages=(0,),
        batch_size=setting.batch_size,
        seq_len=setting.seq_len,
        attn=setting.attn,
        grad_checkpointing=setting.grad_checkpointing,
        dropout=setting.dropout,
    )
    stage: dict[str, Any] = to_dict(hfmem.estimate(str(folder), setup=setup))["training"]["stages"][0]
    if "activation_detail" not in stage:
        raise SystemExit("hfmem's JSON has no training.stages[].activation_detail; update hfmem (see --measure-only)")
    return stage


# ---------------------------------------------------------------------------------------------------------------
# Driver


def settings_for(case: Case, precision: str, matrix: dict[str, Any], *, cpu: bool = True) -> list[Setting]:
    """The activation matrix of one precision. On the CPU ``sdpa`` runs without dropout (module docstring)."""
    return [
        Setting(precision, b, s, attn, ckpt, dropout=0.0 if cpu and attn == "sdpa" else None)
        for b, s in matrix["shapes"]
        for attn in matrix["attns"]
        for ckpt in matrix["checkpointing"]
    ]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def validate_case(case: Case, folder: Path, args: argparse.Namespace, matrix: dict[str, Any]) -> list[Row]:
    """Every measurement and prediction for one model, on the CPU."""
    rows: list[Row] = []
    precisions = [p for p in case.precisions if p in args.precisions]
    if not precisions:
        return rows
    # Build once in the first precision; fp32 runs first, then the same weights are cast to bf16.
    model = build_model(folder, torch.float32 if precisions[0] == "fp32" else torch.bfloat16)
    dropouts = DropoutSwitch(model)
    for precision in precisions:
        model.to(torch.float32 if precision == "fp32" else torch.bfloat16)
        for setting in settings_for(case, precision, matrix):
            configure(model, dropouts, setting)
            start = time.perf_counter()
            activations, logits = measure_saved(model, make_inputs(model, setting.batch_size, setting.seq_len))
            stage = None if args.measure_only else predict(folder, setting)
            detail = stage["activation_detail"] if stage else {}
            rows.append(Row(case.model_id, setting.label(), "activations", activations, detail.get("saved_bytes")))
            rows.append(Row(case.model_id, setting.label(), "logits", logits, detail.get("logits_saved_bytes")))
            log(
                f"  {setting.label()}: activations {activations:,} B, logits {logits:,} B "
                f"({time.perf_counter() - start:.1f} s)"
            )
            gc.collect()
        if case.states and not args.no_states:
            optimizers = ["adamw"] + (["adafactor"] if case.adafactor and precision == "fp32" else [])
            for optimizer in optimizers:
                rows += states_rows(case, folder, model, dropouts, precision, optimizer, args.measure_only)
    del model
    gc.collect()
    return rows


def states_rows(
    case: Case,
    folder: Path,
    model: nn.Module,
    dropouts: DropoutSwitch,
    precision: str,
    optimizer: str,
    measure_only: bool,
) -> list[Row]:
    """Measure and predict the model states of one precision × optimizer (they do not depend on the batch)."""
    setting = Setting(precision, 1, 128, "sdpa", "none", dropout=0.0)
    configure(model, dropouts, setting)
    start = time.perf_counter()
    measured = measure_states(model, precision, optimizer, make_inputs(model, 1, 128))
    gc.collect()
    predicted = None if measure_only else predict(folder, setting, optimizer)["per_gpu_bytes"]
    label = f"{precision} {optimizer} (ZeRO 0, 1 process)"
    log(f"  {label}: {measured} ({time.perf_counter() - start:.1f} s)")
    rows = [
        Row(case.model_id, label, name, measured[name], predicted[name] if predicted else None, kind="state")
        for name in ("weights", "master_weights", "gradients", "optimizer_states")
    ]
    if measured["step_counters"]:
        rows.append(
            Row(case.model_id, label, "optimizer step counters (not modelled)", measured["step_counters"], kind="info")
        )
    return rows


def cuda_rows(case: Case, folder: Path, args: argparse.Namespace, matrix: dict[str, Any]) -> list[Row]:
    """Peak GPU memory of one real training step per setting vs ``per_gpu_bytes.total`` (informational).

    The step is the one `measure_states` takes (bf16-mixed: bf16 model + fp32 masters; fp32: plain AdamW), on a
    freshly built model, with the GPU's own kernels and the config's dropout on both sides. The peak also holds
    what hfmem's total leaves out by design (the masters' fp32 gradients in this emulation, the optimizer's
    temporaries), hence not gated.
    """
    rows: list[Row] = []
    for precision in (p for p in case.precisions if p in args.precisions):
        for setting in settings_for(case, precision, matrix, cpu=False):
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
            model = build_model(folder, torch.float32 if precision == "fp32" else torch.bfloat16, device="cuda")
            configure(model, DropoutSwitch(model), setting)
            inputs = make_inputs(model, setting.batch_size, setting.seq_len, device="cuda")
            measure_states(model, precision, "adamw", inputs)
            peak = torch.cuda.max_memory_allocated() - baseline
            del model, inputs
            predicted = None if args.measure_only else predict(folder, setting)["per_gpu_bytes"]["total"]
            label = f"{setting.label()} (GPU step)"
            rows.append(Row(case.model_id, label, "peak allocated vs predicted total", peak, predicted, kind="info"))
            log(f"  {label}: peak {peak:,} B")
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Output


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def render_markdown(rows: list[Row], cases: list[Case], elapsed_s: float, args: argparse.Namespace) -> str:
    device = f"{cpu_name()}, {torch.get_num_threads()} threads"
    if args.cuda:
        device += f"; GPU {torch.cuda.get_device_name()}"
    lines = [
        "# hfmem memory validation",
        "",
        "Generated by `benchmarks/validate_memory.py"
        + (" --quick" if args.quick else "")
        + "`: hfmem's predictions against measurements on small, randomly initialised real models.",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Device: {device}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, hfmem {hfmem.__version__}, "
        f"Python {platform.python_version()}",
        f"- Run time: {elapsed_s / 60:.1f} min",
        "- Models: catalogue configs with fewer layers ("
        + "; ".join(f"{c.model_id}: {c.layers}" + (f", {c.note}" if c.note else "") for c in cases)
        + ").",
        "- Activations: one forward with labels, storages autograd saves for backward, each once, parameters and "
        "buffers excluded; *logits* = saved tensors whose last dimension is the vocabulary. Gate: ±"
        f"{ACTIVATION_TOLERANCE_PCT:g} %.",
        "- `sdpa` runs use dropout 0 on both sides (CPU SDPA with dropout falls back to the math kernel and saves "
        "the s×s matrix, which a GPU's fused kernel does not); `eager` runs keep the config's dropout. Dropout runs "
        "through `torch.native_dropout` (CUDA's fused kernel, a 1-byte mask) instead of CPU `F.dropout`.",
        "- Full checkpointing: reentrant; what the checkpoints save during forward is measured, the one-layer "
        "recompute during backward is not.",
        "- Model states: one step at ZeRO 0 on one process (bf16-mixed: bf16 model, fp32 masters in AdamW; fp32: "
        "plain AdamW). Gate: exact. AdamW's scalar `step` tensors are listed but not modelled.",
        "",
        "| model | setting | component | predicted bytes | measured bytes | error |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        predicted = "—" if row.predicted is None else f"{row.predicted:,}"
        error = row.error_pct
        error_text = "—" if error is None else f"{error:+.2f} %"
        if not row.passed:
            error_text = f"**{error_text}** ✗"
        lines.append(
            f"| {row.model_id} | {row.setting} | {row.component} | {predicted} | {row.measured:,} | {error_text} |"
        )
    failed = [r for r in rows if not r.passed]
    checked = [r for r in rows if r.predicted is not None and r.kind != "info"]
    lines += [
        "",
        f"{len(checked) - len(failed)} of {len(checked)} checked rows pass."
        if checked
        else "Measurements only (--measure-only): nothing checked.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help=f"small slice: {', '.join(QUICK_MODELS)}; bf16-mixed; b=1 s=128"
    )
    parser.add_argument("--models", nargs="+", metavar="ID", help="catalogue ids to run (default: all)")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16-mixed"), help="default: both")
    parser.add_argument("--no-states", action="store_true", help="skip the model-state (optimizer step) checks")
    parser.add_argument("--measure-only", action="store_true", help="measure without asking hfmem (no gate)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the table here")
    parser.add_argument(
        "--cuda",
        action="store_true",
        help="also run one real step per setting on the GPU and compare peak allocated memory",
    )
    args = parser.parse_args(argv)
    if args.precisions is None:
        args.precisions = QUICK_PRECISIONS if args.quick else ("fp32", "bf16-mixed")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()  # e.g. "loss_type=None ... using the default loss"
    if not args.measure_only:
        require_activation_fields()
    if args.cuda and not torch.cuda.is_available():
        raise SystemExit("--cuda: torch.cuda.is_available() is False on this machine")
    wanted = args.models or (QUICK_MODELS if args.quick else [c.model_id for c in CASES])
    cases = [c for c in CASES if c.model_id in wanted]
    unknown = set(wanted) - {c.model_id for c in cases}
    if unknown:
        raise SystemExit(f"not in this script's model list: {', '.join(sorted(unknown))}")
    matrix = QUICK_MATRIX if args.quick else FULL_MATRIX

    start = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="hfmem-validate-") as tmp, fused_dropout_kernel():
        for case in cases:
            log(f"{case.model_id} ({case.layers} layer{'s' if case.layers > 1 else ''})")
            folder = write_reduced_config(case.model_id, case.layers, Path(tmp))
            rows += validate_case(case, folder, args, matrix)
            if args.cuda:
                rows += cuda_rows(case, folder, args, matrix)
    text = render_markdown(rows, cases, time.perf_counter() - start, args)
    print(text, end="")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
