#!/bin/sh
# Prints the agent's output as it grows until its exit status exists.
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
while [ ! -e "$result/exit-status" ]; do
    sleep 0.02
done
kill "$out" "$err" 2>/dev/null
wait
