#!/usr/bin/env bash
# Take a PNG screenshot of a loopback web page (such as a trace in the Phoenix UI)
# with headless Chromium.
#
# Usage: scripts/screenshot-trace.sh URL OUT.png
#
# Environment:
#   CHROMIUM             browser command (default: chromium, Debian package "chromium")
#   SCREENSHOT_WAIT_MS   virtual time the page gets to fetch and render its data
#                        before the screenshot, in milliseconds (default: 15000)
#   SCREENSHOT_TIMEOUT   wall-clock limit for the browser, in seconds (default: 120)
#
# Only http URLs on 127.0.0.0/8, localhost or [::1] are accepted, and the browser
# resolves every host but the page's own to nothing, so the page cannot reach
# outside.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 URL OUT.png" >&2
    exit 2
fi
url="$1"
out="$2"
browser="${CHROMIUM:-chromium}"
wait_ms="${SCREENSHOT_WAIT_MS:-15000}"
timeout_s="${SCREENSHOT_TIMEOUT:-120}"

loopback_url='^http://(127\.[0-9]+\.[0-9]+\.[0-9]+|localhost|\[::1\])(:[0-9]+)?(/.*)?$'
if [[ ! "${url}" =~ ${loopback_url} ]]; then
    echo "error: URL '${url}' is not an http URL on a loopback address;" \
        "use http://127.0.0.1:PORT/..." >&2
    exit 2
fi
# Chromium applies MAP rules to IP literals too, so the page's own host is exempt.
page_host="${BASH_REMATCH[1]}"
if [[ "${out}" != *.png ]]; then
    echo "error: output file '${out}' must end in .png" >&2
    exit 2
fi
if ! command -v "${browser}" >/dev/null; then
    echo "error: browser '${browser}' not found; run 'apt-get install -y chromium'" \
        "or set CHROMIUM" >&2
    exit 1
fi

profile="$(mktemp -d)"
trap 'rm -rf "${profile}"' EXIT
out_abs="$(realpath -m "${out}")"
mkdir -p "$(dirname "${out_abs}")"
rm -f "${out_abs}"

timeout --kill-after=10 "${timeout_s}" "${browser}" \
    --headless \
    --no-sandbox \
    --disable-gpu \
    --disable-quic \
    --no-first-run \
    --disable-background-networking \
    --disable-component-update \
    --disable-sync \
    --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE ${page_host}" \
    --hide-scrollbars \
    --run-all-compositor-stages-before-draw \
    --user-data-dir="${profile}" \
    --window-size=1400,900 \
    --virtual-time-budget="${wait_ms}" \
    --screenshot="${out_abs}" \
    "${url}"

if [[ ! -s "${out_abs}" ]]; then
    echo "error: ${browser} wrote no screenshot to ${out_abs}" >&2
    exit 1
fi
echo "wrote ${out_abs}"
