#!/usr/bin/env bash
# Remove what an interrupted test run can leave on the local servers: vhosts named jit-test-* and
# PostgreSQL databases named jit_test_* (each run makes its own and drops it at the end). The test
# command owns these names; do not give anything else such a name.
set -uo pipefail
if [ -z "${JIT_TEST_AMQP_URL:-}" ] && command -v rabbitmqctl >/dev/null; then
  for vhost in $(timeout 60 rabbitmqctl -q list_vhosts name 2>/dev/null | grep '^jit-test-'); do
    echo "clean: removing stale RabbitMQ vhost $vhost" >&2
    timeout 120 rabbitmqctl -q delete_vhost "$vhost" || echo "clean: could not remove $vhost" >&2
  done
fi
if [ -z "${JIT_TEST_POSTGRES_URL:-}" ] && command -v psql >/dev/null; then
  for db in $(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'jit\_test\_%'" 2>/dev/null); do
    echo "clean: dropping stale database $db" >&2
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
  done
fi
exit 0
