#!/bin/sh
# Runs the agent command inside the machine, detached from the engine.
# Usage: sh run.sh COMMAND [ARG...]
# Standard input, output, error and the exit status are files under result/, so
# a later engine process can reattach after a crash. The command's arguments
# arrive as argv and are never evaluated by this shell.
root=$(cd "$(dirname "$0")" && pwd)
result="$root/result"
mkdir -p "$result" "$root/work/output"
echo "$$" > "$result/pid"

finish() {
    printf '%s\n' "$1" > "$result/exit-status.tmp"
    mv "$result/exit-status.tmp" "$result/exit-status"
    exit "$1"
}

# Secrets arrive as a mode 0600 file of quoted assignments; read it once and
# remove it so the values live only in the agent's environment.
if [ -f "$root/env" ]; then
    set -a
    # shellcheck source=/dev/null
    . "$root/env"
    set +a
    rm -f "$root/env"
fi

cd "$root/work" || finish 126
if ! command -v "$1" >/dev/null 2>&1; then
    printf 'command not found: %s\n' "$1" > "$result/error"
    : > "$result/stdout"
    : > "$result/stderr"
    finish 127
fi

input=/dev/null
if [ -f "$root/stdin" ]; then
    input="$root/stdin"
fi
date +%s > "$result/started-at"
"$@" < "$input" > "$result/stdout" 2> "$result/stderr"
finish "$?"
