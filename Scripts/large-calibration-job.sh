#!/usr/bin/env bash
# A W4A4 job with a large calibration set through coordd and two workerd on loopback (release binaries):
# SAMPLES random token-id samples of TOKENS tokens each on the tiny fixture model (default 512 x 4096 = 2,097,152
# tokens). Shows that the calibration token ids no longer travel inside loadLayers (which once failed above about
# 1.8M tokens with messageTooLarge). Build first: swift build -c release --product coordd/workerd/coordctl.
#
#   Scripts/large-calibration-job.sh [SAMPLES] [TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES="${1:-512}"
TOKENS="${2:-4096}"
BIN=.build/release
WORK="$(mktemp -d "${TMPDIR:-/tmp}/nvfp4-large-job.XXXXXX")"
PORT="${PORT:-7391}"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 - "$SAMPLES" "$TOKENS" "$WORK/calib.jsonl" <<'PY'
import json, random, sys
samples, tokens, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
random.seed(7)
with open(path, "w") as f:
    for _ in range(samples):
        f.write(json.dumps({"input_ids": [random.randrange(512) for _ in range(tokens)]}) + "\n")
PY
head -c 48 /dev/urandom | base64 > "$WORK/token"
chmod 600 "$WORK/token"
AUTH=(--coordinator "127.0.0.1:$PORT" --token-file "$WORK/token")
"$BIN/coordd" --listen "127.0.0.1:$PORT" --state-dir "$WORK/state" --output-root "$WORK" --token-file "$WORK/token" \
    > "$WORK/coordd.log" 2>&1 &
sleep 1
for worker in w1 w2; do
    "$BIN/workerd" "${AUTH[@]}" --name "$worker" --scratch "$WORK/scratch-$worker" > "$WORK/$worker.log" 2>&1 &
done
sleep 2
start=$(date +%s)
job=$("$BIN/coordctl" submit "${AUTH[@]}" --model Tests/Fixtures/tiny-llama --output "$WORK/out" \
    --calib "$WORK/calib.jsonl" --samples "$SAMPLES" --min-tokens 1 --max-tokens "$TOKENS" --device cpu \
    --eval-samples 0 --split 1,1 | tail -1)
echo "job $job: $SAMPLES samples x $TOKENS tokens"
"$BIN/coordctl" status "$job" "${AUTH[@]}" --watch > /dev/null || true
echo "ended after $(( $(date +%s) - start )) s"
"$BIN/coordctl" status "$job" "${AUTH[@]}"
grep -h "took the calibration token ids" "$WORK/w1.log"
