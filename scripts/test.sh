#!/usr/bin/env bash
# The whole check, as CI runs it: formatting, lints, unit tests, the node's build,
# then the end-to-end suite against the freshly built binary.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -k slixmpp      # extra arguments go to pytest
#
# Needs the Python packages of tests/integration/requirements.txt (.ci/run installs
# them into a virtualenv and sets PYTHON); PYTHON defaults to python3.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PYTHON="${PYTHON:-python3}"
failed=()

step() {
    local name="$1"
    shift
    echo
    echo "==> ${name}: $*"
    local start=$SECONDS
    if "$@"; then
        echo "==> ${name}: ok ($((SECONDS - start)) s)"
    else
        echo "==> ${name}: FAILED ($((SECONDS - start)) s)"
        failed+=("${name}")
        return 1
    fi
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step unit cargo test --workspace
# Every binary the end-to-end suite runs (the node and the load generator), with the same
# feature set as the unit tests so that nothing is compiled twice.
if step build cargo build --workspace --bins; then
    if ! "$PYTHON" -c "import pytest, pytest_asyncio, pytest_timeout, slixmpp, OpenSSL" 2>/dev/null; then
        echo "==> integration: missing Python packages for ${PYTHON};" \
            "run: ${PYTHON} -m pip install -r tests/integration/requirements.txt"
        failed+=("integration (dependencies)")
    else
        step integration env SWITCHBOARD_BIN="$PWD/target/debug/switchboard" \
            "$PYTHON" -m pytest tests/integration -q "$@"
    fi
else
    echo "==> integration: skipped, the build failed"
    failed+=("integration (not run)")
fi

echo
if ((${#failed[@]})); then
    echo "scripts/test.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "scripts/test.sh: all steps passed"
