#!/usr/bin/env bash
# A long seeded sweep over the replication scenarios (issue 4's 10,000-seed run), resumable.
#
#   ci/big-sweep.sh [SEEDS_PER_SCENARIO] [OUT_DIR]     default 2500 per scenario, target/big-sweep
#
# Runs the release simulator in chunks of 250 seeds per process (a process's memory grows with
# every seed it runs), round-robin over primary-crash, network-partition, disk-faults and swarm,
# from base seed 7,000,000 (BIG_SWEEP_BASE to change it). A chunk whose log ends in a summary
# is skipped on a rerun, so an interrupted sweep picks up where it stopped. Prints the totals;
# exits non-zero if any seed failed (each failure's replay command is in its chunk's log).
set -euo pipefail
cd "$(dirname "$0")/.."
per="${1:-2500}"
out="${2:-target/big-sweep}"
base="${BIG_SWEEP_BASE:-7000000}"
chunk=250
scenarios=(primary-crash network-partition disk-faults swarm)
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_SIM:-target/sim}"
RUSTFLAGS="--cfg madsim ${RUSTFLAGS:-}" cargo build -q --release -p sutra-sim
bin="$CARGO_TARGET_DIR/release/sutra-sim"
rounds=$(( (per + chunk - 1) / chunk ))
for round in $(seq 0 $(( rounds - 1 ))); do
  for sc in "${scenarios[@]}"; do
    log="$out/$sc-$round.log"
    if [ -s "$log" ] && grep -q ' passed, ' "$log"; then continue; fi
    n=$(( per - round * chunk )); [ "$n" -gt "$chunk" ] && n=$chunk
    "$bin" "$sc" --seed $(( base + round * chunk )) --seeds "$n" --jobs 2 > "$log" 2>&1 || true
    echo "$(date +%T) $sc chunk $round: $(tail -1 "$log")"
  done
done
read -r passed failed < <(cat "$out"/*.log | awk '/^[0-9]+ passed, [0-9]+ failed$/ {p += $1; f += $3} END {print p + 0, f + 0}')
echo "big sweep: $passed passed, $failed failed (logs in $out)"
[ "$failed" = 0 ]
