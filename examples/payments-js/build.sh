#!/usr/bin/env bash
# Builds the JavaScript payments participant into a component:
# target/js/payments_js.wasm (at the workspace root), with ComponentizeJS
# from the npm registry at the version package-lock.json pins. It is
# written to contract 0.2.1 (string values, wit/v0.2/), which the host
# keeps running next to 0.3.0.
#
# Every WASI feature ComponentizeJS can leave out is left out (random,
# clocks, http, fetch-event): a participant gets none of them from the host
# anyway. stdio stays, so that an uncaught exception's message reaches the
# step's trap message (the host keeps the first 4096 bytes of stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"
if ! command -v npm >/dev/null 2>&1; then
    echo "npm is missing: apt-get install nodejs npm" >&2
    exit 1
fi
npm ci --no-audit --no-fund --silent
mkdir -p "$root/target/js"
out="$root/target/js/payments_js.wasm"
npx --no-install componentize-js payments.js \
    --wit "$root/wit/v0.2" --world-name participant \
    --disable random clocks http fetch-event \
    -o "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
