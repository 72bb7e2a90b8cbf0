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

# Kafka: tansu, a Kafka-protocol server, on its SQLite storage engine (its default features
# have no storage engine). Built once with a fixed feature set and reused; started from a
# data folder outside the repository unless something already listens on 9092. The Kafka tests
# are behind the `kafka-tests` feature so that a bare `cargo test` needs no Kafka server.
TANSU_FEATURES="dynostore,libsql"
tansu_bin() { command -v tansu 2>/dev/null || { [ -x "$HOME/.cargo/bin/tansu" ] && echo "$HOME/.cargo/bin/tansu"; }; }
tansu_has_features() {
  local record="$HOME/.cargo/.crates2.json"
  [ -f "$record" ] || return 0
  grep -o '"tansu [^"]*":{[^}]*}' "$record" | grep -q '"libsql"'
}
tansu_dir="${XDG_CACHE_HOME:-$HOME/.cache}/rivulet-test/tansu"
# A tansu started here whose storage task panicked keeps its port open but answers nothing
# useful: stop it, so that it is started again below on fresh storage.
if port_open 9092 && [ -f "$tansu_dir/tansu.pid" ] && grep -q "panicked" "$tansu_dir/tansu.log" 2>/dev/null; then
  echo "test.sh: the tansu started earlier has failed (see $tansu_dir/tansu.log); restarting it"
  kill "$(cat "$tansu_dir/tansu.pid")" 2>/dev/null || true
  for _ in $(seq 1 30); do port_open 9092 || break; sleep 1; done
  rm -f "$tansu_dir"/tansu.db* "$tansu_dir/tansu.pid"
fi
if ! port_open 9092; then
  if [ -z "$(tansu_bin)" ]; then
    echo "test.sh: installing tansu with features $TANSU_FEATURES (takes 15-40 minutes, once)"
    cargo install tansu --locked --features "$TANSU_FEATURES" </dev/null
  elif ! tansu_has_features; then
    echo "test.sh: reinstalling tansu with features $TANSU_FEATURES (it lacks a storage engine)"
    cargo install tansu --locked --force --features "$TANSU_FEATURES" </dev/null
  fi
  mkdir -p "$tansu_dir"
  echo "test.sh: starting tansu on 127.0.0.1:9092 (data and log in $tansu_dir)"
  (
    cd "$tansu_dir"
    nohup "$(tansu_bin)" broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine sqlite://tansu.db \
      </dev/null >tansu.log 2>&1 &
    echo $! >tansu.pid
  )
  wait_for_port 9092 tansu
fi
export RIVULET_TANSU="${RIVULET_TANSU:-$(tansu_bin || true)}"

# Tools some tests drive, installed once into a cache folder outside the repository: the
# TypeScript compiler (npm) for the scaffolded TypeScript function, and Helm's template engine
# (helm-python-sdk, PyPI) for rendering the chart. A test whose tool is missing says it skips.
tools_dir="${XDG_CACHE_HOME:-$HOME/.cache}/rivulet-test"
mkdir -p "$tools_dir"
if ! command -v tsc >/dev/null && command -v npm >/dev/null; then
  if [ ! -x "$tools_dir/npm/node_modules/.bin/tsc" ]; then
    echo "test.sh: installing the TypeScript compiler (once)"
    npm install --silent --no-audit --no-fund --prefix "$tools_dir/npm" typescript@7 </dev/null ||
      echo "test.sh: could not install TypeScript; the scaffold test will skip its TypeScript check" >&2
  fi
  export PATH="$tools_dir/npm/node_modules/.bin:$PATH"
fi
# The official CloudEvents SDKs for Python (PyPI) and JavaScript (npm), for tests/sdks.rs.
sdk_python="$tools_dir/sdk-venv/bin/python"
if ! { [ -x "$sdk_python" ] && "$sdk_python" -c "import cloudevents.core.bindings.http" 2>/dev/null; }; then
  echo "test.sh: installing the CloudEvents SDK for Python (once)"
  { python3 -m venv "$tools_dir/sdk-venv" &&
    "$tools_dir/sdk-venv/bin/pip" install --quiet cloudevents==2.2.0 </dev/null; } ||
    echo "test.sh: could not install the CloudEvents SDK for Python; its test will skip" >&2
fi
export RIVULET_PYTHON_SDK="$sdk_python"
if command -v npm >/dev/null && [ ! -f "$tools_dir/npm/node_modules/cloudevents/package.json" ]; then
  echo "test.sh: installing the CloudEvents SDK for JavaScript (once)"
  npm install --silent --no-audit --no-fund --prefix "$tools_dir/npm" cloudevents@10.0.0 </dev/null ||
    echo "test.sh: could not install the CloudEvents SDK for JavaScript; its test will skip" >&2
fi
export RIVULET_NODE_MODULES="$tools_dir/npm/node_modules"
helm_python="$tools_dir/helm-venv/bin/python"
if ! { [ -x "$helm_python" ] && "$helm_python" -c "import helm_python" 2>/dev/null; }; then
  echo "test.sh: installing helm-python-sdk for the Helm chart test (once)"
  { python3 -m venv "$tools_dir/helm-venv" &&
    "$tools_dir/helm-venv/bin/pip" install --quiet helm-python-sdk==0.2.2 </dev/null; } ||
    echo "test.sh: could not install helm-python-sdk; the Helm chart test will skip rendering" >&2
fi

# The web console's browser tests: Chromium and its WebDriver from Debian's packages. Once
# they are installed their absence fails those tests instead of skipping them.
if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null; then
  echo "test.sh: installing Chromium and chromedriver (once)"
  sudo_if_needed=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo_if_needed="sudo"
  apt_install() { $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver </dev/null; }
  apt_install || { $sudo_if_needed apt-get update -qq </dev/null && apt_install; } ||
    echo "test.sh: could not install Chromium; the console's browser tests will skip" >&2
fi
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  export RIVULET_REQUIRE_BROWSER=1
fi

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "test.sh: cargo test"
# Every test binary runs even when an earlier one fails, so one failure hides no other.
cargo test --workspace --no-fail-fast --features rivulet/kafka-tests
