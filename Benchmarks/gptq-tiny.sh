#!/usr/bin/env bash
# GPTQ W4A4 on the tiny fixture (Tests/Fixtures/tiny-llama, random weights, its 8 calibration records), side by side in
# one run: `coordctl quantize` with round-to-nearest, GPTQ (act-order) and GPTQ + scale search, and llm-compressor's
# GPTQ (Scripts/reference/llmcompressor_gptq_w4a4.py) on the same records; then each checkpoint's held-out perplexity
# through `coordctl eval` (the bundled held-out text, tokenized by the fixture's tokenizer) and through the independent
# PyTorch emulation Scripts/reference/torch_w4a4_eval.py on the same token ids. The model is random, so the perplexities
# only compare the methods with each other. Needs a Python with torch, transformers and llmcompressor: PYTHON=...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
swift build -c release --package-path "$root" --product coordctl >/dev/null
coordctl="$root/.build/release/coordctl"
model="$root/Tests/Fixtures/tiny-llama"
calib="$root/Tests/Fixtures/tiny-llama-calib.jsonl"

run() {  # name, then coordctl options
    local name=$1; shift
    "$coordctl" quantize --model "$model" --output "$work/$name" --calib "$calib" --min-tokens 1 --device cpu \
        --eval-samples 0 --force "$@" >"$work/$name.out" 2>"$work/$name.log"
}
run rtn
run gptq --algorithm gptq --gptq-act-order
run gptq-mse --algorithm gptq --gptq-act-order --scale-search mse
"$python" "$root/Scripts/reference/llmcompressor_gptq_w4a4.py" "$model" "$calib" "$work/llmcompressor" --min-tokens 1 \
    >"$work/llmcompressor.log" 2>&1

"$coordctl" eval --original "$model" --quantized "$work/rtn" --dump-samples "$work/heldout-ids.jsonl" >/dev/null 2>&1
perplexity() {
    "$coordctl" eval --original "$model" --quantized "$work/$1" 2>/dev/null | grep -o 'perplexity [0-9.]* → [0-9.]* ([^)]*)'
}
emulated() {
    "$python" "$root/Scripts/reference/torch_w4a4_eval.py" --original "$model" --quantized "$work/$1" \
        --samples "$work/heldout-ids.jsonl" 2>/dev/null | "$python" -c 'import json, sys; r = json.load(sys.stdin)
print("perplexity %.2f → %.2f (%+.1f%%)" % (r["original_perplexity"], r["quantized_perplexity"], 100 * r["relative_increase"]))'
}
echo "| tiny-llama W4A4, 8 calibration records | coordctl eval | PyTorch emulation |"
echo "|---|---|---|"
for name in rtn gptq gptq-mse llmcompressor; do
    echo "| $name | $(perplexity $name) | $(emulated $name) |"
done
echo "checkpoints in $work"
