#!/usr/bin/env bash
# The peer benchmark (README, "Performance" / "Against peers"): holdfast against sqs-consumer
# (npm, single-message and batch mode) and a bare aws-sdk-sqs loop, on the workspace's own
# SQS server. Installs the peers itself (npm ci from scripts/peers/package-lock.json), builds
# the server and the Rust consumers in release mode, starts the server on a free loopback port
# and runs scripts/bench_peers.py, which preloads each queue from a separate process, drains it
# with each consumer in turn (interleaved, 3 runs each) and prints medians. Takes 10-20
# minutes; needs Python 3, Node 20+ and npm.
#
# Usage: scripts/bench-peers.sh [--smoke] [--messages N] [--runs R] [--out FILE.json] [--only SECTION]
#   --only    noop, 50ms, rss or sigterm: one section of the benchmark (repeatable); or
#             instructions (not in the default run; needs valgrind): instructions a message of
#             holdfast and the bare loop, counted by callgrind, drains of N less drains of N/4
#   --smoke   a few hundred messages, one run, debug builds, no timing assertion: fails only
#             when a consumer does not drain its queue or loses a message at SIGTERM (the
#             test suite runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
for arg in "$@"; do
    if [ "$arg" = --smoke ]; then
        profile=debug
        set -- --messages 300 "$@"
    fi
done

if [ ! -d scripts/peers/node_modules/sqs-consumer ]; then
    echo "== installing sqs-consumer and @aws-sdk/client-sqs (npm ci)"
    (cd scripts/peers && npm ci --no-audit --no-fund --silent)
fi

echo "== building the server and the consumers ($profile)"
if [ "$profile" = release ]; then
    # One package at a time, each with its examples (so with its dev-dependencies).
    cargo build --locked --quiet --release --example bench_worker --example sqs_loop
    cargo build --locked --quiet --release -p holdfast-sqs-server --bin holdfast-sqs-server --example preload
else
    # The features `cargo test --workspace --all-targets` builds with: nothing new to compile.
    cargo build --locked --quiet --workspace --bins --examples
fi

# shellcheck source=scripts/sqs-server.sh
source scripts/sqs-server.sh
SQS_SERVER_BIN="target/$profile/holdfast-sqs-server" sqs_server_start
trap sqs_server_stop EXIT

echo "== $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
python3 scripts/bench_peers.py "$HOLDFAST_SQS_SERVER_ENDPOINT" --bin-dir "target/$profile" \
    --node-dir scripts/peers "$@" || status=$?
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$status"
