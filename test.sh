#!/usr/bin/env bash
# Set up (idempotent), run the lint gates, then the whole suite.
#   ./test.sh            lint + suite (pytest -n 2)
#   ./test.sh --long     also the long sweeps and soaks
#   ./test.sh -- ARGS    pass ARGS to pytest
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh --test

long=0
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --long) long=1 ;;
    --) shift; pytest_args+=("$@"); break ;;
    *) pytest_args+=("$1") ;;
  esac
  shift
done

echo "== ruff check" && .venv/bin/ruff check .
echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== mypy --strict" && .venv/bin/mypy
echo "== pytest"
marker=(-m "not long")
[ "$long" = 1 ] && marker=()
set +e
.venv/bin/pytest -n 2 "${marker[@]}" "${pytest_args[@]}"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
