#!/usr/bin/env bash
# One GPU session for hfmem's memory validation: the CUDA context, inference (prefill + decode), LoRA steps and
# full training steps (validate_memory.py --cuda), each in its own process with its own time limit, so that one
# failing part does not lose the others. Results go to $OUT (default ./gpu-out).
#
# Run from the repository root on a machine with an NVIDIA GPU:
#     bash benchmarks/gpu_session.sh [PART ...]       # PART: env context infer lora train (default: all, in order)
# If ./.whl holds wheels (transformers, huggingface_hub, ... of the versions hfmem is developed with), they are
# installed into /tmp/site first and put ahead of the system's packages.
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-560}   # stop starting parts after this many seconds (the device's call limit is 600)
LOG="$OUT/session.log"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(env context infer lora train)

say() { echo "== [$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }

if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing $(ls .whl | wc -l) carried wheels into /tmp/site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tail -5 | tee -a "$LOG" || { say "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi

# run NAME SECONDS COMMAND...: one guarded part, its output in the session log.
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt 20 ]; then say "$name: skipped, ${left}s left"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "$name: start (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    say "$name: exit ${PIPESTATUS[0]}"
}

for part in "${parts[@]}"; do
    case $part in
    env)
        run env 60 bash -c 'nvidia-smi; python3 -c "
import sys, torch, transformers, huggingface_hub, peft, accelerate, hfmem
print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda,
      \"transformers\", transformers.__version__, \"huggingface_hub\", huggingface_hub.__version__,
      \"peft\", peft.__version__, \"accelerate\", accelerate.__version__, \"hfmem from\", hfmem.__file__)
print(torch.cuda.get_device_name(), torch.cuda.mem_get_info())
"' ;;
    context)
        run context 60 python3 benchmarks/measure_cuda_context.py --out "$OUT/cuda_context.json" ;;
    infer)
        run infer 200 python3 benchmarks/measure_inference_cuda.py --out "$OUT/inference_h100.json" ;;
    lora)
        run lora 90 python3 benchmarks/measure_lora_cuda.py --out "$OUT/lora_h100.json" ;;
    train)
        run train 300 python3 benchmarks/validate_memory.py --cuda --cuda-only --cuda-layers 0 \
            --models openai-community/gpt2 Qwen/Qwen2.5-0.5B-Instruct meta-llama/Llama-3.2-1B \
            --precisions fp32 bf16-mixed --cuda-shapes 1x1024 4x1024 \
            --cuda-json "$OUT/train_h100.json" --markdown "$OUT/train_h100.md" ;;
    *)
        say "unknown part: $part" ;;
    esac
done
say "done"
