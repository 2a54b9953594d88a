# Functions to install and run the local SQS-compatible server (moto) on loopback.
# Source this file; it defines moto_install, moto_start, moto_stop and moto_up (all three).

MOTO_VERSION="5.2.5"
VENV="${HOLDFAST_VENV:-.venv}"

moto_install() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "== creating $VENV"
        python3 -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null \
        || [ ! -x "$VENV/bin/moto_server" ]; then
        echo "== installing moto[server]==$MOTO_VERSION into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    fi
}

moto_start() {
    local port
    port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p target
    "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >target/moto.log 2>&1 &
    MOTO_PID=$!
    export HOLDFAST_TEST_SQS_ENDPOINT="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do
        if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('$HOLDFAST_TEST_SQS_ENDPOINT/moto-api/', timeout=1)" 2>/dev/null; then
            echo "== local SQS server (moto $MOTO_VERSION) at $HOLDFAST_TEST_SQS_ENDPOINT"
            return 0
        fi
        if ! kill -0 "$MOTO_PID" 2>/dev/null; then
            echo "moto_server exited; its log:" >&2
            cat target/moto.log >&2
            return 1
        fi
        sleep 0.2
    done
    echo "moto_server did not answer on $HOLDFAST_TEST_SQS_ENDPOINT within 20 s" >&2
    return 1
}

moto_stop() {
    if [ -n "${MOTO_PID:-}" ]; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
        MOTO_PID=""
    fi
}

# Installs and starts the server, and stops it when the calling script exits.
moto_up() {
    moto_install
    moto_start
    trap moto_stop EXIT
}
