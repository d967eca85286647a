#!/usr/bin/env bash
# The benchmark: redstage (library and HTTP) against a single Lua script,
# WATCH/MULTI, naive staging and a hand-written two-phase commit, on two
# local redis-server processes, for every workload at 1, 4, 16 and 64
# clients, 3 s each. Prints a Markdown table; writes target/bench/bench.json and
# target/bench/bench.svg. Arguments go to redstage-bench and override the
# defaults, e.g. `./scripts/bench.sh --duration 10s --concurrency 8,32`
# (`--help` lists them all).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

say "building the example participants (cargo build --target wasm32-unknown-unknown)"
cargo build --release --quiet --target wasm32-unknown-unknown -p inventory -p payments -p orders -p social
say "building redstage-bench (cargo build --release)"
cargo build --release --quiet -p redstage-bench
mkdir -p target/bench
say "running the benchmark (starts two local redis-server processes)"
exec target/release/redstage-bench \
    --components target/wasm32-unknown-unknown/release \
    --out target/bench/bench.json --svg target/bench/bench.svg \
    "$@"
