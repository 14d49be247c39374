#!/usr/bin/env bash
# GPTQ W4A4 on SmolLM2-135M with 64 calibration samples, side by side in one run on this machine: `coordctl quantize`
# with round-to-nearest (the baseline), with GPTQ (act-order, quantized propagation) and with GPTQ plus scale search,
# against llm-compressor's GPTQModifier (Scripts/reference/llmcompressor_gptq_w4a4.py, its `oneshot` time) on the same
# samples; then every checkpoint's held-out perplexity through `coordctl eval` (16 samples of the bundled held-out
# text). Needs a Python with torch, transformers and llmcompressor: PYTHON=/path/to/python.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=${WORK:-$(mktemp -d)}
"$root/Scripts/fetch-smollm2.sh" "$root/.assets/smollm2" >/dev/null
swift build -c release --package-path "$root" --product coordctl >/dev/null
coordctl="$root/.build/release/coordctl"
model="$root/.assets/smollm2"
calib="$root/Sources/Calibration/Resources/default-calibration.jsonl"

run() {  # name, then coordctl options
    local name=$1; shift
    local t0; t0=$(date +%s.%N)
    "$coordctl" quantize --model "$model" --output "$work/$name" --samples 64 --device cpu --eval-samples 0 --force "$@" \
        >"$work/$name.out" 2>"$work/$name.log"
    echo "$(date +%s.%N) - $t0" | bc
}
rtn=$(run rtn)
gptq=$(run gptq --algorithm gptq --gptq-act-order)
both=$(run gptq-mse --algorithm gptq --gptq-act-order --scale-search mse)
t0=$(date +%s.%N)
"$python" "$root/Scripts/reference/llmcompressor_gptq_w4a4.py" "$model" "$calib" "$work/llmcompressor" --samples 64 \
    >"$work/llmcompressor.log" 2>&1
theirs=$(echo "$(date +%s.%N) - $t0" | bc)
oneshot=$(grep -o '"oneshot_seconds": [0-9.]*' "$work/llmcompressor.log" | cut -d' ' -f2)

perplexity() {
    "$coordctl" eval --original "$model" --quantized "$work/$1" 2>/dev/null | grep -o 'perplexity [0-9.]* → [0-9.]* ([^)]*)'
}
echo "| SmolLM2-135M W4A4, 64 samples | wall seconds | held-out perplexity (coordctl eval) |"
echo "|---|---|---|"
echo "| coordctl quantize, rtn (baseline) | $rtn | $(perplexity rtn) |"
echo "| coordctl quantize --algorithm gptq --gptq-act-order | $gptq | $(perplexity gptq) |"
echo "| the same with --scale-search mse | $both | $(perplexity gptq-mse) |"
echo "| llm-compressor GPTQModifier NVFP4 (actorder static) | $theirs (oneshot $oneshot) | $(perplexity llmcompressor) |"
echo "checkpoints in $work"
