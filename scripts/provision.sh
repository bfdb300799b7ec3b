#!/usr/bin/env bash
# Bring a Debian bookworm machine (as root) to the state the tests need: system packages, a running
# dockerd, Redis and RabbitMQ, the pinned Codex CLI under .cache/codex and the project venv.
# Idempotent: each step checks first and does nothing when already done, so it is cheap to re-run.
# Prints CODEX_BIN=<absolute path> as its last line on stdout; everything else goes to stderr.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

APT_PACKAGES=(docker.io docker-compose redis-server rabbitmq-server debootstrap jq busybox-static)
LOG_DIR="${PROVISION_LOG_DIR:-/var/log}"
QUIET_LOG="$REPO_ROOT/.cache/provision.log"

# One provisioner at a time: two concurrent test runs must not race on apt, npm or pip.
mkdir -p "$REPO_ROOT/.cache"
exec 9>"$REPO_ROOT/.cache/provision.lock"
flock -w 600 9 || { log "another provision.sh still holds .cache/provision.lock"; exit 1; }

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
    setsid dockerd >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
    wait_for 60 dockerd docker info
}

start_redis() {
    if [[ "$(redis-cli -p 6379 ping 2>/dev/null)" == PONG ]]; then
        log "redis running"
        return
    fi
    log "starting redis-server on 6379"
    redis-server --daemonize yes --port 6379 --logfile "$LOG_DIR/redis-test.log" >&2
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
        RABBITMQ_PID_FILE="$pid_file" rabbitmq-server -detached >&2
        # `wait` follows the pid file; `await_startup` would fail at once if it ran before the
        # detached node registered with epmd.
        timeout 120 rabbitmqctl wait --timeout 110 "$pid_file" >&2
    fi
    # The AMQP listener opens a moment after the node reports it has started.
    wait_for 30 "rabbitmq on 5672" amqp_answers
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
install_codex
setup_venv
echo "CODEX_BIN=$(codex_bin_path)"
