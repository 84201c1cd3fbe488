#!/bin/sh
# Runs the agent command inside the machine, detached from the engine.
# Usage: sh run.sh COMMAND [ARG...]
# Standard input, output, error and the exit status are files under result/, so
# a later engine process can reattach after a crash. The command must be an
# executable file: it runs through `exec` in a subshell, so no shell builtin,
# keyword or function of this script can stand in for it, and its arguments
# are never evaluated by this shell.
root=$(cd "$(dirname "$0")" && pwd)
result="$root/result"
mkdir -p "$result" "$root/work/output"
echo "$$" > "$result/pid"

finish() {
    printf '%s\n' "$1" > "$result/exit-status.tmp"
    mv "$result/exit-status.tmp" "$result/exit-status"
    exit "$1"
}

# Prints the path of the executable file that `exec` would run, or nothing.
find_program() {
    case "$1" in
    */*)
        if [ -f "$1" ] && [ -x "$1" ]; then
            printf '%s\n' "$1"
        fi
        return
        ;;
    esac
    old_ifs=$IFS
    IFS=:
    for directory in $PATH; do
        if [ -f "${directory:-.}/$1" ] && [ -x "${directory:-.}/$1" ]; then
            printf '%s\n' "${directory:-.}/$1"
            break
        fi
    done
    IFS=$old_ifs
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
: > "$result/stdout"
: > "$result/stderr"
if [ -z "$(find_program "$1")" ]; then
    printf 'command not found: %s (the command must be an executable file)\n' \
        "$1" > "$result/error"
    finish 127
fi

input=/dev/null
if [ -f "$root/stdin" ]; then
    input="$root/stdin"
fi
# The agent's start time: epoch seconds, with nanoseconds where `date` supports
# %N (busybox's does not), and where /proc/uptime exists, the seconds since boot
# in hundredths, which a host that shares the kernel can turn into its own time.
now=$(date +%s.%N)
case $now in
*N) now=${now%%.*} ;;
esac
printf '%s\n' "$now" > "$result/started-at"
if [ -r /proc/uptime ]; then
    read -r uptime _ < /proc/uptime
    printf '%s\n' "$uptime" > "$result/started-uptime"
fi
(exec "$@") < "$input" >> "$result/stdout" 2>> "$result/stderr"
finish "$?"
