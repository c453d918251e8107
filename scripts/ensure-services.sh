#!/usr/bin/env bash
# Start PostgreSQL and RabbitMQ on this machine if they are not answering; install them from
# Debian's packages first if they are missing (needs root). `--rabbitmq-only` skips PostgreSQL
# (the demo needs only the broker). Set JIT_TEST_POSTGRES_URL / JIT_TEST_AMQP_URL to use servers
# elsewhere instead: then nothing local is touched.
set -euo pipefail

want_pg=1
[ "${1:-}" = "--rabbitmq-only" ] && want_pg=0

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "ensure-services: need root to run: $*" >&2; return 1
  fi
}

apt_install() {
  echo "ensure-services: installing $* from Debian's packages" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

wait_for_port() {
  for _ in $(seq 1 60); do listening "$1" && return 0; sleep 1; done
  echo "ensure-services: nothing answers on 127.0.0.1:$1 after 60 s ($2)" >&2
  return 1
}

if [ "$want_pg" = 1 ] && [ -z "${JIT_TEST_POSTGRES_URL:-}" ] && ! listening 5432; then
  if ! command -v pg_ctlcluster >/dev/null; then
    apt_install postgresql
    for conf in /etc/postgresql/*/main/pg_hba.conf; do
      # A fresh cluster asks for passwords on TCP; the tests connect as postgres on loopback only.
      as_root sed -i '1i host all all 127.0.0.1/32 trust' "$conf"
    done
  fi
  for version in $(ls /etc/postgresql); do
    echo "ensure-services: starting PostgreSQL $version" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  wait_for_port 5432 "PostgreSQL"
fi

if [ -z "${JIT_TEST_AMQP_URL:-}" ] && ! listening 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  echo "ensure-services: starting RabbitMQ" >&2
  as_root rabbitmq-server -detached || true
  wait_for_port 5672 "RabbitMQ"
  as_root rabbitmqctl -q await_startup --timeout 60 >/dev/null || true
fi
