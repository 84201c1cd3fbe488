#!/bin/sh
# Starts run.sh in the background, detached from the caller's session, so that
# a dropped SSH connection does not stop the agent.
# Usage: sh start.sh COMMAND [ARG...]
# macOS has no setsid(1); there nohup keeps the agent alive when the
# connection's hangup signal arrives.
root=$(cd "$(dirname "$0")" && pwd)
if command -v setsid >/dev/null 2>&1; then
    setsid /bin/sh "$root/run.sh" "$@" </dev/null >/dev/null 2>&1 &
else
    nohup /bin/sh "$root/run.sh" "$@" </dev/null >/dev/null 2>&1 &
fi
