#!/usr/bin/env bash
# Make this checkout runnable on a fresh machine: a venv with every package, and the local
# PostgreSQL and RabbitMQ servers running (installed from Debian's packages when missing and we
# are allowed to). Safe to run again: each step does nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing packages into .venv" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e '.[test]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

bash scripts/install-test-tools.sh
bash scripts/ensure-services.sh "${@}"
