#!/usr/bin/env bash
# Build the Tart base VM that the engine clones for every run (default name
# tart_nanoclaw_base): a cirruslabs macOS image with Claude Code, Codex and OpenCode
# installed through npm.
#
# Runs only on an Apple silicon Mac with tart installed (brew install
# cirruslabs/cli/tart). It has never run on the project's Linux machines: there it
# is only checked with `shellcheck`, and the tests use the simulator in tests/tart.
#
# Steps: clone the source image into a build VM and boot it. Log in once with the
# image's password to install a generated SSH key, then install the agents with
# that key. Remove the key, shut the guest down and rename the build VM to
# TART_BASE_IMAGE. The password
# reaches ssh through SSH_ASKPASS and the environment, never through argv.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/prepare-tart-base.sh [-h|--help]

Build the Tart base VM with the agent CLIs installed. Takes 15 to 30 minutes,
mostly for the first image pull.

Environment:
  TART_BASE_IMAGE      name of the VM to create or replace (default: tart_nanoclaw_base)
  TART_SOURCE_IMAGE    image to clone (default: ghcr.io/cirruslabs/macos-sequoia-base:latest)
  TART_VM_USERNAME     guest user with SSH login (default: admin)
  TART_VM_PASSWORD     that user's password, used once to install a key (default: admin)
  BOOT_TIMEOUT         seconds to wait for an IP address and for SSH (default: 300)
  CLAUDE_CODE_VERSION  npm version of @anthropic-ai/claude-code (default: latest)
  CODEX_VERSION        npm version of @openai/codex (default: latest)
  OPENCODE_VERSION     npm version of opencode-ai (default: latest)
EOF
}

log() {
    printf 'prepare-tart-base: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

if [[ $# -gt 0 ]]; then
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
    esac
fi

base_image="${TART_BASE_IMAGE:-tart_nanoclaw_base}"
source_image="${TART_SOURCE_IMAGE:-ghcr.io/cirruslabs/macos-sequoia-base:latest}"
vm_user="${TART_VM_USERNAME:-admin}"
boot_timeout="${BOOT_TIMEOUT:-300}"
build_vm="${base_image}-build-$$"
npm_packages=(
    "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION:-latest}"
    "@openai/codex@${CODEX_VERSION:-latest}"
    "opencode-ai@${OPENCODE_VERSION:-latest}"
)

if [[ "$(uname -s)" != "Darwin" ]]; then
    die "this script needs macOS with tart; on Linux, tests use tests/tart/bin/tart"
fi
for tool in tart ssh ssh-keygen; do
    command -v "$tool" >/dev/null || die "$tool not found in PATH"
done
if ! [[ "$boot_timeout" =~ ^[0-9]+$ ]]; then
    die "BOOT_TIMEOUT must be a whole number of seconds, got '$boot_timeout'"
fi

work_dir="$(mktemp -d)"
run_pid=""
vm_ip=""
ssh_options=(
    -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null
    -o LogLevel=ERROR
    -o ConnectTimeout=10
)

cleanup() {
    local status=$?
    if [[ -n "$run_pid" ]] && kill -0 "$run_pid" 2>/dev/null; then
        log "stopping build VM $build_vm"
        tart stop --timeout 60 "$build_vm"
    fi
    if [[ $status -ne 0 && -s "$work_dir/run.log" ]]; then
        log "output of tart run:"
        cat "$work_dir/run.log" >&2
    fi
    if [[ $status -ne 0 ]] && tart get "$build_vm" >/dev/null 2>&1; then
        log "deleting build VM $build_vm after the failure"
        tart delete "$build_vm"
    fi
    rm -rf "$work_dir"
    exit "$status"
}
trap cleanup EXIT

# Run a shell script (stdin) in the guest as the VM user, logged in with the key.
# Arguments become the script's "$@".
guest() {
    local remote_command="bash -s"
    if [[ $# -gt 0 ]]; then
        remote_command+=" -- $(printf '%q ' "$@")"
    fi
    ssh -i "$work_dir/id_ed25519" -o BatchMode=yes "${ssh_options[@]}" \
        "$vm_user@$vm_ip" "$remote_command"
}

boot_build_vm() {
    log "cloning $source_image into $build_vm"
    tart clone "$source_image" "$build_vm"
    tart run --no-graphics "$build_vm" >"$work_dir/run.log" 2>&1 &
    run_pid=$!
    log "waiting up to ${boot_timeout}s for an IP address"
    vm_ip="$(tart ip --wait "$boot_timeout" "$build_vm")"
    log "build VM has address $vm_ip"
}

# Log in once with the password (through SSH_ASKPASS) and authorize a new key.
install_ssh_key() {
    ssh-keygen -q -t ed25519 -N '' -C "prepare-tart-base" -f "$work_dir/id_ed25519"
    cat >"$work_dir/askpass" <<'EOF'
#!/bin/sh
printf '%s\n' "$PREPARE_TART_PASSWORD"
EOF
    chmod 700 "$work_dir/askpass"

    local deadline=$((SECONDS + boot_timeout))
    log "waiting for SSH on $vm_ip (enable Remote Login in the guest if it never answers)"
    until PREPARE_TART_PASSWORD="${TART_VM_PASSWORD:-admin}" \
        SSH_ASKPASS="$work_dir/askpass" SSH_ASKPASS_REQUIRE=force \
        ssh "${ssh_options[@]}" -o PubkeyAuthentication=no \
        -o PreferredAuthentications=keyboard-interactive,password \
        "$vm_user@$vm_ip" \
        'umask 077 && mkdir -p ~/.ssh &&
         if [ -f ~/.ssh/authorized_keys ]; then
             cp ~/.ssh/authorized_keys ~/.ssh/authorized_keys.prepare-backup
         fi &&
         cat >> ~/.ssh/authorized_keys' <"$work_dir/id_ed25519.pub"; do
        if ((SECONDS >= deadline)); then
            die "no SSH login to $vm_user@$vm_ip within ${boot_timeout}s"
        fi
        sleep 5
    done
}

install_agents() {
    log "installing ${npm_packages[*]}"
    guest "${npm_packages[@]}" <<'EOF'
set -euo pipefail
export PATH="/opt/homebrew/bin:/opt/homebrew/sbin:/usr/local/bin:$PATH"
if ! command -v npm >/dev/null; then
    command -v brew >/dev/null || { echo "neither npm nor Homebrew in the guest" >&2; exit 1; }
    brew install node
fi
npm install --global "$@"
claude --version
codex --version
opencode --version
EOF
}

# Remove the key again (restoring any earlier authorized_keys), then power off.
shut_down_guest() {
    log "removing the build key and shutting the guest down"
    guest <<'EOF'
set -euo pipefail
if [ -f ~/.ssh/authorized_keys.prepare-backup ]; then
    mv ~/.ssh/authorized_keys.prepare-backup ~/.ssh/authorized_keys
else
    rm ~/.ssh/authorized_keys
fi
sync
sudo -n true
# Detached, so the SSH session ends cleanly before the guest goes down.
nohup sh -c 'sleep 2; sudo -n shutdown -h now' >/dev/null 2>&1 &
EOF
    local deadline=$((SECONDS + 120))
    while kill -0 "$run_pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            die "guest did not power off within 120s"
        fi
        sleep 2
    done
    wait "$run_pid"
    run_pid=""
}

boot_build_vm
install_ssh_key
install_agents
shut_down_guest

if tart get "$base_image" >/dev/null 2>&1; then
    log "replacing existing VM $base_image"
    tart delete "$base_image"
fi
tart rename "$build_vm" "$base_image"
log "done: $base_image has Claude Code, Codex and OpenCode"
