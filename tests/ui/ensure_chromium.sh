#!/usr/bin/env bash
# Make sure Debian's chromium is installed for the sidebar's UI tests (tests/ui), which drive it with
# Playwright's Python package; Playwright's own browser downloads are never used.
#
# Usage: tests/ui/ensure_chromium.sh        print the chromium executable, installing it when missing
# Exit status: 0 found or installed; 3 impossible on this machine (the reason is printed last on stderr
# and kept in $CACHE/IMPOSSIBLE for the tests to skip with); anything else is a real failure.
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/jupyter_mlflow_k8s/chromium"

log() { printf '[chromium] %s\n' "$*" >&2; }
impossible() {
    mkdir -p "$CACHE"
    printf '%s\n' "$*" >"$CACHE/IMPOSSIBLE"
    log "impossible here: $*"
    exit 3
}
found() {
    local exe="${JMK_CHROMIUM:-$(command -v chromium || true)}"
    [[ -n "$exe" && -x "$exe" ]] || return 1
    rm -f "$CACHE/IMPOSSIBLE"
    echo "$exe"
}

found && exit 0

command -v apt-get >/dev/null && command -v dpkg >/dev/null || impossible "chromium is not installed and this is not a Debian system (no apt-get): install Chromium and set JMK_CHROMIUM=/path/to/it"
if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    impossible "chromium is not installed and installing it needs root: run 'sudo apt-get install chromium'"
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null; then flock 9; fi  # one install per machine at a time
found && exit 0

log "installing Debian's chromium (about 30 s, 500 MB)"
"${SUDO[@]}" apt-get -q update >"$CACHE/apt-update.log" 2>&1 \
    || impossible "the Debian archive is not reachable (apt-get update failed; see $CACHE/apt-update.log)"
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get -q install -y --no-install-recommends chromium \
    >"$CACHE/apt-install.log" 2>&1 || impossible "apt-get install chromium failed (see $CACHE/apt-install.log)"
found || { log "chromium installed but not found on PATH"; exit 1; }
