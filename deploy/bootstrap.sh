#!/usr/bin/env bash
# Idempotent set-up of everything tritonstack needs on a Debian 12 machine (no Docker, no GPU):
#   1. Debian packages (libb64-0d: perf_analyzer; redis-server: gateway and feature store;
#      prometheus: promtool and the local Prometheus; docker-compose: offline Compose checks),
#      installed when missing if we are root, without recommends (docker-compose would
#      otherwise pull in the docker.io engine, prometheus the node exporter);
#   2. the gateway/export environment  .venv               (pyproject.toml, torch pinned on CPU);
#   3. the Triton runtime environment  .tritonstack/runtime (requirements/triton-runtime.txt).
# Each environment is rebuilt only when the files that define it change (a stamp holds their hash).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${TRITONSTACK_VENV:-.venv}
RUNTIME=${TRITONSTACK_RUNTIME_ENV:-${TRITONSTACK_HOME:-.tritonstack}/runtime}
DEBIAN_PACKAGES=(libb64-0d redis-server prometheus docker-compose chromium)

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
quiet_pip() {  # pip, minus the noise of find-links folders this machine's pip.conf names
  "$@" 2>&1 | { grep -v -e "^WARNING: Location 'file:" -e "^\[notice\]" || true; }
  return "${PIPESTATUS[0]}"
}

# -- 0. Python ------------------------------------------------------------------------------
if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))'; then
  echo "tritonstack needs Python 3.10-3.13 (python-backend stubs exist for those); set PYTHON=" >&2
  exit 1
fi

# -- 1. Debian packages -----------------------------------------------------------------------
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing Debian packages: ${missing[*]}; run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

stamp() { cat "$@" | sha256sum | cut -c1-16; }
constraints=()
command -v nvidia-smi >/dev/null 2>&1 || constraints=(-c requirements/cpu-constraints.txt)

# -- 2. gateway/export environment --------------------------------------------------------------
want=$(stamp pyproject.toml requirements/cpu-constraints.txt)
if [[ ! -x $VENV/bin/python || "$(cat "$VENV/.tritonstack-stamp" 2>/dev/null)" != "$want" ]]; then
  say "gateway/export environment: $VENV"
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
  quiet_pip "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[dev]" "${constraints[@]}"
  echo "$want" >"$VENV/.tritonstack-stamp"
else
  say "gateway/export environment: $VENV (up to date)"
fi

# -- 3. Triton runtime environment ------------------------------------------------------------
want=$(stamp requirements/triton-runtime.txt)
if [[ ! -x $RUNTIME/bin/python || "$(cat "$RUNTIME/.tritonstack-stamp" 2>/dev/null)" != "$want" ]]; then
  say "Triton runtime environment: $RUNTIME"
  [[ -x $RUNTIME/bin/python ]] || "$PYTHON" -m venv "$RUNTIME"
  quiet_pip "$RUNTIME/bin/pip" install -q --disable-pip-version-check -r requirements/triton-runtime.txt
  echo "$want" >"$RUNTIME/.tritonstack-stamp"
else
  say "Triton runtime environment: $RUNTIME (up to date)"
fi
say "ready: $VENV/bin/tritonstack, tritonserver 2.51 and perf_analyzer in $RUNTIME"
