#!/usr/bin/env bash
# Installs, starts and stops the Kafka-compatible broker tansu on
# 127.0.0.1:9092 (memory storage), idempotently.
#   install  cargo-install tansu unless already installed (build dir cached
#            in ~/.cache/tansu-build so a rebuild is incremental)
#   start    start the broker in the background unless port 9092 answers;
#            pid and log under ~/.cache/busline-tansu/
#   stop     stop the broker started by `start` (only the recorded pid)
#   status   print whether the port answers
set -euo pipefail

PORT="${BUSLINE_TANSU_PORT:-9092}"
STATE_DIR="${HOME}/.cache/busline-tansu"
PID_FILE="${STATE_DIR}/tansu.pid"
LOG_FILE="${STATE_DIR}/tansu.log"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tansu_bin() {
    if command -v tansu >/dev/null 2>&1; then
        command -v tansu
    elif [ -x "${HOME}/.cargo/bin/tansu" ]; then
        echo "${HOME}/.cargo/bin/tansu"
    else
        return 1
    fi
}

install() {
    if bin="$(tansu_bin)"; then
        echo "tansu already installed: ${bin}"
        return 0
    fi
    echo "installing tansu (takes ~15 minutes the first time)"
    export CARGO_TARGET_DIR="${HOME}/.cache/tansu-build"
    if ! cargo install tansu --features dynostore --locked; then
        echo "locked install failed; retrying without --locked" >&2
        cargo install tansu --features dynostore
    fi
    tansu_bin >/dev/null
}

recorded_pid_alive() {
    [ -f "${PID_FILE}" ] || return 1
    local pid
    pid="$(cat "${PID_FILE}")"
    [ -n "${pid}" ] && kill -0 "${pid}" 2>/dev/null
}

start() {
    if port_open "${PORT}"; then
        echo "port ${PORT} already answers; not starting tansu"
        return 0
    fi
    local bin
    bin="$(tansu_bin)" || { echo "tansu is not installed; run: $0 install" >&2; return 1; }
    mkdir -p "${STATE_DIR}"
    echo "starting tansu on 127.0.0.1:${PORT} (log: ${LOG_FILE})"
    nohup "${bin}" broker \
        --listener-url "tcp://127.0.0.1:${PORT}" \
        --advertised-listener-url "tcp://127.0.0.1:${PORT}" \
        --storage-engine "memory://tansu/" \
        >>"${LOG_FILE}" 2>&1 </dev/null &
    echo $! >"${PID_FILE}"
    for _ in $(seq 1 300); do
        if port_open "${PORT}"; then
            echo "tansu up on 127.0.0.1:${PORT} (pid $(cat "${PID_FILE}"))"
            return 0
        fi
        if ! recorded_pid_alive; then
            echo "tansu exited during startup; last log lines:" >&2
            tail -n 30 "${LOG_FILE}" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    echo "tansu did not open port ${PORT} within 60 s" >&2
    return 1
}

stop() {
    if recorded_pid_alive; then
        local pid
        pid="$(cat "${PID_FILE}")"
        echo "stopping tansu (pid ${pid})"
        kill "${pid}"
        for _ in $(seq 1 100); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "${pid}" 2>/dev/null && kill -9 "${pid}" 2>/dev/null || true
        # Remove the pid file only if it still names the process stopped
        # here (a concurrent `start` may have written a new one).
        [ "$(cat "${PID_FILE}" 2>/dev/null)" = "${pid}" ] && rm -f "${PID_FILE}"
    else
        echo "no tansu started by this script is running"
        # A stale file (process gone) is removed.
        if [ -f "${PID_FILE}" ] && ! recorded_pid_alive; then rm -f "${PID_FILE}"; fi
    fi
    return 0
}

status() {
    if port_open "${PORT}"; then echo "port ${PORT} open"; else echo "port ${PORT} closed"; return 1; fi
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
