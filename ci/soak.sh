#!/usr/bin/env bash
# The long runs, kept out of .ci/run (ci/test.sh): hours, not minutes, on this 2-core machine.
#
#   ci/soak.sh [STEP ...]     default: every step, in this order
#
#   sweep       10,000 seeds over the replication scenarios (ci/big-sweep.sh 2500; resumable)
#   scenarios   1,000 fresh seeds of every YAML scenario in chaos-scenarios/ but the skew-beyond one
#               (scale-many: 50, about a minute each)
#   gossip      SWIM at 1,000 nodes, 20 seeds
#   mutants     the planted-bug catalogue (ci/mutants.sh): every entry must be caught
#   bench       the big WAL, BFS, reopen, cluster-write and master-at-size benchmarks (release, JSON)
#
# Each step prints its seed base or figures; the script exits non-zero if any step failed and
# says which. Set SOAK_SEEDS to change the per-scenario seed count of `scenarios`.
set -uo pipefail
cd "$(dirname "$0")/.."
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(sweep scenarios gossip mutants bench)
SOAK_SEEDS="${SOAK_SEEDS:-1000}"
failed=()
step() { printf '\n=== soak: %s (%ss)\n' "$*" "$SECONDS"; }
for s in "${steps[@]}"; do
  case "$s" in
    sweep)
      step "10,000-seed replication sweep"
      bash ci/big-sweep.sh 2500 || failed+=(sweep) ;;
    scenarios)
      for f in chaos-scenarios/*.yaml; do
        sc=$(basename "$f" .yaml)
        [ "$sc" = skew-beyond-margin ] && continue   # expected to fail; ci/test.sh checks it is caught
        n=$SOAK_SEEDS
        [ "$sc" = scale-many ] && [ "$n" -gt 50 ] && n=50
        step "$sc: $n fresh seeds, 250 per process (a process's memory grows with every seed: 1,000 scale-out seeds in one took 24 GiB)"
        base=$(( $(date +%s) % 1000000 * 1000 ))
        for ((from = base; from < base + n; from += 250)); do
          k=$(( base + n - from )); [ "$k" -gt 250 ] && k=250
          SIM_RELEASE=1 bash ci/sim.sh sweep "$sc" --seed "$from" --seeds "$k" --jobs 2 || { failed+=("$sc"); break; }
        done
      done ;;
    gossip)
      step "SWIM gossip at 1,000 nodes, 20 seeds"
      SIM_RELEASE=1 bash ci/sim.sh sweep gossip-scale-1000 --seeds 20 --jobs 2 || failed+=(gossip) ;;
    mutants)
      step "planted bugs (ci/mutants.sh)"
      bash ci/mutants.sh || failed+=(mutants) ;;
    bench)
      step "benchmarks (release)"
      cargo build -q --release -p sutra || { failed+=(bench); continue; }
      for b in wal bfs reopen cluster-write master; do
        target/release/sutra bench "$b" --json || failed+=("bench-$b")
      done ;;
    *)
      echo "unknown step $s (sweep, scenarios, gossip, mutants, bench)"; exit 2 ;;
  esac
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "soak: FAILED: ${failed[*]}"; exit 1
fi
echo "soak: every step passed (${SECONDS}s)"
