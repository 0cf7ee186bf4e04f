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

# The gateway request path compiled (mypyc + a C header scan; src/corral/compiled.py):
# 132k -> 71k instructions per proxied request (callgrind). Rebuilt only when the sources change;
# without a C compiler, or if the build fails, the same modules run interpreted.
if ! .venv/bin/python -c "import mypyc" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "mypy==2.4.1" || true
fi
.venv/bin/python scripts/build_compiled.py || true

# Zero-touch tracing (issue 4): the OpenTelemetry packages that Python instances get on their
# PYTHONPATH, in a directory of their own (never this venv's site-packages), behind the bootstrap
# in src/corral/telemetry/otel_site/. Pinned; rebuilt only when the pins change. A failure
# leaves the platform working, with auto-instrumentation off (an event says so per instance).
otel_site=.venv/corral-otel-site
# Only what a traced app imports: our own lean spans, instrumentations and OTLP encoder live in
# src/corral/telemetry/otel_site/, so nothing here can shadow an app's requests, urllib3 or protobuf.
otel_pins="opentelemetry-api==1.45.1 opentelemetry-sdk==1.45.1
opentelemetry-semantic-conventions==0.66b1 typing-extensions==4.16.0"
otel_digest=$(printf '%s' "$otel_pins" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$otel_site/.corral-installed" 2>/dev/null)" != "$otel_digest" ]; then
  echo "bootstrap: building the OpenTelemetry site for auto-instrumentation ($otel_site)" >&2
  rm -rf "$otel_site.new"
  # shellcheck disable=SC2086  # the pins are words on purpose
  if .venv/bin/python -m pip install --quiet --disable-pip-version-check \
      --target "$otel_site.new" $otel_pins; then
    rm -rf "$otel_site" && mv "$otel_site.new" "$otel_site"
    echo "$otel_digest" > "$otel_site/.corral-installed"
  else
    rm -rf "$otel_site.new"
    echo "bootstrap: OpenTelemetry site not built; Python services run without auto-instrumentation" >&2
  fi
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
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)   # scrapes /metrics in a test
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)   # the etcd Store backend
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
