#!/usr/bin/env bash
# The API against its own OpenAPI document: Schemathesis, an OpenAPI
# property checker (from PyPI, in a virtualenv under target/), runs every
# check in its examples, coverage, fuzzing and stateful phases against a
# real `redstage serve` on two real redis-server processes, with a token of
# every scope. Exceptions, each with its reason: scripts/schemathesis.toml.
#
# SCHEMATHESIS_SEED picks the generator's seed (fixed by default, so that a
# run is repeatable); SCHEMATHESIS_EXAMPLES the test cases per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/setup.sh

SCHEMATHESIS_VERSION=4.32.5
SEED=${SCHEMATHESIS_SEED:-20241127}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-50}
TOKEN=openapi-check-0123456789abcdef
VENV=$ROOT/target/schemathesis-venv

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    say "installing schemathesis $SCHEMATHESIS_VERSION (pip, in $VENV)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

say "building redstage and the example participants"
cargo build --quiet -p redstage-host --bin redstage
cargo build --release --quiet --target wasm32-wasip2 -p inventory -p payments

tmp=$(mktemp -d)
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ "$status" = 0 ] || { echo "--- serve's log:" >&2; tail -n 40 "$tmp/serve.log" >&2 || true; }
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r orders_port ledger_port api_port < <(python3 -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
for port in "$orders_port" "$ledger_port"; do
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$tmp" --logfile "$tmp/redis-$port.log" &
    pids+=("$!")
done
for port in "$orders_port" "$ledger_port"; do
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break
        sleep 0.1
    done
done

cat > "$tmp/redstage.toml" <<TOML
durability = "unsafe"
log_store = "orders"
[stores]
orders = "redis://127.0.0.1:$orders_port"
ledger = "redis://127.0.0.1:$ledger_port"
[participants.inventory]
component = "$ROOT/target/wasm32-wasip2/release/inventory.wasm"
store = "orders"
prefix = "inventory:"
[participants.payments]
component = "$ROOT/target/wasm32-wasip2/release/payments.wasm"
store = "ledger"
prefix = "payments:"
[deploy]
folder = "$tmp/participants"
[[auth.tokens]]
name = "checker"
token = "$TOKEN"
scopes = ["read", "submit", "deploy"]
TOML
target/debug/redstage serve --config "$tmp/redstage.toml" --listen "127.0.0.1:$api_port" \
    >"$tmp/serve.log" 2>&1 &
pids+=("$!")
python3 - "$api_port" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/ready", timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.2)
sys.exit("redstage serve did not become ready")
PY

say "schemathesis: every check, every phase, $EXAMPLES cases per operation, seed $SEED"
"$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run \
    "http://127.0.0.1:$api_port/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --no-color
