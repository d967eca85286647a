#!/usr/bin/env bash
# Checks the packaging in deploy/ as far as this machine allows, and says
# plainly what it skipped and why:
#
#   1. The files agree with each other: the config, the Dockerfile (paths,
#      entrypoint, port, health check), its .dockerignore, compose.yaml
#      (stores, volumes, tokens, stop grace) and the systemd unit (paths,
#      stop timeout, writable folders).
#   2. `systemd-analyze verify` passes on the unit without a warning, and
#      `systemd-analyze security` rates its sandbox OK or better.
#   3. The unit's ExecStart runs for real, as the unit would run it: its
#      Environment= and an EnvironmentFile made from redstage.env.example,
#      against two redis-server processes with AOF `always` on free
#      loopback ports. `redstage check` passes; /v1/ready turns 200 (asked by
#      the image's HEALTHCHECK command); transactions commit with the
#      config's tokens and scopes; a deploy lands in the deploy folder;
#      SIGTERM ends it with status 0 within the unit's TimeoutStopSec. With
#      strace, every system call it made must pass the unit's
#      SystemCallFilter= and every socket its RestrictAddressFamilies=.
#   4. With a running Docker daemon: the image builds, compose brings the
#      stack up, a transaction commits through it, and it comes down.
#
# Needs the redstage binary (built as the tests build it), the example participants
# for wasm32-wasip2 (built if missing), redis-server and python3 (3.11+,
# for TOML; compose.yaml's checks also need PyYAML). curl if present, else
# bash's /dev/tcp. Installs nothing system-wide: everything lives in a temp
# folder that is removed at the end, with every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/setup.sh

# The binary the test suite builds (the fault points it carries are inert
# unless REDSTAGE_FAULT arms one), or REDSTAGE_BIN, e.g. a release build.
BIN=${REDSTAGE_BIN:-$ROOT/target/debug/redstage}
WASM=$ROOT/target/wasm32-wasip2/release
UNIT=deploy/redstage.service
CONFIG=deploy/redstage.toml

ok() { printf '  ok: %s\n' "$*" >&2; }
skip() { printf '  skipped: %s\n' "$*" >&2; }
fail() {
    printf '  FAILED: %s\n' "$*" >&2
    exit 1
}

tmp=$(mktemp -d -t redstage-packaging.XXXXXX)
pids=()
# Forgets a process that was waited for, so that cleanup cannot signal
# another process that got its id since.
forget() {
    local kept=() pid
    for pid in "${pids[@]}"; do
        [ "$pid" = "$1" ] || kept+=("$pid")
    done
    pids=("${kept[@]}")
}
compose_down=()
check_image=
cleanup() {
    local status=$?
    if [ ${#compose_down[@]} -gt 0 ]; then
        "${compose_down[@]}" >/dev/null 2>&1 || true
    fi
    if [ -n "$check_image" ]; then
        docker image rm "$check_image" >/dev/null 2>&1 || true
    fi
    # The latest first: the service before strace, which would let it go.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -KILL "${pids[i]}" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
    if [ "$status" != 0 ]; then
        printf '\033[1m==> check-packaging failed\033[0m\n' >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 141' PIPE

# --- what the check needs ---------------------------------------------------

command -v python3 >/dev/null || fail "python3 is needed (to read TOML and YAML)"
python3 -c 'import tomllib' 2>/dev/null || fail "python3 3.11 or later is needed (tomllib)"
if [ -z "${REDSTAGE_BIN:-}" ]; then
    say "building redstage as the tests do"
    cargo build --quiet -p redstage-host --features failpoints,embedded --bin redstage
fi
if [ ! -f "$WASM/inventory.wasm" ] || [ ! -f "$WASM/payments.wasm" ]; then
    say "building the example participants (cargo build --target wasm32-wasip2)"
    cargo build --release --quiet --target wasm32-wasip2 -p inventory -p payments
fi

# --- 1. the files agree with each other -------------------------------------

say "1. deploy/: the config, Dockerfile, compose.yaml and the unit agree"
# Prints an `ok:`, `skipped:` or `FAILED:` line per check, and exits 1 if
# any failed; else writes what the rest of this script needs (ExecStart,
# TimeoutStopSec, the HEALTHCHECK command...) to a file of shell
# assignments.
python3 - "$tmp/facts" <<'PY'
import fnmatch, json, os, re, shlex, sys, tomllib
from pathlib import PurePosixPath as P

failures = []
def ok(m): print(f"  ok: {m}", file=sys.stderr)
def skip(m): print(f"  skipped: {m}", file=sys.stderr)
def check(cond, m):
    if cond: ok(m)
    else:
        failures.append(m)
        print(f"  FAILED: {m}", file=sys.stderr)

def seconds(v):
    """A systemd or compose duration (30, 30s, 1min, 1m30s, 500ms) in seconds."""
    v = str(v).strip()
    if re.fullmatch(r"\d+(\.\d+)?", v): return float(v)
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)", v)
    if not parts or "".join(a + b for a, b in parts) != v.replace(" ", ""):
        raise ValueError(f"cannot read the duration {v!r}")
    return sum(float(n) * units[u] for n, u in parts)

# The config.
config = tomllib.load(open("deploy/redstage.toml", "rb"))
listen_port = int(config.get("listen", "127.0.0.1:7878").rsplit(":", 1)[1])
txn = config.get("txn", {})
grace_s = txn.get("shutdown_grace_ms", 10000) / 1000
flush_s = 2 * txn.get("store_timeout_ms", 2000) / 1000
stop_needs = grace_s + flush_s
components = {n: p["component"] for n, p in config.get("participants", {}).items()}
cache_dir = config.get("cache", {}).get("dir")
deploy_folder = config.get("deploy", {}).get("folder")
token_envs = [t["token_env"] for t in config.get("auth", {}).get("tokens", []) if "token_env" in t]
store_urls = {n: (s if isinstance(s, str) else s["url"]) for n, s in config["stores"].items()}
check(all(os.path.isabs(p) for p in components.values()),
      "the config's component paths are absolute (the image's and the unit's)")
check(cache_dir and deploy_folder and os.path.isabs(cache_dir) and os.path.isabs(deploy_folder),
      "the config names an absolute cache.dir and deploy.folder")
check(config.get("durability", "checked") == "checked", "the config keeps durability = \"checked\"")

# The Dockerfile: instructions with their continuation lines joined.
instructions, line = [], ""
for raw in open("deploy/Dockerfile"):
    raw = raw.rstrip("\n")
    if not line and (raw.lstrip().startswith("#") or not raw.strip()):
        continue
    if raw.lstrip().startswith("#"):
        continue
    if raw.endswith("\\"):
        line += raw[:-1] + " "
        continue
    line += raw
    word, _, rest = line.strip().partition(" ")
    instructions.append((word.upper(), rest.strip()))
    line = ""
froms = [rest for word, rest in instructions if word == "FROM"]
final = [i for i, (w, _) in enumerate(instructions) if w == "FROM"][-1]
runtime = instructions[final:]
def last(word, stage=runtime):
    found = [rest for w, rest in stage if w == word]
    return found[-1] if found else None
def exec_form(text):
    try: return json.loads(text)
    except (TypeError, ValueError): return None
copies = []  # (source, destination, from another stage?) of the runtime stage
for w, rest in runtime:
    if w == "COPY":
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        copies.append((args[:-1], args[-1], "--from=" in rest))
def copied_to(path):
    """The COPY that puts `path` in the image, by file or by folder."""
    for sources, dest, staged in copies:
        if dest == path or (dest.endswith("/") and str(P(path).parent) + "/" == dest):
            return sources, dest, staged
    return None

workspace = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["rust-version"]
check(froms[0].split()[0] == f"rust:{workspace}-bookworm",
      f"the build stage is rust:{workspace}-bookworm, the workspace's rust-version")
check(froms[-1].split()[0] == "debian:bookworm-slim", "the runtime stage is debian:bookworm-slim")
entrypoint, cmd = exec_form(last("ENTRYPOINT")), exec_form(last("CMD"))
check(entrypoint == ["redstage"], "ENTRYPOINT is [\"redstage\"]")
binary = copied_to("/usr/local/bin/redstage")
check(binary is not None and binary[2], "the binary is copied from the build stage to /usr/local/bin/redstage")
check(isinstance(cmd, list) and cmd[:2] == ["serve", "--config"] and len(cmd) == 3,
      "CMD is [\"serve\", \"--config\", PATH]")
image_config = cmd[2] if isinstance(cmd, list) and len(cmd) == 3 else None
found = copied_to(image_config) if image_config else None
check(found is not None and found[0] == ["deploy/redstage.toml"],
      f"CMD's config {image_config} is deploy/redstage.toml, copied there")
build_text = " ".join(rest for w, rest in instructions[:final] if w == "RUN")
for name, path in components.items():
    found = copied_to(path)
    stem = P(path).name
    check(found is not None and found[2] and f"-p {P(path).stem}" in build_text and stem in build_text,
          f"participant {name}: {path} is built (-p {P(path).stem}) and copied there")
user = last("USER")
check(user is not None and user.split(":")[0] not in ("root", "0"), f"the image runs as a user of its own ({user})")
run_text = " ".join(rest for w, rest in runtime if w == "RUN")
for what, path in (("cache.dir", cache_dir), ("deploy.folder", deploy_folder)):
    check(path in run_text and "-o redstage" in run_text, f"{what} {path} is made in the image, owned by its user")
exposed = [int(p.split("/")[0]) for e in (r for w, r in runtime if w == "EXPOSE") for p in e.split()]
check(listen_port in exposed, f"EXPOSE has the config's port {listen_port}")
health = last("HEALTHCHECK") or ""
health_cmd = exec_form(health.split(" CMD ", 1)[1]) if " CMD " in health else None
health_src = copied_to(health_cmd[0]) if health_cmd else None
check(health_src is not None and not health_src[2] and len(health_src[0]) == 1,
      "HEALTHCHECK runs a script the Dockerfile copies from the repository")
check("127.0.0.1:%d" % listen_port in open(health_src[0][0]).read() if health_src else False,
      f"the health check asks port {listen_port} by default")

# The .dockerignore: target/ out, everything the Dockerfile copies in.
patterns = [l.strip() for l in open("deploy/Dockerfile.dockerignore") if l.strip() and not l.startswith("#")]
def ignored(path):
    hit = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pat) or (pat.startswith("**/") and fnmatch.fnmatch(p, pat[3:])) for p in prefixes):
            hit = not neg
    return hit
check(ignored("target/release/redstage") and ignored("examples/inventory/target/x"),
      "the build context leaves out target/")
needed = ["Cargo.toml", "Cargo.lock", "host/src/main.rs", "examples/inventory/Cargo.toml"]
needed += [s for sources, _, staged in copies if not staged for s in sources]
check(not any(ignored(p) for p in needed), "the build context keeps every file the Dockerfile copies, and the workspace")

# The unit.
unit = {}
section = None
for raw in open("deploy/redstage.service"):
    raw = raw.strip()
    if not raw or raw.startswith(("#", ";")): continue
    if raw.startswith("["): section = raw.strip("[]"); continue
    key, _, value = raw.partition("=")
    unit.setdefault((section, key.strip()), []).append(value.strip())
svc = lambda key: unit.get(("Service", key), [None])[-1]
exec_start = shlex.split(svc("ExecStart").lstrip("-@:+!"))
check(exec_start[0] == "/usr/local/bin/redstage" and exec_start[1] == "serve",
      "ExecStart runs /usr/local/bin/redstage serve, where the image has it too")
unit_config = exec_start[exec_start.index("--config") + 1] if "--config" in exec_start else None
check(unit_config == image_config, f"ExecStart's config is {image_config}, as in the image")
check(svc("Type") == "exec", "Type=exec (serve does not speak sd_notify)")
check(svc("KillSignal") in (None, "SIGTERM", "TERM"), "KillSignal is SIGTERM")
timeout_stop = seconds(svc("TimeoutStopSec") or "90s")
check(timeout_stop > stop_needs,
      f"TimeoutStopSec ({timeout_stop:g} s) exceeds shutdown_grace_ms + 2 x store_timeout_ms ({stop_needs:g} s)")
check(svc("User") not in (None, "root", "0"), f"the unit runs as User={svc('User')}")
env_file = (svc("EnvironmentFile") or "").lstrip("-")
check(env_file.startswith("/etc/"), f"the unit reads its secrets from EnvironmentFile={env_file}")
writable = [f"/var/lib/{d}" for d in (svc("StateDirectory") or "").split()]
writable += [f"/var/cache/{d}" for d in (svc("CacheDirectory") or "").split()]
writable += (svc("ReadWritePaths") or "").split()
under = lambda path: any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable)
if svc("ProtectSystem") == "strict":
    for what, path in (("cache.dir", cache_dir), ("deploy.folder", deploy_folder)):
        check(under(path), f"{what} {path} is writable under ProtectSystem=strict")
check(svc("MemoryDenyWriteExecute") in (None, "no", "false"),
      "no MemoryDenyWriteExecute= (wasmtime maps compiled code executable)")

# compose.yaml.
try:
    import yaml
except ImportError:
    yaml = None
    skip("compose.yaml's checks: python3 has no PyYAML (apt-get install python3-yaml)")
if yaml:
    compose = yaml.safe_load(open("deploy/compose.yaml"))
    services = compose["services"]
    named_volumes = set((compose.get("volumes") or {}).keys())
    redstage = services.get("redstage") or {}
    redis_volumes = []
    for store, url in store_urls.items():
        host = re.sub(r"^rediss?://(?:[^@/]*@)?", "", url).split(":")[0].split("/")[0]
        service = services.get(host)
        check(service is not None, f"store {store}: its host `{host}` is a compose service")
        if service is None: continue
        command = service.get("command")
        command = " ".join(command) if isinstance(command, list) else str(command)
        check(str(service.get("image", "")).startswith("redis:7"), f"store {store}: {host} runs redis:7")
        check(re.search(r"--appendonly\s+yes", command) and re.search(r"--appendfsync\s+always", command),
              f"store {store}: {host} runs with --appendonly yes --appendfsync always")
        test = service.get("healthcheck", {}).get("test")
        test = " ".join(test) if isinstance(test, list) else str(test)
        check("redis-cli ping" in test, f"store {store}: {host} has a healthcheck with redis-cli ping")
        data = [v.split(":")[0] for v in service.get("volumes", []) if isinstance(v, str) and v.split(":")[1] == "/data"]
        check(len(data) == 1 and data[0] in named_volumes, f"store {store}: {host} keeps /data on a named volume")
        redis_volumes += data
        condition = (redstage.get("depends_on") or {}).get(host, {}).get("condition")
        check(condition == "service_healthy", f"store {store}: redstage waits for {host} to be healthy")
    check(len(set(redis_volumes)) == len(redis_volumes), "each Redis has a volume of its own")
    build = redstage.get("build", {})
    context = os.path.normpath(os.path.join("deploy", build.get("context", ".")))
    dockerfile = os.path.normpath(os.path.join(context, build.get("dockerfile", "Dockerfile")))
    check(context == "." and dockerfile == "deploy/Dockerfile",
          "redstage is built from deploy/Dockerfile with the repository as context")
    env = redstage.get("environment") or {}
    env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
    for name in token_envs:
        check(name in env, f"compose passes the token variable {name}")
    stop_grace = seconds(redstage.get("stop_grace_period", "10s"))
    check(stop_grace > stop_needs,
          f"stop_grace_period ({stop_grace:g} s) exceeds shutdown_grace_ms + 2 x store_timeout_ms ({stop_needs:g} s)")
    mounts = [v.split(":")[1] for v in redstage.get("volumes", []) if isinstance(v, str)]
    for what, path in (("cache.dir", cache_dir), ("deploy.folder", deploy_folder)):
        check(path in mounts, f"{what} {path} is a volume of the redstage service")
    ports = [str(p).rsplit(":", 1)[-1] for p in redstage.get("ports", [])]
    check(str(listen_port) in ports, f"compose publishes the config's port {listen_port}")

if failures:
    sys.exit(1)
with open(sys.argv[1], "w") as facts:
    for key, value in {
        "UNIT_EXEC": shlex.join(exec_start), "UNIT_CONFIG": unit_config,
        "TIMEOUT_STOP": int(timeout_stop), "HEALTH_CMD": shlex.join(health_cmd),
        "HEALTH_SRC": health_src[0][0], "TOKEN_ENVS": " ".join(token_envs),
    }.items():
        facts.write(f"{key}={shlex.quote(str(value))}\n")
PY
# shellcheck source=/dev/null
source "$tmp/facts"

# --- 2. systemd-analyze -----------------------------------------------------

say "2. $UNIT: systemd-analyze"
if command -v systemd-analyze >/dev/null; then
    # verify wants ExecStart's binary to exist: a copy of the unit that runs
    # the binary built here, installed nowhere.
    mkdir "$tmp/unit"
    sed "s#^ExecStart=/usr/local/bin/redstage #ExecStart=$BIN #" "$UNIT" >"$tmp/unit/redstage.service"
    grep -q "^ExecStart=$BIN " "$tmp/unit/redstage.service" || fail "could not point ExecStart at $BIN"
    if ! out=$(systemd-analyze verify "$tmp/unit/redstage.service" 2>&1); then
        printf '%s\n' "$out" >&2
        fail "systemd-analyze verify"
    fi
    # It exits 0 on warnings (an unknown key, a bad value): any line about
    # the unit is one.
    if printf '%s\n' "$out" | grep -F "redstage.service" >&2; then
        fail "systemd-analyze verify warns about the unit"
    fi
    ok "systemd-analyze verify: no warning"
    level=$(systemd-analyze security --offline=true --no-pager "$tmp/unit/redstage.service" 2>&1 |
        sed -n 's/.*Overall exposure level for redstage.service: \([0-9.]* [A-Z]*\).*/\1/p')
    case "$level" in
    *" OK" | *" SAFE") ok "systemd-analyze security: exposure $level" ;;
    *) fail "systemd-analyze security: exposure ${level:-unknown}, expected OK or SAFE" ;;
    esac
else
    skip "systemd-analyze verify and security: systemd-analyze is not installed"
fi

# --- 3. the unit's ExecStart, for real --------------------------------------

say "3. $UNIT: ExecStart against two redis-servers with AOF always"

free_ports() {
    python3 -c 'import socket
socks = [socket.socket() for _ in range('"$1"')]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}
read -r orders_port ledger_port api_port < <(free_ports 3)

for store in orders ledger; do
    port_var=${store}_port
    mkdir -p "$tmp/redis-$store"
    redis-server --port "${!port_var}" --bind 127.0.0.1 -::1 --dir "$tmp/redis-$store" \
        --appendonly yes --appendfsync always --save '' \
        --logfile "$tmp/redis-$store/log" &
    pids+=("$!")
done
for store in orders ledger; do
    port_var=${store}_port
    for _ in $(seq 100); do
        [ "$(redis-cli -p "${!port_var}" ping 2>/dev/null)" = PONG ] && break
        sleep 0.1
    done
    [ "$(redis-cli -p "${!port_var}" ping 2>/dev/null)" = PONG ] || fail "redis-server for $store did not start"
done
ok "redis-server on localhost:$orders_port (orders) and 127.0.0.1:$ledger_port (ledger), appendonly yes, appendfsync always"

# The EnvironmentFile: redstage.env.example with tokens and these stores
# filled in (one by host name, so that the run resolves a name as it does
# compose's service names), and what a machine without /usr/share/redstage
# or /var needs: the components built here, the cache and deploy folder in
# the temp dir, a free loopback port.
token() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
app_token=$(token)
ops_token=$(token)
sed -e "s#^REDSTAGE_APP_TOKEN=.*#REDSTAGE_APP_TOKEN=$app_token#" \
    -e "s#^REDSTAGE_OPS_TOKEN=.*#REDSTAGE_OPS_TOKEN=$ops_token#" \
    -e "s#^REDSTAGE_STORES__ORDERS=.*#REDSTAGE_STORES__ORDERS=redis://localhost:$orders_port#" \
    -e "s#^REDSTAGE_STORES__LEDGER=.*#REDSTAGE_STORES__LEDGER=redis://127.0.0.1:$ledger_port#" \
    deploy/redstage.env.example >"$tmp/redstage.env"
cat >>"$tmp/redstage.env" <<EOF
REDSTAGE_LISTEN=127.0.0.1:$api_port
REDSTAGE_PARTICIPANTS__INVENTORY__COMPONENT=$WASM/inventory.wasm
REDSTAGE_PARTICIPANTS__PAYMENTS__COMPONENT=$WASM/payments.wasm
REDSTAGE_CACHE__DIR=$tmp/var/cache/redstage
REDSTAGE_DEPLOY__FOLDER=$tmp/var/lib/redstage/participants
EOF
for name in $TOKEN_ENVS; do
    grep -q "^$name=" deploy/redstage.env.example || fail "redstage.env.example does not set $name"
done

# The environment systemd would give the service: its own minimal one,
# then the unit's Environment= lines, then the EnvironmentFile's
# VARIABLE=value lines (comments and blank lines skipped, quotes removed).
service_env=("PATH=/usr/local/bin:/usr/bin:/bin" "HOME=$tmp/home" "LANG=C.UTF-8")
while IFS= read -r line; do
    service_env+=("${line#Environment=}")
done < <(grep '^Environment=' "$UNIT")
while IFS= read -r line; do
    case "$line" in '' | '#'* | ';'*) continue ;; esac
    name=${line%%=*} value=${line#*=}
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || fail "not a VARIABLE=value line in the env file: $line"
    value=${value#\"} value=${value%\"} value=${value#\'} value=${value%\'}
    service_env+=("$name=$value")
done <"$tmp/redstage.env"
as_service() { env -i "${service_env[@]}" "$@"; }

# `redstage check` on the config, in that environment.
as_service "$BIN" check --config "$CONFIG" >"$tmp/check.json" 2>"$tmp/check.log" || {
    cat "$tmp/check.json" "$tmp/check.log" >&2
    fail "redstage check --config $CONFIG"
}
python3 - "$tmp/check.json" <<'PY' || fail "redstage check's summary"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["status"] == "ok" and s["durability"] == "checked", s
assert sorted(s["participants"]) == ["inventory", "payments"] and s["tokens"] == 2, s
PY
ok "redstage check --config $CONFIG: ok, durability checked, 2 participants, 2 tokens"

# ExecStart as the unit has it, with the binary built here and the config
# of the repository.
read -r -a argv <<<"$UNIT_EXEC"
[ "${argv[0]}" = /usr/local/bin/redstage ] || fail "ExecStart does not start with /usr/local/bin/redstage"
argv[0]=$BIN
for i in "${!argv[@]}"; do
    if [ "${argv[i]}" = "$UNIT_CONFIG" ]; then argv[i]=$CONFIG; fi
done
# (env itself, not the as_service function: in the background a function
# runs in a subshell of its own, whose id would be $!.)
if command -v strace >/dev/null; then
    # Followed through every thread, to compare with SystemCallFilter=.
    env -i "${service_env[@]}" strace -f -qq -o "$tmp/strace.log" "${argv[@]}" 2>"$tmp/serve.log" &
    tracer=$!
    pids+=("$tracer")
    # By name: strace forks short-lived children of its own at start (to
    # probe what ptrace can do), and one of them may be all there is yet.
    for _ in $(seq 50); do
        service=$(pgrep -P "$tracer" -x "$(basename "${argv[0]}")" || true)
        [ -n "$service" ] && break
        sleep 0.1
    done
    [ -n "$service" ] || fail "ExecStart did not start under strace"
else
    env -i "${service_env[@]}" "${argv[@]}" 2>"$tmp/serve.log" &
    service=$!
    tracer=
fi
pids+=("$service")
ok "started: ${argv[*]}"

api="127.0.0.1:$api_port"

# HTTP to $api (HOST:PORT), with curl or bash's /dev/tcp. Sets $status and
# $body; returns 1, saying so, when nothing answers.
http() { # METHOD PATH [TOKEN] [JSON BODY]
    local method=$1 path=$2 auth=${3:-} data=${4:-}
    status='' body=''
    if command -v curl >/dev/null && [ -z "${CHECK_PACKAGING_NO_CURL:-}" ]; then
        local args=(-sS -o "$tmp/body" -w '%{http_code}' -X "$method" --max-time 30)
        [ -n "$auth" ] && args+=(-H "Authorization: Bearer $auth")
        [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary "$data")
        if ! status=$(curl "${args[@]}" "http://$api$path"); then
            echo "  $method $path: no answer" >&2
            return 1
        fi
        body=$(cat "$tmp/body")
    else
        local response
        if ! exec 3<>"/dev/tcp/${api%:*}/${api##*:}"; then
            echo "  $method $path: no answer" >&2
            return 1
        fi
        # A server may answer (401) and close before the body is sent: a
        # write error then, not a SIGPIPE for the script.
        (
            trap '' PIPE
            printf '%s %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n' "$method" "$path" "$api"
            [ -n "$auth" ] && printf 'Authorization: Bearer %s\r\n' "$auth"
            [ -n "$data" ] && printf 'Content-Type: application/json\r\nContent-Length: %s\r\n' \
                "$(LC_ALL=C && printf '%s' "${#data}")"
            printf '\r\n%s' "$data"
        ) >&3 2>/dev/null || true
        IFS= read -r -d '' -t 30 response <&3 || true
        exec 3<&-
        status=$(printf '%s\n' "${response%%$'\r'*}" | cut -d' ' -f2)
        body=${response#*$'\r\n\r\n'}
    fi
}
json() { python3 -c 'import json, sys; v = json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v[int(k)] if k.isdigit() else v.get(k)
print(v)' "$1" <<<"$body"; }
# Fails unless the last answer was 200 with FIELD (json's path) = VALUE.
expect() { # FIELD VALUE WHAT
    if [ "$status" != 200 ] || [ "$(json "$1")" != "$2" ]; then
        fail "$3: $status $body"
    fi
}

# Ready, asked the way the image's HEALTHCHECK asks (its script, from the
# service's environment, so on the port REDSTAGE_LISTEN names).
read -r -a health <<<"$HEALTH_CMD"
health[0]=$ROOT/$HEALTH_SRC
ready=
for _ in $(seq 150); do
    kill -0 "$service" 2>/dev/null || { cat "$tmp/serve.log" >&2; fail "serve exited at start"; }
    if as_service "${health[@]}" >/dev/null 2>&1; then
        ready=yes
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || { cat "$tmp/serve.log" >&2; fail "GET /v1/ready did not answer 200 within 15 s"; }
ok "GET /v1/ready: 200, as the image's HEALTHCHECK (${HEALTH_CMD}) sees it"
http GET /v1/ready
expect status ready "GET /v1/ready"

order='{"steps":[{"participant":"inventory","input":{"op":"deduct","sku":"A1","qty":2}},
  {"participant":"payments","input":{"op":"transfer","from":"alice","to":"shop","amount":30}}]}'
http POST /v1/transactions "" "$order"
[ "$status" = 401 ] || fail "POST /v1/transactions without a token: $status, expected 401"
http POST /v1/transactions "$ops_token" "$order"
[ "$status" = 403 ] || fail "POST /v1/transactions with the ops token: $status, expected 403"
ok "POST /v1/transactions: 401 without a token, 403 with a token without the submit scope"

stock='{"steps":[{"participant":"inventory","input":{"op":"restock","sku":"A1","qty":10}},
  {"participant":"payments","input":{"op":"deposit","account":"alice","amount":100}}]}'
for what in stock order; do
    http POST /v1/transactions "$app_token" "${!what}"
    expect status committed "POST /v1/transactions ($what)"
done
id=$(json id)
http GET "/v1/transactions/$id" "$app_token"
expect status committed "GET /v1/transactions/$id"
ok "POST /v1/transactions: an order across both stores committed; GET /v1/transactions/{id} says so"
levels='{"steps":[{"participant":"inventory","input":{"op":"levels","skus":["A1"]}},
  {"participant":"payments","input":{"op":"balances","accounts":["alice","shop"]}}]}'
http POST /v1/transactions "$app_token" "$levels"
[ "$(json steps.0.output.A1)/$(json steps.1.output.alice)/$(json steps.1.output.shop)" = 8/70/30 ] ||
    fail "after the order: $body, expected stock 8, alice 70, shop 30"
ok "after it: stock 8, alice 70, shop 30"

# A deploy with the ops token lands in the deploy folder and runs.
REDSTAGE_TOKEN=$ops_token "$BIN" deploy --server "http://$api" --store ledger --prefix wallet: \
    wallet "$WASM/payments.wasm" >"$tmp/deploy.json" 2>&1 || {
    cat "$tmp/deploy.json" >&2
    fail "redstage deploy"
}
[ -f "$tmp/var/lib/redstage/participants/wallet.wasm" ] || fail "the deploy wrote no wallet.wasm in deploy.folder"
http POST /v1/transactions "$app_token" \
    '{"steps":[{"participant":"wallet","input":{"op":"deposit","account":"bob","amount":5}}]}'
expect status committed "a transaction on the deployed participant"
http GET /metrics "$ops_token"
[ "$status" = 200 ] || fail "GET /metrics with the ops token: $status"
ok "redstage deploy with the ops token: wallet.wasm in deploy.folder, a transaction on it committed; /metrics read"
[ -n "$(find "$tmp/var/cache/redstage/modules" -type f 2>/dev/null)" ] ||
    fail "nothing compiled into cache.dir"
ok "compiled components kept in cache.dir"

# SIGTERM: drained, exit status 0, within TimeoutStopSec.
start=$(date +%s%N)
kill -TERM "$service"
stopped=
for _ in $(seq $((TIMEOUT_STOP * 10))); do
    if ! kill -0 "$service" 2>/dev/null; then
        stopped=yes
        break
    fi
    sleep 0.1
done
[ -n "$stopped" ] || fail "still running ${TIMEOUT_STOP} s (TimeoutStopSec) after SIGTERM"
code=0
wait "${tracer:-$service}" || code=$?
forget "$service"
if [ -n "$tracer" ]; then forget "$tracer"; fi
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
[ "$code" = 0 ] || { cat "$tmp/serve.log" >&2; fail "exit status $code after SIGTERM, expected 0"; }
ok "SIGTERM: exit status 0 after ${elapsed_ms} ms (TimeoutStopSec ${TIMEOUT_STOP} s)"
grep -q $'\033\\[' "$tmp/serve.log" && fail "colour codes in the log despite the unit's NO_COLOR=1"
grep -q 'shutting down' "$tmp/serve.log" || fail "the log does not say it shut down"
if grep -E ' (WARN|ERROR) ' "$tmp/serve.log" >&2; then
    fail "warnings or errors in the log"
fi
ok "the log is plain text, without warnings or errors, and says it shut down"

# What the run did, against the unit's sandbox: every socket's address
# family against RestrictAddressFamilies=, every system call against
# SystemCallFilter= (the first line an allow list, each ~ line taking
# groups or calls away). Either would make the service fail under systemd.
if [ -n "$tracer" ]; then
    sed -nE 's/^[0-9]+ +([a-z_0-9]+)\(.*/\1/p' "$tmp/strace.log" | sort -u >"$tmp/made"
    [ -s "$tmp/made" ] || fail "strace recorded no system call"
    families=$(sed -nE 's/^[0-9]+ +socket(pair)?\((AF_[A-Z0-9]+).*/\2/p' "$tmp/strace.log" | sort -u | tr '\n' ' ')
    restrict=$(sed -n 's/^RestrictAddressFamilies=//p' "$UNIT" | tail -n 1)
    if [ -n "$restrict" ]; then
        for family in $families; do
            case " ${restrict#\~} " in
            *" $family "*) [[ $restrict != '~'* ]] ;;
            *) [[ $restrict == '~'* ]] ;;
            esac || fail "RestrictAddressFamilies=$restrict would refuse the $family socket the run opened"
        done
        ok "RestrictAddressFamilies= allows every socket the run opened: ${families% }"
    else
        skip "the address family check: the unit has no RestrictAddressFamilies="
    fi
    if command -v systemd-analyze >/dev/null && grep -q '^SystemCallFilter=' "$UNIT"; then
        expand() { # a @group or a call -> the calls, one a line
            case "$1" in
            @*)
                systemd-analyze syscall-filter --no-pager "$1" | tail -n +2 |
                    sed -e 's/^ *//' -e '/^#/d' -e '/^$/d' | while read -r item; do expand "$item"; done
                ;;
            *) echo "$1" ;;
            esac
        }
        : >"$tmp/allowed"
        while IFS= read -r filter; do
            if [[ $filter == '~'* ]]; then
                for item in ${filter#\~}; do expand "$item"; done | sort -u >"$tmp/denied"
                comm -23 "$tmp/allowed" "$tmp/denied" >"$tmp/allowed.next"
            else
                { cat "$tmp/allowed"; for item in $filter; do expand "$item"; done; } | sort -u >"$tmp/allowed.next"
            fi
            mv "$tmp/allowed.next" "$tmp/allowed"
        done < <(sed -n 's/^SystemCallFilter=//p' "$UNIT")
        denied=$(comm -23 "$tmp/made" "$tmp/allowed" | tr '\n' ' ')
        [ -z "$denied" ] || fail "SystemCallFilter= would kill the service on: $denied"
        ok "SystemCallFilter= allows all $(wc -l <"$tmp/made") system calls the run made"
    else
        skip "the system call check: systemd-analyze is not installed, or the unit has no SystemCallFilter="
    fi
else
    skip "the sandbox checks of the run (system calls, address families): strace is not installed"
fi
if [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
    skip "the unit's sandboxing under systemd itself: this check installs nothing system-wide"
else
    skip "the unit's sandboxing under systemd itself: systemd is not PID 1 here"
fi

# --- 4. the image and compose -----------------------------------------------

say "4. deploy/Dockerfile and deploy/compose.yaml: docker"
# (The first image build is a release build of redstage: about as long as
# the one that made target/release/redstage.)
compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
fi
if [ ${#compose[@]} -gt 0 ]; then
    # Needs no daemon.
    REDSTAGE_APP_TOKEN=$app_token REDSTAGE_OPS_TOKEN=$ops_token \
        "${compose[@]}" -f deploy/compose.yaml config -q || fail "${compose[*]} config"
    ok "${compose[*]} config: compose.yaml is valid"
else
    skip "compose: neither the docker compose plugin nor docker-compose is installed"
fi
if ! command -v docker >/dev/null; then
    skip "the image build and compose up: docker is not installed"
elif ! docker info >/dev/null 2>&1; then
    skip "the image build and compose up: docker daemon not running"
else
    docker build -f deploy/Dockerfile -t "redstage:check-$$" . || fail "docker build -f deploy/Dockerfile ."
    docker image rm "redstage:check-$$" >/dev/null
    ok "docker build -f deploy/Dockerfile ."
    if [ ${#compose[@]} -gt 0 ]; then
        # A project of its own, published on a free port, removed with its
        # volumes at the end (also when this fails half-way: see cleanup).
        read -r publish_port < <(free_ports 1)
        export REDSTAGE_APP_TOKEN=$app_token REDSTAGE_OPS_TOKEN=$ops_token
        export REDSTAGE_PUBLISH=127.0.0.1:$publish_port REDSTAGE_IMAGE=redstage:check-$$
        compose+=(-p "redstage-check-$$" -f deploy/compose.yaml)
        compose_down=("${compose[@]}" down -v)
        check_image=$REDSTAGE_IMAGE
        "${compose[@]}" up -d --build || fail "${compose[*]} up"
        ok "${compose[*]} up: the stack started"
        api=$REDSTAGE_PUBLISH
        for _ in $(seq 120); do
            http GET /v1/ready 2>/dev/null || true
            [ "$status" = 200 ] && break
            sleep 1
        done
        if [ "$status" != 200 ]; then
            "${compose[@]}" logs >&2
            fail "the stack's /v1/ready did not answer 200 within 120 s"
        fi
        http POST /v1/transactions "$app_token" "$stock"
        expect status committed "POST /v1/transactions through compose"
        ok "POST /v1/transactions through compose: committed"
        "${compose[@]}" down -v || fail "${compose[*]} down"
        compose_down=()
        docker image rm "$check_image" >/dev/null
        check_image=
        ok "${compose[*]} down -v"
    fi
fi

say "deploy/ checked"
