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

start_rabbitmq() {
  echo "ensure-services: starting RabbitMQ" >&2
  as_root rabbitmq-server -detached || true
  wait_for_port 5672 "RabbitMQ"
  as_root timeout 90 rabbitmqctl -q await_startup --timeout 60 >/dev/null || true
}

stop_rabbitmq() {
  as_root timeout 30 rabbitmqctl -q stop >/dev/null 2>&1 || as_root pkill -9 -x beam.smp || true
  for _ in $(seq 1 30); do listening 5672 || return 0; sleep 1; done
}

# A broker can listen and still not finish an AMQP handshake (seen here after a stuck vhost
# deletion): probe it for real, with the venv's pika, when there is one.
amqp_answers() {
  [ -x .venv/bin/python ] || return 0
  timeout 30 .venv/bin/python - <<'PY' >/dev/null 2>&1
import pika
params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F?socket_timeout=10&connection_attempts=1")
connection = pika.BlockingConnection(params)
connection.channel().queue_declare("", exclusive=True)
connection.close()
PY
}

if [ -z "${JIT_TEST_AMQP_URL:-}" ]; then
  if ! listening 5672; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    start_rabbitmq
  fi
  if ! amqp_answers; then
    echo "ensure-services: RabbitMQ listens but does not answer AMQP; restarting it" >&2
    stop_rabbitmq
    start_rabbitmq
    if ! amqp_answers && [ "${CI:-}" = "true" ]; then
      # Last resort on a CI machine only: the broker's state (not ours to keep) is what wedges it.
      echo "ensure-services: still no answer; resetting the CI broker's state" >&2
      stop_rabbitmq
      as_root sh -c 'rm -rf /var/lib/rabbitmq/mnesia/rabbit@*'
      start_rabbitmq
    fi
    amqp_answers || { echo "ensure-services: RabbitMQ does not answer on 127.0.0.1:5672" >&2; exit 1; }
  fi
fi
