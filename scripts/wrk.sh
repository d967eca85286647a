#!/usr/bin/env bash
# Real clients, as a new user would measure: wrk posting random orders to
# `redstage serve` (inventory on one Redis, payments on another), and
# redis-benchmark running the same order as one Lua script on one of the
# same Redis servers, one after the other on this machine; wrk asking
# `serve` for /v1/health, what its HTTP alone costs; and the same orders
# posted to `redstage-floor`, the parts of an order alone (HTTP, JSON, a
# fresh instance per step, a hand-written two-phase commit's three script
# calls; see bench/src/floor.rs), what any coordinator of these parts pays.
#
#   ./scripts/wrk.sh [shop|flash] [none|aof] [seconds] [connections]
#
# shop (default): 1,000 SKUs, 100 customers paying 10 merchants; flash:
# every order takes the same SKU and pays the same merchant. none (default):
# Redis without persistence (the host runs with durability = "unsafe");
# aof: appendonly yes + appendfsync always on both. Defaults: 10 s, 64
# connections, 2 wrk threads.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

WORKLOAD=${1:-shop}
PERSISTENCE=${2:-none}
SECONDS_=${3:-10}
CONNECTIONS=${4:-64}
case "$WORKLOAD" in shop | flash) ;; *) echo "workload: shop or flash" >&2; exit 2 ;; esac
case "$PERSISTENCE" in none | aof) ;; *) echo "persistence: none or aof" >&2; exit 2 ;; esac

if ! command -v wrk >/dev/null 2>&1; then
    say "installing wrk (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

say "building redstage and the example participants (release)"
cargo build --release --quiet --target wasm32-unknown-unknown -p inventory -p payments
cargo build --release --quiet -p redstage-host
cargo build --release --quiet -p redstage-bench --bin redstage-floor

WORK=$(mktemp -d /tmp/redstage-wrk.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_redis() { # name port
    local aof=(--appendonly no)
    [ "$PERSISTENCE" = aof ] && aof=(--appendonly yes --appendfsync always)
    mkdir -p "$WORK/$1"
    redis-server --port "$2" --bind 127.0.0.1 --save "" "${aof[@]}" --dir "$WORK/$1" \
        --logfile "$WORK/$1/redis.log" &
    PIDS+=($!)
    until redis-cli -p "$2" ping >/dev/null 2>&1; do sleep 0.05; done
}

ORDERS=$(free_port)
LEDGER=$(free_port)
HTTP=$(free_port)
say "starting redis-server on $ORDERS (orders) and $LEDGER (ledger), persistence: $PERSISTENCE"
start_redis orders "$ORDERS"
start_redis ledger "$LEDGER"

say "seeding 1,000 SKUs, 100 customers (and the keys of the Lua script's run)"
{
    for i in $(seq 0 999); do echo "SET inventory:stock:sku$i 100000000"; done
    # redis-benchmark's __rand_int__ is 12 digits; the Lua run uses its own keys.
    for i in $(seq 0 999); do printf 'SET lua:stock:%012d 100000000\n' "$i"; done
    for i in $(seq 0 999); do printf 'SET lua:balance:c%012d 1000000000\n' "$i"; done
} | redis-cli -p "$ORDERS" >/dev/null
for i in $(seq 0 99); do echo "SET payments:balance:c$i 1000000000"; done | redis-cli -p "$LEDGER" >/dev/null

DURABILITY=unsafe
[ "$PERSISTENCE" = aof ] && DURABILITY=checked
COMPONENTS=$(pwd)/target/wasm32-unknown-unknown/release
cat >"$WORK/redstage.toml" <<EOF
log_store = "orders"
durability = "$DURABILITY"
[stores]
orders = "redis://127.0.0.1:$ORDERS"
ledger = "redis://127.0.0.1:$LEDGER"
[participants.inventory]
component = "$COMPONENTS/inventory.wasm"
store = "orders"
prefix = "inventory:"
[participants.payments]
component = "$COMPONENTS/payments.wasm"
store = "ledger"
prefix = "payments:"
[cache]
dir = "$WORK/cache"
EOF

say "starting redstage serve on 127.0.0.1:$HTTP"
RUST_LOG=warn target/release/redstage serve --config "$WORK/redstage.toml" \
    --listen "127.0.0.1:$HTTP" 2>"$WORK/redstage.log" &
SERVE=$!
PIDS+=($SERVE)
until curl -sf "http://127.0.0.1:$HTTP/v1/ready" >/dev/null 2>&1; do sleep 0.1; done

# CPU seconds so far: of both Redis servers (INFO cpu), of `serve` (/proc).
redis_cpu() {
    for port in "$@"; do redis-cli -p "$port" info cpu; done |
        awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.6f", s }'
}
serve_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.6f", ($14 + $15) / hz }' "/proc/${1:-$SERVE}/stat"; }
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }'; }

say "wrk: $WORKLOAD orders, $CONNECTIONS connections, 2 threads, ${SECONDS_}s"
R0=$(redis_cpu "$ORDERS" "$LEDGER")
S0=$(serve_cpu)
OUT=$(WORKLOAD=$WORKLOAD wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_}s" --latency \
    -s bench/wrk/orders.lua "http://127.0.0.1:$HTTP")
R1=$(redis_cpu "$ORDERS" "$LEDGER")
S1=$(serve_cpu)
grep -E "^redstage:|Requests/sec" <<<"$OUT"
COMMITTED=$(sed -n 's/^redstage: \([0-9]*\) committed (\([0-9]*\)\/s).*/\1/p' <<<"$OUT")
RATE=$(sed -n 's/^redstage: \([0-9]*\) committed (\([0-9]*\)\/s).*/\2/p' <<<"$OUT")
REDSTAGE_REDIS=$(per "$R0" "$R1" "$COMMITTED")
echo "redstage: Redis CPU $REDSTAGE_REDIS µs per committed order (both servers), serve CPU $(per "$S0" "$S1" "$COMMITTED") µs per committed order"

# What `serve` spends on HTTP alone: the same connections asking for
# /v1/health (no transaction, no Redis, no participant).
say "wrk: GET /v1/health, $CONNECTIONS connections, 2 threads, 5s (HTTP alone)"
S0=$(serve_cpu)
HEALTH=$(wrk -t2 -c"$CONNECTIONS" -d5s "http://127.0.0.1:$HTTP/v1/health")
S1=$(serve_cpu)
N=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' <<<"$HEALTH")
echo "health: $N requests, serve CPU $(per "$S0" "$S1" "$N") µs per request"

FLOOR_HTTP=$(free_port)
say "wrk: the same orders to redstage-floor (the parts of an order alone), ${SECONDS_}s"
target/release/redstage-floor --listen "127.0.0.1:$FLOOR_HTTP" --orders "redis://127.0.0.1:$ORDERS" \
    --ledger "redis://127.0.0.1:$LEDGER" --components "$COMPONENTS" 2>"$WORK/floor.log" &
FLOOR=$!
PIDS+=($FLOOR)
until curl -s -o /dev/null "http://127.0.0.1:$FLOOR_HTTP/" 2>/dev/null; do sleep 0.1; done
S0=$(serve_cpu "$FLOOR")
OUT=$(WORKLOAD=$WORKLOAD wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_}s" --latency \
    -s bench/wrk/orders.lua "http://127.0.0.1:$FLOOR_HTTP")
S1=$(serve_cpu "$FLOOR")
kill "$FLOOR"
grep -E "^redstage:" <<<"$OUT" | sed 's/^redstage:/floor:/'
N=$(sed -n 's/^redstage: \([0-9]*\) committed .*/\1/p' <<<"$OUT")
echo "floor: CPU $(per "$S0" "$S1" "$N") µs per committed order"

say "redis-benchmark: the same order as one Lua script on the orders Redis, $CONNECTIONS connections"
SCRIPT='local stock = tonumber(redis.call("GET", KEYS[1]) or "0")
if stock < tonumber(ARGV[1]) then return "insufficient_stock" end
local from = tonumber(redis.call("GET", KEYS[2]) or "0")
if from < tonumber(ARGV[2]) then return "insufficient_funds" end
redis.call("DECRBY", KEYS[1], ARGV[1])
redis.call("DECRBY", KEYS[2], ARGV[2])
redis.call("INCRBY", KEYS[3], ARGV[2])
return "ok"'
SHA=$(redis-cli -p "$ORDERS" script load "$SCRIPT")
if [ "$WORKLOAD" = flash ]; then
    KEYS=(lua:stock:000000000000 lua:balance:c__rand_int__ lua:balance:m000000000000)
else
    KEYS=(lua:stock:__rand_int__ lua:balance:c__rand_int__ lua:balance:m__rand_int__)
fi
N=$((SECONDS_ * 30000))
R0=$(redis_cpu "$ORDERS")
LUA=$(redis-benchmark -p "$ORDERS" -c "$CONNECTIONS" -n "$N" -r 1000 -q \
    evalsha "$SHA" 3 "${KEYS[@]}" 2 5 | tr '\r' '\n' | tail -1)
R1=$(redis_cpu "$ORDERS")
echo "$LUA"
LUA_REDIS=$(per "$R0" "$R1" "$N")
LUA_RATE=$(sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' <<<"$LUA")
echo "lua: Redis CPU $LUA_REDIS µs per order"
awk -v r="$REDSTAGE_REDIS" -v l="$LUA_REDIS" -v a="$RATE" -v b="$LUA_RATE" 'BEGIN {
    printf "redstage / Lua script: Redis CPU per order %.1fx, orders/s %.3fx\n", r / l, a / b }'
