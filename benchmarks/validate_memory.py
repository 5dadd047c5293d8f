"""Check hfmem's memory predictions against measurements on small, randomly initialised real models.

Each model is a bundled catalogue config with fewer layers (2; 1 for Mixtral), written to a temporary folder that
both sides read: hfmem predicts from it, and this script builds the same transformers class from it on the CPU
(real tensors, ``model.train()``) and measures:

* **saved activations**: one forward with labels under ``torch.autograd.graph.saved_tensors_hooks``. Every
  storage autograd keeps for backward is counted once (parameters and buffers excluded) and split into *logits*
  (last dimension = vocabulary size) and *activations* (the rest). Compared with
  ``activation_detail.saved_bytes`` and ``activation_detail.logits_saved_bytes``.
* **model states after one optimizer step** (ZeRO stage 0, one process): bytes of the parameters, their
  ``.grad``, the fp32 master copies and the optimizer-state tensors. Compared with ``per_gpu_bytes``.

The two sides never share a process: the measurements run first, then one child process asks hfmem for every
prediction, so nothing hfmem patches while tracing can leak into what is measured.

What the CPU run does so that it saves what a GPU would (the output repeats these notes):

* ``sdpa`` runs use dropout 0 on both sides. With dropout > 0, CPU SDPA falls back to the math kernel and saves
  the s×s attention matrix, which a GPU's fused kernel does not. Every SDPA call's kernel is checked: a run where
  the CPU still took the math kernel (T5: its relative position bias needs a gradient, which only the math kernel
  gives on a CPU; a GPU uses the memory-efficient kernel) is shown but not gated.
* Dropout runs through ``torch.native_dropout``, the fused kernel CUDA uses (it saves a 1-byte bool mask). CPU's
  own ``F.dropout`` multiplies by a noise tensor and saves it in the activation dtype.
* Full checkpointing is reentrant (``use_reentrant=True``): each checkpoint saves its positional inputs with
  ``ctx.save_for_backward``, which the outer hook sees, and keeps its keyword tensors (attention mask, rotary
  tables) in the function it will replay, which this script also counts. The one-layer recompute during backward
  is not measured.
* ``use_cache`` stays as the config says, as in a plain Trainer run.
* ``bf16-mixed`` follows the ZeRO/DeepSpeed convention: the model in bf16 (activations bf16), fp32 master copies
  given to ``torch.optim.AdamW``, gradients copied to the masters as fp32 before the step. ``fp32`` is plain AdamW
  on the fp32 model; one Adafactor step checks the factored states. The optimizers' 0-d scalars (AdamW's
  ``step``, Adafactor's ``RMS``) are listed but not gated: hfmem, like the ZeRO paper, counts per-element states.

Exit status 1 when an activation or logits prediction is off by more than ±5 % or a model-state component is not
exact, so the script can gate a change. ``--cuda`` additionally runs a real steady-state training step per setting
on a GPU and compares ``torch.cuda.max_memory_allocated()`` / ``max_memory_reserved()`` with ``per_gpu_bytes``
(informational, not gated; ``--cuda-only`` skips the CPU part, ``--cuda-layers 0`` keeps the config's layer count,
``--cuda-shapes 4x1024`` sets the GPU micro-batches, ``--cuda-json`` writes every detail).

``--step [ARG ...]`` runs ``benchmarks/validate_step.py`` instead: one whole training step (forward, backward,
optimizer step) on the CPU per memory technique of issue 13, its peak live tensor bytes per phase beside hfmem's
allocated peak (``benchmarks/results/step_cpu.md``).

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/validate_memory.py [--quick] [--models ID ...]
                                                          [--markdown benchmarks/results/memory_cpu.md]
                                                          [--precisions fp32 bf16-mixed] [--measure-only] [--cuda]
                                                          [--cuda-only] [--cuda-layers N] [--cuda-shapes BxS ...]
                                                          [--cuda-json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

import hfmem
from hfmem import catalogue
from hfmem.build.trace import cuda_style_dropout

ACTIVATION_TOLERANCE_PCT = 5.0
#: Config keys holding a layer count; every one present is cut down (``num_decoder_layers`` is T5's decoder).
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers")
#: TrainingSetup fields this script needs; they arrived with hfmem's activation model.
ACTIVATION_FIELDS = ("batch_size", "seq_len", "attn", "grad_checkpointing", "dropout")
#: Autograd node names of SDPA's fused kernels (CPU flash, CUDA flash / memory-efficient / cuDNN).
FUSED_SDPA_NODES = ("FlashAttention", "EfficientAttention", "CudnnAttention")
SEED = 0
#: Where hfmem's JSON puts what this script compares (in ``training.stages[0]``).
ACTIVATIONS_KEY = ("activation_detail", "saved_bytes")
LOGITS_KEY = ("activation_detail", "logits_saved_bytes")
TOTAL_KEY = ("per_gpu_bytes", "total")


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
    # NOTE: one Mixtral layer is 1.4B parameters (8 experts × 3 × 4096 × 14336), 1.7B with the embeddings. A bf16
    # forward fits in 24 GiB of RAM; one AdamW step does not (bf16 weights + grads, fp32 masters + their grads +
    # two Adam states = 30 GiB), so Mixtral checks activations only, in bf16.
    Case(
        "mistralai/Mixtral-8x7B-v0.1",
        layers=1,
        precisions=("bf16-mixed",),
        states=False,
        note="bf16-mixed only, activations only (an optimizer step needs ~30 GiB of RAM)",
    ),
)
QUICK_MODELS = ("openai-community/gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "google-t5/t5-base")

FULL_MATRIX = {"shapes": ((1, 128), (2, 256)), "attns": ("sdpa", "eager"), "checkpointing": ("none", "full")}
QUICK_MATRIX = {"shapes": ((1, 128),), "attns": ("sdpa", "eager"), "checkpointing": ("none", "full")}
QUICK_PRECISIONS = ("bf16-mixed",)


@dataclass(frozen=True)
class Setting:
    """One training configuration both sides see.

    ``dropout`` is 0.0 (every dropout off) or None (the config's probabilities).
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


def states_setting(precision: str) -> Setting:
    """The setting the model-state step runs under (states do not depend on the micro-batch)."""
    return Setting(precision, 1, 128, "sdpa", "none", dropout=0.0)


@dataclass(frozen=True)
class Request:
    """One hfmem prediction: the reduced config folder, the setting and the optimizer."""

    folder: str
    setting: Setting
    optimizer: str = "adamw"


def stage_value(*path: str) -> Callable[[dict[str, Any]], int]:
    """Reads ``path`` from hfmem's ZeRO-0 stage dict: ``stage_value("per_gpu_bytes", "weights")``."""

    def read(stage: dict[str, Any]) -> int:
        value: Any = stage
        for part in path:
            value = value[part]
        return int(value)

    return read


@dataclass
class Row:
    """One line of the result table; ``predicted`` is ``extract`` of hfmem's stage dict for ``request``."""

    model_id: str
    setting: str
    component: str
    measured: int
    #: "activation" rows pass within ±5 %, "state" rows only when exact, "info" rows never fail.
    kind: str
    request: Request | None = None
    extract: Callable[[dict[str, Any]], int] | None = None
    predicted: int | None = None

    @property
    def error_pct(self) -> float | None:
        if self.predicted is None:
            return None
        if self.measured == 0:
            return 0.0 if self.predicted == 0 else float("inf")
        return 100.0 * (self.predicted - self.measured) / self.measured

    @property
    def checked(self) -> bool:
        return self.predicted is not None and self.kind != "info"

    @property
    def passed(self) -> bool:
        if not self.checked:
            return True
        if self.kind == "state":
            return self.predicted == self.measured
        error = self.error_pct
        return error is not None and abs(error) <= ACTIVATION_TOLERANCE_PCT


# ---------------------------------------------------------------------------------------------------------------
# The model under test: a reduced catalogue config, built for real


def write_reduced_config(model_id: str, layers: int, root: Path) -> Path:
    """Copy the catalogue config of ``model_id`` into ``root/<org>__<name>/`` with ``layers`` layers.

    Every layer-count key present is set to ``layers`` (0 keeps the config's own count) and a ``layer_types`` list
    is truncated to match, so hfmem and the measured model read the very same file.
    """
    found = catalogue.find(model_id)
    if found is None:
        raise SystemExit(f"'{model_id}' is not in hfmem's catalogue (hfmem --list-catalogue)")
    config = found[0].load_config()
    for key in LAYER_KEYS:
        if key in config and layers > 0:
            config[key] = layers
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = config["layer_types"][:layers]
    folder = root / model_id.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def build_model(folder: Path, dtype: torch.dtype, device: str = "cpu") -> nn.Module:
    """Randomly initialise the class named in ``architectures`` (the class hfmem builds), in training mode.

    ``use_cache`` stays as the config says: in train mode HF still builds a DynamicCache (unless checkpointing),
    and attention then saves the cache's ``torch.cat`` copies of k and v rather than views of the projection.
    """
    config = transformers.AutoConfig.from_pretrained(folder)
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
# Kernel adjustments, installed for the whole run and undone on exit


# Dropout goes through `hfmem.build.trace.cuda_style_dropout` on both sides: off CUDA, F.dropout saves its noise in
# the activation dtype; CUDA's fused kernel (torch.native_dropout) saves a 1-byte mask, which is what a GPU keeps.


@contextlib.contextmanager
def sdpa_kernel_log(kernels: list[str]) -> Iterator[None]:
    """Append the autograd node of every SDPA call that builds a graph to ``kernels``
    (``ScaledDotProductFlashAttentionForCpuBackward0``, or a math-kernel op such as ``UnsafeViewBackward0``), to tell
    the fused kernel from the math fallback."""
    sdpa = nn.functional.scaled_dot_product_attention

    def logged(*args: Any, **kwargs: Any) -> torch.Tensor:
        output = sdpa(*args, **kwargs)
        if output.grad_fn is not None:  # no graph (inside a reentrant checkpoint): nothing saved, any kernel will do
            kernels.append(output.grad_fn.name())
        return output

    nn.functional.scaled_dot_product_attention = logged
    try:
        yield
    finally:
        nn.functional.scaled_dot_product_attention = sdpa


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


@contextlib.contextmanager
def checkpoint_kwargs_log(model: nn.Module, note: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Pass to ``note`` every keyword tensor a checkpointed layer hands its checkpoint.

    transformers calls ``checkpoint(partial(forward, **kwargs), *args)``: the positional tensors are saved with
    ``save_for_backward`` (the saved-tensor hooks see them), but the keyword ones (attention mask, rotary cos/sin)
    live in the partial the checkpoint keeps to replay the layer, until backward, where no hook sees them.
    """
    wrapped = []
    for module in model.modules():
        checkpoint = getattr(module, "_gradient_checkpointing_func", None)
        if not getattr(module, "gradient_checkpointing", False) or checkpoint is None:
            continue

        def noting(function: Any, *args: Any, _checkpoint: Any = checkpoint, **kwargs: Any) -> Any:
            for value in getattr(function, "keywords", {}).values():
                for tensor in _tensors(value):
                    note(tensor)
            return _checkpoint(function, *args, **kwargs)

        module._gradient_checkpointing_func = noting
        wrapped.append((module, checkpoint))
    try:
        yield
    finally:
        for module, checkpoint in wrapped:
            module._gradient_checkpointing_func = checkpoint


# ---------------------------------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True)
class SavedBytes:
    """What one forward left for backward, and which SDPA kernels ran."""

    activations: int
    logits: int
    sdpa_kernels: tuple[str, ...]

    @property
    def sdpa_math_fallback(self) -> bool:
        return any(not any(node in name for node in FUSED_SDPA_NODES) for name in self.sdpa_kernels)


def measure_saved(model: nn.Module, inputs: dict[str, torch.Tensor]) -> SavedBytes:
    """Bytes autograd holds for backward after one forward, split into activations and logits.

    Each saved storage is counted once, and only if still alive when the forward ends (a storage whose graph was
    dropped mid-forward can hand its address to a new one). Parameters and buffers are model state, not
    activations, so their storages (and views of them, such as a transposed weight) are skipped.
    """
    state_ptrs = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    vocab = vocab_size(model)
    seen: dict[int, list[tuple[weakref.ref[torch.Tensor], int, bool]]] = {}

    def note(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in state_ptrs:
            is_logits = tensor.dim() > 0 and tensor.shape[-1] == vocab
            seen.setdefault(ptr, []).append((weakref.ref(tensor), storage.nbytes(), is_logits))

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # NOTE: hand autograd a detached alias, not the tensor itself: a saved output (sigmoid's, SDPA's) would
        # otherwise hold its own grad_fn through the packed object, a C++ <-> Python cycle that the garbage
        # collector cannot see, and every forward's activations would stay allocated. The alias shares the
        # storage and is what the graph keeps, so its weakref tells whether the storage is still saved.
        packed = tensor.detach()
        note(packed)
        return packed

    kernels: list[str] = []
    with (
        sdpa_kernel_log(kernels),
        checkpoint_kwargs_log(model, note),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
    ):
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
    return SavedBytes(activations, logits, tuple(kernels))


def tensor_bytes(tensors: Any) -> int:
    """Bytes of distinct tensors (by identity: tied parameters appear once in ``model.parameters()``)."""
    unique = {id(t): t for t in tensors if t is not None}
    return sum(t.numel() * t.element_size() for t in unique.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """``(per-element states, 0-d scalars)`` held in ``optimizer.state``, each storage once.

    The scalars are AdamW's ``step`` and Adafactor's ``RMS``: 4 bytes per parameter tensor, which hfmem (like the
    ZeRO paper) does not model.
    """
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
        raise ValueError(f"no emulation for optimizer '{optimizer_name}'")

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
    measured["optimizer_states"], measured["optimizer_scalars"] = optimizer_state_bytes(optimizer)
    model.zero_grad(set_to_none=True)
    return measured


def release_memory() -> None:
    """Free what Python holds and hand glibc's free heap pages back to the OS between runs."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------------------------------------------
# Predictions, in a child process


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


def predict(request: Request) -> dict[str, Any]:
    """hfmem's ZeRO-0 stage document for one request (runs in the prediction worker)."""
    from hfmem.report import to_dict

    setting = request.setting
    setup = hfmem.TrainingSetup(
        precision=setting.precision,
        optimizer=request.optimizer,
        zero_stages=(0,),
        batch_size=setting.batch_size,
        seq_len=setting.seq_len,
        attn=setting.attn,
        grad_checkpointing=setting.grad_checkpointing,
        dropout=setting.dropout,
    )
    stage: dict[str, Any] = to_dict(hfmem.estimate(request.folder, setup=setup))["training"]["stages"][0]
    if "activation_detail" not in stage:
        raise SystemExit("hfmem's JSON has no training.stages[].activation_detail; update hfmem (see --measure-only)")
    return stage


def predict_worker(requests_path: Path, results_path: Path) -> None:
    """``--predict-worker IN OUT``: read requests (JSON), write one hfmem stage dict per request."""
    raw = json.loads(requests_path.read_text(encoding="utf-8"))
    requests = [Request(r["folder"], Setting(**r["setting"]), r["optimizer"]) for r in raw]
    results_path.write_text(json.dumps([predict(r) for r in requests]), encoding="utf-8")


class PredictionError(Exception):
    """The prediction worker failed; the message carries the end of its stderr."""


def predict_all(requests: list[Request], workdir: Path) -> dict[Request, dict[str, Any]]:
    """Every prediction, from one child process (this script with ``--predict-worker``).

    Raises:
        PredictionError: the worker exited with an error.
    """
    requests_path, results_path = workdir / "requests.json", workdir / "predictions.json"
    requests_path.write_text(json.dumps([dataclasses.asdict(r) for r in requests]), encoding="utf-8")
    command = [sys.executable, __file__, "--predict-worker", str(requests_path), str(results_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise PredictionError(f"the hfmem prediction worker failed:\n{done.stderr.strip()[-3000:]}")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    return dict(zip(requests, results, strict=True))


def fill_predictions(rows: list[Row], workdir: Path, records: list[GpuRecord] | None = None) -> None:
    requests = list(dict.fromkeys(r.request for r in rows if r.request is not None))
    if not requests:
        return
    log(f"asking hfmem for {len(requests)} predictions")
    predictions = predict_all(requests, workdir)
    for row in rows:
        if row.request is not None and row.extract is not None:
            row.predicted = row.extract(predictions[row.request])
    for record in records or []:
        if record.request is not None:
            record.predicted = predictions[record.request]


# ---------------------------------------------------------------------------------------------------------------
# Driver


def settings_for(precision: str, matrix: dict[str, Any], *, cpu: bool = True) -> list[Setting]:
    """The activation matrix of one precision. On the CPU ``sdpa`` runs without dropout (module docstring)."""
    return [
        Setting(precision, b, s, attn, ckpt, dropout=0.0 if cpu and attn == "sdpa" else None)
        for b, s in matrix["shapes"]
        for attn in matrix["attns"]
        for ckpt in matrix["checkpointing"]
    ]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def activation_rows(case: Case, folder: Path, setting: Setting, saved: SavedBytes, ask_hfmem: bool) -> list[Row]:
    """The activations and logits rows of one measurement, gated unless the CPU took SDPA's math kernel."""
    request = Request(str(folder), setting) if ask_hfmem else None
    label, kind = setting.label(), "activation"
    if setting.attn == "sdpa" and saved.sdpa_math_fallback:
        # The CPU math kernel saves the score matrices a GPU's fused kernel does not: shown, not gated.
        label, kind = f"{label} (CPU SDPA took the math kernel: not gated)", "info"
    return [
        Row(case.model_id, label, "activations", saved.activations, kind, request, stage_value(*ACTIVATIONS_KEY)),
        Row(case.model_id, label, "logits", saved.logits, kind, request, stage_value(*LOGITS_KEY)),
    ]


def states_rows(
    case: Case, folder: Path, model: nn.Module, dropouts: DropoutSwitch, precision: str, optimizer: str, ask_hfmem: bool
) -> list[Row]:
    """Measure the model states of one precision × optimizer (they do not depend on the micro-batch)."""
    setting = states_setting(precision)
    configure(model, dropouts, setting)
    start = time.perf_counter()
    measured = measure_states(model, precision, optimizer, make_inputs(model, 1, 128))
    release_memory()
    label = f"{precision} {optimizer} (ZeRO 0, 1 process)"
    log(f"  {label}: {measured} ({time.perf_counter() - start:.1f} s)")
    request = Request(str(folder), setting, optimizer) if ask_hfmem else None
    rows = [
        Row(case.model_id, label, name, measured[name], "state", request, stage_value("per_gpu_bytes", name))
        for name in ("weights", "master_weights", "gradients", "optimizer_states")
    ]
    if measured["optimizer_scalars"]:
        rows.append(
            Row(case.model_id, label, "0-d optimizer scalars (not modelled)", measured["optimizer_scalars"], "info")
        )
    return rows


def cpu_rows(case: Case, folder: Path, args: argparse.Namespace, matrix: dict[str, Any]) -> list[Row]:
    """Every CPU measurement of one model (predictions are filled in later)."""
    rows: list[Row] = []
    precisions = [p for p in case.precisions if p in args.precisions]
    if not precisions:
        return rows
    ask_hfmem = not args.measure_only
    # Build once in the first precision; fp32 runs first, then the same weights are cast to bf16.
    model = build_model(folder, torch.float32 if precisions[0] == "fp32" else torch.bfloat16)
    dropouts = DropoutSwitch(model)
    for precision in precisions:
        model.to(torch.float32 if precision == "fp32" else torch.bfloat16)
        release_memory()
        for setting in settings_for(precision, matrix):
            configure(model, dropouts, setting)
            start = time.perf_counter()
            saved = measure_saved(model, make_inputs(model, setting.batch_size, setting.seq_len))
            rows += activation_rows(case, folder, setting, saved, ask_hfmem)
            math = " (SDPA math kernel)" if setting.attn == "sdpa" and saved.sdpa_math_fallback else ""
            log(
                f"  {setting.label()}: activations {saved.activations:,} B, logits {saved.logits:,} B{math} "
                f"({time.perf_counter() - start:.1f} s)"
            )
            release_memory()
        if case.states and not args.no_states:
            optimizers = ["adamw"] + (["adafactor"] if case.adafactor and precision == "fp32" else [])
            for optimizer in optimizers:
                rows += states_rows(case, folder, model, dropouts, precision, optimizer, ask_hfmem)
    del model
    release_memory()
    return rows


@dataclass
class GpuRecord:
    """One GPU training step: what was measured, and (filled in later) hfmem's ZeRO-0 stage for the same setting."""

    model_id: str
    layers: int
    setting: Setting
    request: Request | None
    measured: dict[str, Any]
    predicted: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "layers": self.layers,
            "setting": dataclasses.asdict(self.setting),
            "label": self.setting.label(),
            "measured": self.measured,
            "predicted_stage": self.predicted,
        }


def _cuda_used_bytes() -> int:
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def measure_gpu_step(model: nn.Module, precision: str, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Peak GPU memory of a steady-state training step: two steps are taken, the second is measured.

    The step is the one `measure_states` emulates (bf16-mixed: bf16 model, fp32 masters in ``torch.optim.AdamW``,
    gradients copied to the masters as fp32 before the step; fp32: plain AdamW), written as a plain training loop
    (``loss = model(**inputs).loss; loss.backward(); optimizer.step(); optimizer.zero_grad()``). The first step
    allocates AdamW's states lazily, so its forward and backward run without them; the second step has them live
    throughout, as hfmem assumes. ``max_memory_allocated`` is reset at each phase boundary, which gives the peak
    of each phase: ``forward`` (until the loss), ``backward`` and ``optimizer_step`` (fp32 copies of the gradients
    for bf16-mixed, the update, the copy back).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    mixed = precision == "bf16-mixed"
    masters = [p.detach().float().requires_grad_(True) for p in params] if mixed else params
    optimizer = torch.optim.AdamW(masters, lr=1e-3)

    def phase_end(phases: dict[str, int], name: str) -> None:
        torch.cuda.synchronize()
        phases[name] = int(torch.cuda.max_memory_allocated())
        phases[name + "_reserved"] = int(torch.cuda.max_memory_reserved())
        torch.cuda.reset_peak_memory_stats()

    def step() -> dict[str, int]:
        phases: dict[str, int] = {}
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        loss = model(**inputs).loss
        phase_end(phases, "forward")
        loss.backward()
        del loss
        phase_end(phases, "backward")
        if mixed:
            for param, master in zip(params, masters, strict=True):
                master.grad = param.grad.float()
                param.grad = None
        optimizer.step()
        if mixed:
            with torch.no_grad():
                for param, master in zip(params, masters, strict=True):
                    param.copy_(master)
        phase_end(phases, "optimizer_step")
        optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        return phases

    first = step()
    second = step()
    names = ("forward", "backward", "optimizer_step")
    peak_phase = max(names, key=lambda name: second[name])
    states, scalars = optimizer_state_bytes(optimizer)
    measured = {
        "peak_allocated": max(second[name] for name in names),
        "peak_reserved": max(second[name + "_reserved"] for name in names),
        "peak_phase": peak_phase,
        "phase_peak_allocated": {name: second[name] for name in names},
        "phase_peak_reserved": {name: second[name + "_reserved"] for name in names},
        "first_step_peak_allocated": max(first[name] for name in names),
        "first_step_phase_peak_allocated": {name: first[name] for name in names},
        "weights": tensor_bytes(model.parameters()),
        "master_weights": tensor_bytes(masters) if mixed else 0,
        "optimizer_states": states,
        "optimizer_scalars": scalars,
        "allocated_after_step": int(torch.cuda.memory_allocated()),
        "reserved_after_step": int(torch.cuda.memory_reserved()),
        "device_used_after_step": _cuda_used_bytes(),
    }
    # What the device holds beyond PyTorch's allocator: the CUDA context, loaded kernels, library handles.
    measured["non_pytorch_after_step"] = measured["device_used_after_step"] - measured["reserved_after_step"]
    return measured


def cuda_rows(
    case: Case, folder: Path, args: argparse.Namespace, matrix: dict[str, Any], records: list[GpuRecord]
) -> list[Row]:
    """Peak GPU memory of a real training step per setting vs hfmem's ``per_gpu_bytes`` (informational).

    Each setting builds the model afresh on the GPU (random weights, the config's dropout, the GPU's own SDPA
    kernels) and measures a steady-state step with `measure_gpu_step`. Four comparisons per setting, none gated:

    * peak allocated vs ``total``: what users compare, although ``total`` also holds the CUDA context and the
      fragmentation allowance, which ``max_memory_allocated`` never sees;
    * peak allocated vs ``total - overhead``: like with like (hfmem's allocated bytes);
    * peak reserved vs ``total - CUDA context``: the allocator's footprint against hfmem's allocated bytes plus its
      fragmentation allowance;
    * peak reserved + non-PyTorch device memory vs ``total``: the device's footprint (what ``nvidia-smi`` shows).

    The peak also holds what hfmem's ZeRO-0 total leaves out by design (the masters' fp32 gradients in this
    emulation, AdamW's foreach temporaries), and hfmem counts gradients live at every moment, which a plain loop
    without gradient accumulation does not: hence informational. Every detail goes to ``records`` (``--cuda-json``).
    """

    def allocated(stage: dict[str, Any]) -> int:
        return int(stage["per_gpu_bytes"]["total"] - stage["per_gpu_bytes"]["overhead"])

    def without_context(stage: dict[str, Any]) -> int:
        items = stage["overhead_items"]
        context = sum(size for name, size in items.items() if "CUDA context" in name)
        return int(stage["per_gpu_bytes"]["total"] - context)

    layers = read_layers(folder)
    rows: list[Row] = []
    for precision in (p for p in case.precisions if p in args.precisions):
        for setting in settings_for(precision, matrix, cpu=False):
            release_memory()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            baseline = int(torch.cuda.memory_allocated())
            label = f"{setting.label()} (GPU step, {layers} layers)"
            start = time.perf_counter()
            model = inputs = None
            try:
                model = build_model(folder, torch.float32 if precision == "fp32" else torch.bfloat16, device="cuda")
                configure(model, DropoutSwitch(model), setting)
                inputs = make_inputs(model, setting.batch_size, setting.seq_len, device="cuda")
                measured = measure_gpu_step(model, precision, inputs)
            except torch.cuda.OutOfMemoryError as e:
                log(f"  {label}: out of memory ({str(e).splitlines()[0]})")
                continue
            finally:
                del model, inputs
            measured["baseline_allocated"] = baseline
            measured["seconds"] = round(time.perf_counter() - start, 2)
            request = None if args.measure_only else Request(str(folder), setting)
            records.append(GpuRecord(case.model_id, layers, setting, request, measured))
            if args.cuda_json:  # measurements so far, in case the run is cut short (rewritten with predictions later)
                args.cuda_json.parent.mkdir(parents=True, exist_ok=True)
                partial = {"environment": None, "steps": [r.to_dict() for r in records]}
                args.cuda_json.write_text(json.dumps(partial, indent=1), encoding="utf-8")
            peak, reserved = measured["peak_allocated"], measured["peak_reserved"]
            used = reserved + measured["non_pytorch_after_step"]
            rows += [
                Row(case.model_id, label, "peak allocated vs total", peak, "info", request, stage_value(*TOTAL_KEY)),
                Row(case.model_id, label, "peak allocated vs total − overhead", peak, "info", request, allocated),
                Row(
                    case.model_id,
                    label,
                    "peak reserved vs total − CUDA context",
                    reserved,
                    "info",
                    request,
                    without_context,
                ),
                Row(
                    case.model_id,
                    label,
                    "peak reserved + non-PyTorch vs total",
                    used,
                    "info",
                    request,
                    stage_value(*TOTAL_KEY),
                ),
            ]
            log(
                f"  {label}: peak allocated {peak:,} B at {measured['peak_phase']}, reserved {reserved:,} B, "
                f"non-PyTorch {measured['non_pytorch_after_step']:,} B ({measured['seconds']} s)"
            )
    return rows


def read_layers(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return next((int(config[key]) for key in LAYER_KEYS if key in config), 0)


def gpu_environment() -> dict[str, Any]:
    """Device, driver and library versions of the GPU run."""
    driver = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    free, total = torch.cuda.mem_get_info()
    return {
        "device": torch.cuda.get_device_name(),
        "driver": driver,
        "cuda_runtime": torch.version.cuda,
        "total_memory_bytes": int(total),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hfmem": hfmem.__version__,
        "python": platform.python_version(),
        "cuda_module_loading": os.environ.get("CUDA_MODULE_LOADING", "(unset: LAZY by default)"),
    }


def render_cuda_markdown(records: list[GpuRecord], environment: dict[str, Any], elapsed_s: float) -> str:
    """A compact table of the GPU steps: one line per setting, measured against hfmem's ZeRO-0 prediction."""

    def gib(value: int) -> str:
        return f"{value / 2**30:.2f}"

    def pct(measured: int, predicted: int) -> str:
        return f"{100.0 * (predicted - measured) / measured:+.1f} %" if measured else "—"

    lines = [
        f"- Device: {environment['device']}, driver {environment['driver']}, CUDA runtime "
        f"{environment['cuda_runtime']}; torch {environment['torch']}, transformers {environment['transformers']}, "
        f"hfmem {environment['hfmem']}, Python {environment['python']}; run time {elapsed_s / 60:.1f} min.",
        "",
        "GiB = 2^30 bytes. *alloc* = `max_memory_allocated()` of the second step (states live throughout), at the "
        "phase in *at*; *resv* = `max_memory_reserved()`; *used* = resv + the device memory outside PyTorch's "
        "allocator after the step (`mem_get_info` − `memory_reserved`). hfmem: *states* = weights + master + "
        "grads + optim, *act*, *logits* at its peak phase, *ovh* = overhead (CUDA context + 10 % fragmentation), "
        "*total*; *total−ovh* is its allocated bytes, compared with *alloc*; *total−ctx* with *resv*.",
        "",
        "| model | setting | alloc | at | hfmem states | act | logits | ovh | total−ovh | Δ alloc | resv | "
        "total−ctx | Δ resv | used | total | Δ used | hfmem at |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for record in records:
        m, stage = record.measured, record.predicted
        used = m["peak_reserved"] + m["non_pytorch_after_step"]
        if stage is None:
            cells = [gib(m["peak_allocated"]), m["peak_phase"], *["—"] * 6, gib(m["peak_reserved"]), "—", "—"]
            cells += [gib(used), "—", "—", "—"]
            lines.append(
                f"| {record.model_id} ({record.layers} layers) | {record.setting.label()} | {' | '.join(cells)} |"
            )
            continue
        b = stage["per_gpu_bytes"]
        states = b["weights"] + b["master_weights"] + b["gradients"] + b["optimizer_states"]
        context = sum(size for name, size in stage["overhead_items"].items() if "CUDA context" in name)
        allocated = b["total"] - b["overhead"]
        cells = [gib(m["peak_allocated"]), m["peak_phase"], gib(states), gib(b["activations"]), gib(b["logits"])]
        cells += [gib(b["overhead"]), gib(allocated), pct(m["peak_allocated"], allocated)]
        cells += [gib(m["peak_reserved"]), gib(b["total"] - context), pct(m["peak_reserved"], b["total"] - context)]
        cells += [gib(used), gib(b["total"]), pct(used, b["total"]), stage["peak_phase"]]
        lines.append(f"| {record.model_id} ({record.layers} layers) | {record.setting.label()} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


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
    command = "benchmarks/validate_memory.py" + (" --quick" if args.quick else "")
    if args.cuda:  # GPU runs take many options: show them all
        command = " ".join(["benchmarks/validate_memory.py", *sys.argv[1:]])
    checked = [r for r in rows if r.checked]
    failed = [r for r in checked if not r.passed]
    lines = [
        "# hfmem memory validation",
        "",
        f"Generated by `{command}`: hfmem's predictions against measurements on small, randomly initialised real "
        "models.",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Device: {device}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, hfmem {hfmem.__version__}, "
        f"Python {platform.python_version()}",
        f"- Run time: {elapsed_s / 60:.1f} min",
        "- Models: catalogue configs with fewer layers ("
        + "; ".join(f"{c.model_id}: {c.layers}" + (f", {c.note}" if c.note else "") for c in cases)
        + "). Random weights, random token ids as inputs and labels; `use_cache` as the config says.",
        "- Activations: one forward with labels; the storages autograd saves for backward, each once, parameters "
        "and buffers excluded. *logits* = saved tensors whose last dimension is the vocabulary. Gate: "
        f"±{ACTIVATION_TOLERANCE_PCT:g} %.",
        "- `sdpa` runs use dropout 0 on both sides (CPU SDPA with dropout falls back to the math kernel, which saves "
        "the s×s matrix a GPU's fused kernel does not); runs where the CPU still took the math kernel are shown but "
        "not gated. `eager` runs keep the config's dropout. Dropout runs through `torch.native_dropout` (CUDA's "
        "fused kernel, a 1-byte mask) instead of CPU `F.dropout`.",
        "- Full checkpointing: reentrant; what the checkpoints keep during forward (positional inputs, and the "
        "keyword tensors held for the replay) is measured, the one-layer recompute during backward is not.",
        "- Model states: one step at ZeRO 0 on one process (bf16-mixed: bf16 model, fp32 masters in AdamW; fp32: "
        "plain AdamW or Adafactor). Gate: exact. The optimizers' 0-d scalars (AdamW `step`, Adafactor `RMS`) are "
        "listed but not modelled.",
        "- Predictions: `hfmem.estimate` on the same config folder, ZeRO 0, in a separate process.",
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
    if checked:
        summary = f"{len(checked) - len(failed)} of {len(checked)} checked rows pass."
    elif args.measure_only:
        summary = "Measurements only (--measure-only): nothing checked."
    else:
        summary = "GPU rows only (--cuda-only): informational, nothing gated."
    return "\n".join([*lines, "", summary]) + "\n"


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
        "--cuda", action="store_true", help="also run one real step per setting on the GPU; compare peak memory"
    )
    parser.add_argument("--cuda-only", action="store_true", help="with --cuda: skip the CPU measurements")
    parser.add_argument(
        "--cuda-layers",
        type=int,
        metavar="N",
        help="with --cuda: layers of the GPU models (0: the config's own count; default: as on the CPU)",
    )
    parser.add_argument(
        "--cuda-shapes",
        nargs="+",
        metavar="BxS",
        help="with --cuda: micro-batch x sequence length of the GPU steps, e.g. 1x1024 4x1024 (default: the matrix's)",
    )
    parser.add_argument("--cuda-json", type=Path, metavar="PATH", help="with --cuda: write every GPU detail here")
    parser.add_argument(
        "--step",
        nargs=argparse.REMAINDER,
        metavar="ARG",
        help="run benchmarks/validate_step.py instead (a whole training step on CPU per memory technique: loss, "
        "recompute, offload, optimizer, autocast), passing it every argument after --step",
    )
    parser.add_argument("--predict-worker", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step is not None:
        return args
    if args.precisions is None:
        args.precisions = QUICK_PRECISIONS if args.quick else ("fp32", "bf16-mixed")
    if (args.cuda_only or args.cuda_layers is not None or args.cuda_shapes or args.cuda_json) and not args.cuda:
        parser.error("--cuda-only, --cuda-layers, --cuda-shapes and --cuda-json need --cuda")
    if args.cuda_shapes:
        try:
            args.cuda_shapes = [tuple(int(n) for n in shape.lower().split("x", 1)) for shape in args.cuda_shapes]
        except ValueError:
            parser.error("--cuda-shapes: write each as BxS, e.g. 4x1024")
        if any(len(shape) != 2 or min(shape) < 1 for shape in args.cuda_shapes):
            parser.error("--cuda-shapes: write each as BxS, e.g. 4x1024")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step is not None:
        sys.path.insert(0, str(Path(__file__).parent))
        import validate_step

        return validate_step.main(args.step)
    if args.predict_worker:
        predict_worker(*args.predict_worker)
        return 0
    if not args.measure_only:
        require_activation_fields()
    if args.cuda and not torch.cuda.is_available():
        raise SystemExit("--cuda: torch.cuda.is_available() is False on this machine")
    transformers.logging.set_verbosity_error()  # e.g. "loss_type=None ... using the default loss"
    wanted = args.models or (QUICK_MODELS if args.quick else [c.model_id for c in CASES])
    cases = [c for c in CASES if c.model_id in wanted]
    unknown = set(wanted) - {c.model_id for c in cases}
    if unknown:
        raise SystemExit(f"not in this script's model list: {', '.join(sorted(unknown))}")
    matrix = QUICK_MATRIX if args.quick else FULL_MATRIX

    cuda_matrix = {**matrix, "shapes": tuple(args.cuda_shapes)} if args.cuda_shapes else matrix

    start = time.perf_counter()
    rows: list[Row] = []
    records: list[GpuRecord] = []
    with tempfile.TemporaryDirectory(prefix="hfmem-validate-") as tmp:
        with cuda_style_dropout():
            for case in cases:
                log(f"{case.model_id} ({case.layers} layer{'s' if case.layers > 1 else ''})")
                folder = write_reduced_config(case.model_id, case.layers, Path(tmp))
                if not args.cuda_only:
                    rows += cpu_rows(case, folder, args, matrix)
                if args.cuda:
                    gpu_folder = folder
                    if args.cuda_layers is not None and args.cuda_layers != case.layers:
                        gpu_folder = write_reduced_config(case.model_id, args.cuda_layers, Path(tmp) / "gpu")
                    rows += cuda_rows(case, gpu_folder, args, cuda_matrix, records)
        try:
            fill_predictions(rows, Path(tmp), records)
        except PredictionError as e:
            failure: str | None = str(e)
        else:
            failure = None
    elapsed_s = time.perf_counter() - start
    text = render_markdown(rows, cases, elapsed_s, args)
    if args.cuda:
        environment = gpu_environment()
        text += "\n## GPU steps, one line per setting\n\n" + render_cuda_markdown(records, environment, elapsed_s)
        if args.cuda_json:
            args.cuda_json.parent.mkdir(parents=True, exist_ok=True)
            document = {"environment": environment, "steps": [r.to_dict() for r in records]}
            args.cuda_json.write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(text, end="")
    if failure:  # the measurements above still stand; no markdown file, as nothing was checked
        raise SystemExit(failure)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
