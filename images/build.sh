#!/usr/bin/env bash
# Build the images with no container registry:
#   codex-worker-agent/worker:dev   Celery worker + agent (images/worker/Dockerfile)
#   codex-worker-agent/job:dev      Codex job container  (images/job/Dockerfile)
#   codex-worker-agent/busybox:dev  2 MB throwaway image for tests (images/busybox/Dockerfile)
# Usage: images/build.sh [--base IMAGE] [--postgres]   (or BASE_IMAGE=IMAGE). Default: python:3.11-slim when present
# or pullable, else codex-agent-base:bookworm built by images/base/build-local-base.sh.
# Needs: dockerd, the Codex CLI in .cache/codex and .venv (scripts/provision.sh), busybox-static.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"

# CODEX_IMAGE_TAG (default dev) lets parallel checkouts on one engine build without clobbering each other.
TAG="${CODEX_IMAGE_TAG:-dev}"
WORKER_IMAGE=codex-worker-agent/worker:$TAG
JOB_IMAGE=codex-worker-agent/job:$TAG
BUSYBOX_IMAGE=codex-worker-agent/busybox:$TAG
# --postgres also builds codex-worker-agent/postgres:dev (images/postgres/Dockerfile, Debian's package)
# for the compose profile `postgres`; apt inside that build fetches from Debian, not from a registry.
POSTGRES_IMAGE=codex-worker-agent/postgres:dev
with_postgres=0
LOCAL_BASE=codex-agent-base:bookworm
CONTEXT="$REPO_ROOT/.cache/build-context"
# Where pip's and docker's chatter goes (its tail is shown when a step fails).
QUIET_LOG="$REPO_ROOT/.cache/build.log"
# No buildx here and the daemon may be 20.10: the legacy builder is the one that works everywhere.
export DOCKER_BUILDKIT=0

base="${BASE_IMAGE:-}"
while (($#)); do
    case "$1" in
        --base) base="${2:?--base needs an image}"; shift 2 ;;
        --base=*) base="${1#--base=}"; shift ;;
        --postgres) with_postgres=1; shift ;;
        -h | --help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) log "unknown argument: $1"; exit 2 ;;
    esac
done

# Parallel test sessions share the context dir and the tags.
mkdir -p "$CONTEXT"
exec 8>"$REPO_ROOT/.cache/build.lock"
flock -w 900 8 || { log "another images/build.sh still holds .cache/build.lock"; exit 1; }

pick_base() {
    if [[ -n "$base" ]]; then return; fi
    if docker image inspect python:3.11-slim >/dev/null 2>&1 ||
        timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then
        base=python:3.11-slim
    else
        log "python:3.11-slim unavailable (no registry): using $LOCAL_BASE"
        "$REPO_ROOT/images/base/build-local-base.sh" "$LOCAL_BASE" >&2
        base="$LOCAL_BASE"
    fi
}

# link_into SRC DEST: hard-link (or copy across filesystems) unless DEST already is SRC's content.
link_into() {
    if [[ "$1" -ef "$2" ]] || cmp -s "$1" "$2"; then return; fi
    ln -f "$1" "$2" 2>/dev/null || cp -f "$1" "$2"
}

# hash_of PATHS...: one digest over the content of the tracked and untracked, not ignored, files.
hash_of() {
    git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard -- "$@" |
        (cd "$REPO_ROOT" && xargs -0 -r sha256sum) | sha256sum | cut -d' ' -f1
}

# Wheels are rebuilt only when their inputs change: an unchanged wheel keeps the docker layer cached.
build_wheels() {
    local pip="$REPO_ROOT/.venv/bin/pip" deps="$CONTEXT/wheels/deps" project="$CONTEXT/wheels/project"
    local deps_hash project_hash tmp target_python missing round
    [[ -x "$pip" ]] || { log "no $pip: run scripts/provision.sh first"; exit 1; }
    deps_hash="$(hash_of pyproject.toml):$(docker image inspect -f '{{.Id}}' "$base")"
    project_hash="$(hash_of pyproject.toml README.md agent worker_entry)"
    if [[ "$(cat "$deps/.stamp" 2>/dev/null)" != "$deps_hash" ]]; then
        log "building dependency wheels"
        tmp="$(mktemp -d "$CONTEXT/.wheels.XXXXXX")"
        quietly "$pip" wheel --disable-pip-version-check --wheel-dir "$tmp" "$REPO_ROOT"
        rm -f "$tmp"/codex_worker_agent-*.whl
        # Markers were evaluated for the host's Python: add what the image's Python needs too.
        target_python="$(docker run --rm --entrypoint python3 "$base" -c \
            'import platform; print(platform.python_version())')"
        for round in 1 2 3 4; do
            mapfile -t missing < <("$REPO_ROOT/.venv/bin/python" "$REPO_ROOT/images/wheel_closure.py" \
                "$tmp" "$target_python")
            ((${#missing[@]})) || break
            log "adding wheels for Python $target_python (round $round): ${missing[*]}"
            quietly "$pip" wheel --disable-pip-version-check --wheel-dir "$tmp" "${missing[@]}"
        done
        rm -rf "$deps" && mkdir -p "$CONTEXT/wheels" && mv "$tmp" "$deps"
        printf '%s\n' "$deps_hash" >"$deps/.stamp"
    fi
    if [[ "$(cat "$project/.stamp" 2>/dev/null)" != "$project_hash" ]]; then
        log "building the project wheel"
        rm -rf "$project" && mkdir -p "$project"
        quietly "$pip" wheel --disable-pip-version-check --no-deps --wheel-dir "$project" "$REPO_ROOT"
        printf '%s\n' "$project_hash" >"$project/.stamp"
    fi
}

assemble_context() {
    local codex busybox
    codex="$(codex_bin_path)"
    [[ -x "$codex" ]] || { log "no Codex CLI at $codex: run scripts/provision.sh first"; exit 1; }
    # The images carry the release the agent supports (agent/CODEX_CLI_VERSION), never another one.
    if [[ "$("$codex" --version 2>/dev/null)" != "codex-cli $CODEX_VERSION" ]]; then
        log "$codex is $("$codex" --version 2>&1 | head -n 1), not codex-cli $CODEX_VERSION: run scripts/provision.sh"
        exit 1
    fi
    link_into "$codex" "$CONTEXT/codex"
    busybox="$(command -v busybox || true)"
    if [[ -z "$busybox" ]] || ldd "$busybox" >/dev/null 2>&1; then
        log "need a static busybox: apt-get install -y busybox-static"
        exit 1
    fi
    mkdir -p "$CONTEXT/busybox"
    link_into "$busybox" "$CONTEXT/busybox/busybox"
    build_wheels
}

# build TAG DOCKERFILE CONTEXT [BUILD_ARG...]
build() {
    local args=()
    for arg in "${@:4}"; do args+=(--build-arg "$arg"); done
    log "building $1"
    quietly docker build --force-rm --build-arg "BASE_IMAGE=$base" "${args[@]}" -t "$1" -f "$2" "$3"
}

pick_base
log "base image: $base"
assemble_context
build "$JOB_IMAGE" "$REPO_ROOT/images/job/Dockerfile" "$CONTEXT" "CODEX_CLI_VERSION=$CODEX_VERSION"
build "$WORKER_IMAGE" "$REPO_ROOT/images/worker/Dockerfile" "$CONTEXT" "CODEX_CLI_VERSION=$CODEX_VERSION"
build "$BUSYBOX_IMAGE" "$REPO_ROOT/images/busybox/Dockerfile" "$CONTEXT/busybox"
if ((with_postgres)); then build "$POSTGRES_IMAGE" "$REPO_ROOT/images/postgres/Dockerfile" "$REPO_ROOT/images/postgres"; fi
printf 'WORKER_IMAGE=%s\nJOB_IMAGE=%s\nBUSYBOX_IMAGE=%s\nBASE_IMAGE=%s\n' \
    "$WORKER_IMAGE" "$JOB_IMAGE" "$BUSYBOX_IMAGE" "$base"
