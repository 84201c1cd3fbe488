#!/bin/sh
# Prints the agent's output as it grows until its exit status exists, or until
# the runner process is gone without leaving one.
# Usage: sh follow.sh STDOUT_OFFSET STDERR_OFFSET
# The offsets are byte counts the caller already has. Output written after the
# last poll is not printed here: the caller reads it from the collected files.
result=$(cd "$(dirname "$0")" && pwd)/result
while [ ! -e "$result/stdout" ] && [ ! -e "$result/exit-status" ]; do
    sleep 0.02
done
tail -c +"$(($1 + 1))" -f "$result/stdout" &
out=$!
tail -c +"$(($2 + 1))" -f "$result/stderr" >&2 &
err=$!
runner=$(cat "$result/pid" 2>/dev/null)
while [ ! -e "$result/exit-status" ]; do
    if [ -n "$runner" ] && ! kill -0 "$runner" 2>/dev/null; then
        # The runner died (killed, or the machine is going down) without
        # writing an exit status; status.sh will report it as missing.
        break
    fi
    sleep 0.02
done
kill "$out" "$err" 2>/dev/null
wait
