#!/usr/bin/env bash
# The chaos soak, long: 200 deployments over 20 environments on 5 real sshd servers while
# `dropship serve` is killed with SIGKILL and restarted at least 10 times, sshd servers are
# restarted under running steps, the fake GitHub answers 503 and 429 in bursts, and about 5% of
# webhook deliveries are dropped. It is tests/it/soak.rs with bigger numbers (the suite runs a
# short version); it prints the faults injected and what the deployments ended as, and fails
# on any lost, stuck, doubly reported or overlapping deployment, or a step left running.
#
# Usage (as root, with openssh-server installed): bench/soak.sh [RUNS]
#   SOAK_SEED=N repeats a run exactly; SOAK_DEPLOYMENTS, SOAK_ENVIRONMENTS, SOAK_SERVERS and
#   SOAK_KILLS change its size.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
export SOAK_DEPLOYMENTS=${SOAK_DEPLOYMENTS:-200}
export SOAK_ENVIRONMENTS=${SOAK_ENVIRONMENTS:-20}
export SOAK_SERVERS=${SOAK_SERVERS:-5}
export SOAK_KILLS=${SOAK_KILLS:-10}
export CI=true # a missing sshd fails instead of skipping
cargo test --quiet --test it --no-run
for run in $(seq "$runs"); do
  echo "== soak run $run of $runs"
  cargo test --quiet --test it -- --exact soak::a_soak_under_faults_loses_nothing_and_never_overlaps --nocapture 2>&1 \
    | grep -E -A3 '^(soak|\||deployments:|  ended by|test result|thread .* panicked)'
done
