#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the local SQS server (moto, into a
# project-local virtualenv), starts it on a free loopback port, runs formatting, lints,
# docs and every test against it, and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/moto.sh
source scripts/moto.sh
moto_up

echo "== deployment assets (Dockerfile, Copilot manifests and addons)"
scripts/validate-deploy.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --all-features --locked -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
echo "== README.md's Rust blocks, each pasted into a new crate"
python3 scripts/readme-blocks.py
python3 scripts/readme-blocks.py --self-test
# Includes the reliability suite (tests/reliability.rs, tests/shutdown.rs, tests/hostile.rs,
# tests/variables.rs; about 2.5 minutes); scripts/soak.sh runs its longer variants.
echo "== cargo test (SQS server at $HOLDFAST_TEST_SQS_ENDPOINT)"
cargo test --all-targets --locked -- --test-threads 8
cargo test --doc --locked
