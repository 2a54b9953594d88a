#!/usr/bin/env bash
# Checks holdfast-sqs-server with two clients that are not Rust: boto3 (installed into the
# project's virtualenv, $HOLDFAST_VENV or .venv) and the AWS SDK for JavaScript v3 (installed
# from scripts/clients/js/package-lock.json). Starts the server on a free loopback port and
# stops it at exit. Needs Python 3 with venv and pip, Node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

BOTO3_VERSION="1.44.8"
VENV="${HOLDFAST_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import boto3, sys; sys.exit(boto3.__version__ != '$BOTO3_VERSION')" 2>/dev/null; then
    echo "== installing boto3==$BOTO3_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "boto3==$BOTO3_VERSION"
fi
if [ ! -d scripts/clients/js/node_modules/@aws-sdk/client-sqs ]; then
    echo "== installing @aws-sdk/client-sqs (npm ci)"
    (cd scripts/clients/js && npm ci --no-audit --no-fund --silent)
fi

# shellcheck source=scripts/sqs-server.sh
source scripts/sqs-server.sh
sqs_server_start
trap sqs_server_stop EXIT

echo "== boto3 against holdfast-sqs-server"
"$VENV/bin/python" scripts/clients/boto3_check.py "$HOLDFAST_SQS_SERVER_ENDPOINT"
echo "== AWS SDK for JavaScript v3 against holdfast-sqs-server"
(cd scripts/clients/js && node check.mjs "$HOLDFAST_SQS_SERVER_ENDPOINT")
