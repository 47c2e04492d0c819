#!/usr/bin/env bash
# Simulation runner. Builds the simulator (RUSTFLAGS="--cfg madsim", its own target dir so it
# never overwrites the real binaries) and runs it.
#
#   ci/sim.sh run SCENARIO --seed N [--trace]      replay one seed (prints its report)
#   ci/sim.sh sweep SCENARIO --seeds K [--jobs J]  K fresh seeds from a random base (printed);
#                                                  add --seed N to start at N instead
#   ci/sim.sh sweep SCENARIO --budget-s S          fresh seeds until S wall seconds are spent;
#                                                  prints how many ran (--seeds K caps them)
#   ci/sim.sh build                                build the simulator only
#   ci/sim.sh test                                 the simulator's unit tests (scenario files,
#                                                  swarm drawing every step)
#   ci/sim.sh regressions                          every seed in chaos-scenarios/regressions.txt
#   ci/sim.sh ... --check-determinism N            also run the first N seeds twice and compare
#
# Every failing seed is printed with the exact command that replays it; exit status is non-zero
# on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_SIM:-target/sim}"
export RUSTFLAGS="--cfg madsim ${RUSTFLAGS:-}"
profile_flag=()
[ "${SIM_RELEASE:-0}" = 1 ] && profile_flag=(--release)
cargo build -q -p sutra-sim "${profile_flag[@]}"
bin="$CARGO_TARGET_DIR/$([ "${SIM_RELEASE:-0}" = 1 ] && echo release || echo debug)/sutra-sim"

verb="${1:-}"
case "$verb" in
  run)
    shift
    exec "$bin" "$@" --verbose ;;
  sweep)
    shift
    exec "$bin" "$@" ;;
  regressions)
    shift
    exec "$bin" regressions "$@" ;;
  build)
    exit 0 ;;
  test)
    shift
    exec cargo test -q -p sutra-sim "${profile_flag[@]}" "$@" ;;
  ""|-h|--help)
    sed -n '2,18p' "$0"; exit 2 ;;
  *)
    exec "$bin" "$@" ;;
esac
