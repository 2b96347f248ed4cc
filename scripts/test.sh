#!/usr/bin/env bash
# The whole check, as CI runs it: formatting, lints, import cycles, unit tests, the node's
# build, then the end-to-end suite against the freshly built binary.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -k slixmpp      # extra arguments go to pytest
#
# On a fresh Debian machine it first installs what the tests need (scripts/test-deps.sh:
# Prosody, ejabberd, PostgreSQL, iptables, a Python virtualenv with the pinned packages). With
# SWITCHBOARD_TEST_NO_INSTALL=1 it installs nothing and uses PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if [ "${SWITCHBOARD_TEST_NO_INSTALL:-0}" = 1 ]; then
    PYTHON="${PYTHON:-python3}"
elif ! PYTHON="$(scripts/test-deps.sh | tail -n 1)"; then
    echo "scripts/test.sh: installing the test dependencies failed (scripts/test-deps.sh)"
    exit 1
fi
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
# No import cycles between the top-level modules of `nodes` (ARCHITECTURE.md, "Layers").
step import-cycles "$PYTHON" scripts/import-cycles.py --check
# PostgreSQL is installed by test-deps.sh: without it the archive's PostgreSQL tests would
# skip themselves, and here that must be a failure.
step unit env SWITCHBOARD_REQUIRE_POSTGRES=1 cargo test --workspace
# Every binary the end-to-end suite runs (the node and the load generator), with the same
# feature set as the unit tests so that nothing is compiled twice.
if step build cargo build --workspace --bins; then
    if ! "$PYTHON" -c "import pytest, pytest_asyncio, pytest_timeout, slixmpp, OpenSSL" 2>/dev/null; then
        echo "==> integration: missing Python packages for ${PYTHON};" \
            "run scripts/test-deps.sh"
        failed+=("integration (dependencies)")
    else
        step integration env SWITCHBOARD_REQUIRE_POSTGRES=1 SWITCHBOARD_BIN="$PWD/target/debug/switchboard" \
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
