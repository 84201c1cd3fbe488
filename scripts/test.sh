#!/usr/bin/env bash
# Install what the tests need on a Debian machine, then run the test suite.
#
# Run as root from any folder: `scripts/test.sh [PYTEST_ARGS...]`. The tests start
# their own private dockerd, PostgreSQL server and Phoenix trace viewer, so
# this script starts no service. Extra arguments go to pytest.
set -euo pipefail

# The test runner; the README and .ci/run both call this script.
test_command=(.venv/bin/python -m pytest)

# python3-venv is here because Debian's python3 has no venv module without it.
apt_packages=(
    docker.io
    busybox-static
    bubblewrap
    openssh-server
    openssh-client
    postgresql
    iproute2
    openssl
    shellcheck
    python3
    python3-venv
)

log() {
    printf 'test: %s\n' "$*" >&2
}

missing_packages() {
    local package status
    for package in "${apt_packages[@]}"; do
        status="$(dpkg-query --show --showformat='${db:Status-Status}' "$package" 2>/dev/null || true)"
        if [[ "$status" != "installed" ]]; then
            printf '%s\n' "$package"
        fi
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} == 0)); then
        log "Debian packages already installed"
        return
    fi
    if ((EUID != 0)); then
        log "error: packages missing (${missing[*]}) and installing them needs root; rerun as root"
        exit 1
    fi
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

install_python_package() {
    local python="${PYTHON:-python3}"
    if [[ ! -x .venv/bin/python ]]; then
        log "creating .venv with $python"
        "$python" -m venv .venv
    fi
    log "installing the engine with its test extra into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
}

install_trace_viewer() {
    # The Phoenix tests (marker `phoenix`) start the viewer from this venv.
    log "installing the Arize Phoenix trace viewer into its own venv"
    PHOENIX_PYTHON="${PYTHON:-python3}" bash scripts/install-phoenix.sh
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
install_packages
install_python_package
install_trace_viewer
log "running ${test_command[*]} $*"
"${test_command[@]}" "$@"
