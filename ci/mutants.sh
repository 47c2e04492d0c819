#!/usr/bin/env bash
# The planted-bug catalogue: each ci/mutants/*.patch is a small bug in replication, master,
# gossip or WAL code, with a header naming the scenario that must catch it and a seed budget:
#
#   scenario: primary-crash
#   seeds: 500
#   why: one line on what the bug breaks
#   test: cargo test -q -p sutra-grid --lib core_rules     (optional)
#
# An entry the sweep misses still counts as missed; if it names a `test:`, that command also
# runs in the scratch copy and the report says whether it caught the bug, so a miss the unit
# tests cover is told apart from one nothing covers.
#
# For each entry this copies the working tree to a scratch directory, applies the patch, builds
# the simulator there (one shared target dir, so only the patched crate recompiles), sweeps
# seeds from SEED_BASE (default 1) with --fail-fast, and reports `caught` with the first failing
# seed or `MISSED`. Exits non-zero if any entry was missed or did not apply.
#
#   ci/mutants.sh                 every entry
#   ci/mutants.sh lease fence     only entries whose file name contains one of these words
#   SEEDS=100 ci/mutants.sh       cap every entry's seed budget
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
base="${SEED_BASE:-1}"
target="${MUTANTS_TARGET_DIR:-$root/target/mutants}"
# Mutants are built without -D warnings (a planted bug may leave dead code behind).
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
results=()
missed=0
for patch in ci/mutants/*.patch; do
  name=$(basename "$patch" .patch)
  if [ $# -gt 0 ]; then
    keep=0; for w in "$@"; do case "$name" in *"$w"*) keep=1 ;; esac; done
    [ $keep = 1 ] || continue
  fi
  scenario=$(sed -n 's/^scenario: *//p' "$patch" | head -1)
  seeds=$(sed -n 's/^seeds: *//p' "$patch" | head -1)
  seeds="${SEEDS:-${seeds:-500}}"
  scratch=$(mktemp -d)
  git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$scratch"
  if ! (cd "$scratch" && git apply "$root/$patch"); then
    results+=("$name: DID NOT APPLY"); missed=$((missed + 1)); rm -rf "$scratch"; continue
  fi
  echo "=== $name: $scenario, up to $seeds seeds from $base"
  if ! (cd "$scratch" && CARGO_TARGET_DIR="$target" RUSTFLAGS="--cfg madsim" cargo build -q -p sutra-sim); then
    results+=("$name: DID NOT BUILD"); missed=$((missed + 1)); rm -rf "$scratch"; continue
  fi
  start=$SECONDS
  # Chunks of 50 seeds per process: a process's memory grows with every seed it runs.
  out="" ran=0 first=""
  for ((from = base; from < base + seeds && ${#first} == 0; from += 50)); do
    n=$(( base + seeds - from )); [ "$n" -gt 50 ] && n=50
    chunk=$(cd "$scratch" && "$target/debug/sutra-sim" "$scenario" --seed "$from" --seeds "$n" --jobs 2 --fail-fast 2>&1)
    out+="$chunk"$'\n'
    ran=$(( ran + $(echo "$chunk" | sed -n 's/.*"seeds":\([0-9]*\).*/\1/p' | tail -1) ))
    first=$(echo "$chunk" | sed -n 's/^FAIL [^ ]* seed \([0-9]*\):.*/\1/p' | sort -n | head -1)
  done
  if [ -n "$first" ]; then
    why=$(echo "$out" | grep -m1 "^FAIL [^ ]* seed $first:" | cut -c1-220)
    results+=("$name: caught by $scenario seed $first ($ran seeds, $((SECONDS - start)) s): $why")
  else
    results+=("$name: MISSED by $scenario in $ran seeds from $base ($((SECONDS - start)) s)")
    test_cmd=$(sed -n 's/^test: *//p' "$patch" | head -1)
    if [ -n "$test_cmd" ]; then
      if (cd "$scratch" && CARGO_TARGET_DIR="$target-test" bash -c "$test_cmd" >/dev/null 2>&1); then
        results[-1]+="; its test passed too: \`$test_cmd\`"
      else
        results[-1]+="; caught by its test \`$test_cmd\`"
      fi
    fi
    missed=$((missed + 1))
  fi
  echo "${results[-1]}"
  rm -rf "$scratch"
done
echo
echo "=== planted bugs"
printf '%s\n' "${results[@]}"
echo "$(( ${#results[@]} - missed )) caught, $missed missed"
[ "$missed" = 0 ]
