#!/usr/bin/env bash
# Builds and runs the libFuzzer targets in Fuzz/ (swiftc -sanitize=fuzzer,address).
#
#   Scripts/fuzz.sh SECONDS     fuzz each target for SECONDS, then print how many inputs each ran
#   Scripts/fuzz.sh --smoke     CI: replay each target's seed corpus (Fuzz/Corpus/<Target>/) plus a fixed number
#                               of mutations with a fixed seed
#   Scripts/fuzz.sh --build     build the targets only
#
# FUZZ_TARGETS="FrameDecoder StrictJSON" limits the run to those targets. Builds go to .build-fuzz (debug, so
# assertions and overflow checks stay on); the targets are declared only when NVFP4CLUSTER_FUZZ is set, so the
# ordinary build never sees them. Each run fuzzes a working copy of the seeds under .build-fuzz/corpus/<Target>
# (new inputs found stay there for the next run); a crash is written to .build-fuzz/artifacts/<Target>/ and makes
# the script exit non-zero. Reproduce one with: .build-fuzz/debug/Fuzz<Target> <crash file>
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS="FrameDecoder Handshake CallEnvelope BinaryCoder SafeTensorsHeader StrictJSON TokenizerJSON CalibrationLine"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"
SCRATCH=.build-fuzz
SMOKE_RUNS="${FUZZ_SMOKE_RUNS:-2000}"

mode="${1:-}"
case "$mode" in
    --smoke|--build) ;;
    ''|*[!0-9]*) echo "usage: $0 SECONDS | --smoke | --build" >&2; exit 2 ;;
esac

export NVFP4CLUSTER_FUZZ=1
for target in $TARGETS; do
    echo "== building Fuzz$target"
    swift build -c debug --scratch-path "$SCRATCH" --product "Fuzz$target" -Xswiftc -sanitize=fuzzer,address \
        2>&1 | grep -v -e "warning: Cannot export local symbol" -e "^warning: .*Source files for target" || true
    test -x "$SCRATCH/debug/Fuzz$target" || { echo "Fuzz$target did not build" >&2; exit 1; }
done
[ "$mode" = --build ] && exit 0

# Swift's runtime keeps metadata caches for the life of the process; they are not leaks.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
# The Swift runtime's backtracer and ASan's report would both handle a crash; leave it to ASan.
export SWIFT_BACKTRACE="${SWIFT_BACKTRACE:-enable=no}"
summary=()
failed=0
total=0
for target in $TARGETS; do
    artifacts="$SCRATCH/artifacts/$target"
    mkdir -p "$artifacts"
    log="$SCRATCH/fuzz-$target.log"
    common=(-print_final_stats=1 -rss_limit_mb=2048 -timeout=10 -max_len=65536 "-artifact_prefix=$artifacts/")
    if [ "$mode" = --smoke ]; then
        # The seeds themselves, then a fixed, seeded number of mutations of them: the same inputs every run.
        # New inputs go to the first directory, a scratch one, never into the committed seeds.
        scratch_corpus="$SCRATCH/smoke-corpus/$target"
        rm -rf "$scratch_corpus" && mkdir -p "$scratch_corpus"
        args=("${common[@]}" -seed=1 "-runs=$SMOKE_RUNS" "$scratch_corpus" Fuzz/Corpus/"$target")
    else
        corpus="$SCRATCH/corpus/$target"
        mkdir -p "$corpus"
        cp -n Fuzz/Corpus/"$target"/* "$corpus"/ 2>/dev/null || true
        args=("${common[@]}" "-max_total_time=$mode" "$corpus" Fuzz/Corpus/"$target")
    fi
    echo "== Fuzz$target ${args[*]}"
    if "$SCRATCH/debug/Fuzz$target" "${args[@]}" >"$log" 2>&1; then result=ok; else result="CRASH (see $log, $artifacts/)"; failed=1; fi
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    total=$((total + ${runs:-0}))
    [ "$result" = ok ] || tail -40 "$log"
    summary+=("$(printf '%-18s %12s  %s' "$target" "$runs" "$result")")
done
echo
printf '%-18s %12s  %s\n' target inputs result
printf '%s\n' "${summary[@]}"
printf '%-18s %12s\n' total "$total"
exit $failed
