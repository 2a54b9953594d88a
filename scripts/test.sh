#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the local SQS server (moto, into a
# project-local virtualenv), starts it on a free loopback port, runs formatting, lints,
# docs and every test against it, and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off build: incremental caches would only add gigabytes to the target directory.
export CARGO_INCREMENTAL=0

# shellcheck source=scripts/moto.sh
source scripts/moto.sh
moto_up

echo "== deployment assets (Dockerfile, Copilot manifests and addons)"
scripts/validate-deploy.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "== README.md's Rust blocks, each pasted into a new crate"
python3 scripts/readme-blocks.py
python3 scripts/readme-blocks.py --self-test
# Includes the reliability suite (tests/reliability.rs, tests/shutdown.rs, tests/hostile.rs,
# tests/variables.rs; about 2.5 minutes); scripts/soak.sh runs its longer variants.
echo "== cargo test (SQS server at $HOLDFAST_TEST_SQS_ENDPOINT)"
cargo test --workspace --all-targets --locked -- --test-threads 8
cargo test --workspace --doc --locked
echo "== cargo test --features opentelemetry (the message span joins the sender's trace)"
cargo test --locked --lib --features opentelemetry trace_context

# The same behaviour tests against holdfast-sqs-server, the workspace's own local SQS server
# (HOLDFAST_TEST_SQS_ENDPOINT is the one switch), then two clients that are not Rust.
# shellcheck source=scripts/sqs-server.sh
source scripts/sqs-server.sh
sqs_server_start --as-test-server
trap 'sqs_server_stop; moto_stop' EXIT
echo "== cargo test behaviour + delivery (SQS server: holdfast-sqs-server at $HOLDFAST_TEST_SQS_ENDPOINT)"
cargo test --locked --test behaviour --test delivery -- --test-threads 8 sqs::
cargo test --locked --test hung_calls
sqs_server_stop
scripts/check-sqs-clients.sh
# The peer benchmark's short run (debug builds, a few hundred messages, about a minute): each
# consumer must drain its queue and a busy SIGTERM must lose nothing; no timing is asserted.
echo "== scripts/bench-peers.sh --smoke"
scripts/bench-peers.sh --smoke
