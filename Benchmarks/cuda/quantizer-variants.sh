#!/usr/bin/env bash
# quantizer-variants.sh [OUT] — on the GPU machine (nvcc and ncu there): builds quantizer_variants.cu for the local GPU,
# runs it (each variant's time, GB/s against the device copy, and every output byte against the production kernel),
# then profiles the production kernel and the fastest candidates with Nsight Compute when it can read the counters.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/tmp/out}
mkdir -p "$out"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
nvcc -O3 -std=c++17 -arch=sm_$arch -Xptxas -v -o /tmp/quantizer_variants "$here/quantizer_variants.cu" 2>&1 \
    | grep -E "Compiling entry|registers" | tee "$out/quantizer-ptxas.log"
/tmp/quantizer_variants 2>&1 | tee "$out/quantizer-variants.log"
if command -v ncu >/dev/null; then
    for kernel in nvfp4_quantize v2_int v4_pairs v5_table; do
        timeout 120 ncu --clock-control none -k "regex:^$kernel\$" -c 1 --section SpeedOfLight --section Occupancy \
            --section LaunchStats --section WarpStateStats --section SchedulerStats /tmp/quantizer_variants >> "$out/quantizer-ncu.log" 2>&1
    done
    grep -E "nvfp4_quantize|v2_int|v4_pairs|v5_table|Throughput|Duration|Achieved Occupancy|Registers Per|Theoretical Occ|Stall|Issued Warp|No Eligible|Eligible Warps|==PROF==|==ERROR==" "$out/quantizer-ncu.log" | head -150
fi
