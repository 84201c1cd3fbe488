#!/bin/sh
# A stand-in for Claude Code's print mode (`claude -p --output-format stream-json
# --verbose`) in the NanoClaw tests. It reads the prompt on stdin and prints the
# JSON lines that Claude Code 2.1.332 prints (see claude-ok.stdout), with fewer
# fields. The prompt selects what it does:
#   results N   N results, two seconds apart, in one session
#   hang        one result, then no output for ten minutes
#   auth        the API rejects the key: a retry event as in claude-http401.stdout,
#               then no output for ten minutes, as the real CLI goes on retrying
#   secrets     one result with the SHA-256 of ANTHROPIC_API_KEY and TEST_SECRET,
#               then three seconds of quiet so the test can look at the host
#   (other)     one result, "turn N"
# Sessions live in $HOME/.claude/fake-sessions/<id>; each run appends a line to
# notes.txt in the working directory, deletes delete-me.txt and rewrites
# config.json there.
set -u

session=""
while [ $# -gt 0 ]; do
    if [ "$1" = "--resume" ]; then
        session=$2
        shift
    fi
    shift
done

prompt=$(cat)
sessions="$HOME/.claude/fake-sessions"
mkdir -p "$sessions"
if [ -n "$session" ]; then
    if [ ! -f "$sessions/$session" ]; then
        printf '{"type":"result","subtype":"error_during_execution","is_error":true,"session_id":"%s","errors":["No conversation found with session ID: %s"]}\n' \
            "$session" "$session"
        printf 'No conversation found with session ID: %s\n' "$session" >&2
        exit 1
    fi
else
    session=$(cat /proc/sys/kernel/random/uuid)
fi
turn=$(($(cat "$sessions/$session" 2>/dev/null || echo 0) + 1))
echo "$turn" >"$sessions/$session"
echo "turn $turn" >>notes.txt
rm -f delete-me.txt
echo '{"containerConfig": {"network": "bridge"}}' >config.json

printf '{"type":"system","subtype":"init","cwd":"%s","session_id":"%s"}\n' \
    "$PWD" "$session"

result() {
    printf '{"type":"result","subtype":"success","is_error":false,"result":"%s","session_id":"%s"}\n' \
        "$1" "$session"
}

sha() {
    printf '%s' "$1" | sha256sum | cut -c1-64
}

case "$prompt" in
"results "*)
    count=${prompt#results }
    i=1
    while [ "$i" -le "$count" ]; do
        result "result $i of $count, turn $turn"
        if [ "$i" -lt "$count" ]; then
            sleep 2
        fi
        i=$((i + 1))
    done
    ;;
hang)
    result "before the hang"
    sleep 600
    ;;
auth)
    printf '{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":593,"error_status":401,"error":"authentication_failed","session_id":"%s"}\n' \
        "$session"
    sleep 600
    ;;
secrets*)
    result "key=$(sha "${ANTHROPIC_API_KEY:-}") secret=$(sha "${TEST_SECRET:-}")"
    sleep 3
    ;;
*)
    result "turn $turn"
    ;;
esac
