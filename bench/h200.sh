#!/usr/bin/env bash
# The measurements of the closing notes, in one device call each (run through
# `bash .device/gpu-run.sh bash bench/h200.sh SECTION…`). Each section has its own time limit
# so one slow step cannot eat the call; logs go to $OUT (or /tmp) and a short table is printed.
set -uo pipefail
out=${OUT:-/tmp/h200-out}
mkdir -p "$out"
work=/tmp/mfp4-bench
mkdir -p "$work"
run() { # NAME SECONDS COMMAND…
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "--- $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n "${TAIL:-25}" "$out/$name.log"
}
for section in "$@"; do
  case $section in
    gpu-tests) TAIL=12 run gpu-tests 150 npx vitest run --reporter=dot ;;
    verify-tests) TAIL=15 run verify-tests 200 npx vitest run --reporter=dot test/gemm.test.ts test/gpu.test.ts test/transforms.test.ts test/verify.test.ts test/verify-complete.test.ts test/verify-integrity.test.ts ;;
    selftest) TAIL=3 run selftest 60 native/build/cuda_selftest --quick ;;
    gemm-bench) TAIL=60 run gemm-bench 150 node bin/marlin-fp4.js bench ;;
    gemm-check) TAIL=4 run gemm-check 120 native/build/gemm_bench --check ;;
    convert-moe) run convert-moe 300 node bench/convert.mjs --dir "$work" --preset qwen3-moe-128x24 --reps 2 --variants="--device cuda;--device cpu" --profile --same-bytes ;;
    # libuv's default pool of 4 threads against the CLI's 16 (bin/marlin-fp4.js), on the MoE.
    convert-moe-pool) run convert-moe-pool 200 node bench/convert.mjs --dir "$work" --preset qwen3-moe-128x24 --reps 2 --variants="UV_THREADPOOL_SIZE=4 --device cuda;--device cuda" ;;
    convert-dense) run convert-dense 200 node bench/convert.mjs --dir "$work" --preset llama-8b --reps 2 --variants="--device cuda;--device cpu" ;;
    # 16.5 GB of input and as much output: the other presets' models go first (64 GB disk).
    convert-deepseek) rm -rf "$work"/qwen3-moe-128x24 "$work"/llama-8b "$work"/gpt-oss-20b
      run convert-deepseek 450 node bench/convert.mjs --dir "$work" --preset deepseek-v3-2layers --reps 1 --variants="--device cuda;--device cpu" --profile --same-bytes ;;
    verify-bench) TAIL=30 run verify-bench 250 node bench/verify.mjs --dir "$work/verify" --models llama-8b,moe --devices cuda,cpu --timeout 60 ;;
    convert-gpt-oss) run convert-gpt-oss 130 node bench/convert.mjs --dir "$work" --preset gpt-oss-20b --reps 1 --variants="--device cuda;--device cpu" ;;
    *) echo "unknown section $section" ;;
  esac
done
df -h /tmp | tail -1
