#!/usr/bin/env bash
# The README's figures: starts the local SQS server, builds the release worker binary, and
# runs the benches.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/moto.sh
source scripts/moto.sh
moto_up
cargo build --release --locked --example worker
export HOLDFAST_WORKER_BIN="$PWD/target/release/examples/worker"
cargo bench --locked --bench worker "$@"
