#!/usr/bin/env bash
# The deployment checks alone (they also run within scripts/test.sh's integration step):
# the FROM-scratch image and the three-node docker-compose cluster, the Helm chart linted,
# rendered and validated offline, the monitoring files.
#
#   scripts/deploy-test.sh            # extra arguments go to pytest, e.g. -k helm
#
# PYTHON (default python3) needs tests/integration/requirements.txt; the Helm checks also
# need deploy/requirements.txt, installed here when missing (they skip if that fails).
# SWITCHBOARD_BIN picks the binary packaged into the image (default target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
BIN="${SWITCHBOARD_BIN:-$PWD/target/debug/switchboard}"

if ! "$PYTHON" -c "import helm_python, kubernetes_validate" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet -r deploy/requirements.txt ||
        echo "deploy-test.sh: could not install deploy/requirements.txt; the Helm checks will skip"
fi
if [ ! -x "$BIN" ]; then
    cargo build -p nodes
fi
SWITCHBOARD_BIN="$BIN" exec "$PYTHON" -m pytest tests/integration/test_deploy.py -q "$@"
