#!/usr/bin/env bash
# Prepare a Debian machine to run the engine with its Docker backend.
#
# Run as root from any folder: `scripts/setup.sh`. It installs Docker, a static
# busybox and Python's venv module if they are missing, starts a Docker daemon if
# none responds, installs the engine into .venv and builds the base image
# engine-base:latest.
# The daemon it starts has no default bridge and changes no iptables rules or IP
# forwarding settings, so containers get only `--network none` or networks that
# you create.
set -euo pipefail

dockerd_log=/var/log/engine-dockerd.log
dockerd_startup_seconds=60

log() {
    printf 'setup: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

install_packages() {
    local package status
    local missing=()
    for package in docker.io busybox-static python3-venv; do
        status="$(dpkg-query --show --showformat='${db:Status-Status}' "$package" 2>/dev/null || true)"
        [[ "$status" == "installed" ]] || missing+=("$package")
    done
    if ((${#missing[@]} == 0)); then
        log "docker.io, busybox-static and python3-venv already installed"
        return
    fi
    ((EUID == 0)) || die "packages missing (${missing[*]}) and installing them needs root; rerun as root"
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

start_docker_daemon() {
    if docker info >/dev/null 2>&1; then
        log "Docker daemon responds at ${DOCKER_HOST:-the default socket}"
        return
    fi
    # A daemon started here listens on the default socket, which DOCKER_HOST
    # would bypass.
    [[ -z "${DOCKER_HOST:-}" ]] ||
        die "no Docker daemon responds at DOCKER_HOST=$DOCKER_HOST; start that daemon, or unset DOCKER_HOST to use the default socket"
    ((EUID == 0)) || die "no Docker daemon responds and starting dockerd needs root; rerun as root"

    log "starting dockerd (log: $dockerd_log)"
    nohup setsid dockerd --bridge=none --iptables=false --ip-forward=false \
        </dev/null >>"$dockerd_log" 2>&1 &
    local dockerd_pid=$!
    local waited=0
    until docker info >/dev/null 2>&1; do
        kill -0 "$dockerd_pid" 2>/dev/null ||
            die "dockerd exited during startup; see $dockerd_log"
        ((waited < dockerd_startup_seconds)) ||
            die "dockerd (PID $dockerd_pid) did not respond within $dockerd_startup_seconds seconds; see $dockerd_log"
        sleep 1
        waited=$((waited + 1))
    done
    log "dockerd responds (PID $dockerd_pid)"
}

install_python_package() {
    local python="${PYTHON:-python3}"
    if [[ ! -x .venv/bin/python ]]; then
        log "creating .venv with $python"
        "$python" -m venv .venv
    fi
    log "installing the engine into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
install_packages
start_docker_daemon
install_python_package
log "building the base image"
bash scripts/build-base-image.sh
log "done; try: .venv/bin/engine --help"
