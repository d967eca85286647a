# Installs what building and testing redstage needs and is missing:
# redis-server, redis-cli, openssl, curl, python3, node and npm, chromium and
# chromedriver, the wasm targets, cargo-component. Sourced by the other
# scripts; says what it does.
set -euo pipefail

CARGO_COMPONENT_VERSION=0.21.1

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# openssl makes the certificates of the TLS tests; redis-cli creates the
# cluster of the cluster tests.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# curl runs the README's requests in tests/docs.rs; python3 checks the docs'
# links, and with venv (Debian's python3-venv) runs the Python client's tests.
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# python3-venv: the OpenAPI check and the Python client's tests use virtualenvs.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# npm builds the JavaScript participant (examples/payments-js/build.sh);
# chromium and its WebDriver run the console's tests (tests/console.rs).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# wasm32-unknown-unknown for the SDK's default build (linked into a
# component by wasm-component-ld, which comes with the toolchain),
# wasm32-wasip2 for plain WASI builds, wasm32-wasip1 for cargo component.
for target in wasm32-unknown-unknown wasm32-wasip2 wasm32-wasip1; do
    if ! rustup target list --installed | grep -qx "$target"; then
        say "adding the $target target (rustup)"
        rustup target add "$target"
    fi
done

# cargo-component, for the scripts that build with it (the tests prove both
# toolchains; the demo needs only the wasm32-wasip2 target).
need_cargo_component() {
    if ! cargo component --version 2>/dev/null | grep -q "$CARGO_COMPONENT_VERSION"; then
        say "installing cargo-component $CARGO_COMPONENT_VERSION (cargo install; takes several minutes once)"
        cargo install --locked --quiet "cargo-component@$CARGO_COMPONENT_VERSION"
    fi
}
