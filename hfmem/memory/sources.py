"""Where hfmem's constants and measured values come from: one home for every citation.

Formulas attach these to the constants and operands that use them (`hfmem.memory.expr.cite`, `Var.source`), so
``--explain`` derives a component's sources from its formula; the prose of `hfmem.explain` cites the rest.
REFERENCE.md gives the commits read.
"""

from __future__ import annotations

SRC_INVENTORY = (
    "measured: hfmem.build.inventory.count_parameters builds the checkpoint's own class on PyTorch's meta device "
    "(accelerate init_empty_weights, no storage) and sums numel over named_parameters() (tied weights once)"
)
SRC_ZERO = (
    "ZeRO paper (Rajbhandari et al. 2020, arXiv 1910.02054) §3.1: mixed-precision Adam keeps 2Ψ (16-bit weights) "
    "+ 2Ψ (16-bit gradients) + KΨ (fp32 master + Adam moments), K = 12"
)
SRC_ZERO_STAGES = (
    "ZeRO paper Fig. 1: stage 1 partitions the optimizer states (P_os), stage 2 also the gradients (P_os+g), "
    "stage 3 also the parameters (P_os+g+p), each over the N data-parallel GPUs"
)
SRC_DS_FLAT = (
    "DeepSpeed deepspeed/runtime/zero/stage_1_and_2.py (single_partition_of_fp32_groups) and stage3.py "
    "(fp32_partitioned_groups_flat): each GPU's optimizer sees one flat 1-D fp32 partition"
)
SRC_TM101 = "EleutherAI, Transformer Math 101 (blog.eleuther.ai/transformer-math): fp32 weights and gradients 4 bytes"
SRC_TORCH_STATES = (
    "torch/optim/adamw.py and adam.py: state exp_avg, exp_avg_sq = torch.zeros_like(param), so they take the "
    "parameter's dtype"
)
SRC_ADAMW = "torch/optim/adamw.py: AdamW keeps two moments per parameter, exp_avg and exp_avg_sq"
SRC_BNB_8BIT = (
    "bitsandbytes bitsandbytes/optim/optimizer.py @ 95f9af3 (Optimizer2State.init_state): uint8 states, one fp32 "
    "absmax per block of 256 (since 0.44.0, commit aa57bd89; 2048 before); tensors under min_8bit_size = 4096 "
    "elements keep fp32 states"
)
SRC_ADAFACTOR = (
    "transformers/optimization.py Adafactor.step: exp_avg_sq_row / exp_avg_sq_col for ≥ 2-D tensors, a full "
    "exp_avg_sq for 1-D, created after grad.float() (fp32); beta1=None keeps no exp_avg"
)
SRC_LION = "Chen et al. 2023, 'Symbolic Discovery of Optimization Algorithms' (Lion keeps one momentum)"
SRC_SGD = "torch/optim/sgd.py: momentum_buffer (one per parameter) only when momentum > 0"
SRC_PEFT_FP32 = (
    "peft tuners_utils.py _cast_adapter_dtype (get_peft_model autocast_adapter_dtype=True): 16-bit adapter weights "
    "are cast to fp32"
)
SRC_LORA = "Hu et al. 2021, LoRA (arXiv 2106.09685): a rank-r update B·A per adapted linear: r × (in + out) parameters"
SRC_DORA = "Liu et al. 2024, DoRA (arXiv 2402.09353): one trainable magnitude per output feature of each adapted linear"
SRC_QLORA = (
    "Dettmers et al. 2023, QLoRA (arXiv 2305.14314) §3: NF4 base weights in blocks of 64, double quantization of "
    "the absmax in blocks of 256"
)
SRC_BNB_4BIT = (
    "bitsandbytes functional.py quantize_4bit(blocksize=64): two 4-bit codes per byte + one fp32 absmax per 64 "
    "values; double quant: quantize_blockwise(absmax − offset, blocksize=256): uint8 absmax + fp32 per 256 + an "
    "fp32 offset"
)
SRC_DS_EST2 = (
    "DeepSpeed deepspeed/runtime/zero/stage_1_and_2.py estimate_zero2_model_states_mem_needs: GPU 2Ψ + int(18Ψ/N) "
    "('18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit'), CPU × "
    "additional_buffer_factor 1.5"
)
SRC_DS_EST3 = (
    "DeepSpeed deepspeed/runtime/zero/stage3.py estimate_zero3_model_states_mem_needs: GPU 4·largest_layer_params + "
    "int(18Ψ/N), CPU × additional_buffer_factor 1.5"
)
SRC_OFFLOAD = (
    "ZeRO-Offload (Ren et al. 2021, arXiv 2101.06840): the fp32 master, the gradient partition and the optimizer "
    "states live in CPU RAM and CPU-Adam updates them in fp32"
)
SRC_TRACE = (
    "measured: hfmem.build.trace.profile_activations runs the model's own forward with labels on the meta device under "
    "torch.autograd.graph.saved_tensors_hooks; every saved storage is counted once, parameters excluded"
)
SRC_CKPT = (
    "Korthikanti et al. 2022 (arXiv 2205.05198) §4 'full recomputation' (keep each layer's input, recompute one "
    "layer at a time) and §5 'selective recomputation' (recompute the attention core)"
)
SRC_TP_ACT = (
    "Korthikanti et al. 2022, Table 2: tensor parallelism splits what lies between the column- and row-parallel "
    "linears by t; sequence parallelism also splits the rest"
)
SRC_PP_1F1B = (
    "Narayanan et al. 2021 (arXiv 2104.04473) §2.2, Megatron-LM forward_backward_pipelining_without_interleaving: "
    "with 1F1B, stage k runs p − k − 1 warm-up forwards, so min(p − k, m) micro-batches are in flight"
)
SRC_PP_INTERLEAVED = (
    "Megatron-LM forward_backward_pipelining_with_interleaving warm-up count 2(p − k − 1) + (v − 1)p, + 1; "
    "Korthikanti et al. 2022 §4.2.3 (first stage: p micro-batches × (1 + (p − 1)/(p·v)))"
)
SRC_MEGATRON_TP = (
    "Megatron-LM (Shoeybi et al. 2019): column-/row-parallel linears, vocab-parallel embeddings and LM head split "
    "t ways; norms and biases replicated"
)
SRC_LOSS = (
    "transformers/loss/loss_utils.py ForCausalLMLoss: logits = logits.float(), then cross_entropy, which saves its "
    "fp32 log-softmax"
)
SRC_CUDA = (
    "pytorch/pytorch#86509 and #109888 (CUDA context 287 MB–430 MiB with lazy module loading), #120925 (32 MiB "
    "cuBLAS workspace on Hopper): hfmem's default 512 MiB, --cuda-context"
)
SRC_FRAG = (
    "REFERENCE.md §5: PyTorch's caching allocator reserves 5–30 % more than is allocated (torchtune#1185, "
    "cosmos-rl#388); hfmem's default 10 %, --fragmentation"
)
SRC_DDP = (
    "torch DistributedDataParallel docs, gradient_as_bucket_view=False (the default): 'the saved memory size will be "
    "equal to the total gradients size'"
)
SRC_DS_CONFIG = (
    "DeepSpeed deepspeed/runtime/zero/config.py defaults: reduce_bucket_size = 5e8, allgather_bucket_size = 5e8, "
    "stage3_prefetch_bucket_size = 5e7, sub_group_size = 1e9 (elements)"
)
SRC_DS_FP32_GRAD = (
    "DeepSpeed docs/code_docs memory.rst: gradients are converted to fp32 before the weight update ('need the 4 "
    "bytes per gradient')"
)
SRC_DS_GATHER = (
    "DeepSpeed stage3.py estimate_zero3_model_states_mem_needs: 4 × largest_layer_params (16-bit parameters + "
    "gradients of the largest layer, gathered)"
)
SRC_FSDP = (
    "torch FullyShardedDataParallel: forward_prefetch / backward_prefetch=BACKWARD_PRE keep the next unit gathered; "
    "the unit's gradients are unsharded until its reduce-scatter"
)
SRC_FSDP_PP = (
    "torch 2.13 torch/distributed/pipelining/stage.py backward_maybe_with_nosync: an FSDPModule stage runs each "
    "micro-batch's backward with set_reshard_after_backward(False) and set_requires_gradient_sync(False), and "
    "perform_reduce_grad reduce-scatters once after the last; fsdp/_fully_shard/_fsdp_param.py "
    "to_accumulated_grad_if_needed keeps the unsharded gradients in reduce_dtype (torchtitan's default "
    "mixed_precision_reduce = float32); torchtitan models/llama3/infra/parallelize.py apply_fsdp: "
    "reshard_after_forward = not pp_enabled (the 'default' policy)"
)
SRC_FSDP_QLORA = (
    "bitsandbytes docs fsdp_qlora.md ('Quantized data storage': bnb_4bit_quant_storage packs the 4-bit codes in a "
    "float tensor FSDP shards and gathers as stored) and nn/modules.py fix_4bit_weight_quant_state_from_module "
    "(the quant state is kept on the Linear4bit module, outside FSDP's parameters)"
)
SRC_BNB_MATMUL = (
    "bitsandbytes MatMul4Bit.forward: F.dequantize_4bit(B, quant_state).to(A.dtype), a 16-bit copy of the weight "
    "for each matmul"
)
SRC_PEAK = (
    "hfmem.memory.peak: the forward, backward and optimizer-step moments are compared "
    "(docs/formulas.md: 'Peak memory: activations, logits, overheads')"
)
SRC_GRAD_FREED = (
    "torch 2.13.0 Optimizer.zero_grad / nn.Module.zero_grad(set_to_none=True), the default since torch 2.0: "
    "gradients are set to None after each step and re-created by autograd in the next backward; the loops call "
    "it after every optimizer step (transformers 5.24.0 Trainer._inner_training_loop model.zero_grad(); torchtune "
    "recipes/full_finetune_single_device.py@bd2a0fc optimizer.zero_grad(set_to_none=True)); DeepSpeed ZeRO-1/2 "
    "free the 16-bit gradients at step (stage_1_and_2.py free_grad_in_param_list, averaged_gradients[i] = None, "
    "v0.19.6); FSDP's sharded gradients are the flat parameter's .grad, freed the same way"
)
SRC_GRAD_ORDER = (
    "torch autograd engine: ready nodes run newest first (sequence number), so every node of the loss (cross-entropy,"
    " the fp32 upcast, each chunk) runs before the LM head's matmul backward creates the first parameter gradient "
    "(checked on CPU with torch 2.13.0: all chunk logit gradients precede the head's AccumulateGrad)"
)
SRC_GRAD_PERSIST = (
    "gradients that persist through the step: gradient accumulation sums micro-batches into .grad; a pipeline "
    "schedule accumulates its micro-batches; DeepSpeed ZeRO-3 allocates grad_partitions_flat_buffer once at init "
    "(stage3.py, v0.19.6, torch.zeros of every partition's numel)"
)
SRC_KV = (
    "measured: hfmem.build.serve.profile_inference runs the model's own forward with transformers' DynamicCache on the "
    "meta device and reads every cached tensor (elements per token, heads, sliding windows)"
)
SRC_KV_TP = "vLLM's rule: KV heads are split over the tensor-parallel GPUs, and fewer heads than GPUs are replicated"
SRC_KV_DTYPE = "fp8 / int8 KV caches store one byte per element (their per-tensor scales are not counted)"
SRC_PREFILL = (
    "measured: hfmem.build.serve.profile_inference follows every tensor the operators create during one prefill "
    "forward (a dispatch mode) until its last reference dies; the peak of live bytes, parameters and cache excluded"
)
SRC_PREFILL_CHUNK = (
    "vLLM max_num_batched_tokens, tuned around 2048 for chunked prefill: hfmem's default --prefill-chunk"
)
SRC_CAT = "transformers DynamicLayer.update: torch.cat([old, new]) allocates the grown layer beside the old one"
SRC_INT8 = "bitsandbytes LLM.int8 Int8Params: int8 values + one fp32 SCB scale per output row"
SRC_AWQ = (
    "AutoGPTQ QuantLinear / AWQ: qweight (bits-bit values packed in int32), per group of group_size inputs and per "
    "output one fp16 scale and one bits-bit zero (scales, qzeros); GPTQ adds an int32 g_idx per input; "
    "group_size default 128 (BaseQuantizeConfig)"
)
SRC_FP8 = "E4M3 weights with one fp32 scale per tensor; block-wise: transformers FineGrainedFP8Config weight_block_size"
SRC_MXFP4 = "OCP Microscaling Formats (MX) spec v1.0: 4-bit E2M1 values with one 8-bit E8M0 scale per 32"
SRC_QUANT_SKIP = (
    "Hugging Face quantization integrations leave embeddings, the LM head, norms, biases and modules_to_not_convert "
    "in 16 bits"
)
SRC_FP32 = "IEEE 754 binary32 (fp32): 4 bytes per element; CPU-Adam keeps fp32 parameters, gradients and states"
SRC_ADAM_FOREACH = (
    "torch 2.13.0 torch/optim/adam.py _multi_tensor_adam: exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs) "
    "allocates one state-sized tensor per parameter of the (device, dtype) group, all live until the step returns "
    "(docs/techniques.md §4.1; measured on CPU: 1.000 × all parameter bytes)"
)
SRC_ADAM_FUSED = (
    "torch 2.13.0 torch/optim/adam.py _fused_adam → torch._fused_adamw_: the whole update in one kernel, in place; no "
    "temporaries besides 0-d step counters (docs/techniques.md §4.1)"
)
SRC_ADAM_LOOP = (
    "torch 2.13.0 torch/optim/adam.py _single_tensor_adam: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt)"
    ".add_(eps): the sqrt() result and the division's result coexist for one parameter (docs/techniques.md §4.1; "
    "measured on CPU: 2.000 × the largest parameter)"
)
SRC_OPTIM_IN_BWD = (
    "torchtune training/memory.py@bd2a0fc register_optim_in_bwd_hooks: one optimizer per parameter, stepped and "
    "zero_grad()-ed (set_to_none) in register_post_accumulate_grad_hook, so each gradient is freed right after its "
    "own step; recipes refuse gradient accumulation and clipping with it (full_finetune_distributed.py@015b39c)"
)
SRC_BNB_PAGED = (
    "bitsandbytes bitsandbytes/optim/optimizer.py@95f9af3 Optimizer8bit.get_state_buffer: with is_paged, the states "
    "of tensors with ≥ 1e5 elements come from F.get_paged → cudaMallocManaged (CUDA managed memory, outside PyTorch's "
    "allocator statistics); smaller tensors' states and the 8-bit absmax are ordinary CUDA tensors; "
    "Optimizer2State.init_state: optim_bits=32 states are torch.float32 whatever the parameter dtype"
)
SRC_AUTOCAST_CACHE = (
    "PyTorch aten/src/ATen/autocast_mode.cpp@008ec6b cached_cast: the 16-bit casts of fp32 leaf weights that require "
    "grad are cached until autocast exits at the end of the forward (torch.is_autocast_cache_enabled() is True by "
    "default); docs/techniques.md §5"
)
SRC_AUTOCAST_LISTS = (
    "PyTorch docs/source/amp.md@4e0ff98 'CUDA Ops that can autocast to float16 / float32': matmul, linear, bmm, "
    "conv… run in 16-bit; softmax, log_softmax, layer_norm, cross_entropy, exp, pow, rsqrt, sum… in fp32; others in "
    "their inputs' (promoted) dtype"
)
SRC_CHUNKED_LOSS = (
    "torchtune torchtune/modules/loss/ce_chunked_output_loss.py @ bd2a0fc "
    "CEWithChunkedOutputLoss(num_output_chunks=8): each chunk's logits are upcast "
    "(logits.float()) and cross_entropy'd on their own, so each keeps its fp32 log-softmax "
    "but only one chunk's fp32 copy and gradients exist at a time; the recipe deletes the logits before "
    "backward (recipes/full_finetune_single_device.py @ 1814feb17 _loss_step: 'del logits')"
)
SRC_FUSED_LOSS = (
    "Liger-Kernel src/liger_kernel/ops/fused_linear_cross_entropy.py @ ead96b6 fused_linear_cross_entropy_forward: "
    "logits per chunk of next_pow2(⌈T / ⌈V / h⌉⌉) tokens, gradients computed in the forward; save_for_backward("
    "grad_input [T × h], grad_weight [V × h] when the head is trained); loss_1d fp32 per token. Cut Cross-Entropy "
    "(apple/ml-cross-entropy @ d42911f cce.py) keeps less: an fp32 log-sum-exp per token"
)
SRC_OPS_SAC = (
    "torchtitan torchtitan/distributed/activation_checkpoint.py @ 1f029641 _apply_op_sac._custom_policy and HEAD "
    "b5bcd76 SelectiveAC: save the outputs of compute-intensive ops (mm, addmm, bmm, attention kernels, max, topk) "
    "except every second mm/linear, counted per checkpointed block; the block's input is kept as in full AC"
)
SRC_CKPT_EVERY = (
    "transformers modeling_utils.py (5.24.0) _set_gradient_checkpointing: gradient_checkpointing = layer_index % "
    "every_n_layers == 0, layers counted from 0 (torchtitan/torchtune count from 1: floor(L/k) layers)"
)
SRC_ACT_OFFLOAD = (
    "torchtune torchtune/training/_activation_offloading.py @ bd2a0fc OffloadActivations(max_fwd_stash_size=5, "
    "min_offload_size=1024): every tensor saved in forward moves to pinned CPU RAM except the output head's "
    "(NoOpManager around model.output); up to 5 stay on the GPU until their copy ends, and in backward a tensor "
    "comes back just before the node that needs it"
)
