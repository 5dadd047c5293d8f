"""Launch files → hfmem settings: DeepSpeed JSON, accelerate YAML, Hugging Face TrainingArguments / TRL configs,
torchtune recipes and axolotl YAML, each setting with the file and key it came from.

Pure: reads the named files (and the DeepSpeed files they reference), imports neither torch nor click; PyYAML is
imported when a file needs it. The CLI applies the settings to its options, except the options the user typed
(`hfmem.cli`). The keys each format is read by are listed in docs/techniques.md §7 with their framework sources.

Precision, the one setting that depends on several keys (and files) at once, is decided once (``_Run.precision``):

- DeepSpeed (``bf16.enabled`` / ``fp16.enabled``): 16-bit parameters and gradients with fp32 master weights and
  optimizer states in DeepSpeed's optimizer wrapper → ``bf16-mixed`` / ``fp16-mixed``; both disabled → ``fp32``.
  Within a DeepSpeed run the Trainer's / accelerate's / axolotl's bf16/fp16 only fill these keys ("auto"), and an
  accelerate YAML with inline ``deepspeed_config`` writes them from ``mixed_precision``
  (``DeepSpeedPlugin.set_mixed_precision``).
- FSDP with accelerate ``mixed_precision`` or the Trainer's/axolotl's ``bf16``/``fp16``: accelerate upcasts the
  trainable parameters to fp32 whatever dtype they were loaded in (accelerate 1.15 ``accelerator.py::prepare_model``,
  ``utils/fsdp_utils.py::fsdp2_prepare_model``), FSDP keeps the fp32 shards (the masters) and optimizer states and
  gathers 16-bit copies for compute (``FullyShardedDataParallelPlugin.set_mixed_precision``) → ``bf16-mixed``.
- The Trainer's ``bf16``/``fp16`` without DeepSpeed or FSDP is autocast (accelerate wraps the forward) over the
  weights as loaded: a model loaded in fp32 (``torch_dtype: float32``) gives ``amp-bf16``/``amp-fp16`` (fp32 weights,
  gradients and states; an option issue 13 adds), a model loaded in 16 bits (``torch_dtype: bfloat16``) trains in
  pure 16 bits → ``bf16``/``fp16``. With no ``torch_dtype``/``dtype`` in the files the loaded dtype is the
  checkpoint's (transformers ≥ 5 ``from_pretrained`` defaults to ``dtype="auto"``, ``modeling_utils.py``), which a
  launch file does not say: reported as unresolved.
- axolotl ``bf16: true|auto`` loads the model in bf16 (``resolve_dtype`` sets ``torch_dtype = torch.bfloat16``,
  docs/techniques.md §7.5) → ``bf16``; ``fp16: true`` → ``fp16``; ``auto`` assumes a GPU with bf16 support.
- torchtune ``dtype`` is the dtype of the whole model and optimizer (no autocast, §7.4) → ``bf16`` / ``fp32``.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfmem.dtypes import ALIASES, BF16, FP16, FP32
from hfmem.errors import LaunchConfigError
from hfmem.limits import MAX_CONFIG_BYTES, MAX_DEPTH

#: Leaves a launch file may have: real ones have tens to a few hundred (torchtune's 3B recipe: 60).
MAX_LAUNCH_KEYS = 10_000

__all__ = [
    "FORMATS",
    "LaunchSetting",
    "Unresolved",
    "LaunchSettings",
    "LaunchOutcome",
    "detect_format",
    "read_launch_files",
    "option_flag",
    "show_value",
]

#: The formats, by the names the error message and the report use.
FORMATS: dict[str, str] = {
    "deepspeed": "DeepSpeed JSON",
    "accelerate": "accelerate YAML",
    "trainer": "Hugging Face TrainingArguments / TRL config (JSON or YAML)",
    "torchtune": "torchtune recipe YAML",
    "axolotl": "axolotl YAML",
}

#: Option flags whose name is not ``--`` + the parameter name with dashes.
_FLAGS = {"zero_stages": "--zero", "gpus_per_node": "--gpus", "gpu_name": "--gpu", "model": "MODEL"}


def option_flag(option: str) -> str:
    """The command-line spelling of the option ``option`` (a click parameter name): ``zero_stages`` → ``--zero``."""
    return _FLAGS.get(option, "--" + option.replace("_", "-"))


@dataclass(frozen=True)
class LaunchSetting:
    """One hfmem option set by a launch file.

    Attributes:
        option: the click parameter name of the hfmem option (``zero_stages``, ``precision``, ``loss``…); options
            that issue 13 names but this hfmem may not have yet are named all the same.
        value: the value as typed on the command line (``"bf16-mixed"``, ``3``, ``"q_proj,v_proj"``, ``True``).
        origin: the file and key, ``"ds_config.json: zero_optimization.stage"``.
        unmodelled: why hfmem cannot apply it even though the option exists, or None.
    """

    option: str
    value: Any
    origin: str
    unmodelled: str | None = None


@dataclass(frozen=True)
class Unresolved:
    """A key that would set ``option`` but whose value the files do not determine (``"auto"``, ``null``)."""

    option: str
    origin: str
    reason: str
    value: Any = "auto"


@dataclass(frozen=True)
class LaunchSettings:
    """Everything the launch files say, as hfmem options.

    Attributes:
        files: (path as given, format key of `FORMATS`) for each file read, referenced DeepSpeed files included.
        settings: one per option (two files that disagree on an option are an error).
        unresolved: keys that set an option but whose value is ``"auto"`` or missing.
        not_understood: ``"file: key = value"`` for keys that may matter for memory but hfmem cannot read.
        no_memory_effect: ``"file: key"`` for keys read and known not to change the training peak (learning rate,
            logging, saving…).
    """

    files: tuple[tuple[str, str], ...] = ()
    settings: tuple[LaunchSetting, ...] = ()
    unresolved: tuple[Unresolved, ...] = ()
    not_understood: tuple[str, ...] = ()
    no_memory_effect: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchOutcome:
    """What became of the launch settings on the command line (built by the CLI, rendered by `hfmem.report`).

    Each entry of ``applied``, ``overridden_by_flags`` and ``recognised_not_modelled`` is a dict with ``option`` (the
    flag), ``value`` and ``origin``; overridden entries add ``flag_value``, not-modelled ones ``reason``.
    """

    files: tuple[tuple[str, str], ...]
    applied: tuple[dict[str, Any], ...] = ()
    overridden_by_flags: tuple[dict[str, Any], ...] = ()
    recognised_not_modelled: tuple[dict[str, Any], ...] = ()
    unresolved: tuple[dict[str, Any], ...] = ()
    not_understood: tuple[str, ...] = ()
    no_memory_effect: tuple[str, ...] = ()


# --- reading and recognising a file --------------------------------------------------------------------------------


def _parse(path: Path, label: str) -> dict[str, Any]:
    try:
        if not path.is_file():
            raise LaunchConfigError(label, "is not a regular file; give a JSON or YAML file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise LaunchConfigError(label, f"is larger than {MAX_CONFIG_BYTES:,} bytes; give a launch config file")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LaunchConfigError(label, f"cannot be read ({type(e).__name__}: {e}); give a readable text file") from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LaunchConfigError(label, f"is not valid JSON (line {e.lineno}: {e.msg}); fix the file") from e
        except RecursionError as e:
            raise LaunchConfigError(label, "is nested too deeply; give a launch config file") from e
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise LaunchConfigError(label, f"is not valid YAML ({where}{problem}); fix the file") from e
        except RecursionError as e:
            raise LaunchConfigError(label, "is nested too deeply; give a launch config file") from e
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        raise LaunchConfigError(label, f"holds {kind}, not a mapping of settings; give a launch config file")
    count = 0
    for _ in _leaves(data, label=label):  # YAML aliases can nest a structure in itself or repeat it exponentially
        count += 1
        if count > MAX_LAUNCH_KEYS:
            raise LaunchConfigError(label, f"has more than {MAX_LAUNCH_KEYS:,} keys; give a launch config file")
    return data


def detect_format(data: Mapping[str, Any]) -> str | None:
    """The format of a parsed launch file, from its keys (a key of `FORMATS`), or None.

    Example:
        >>> detect_format({"zero_optimization": {"stage": 2}})
        'deepspeed'
    """
    if any(isinstance(v, dict) and "_component_" in v for v in data.values()):
        return "torchtune"
    if {"zero_optimization", "train_micro_batch_size_per_gpu", "train_batch_size"} & data.keys() or any(
        isinstance(data.get(k), dict) and "enabled" in data[k] for k in ("bf16", "bfloat16", "fp16")
    ):
        return "deepspeed"
    if {"distributed_type", "compute_environment"} & data.keys():
        return "accelerate"
    if {"base_model", "micro_batch_size", "sequence_len", "adapter", "lora_target_linear"} & data.keys():
        return "axolotl"
    trainer_keys = {
        "per_device_train_batch_size",
        "optim",
        "output_dir",
        "model_name_or_path",
        "max_length",
        "max_seq_length",
        "gradient_checkpointing",
        "activation_checkpointing",
        "use_liger_kernel",
        "learning_rate",
    }
    if trainer_keys & data.keys():
        return "trainer"
    return None


def _leaves(data: Any, prefix: str = "", depth: int = 0, *, label: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf of nested mappings; lists and scalars are leaves."""
    if depth > MAX_DEPTH:
        raise LaunchConfigError(label, f"nests mappings more than {MAX_DEPTH} deep; give a launch config file")
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key), depth + 1, label=label)
    else:
        yield prefix, data


#: Bounded ``repr`` of lists and mappings from a file (a YAML alias can make one contain itself, or repeat one).
_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 40, 40


def _text(value: Any) -> str:
    """A value from a file as text to compare with names: itself if a string, else `show_value` (bounded)."""
    return value if isinstance(value, str) else show_value(value)


def show_value(value: Any) -> str:
    """A value from a launch file, for a message: JSON for scalars, a bounded ``repr`` otherwise, ≤ 60 characters."""
    if value is None or isinstance(value, (str, int, float, bool)):
        text = json.dumps(value if not isinstance(value, str) else value[:100])
    else:
        text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


class _Doc:
    """One parsed file (or an inline DeepSpeed dict) and which of its keys were read."""

    def __init__(self, label: str, data: dict[str, Any], fmt: str, folder: Path) -> None:
        self.label, self.data, self.fmt, self.folder = label, data, fmt, folder
        self.read: set[str] = set()
        self.ignored: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        """The value at dotted ``key`` (marked as read), or ``default``."""
        self.read.add(key)
        return self.peek(key, default)

    def peek(self, key: str, default: Any = None) -> Any:
        """The value at dotted ``key`` without marking it read (a section whose keys are read one by one)."""
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def has(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def at(self, key: str) -> str:
        return f"{self.label}: {key}"

    def ignore(self, *keys: str) -> None:
        """Keys (or whole sections) known not to change the training peak."""
        self.ignored.update(keys)


_MISSING = object()


def _covered(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


# --- the collector ------------------------------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.settings: dict[str, LaunchSetting] = {}
        self.unresolved: list[Unresolved] = []
        self.not_understood: list[str] = []

    def set(self, option: str, value: Any, origin: str, unmodelled: str | None = None) -> None:
        if not isinstance(value, (str, int, float, bool)):  # a list or mapping where a single value belongs
            self.not_understood.append(f"{origin} = {show_value(value)} (not a single value)")
            return
        earlier = self.settings.get(option)
        if earlier is not None:
            if earlier.value != value:
                raise LaunchConfigError(
                    origin.split(": ")[0],
                    f"{origin} sets {option_flag(option)} {value} but {earlier.origin} sets {earlier.value}; "
                    f"make the files agree or pass {option_flag(option)}",
                )
            return
        self.settings[option] = LaunchSetting(option, value, origin, unmodelled)

    def unresolved_key(self, option: str, origin: str, reason: str, value: Any = "auto") -> None:
        self.unresolved.append(Unresolved(option, origin, reason, value))

    def unknown(self, doc: _Doc, key: str, value: Any, why: str = "") -> None:
        self.not_understood.append(f"{doc.at(key)} = {show_value(value)}" + (f" ({why})" if why else ""))


# --- shared vocabularies ------------------------------------------------------------------------------------------

#: Hugging Face ``optim`` names (transformers 5.24.0 ``training_args.py::OptimizerNames``) → (--optimizer,
#: --optimizer-impl or None). ``adamw_torch`` is torch's AdamW with its CUDA default (foreach);
#: ``adamw_torch_fused`` passes ``fused=True`` (``trainer_optimizer.py::_get_adamw_torch``); the bitsandbytes names
#: are ``bitsandbytes.optim.AdamW`` with ``optim_bits = 8 if "8bit" in name`` and ``is_paged = "paged" in name``
#: (``_get_bitsandbytes_optimizer``); ``adamw_8bit`` is an alias of ``adamw_bnb_8bit``; ``lion_32bit`` is bitsandbytes'
#: 32-bit Lion (one fp32 state, like --optimizer lion).
HF_OPTIMIZERS: dict[str, tuple[str, str | None]] = {
    "adamw_torch": ("adamw", "foreach"),
    "adamw_torch_fused": ("adamw", "fused"),
    "adamw_bnb_8bit": ("adamw-8bit", None),
    "adamw_8bit": ("adamw-8bit", None),
    "paged_adamw_8bit": ("paged-adamw-8bit", None),
    "paged_adamw_32bit": ("paged-adamw", None),
    "adafactor": ("adafactor", None),
    "sgd": ("sgd", None),
    "lion_32bit": ("lion", None),
}

#: torchtune ``optimizer._component_`` → --optimizer (torch.optim Adam and AdamW keep the same two states).
TORCHTUNE_OPTIMIZERS: dict[str, str] = {
    "torch.optim.AdamW": "adamw",
    "torch.optim.Adam": "adamw",
    "bitsandbytes.optim.AdamW8bit": "adamw-8bit",
    "bitsandbytes.optim.PagedAdamW8bit": "paged-adamw-8bit",
    "bitsandbytes.optim.PagedAdamW": "paged-adamw",
    "bitsandbytes.optim.PagedAdamW32bit": "paged-adamw",
    "torch.optim.SGD": "sgd",
}

#: torchtune ``loss._component_`` → --loss. ``LinearCrossEntropyLoss`` projects and upcasts per chunk but keeps
#: every chunk's 16-bit logits for backward (docs/techniques.md §1.3), which is the chunked path's memory, not the
#: fused one's (where the full logits never exist).
TORCHTUNE_LOSSES: dict[str, str] = {
    "torchtune.modules.loss.CEWithChunkedOutputLoss": "chunked",
    "torchtune.modules.loss.LinearCrossEntropyLoss": "chunked",
    "torch.nn.CrossEntropyLoss": "hf",
}

#: torchtune's Llama module names → Hugging Face's (torchtune ``models/convert_weights.py::_FROM_HF``:
#: ``self_attn.o_proj`` ↔ ``attn.output_proj``, ``mlp.gate_proj`` ↔ ``mlp.w1``, ``down_proj`` ↔ ``w2``,
#: ``up_proj`` ↔ ``w3``).
TORCHTUNE_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
TORCHTUNE_MLP_MODULES = ("gate_proj", "up_proj", "down_proj")

#: ``attn_implementation`` → --attn.
ATTN_IMPLEMENTATIONS = {
    "flash_attention_2": "flash",
    "flash_attention_3": "flash",
    "sdpa": "sdpa",
    "eager": "eager",
}

#: FSDP sharding strategies by name and by the integers accelerate also accepts (``ShardingStrategy`` values 1–5,
#: ``accelerate/utils/constants.py::FSDP_SHARDING_STRATEGY``) → --fsdp; None: not modelled.
FSDP_STRATEGY = {
    "FULL_SHARD": "full_shard",
    "SHARD_GRAD_OP": "shard_grad_op",
    "NO_SHARD": "no_shard",
    "HYBRID_SHARD": "hybrid_shard",
    "HYBRID_SHARD_ZERO2": None,
}
_FSDP_BY_NUMBER = list(FSDP_STRATEGY)

_FSDP_OFFLOAD = (
    "FSDP's CPU offload (parameters, gradients and the optimizer step on the CPU) is not modelled; hfmem's "
    "--offload is DeepSpeed's ZeRO-Offload"
)

#: Keys of a Hugging Face TrainingArguments / TRL config that do not change the training peak.
_TRAINER_NO_EFFECT = (
    "output_dir overwrite_output_dir do_train do_eval do_predict eval_strategy evaluation_strategy eval_steps "
    "per_device_eval_batch_size eval_accumulation_steps learning_rate weight_decay adam_beta1 adam_beta2 adam_epsilon "
    "max_grad_norm num_train_epochs max_steps lr_scheduler_type lr_scheduler_kwargs warmup_ratio warmup_steps "
    "log_level log_level_replica logging_dir logging_strategy logging_first_step logging_steps save_strategy "
    "save_steps save_total_limit save_only_model save_safetensors seed data_seed report_to run_name hub_model_id "
    "hub_strategy hub_private_repo push_to_hub dataloader_num_workers "
    "dataloader_pin_memory dataloader_drop_last remove_unused_columns label_names load_best_model_at_end "
    "metric_for_best_model greater_is_better ddp_timeout ddp_find_unused_parameters bf16_full_eval fp16_full_eval "
    "tf32 chat_template dataset_mixture dataset_name dataset_config dataset_num_proc dataset_text_field "
    "dataset_kwargs packing model_revision_note include_tokens_per_second disable_tqdm resume_from_checkpoint "
    "torch_empty_cache_steps group_by_length length_column_name ignore_data_skip"
).split()

_ACCELERATE_NO_EFFECT = (
    "compute_environment debug machine_rank main_training_function rdzv_backend same_network tpu_env "
    "tpu_use_cluster tpu_use_sudo main_process_ip main_process_port gpu_ids downcast_bf16 enable_cpu_affinity"
).split()

_FSDP_NO_EFFECT = "state_dict_type sync_module_states cpu_ram_efficient_loading use_orig_params".split()

_AXOLOTL_NO_EFFECT = (
    "datasets test_datasets dataset_prepared_path val_set_size output_dir wandb_project wandb_entity wandb_watch "
    "wandb_name wandb_log_model num_epochs max_steps lr_scheduler learning_rate "
    "warmup_ratio warmup_steps evals_per_epoch saves_per_epoch eval_steps save_steps weight_decay max_grad_norm "
    "special_tokens tokens chat_template logging_steps resume_from_checkpoint hub_model_id loss_watchdog_threshold "
    "loss_watchdog_patience eval_sample_packing sample_packing pad_to_sequence_len lora_model_dir strict seed "
    "train_on_inputs group_by_length early_stopping_patience tf32 save_total_limit save_first_step"
).split()

_TORCHTUNE_NO_EFFECT = (
    "checkpointer metric_logger output_dir seed shuffle epochs max_steps_per_epoch resume_from_checkpoint device "
    "log_every_n_steps log_peak_memory_stats log_level lr_scheduler clip_grad_norm "
    "optimizer.lr optimizer.weight_decay optimizer.betas optimizer.eps tokenizer._component_ tokenizer.path "
    "dataset._component_ dataset.source dataset.split dataset.data_files dataset.column_map"
).split()

_DEEPSPEED_NO_EFFECT = (
    "gradient_clipping train_batch_size steps_per_print wall_clock_breakdown scheduler "
    "optimizer.params.lr optimizer.params.betas optimizer.params.eps optimizer.params.weight_decay "
    "optimizer.params.adam_w_mode zero_allow_untested_optimizer fp16.loss_scale fp16.loss_scale_window "
    "fp16.initial_scale_power fp16.hysteresis fp16.min_loss_scale fp16.auto_cast zero_optimization.overlap_comm "
    "zero_optimization.contiguous_gradients zero_optimization.reduce_scatter zero_optimization.allgather_partitions "
    "zero_optimization.offload_optimizer.pin_memory zero_optimization.offload_param.pin_memory "
    "zero_optimization.stage3_gather_16bit_weights_on_model_save zero_optimization.round_robin_gradients"
).split()


# --- the formats --------------------------------------------------------------------------------------------------


class _Run:
    """The files of one hfmem run, read together: facts one file lends another ("auto" values, precision)."""

    def __init__(self) -> None:
        self.out = _Collector()
        self.docs: list[_Doc] = []
        self.deepspeed: list[_Doc] = []
        self.batch: tuple[int, str] | None = None  # the Trainer's per-device batch: fills DeepSpeed "auto"
        self.accumulation: tuple[int, str] | None = None  # gradient_accumulation_steps outside DeepSpeed: fills "auto"
        self.mixed: tuple[str, str] | None = None  # "bf16"/"fp16"/"no" and where (Trainer bf16/fp16, accelerate)
        self.loaded: tuple[str, str] | None = None  # the dtype the model is loaded in, and where
        self.fsdp = False
        self.accelerate_deepspeed: str | None = None  # accelerate DEEPSPEED without a DeepSpeed file: where
        self.axolotl_dtype: tuple[str, str] | None = None
        self.torchtune_dtype: tuple[str, str] | None = None

    # accelerate ------------------------------------------------------------------------------------------------
    def accelerate(self, doc: _Doc) -> None:
        out = self.out
        doc.ignore(
            *_ACCELERATE_NO_EFFECT,
            "deepspeed_config.gradient_clipping",
            "deepspeed_config.zero3_init_flag",
            "deepspeed_config.zero3_save_16bit_model",
            "deepspeed_config.deepspeed_multinode_launcher",
        )
        kind = _text(doc.get("distributed_type", "NO")).upper()
        if kind in ("NO", "MULTI_GPU"):
            out.set("zero_stages", 0, doc.at("distributed_type") + f" = {kind} (DDP replicas)")
        elif kind == "FSDP":
            self.fsdp = True
            self._fsdp_config(doc, "fsdp_config", prefix="fsdp_")
        elif kind == "DEEPSPEED":
            ds_file = doc.get("deepspeed_config.deepspeed_config_file")
            if ds_file:
                self.deepspeed.append(self._load_reference(doc, "deepspeed_config.deepspeed_config_file", ds_file))
            else:
                self.accelerate_deepspeed = doc.at("distributed_type")
            self._deepspeed_inline(doc)
        else:
            out.unknown(doc, "distributed_type", kind, "not a GPU data-parallel type hfmem models")
        mixed = doc.get("mixed_precision")
        if mixed is False:  # YAML 1.1 reads an unquoted `no` as false
            mixed = "no"
        if mixed is not None:
            self.mixed = (_text(mixed).lower(), doc.at("mixed_precision"))
        processes, machines = doc.get("num_processes"), doc.get("num_machines")
        if isinstance(machines, bool):
            machines = None
        if isinstance(processes, bool):
            processes = None
        if isinstance(machines, int) and machines >= 1:
            out.set("nodes", machines, doc.at("num_machines"))
        if isinstance(processes, int) and processes >= 1:
            nodes = machines if isinstance(machines, int) and machines >= 1 else 1
            origin = doc.at("num_processes") + (f" / num_machines {nodes}" if nodes > 1 else "")
            if processes % nodes == 0:
                out.set("gpus_per_node", processes // nodes, origin)
            else:
                out.unknown(doc, "num_processes", processes, f"not a multiple of num_machines {nodes}")
        if doc.get("use_cpu") is True:
            out.unknown(doc, "use_cpu", True, "a CPU run: hfmem plans GPU memory")

    def _deepspeed_inline(self, doc: _Doc) -> None:
        out = self.out
        self._accumulation(doc, "deepspeed_config.gradient_accumulation_steps")
        stage = doc.get("deepspeed_config.zero_stage")
        if stage is not None:
            out.set("zero_stages", stage, doc.at("deepspeed_config.zero_stage"))
        self._offload(
            doc,
            doc.get("deepspeed_config.offload_optimizer_device"),
            doc.get("deepspeed_config.offload_param_device"),
            "deepspeed_config.offload_optimizer_device",
            "deepspeed_config.offload_param_device",
        )

    def _offload(self, doc: _Doc, optimizer: Any, params: Any, opt_key: str, param_key: str) -> None:
        """DeepSpeed offload devices (``none``/``cpu``/``nvme``) → --offload; NVMe is off the GPU just as CPU is."""
        opt_off = _text(optimizer).lower() in ("cpu", "nvme")
        param_off = _text(params).lower() in ("cpu", "nvme")
        if opt_off and param_off:
            self.out.set("offload", "optimizer+params", f"{doc.at(opt_key)} + {param_key}")
        elif opt_off:
            self.out.set("offload", "optimizer", doc.at(opt_key))
        elif param_off:
            self.out.set(
                "offload",
                "params",
                doc.at(param_key),
                "parameter offload without optimizer offload is not one of hfmem's --offload choices",
            )
        elif optimizer is not None or params is not None:
            self.out.set("offload", "none", doc.at(opt_key if optimizer is not None else param_key))

    def _fsdp_config(self, doc: _Doc, section: str, *, prefix: str) -> None:
        """accelerate's ``fsdp_config`` (keys ``fsdp_*``) or the Trainer's (keys with or without ``fsdp_``)."""
        config = doc.peek(section)
        if not isinstance(config, dict):
            config = {}
        names = {str(k).removeprefix("fsdp_"): k for k in config}
        for short in _FSDP_NO_EFFECT:
            if short in names:
                doc.ignore(f"{section}.{names[short]}")

        def get(short: str) -> tuple[Any, str]:
            key = f"{section}.{names.get(short, prefix + short)}"
            return doc.get(key), key

        version, version_key = get("version")
        if version is None and doc.fmt == "axolotl":
            version, version_key = doc.get("fsdp_version"), "fsdp_version"
        strategy, strategy_key = get("sharding_strategy")
        reshard, reshard_key = get("reshard_after_forward")
        if _text(version) == "2":
            if isinstance(reshard, bool) or reshard is None:
                full = reshard is not False  # FSDP2's default: reshard after forward (accelerate docstring)
                where = doc.at(reshard_key if reshard is not None else version_key)
                self.out.set("fsdp", "full_shard" if full else "shard_grad_op", where)
            else:
                self.out.unknown(doc, reshard_key, reshard, "FSDP2 takes true or false")
        elif strategy is not None or reshard is not None:
            value, key = (strategy, strategy_key) if strategy is not None else (reshard, reshard_key)
            name = _text(value).upper()
            if name.isdigit() and 1 <= int(name) <= len(_FSDP_BY_NUMBER):
                name = _FSDP_BY_NUMBER[int(name) - 1]
            if name in FSDP_STRATEGY:
                mapped = FSDP_STRATEGY[name]
                why = None if mapped is not None else "FSDP's HYBRID_SHARD_ZERO2 is not modelled"
                self.out.set("fsdp", mapped or name.lower(), doc.at(key), why)
            else:
                self.out.unknown(doc, key, value, "not an FSDP sharding strategy")
        elif section == "fsdp_config" and doc.fmt == "accelerate":
            self.out.set("fsdp", "full_shard", doc.at("distributed_type") + " = FSDP (FULL_SHARD by default)")
        offload, offload_key = get("offload_params")
        if offload is True:
            self.out.set("offload", "optimizer+params", doc.at(offload_key), _FSDP_OFFLOAD)
        checkpointing, ckpt_key = get("activation_checkpointing")
        if checkpointing is True:  # false only means "not through FSDP": the Trainer's own may still be on
            self.out.set("grad_checkpointing", "full", doc.at(ckpt_key))

    def _accumulation(self, doc: _Doc, key: str, *, deepspeed: bool = False) -> None:
        """``gradient_accumulation_steps`` → --grad-accumulation (the same name in the HF Trainer / TRL, axolotl,
        torchtune, DeepSpeed and accelerate's ``deepspeed_config``). DeepSpeed's ``"auto"`` is what the HF Trainer
        fills in from its own ``gradient_accumulation_steps`` (transformers ``integrations/deepspeed.py``
        ``trainer_config_process``), so it takes that of another file or is reported."""
        steps = doc.get(key)
        if steps is None:
            return
        if steps == "auto" and deepspeed:
            if self.accumulation is not None:
                self.out.set(
                    "grad_accumulation", self.accumulation[0], f"{doc.at(key)} = auto ← {self.accumulation[1]}"
                )
            else:
                self.out.unresolved_key(
                    "grad_accumulation", doc.at(key), "auto: the HF Trainer fills it from gradient_accumulation_steps"
                )
            return
        self.out.set("grad_accumulation", steps, doc.at(key))
        if not deepspeed and isinstance(steps, int):
            self.accumulation = (steps, doc.at(key))

    # DeepSpeed -------------------------------------------------------------------------------------------------
    def deepspeed_config(self, doc: _Doc) -> None:
        out = self.out
        doc.ignore(*_DEEPSPEED_NO_EFFECT)
        self._accumulation(doc, "gradient_accumulation_steps", deepspeed=True)
        stage = doc.get("zero_optimization.stage")
        if stage == "auto":
            out.unresolved_key("zero_stages", doc.at("zero_optimization.stage"), "auto: no file gives the stage")
        elif stage is not None:
            out.set("zero_stages", stage, doc.at("zero_optimization.stage"))
        self._offload(
            doc,
            doc.get("zero_optimization.offload_optimizer.device"),
            doc.get("zero_optimization.offload_param.device"),
            "zero_optimization.offload_optimizer.device",
            "zero_optimization.offload_param.device",
        )
        micro = doc.get("train_micro_batch_size_per_gpu")
        key = "train_micro_batch_size_per_gpu"
        if micro == "auto":
            if self.batch is not None:
                out.set("batch_size", self.batch[0], f"{doc.at(key)} = auto ← {self.batch[1]}")
            else:
                out.unresolved_key(
                    "batch_size", doc.at(key), "auto: the HF Trainer fills it from per_device_train_batch_size"
                )
        elif micro is not None:
            out.set("batch_size", micro, doc.at(key))
        self._deepspeed_optimizer(doc)

    def _deepspeed_optimizer(self, doc: _Doc) -> None:
        """DeepSpeed's ``optimizer`` block: Adam/AdamW keep two fp32 states whichever class runs them (torch's with
        ``torch_adam``, DeepSpeed's ``FusedAdam`` on the GPU, ``DeepSpeedCPUAdam`` with offload:
        ``runtime/engine.py::_configure_basic_optimizer``); absent → the Trainer's own optimizer."""
        kind = doc.get("optimizer.type")
        torch_adam = doc.get("optimizer.params.torch_adam")
        if kind is None:
            return
        name = _text(kind).lower()
        origin = doc.at("optimizer.type")
        if name in ("adam", "adamw", "fusedadam", "cpuadam"):
            self.out.set("optimizer", "adamw", origin)
            offloaded = _text(doc.get("zero_optimization.offload_optimizer.device")).lower() in ("cpu", "nvme")
            if not offloaded:
                impl = "foreach" if torch_adam else "fused"
                why = "torch_adam: torch's AdamW" if torch_adam else "DeepSpeed's FusedAdam"
                self.out.set("optimizer_impl", impl, f"{origin} ({why})")
        elif name == "lion":
            self.out.set("optimizer", "lion", origin)
        else:
            self.out.unknown(doc, "optimizer.type", kind, "hfmem has no such optimizer")

    def deepspeed_precision(self) -> tuple[str, str] | None:
        """bf16/fp16 of the DeepSpeed configs in play, "auto" filled as the HF Trainer and accelerate fill it."""
        result: tuple[str, str] | None = None
        for doc in self.deepspeed:
            found: dict[str, tuple[Any, str]] = {}
            for name, keys in (("bf16", ("bf16", "bfloat16")), ("fp16", ("fp16",))):
                for key in keys:
                    if doc.has(f"{key}.enabled"):
                        found[name] = (doc.get(f"{key}.enabled"), doc.at(f"{key}.enabled"))
            values: dict[str, tuple[bool | None, str]] = {}
            for name in ("bf16", "fp16"):
                value, origin = found.get(name, (None, ""))
                if value not in ("auto", None):
                    values[name] = (bool(value), origin)
                elif self.mixed is not None:
                    # transformers integrations/deepspeed.py::trainer_config_process fills bf16.enabled ← bf16 and
                    # fp16.enabled ← fp16; accelerate DeepSpeedPlugin.set_mixed_precision from mixed_precision.
                    values[name] = (self.mixed[0] == name, f"{origin or doc.label} ← {self.mixed[1]}")
                else:
                    values[name] = (None, origin or f"{doc.label}: {name}")
            if values["bf16"][0]:
                result = ("bf16-mixed", values["bf16"][1])
            elif values["fp16"][0]:
                result = ("fp16-mixed", values["fp16"][1])
            elif values["bf16"][0] is False and values["fp16"][0] is False:
                result = ("fp32", f"{doc.label}: bf16 and fp16 disabled")
            else:
                name = "bf16" if values["bf16"][0] is None else "fp16"
                auto = found.get(name, (None, ""))[0] == "auto"
                self.out.unresolved_key(
                    "precision",
                    values[name][1],
                    ("auto" if auto else "no section (DeepSpeed alone: disabled)")
                    + ": accelerate and the HF Trainer fill it from their mixed precision, which no file gives",
                    "auto" if auto else None,
                )
                return None
        return result

    # Hugging Face TrainingArguments / TRL ----------------------------------------------------------------------
    def trainer(self, doc: _Doc) -> None:
        out = self.out
        doc.ignore(*_TRAINER_NO_EFFECT, "gradient_checkpointing_kwargs.use_reentrant", "optim_args", "model_revision")
        self._model(doc, "model_name_or_path")
        if doc.get("model_revision") not in (None, "main"):
            out.set("revision", doc.get("model_revision"), doc.at("model_revision"))
        batch = doc.get("per_device_train_batch_size")
        if batch is not None:
            out.set("batch_size", batch, doc.at("per_device_train_batch_size"))
            self.batch = (batch, doc.at("per_device_train_batch_size"))
        self._accumulation(doc, "gradient_accumulation_steps")
        for key in ("activation_checkpointing", "gradient_checkpointing"):
            if doc.get(key) is not None:
                out.set("grad_checkpointing", "full" if doc.get(key) else "none", doc.at(key))
        every = doc.get("gradient_checkpointing_kwargs.every_n_layers")
        if every is not None:
            out.set("checkpoint_every", every, doc.at("gradient_checkpointing_kwargs.every_n_layers"))
        if doc.get("gradient_checkpointing_kwargs.offload"):
            out.set("activation_offload", True, doc.at("gradient_checkpointing_kwargs.offload"))
        if doc.get("activation_offloading"):
            out.set("activation_offload", True, doc.at("activation_offloading"))
        for key in ("bf16", "fp16"):
            if doc.get(key):
                self.mixed = (key, doc.at(key))
        if doc.get("bf16") is False and doc.get("fp16") in (False, None) and self.mixed is None:
            self.mixed = ("no", doc.at("bf16"))
        for key in ("torch_dtype", "dtype"):
            if doc.get(key) is not None:
                self.loaded = (_text(doc.get(key)), doc.at(key))
        self._hf_optimizer(doc, "optim")
        for key in ("max_length", "max_seq_length"):
            if doc.get(key) is not None:
                out.set("seq_len", doc.get(key), doc.at(key))
        if doc.get("use_liger_kernel"):
            # Liger's model patches turn fused linear cross-entropy on by default (techniques.md §1.4).
            out.set("loss", "fused", doc.at("use_liger_kernel"))
        loss_type = doc.get("loss_type")
        if loss_type is not None:
            mapped = {"chunked_nll": "chunked", "nll": "hf"}.get(_text(loss_type))
            if mapped:
                out.set("loss", mapped, doc.at("loss_type"))
            else:
                out.unknown(doc, "loss_type", loss_type)
        self._attn(doc, "attn_implementation")
        if doc.get("use_flash_attention_2") is True:
            out.set("attn", "flash", doc.at("use_flash_attention_2"))
        quant_type = doc.get("bnb_4bit_quant_type")
        if quant_type not in (None, "nf4"):
            out.unknown(doc, "bnb_4bit_quant_type", quant_type, "hfmem models NF4")
        ds = doc.get("deepspeed")
        if ds:
            self.deepspeed.append(self._load_reference(doc, "deepspeed", ds))
        fsdp = doc.get("fsdp")
        if fsdp:
            self._trainer_fsdp(doc, fsdp)
        # TRL / alignment-handbook ResolvedModel: PEFT and quantization of the base.
        self._peft(
            doc,
            adapter="lora" if doc.get("use_peft") else None,
            adapter_key="use_peft",
            rank_key="lora_r",
            alpha_key="lora_alpha",
            targets_key="lora_target_modules",
            save_key="lora_modules_to_save",
            dora_key="use_dora",
        )
        if doc.get("use_bnb_nested_quant"):
            out.set("double_quant", True, doc.at("use_bnb_nested_quant"))
        if doc.get("trust_remote_code"):
            out.unknown(doc, "trust_remote_code", True, "pass --trust-remote-code yourself")
        if doc.get("torch_compile"):
            out.unknown(doc, "torch_compile", True, "compiled training is not modelled")

    def _trainer_fsdp(self, doc: _Doc, fsdp: Any) -> None:
        words = (
            fsdp.split()
            if isinstance(fsdp, str)
            else [show_value(w).strip('"') for w in fsdp[:16]]
            if isinstance(fsdp, list)
            else []
        )
        self.fsdp = True
        strategies = [w for w in words if w.upper() in FSDP_STRATEGY]
        if strategies:
            name = strategies[0].upper()
            mapped = FSDP_STRATEGY[name]
            why = None if mapped is not None else "FSDP's HYBRID_SHARD_ZERO2 is not modelled"
            self.out.set("fsdp", mapped or name.lower(), doc.at("fsdp"), why)
        if "offload" in words:
            self.out.set("offload", "optimizer+params", doc.at("fsdp") + " offload", _FSDP_OFFLOAD)
        for word in words:
            if word.upper() not in FSDP_STRATEGY and word not in ("offload", "auto_wrap"):
                self.out.unknown(doc, "fsdp", word)
        self._fsdp_config(doc, "fsdp_config", prefix="fsdp_" if doc.fmt == "axolotl" else "")

    def _hf_optimizer(self, doc: _Doc, key: str) -> None:
        name = doc.get(key)
        if name is None:
            return
        if _text(name) not in HF_OPTIMIZERS:
            self.out.unknown(doc, key, name, "hfmem has no such optimizer")
            return
        optimizer, impl = HF_OPTIMIZERS[_text(name)]
        self.out.set("optimizer", optimizer, doc.at(key))
        if impl is not None:
            self.out.set("optimizer_impl", impl, doc.at(key))

    def _attn(self, doc: _Doc, key: str) -> None:
        value = doc.get(key)
        if value is None:
            return
        if _text(value) in ATTN_IMPLEMENTATIONS:
            self.out.set("attn", ATTN_IMPLEMENTATIONS[_text(value)], doc.at(key))
        else:
            self.out.unknown(doc, key, value)

    def _model(self, doc: _Doc, key: str) -> None:
        model = doc.get(key)
        if isinstance(model, str) and model:
            self.out.set("model", model, doc.at(key))

    def _peft(
        self,
        doc: _Doc,
        *,
        adapter: str | None,
        adapter_key: str,
        rank_key: str,
        alpha_key: str,
        targets_key: str,
        save_key: str,
        dora_key: str,
    ) -> None:
        out = self.out
        eight_bit, four_bit = doc.get("load_in_8bit"), doc.get("load_in_4bit")
        if adapter is not None:
            if adapter == "qlora" or four_bit:
                where = doc.at(adapter_key) + (" + load_in_4bit" if four_bit else "")
                out.set("method", "qlora", where)
            elif eight_bit:
                out.set(
                    "method",
                    "lora",
                    doc.at(adapter_key) + " + load_in_8bit",
                    "an 8-bit (LLM.int8) base is not modelled",
                )
            else:
                out.set("method", "lora", doc.at(adapter_key))
        elif four_bit or eight_bit:
            out.unknown(
                doc, "load_in_4bit" if four_bit else "load_in_8bit", True, "a quantized base without an adapter"
            )
        if doc.get(rank_key) is not None:
            out.set("lora_rank", doc.get(rank_key), doc.at(rank_key))
        if doc.get(alpha_key) is not None:
            out.set("lora_alpha", doc.get(alpha_key), doc.at(alpha_key))
        targets = doc.get(targets_key)
        if isinstance(targets, list) and targets and all(isinstance(t, (str, int)) for t in targets):
            out.set("lora_targets", ",".join(str(t) for t in targets), doc.at(targets_key))
        elif isinstance(targets, str) and targets:
            out.set("lora_targets", targets, doc.at(targets_key))
        saved = doc.get(save_key)
        if isinstance(saved, list) and saved and all(isinstance(t, (str, int)) for t in saved):
            out.set("modules_to_save", ",".join(str(t) for t in saved), doc.at(save_key))
        if doc.get(dora_key):
            out.set("dora", True, doc.at(dora_key))
        if doc.get("lora_dropout") is not None:
            out.unknown(doc, "lora_dropout", doc.get("lora_dropout"), "LoRA's input dropout is not modelled")

    # axolotl ---------------------------------------------------------------------------------------------------
    def axolotl(self, doc: _Doc) -> None:
        out = self.out
        doc.ignore(*_AXOLOTL_NO_EFFECT, "gradient_checkpointing_kwargs.use_reentrant")
        self._model(doc, "base_model")
        if doc.get("revision_of_model") is not None:
            out.set("revision", doc.get("revision_of_model"), doc.at("revision_of_model"))
        adapter = doc.get("adapter")
        if adapter is not None and _text(adapter) not in ("lora", "qlora"):
            out.unknown(doc, "adapter", adapter, "hfmem models lora and qlora")
            adapter = None
        self._peft(
            doc,
            adapter=_text(adapter) if adapter else None,
            adapter_key="adapter",
            rank_key="lora_r",
            alpha_key="lora_alpha",
            targets_key="lora_target_modules",
            save_key="lora_modules_to_save",
            dora_key="peft_use_dora",
        )
        if doc.get("lora_target_linear") is True and not doc.get("lora_target_modules"):
            out.set("lora_targets", "all-linear", doc.at("lora_target_linear"))
        if doc.get("sequence_len") is not None:
            out.set("seq_len", doc.get("sequence_len"), doc.at("sequence_len"))
        if doc.get("micro_batch_size") is not None:
            out.set("batch_size", doc.get("micro_batch_size"), doc.at("micro_batch_size"))
            self.batch = (doc.get("micro_batch_size"), doc.at("micro_batch_size"))
        self._accumulation(doc, "gradient_accumulation_steps")
        ckpt = doc.get("gradient_checkpointing")
        if ckpt is not None:
            out.set("grad_checkpointing", "full" if ckpt else "none", doc.at("gradient_checkpointing"))
            if isinstance(ckpt, str) and ckpt.startswith("offload"):
                out.set("activation_offload", True, doc.at("gradient_checkpointing") + f" = {ckpt}")
        if doc.get("activation_offloading"):
            out.set("activation_offload", True, doc.at("activation_offloading"))
        self._hf_optimizer(doc, "optimizer")
        self._axolotl_plugins(doc)
        bf16, fp16 = doc.get("bf16"), doc.get("fp16")
        if bf16 in (True, "auto"):
            self.axolotl_dtype = ("bf16", doc.at("bf16") + (" = auto (a GPU with bf16)" if bf16 == "auto" else ""))
            self.mixed = ("bf16", doc.at("bf16"))
        elif fp16:
            self.axolotl_dtype = ("fp16", doc.at("fp16"))
            self.mixed = ("fp16", doc.at("fp16"))
        elif bf16 is False:
            self.axolotl_dtype = ("fp32", doc.at("bf16"))
            self.mixed = ("no", doc.at("bf16"))
        self._attn(doc, "attn_implementation")
        if doc.get("flash_attention") is True:
            out.set("attn", "flash", doc.at("flash_attention"))
        if doc.get("sdp_attention") is True:
            out.set("attn", "sdpa", doc.at("sdp_attention"))
        attention = doc.get("attention")
        if attention is not None:
            mapped = {"flash": "flash", "sdpa": "sdpa", "eager": "eager"}.get(_text(attention))
            if mapped:
                out.set("attn", mapped, doc.at("attention"))
            else:
                out.unknown(doc, "attention", attention)
        ds = doc.get("deepspeed")
        if ds:
            self.deepspeed.append(self._load_reference(doc, "deepspeed", ds))
        fsdp = doc.get("fsdp")
        if fsdp:
            self._trainer_fsdp(doc, fsdp)
        elif doc.get("fsdp_config"):
            self.fsdp = True
            self._fsdp_config(doc, "fsdp_config", prefix="fsdp_")

    def _axolotl_plugins(self, doc: _Doc) -> None:
        plugins = doc.get("plugins") or []
        names = [show_value(p).strip('"') for p in (plugins[:16] if isinstance(plugins, list) else [plugins])]
        liger = any(p.endswith("LigerPlugin") for p in names)
        cce = any(p.endswith("CutCrossEntropyPlugin") for p in names)
        for p in names:
            if not (p.endswith("LigerPlugin") or p.endswith("CutCrossEntropyPlugin")):
                self.out.unknown(doc, "plugins", p)
        if liger and doc.get("liger_fused_linear_cross_entropy"):
            self.out.set("loss", "fused", doc.at("liger_fused_linear_cross_entropy"))
        if cce and doc.get("cut_cross_entropy"):
            self.out.set("loss", "fused", doc.at("cut_cross_entropy"))
        for key in ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm", "liger_cross_entropy"):
            if doc.get(key):
                self.out.unknown(doc, key, True, "Liger's kernel for it is not modelled")

    # torchtune -------------------------------------------------------------------------------------------------
    def torchtune(self, doc: _Doc) -> None:
        out = self.out
        doc.ignore(*_TORCHTUNE_NO_EFFECT)
        if doc.get("batch_size") is not None:
            out.set("batch_size", doc.get("batch_size"), doc.at("batch_size"))
        self._accumulation(doc, "gradient_accumulation_steps")
        ckpt = doc.get("enable_activation_checkpointing")
        if ckpt is not None:
            out.set("grad_checkpointing", "full" if ckpt else "none", doc.at("enable_activation_checkpointing"))
        if doc.get("enable_activation_offloading"):
            out.set("activation_offload", True, doc.at("enable_activation_offloading"))
        component = doc.get("optimizer._component_")
        if component is not None:
            if _text(component) in TORCHTUNE_OPTIMIZERS:
                name = TORCHTUNE_OPTIMIZERS[_text(component)]
                if name == "sgd" and doc.get("optimizer.momentum"):
                    name = "sgd-momentum"
                out.set("optimizer", name, doc.at("optimizer._component_"))
            else:
                out.unknown(doc, "optimizer._component_", component, "hfmem has no such optimizer")
        doc.get("optimizer.momentum")
        fused = doc.get("optimizer.fused")
        if fused is not None:
            out.set("optimizer_impl", "fused" if fused else "foreach", doc.at("optimizer.fused"))
        foreach = doc.get("optimizer.foreach")
        if foreach is False and fused is not True:
            out.set("optimizer_impl", "loop", doc.at("optimizer.foreach"))
        if doc.get("optimizer_in_bwd"):
            out.set("optimizer_in_backward", True, doc.at("optimizer_in_bwd"))
        loss = doc.get("loss._component_")
        if loss is not None:
            if _text(loss) in TORCHTUNE_LOSSES:
                out.set("loss", TORCHTUNE_LOSSES[_text(loss)], doc.at("loss._component_"))
            else:
                out.unknown(doc, "loss._component_", loss)
        chunks = doc.get("loss.num_output_chunks")
        if chunks is not None:
            out.set("loss_chunks", chunks, doc.at("loss.num_output_chunks"))
        dtype = doc.get("dtype")
        if dtype is not None:
            mapped = {"bf16": "bf16", "fp32": "fp32", "fp16": "fp16"}.get(_text(dtype))
            if mapped:
                self.torchtune_dtype = (mapped, doc.at("dtype"))
            else:
                out.unknown(doc, "dtype", dtype)
        if doc.has("tokenizer.max_seq_len"):
            length = doc.get("tokenizer.max_seq_len")
            if length is None:
                out.unresolved_key(
                    "seq_len", doc.at("tokenizer.max_seq_len"), "null: the data's lengths decide; pass --seq-len", None
                )
            else:
                out.set("seq_len", length, doc.at("tokenizer.max_seq_len"))
        if doc.get("compile"):
            out.unknown(doc, "compile", True, "compiled training is not modelled")
        if doc.get("dataset.packed"):
            out.unknown(doc, "dataset.packed", True, "packed rows are tokenizer.max_seq_len long")
        for section in ("mixed_precision", "profiler"):
            if doc.get(f"{section}.enabled") is False:
                doc.ignore(section)
        self._torchtune_model(doc)

    def _torchtune_model(self, doc: _Doc) -> None:
        component = doc.get("model._component_")
        if component is None:
            return
        out = self.out
        leaf = _text(component).rsplit(".", 1)[-1]
        out.unknown(doc, "model._component_", component, "give the Hugging Face model as MODEL")
        if leaf.startswith("qlora_"):
            out.set("method", "qlora", doc.at("model._component_"))
        elif leaf.startswith("lora_"):
            out.set("method", "lora", doc.at("model._component_"))
        for key, option in (("lora_rank", "lora_rank"), ("lora_alpha", "lora_alpha")):
            if doc.get(f"model.{key}") is not None:
                out.set(option, doc.get(f"model.{key}"), doc.at(f"model.{key}"))
        modules = doc.get("model.lora_attn_modules")
        if isinstance(modules, list) and modules and all(isinstance(m, str) for m in modules):
            names = [TORCHTUNE_MODULES.get(str(m), str(m)) for m in modules]
            origin = doc.at("model.lora_attn_modules")
            if doc.get("model.apply_lora_to_mlp"):
                names += TORCHTUNE_MLP_MODULES
                origin += " + apply_lora_to_mlp"
            if doc.get("model.apply_lora_to_output"):
                names.append("lm_head")
                origin += " + apply_lora_to_output"
            out.set("lora_targets", ",".join(names), origin)
        if doc.get("model.lora_dropout") is not None:
            out.unknown(
                doc, "model.lora_dropout", doc.get("model.lora_dropout"), "LoRA's input dropout is not modelled"
            )

    # the files as a whole --------------------------------------------------------------------------------------
    def _load_reference(self, doc: _Doc, key: str, value: Any) -> _Doc:
        """A DeepSpeed config named by ``key``: an inline mapping, or a path relative to the naming file's folder
        (then to the working directory)."""
        if isinstance(value, dict):
            ref = _Doc(doc.at(key), value, "deepspeed", doc.folder)
        else:
            if not isinstance(value, str):
                raise LaunchConfigError(doc.label, f"{key} is {show_value(value)}, neither a path nor a mapping")
            path = Path(value)
            candidates = [doc.folder / path, path] if not path.is_absolute() else [path]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise LaunchConfigError(doc.label, f"{key} names {value}, which is not a file; fix the path")
            ref = _Doc(value, _parse(found, value), "deepspeed", found.parent)
            if detect_format(ref.data) != "deepspeed":
                raise LaunchConfigError(value, f"named by {doc.at(key)}, is not a DeepSpeed JSON")
        self.docs.append(ref)
        return ref

    def precision(self) -> None:
        """Decide --precision once, from every file (see the module docstring)."""
        out = self.out
        if self.torchtune_dtype is not None:
            out.set("precision", *self.torchtune_dtype)
            return
        if self.deepspeed:
            found = self.deepspeed_precision()
            if found is not None:
                out.set("precision", *found)
            return
        mode, origin = self.mixed if self.mixed is not None else (None, "")
        if self.accelerate_deepspeed is not None and mode in ("bf16", "fp16", "no"):
            # accelerate writes bf16.enabled / fp16.enabled into the DeepSpeed config it builds from
            # mixed_precision (1.15 utils/dataclasses.py::DeepSpeedPlugin.set_mixed_precision).
            precision = {"bf16": "bf16-mixed", "fp16": "fp16-mixed", "no": "fp32"}[mode]
            out.set("precision", precision, f"{origin} with DeepSpeed")
            return
        if self.fsdp and mode in ("bf16", "fp16"):
            # accelerate upcasts trainable parameters to fp32 under FSDP mixed precision, whatever they were
            # loaded in (1.15 accelerator.py::prepare_model, utils/fsdp_utils.py::fsdp2_prepare_model).
            out.set("precision", f"{mode}-mixed", f"{origin} with FSDP")
            return
        if self.axolotl_dtype is not None:
            out.set("precision", *self.axolotl_dtype)
            return
        if mode is None:
            return
        if mode not in ("bf16", "fp16", "no"):
            out.unresolved_key("precision", origin, f"{mode}: hfmem models bf16, fp16 and fp32 training")
            return
        loaded = None
        if self.loaded is not None:
            loaded = _canonical_dtype(self.loaded[0])
            origin = _join(origin, self.loaded[1])
            if loaded is None:
                out.unresolved_key("precision", origin, f"{self.loaded[0]!r} is not a dtype hfmem knows")
                return
        if loaded in ("bf16", "fp16"):
            out.set("precision", loaded, origin)  # autocast over 16-bit weights: everything stays 16-bit
        elif loaded == "fp32":
            out.set("precision", "fp32" if mode == "no" else f"amp-{mode}", origin)
        else:
            how = "for a 16-bit checkpoint" if mode == "no" else f"{mode} for a 16-bit checkpoint or amp-{mode}"
            out.unresolved_key(
                "precision",
                origin,
                "the model's loaded dtype is not in the files (transformers loads the checkpoint's dtype): pass "
                + (f"--precision fp32 or bf16 {how}" if mode == "no" else f"--precision {how} for fp32 weights"),
            )


def _join(first: str, second: str) -> str:
    """Two origins as one: ``"a.yaml: bf16 + torch_dtype"`` when they name the same file."""
    head, _, key = second.partition(": ")
    return f"{first} + {key}" if first.startswith(head + ": ") else f"{first} + {second}"


def _canonical_dtype(name: str) -> str | None:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for a loaded dtype written any way `hfmem.dtypes` knows (any case:
    ``torch_dtype: bfloat16``, ``torch.float16``, ``half``, ``float``), else None (the dtypes hfmem trains in)."""
    known = ALIASES.get(name.lower())
    return known.name if known in (BF16, FP16, FP32) else None


def read_launch_files(paths: Sequence[str | Path]) -> LaunchSettings:
    """Read launch files (and the DeepSpeed files they name) into hfmem settings.

    Args:
        paths: the files, in the order given; each is recognised by its keys (`detect_format`).

    Returns:
        The settings with their origins, the unresolved ``"auto"``s, the keys not understood and those read as
        having no effect on memory.

    Raises:
        LaunchConfigError: a file that cannot be read or parsed, is not a mapping, matches no format, is beyond the
            size limits, or names a DeepSpeed file that is missing; two files that set one option to different
            values, or that shard both with FSDP and with DeepSpeed.

    Example:
        >>> read_launch_files(["ds_config.json"]).settings[0]  # doctest: +SKIP
        LaunchSetting(option='zero_stages', value=2, origin='ds_config.json: zero_optimization.stage', ...)
    """
    run = _Run()
    given: list[_Doc] = []
    for path in paths:
        path = Path(path)
        label = path.name
        data = _parse(path, str(path))
        fmt = detect_format(data)
        if fmt is None:
            raise LaunchConfigError(
                str(path), "matches no launch-config format hfmem reads; give a " + ", ".join(FORMATS.values())
            )
        given.append(_Doc(label, data, fmt, path.parent))
    run.docs.extend(given)
    for doc in given:  # facts first (batch, mixed precision), DeepSpeed files last: they resolve "auto" from them
        if doc.fmt == "deepspeed":
            run.deepspeed.append(doc)
        else:
            getattr(run, doc.fmt)(doc)
    for doc in run.deepspeed:
        run.deepspeed_config(doc)
    run.precision()
    zero, fsdp = run.out.settings.get("zero_stages"), run.out.settings.get("fsdp")
    if zero is not None and fsdp is not None:
        raise LaunchConfigError(
            fsdp.origin.split(": ")[0],
            f"{fsdp.origin} shards with FSDP but {zero.origin} with DeepSpeed ZeRO (or DDP); a run uses one: "
            "drop one file or pass --fsdp or --zero",
        )
    no_effect: list[str] = []
    for doc in run.docs:
        for key, value in _leaves(doc.data):
            if value is None or value == [] or _covered(key, doc.read):
                continue
            if _covered(key, doc.ignored):
                no_effect.append(doc.at(key))
            else:
                run.out.unknown(doc, key, value)
    return LaunchSettings(
        files=tuple((d.label, d.fmt) for d in run.docs),
        settings=tuple(run.out.settings.values()),
        unresolved=tuple(run.out.unresolved),
        not_understood=tuple(dict.fromkeys(run.out.not_understood)),
        no_memory_effect=tuple(no_effect),
    )
