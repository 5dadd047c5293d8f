"""ResolvedModel → a real model on PyTorch's meta device → what hfmem measures on it.

The only package that imports torch, transformers, accelerate and peft, and it does so lazily, inside the functions,
so ``hfmem --help``, the formulas and a cached query never pay for them. ``hfmem.api`` imports its modules inside the
functions that need a build. No weights are downloaded or allocated: meta tensors have shapes and dtypes but no
storage. transformers' errors become hfmem errors here and nowhere else.

The data flow, one module per job:

- `config`: config.json → a transformers ``PretrainedConfig`` (`build_transformers_config`);
- `fallback`: a custom-code model → the native architecture its config matches (`native_fallback`);
- `classes`: the class that builds the model, instantiated on the meta device (`_instantiate`);
- `finetune`: peft's adapters on the meta model (`apply_finetune`);
- then, on the model: `inventory` (parameters → `ParameterInventory`, `count_parameters`), `trace` (what a
  training micro-batch saves for backward → `ActivationProfile`, `profile_activations`) and `serve` (the KV cache
  and prefill peak → `InferenceProfile`, `profile_inference`).

`_util` holds the small helpers they share. Each trace is a `trace.Trace` made current by `trace.tracing`, which
also scopes its patches (`cuda_style_dropout`); no module keeps mutable state.
"""
