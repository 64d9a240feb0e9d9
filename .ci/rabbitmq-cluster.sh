#!/usr/bin/env bash
# A 3-node RabbitMQ cluster for the cluster-failover test
# (backends/rabbitmq/tests/restart_cluster.rs), beside the machine's shared
# broker on 5672 and the project's node on 5673, which it never touches.
# Nodes busline-c1@localhost .. busline-c3@localhost: AMQP on 5681..5683,
# Erlang distribution on 25681..25683, each with its own Mnesia and log
# directory, one cookie (their shared HOME), joined with `join_cluster`.
# Ends only the processes it started, by the pids it recorded.
#
#   bash .ci/rabbitmq-cluster.sh start|stop|urls
#   bash .ci/rabbitmq-cluster.sh kill NODE     # kill -9 of node c1, c2 or c3
#   bash .ci/rabbitmq-cluster.sh revive NODE   # starts it again on its Mnesia
#   bash .ci/rabbitmq-cluster.sh leader QUEUE  # the node (c1..c3) leading a
#                                              # quorum queue of vhost /
#
# Environment: RABBITMQ_CLUSTER_DIR (state: pid files, Mnesia, logs;
# default $HOME/.cache/busline-rabbitmq-cluster).
set -euo pipefail

dir="${RABBITMQ_CLUSTER_DIR:-${HOME:-/tmp}/.cache/busline-rabbitmq-cluster}"
nodes=(c1 c2 c3)
bin=/usr/lib/rabbitmq/bin

# The tests' environment points rabbitmqctl at the 5673 node
# (RABBITMQ_NODENAME, RABBITMQ_ERLANG_COOKIE): none of it applies here.
for var in $(compgen -e | grep '^RABBITMQ_' || true); do
    unset "$var"
done

index() { # node -> 1..3
    case "$1" in
        c1) echo 1 ;; c2) echo 2 ;; c3) echo 3 ;;
        *) echo "unknown node '$1' (c1, c2 or c3)" >&2; return 2 ;;
    esac
}

erlang_name() { echo "busline-$1@localhost"; }

# One HOME, so the nodes and the CLI calls share ~/.erlang.cookie.
mkdir -p "$dir/home"
if [ ! -s "$dir/home/.erlang.cookie" ]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F >"$dir/home/.erlang.cookie")
    chmod 400 "$dir/home/.erlang.cookie"
fi
export HOME="$dir/home"

ctl() { # node args...
    local node="$1"
    shift
    timeout 120 "$bin/rabbitmqctl" -n "$(erlang_name "$node")" "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid of the `rabbitmq-server` wrapper this script started.
running_pid() { # node
    local pidfile="$dir/$1/server.pid" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# The Erlang VM of a node (the wrapper's child, which writes its own pid to
# RABBITMQ_PID_FILE once it runs); only a VM whose parent is the recorded
# wrapper counts, so a recycled pid is never killed.
vm_pid() { # node
    local wrapper pid
    wrapper="$(running_pid "$1")" || return 1
    [[ -f "$dir/$1/node.pid" ]] || return 1
    pid="$(cat "$dir/$1/node.pid")"
    [[ -n "$pid" ]] && [[ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$wrapper" ]] || return 1
    echo "$pid"
}

# Starts the node's process, without waiting for it to boot: a node that
# was clustered waits at boot for its peers, so after a stop all three must
# be starting at once.
launch() { # node
    local node="$1" i d
    i="$(index "$node")"
    [ -f "$dir/$node/killed" ] && reap "$node"
    running_pid "$node" >/dev/null && return 0
    if port_open "568$i" || port_open "2568$i"; then
        echo "port 568$i or 2568$i is taken by a process this script did not start" >&2
        return 1
    fi
    if [ ! -x "$bin/rabbitmq-server" ]; then
        echo "$bin/rabbitmq-server is missing (Debian package rabbitmq-server)" >&2
        return 1
    fi
    d="$dir/$node"
    mkdir -p "$d/mnesia" "$d/log"
    [ -f "$d/enabled_plugins" ] || echo '[].' >"$d/enabled_plugins"
    touch "$d/rabbitmq-env.conf"
    # Three nodes share a 2-core machine with other brokers: alarms at
    # figures a test never reaches rather than at 40 % of the machine's
    # memory each.
    cat >"$d/rabbitmq.conf" <<EOF
vm_memory_high_watermark.absolute = 1GiB
disk_free_limit.absolute = 200MB
EOF
    rm -f "$d/node.pid"
    # The node keeps its working directory for life: its state directory,
    # not a checkout that may be deleted while it runs.
    (
        cd "$d"
        export RABBITMQ_NODENAME
        RABBITMQ_NODENAME="$(erlang_name "$node")"
        export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        export RABBITMQ_NODE_PORT="568$i"
        export RABBITMQ_DIST_PORT="2568$i"
        export RABBITMQ_MNESIA_BASE="$d/mnesia"
        export RABBITMQ_LOG_BASE="$d/log"
        export RABBITMQ_PID_FILE="$d/node.pid"
        export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
        export RABBITMQ_CONFIG_FILE="$d/rabbitmq"
        export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
        export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
        exec nohup "$bin/rabbitmq-server" >>"$d/log/server.out" 2>&1 </dev/null
    ) &
    echo $! >"$d/server.pid"
}

await_node() { # node
    local node="$1" i
    i="$(index "$node")"
    for _ in $(seq 1 600); do
        if port_open "568$i" && ctl "$node" await_startup >/dev/null 2>&1; then
            return 0
        fi
        if ! running_pid "$node" >/dev/null; then
            echo "rabbitmq-server $node exited; see $dir/$node/log" >&2
            tail -n 20 "$dir/$node/log/server.out" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    echo "RabbitMQ node $node did not start in 120 s" >&2
    return 1
}

# Joins c2 and c3 to c1 unless they already are in its cluster.
join() { # node
    local node="$1"
    if ctl "$node" cluster_status --formatter json 2>/dev/null | grep -q "$(erlang_name c1)"; then
        return 0
    fi
    ctl "$node" stop_app >/dev/null
    ctl "$node" join_cluster "$(erlang_name c1)" >/dev/null
    ctl "$node" start_app >/dev/null
    ctl "$node" await_startup >/dev/null
}

# kill -9 of the node's VM; returns once the VM is gone. Its wrapper takes
# a couple of seconds more to exit: not waited for here (the kill is timed
# by the failover test), but by the next launch or stop.
kill_node() { # node
    local pid
    if pid="$(vm_pid "$1")"; then
        kill -9 "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
    fi
    if running_pid "$1" >/dev/null; then
        touch "$dir/$1/killed"
    fi
}

# Waits for the wrapper of a killed node to exit (a wrapper whose VM never
# came up is killed itself) and forgets its pids.
reap() { # node
    local wrapper
    if wrapper="$(running_pid "$1")"; then
        for _ in $(seq 1 100); do
            kill -0 "$wrapper" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$wrapper" 2>/dev/null && kill -9 "$wrapper"
    fi
    rm -f "$dir/$1/server.pid" "$dir/$1/node.pid" "$dir/$1/killed"
}

stop_node() { # node
    local wrapper
    if wrapper="$(running_pid "$1")"; then
        ctl "$1" stop >/dev/null 2>&1 || true
        for _ in $(seq 1 150); do
            kill -0 "$wrapper" 2>/dev/null || break
            sleep 0.2
        done
    fi
    kill_node "$1"
    reap "$1"
}

case "${1:-}" in
    start)
        for node in "${nodes[@]}"; do launch "$node"; done
        for node in "${nodes[@]}"; do await_node "$node"; done
        join c2
        join c3
        ;;
    stop)
        # The last node to stop is the one that boots first next time;
        # start launches all three at once, so any order works.
        for node in c3 c2 c1; do stop_node "$node"; done
        ;;
    kill)
        index "${2:?node}" >/dev/null
        kill_node "$2"
        ;;
    revive)
        index "${2:?node}" >/dev/null
        launch "$2"
        await_node "$2"
        ;;
    leader)
        queue="${2:?queue}"
        for node in "${nodes[@]}"; do
            running_pid "$node" >/dev/null && [ ! -f "$dir/$node/killed" ] || continue
            # `name leader` rows, tab-separated; the leader is an Erlang
            # node name, printed as the script's short name.
            if out="$(ctl "$node" list_queues -q --no-table-headers name leader 2>/dev/null)"; then
                leader="$(awk -F'\t' -v q="$queue" '$1 == q { print $2 }' <<<"$out")"
                case "$leader" in
                    busline-c[123]@localhost) leader="${leader#busline-}"; echo "${leader%@localhost}"; exit 0 ;;
                    "") echo "no quorum queue '$queue' on the cluster" >&2; exit 1 ;;
                    *) echo "queue '$queue' has no leader (${leader})" >&2; exit 1 ;;
                esac
            fi
        done
        echo "no node of the cluster answers" >&2
        exit 1
        ;;
    urls)
        echo "amqp://guest:guest@127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683/%2f"
        ;;
    *)
        echo "usage: $0 start|stop|urls|kill NODE|revive NODE|leader QUEUE" >&2
        exit 2
        ;;
esac
