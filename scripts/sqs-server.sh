# Functions to build and run holdfast-sqs-server (the workspace's local SQS server) on a free
# loopback port. Source this file; it defines sqs_server_start and sqs_server_stop.
# sqs_server_start exports HOLDFAST_SQS_SERVER_ENDPOINT; pass `--as-test-server` to also point
# HOLDFAST_TEST_SQS_ENDPOINT (the integration tests' server) at it. With SQS_SERVER_BIN set
# (a binary the caller built, e.g. a release one for a benchmark), that binary runs instead of
# a debug build.

sqs_server_start() {
    local bin="${SQS_SERVER_BIN:-}"
    if [ -z "$bin" ]; then
        cargo build --locked --quiet -p holdfast-sqs-server
        bin=target/debug/holdfast-sqs-server
    fi
    mkdir -p target
    local log=target/holdfast-sqs-server.log
    "$bin" --host 127.0.0.1 --port 0 >"$log" 2>&1 &
    SQS_SERVER_PID=$!
    local endpoint=""
    for _ in $(seq 1 100); do
        endpoint=$(sed -n 's/^export AWS_ENDPOINT_URL_SQS=//p; s/^  export AWS_ENDPOINT_URL_SQS=//p' "$log" | head -n 1)
        if [ -n "$endpoint" ]; then
            break
        fi
        if ! kill -0 "$SQS_SERVER_PID" 2>/dev/null; then
            echo "holdfast-sqs-server exited; its log:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    if [ -z "$endpoint" ]; then
        echo "holdfast-sqs-server did not start within 10 s; its log:" >&2
        cat "$log" >&2
        return 1
    fi
    export HOLDFAST_SQS_SERVER_ENDPOINT="$endpoint"
    if [ "${1:-}" = "--as-test-server" ]; then
        export HOLDFAST_TEST_SQS_ENDPOINT="$endpoint"
    fi
    echo "== holdfast-sqs-server at $endpoint"
}

sqs_server_stop() {
    if [ -n "${SQS_SERVER_PID:-}" ]; then
        kill "$SQS_SERVER_PID" 2>/dev/null || true
        wait "$SQS_SERVER_PID" 2>/dev/null || true
        SQS_SERVER_PID=""
    fi
}
