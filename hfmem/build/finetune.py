"""peft wrapping of a meta model for a fine-tuning method, adapters as autocast runs them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hfmem.build._util import _first_line
from hfmem.errors import InvalidSetupError
from hfmem.memory.methods import matches_patterns
from hfmem.types import FinetuneSettings

if TYPE_CHECKING:
    from torch import nn

__all__ = ["apply_finetune"]


def apply_finetune(
    torch_model: nn.Module,
    finetune: FinetuneSettings | None,
    model_id: str,
    *,
    trace_dtype: Any = None,
) -> nn.Module:
    """Mark what ``finetune`` trains, on a meta model; returns the model to inventory or trace.

    ``lora``/``qlora``: ``peft.get_peft_model`` with a ``LoraConfig`` built from the settings, inside
    ``init_empty_weights`` so the adapters are meta tensors too; the returned module is peft's
    ``get_base_model()`` (the transformers model with the LoRA layers injected, names unchanged but for
    ``base_layer`` / ``lora_A`` / ``lora_B``). QLoRA's adapters are the same as LoRA's: bitsandbytes swaps the
    frozen base weights for 4-bit ones, which the memory model accounts for. ``freeze``: ``requires_grad`` follows
    ``train_modules``.

    Args:
        trace_dtype: for the activation trace, a 16-bit activation dtype: emulate training under autocast
            (HF Trainer ``bf16=True``). peft keeps the adapters in fp32 and casts each adapted layer's input to
            fp32 (``_cast_input_dtype``); autocast then runs ``lora_A`` in 16-bit on a fresh 16-bit copy of that
            input, which ``lora_A`` saves for backward. The trace casts the adapters to ``trace_dtype`` (the meta
            device cannot autocast) and gives each ``lora_A`` that copy, so it is measured.

    Raises:
        InvalidSetupError: peft rejects the settings (a target module that does not exist…), or a
            ``--train-modules`` pattern matches nothing.
    """
    if finetune is None or finetune.method == "full":
        return torch_model
    if finetune.method == "freeze":
        names = [name for name, _ in torch_model.named_parameters()]
        unmatched = [p for p in finetune.train_modules if not any(matches_patterns(n, (p,)) for n in names)]
        if not finetune.train_modules or unmatched:
            raise InvalidSetupError(
                f"--train-modules {' '.join(unmatched) or '(none given)'} matches no parameter of '{model_id}'; "
                f"pass module names or globs such as 'lm_head', 'model.layers.3?.*' or 're:layers\\.(30|31)\\.' "
                f"(parameters look like '{names[0] if names else ''}')"
            )
        for name, param in torch_model.named_parameters():
            param.requires_grad_(matches_patterns(name, finetune.train_modules))
        return torch_model
    import peft
    from accelerate import init_empty_weights

    targets: Any = None
    names = finetune.lora_targets or ()
    if names == ("all-linear",):
        targets = "all-linear"
    elif len(names) == 1 and names[0].startswith("re:"):  # an adapter's regex: peft re.fullmatch-es module names
        targets = names[0][3:]
    elif names:
        targets = list(names)
    try:
        lora = peft.LoraConfig(
            r=finetune.lora_rank,
            lora_alpha=finetune.lora_alpha if finetune.lora_alpha is not None else 8,
            target_modules=targets,
            modules_to_save=list(finetune.modules_to_save) or None,
            use_dora=finetune.dora,
        )
        with init_empty_weights(include_buffers=True):
            peft_model = peft.get_peft_model(torch_model, lora)
    except Exception as e:  # peft raises ValueError / TypeError / KeyError for settings it rejects
        raise InvalidSetupError(
            f"peft could not add LoRA adapters to '{model_id}' ({type(e).__name__}: {_first_line(e)}); "
            "check --lora-targets / --modules-to-save against the model's module names, or use "
            "--lora-targets all-linear"
        ) from e
    base = peft_model.get_base_model()
    if trace_dtype is not None:
        _emulate_autocast_adapters(base, trace_dtype)
    return base


def _emulate_autocast_adapters(model: nn.Module, dtype: Any) -> None:
    """Adapters in ``dtype``, each ``lora_A`` fed a fresh ``dtype`` copy of its input (see `apply_finetune`)."""
    import torch
    from peft.tuners.lora import LoraLayer

    if dtype == torch.float32:
        return

    def copy_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        (x, *rest) = args
        return (x.to(torch.float32).to(dtype), *rest)

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A.values():
                adapter.to(dtype)
                adapter.register_forward_pre_hook(copy_input)
            for adapter in module.lora_B.values():
                adapter.to(dtype)
            for magnitude in getattr(module, "lora_magnitude_vector", {}).values():
                magnitude.to(dtype)
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype == torch.float32 and "modules_to_save" in name:
            param.data = param.data.to(dtype)
