#!/usr/bin/env bash
# quickstart.sh [OUTPUT_DIR] — the main job on an embedded default: fetches SmolLM2-135M (a real Llama-architecture
# model) through the project's own script, then quantizes it to NVFP4 with `coordctl quantize` and the bundled
# calibration set. OUTPUT_DIR defaults to ./smollm2-nvfp4. Extra arguments after OUTPUT_DIR go to coordctl.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-smollm2-nvfp4}
shift || true
"$root/Scripts/fetch-smollm2.sh" "$root/.assets/smollm2"
swift build -c release --product coordctl --package-path "$root"
"$root/.build/release/coordctl" quantize --model "$root/.assets/smollm2" --output "$out" --force --samples 64 "$@"
