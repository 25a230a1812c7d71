#!/usr/bin/env bash
# Training throughput on a lent GPU (issue 9), one process; the core runs take about 4-5 minutes and
# nothing starts that could end after GPU_CHECK_BUDGET_S (450 s):
#   MiniLM shape (random init), POS, 32 sentences per micro-batch, and BERT-large shape (random
#   init, hidden 1024, 24 layers), RTE pairs within a token budget: plain loops in fp32 and bf16
#   (autocast, fused AdamW) against the pipeline's engine at ZeRO-0 fp32/bf16/fp16, ZeRO-2 bf16
#   (autocast and DeepSpeed's bf16 optimizer), DeepSpeed's bf16 optimizer at ZeRO-0; then, if they
#   fit GPU_CHECK_BUDGET_S (450 s), both encoders compiled (training.compile) against plain bf16.
# From the project root, carry [".whl", ".gpu-data"] (bench/gpu_data.sh and
# ../shared/tools/gpu-wheels.sh fill them):  bash bench/gpu_check.sh
# JSON and logs land in $OUT; the tables come last.
# Dry run on a CPU: GPU_CHECK_DEVICE=cpu GPU_CHECK_STEPS=3 GPU_CHECK_LARGE=tiny PYTHON=.venv/bin/python bash bench/gpu_check.sh
set -uo pipefail
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
python=${PYTHON:-python3}
device=${GPU_CHECK_DEVICE:-cuda}
steps=${GPU_CHECK_STEPS:-60}          # per configuration, the warm-up block included
large_steps=${GPU_CHECK_LARGE_STEPS:-$(( steps * 3 / 5 > 2 ? steps * 3 / 5 : steps ))}
block=${GPU_CHECK_BLOCK:-$(( steps / 5 > 0 ? steps / 5 : 1 ))}
large=${GPU_CHECK_LARGE:-large}       # the big encoder's shape (tiny for a dry run)
budget=${GPU_CHECK_MAX_TOKENS:-16384}  # BERT-large: real+padding tokens per micro-batch
time_budget=${GPU_CHECK_BUDGET_S:-450}  # the optional compiled runs start only if they end within it
started=$(date +%s)

if ls .whl/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  # the DeepSpeed wheel built on the CPU machine records the CPU accelerator
  sed -i "s/accelerator_name='cpu'/accelerator_name='cuda'/" /tmp/site/deepspeed/git_version_info_installed.py
else
  echo "no .whl/: using the installed packages"
fi
export DS_ACCELERATOR=$device MTL_DATA_DIR=$PWD/.gpu-data PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -d .gpu-data/tokenizer ] || { echo ".gpu-data/ is missing: run bench/gpu_data.sh and carry it"; exit 1; }
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,memory.used --format=csv 2>/dev/null
  "$python" -c 'import torch, deepspeed, transformers; print("torch", torch.__version__, "deepspeed", deepspeed.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
} 2>&1  # (stdout only: $OUT brings back at most 8 files, the 4 runs' JSON and logs)

bench() {  # name, time limit (s), arguments
  local name=$1 limit=$2; shift 2
  echo "== $name ($(( $(date +%s) - started )) s in)"
  timeout "$limit" "$python" bench/train_throughput.py --device "$device" --tokenizer .gpu-data/tokenizer \
    --out "$out/$name.json" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || { echo "$name exited $rc; its log ends:"; tail -20 "$out/$name.log"; }
}

bench minilm 150 --encoder-config minilm --tasks pos --micro-batch 32 --steps "$steps" --block "$block" \
  --schedule sequential --examples 2000 --tiny-steps 0 \
  --configs plain_fp32,plain_bf16,plain_bf16_sync,pipeline_fp32,pipeline_fp32_clipping,pipeline_zero2_fp32,pipeline_bf16,pipeline_bf16_clipping,pipeline_bf16_deepspeed,pipeline_zero2_bf16,pipeline_zero2_bf16_deepspeed,pipeline_fp16
bench large 200 --encoder-config "$large" --tasks rte --max-length 128 --max-tokens "$budget" \
  --steps "$large_steps" --block "$block" --schedule sequential --examples 2240 --tiny-steps 0 \
  --configs plain_fp32,plain_bf16,plain_bf16_sync,pipeline_fp32,pipeline_bf16,pipeline_bf16_clipping,pipeline_bf16_deepspeed,pipeline_zero2_bf16,pipeline_zero2_bf16_deepspeed,pipeline_fp16
# torch.compile (its compile happens in the warm-up block), each only if it fits the time budget
optional() {  # name, time limit (s), arguments
  if [ $(( $(date +%s) - started + $2 )) -le "$time_budget" ]; then bench "$@"; else echo "== $1 skipped: no time left"; fi
}
optional minilm_compile 110 --encoder-config minilm --tasks pos --micro-batch 32 --steps "$steps" --block "$block" \
  --schedule sequential --examples 2000 --tiny-steps 0 --configs plain_bf16,pipeline_bf16_compile
optional large_compile 150 --encoder-config "$large" --tasks rte --max-length 128 --max-tokens "$budget" \
  --steps "$large_steps" --block "$block" --schedule sequential --examples 2240 --tiny-steps 0 \
  --configs plain_bf16,pipeline_bf16_compile
echo "== done in $(( $(date +%s) - started )) s"
for name in minilm large minilm_compile large_compile; do
  [ -f "$out/$name.log" ] && { echo; echo "## $name"; sed -n '/^=== table ===/,$p' "$out/$name.log" | tail -n +2; }
done
