#!/usr/bin/env bash
# Build the local test image engine-agents:latest with the real agent CLIs
# (Claude Code, Codex, OpenCode) on a minimal Debian, without any image
# registry: debootstrap a root file system, install Node.js and the three npm
# packages into it, then load it with `docker import`.
#
# Needs root, debootstrap, docker, and access to a Debian mirror and the npm
# registry. Settings come from the environment:
#   IMAGE          image tag to create (default engine-agents:latest)
#   DEBIAN_SUITE   Debian release to bootstrap (default bookworm)
#   DEBIAN_MIRROR  Debian mirror URL (default: the first "URIs:" line of
#                  /etc/apt/sources.list.d/debian.sources, else
#                  http://deb.debian.org/debian)
#   AGENT_PACKAGES npm packages to install globally (default: the three CLIs)
#   DOCKER_HOST    passed through to the docker CLI as usual
set -euo pipefail

IMAGE="${IMAGE:-engine-agents:latest}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
AGENT_PACKAGES="${AGENT_PACKAGES:-@anthropic-ai/claude-code @openai/codex opencode-ai}"

log() {
    printf '%s build-agent-image: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

find_mirror() {
    local sources=/etc/apt/sources.list.d/debian.sources
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "$DEBIAN_MIRROR"
    elif [[ -r "$sources" ]] && grep -q '^URIs:' "$sources"; then
        grep -m1 '^URIs:' "$sources" | awk '{print $2}'
    else
        printf '%s\n' "http://deb.debian.org/debian"
    fi
}

check_tools() {
    local tool
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (debootstrap and chroot need it)"
    for tool in debootstrap docker tar chroot mount umount; do
        command -v "$tool" >/dev/null || die "missing tool: $tool; install it first"
    done
    docker version --format '{{.Server.Version}}' >/dev/null \
        || die "no Docker daemon responds at DOCKER_HOST=${DOCKER_HOST:-default}; start dockerd or set DOCKER_HOST"
}

WORK_DIR=""
ROOTFS=""

cleanup() {
    if [[ -n "$ROOTFS" ]] && mountpoint -q "$ROOTFS/proc"; then
        umount "$ROOTFS/proc" || log "warning: could not unmount $ROOTFS/proc"
    fi
    if [[ -n "$WORK_DIR" ]]; then
        rm -rf --one-file-system "$WORK_DIR"
    fi
}

bootstrap() {
    local mirror
    mirror="$(find_mirror)"
    log "debootstrap $DEBIAN_SUITE from $mirror"
    debootstrap --variant=minbase "$DEBIAN_SUITE" "$ROOTFS" "$mirror" >&2
    mount -t proc proc "$ROOTFS/proc"
    # Name resolution inside the chroot for apt and npm.
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
}

install_packages() {
    log "apt-get install nodejs npm"
    chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends \
        ca-certificates nodejs npm git >&2

    log "npm install -g $AGENT_PACKAGES"
    # Trust the build host's CAs while downloading, because some networks
    # intercept TLS with their own CA. finish_rootfs deletes the file again.
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/tmp/build-host-ca.crt"
    # shellcheck disable=SC2086 # AGENT_PACKAGES is a word list on purpose
    chroot "$ROOTFS" env HOME=/root NODE_EXTRA_CA_CERTS=/tmp/build-host-ca.crt \
        npm install -g --no-fund --no-audit $AGENT_PACKAGES >&2

    log "installed versions:"
    chroot "$ROOTFS" sh -c 'node --version; claude --version; codex --version; opencode --version' >&2 \
        || die "an agent CLI does not start inside the image"
}

finish_rootfs() {
    chroot "$ROOTFS" apt-get clean
    rm -rf "$ROOTFS/var/lib/apt/lists/"* "$ROOTFS/root/.npm" "$ROOTFS/tmp/"*
    # The image gets its resolver from the container runtime.
    : >"$ROOTFS/etc/resolv.conf"
    umount "$ROOTFS/proc"
    # An unprivileged user for running agents.
    chroot "$ROOTFS" useradd --create-home --uid 1000 --shell /bin/bash agent
}

import_image() {
    log "docker import as $IMAGE"
    tar -C "$ROOTFS" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV HOME=/home/agent' \
        --change 'USER agent' \
        --change 'WORKDIR /home/agent' \
        --change 'CMD ["/bin/bash"]' \
        - "$IMAGE" >&2
    log "done: $IMAGE"
}

main() {
    check_tools
    WORK_DIR="$(mktemp -d /var/tmp/engine-agents.XXXXXX)"
    ROOTFS="$WORK_DIR/rootfs"
    trap cleanup EXIT
    bootstrap
    install_packages
    finish_rootfs
    import_image
}

main "$@"
