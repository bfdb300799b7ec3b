#!/usr/bin/env bash
# Bring a Debian bookworm machine (as root) to the state the tests need: system packages, a running
# dockerd, compose v1 and v2, Redis, RabbitMQ, PostgreSQL (the result backend), the pinned Codex CLI
# under .cache/codex and the project venv.
# Idempotent: each step checks first and does nothing when already done, so it is cheap to re-run.
# Prints CODEX_BIN=<absolute path> as its last line on stdout; everything else goes to stderr.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

APT_PACKAGES=(docker.io docker-compose redis-server rabbitmq-server postgresql debootstrap jq busybox-static prometheus)
LOG_DIR="${PROVISION_LOG_DIR:-/var/log}"
QUIET_LOG="$REPO_ROOT/.cache/provision.log"

# One provisioner at a time: two concurrent test runs must not race on apt, npm or pip.
mkdir -p "$REPO_ROOT/.cache"
exec 9>"$REPO_ROOT/.cache/provision.lock"
flock -w 600 9 || { log "another provision.sh still holds .cache/provision.lock"; exit 1; }
# Daemons started below get `9>&-`: one that inherited fd 9 would hold this lock for its whole life.

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do installed "$pkg" || missing+=("$pkg"); done
    # python3 -m venv needs ensurepip, which Debian ships separately.
    python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
    if ((${#missing[@]} == 0)); then
        log "apt packages present"
        return
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quietly apt-get update
    quietly apt-get install -y --no-install-recommends "${missing[@]}"
}

start_dockerd() {
    if docker info >/dev/null 2>&1; then
        log "dockerd running"
        return
    fi
    log "starting dockerd (log: $LOG_DIR/dockerd.log)"
    # setsid: dockerd must outlive this script and its process group.
    setsid dockerd >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
    wait_for 60 dockerd docker info
}

start_redis() {
    if [[ "$(redis-cli -p 6379 ping 2>/dev/null)" == PONG ]]; then
        log "redis running"
        return
    fi
    log "starting redis-server on 6379"
    # A test broker keeps nothing on disk: with snapshots on, Redis would write into its working
    # directory (this checkout) and refuse every write once that directory is gone.
    redis-server --daemonize yes --port 6379 --save '' --appendonly no --dir /tmp \
        --logfile "$LOG_DIR/redis-test.log" >&2 9>&-
    wait_for 30 redis redis-cli -p 6379 ping
}

amqp_answers() { timeout 2 bash -c '</dev/tcp/127.0.0.1/5672'; }

start_rabbitmq() {
    if amqp_answers 2>/dev/null; then
        log "rabbitmq running"
        return
    fi
    if rabbitmqctl -q ping >/dev/null 2>&1; then
        log "rabbitmq node up; waiting for its AMQP listener"
    else
        log "starting rabbitmq-server"
        # The server runs as the rabbitmq user, so the pid file lives where that user can write.
        local pid_file=/var/lib/rabbitmq/codex-agent-provision.pid
        rm -f "$pid_file"
        RABBITMQ_PID_FILE="$pid_file" rabbitmq-server -detached >&2 9>&-
        # `wait` follows the pid file; `await_startup` would fail at once if it ran before the
        # detached node registered with epmd.
        timeout 120 rabbitmqctl wait --timeout 110 "$pid_file" >&2
    fi
    # The AMQP listener opens a moment after the node reports it has started.
    wait_for 30 "rabbitmq on 5672" amqp_answers
}

# PostgreSQL for the result-backend tests: a cluster of our own ("codexagent", port 5433, loopback
# only) with a database and a user whose password is a public test value, never a real secret.
PG_CLUSTER=codexagent
PG_PORT=5433
PG_DATABASE=codex_results
PG_USER=codex_results
PG_TEST_PASSWORD=codex-test-only

pg_cluster_field() { pg_lsclusters -h | awk -v c="$PG_CLUSTER" -v f="$1" '$2 == c {print $f}'; }

start_postgresql() {
    local version
    if [[ -z "$(pg_cluster_field 1)" ]]; then
        version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
        log "creating PostgreSQL $version cluster $PG_CLUSTER on 127.0.0.1:$PG_PORT"
        quietly pg_createcluster "$version" "$PG_CLUSTER" -p "$PG_PORT" -- --auth-local=peer --auth-host=scram-sha-256
    fi
    version="$(pg_cluster_field 1)"
    if [[ "$(pg_cluster_field 4)" == online ]]; then
        log "postgresql running"
    else
        log "starting PostgreSQL cluster $version/$PG_CLUSTER"
        pg_ctlcluster "$version" "$PG_CLUSTER" start 9>&-
    fi
    wait_for 30 "postgresql on $PG_PORT" su postgres -c "pg_isready -q -p $PG_PORT"
    su postgres -c "psql -qAt -p $PG_PORT" >/dev/null <<SQL
SELECT 'CREATE ROLE $PG_USER LOGIN PASSWORD ''$PG_TEST_PASSWORD'''
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER')\gexec
SELECT 'CREATE DATABASE $PG_DATABASE OWNER $PG_USER'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DATABASE')\gexec
SQL
}

# Compose v2 (what users run as `docker compose`): bookworm ships only v1, so take the Go plugin from
# Debian trixie's package (it needs nothing but glibc >= 2.34). Pinned by version and sha256; if the
# mirror has moved on, the current trixie package is fetched through apt, which checks its signature.
COMPOSE_V2_DEB=docker-compose_2.26.1-4_amd64.deb
COMPOSE_V2_SHA256=47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea
COMPOSE_V2_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose

install_compose_v2() {
    if docker compose version >/dev/null 2>&1; then  # any compose plugin (v2 or newer) will do
        log "docker compose plugin present: $(docker compose version --short 2>/dev/null)"
        return
    fi
    local work="$REPO_ROOT/.cache/compose-v2" deb
    mkdir -p "$work"
    rm -rf "${work:?}"/*.deb "$work"/*.part "$work/extract"
    log "installing docker compose v2 as $COMPOSE_V2_PLUGIN"
    if [[ "$(dpkg --print-architecture)" == amd64 ]] && fetch_pinned_compose_v2 "$work/$COMPOSE_V2_DEB"; then
        deb="$work/$COMPOSE_V2_DEB"
    else
        deb="$(fetch_trixie_compose_v2 "$work")"
    fi
    dpkg-deb -x "$deb" "$work/extract"
    install -D -m 0755 "$work/extract/usr/libexec/docker/cli-plugins/docker-compose" "$COMPOSE_V2_PLUGIN"
    docker compose version >&2
}

fetch_pinned_compose_v2() {
    local out="$1"
    python3 - "http://deb.debian.org/debian/pool/main/d/docker-compose/$COMPOSE_V2_DEB" "$out.part" <<'PY' || return 1
import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
PY
    echo "$COMPOSE_V2_SHA256  $out.part" | sha256sum -c --quiet >&2 || return 1
    mv "$out.part" "$out"
}

# fetch_trixie_compose_v2 DIR: download trixie's docker-compose .deb with a private apt state (the
# system's sources and lists are untouched); prints the .deb's path.
fetch_trixie_compose_v2() {
    local dir="$1" apt_dir="$1/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        >"$apt_dir/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives")
    log "the pinned $COMPOSE_V2_DEB is unavailable or changed; taking trixie's current docker-compose through apt"
    quietly apt-get "${opts[@]}" update
    (cd "$dir" && quietly apt-get "${opts[@]}" download docker-compose)
    ls "$dir"/docker-compose_*.deb | head -n 1
}

install_codex() {
    local manifest="$CODEX_PREFIX/node_modules/@openai/codex/package.json" bin
    bin="$(codex_bin_path)"
    if [[ -x "$bin" && -f "$manifest" ]] &&
        [[ "$(jq -r .version "$manifest")" == "$CODEX_VERSION" ]]; then
        log "codex $CODEX_VERSION present"
        return
    fi
    log "installing @openai/codex@$CODEX_VERSION into $CODEX_PREFIX"
    mkdir -p "$CODEX_PREFIX"
    quietly npm install --prefix "$CODEX_PREFIX" --no-save --no-audit --no-fund \
        "@openai/codex@$CODEX_VERSION"
    [[ -x "$bin" ]] || { log "npm did not provide $bin"; exit 1; }
}

# The venv is stale when pyproject.toml or the interpreter changed since the last install.
venv_stamp() { { sha256sum "$REPO_ROOT/pyproject.toml"; python3 -VV; } | sha256sum | cut -d' ' -f1; }

setup_venv() {
    local venv="$REPO_ROOT/.venv" stamp
    stamp="$(venv_stamp)"
    if [[ -f "$venv/.provision-stamp" && "$(cat "$venv/.provision-stamp")" == "$stamp" ]] &&
        "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
        log "venv up to date"
        return
    fi
    "$venv/bin/python" -V >/dev/null 2>&1 || { log "creating $venv"; python3 -m venv "$venv"; }
    log "installing the project into $venv"
    quietly "$venv/bin/pip" install --disable-pip-version-check -e "$REPO_ROOT[test]"
    printf '%s\n' "$stamp" >"$venv/.provision-stamp"
}

install_packages
start_dockerd
start_redis
start_rabbitmq
start_postgresql
install_compose_v2
install_codex
setup_venv
echo "CODEX_BIN=$(codex_bin_path)"
