#!/usr/bin/env bash
# The local ECS rehearsal (README, "The local ECS rehearsal"): installs and starts the local SQS server
# (moto, into the project's virtualenv, as scripts/test.sh does), builds the shipped worker
# and the rehearsal, and plays ECS against the worker, printing the timeline. Exits non-zero
# if a check failed. Arguments go to the rehearsal: a part of a scenario's name runs only
# the matching scenarios, e.g. `scripts/rehearse-ecs.sh scale_in`.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/moto.sh
source scripts/moto.sh
moto_up

echo "== cargo build --example worker --example ecs_rehearsal"
cargo build --locked --example worker --example ecs_rehearsal
echo "== the rehearsal (worker: the worker example; SQS server: $HOLDFAST_TEST_SQS_ENDPOINT)"
# Without --worker, the rehearsal runs the worker example built next to it.
cargo run --locked --quiet --example ecs_rehearsal -- "$@"
