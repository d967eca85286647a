#!/usr/bin/env bash
# The guest SDK as it is published: its copy of the contract is the
# workspace's wit/, it packages and builds on its own (`cargo package`
# builds the packaged crate), it builds with its stated minimum Rust
# (rust-version in guest-sdk/Cargo.toml), natively and for wasm, and its
# docs build. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

say "checking that guest-sdk/wit/ is the workspace's wit/ (the current contract)"
for f in wit/*.wit; do
    cmp "$f" "guest-sdk/$f" || { echo "guest-sdk/$f differs from $f: copy it over" >&2; exit 1; }
done
for f in guest-sdk/wit/*.wit; do
    [ -f "wit/$(basename "$f")" ] || { echo "$f is not in wit/" >&2; exit 1; }
done

say "packaging redstage-guest (cargo package builds the packaged crate)"
cargo package -p redstage-guest --quiet

msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' guest-sdk/Cargo.toml)
say "building redstage-guest with its minimum Rust, $msrv (rustup)"
rustup toolchain install "$msrv" --profile minimal --target wasm32-unknown-unknown >/dev/null 2>&1 ||
    rustup toolchain install "$msrv" --profile minimal --target wasm32-unknown-unknown
cargo "+$msrv" check -p redstage-guest --locked --quiet
cargo "+$msrv" check -p redstage-guest --locked --quiet --target wasm32-unknown-unknown

say "building the SDK's docs (cargo doc)"
RUSTDOCFLAGS="-D warnings" cargo doc -p redstage-guest --no-deps --quiet
