#!/usr/bin/env bash
# One bootstrap for ./run.sh and ./test.sh: create .venv if needed and install the project.
# Idempotent: reinstalls only when pyproject.toml changed since the last successful install.
#   scripts/bootstrap.sh          the project and its runtime dependencies
#   scripts/bootstrap.sh --test   plus test tools and the Debian packages the tests drive
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$python" -m venv .venv
fi

extra=""
[ "$want_test" = 1 ] && extra="[test]"
stamp=".venv/.corral-installed${extra}"
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ] || ! .venv/bin/python -c "import corral" 2>/dev/null; then
  echo "bootstrap: installing corral${extra}" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extra}"
  echo "$digest" > "$stamp"
fi

# Dashboard charts and graph (uPlot, Cytoscape.js) from the npm registry, pinned by the lock
# file; without them the dashboard shows its tables only.
vendor=src/corral/dashboard/vendor
vdigest=$(sha256sum "$vendor/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$vendor/node_modules/.corral-installed" 2>/dev/null)" != "$vdigest" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "bootstrap: npm ci (dashboard charts)" >&2
    (cd "$vendor" && npm ci --no-audit --no-fund --omit=dev --loglevel=error >/dev/null) \
      && echo "$vdigest" > "$vendor/node_modules/.corral-installed"
  else
    echo "bootstrap: npm not found; the dashboard will show tables without charts" >&2
  fi
fi

if [ "$want_test" = 1 ]; then
  # Real third-party programs the integration tests run as managed services.
  need=()
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v nginx >/dev/null 2>&1 || need+=(nginx)   # gateway tests: a real upstream peer
  command -v wrk >/dev/null 2>&1 || need+=(wrk)       # bench/gateway.py
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)   # gateway TLS tests: certificates
  # Multi-host tests: network namespaces, iptables partitions, libfaketime clock skew.
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  command -v faketime >/dev/null 2>&1 || need+=(faketime)
  command -v taskset >/dev/null 2>&1 || need+=(util-linux)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)   # dashboard browser tests
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "bootstrap: apt-get install ${need[*]}" >&2
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "bootstrap: missing ${need[*]} (tests that need them will be skipped)" >&2
    fi
  fi
fi
