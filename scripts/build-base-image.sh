#!/usr/bin/env bash
# Build the engine's default container image from Debian's static busybox.
#
# The image is a root filesystem that contains /bin/busybox, a symlink for every
# busybox applet (so /bin/sh and the usual POSIX tools exist), /tmp with mode 1777
# and an /etc/passwd with root. It is made with `docker import`, so no image
# registry is needed. The docker client talks to the daemon that DOCKER_HOST (or
# the current docker context) names.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/build-base-image.sh [--force] [--tag IMAGE]

Build the engine's base image with `docker import` from Debian's static busybox.

  --force      rebuild even if IMAGE already exists
  --tag IMAGE  image reference to create (default: engine-base:latest)
  -h, --help   show this help

Environment:
  DOCKER_HOST  daemon to use (default: the docker client's default)
  BUSYBOX      path of a statically linked busybox (default: /bin/busybox,
               from the Debian package busybox-static)
EOF
}

log() {
    printf 'build-base-image: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

image="engine-base:latest"
force=false
busybox="${BUSYBOX:-/bin/busybox}"

while (($# > 0)); do
    case "$1" in
        --force) force=true ;;
        --tag)
            (($# >= 2)) || die "--tag needs an image reference, for example --tag engine-base:latest"
            image="$2"
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1'; run with --help for the usage" ;;
    esac
    shift
done

command -v docker >/dev/null || die "docker client not found; install the Debian package docker.io"
docker info >/dev/null 2>&1 ||
    die "no Docker daemon responds at DOCKER_HOST='${DOCKER_HOST:-<default>}'; start dockerd or run scripts/setup.sh"

old_image_id="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
if [[ "$force" == false && -n "$old_image_id" ]]; then
    log "image $image already exists; pass --force to rebuild it"
    exit 0
fi

[[ -x "$busybox" ]] || die "busybox not found at '$busybox'; install the Debian package busybox-static"
# A dynamically linked busybox (Debian package busybox) would find no libc in the
# image. ldd exits non-zero for a static binary.
if ldd "$busybox" >/dev/null 2>&1; then
    die "'$busybox' is dynamically linked; install busybox-static or set BUSYBOX to a static busybox"
fi

rootfs_parent="$(mktemp -d)"
trap 'rm -rf -- "$rootfs_parent"' EXIT
rootfs="$rootfs_parent/rootfs"

mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,var/tmp}
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
chmod 0700 "$rootfs/root"
install -m 0755 "$busybox" "$rootfs/bin/busybox"

# `busybox --list-full` prints each applet with its usual directory, for example
# bin/sh and usr/bin/env.
applet_count=0
while IFS= read -r applet_path; do
    if [[ "$applet_path" != "bin/busybox" ]]; then
        ln -sf /bin/busybox "$rootfs/$applet_path"
        applet_count=$((applet_count + 1))
    fi
done < <("$busybox" --list-full)
[[ -L "$rootfs/bin/sh" ]] || die "'$busybox --list-full' did not list bin/sh"

cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF

busybox_version="$("$busybox" 2>&1 | sed -n '1s/^BusyBox \(v[^ ]*\).*/\1/p')"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "importing $image (busybox ${busybox_version:-unknown}, $applet_count applets)"

tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -cf - . |
    docker import \
        --change 'CMD ["/bin/sh"]' \
        --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'LABEL org.opencontainers.image.title="engine-base"' \
        --change 'LABEL org.opencontainers.image.description="Default engine image: static busybox with POSIX shell tools"' \
        --change "LABEL org.opencontainers.image.created=\"$created\"" \
        --change "LABEL engine.base-image.busybox-version=\"${busybox_version:-unknown}\"" \
        --message "engine base image from $busybox" \
        - "$image" >/dev/null

# The rebuilt image takes the tag, so remove the old one unless a container or
# another tag still uses it.
new_image_id="$(docker image inspect --format '{{.Id}}' "$image")"
if [[ -n "$old_image_id" && "$old_image_id" != "$new_image_id" ]]; then
    docker image rm "$old_image_id" >/dev/null 2>&1 || log "kept old image $old_image_id because it is still in use"
fi

log "built $image"
