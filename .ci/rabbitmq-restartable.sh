#!/usr/bin/env bash
# A private RabbitMQ node for the restart soak test, beside the shared broker
# on 5672, which it never touches: its own node name, ports, cookie (its own
# HOME), Mnesia and log directories. Ends only the node it started, by the
# pid it recorded.
#
#   bash .ci/rabbitmq-restartable.sh start|restart|reset|stop|env
#
# reset empties the node (kill, wipe its Mnesia directory, start): every
# queue, exchange and binding earlier test runs left goes, so each CI run
# starts on an empty node (tests never delete their quorum queues, and a
# node holding thousands of them restarts slowly). The node holds test data
# only; a fresh node creates the default guest user.
#
# env prints the exports that point the tests at this node: the AMQP URL,
# its management API's URL (port + 10000), and the node name and cookie,
# so the tests' own `rabbitmqctl` calls (and `rabbitmqctl stop_app` in the
# restart scenario) reach it too.
#
# restart is stop_app + start_app (the broker application restarts, the
# Erlang node stays up), as an operator restarts a broker.
#
# Environment: RABBITMQ_RESTARTABLE_PORT (5673), RABBITMQ_RESTARTABLE_DIR
# (state; default $HOME/.cache/busline-rabbitmq-restartable).
set -euo pipefail

port="${RABBITMQ_RESTARTABLE_PORT:-5673}"
dir="${RABBITMQ_RESTARTABLE_DIR:-${HOME:-/tmp}/.cache/busline-rabbitmq-restartable}"
node="busline-soak-${port}@localhost"
bin=/usr/lib/rabbitmq/bin

management_port=$((port + 10000))

mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
# The management plugin serves `list_topics`/`list_groups` (AMQP cannot
# list exchanges or queues), on a port of its own beside the shared
# broker's. Set every time (a node started before keeps its settings until
# `reset` starts it again); other lines of rabbitmq.conf, which a test may
# have written (a TLS listener), are kept.
echo '[rabbitmq_management].' >"$dir/enabled_plugins"
touch "$dir/rabbitmq.conf"
{
    grep -v '^management\.tcp\.' "$dir/rabbitmq.conf" || true
    echo "management.tcp.ip = 127.0.0.1"
    echo "management.tcp.port = ${management_port}"
} >"$dir/rabbitmq.conf.new"
mv "$dir/rabbitmq.conf.new" "$dir/rabbitmq.conf"
touch "$dir/rabbitmq-env.conf"

export HOME="$dir/home"
export RABBITMQ_NODENAME="$node"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$port"
export RABBITMQ_DIST_PORT=$((port + 20000))
export RABBITMQ_MNESIA_BASE="$dir/mnesia"
export RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_PID_FILE="$dir/node.pid"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"

ctl() { timeout 120 "$bin/rabbitmqctl" -n "$node" "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

running_pid() {
    [[ -f "$dir/server.pid" ]] || return 1
    local pid
    pid="$(cat "$dir/server.pid")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

start() {
    if running_pid >/dev/null; then
        ctl await_startup >/dev/null
        return 0
    fi
    if port_open; then
        echo "port $port is taken by a process this script did not start" >&2
        return 1
    fi
    if [ ! -x "$bin/rabbitmq-server" ]; then
        echo "$bin/rabbitmq-server is missing (Debian package rabbitmq-server)" >&2
        return 1
    fi
    # The node keeps its working directory for life (plugin paths resolve
    # against it): start it in its own state directory, not in a checkout
    # that may be deleted while it runs.
    (cd "$dir" && exec nohup "$bin/rabbitmq-server" >>"$dir/log/server.out" 2>&1 </dev/null) &
    echo $! >"$dir/server.pid"
    for _ in $(seq 1 600); do
        if port_open && ctl await_startup >/dev/null 2>&1; then
            return 0
        fi
        if ! running_pid >/dev/null; then
            echo "rabbitmq-server exited; see $dir/log" >&2
            tail -n 20 "$dir/log/server.out" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    echo "the private RabbitMQ node did not start in 120 s" >&2
    return 1
}

restart() {
    running_pid >/dev/null || { start; return; }
    ctl stop_app >/dev/null
    ctl start_app >/dev/null
    ctl await_startup >/dev/null
}

reset() {
    # Not `rabbitmqctl reset`: with thousands of quorum queues its
    # stop_app outlasted a 120 s timeout here and left the node half reset.
    # The node holds nothing worth keeping, so end it hard (the Erlang VM is
    # a child of the recorded wrapper), wipe its data and start it afresh.
    local pid
    if pid="$(running_pid)"; then
        pkill -9 -P "$pid" 2>/dev/null || true
        kill -9 "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$dir/server.pid"
    for _ in $(seq 1 100); do
        port_open || break
        sleep 0.1
    done
    rm -rf "$dir/mnesia"
    mkdir -p "$dir/mnesia"
    start
}

stop() {
    local pid
    if pid="$(running_pid)"; then
        ctl stop >/dev/null 2>&1 || kill "$pid"
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid"
        fi
    fi
    rm -f "$dir/server.pid"
}

print_env() {
    echo "export BUSLINE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:${port}/%2f"
    echo "export BUSLINE_TEST_AMQP_MANAGEMENT_URL=http://127.0.0.1:${management_port}"
    echo "export RABBITMQ_NODENAME=${node}"
    echo "export RABBITMQ_ERLANG_COOKIE=$(cat "$HOME/.erlang.cookie")"
}

case "${1:-}" in
    env) print_env ;;
    start) start ;;
    restart) restart ;;
    reset) reset ;;
    stop) stop ;;
    *) echo "usage: $0 start|restart|reset|stop|env" >&2; exit 2 ;;
esac
