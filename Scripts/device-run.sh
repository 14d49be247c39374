#!/usr/bin/env bash
# device-run.sh STEP... — runs on the GPU machine after `tar xJf nvfp4-device.tar.xz -C /tmp` (see device-build.sh).
# Finds the CUDA libraries (driver from the system, NVRTC and cuBLASLt from a CUDA install or PyTorch's wheels), then
# runs each STEP, logging to $OUT (or /tmp/out):
#   golden        GPU quantizer vs Tests/Fixtures/nvfp4-golden.safetensors (run from the repository root)
#   tiny          forward-check on Tests/Fixtures/tiny-llama (CUDA vs CPU amax)
#   layer         70B-shaped decoder layer: PyTorch vs ours on the same weights and inputs; GEMM peak; copy bandwidth;
#                 NVFP4 quantization of an 8192x28672 matrix
#   e2e           an 8-layer 70B-shaped model (vocab 128256) quantized by coordctl --device cuda with 256 samples
#   e2e-long [N]  issue 15's long benchmark: N 70B-shaped layers (default: as many as the disk holds, at least 20), vocab
#                 128256, 256 samples of 150-1200 tokens (run from the repository root); CUDABenchmarks loaded-check (the
#                 export's GPU quantization of loaded layers vs the CPU quantizer), embed-check (GPU gather vs host) and
#                 layer-bench (cuBLASLt peak) in the same call; the disk's sequential read rate with the page cache
#                 dropped; then coordctl quantize --device cuda from a cold cache with its peak RSS (getrusage) and peak
#                 GPU memory (nvidia-smi every 100 ms), and the FLOP floor of the calibration set at the measured peak
#   smollm2 DIR   quantizer-check and forward-check on the model in DIR, then coordctl quantize --device cpu and cuda
#   daemons DIR   coordd and two `workerd --device cuda` (layers split 15,15 on the one GPU) quantize DIR with the ids of
#                 the smollm2 step; the checkpoint is compared with `coordctl quantize --device cuda`'s (run smollm2 first)
#   metrics       coordd and one `workerd --device cuda` with --metrics-listen quantize the tiny fixture (8 chunks,
#                 slowed) while workerd's /metrics is scraped every 0.25 s: the GPU memory and GPU hidden-state gauges
#                 (run from the repository root)
#   gptq          GPTQ on the GPU: CUDA vs CPU GPTQQuantizer on the same inputs (codes differing, output errors), then a
#                 70B-shaped layer's calibration forward over 256 samples of 150-1200 tokens against its Hessians + GPTQ
#                 (without and with activation order)
#   gpu-checks    (from the repository root) CUDABenchmarks loaded-check and embed-check on Tests/Fixtures/tiny-llama
#   tiny-job      (from the repository root) coordctl quantize W4A4 on Tests/Fixtures/tiny-llama on the CPU and on CUDA:
#                 every tensor but the activation scales byte-identical; then --gpu-memory 1GiB (same bytes) and 4MiB
#                 (refused, naming the limit)
#   gptq-job      (from the repository root) coordctl quantize --algorithm gptq on Tests/Fixtures/tiny-llama with --device
#                 cuda and cpu (and rtn on cuda), the codes compared with each other and with the PyTorch reference
#                 Tests/Fixtures/gptq-tiny-llama-bf16-reference.safetensors (Scripts/reference/compare_gptq_codes.py)
#   modelopt-gpu DIR  (from the repository root, with nvidia-modelopt importable) modelopt's NVFP4 W4A4 recipes
#                 (RECIPES, default: AWQ lite/clip/full, GPTQ, GPTQ layer-wise, local Hessian, max) on the GPU with its
#                 Triton kernels: Scripts/reference/modelopt_nvfp4_recipes.py --device cuda, exports in /tmp/mo-exports
#   gptq-smollm2 DIR  (from the repository root) coordctl quantize --device cuda on DIR with rtn and with GPTQ
#                 (act order, scale search mse), 64 samples; each, and each modelopt export that replacing Linear weights
#                 can judge, by coordctl eval and Scripts/reference/torch_w4a4_eval.py on the same held-out ids
#   quantizer     Benchmarks/cuda/quantizer-variants.sh (from the repository root): quantizer kernel variants, nvcc, ncu
#   recheck       (after smollm2, and daemons if run) each SmolLM2 W4A4 checkpoint judged on its bytes:
#                 Scripts/reference/check_w4a4_scales.py against its calibration.json (exact) and modelopt's digest
#   quality DIR   (from the repository root, with nvidia-modelopt and compressed-tensors importable) the quickstart's
#                 job (W4A4, 64 samples, quality report and gate) on DIR; modelopt's own W4A4 export of DIR on the GPU
#                 with the same 64 samples, judged by `coordctl eval` on the same held-out text; our checkpoint
#                 loaded by transformers + compressed-tensors (Scripts/reference/transformers_load_check.py)
set -uo pipefail
# The unpacked archive; NVFP4_DEVICE_DIR names it when this script runs from a checkout instead.
here=${NVFP4_DEVICE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
out=${OUT:-/tmp/out}
mkdir -p "$out"
paths=""
for name in libnvrtc.so.13 libcublasLt.so.13 libcusolver.so.12 libnvrtc.so.12 libcublasLt.so.12 libcusolver.so.11; do
    found=$(find /usr/local /opt /usr/lib -name "$name" 2>/dev/null | head -1)
    [ -n "$found" ] && paths="$paths:$(dirname "$found")"
done
export LD_LIBRARY_PATH="$here/lib$paths:${LD_LIBRARY_PATH:-}"
export NVFP4_KERNEL_CACHE=/tmp/nvfp4-kernels
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
bench="$here/bin/CUDABenchmarks"
coordctl="$here/bin/coordctl"
while [ $# -gt 0 ]; do
    step=$1; shift
    case "$step" in
        golden) "$bench" golden Tests/Fixtures/nvfp4-golden.safetensors --json "$out/golden.json" 2>&1 | tee "$out/golden.log" ;;
        tiny) "$bench" forward-check Tests/Fixtures/tiny-llama --json "$out/tiny.json" 2>&1 | tee "$out/tiny.log" ;;
        layer)
            python3 "$here/scripts/cuda_layer_bench_torch.py" make /tmp/layer70b --layers 1 --tokens 16384 2>&1 | tee "$out/layer.log"
            python3 "$here/scripts/cuda_layer_bench_torch.py" bench /tmp/layer70b --repeats 3 --json "$out/layer-torch.json" 2>&1 | tee -a "$out/layer.log"
            "$bench" layer-bench /tmp/layer70b 5 --json "$out/layer-ours.json" 2>&1 | tee -a "$out/layer.log" ;;
        e2e)
            python3 "$here/scripts/cuda_layer_bench_torch.py" make /tmp/e2e --layers 8 --vocab 128256 --tokens 2048 --calib 256 2>&1 | tee "$out/e2e.log"
            df -h /tmp | tail -1 | tee -a "$out/e2e.log"
            started=$SECONDS
            "$coordctl" quantize --model /tmp/e2e/model --output /tmp/e2e-out --device cuda --calib /tmp/e2e/calib.jsonl \
                --samples 256 --eval-samples 0 --force 2>&1 | tee -a "$out/e2e.log"
            echo "coordctl quantize --device cuda (8 layers): $((SECONDS - started)) s wall" | tee -a "$out/e2e.log"
            du -sh /tmp/e2e-out | tee -a "$out/e2e.log"
            rm -rf /tmp/e2e-out ;;
        e2e-long)
            log="$out/e2e-long.log"
            avail=$(df --output=avail -B1 /tmp | tail -1)
            layers=$(( (avail - 10 * 1024**3) / (2190 * 1024**2) ))
            if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then layers=$1; shift; fi
            [ "$layers" -lt 20 ] && echo "only room for $layers layers (need 20)" | tee "$log"
            echo "e2e-long: $layers layers; /tmp has $((avail / 1024**3)) GiB free" | tee "$log"
            started=$SECONDS
            python3 "$here/scripts/cuda_layer_bench_torch.py" make /tmp/e2el --layers "$layers" --vocab 128256 --tokens 16384 --calib 256 2>&1 | tee -a "$log"
            echo "made in $((SECONDS - started)) s" | tee -a "$log"
            "$bench" loaded-check Tests/Fixtures/tiny-llama 2>&1 | grep -E "loaded-check|DIFFERENT|error" | tee -a "$log"
            "$bench" loaded-check /tmp/e2el/model 1 2>"$bench" loaded-check /tmp/e2el/model 2 2>&11 | grep -E "loaded-check|DIFFERENT|error" | tee -a "$log"
            "$bench" embed-check /tmp/e2el/model 65536 --json "$out/embed-check.json" 2>&1 | tee -a "$log"
            "$bench" embed-check /tmp/e2el/model 65536 2>&1 | grep -E "kernels|embed-check" | tee -a "$log"
            "$bench" layer-bench /tmp/e2el 1 --json "$out/e2e-long-peak.json" 2>&1 | grep -E "cuBLASLt|layer forward" | tee -a "$log"
            sync
            if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
                echo "page cache dropped" | tee -a "$log"
                dd if=/tmp/e2el/model/model.safetensors of=/dev/null bs=64M count=160 iflag=direct 2>&1 | tail -1 | sed 's/^/disk read (10 GiB, O_DIRECT): /' | tee -a "$log"
                echo 3 > /proc/sys/vm/drop_caches
            else
                echo "cannot drop the page cache (not root): the job reads a warm cache" | tee -a "$log"
                dd if=/tmp/e2el/model/model.safetensors of=/dev/null bs=64M count=160 iflag=direct 2>&1 | tail -1 | sed 's/^/disk read (10 GiB, O_DIRECT): /' | tee -a "$log"
            fi
            nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$out/e2e-long-gpumem.txt" &
            smi=$!
            python3 - "$coordctl" quantize --model /tmp/e2el/model --output /tmp/e2el-out --device cuda --calib /tmp/e2el/calib.jsonl \
                --samples 256 --eval-samples 0 --force <<'PY' 2>&1 | tee -a "$log"
import resource, subprocess, sys, time
started = time.time()
code = subprocess.call(sys.argv[1:])
print(f"coordctl quantize: exit {code}, {time.time() - started:.1f} s wall, peak RSS "
      f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")
PY
            kill $smi
            base=$(sort -n "$out/e2e-long-gpumem.txt" | head -1); peak=$(sort -n "$out/e2e-long-gpumem.txt" | tail -1)
            echo "GPU memory used: $base MiB before the job, peak $peak MiB" | tee -a "$log"
            python3 - /tmp/e2el "$out/e2e-long-peak.json" "$layers" <<'PY' 2>&1 | tee -a "$log"
import json, sys
d, peak_json, layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = json.load(open(f"{d}/model/config.json"))
lengths = [len(json.loads(l)["input_ids"]) for l in open(f"{d}/calib.jsonl")]
w, inter = cfg["hidden_size"], cfg["intermediate_size"]
q = cfg["num_attention_heads"] * (w // cfg["num_attention_heads"]); kv = cfg["num_key_value_heads"] * (w // cfg["num_attention_heads"])
gemm = 2.0 * sum(lengths) * w * (q + 2 * kv + q + 3 * inter)
attention = sum(2.0 * q * n * (n + 1) for n in lengths)
peak = json.load(open(peak_json))["layerBench"]["gemmPeakTFLOPS"]
per_layer = (gemm + attention) / 1e12
print(f"FLOP floor: {sum(lengths)} tokens, {per_layer:.1f} TFLOP per layer, {per_layer / peak:.3f} s per layer at "
      f"{peak:.0f} TFLOP/s; {layers} layers {layers * per_layer / peak:.1f} s")
PY
            du -sh /tmp/e2el/model /tmp/e2el-out | tee -a "$log"
            rm -rf /tmp/e2el-out ;;
        gptq)
            "$bench" gptq-check --json "$out/gptq-check.json" 2>&1 | tee "$out/gptq.log"
            [ -f /tmp/layer70b/hidden.safetensors ] || \
                python3 "$here/scripts/cuda_layer_bench_torch.py" make /tmp/layer70b --layers 1 --tokens 16384 2>&1 | tee -a "$out/gptq.log"
            "$bench" gptq-bench /tmp/layer70b 256 --json "$out/gptq-bench.json" 2>&1 | tee -a "$out/gptq.log"
            "$bench" gptq-bench /tmp/layer70b 256 --act-order --json "$out/gptq-bench-act-order.json" 2>&1 | tee -a "$out/gptq.log" ;;
        gpu-checks)
            # (from the repository root) the export's GPU quantization of loaded layers and the GPU embedding gather
            # against the CPU on the tiny fixture, bit for bit
            "$bench" loaded-check Tests/Fixtures/tiny-llama 2>&1 | grep -E "loaded-check|DIFFERENT|rror" | tee "$out/gpu-checks.log"
            "$bench" embed-check Tests/Fixtures/tiny-llama 4096 2>&1 | grep -E "kernels|embed-check|rror" | tee -a "$out/gpu-checks.log" ;;
        tiny-job)
            # W4A4 round to nearest on the tiny fixture, CPU and CUDA (GPU embedding, export from the loaded weights):
            # every tensor but the activation scales (calibrated on different arithmetic) must be the same bytes.
            for device in cpu cuda; do
                "$coordctl" quantize --model Tests/Fixtures/tiny-llama --output "/tmp/tiny-rtn-$device" --device "$device" \
                    --calib Tests/Fixtures/tiny-llama-calib.jsonl --min-tokens 1 --eval-samples 0 --force --log-level info \
                    > "$out/tiny-rtn-$device.log" 2>&1
                echo "tiny-llama W4A4 on $device: exit $?" | tee -a "$out/tiny-job.log"
            done
            grep -E "gathered in the backend|quantized layer|exported layer 0" "$out/tiny-rtn-cuda.log" | head -3 | tee -a "$out/tiny-job.log"
            python3 - /tmp/tiny-rtn-cpu /tmp/tiny-rtn-cuda <<'PY' 2>&1 | tee -a "$out/tiny-job.log"
import sys, glob
from safetensors import safe_open
def tensors(d):
    out = {}
    for f in sorted(glob.glob(d + "/*.safetensors")):
        with safe_open(f, "pt") as h:
            for k in h.keys(): out[k] = h.get_tensor(k).contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes()
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert a.keys() == b.keys(), "tensor names differ"
scales = [k for k in a if k.endswith("input_scale") or k.endswith("input_global_scale")]
same = [k for k in a if k not in scales and a[k] == b[k]]
differ = [k for k in a if k not in scales and a[k] != b[k]]
print(f"tiny W4A4 cuda vs cpu: {len(same)} tensors byte-identical, {len(differ)} differ {differ[:3]}; {len(scales)} activation scales not compared")
sys.exit(1 if differ else 0)
PY
            for limit in 1GiB 4MiB; do
                "$coordctl" quantize --model Tests/Fixtures/tiny-llama --output "/tmp/tiny-limit-$limit" --device cuda --gpu-memory "$limit" \
                    --calib Tests/Fixtures/tiny-llama-calib.jsonl --min-tokens 1 --eval-samples 0 --force > "$out/tiny-limit-$limit.log" 2>&1
                echo "tiny-llama --gpu-memory $limit: exit $?; $(grep -iE "limit|error|succeeded" "$out/tiny-limit-$limit.log" | tail -2 | tr '\n' ' ')" | tee -a "$out/tiny-job.log"
                cmp -s /tmp/tiny-limit-$limit/model.safetensors /tmp/tiny-rtn-cuda/model.safetensors && echo "  same bytes as without a limit" | tee -a "$out/tiny-job.log"
            done ;;
        gptq-job)
            for run in "cuda gptq" "cpu gptq" "cuda rtn"; do
                read -r device algorithm <<< "$run"
                started=$SECONDS
                "$coordctl" quantize --model Tests/Fixtures/tiny-llama --output "/tmp/tiny-$algorithm-$device" --device "$device" \
                    --calib Tests/Fixtures/tiny-llama-calib.jsonl --min-tokens 1 --eval-samples 0 --algorithm "$algorithm" --force \
                    > "$out/tiny-$algorithm-$device.log" 2>&1
                echo "tiny-llama $algorithm on $device: exit $? in $((SECONDS - started)) s" | tee -a "$out/gptq-job.log"
                tail -3 "$out/tiny-$algorithm-$device.log" | tee -a "$out/gptq-job.log"
            done
            python3 Scripts/reference/compare_gptq_codes.py /tmp/tiny-gptq-cuda /tmp/tiny-gptq-cpu \
                Tests/Fixtures/gptq-tiny-llama-bf16-reference.safetensors /tmp/tiny-rtn-cuda 2>&1 | tee -a "$out/gptq-job.log"
            python3 Scripts/reference/compare_gptq_codes.py /tmp/tiny-gptq-cpu Tests/Fixtures/gptq-tiny-llama-bf16-reference.safetensors \
                2>&1 | tee -a "$out/gptq-job.log" ;;
        quantizer) bash Benchmarks/cuda/quantizer-variants.sh "$out" ;;
        modelopt-gpu)
            model=$1; shift
            recipes=${RECIPES:-"NVFP4_AWQ_LITE_CFG NVFP4_GPTQ_LAYERWISE NVFP4_GPTQ NVFP4_W4A4_WEIGHT_LOCAL_HESSIAN_CFG NVFP4_AWQ_CLIP_CFG NVFP4_DEFAULT_CFG NVFP4_AWQ_FULL_CFG"}
            arguments=()
            for recipe in $recipes; do arguments+=(--recipe "$recipe"); done
            PYTHONUNBUFFERED=1 python3 Scripts/reference/modelopt_nvfp4_recipes.py "$model" \
                Sources/Calibration/Resources/default-calibration.jsonl Sources/Calibration/Resources/heldout-eval.jsonl \
                --device cuda --export-dir /tmp/mo-exports --output "$out/modelopt-gpu.jsonl" "${arguments[@]}" \
                2>&1 | grep -v Warning | tee "$out/modelopt-gpu.log" ;;
        gptq-smollm2)
            model=$1; shift
            for run in "rtn" "gptq --algorithm gptq --gptq-act-order --scale-search mse"; do
                read -r name options <<< "$run"
                started=$SECONDS
                # shellcheck disable=SC2086
                "$coordctl" quantize --model "$model" --output "/tmp/smol-$name-cuda" --samples 64 --device cuda \
                    --eval-samples 0 --force $options > "$out/smol-$name-cuda.log" 2>&1
                echo "SmolLM2 $name on cuda: exit $? in $((SECONDS - started)) s" | tee -a "$out/gptq-smollm2.log"
            done
            "$coordctl" eval --original "$model" --quantized /tmp/smol-rtn-cuda --dump-samples /tmp/heldout-ids.jsonl \
                > /dev/null 2>&1
            for checkpoint in /tmp/smol-rtn-cuda /tmp/smol-gptq-cuda /tmp/mo-exports/*; do
                [ -f "$checkpoint/config.json" ] || continue
                echo "== $checkpoint" | tee -a "$out/gptq-smollm2.log"
                "$coordctl" eval --original "$model" --quantized "$checkpoint" 2>&1 | grep -o 'perplexity [0-9.]* → [0-9.]* ([^)]*)' \
                    | tee -a "$out/gptq-smollm2.log"
                rm -f /tmp/emulated.json
                python3 Scripts/reference/torch_w4a4_eval.py --original "$model" --quantized "$checkpoint" \
                    --samples /tmp/heldout-ids.jsonl --output /tmp/emulated.json > /dev/null 2> /tmp/emulated.log || tail -3 /tmp/emulated.log
                [ -f /tmp/emulated.json ] && python3 -c 'import json; r = json.load(open("/tmp/emulated.json"))
print("PyTorch emulation: perplexity %.2f → %.2f (%+.1f%%)" % (r["original_perplexity"], r["quantized_perplexity"], 100 * r["relative_increase"]))' \
                    | tee -a "$out/gptq-smollm2.log"
            done ;;
        metrics)
            state=/tmp/metrics-run; rm -rf "$state" /tmp/tiny-metrics; mkdir -p "$state"
            C="--coordinator 127.0.0.1:7080"
            "$here/bin/coordd" --listen 127.0.0.1:7080 --state-dir "$state/coordd" --output-root /tmp --metrics-listen 9480 \
                > "$out/metrics-coordd.log" 2>&1 & coordd=$!
            sleep 1
            "$here/bin/workerd" $C --name gpu-a --device cuda --scratch "$state/gpu-a" --metrics-listen 9481 \
                --debug-chunk-delay-ms 300 > "$out/metrics-workerd.log" 2>&1 & worker=$!
            for _ in $(seq 60); do [ "$("$coordctl" $C workers 2>/dev/null | grep -c gpu-a)" = 1 ] && break; sleep 0.5; done
            job=$("$coordctl" $C submit --model "$PWD/Tests/Fixtures/tiny-llama" --output /tmp/tiny-metrics \
                --calib "$PWD/Tests/Fixtures/tiny-llama-calib.jsonl" --min-tokens 1 --chunk-tokens 1 --eval-samples 2 2>&1 | tail -n1)
            echo "job $job" | tee "$out/metrics.log"
            while "$coordctl" $C status "$job" --json 2>/dev/null | grep -q '"state" : "\(queued\|running\)"'; do
                { date +%T.%N; curl -s 127.0.0.1:9481/metrics | grep -E '^nvfp4_(gpu_memory|hidden_state|kept_hidden|worker_layer_tokens)'; } >> "$out/metrics-scrapes.txt"
                sleep 0.25
            done
            "$coordctl" $C status "$job" 2>&1 | tee -a "$out/metrics.log"
            curl -s 127.0.0.1:9481/metrics > "$out/metrics-workerd.txt"; curl -s 127.0.0.1:9480/metrics > "$out/metrics-coordd.txt"
            grep -E '^nvfp4_(gpu_memory|hidden_state_bytes)' "$out/metrics-scrapes.txt" | sort | uniq -c | sort -rn | head -12 | tee -a "$out/metrics.log"
            kill -TERM $worker $coordd; wait ;;
        daemons)
            model=$1; shift
            state=/tmp/daemons; rm -rf "$state" /tmp/smol-daemons; mkdir -p "$state"
            C="--coordinator 127.0.0.1:7070"
            "$here/bin/coordd" --listen 127.0.0.1:7070 --state-dir "$state/coordd" > "$out/coordd.log" 2>&1 & coordd=$!
            sleep 1
            for worker in gpu-a gpu-b; do
                "$here/bin/workerd" $C --name "$worker" --device cuda --scratch "$state/$worker" > "$out/workerd-$worker.log" 2>&1 &
                echo $! >> "$state/pids"
            done
            for _ in $(seq 60); do [ "$("$coordctl" $C workers 2>/dev/null | grep -c gpu-)" = 2 ] && break; sleep 0.5; done
            "$coordctl" $C workers 2>&1 | tee "$out/daemons.log"
            started=$SECONDS
            job=$("$coordctl" $C submit --model "$model" --output /tmp/smol-daemons --calib /tmp/smol-ids.jsonl \
                --samples "${SAMPLES:-64}" --split 15,15 2>&1 | tee -a "$out/daemons.log" | tail -n1)
            "$coordctl" $C status "$job" --watch 2>&1 | tail -n 30 | tee -a "$out/daemons.log"
            echo "coordd + 2 workerd --device cuda: $((SECONDS - started)) s wall" | tee -a "$out/daemons.log"
            kill -TERM $(cat "$state/pids") $coordd; wait
            grep -h -E "CUDA device|resident|calibrated layer|error" "$out"/workerd-*.log | head -20 | tee -a "$out/daemons.log"
            python3 "$here/scripts/compare_cuda_cpu_outputs.py" /tmp/smol-cuda /tmp/smol-daemons 2>&1 | tee -a "$out/daemons.log"
            for file in /tmp/smol-cuda/*.safetensors; do
                cmp "$file" "/tmp/smol-daemons/$(basename "$file")" && echo "identical: $(basename "$file")"
            done 2>&1 | tee -a "$out/daemons.log" ;;
        smollm2)
            model=$1; shift
            "$bench" quantizer-check "$model" --json "$out/smol-quantizer.json" 2>&1 | tee "$out/smollm2.log"
            "$bench" forward-check "$model" --json "$out/smol-forward.json" 2>&1 | tee -a "$out/smollm2.log"
            python3 "$here/scripts/cuda_cpu_torch_amax.py" ids "$model" Sources/Calibration/Resources/default-calibration.jsonl \
                /tmp/smol-ids.jsonl --samples "${SAMPLES:-64}" 2>&1 | tee -a "$out/smollm2.log"
            for device in cpu cuda; do
                rm -rf "/tmp/smol-$device"
                started=$SECONDS
                "$coordctl" quantize --model "$model" --output "/tmp/smol-$device" --device "$device" \
                    --calib /tmp/smol-ids.jsonl --samples "${SAMPLES:-64}" --eval-samples 0 2>&1 | tee -a "$out/smollm2.log"
                echo "coordctl quantize --device $device: $((SECONDS - started)) s wall" | tee -a "$out/smollm2.log"
            done
            python3 "$here/scripts/compare_cuda_cpu_outputs.py" /tmp/smol-cpu /tmp/smol-cuda 2>&1 | tee -a "$out/smollm2.log"
            python3 "$here/scripts/cuda_cpu_torch_amax.py" compare "$model" /tmp/smol-ids.jsonl /tmp/smol-cpu /tmp/smol-cuda \
                "$out/smol-threeway.json" 2>&1 | tee -a "$out/smollm2.log"
            cp /tmp/smol-cpu/calibration.json "$out/smol-cpu-calibration.json"
            cp /tmp/smol-cuda/calibration.json "$out/smol-cuda-calibration.json" ;;
        recheck)
            for checkpoint in /tmp/smol-cpu /tmp/smol-cuda /tmp/smol-daemons; do
                [ -d "$checkpoint" ] || continue
                python3 Scripts/reference/check_w4a4_scales.py "$checkpoint" Tests/Fixtures/smollm2-modelopt-digest.json
            done 2>&1 | tee "$out/recheck.log" ;;
        quality)
            model=$1; shift
            rm -rf /tmp/smol-quality /tmp/modelopt-export
            started=$SECONDS
            "$coordctl" quantize --model "$model" --output /tmp/smol-quality --samples 64 --device "${DEVICE:-cuda}" \
                > "$out/quality-ours.txt" 2> "$out/quality-ours.log"
            echo "coordctl quantize (exit $?): $((SECONDS - started)) s wall" | tee -a "$out/quality-ours.txt"
            cat "$out/quality-ours.txt"
            python3 Scripts/reference/check_w4a4_scales.py /tmp/smol-quality Tests/Fixtures/smollm2-modelopt-digest.json \
                2>&1 | tee "$out/quality-scales.log"
            python3 Scripts/reference/modelopt_reference.py "$model" Sources/Calibration/Resources/default-calibration.jsonl \
                /tmp/modelopt-export "$out/modelopt-gpu-digest.json" --samples 64 --device cuda 2>&1 | tail -3 | tee "$out/quality-modelopt.log"
            "$coordctl" eval --original "$model" --quantized /tmp/modelopt-export --samples 16 2>&1 | tail -4 | tee -a "$out/quality-modelopt.log"
            python3 Scripts/reference/transformers_load_check.py "$model" /tmp/smol-quality \
                Sources/Calibration/Resources/heldout-eval.jsonl --samples 16 --max-tokens 1200 2>&1 | tail -5 | tee "$out/quality-transformers.log" ;;
        *) echo "unknown step $step"; exit 2 ;;
    esac
done
