#!/bin/sh
# Reports the agent's state for a reattaching engine, on the first line one of:
#   exited CODE | running PID | missing
# Any start error that run.sh recorded follows on later lines.
result=$(cd "$(dirname "$0")" && pwd)/result
if [ -e "$result/exit-status" ]; then
    echo "exited $(cat "$result/exit-status")"
elif [ -e "$result/pid" ] && kill -0 "$(cat "$result/pid")" 2>/dev/null; then
    echo "running $(cat "$result/pid")"
else
    echo "missing"
fi
if [ -e "$result/error" ]; then
    cat "$result/error"
fi
