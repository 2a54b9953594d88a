#!/usr/bin/env bash
# The README's throughput figure for holdfast-sqs-server: builds the server and the load
# client (sqs-server/examples/load.rs) in release mode, starts the server on a free loopback
# port, and drains a queue of MESSAGES (default 100,000) with CONSUMERS (default 8) concurrent
# receive + DeleteMessageBatch loops.
# Usage: scripts/bench-sqs-server.sh [MESSAGES] [CONSUMERS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet -p holdfast-sqs-server --bin holdfast-sqs-server --example load
mkdir -p target
target/release/holdfast-sqs-server --port 0 >target/holdfast-sqs-server-bench.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
endpoint=""
for _ in $(seq 1 100); do
    endpoint=$(sed -n 's/^  export AWS_ENDPOINT_URL_SQS=//p' target/holdfast-sqs-server-bench.log | head -n 1)
    if [ -n "$endpoint" ]; then break; fi
    sleep 0.1
done
if [ -z "$endpoint" ]; then
    echo "holdfast-sqs-server did not start; its log:" >&2
    cat target/holdfast-sqs-server-bench.log >&2
    exit 1
fi
echo "== holdfast-sqs-server (release) at $endpoint; $(nproc) cores"
target/release/examples/load "$endpoint" "${1:-100000}" "${2:-8}"
