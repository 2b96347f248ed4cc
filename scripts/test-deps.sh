#!/usr/bin/env bash
# What the test suite needs on a fresh Debian machine, installed if missing: the Rust
# components (rustfmt, clippy), the federation peers (Prosody, ejabberd: their system
# services are stopped, the tests start private instances), iptables for the cluster
# partition tests, PostgreSQL (the message archive's second backend: its service is stopped
# too, storage's tests start a private instance with scripts/pg-instance.sh), profanity and
# tmux (a terminal client driven by test_profanity.py), and a Python virtualenv with
# tests/integration/requirements.txt and deploy/requirements.txt.
# Idempotent and quiet when everything is there already.
#
# Prints the virtualenv's python on its last line; scripts/test.sh runs it and uses that.
#   SWITCHBOARD_TEST_VENV   where the virtualenv lives (default ~/.cache/switchboard-test-venv)
#   SWITCHBOARD_TEST_NO_INSTALL=1   install nothing (use PYTHON as given)
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
fi
apt_updated=false
apt_install() {
    if ! "${apt_updated}"; then
        ${SUDO} apt-get update >&2
        apt_updated=true
    fi
    ${SUDO} apt-get install -y --no-install-recommends "$@" >&2
}

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "${component}" >&2
    fi
done

missing=()
command -v prosody >/dev/null 2>&1 || missing+=(prosody)
{ [ -x /usr/sbin/ejabberdctl ] || command -v ejabberdctl >/dev/null 2>&1; } || missing+=(ejabberd)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v profanity >/dev/null 2>&1 || missing+=(profanity)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || missing+=(postgresql)
# The archive's retention test runs the node with its clock moved back (test_mam.py).
compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || missing+=(libfaketime)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    echo "test-deps: installing ${missing[*]}" >&2
    apt_install "${missing[@]}"
fi
# The packages start system services that hold 5222/5269 on every address (and 5432).
for service in prosody ejabberd postgresql; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "${service}" 2>/dev/null; then
        ${SUDO} systemctl stop "${service}" >&2 || true
    elif command -v service >/dev/null 2>&1; then
        ${SUDO} service "${service}" stop >/dev/null 2>&1 || true
    fi
done
# ejabberd's package may leave its epmd running; the tests start their own instances.

VENV="${SWITCHBOARD_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-test-venv}"
requirements=(-r tests/integration/requirements.txt -r deploy/requirements.txt)
stamp="${VENV}/.requirements.sha256"
want="$(cat tests/integration/requirements.txt deploy/requirements.txt | sha256sum | cut -d' ' -f1)"
if [ ! -x "${VENV}/bin/python" ] || [ "$(cat "${stamp}" 2>/dev/null)" != "${want}" ]; then
    echo "test-deps: preparing the Python virtualenv ${VENV}" >&2
    [ -x "${VENV}/bin/python" ] || python3 -m venv "${VENV}" >&2
    if ! "${VENV}/bin/python" -m pip install --quiet "${requirements[@]}" >&2; then
        echo "test-deps: pip install failed; recreating ${VENV} and trying once more" >&2
        rm -rf "${VENV}"
        python3 -m venv "${VENV}" >&2
        "${VENV}/bin/python" -m pip install --quiet "${requirements[@]}" >&2
    fi
    echo "${want}" >"${stamp}"
fi
echo "${VENV}/bin/python"
