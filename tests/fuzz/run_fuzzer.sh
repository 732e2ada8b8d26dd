#!/usr/bin/env bash
# Runs a libFuzzer binary, bounded, over a working copy of the seed corpus, so inputs the
# fuzzer finds never land in the source tree. Crashing inputs go to WORK_DIR/artifacts/.
#
#   run_fuzzer.sh FUZZER SEED_DIR WORK_DIR [libFuzzer args, e.g. -runs=N -max_total_time=S]
set -euo pipefail
(($# >= 3)) || { echo "usage: $0 FUZZER SEED_DIR WORK_DIR [libFuzzer args...]" >&2; exit 2; }
fuzzer=$1 seeds=$2 work=$3
shift 3
mkdir -p "$work/corpus" "$work/artifacts"
for seed in "$seeds"/*; do  # refresh the seeds, keep what earlier runs found
  cp "$seed" "$work/corpus/"
done
# libFuzzer exits with 77 on a finding by default, which meson counts as a skipped test.
exec "$fuzzer" -artifact_prefix="$work/artifacts/" -print_final_stats=1 -timeout=10 \
  -error_exitcode=1 -timeout_exitcode=1 "$@" "$work/corpus"
