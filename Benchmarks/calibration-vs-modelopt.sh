#!/usr/bin/env bash
# End-to-end W4A4 quantization of SmolLM2-135M with 64 calibration samples: `coordctl quantize` against modelopt's
# mtq.quantize + export_hf_checkpoint on the same machine, in the same run, then our calibration's GFLOP/s beside
# OpenBLAS's sgemm rate. Needs a Python with torch, transformers and nvidia-modelopt: PYTHON=/path/to/python.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$root/Scripts/fetch-smollm2.sh" "$root/.assets/smollm2" >/dev/null
swift build -c release --package-path "$root" --product coordctl >/dev/null
swift build -c release --package-path "$root" --product CalibrationBenchmarks >/dev/null
calib="$root/Sources/Calibration/Resources/default-calibration.jsonl"

t0=$(date +%s.%N)
"$root/.build/release/coordctl" quantize --model "$root/.assets/smollm2" --output "$work/ours" --samples 64 --device cpu 2>"$work/ours.log"
t1=$(date +%s.%N)
"$python" "$root/Scripts/reference/modelopt_reference.py" "$root/.assets/smollm2" "$calib" "$work/modelopt" "$work/digest.json" --samples 64 >"$work/modelopt.log" 2>&1
t2=$(date +%s.%N)
ours=$(echo "$t1 - $t0" | bc); theirs=$(echo "$t2 - $t1" | bc)
echo "| SmolLM2-135M, 64 samples, W4A4 | wall seconds |"
echo "|---|---|"
echo "| coordctl quantize (ours) | $ours |"
echo "| modelopt mtq.quantize + export (BF16 forward) | $theirs |"
grep -E "^modelopt:" "$work/modelopt.log" || true
echo
"$root/.build/release/CalibrationBenchmarks" "$root/.assets/smollm2" 64 | grep -E "^\|"
