#!/usr/bin/env bash
# The checks only a CUDA machine can make (docs/multi-gpu.md, docs/benchmarks.md): bf16 on the GPU, QLoRA with
# bitsandbytes' CUDA kernels, PPO's shared roles on a 4-bit base, and FSDP2 launched through accelerate (one
# process per GPU; on a one-GPU machine this runs the wrapping, sharded checkpoints and resume, not the traffic).
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]
#
# Each check prints "name ok|FAIL seconds" and the last lines of its log; logs go to OUT_DIR (default /tmp/gpu-checks).
# CHECKS="name name ..." runs only those checks.
set -u
OUT_DIR=${1:-/tmp/gpu-checks}
RUNS=$(mktemp -d)
mkdir -p "$OUT_DIR"
export TUNEKIT_CACHE=${TUNEKIT_CACHE:-/tmp/tunekit-gpu-cache} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
QUIET="train.progress=false"

check() {
  local name=$1
  shift
  [[ -z "${CHECKS:-}" || " $CHECKS " == *" $name "* ]] || return 0
  local start=$SECONDS status=ok
  "$@" >"$OUT_DIR/$name.log" 2>&1 || status=FAIL
  echo "== $name $status $((SECONDS - start))s"
  grep -v -e Warning -e warn -e "Loading weights" "$OUT_DIR/$name.log" | tail -n 4
}

sft() { python -m tunekit.recipes.sft "$@" $QUIET; }
fsdp() {
  accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 1 -m tunekit.recipes.sft "$@" $QUIET
}

check sft-fp32 sft output_dir="$RUNS/sft-fp32" max_steps=60
check sft-bf16 sft output_dir="$RUNS/sft-bf16" model.dtype=bf16 train.mixed_precision=bf16 max_steps=60
check sft-qlora sft output_dir="$RUNS/sft-qlora" model.quantization=4bit model.dtype=bf16 max_steps=60
check sft-8bit-paged-adamw sft output_dir="$RUNS/sft-8bit" model.quantization=8bit train.optimizer=paged_adamw_8bit \
  max_steps=30
check dpo-qlora python -m tunekit.recipes.dpo output_dir="$RUNS/dpo-qlora" model.quantization=4bit model.dtype=bf16 \
  max_steps=30 $QUIET
check reward-bf16 python -m tunekit.recipes.reward output_dir="$RUNS/reward" model.dtype=bf16 max_steps=60 $QUIET
check warm-start sft --config recipes/sft/tiny-warmstart.yaml output_dir="$RUNS/warm" max_steps=60
check grpo-bf16 python -m tunekit.recipes.grpo model.path="$RUNS/warm/final" output_dir="$RUNS/grpo" \
  train.mixed_precision=bf16 max_steps=10 $QUIET
# PPO with all four roles on one 4-bit base: the reward model is trained on the same warm start.
check ppo-qlora bash -c "python -m tunekit.recipes.reward --config recipes/reward/tiny-warmstart.yaml \
  model.path=$RUNS/warm/final output_dir=$RUNS/reward-warm max_steps=60 $QUIET && python -m tunekit.recipes.ppo \
  model.path=$RUNS/warm/final reward_model=$RUNS/reward-warm/final model.quantization=4bit model.dtype=bf16 \
  output_dir=$RUNS/ppo max_steps=12 $QUIET"
check fsdp-sft bash -c "$(declare -f fsdp); QUIET=$QUIET; fsdp output_dir=$RUNS/fsdp max_steps=4 train.save_every=2 \
  && fsdp output_dir=$RUNS/fsdp max_steps=6 train.save_every=2 resume=auto && ls $RUNS/fsdp/final"
check fsdp-qlora bash -c "$(declare -f fsdp); QUIET=$QUIET; fsdp output_dir=$RUNS/fsdp-qlora model.quantization=4bit \
  model.dtype=bf16 max_steps=4"
check fsdp-dpo accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 1 -m tunekit.recipes.dpo \
  output_dir="$RUNS/fsdp-dpo" max_steps=4 $QUIET
for run in "$RUNS"/*/metrics.jsonl; do
  echo "$(basename "$(dirname "$run")"): $(tail -n 1 "$run" | cut -c1-220)"
done
