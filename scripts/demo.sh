#!/usr/bin/env bash
# The demo: an order across two Redis instances, one committed and one
# aborted for insufficient funds, with balances before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

say "building the example participants (cargo build --target wasm32-unknown-unknown)"
cargo build --release --quiet --target wasm32-unknown-unknown -p inventory -p payments -p orders -p social
say "building redstage (a release build: several minutes the first time)"
cargo build --release --quiet -p redstage-host --features embedded
say "running the demo (starts two local redis-server processes)"
exec target/release/redstage demo --components target/wasm32-unknown-unknown/release "$@"
