#!/usr/bin/env bash
# Remove what an interrupted test run can leave on the local servers: vhosts and broker users named
# jit-test-*, PostgreSQL databases and roles named jit_test_* (each run makes its own and drops them at the end). The test
# command owns these names; do not give anything else such a name.
set -uo pipefail
if [ -z "${JIT_TEST_AMQP_URL:-}" ] && command -v rabbitmqctl >/dev/null; then
  for vhost in $(timeout 60 rabbitmqctl -q list_vhosts name 2>/dev/null | grep '^jit-test-'); do
    echo "clean: removing stale RabbitMQ vhost $vhost" >&2
    timeout 120 rabbitmqctl -q delete_vhost "$vhost" || echo "clean: could not remove $vhost" >&2
  done
  # The trust tests' broker users (tests/integration/shipped_broker.py).
  for user in $(timeout 60 rabbitmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep '^jit-test-'); do
    timeout 60 rabbitmqctl -q delete_user "$user" >/dev/null 2>&1 || true
  done
fi
if [ -z "${JIT_TEST_POSTGRES_URL:-}" ] && command -v psql >/dev/null; then
  for db in $(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'jit\_test\_%'" 2>/dev/null); do
    echo "clean: dropping stale database $db" >&2
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
  done
  # The audit-roles test's roles (tests/integration/test_audit_roles.py).
  for role in $(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT rolname FROM pg_roles WHERE rolname LIKE 'jit\_test\_%'" 2>/dev/null); do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP ROLE IF EXISTS \"$role\"" >/dev/null 2>&1 || true
  done
fi
exit 0
