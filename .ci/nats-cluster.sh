#!/usr/bin/env bash
# A 3-node NATS cluster with JetStream for the cluster-failover test
# (backends/nats/tests/restart_cluster.rs), beside the shared server on
# 4222, which is never touched. Nodes n1..n3: clients on 4231..4233, routes
# on 6231..6233, monitoring on 8231..8233. Ends only the processes it
# started, by the pids it recorded.
#
#   bash .ci/nats-cluster.sh start|stop|urls
#   bash .ci/nats-cluster.sh kill NODE     # kill -9 of node n1, n2 or n3
#   bash .ci/nats-cluster.sh revive NODE   # starts it again on its store
#
# Environment: NATS_CLUSTER_DIR (state: pid files, stores, logs; default
# $HOME/.cache/busline-nats-cluster).
set -euo pipefail

dir="${NATS_CLUSTER_DIR:-${HOME:-/tmp}/.cache/busline-nats-cluster}"
nodes=(n1 n2 n3)
routes="nats://127.0.0.1:6231,nats://127.0.0.1:6232,nats://127.0.0.1:6233"

index() { # node -> 1..3
    case "$1" in
        n1) echo 1 ;; n2) echo 2 ;; n3) echo 3 ;;
        *) echo "unknown node '$1' (n1, n2 or n3)" >&2; return 2 ;;
    esac
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running_pid() { # node
    local pidfile="$dir/$1/nats-server.pid" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

start_node() { # node
    local node="$1" i
    i="$(index "$node")"
    running_pid "$node" >/dev/null && return 0
    if port_open "423$i"; then
        echo "port 423$i is taken by a process this script did not start" >&2
        return 1
    fi
    mkdir -p "$dir/$node/store"
    nohup nats-server -js -a 127.0.0.1 -p "423$i" -m "823$i" \
        --server_name "$node" --cluster_name busline-test \
        --cluster "nats://127.0.0.1:623$i" --routes "$routes" \
        -sd "$dir/$node/store" >>"$dir/$node/nats-server.log" 2>&1 &
    echo $! >"$dir/$node/nats-server.pid"
    for _ in $(seq 1 100); do
        port_open "423$i" && return 0
        if ! running_pid "$node" >/dev/null; then
            echo "nats-server $node exited; see $dir/$node/nats-server.log" >&2
            tail -n 20 "$dir/$node/nats-server.log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    echo "nats-server $node did not open port 423$i in 10 s" >&2
    return 1
}

# JetStream answers once the cluster has a meta leader; until then stream
# creation fails. Waits for every running node to name one. (Not /healthz:
# it stays 503 while any replica of any stream is catching up, which after
# a kill can take long and is not what the tests wait for.)
wait_meta_leader() {
    local node i
    for node in "${nodes[@]}"; do
        running_pid "$node" >/dev/null || continue
        i="$(index "$node")"
        for _ in $(seq 1 300); do
            if curl -fsS "http://127.0.0.1:823$i/jsz" 2>/dev/null | grep -q '"leader": *"n[123]"'; then
                continue 2
            fi
            sleep 0.1
        done
        echo "nats-server $node names no JetStream meta leader after 30 s" >&2
        return 1
    done
}

kill_node() { # node
    local pid
    if pid="$(running_pid "$1")"; then
        kill -9 "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$dir/$1/nats-server.pid"
}

case "${1:-}" in
    start)
        for node in "${nodes[@]}"; do start_node "$node"; done
        wait_meta_leader
        ;;
    stop)
        for node in "${nodes[@]}"; do kill_node "$node"; done
        ;;
    kill)
        kill_node "${2:?node}"
        ;;
    revive)
        start_node "${2:?node}"
        wait_meta_leader
        ;;
    urls)
        echo "nats://127.0.0.1:4231,127.0.0.1:4232,127.0.0.1:4233"
        ;;
    *)
        echo "usage: $0 start|stop|urls|kill NODE|revive NODE" >&2
        exit 2
        ;;
esac
