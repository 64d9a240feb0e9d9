#!/usr/bin/env bash
# A second, restartable nats-server with JetStream for the broker-restart
# test (scenario 15), beside the shared server on 4222, which is never
# restarted. Ends only the process it started, by the pid it recorded.
#
#   bash .ci/nats-restartable.sh start|restart|stop
#
# Environment: NATS_RESTARTABLE_PORT (4223), NATS_RESTARTABLE_DIR (state:
# pid file, JetStream store, log; default $HOME/.cache/busline-nats-restartable).
set -euo pipefail

port="${NATS_RESTARTABLE_PORT:-4223}"
dir="${NATS_RESTARTABLE_DIR:-${HOME:-/tmp}/.cache/busline-nats-restartable}"
pidfile="$dir/nats-server.pid"
store="$dir/store"
log="$dir/nats-server.log"
mkdir -p "$store"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

running_pid() {
    [[ -f "$pidfile" ]] || return 1
    local pid
    pid="$(cat "$pidfile")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

start() {
    if running_pid >/dev/null; then
        return 0
    fi
    if port_open; then
        echo "port $port is taken by a process this script did not start" >&2
        return 1
    fi
    nohup nats-server -js -a 127.0.0.1 -p "$port" -sd "$store" >>"$log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 100); do
        if port_open; then
            return 0
        fi
        if ! running_pid >/dev/null; then
            echo "nats-server exited; see $log" >&2
            tail -n 20 "$log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    echo "nats-server did not open port $port in 10 s" >&2
    return 1
}

stop() {
    local pid
    if pid="$(running_pid)"; then
        kill "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid"
            sleep 0.2
        fi
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|restart|stop" >&2; exit 2 ;;
esac
