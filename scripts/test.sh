#!/usr/bin/env bash
# The whole test suite: unit tests, the SDK and examples natively, and the
# integration tests against real redis-server processes (which build the
# example components with cargo component and with the wasm32-wasip2 target).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
need_cargo_component

say "running the test suite (cargo test --workspace)"
cargo test --workspace
