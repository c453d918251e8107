#!/usr/bin/env bash
# Tools some tests use, installed into .jit-tools/ (git-ignored), never system-wide; best effort: a tool
# that cannot be installed only makes its test skip.
# - promtool (tests/unit/test_deploy.py checks and unit-tests deploy/prometheus/), taken out of Debian's
#   prometheus package without installing it (no server is set up or started);
# - the AsyncAPI parser (tests/unit/test_events.py reads docs/asyncapi.yaml with it), from npm, where Node is.
set -uo pipefail
cd "$(dirname "$0")/.."
tools=.jit-tools
mkdir -p "$tools/bin"

if [ ! -x "$tools/bin/promtool" ] && ! command -v promtool >/dev/null && command -v apt-get >/dev/null; then
  echo "install-test-tools: promtool from Debian's prometheus package" >&2
  work=$(mktemp -d)
  if (cd "$work" && { apt-get download prometheus >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; }) \
     && dpkg-deb -x "$work"/prometheus_*.deb "$work/x" && cp "$work/x/usr/bin/promtool" "$tools/bin/promtool"; then
    :
  else
    echo "install-test-tools: could not get promtool; its test will skip" >&2
  fi
  rm -rf "$work"
fi

if command -v npm >/dev/null && [ ! -d "$tools/node/node_modules/@asyncapi/parser" ]; then
  echo "install-test-tools: @asyncapi/parser from npm" >&2
  npm install --silent --prefix "$tools/node" --no-audit --no-fund --no-save @asyncapi/parser@3 >/dev/null 2>&1 \
    || echo "install-test-tools: could not install @asyncapi/parser; its test will skip" >&2
fi
exit 0
