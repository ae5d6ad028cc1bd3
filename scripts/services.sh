#!/usr/bin/env bash
# Make sure RabbitMQ and PostgreSQL run locally: start them when installed but stopped; install them with apt
# when missing and we are root; otherwise say exactly what to install and stop. Never restarts a running one.
# Also make sure the OpenSSH server binary is installed (the SFTP simulator runs its own sshd on a loopback
# port), without ever starting the system's sshd.
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
start_rabbitmq() {
  if command -v setpriv >/dev/null && id rabbitmq >/dev/null 2>&1 && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    ( ulimit -n "$(ulimit -Hn)" 2>/dev/null; cd /var/lib/rabbitmq && HOME=/var/lib/rabbitmq \
        setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server -detached )
  else
    rabbitmq-server -detached
  fi
}
if ! amqp_up; then
  command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || need_root_install rabbitmq-server
  say "starting RabbitMQ"
  # the node's file handle cache sizes itself from the soft limit: at Debian's 1024 a few hundred quorum
  # queues (each test run declares ~40 per vhost) leave no handle for a new socket, and every AMQP handshake
  # then waits forever in file_handle_cache:obtain while TCP still connects; raise it to the hard limit
  # (Debian's rabbitmq-server wrapper goes through `su`, whose PAM session resets the limit: start the node
  # as the rabbitmq user with setpriv, which keeps it)
  if [ "$(id -u)" = 0 ]; then start_rabbitmq || true; else
    say "RabbitMQ is installed but stopped; start it as root: sudo rabbitmq-server -detached"; exit 1; fi
  for _ in $(seq 1 60); do amqp_up && break; sleep 1; done
  amqp_up || { say "RabbitMQ did not answer AMQP on 127.0.0.1:5672 within 60 s; if a node is running but silent,"
               say "its file handles may be exhausted (rabbitmq-diagnostics status: file_descriptors); restart it"
               say "as root from this script so it gets the raised limit"; exit 1; }
fi

# --- RabbitMQ management API ----------------------------------------------------------------------------
# The bus lists queues and bindings through it (`igate-bus topology --prune`, `status`, the worker's check at
# start: AMQP cannot list them) and the demo creates its own vhost with it. Enabling a plugin is applied to
# the running node (--online): no restart, connections stay up. Idempotent: nothing happens when it answers.
mgmt_up() { python3 - <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", 15672)); sys.exit(0)
except OSError:
    sys.exit(1)
PY
}
if ! mgmt_up; then
  if [ "$(id -u)" = 0 ]; then
    say "enabling the RabbitMQ management plugin (online, no restart)"
    rabbitmq-plugins enable --online rabbitmq_management >/dev/null
    for _ in $(seq 1 30); do mgmt_up && break; sleep 1; done
    mgmt_up || { say "the management API did not come up on 127.0.0.1:15672 within 30 s"; exit 1; }
  else
    say "the RabbitMQ management API is off; as root: rabbitmq-plugins enable --online rabbitmq_management"
    say "(igate-bus topology --prune, the stale-queue check and the demo need it)"
  fi
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

# --- OpenSSH server binary, for the SFTP simulator only ----------------------------------------------------
# simulators/sftp.py starts a private sshd (its own config, throwaway keys, a free loopback port) per test run;
# the machine's own sshd is never started, stopped or used. Installing openssh-server with apt would start a
# system sshd on port 22 (its postinst calls invoke-rc.d): a policy-rc.d that answers 101 ("action forbidden")
# keeps it down during the install, and /etc/ssh/sshd_not_to_be_run keeps Debian's init script and systemd
# unit from starting it later. Both are put in place only when we install the package ourselves: a machine
# that already has openssh-server is left exactly as it is.
sshd_found() { command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; }
install_sshd_binary() (  # a subshell, so its EXIT trap restores policy-rc.d however the install ends
  policy=/usr/sbin/policy-rc.d
  saved=""
  if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; fi
  trap 'if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi' EXIT
  printf '#!/bin/sh\n# igate-bus: installing openssh-server for its SFTP simulator; start no service\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  mkdir -p /etc/ssh
  [ -e /etc/ssh/sshd_not_to_be_run ] || touch /etc/ssh/sshd_not_to_be_run
  need_root_install openssh-server
)
if ! sshd_found; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    install_sshd_binary
  else
    say "missing: openssh-server (the SFTP simulator runs its own sshd; the system's is never started)."
    say "Install it first, e.g.: sudo apt-get install -y openssh-server && sudo touch /etc/ssh/sshd_not_to_be_run"
    exit 1
  fi
  sshd_found || { say "openssh-server was installed but no sshd binary was found"; exit 1; }
fi
say "sshd binary: $(command -v sshd || echo /usr/sbin/sshd) (used by the SFTP simulator on a loopback port only)"
