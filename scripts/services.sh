#!/usr/bin/env bash
# Make sure RabbitMQ and PostgreSQL run locally: start them when installed but stopped; install them with apt
# when missing and we are root; otherwise say exactly what to install and stop. Never restarts a running one.
set -euo pipefail

say() { printf 'services: %s\n' "$*" >&2; }
need_root_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    say "missing: $*. Install it first, e.g.: sudo apt-get install -y $*"
    exit 1
  fi
}

amqp_up() { python3 - <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", 5672)); s.sendall(b"AMQP\x00\x00\x09\x01"); sys.exit(0 if s.recv(1) else 1)
except OSError:
    sys.exit(1)
PY
}

# --- RabbitMQ -------------------------------------------------------------------------------------------
if ! amqp_up; then
  command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || need_root_install rabbitmq-server
  say "starting RabbitMQ"
  if [ "$(id -u)" = 0 ]; then rabbitmq-server -detached || true; else
    say "RabbitMQ is installed but stopped; start it as root: sudo rabbitmq-server -detached"; exit 1; fi
  for _ in $(seq 1 60); do amqp_up && break; sleep 1; done
  amqp_up || { say "RabbitMQ did not come up on 127.0.0.1:5672 within 60 s"; exit 1; }
fi

# --- PostgreSQL -----------------------------------------------------------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up; then
  command -v pg_lsclusters >/dev/null || need_root_install postgresql
  say "starting PostgreSQL"
  if [ "$(id -u)" = 0 ]; then
    ver=$(ls /etc/postgresql | sort -n | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  else
    say "PostgreSQL is installed but stopped; start it as root: sudo pg_ctlcluster <version> main start"; exit 1
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { say "PostgreSQL did not come up on 127.0.0.1:5432 within 30 s"; exit 1; }
fi
say "RabbitMQ and PostgreSQL are up"
