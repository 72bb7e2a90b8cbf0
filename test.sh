#!/usr/bin/env bash
# Runs Rivulet's whole test suite: starts the services the tests talk to when they are not
# running, checks formatting and lints, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "test.sh: $name did not come up on port $port" >&2
  return 1
}

# RabbitMQ and NATS JetStream: the message-broker backends' tests need them.
if ! port_open 5672 && command -v rabbitmq-server >/dev/null; then
  echo "test.sh: starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_for_port 5672 RabbitMQ || true
fi
if ! port_open 4222 && [ -x /usr/sbin/nats-server ]; then
  echo "test.sh: starting NATS with JetStream"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
  wait_for_port 4222 NATS || true
fi

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "test.sh: cargo test"
cargo test --workspace --all-features
