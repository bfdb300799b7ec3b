# Shared helpers for scripts/provision.sh, scripts/test and images/build.sh (source it, do not run it).
# shellcheck shell=bash

# The repository root, whatever the caller's working directory.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Pinned Codex CLI: declared once in agent/CODEX_CLI_VERSION (the agent reads it too, and warns,
# CODEX-W001, when the installed CLI differs); bump it there only, every script and image follows.
CODEX_VERSION="${CODEX_VERSION:-$(tr -d '[:space:]' <"$REPO_ROOT/agent/CODEX_CLI_VERSION")}"
CODEX_PREFIX="$REPO_ROOT/.cache/codex"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

# codex_bin_path: where npm puts the static musl binary for this machine's architecture.
codex_bin_path() {
    local pkg triple
    case "$(uname -m)" in
        x86_64) pkg=codex-linux-x64 triple=x86_64-unknown-linux-musl ;;
        aarch64 | arm64) pkg=codex-linux-arm64 triple=aarch64-unknown-linux-musl ;;
        *) log "unsupported architecture $(uname -m)"; return 1 ;;
    esac
    printf '%s\n' "$CODEX_PREFIX/node_modules/@openai/$pkg/vendor/$triple/bin/codex"
}

# quietly CMD...: send CMD's chatter to $QUIET_LOG; show its tail and fail when CMD fails.
quietly() {
    local out="${QUIET_LOG:?set QUIET_LOG before quietly}"
    "$@" >"$out" 2>&1 || { tail -n 40 "$out" >&2; log "failed: $* (full log: $out)"; exit 1; }
}

# wait_for SECONDS DESCRIPTION CMD...: retry CMD once a second; fail loudly when the time is up.
wait_for() {
    local deadline=$((SECONDS + $1)) what="$2"
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out waiting for $what"
            return 1
        fi
        sleep 1
    done
}
