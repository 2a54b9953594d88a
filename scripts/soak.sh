#!/usr/bin/env bash
# Longer runs of the reliability suite (tests/reliability.rs): RELIABILITY_SCALE times the
# messages and kills of the CI run (default 5: 2,000 jobs and 60 stops in the SIGTERM loop,
# 1,500 jobs and 50 kills in the SIGKILL loop, 1,000 jobs through the fault proxy), against
# the local SQS server it starts; RELIABILITY_FAULT_RATE (default 0.2) sets the proxy's fault
# rate. Usage: scripts/soak.sh [SCALE] [TEST NAME FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/moto.sh
source scripts/moto.sh
moto_up

export RELIABILITY_SCALE="${1:-5}"
echo "== reliability suite at scale $RELIABILITY_SCALE (SQS server at $HOLDFAST_TEST_SQS_ENDPOINT)"
cargo test --locked --test reliability -- ${2:+"$2"}
