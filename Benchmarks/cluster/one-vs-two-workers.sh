#!/usr/bin/env bash
# one-vs-two-workers.sh [SAMPLES] — end-to-end time of a SmolLM2 W4A4 job: `coordctl quantize` (embedded),
# coordd + one workerd, and coordd + two workerd (15 + 15 layers), all on this machine over loopback, measured in
# one run. Checks that the three outputs are byte-identical. Prints a table.
# Needs: swift (release build), libopenblas, python3 (for the SmolLM2 fetch on first use).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
samples=${1:-64}
cd "$root"
swift build -c release --product coordd >/dev/null
swift build -c release --product workerd >/dev/null
swift build -c release --product coordctl >/dev/null
bin="$root/.build/release"
Scripts/fetch-smollm2.sh >/dev/null
model="$root/.assets/smollm2"
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]:-}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
head -c 32 /dev/urandom | base64 > "$work/token" && chmod 600 "$work/token"
common=(--model "$model" --samples "$samples" --device cpu --eval-samples 0)

now() { date +%s.%N; }
elapsed() { python3 -c "import sys,time; print(time.time() - float(sys.argv[1]))" "$1"; }

t0=$(now)
"$bin/coordctl" quantize "${common[@]}" --output "$work/embedded" >/dev/null 2>"$work/embedded.log"
t_embedded=$(elapsed "$t0")

run_cluster() {  # run_cluster NAME WORKERS SPLIT
    local name=$1 count=$2 split=$3
    local state="$work/state-$name"
    "$bin/coordd" --listen 127.0.0.1:0 --state-dir "$state" --token-file "$work/token" >/dev/null 2>"$work/coordd-$name.log" &
    pids+=($!)
    local address=""
    for _ in $(seq 100); do
        address=$(grep -o 'address=[0-9.:]*' "$work/coordd-$name.log" | head -n1 | cut -d= -f2 || true)
        [ -n "$address" ] && break
        sleep 0.1
    done
    for i in $(seq "$count"); do
        "$bin/workerd" --coordinator "$address" --name "w$i" --token-file "$work/token" \
            --scratch "$work/scratch-$name-$i" >/dev/null 2>"$work/workerd-$name-$i.log" &
        pids+=($!)
    done
    local ctl=("$bin/coordctl" --coordinator "$address" --token-file "$work/token")
    for _ in $(seq 100); do
        [ "$("${ctl[@]}" workers --json | grep -o '"alive"' | wc -l)" -ge "$count" ] && break
        sleep 0.1
    done
    local start job
    start=$(now)
    job=$("${ctl[@]}" submit "${common[@]}" --output "$work/$name" --split "$split" | tail -n1)
    "${ctl[@]}" status "$job" --watch --json >/dev/null
    elapsed "$start" > "$work/time-$name"
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    pids=()
}

# Not in $(...): the daemons started inside would hold the substitution open.
run_cluster one 1 30
run_cluster two 2 15,15
t_one=$(cat "$work/time-one")
t_two=$(cat "$work/time-two")

same() { diff -rq "$work/embedded" "$work/$1" >/dev/null && echo yes || echo NO; }
printf '\nSmolLM2-135M, W4A4, %s samples, CPU, %s cores (%s)\n\n' "$samples" "$(nproc)" "$(uname -m)"
printf '| run | wall time (s) | output identical to embedded |\n|---|---:|---|\n'
printf '| coordctl quantize (embedded) | %.1f | — |\n' "$t_embedded"
printf '| coordd + 1 workerd (30 layers) | %.1f | %s |\n' "$t_one" "$(same one)"
printf '| coordd + 2 workerd (15 + 15 layers) | %.1f | %s |\n' "$t_two" "$(same two)"
