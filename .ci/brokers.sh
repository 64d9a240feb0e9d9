#!/usr/bin/env bash
# Brings up the services the tests talk to, on this machine, idempotently:
# RabbitMQ on 127.0.0.1:5672 (guest/guest), NATS with JetStream on
# 127.0.0.1:4222 and PostgreSQL on 127.0.0.1:5432 (the dedup store) are
# started only when their port is closed (installed from Debian's packages
# first if missing); a second, restartable NATS on 4223 serves the
# broker-restart test; tansu (Kafka protocol) serves 127.0.0.1:9092.
# Nothing already running is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
    local tries=$(($3 * 5))
    for _ in $(seq 1 "$tries"); do
        port_open "$1" && return 0
        sleep 0.2
    done
    echo "$2 did not open port $1 within $3 s" >&2
    return 1
}

apt_updated=0
need() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

need_pkg() { # package: for libraries, which have no command to look for
    dpkg -s "$1" >/dev/null 2>&1 && return 0
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

# busline-kafka builds rdkafka with OpenSSL (feature `ssl`: TLS, SCRAM),
# linked against the system's libssl; openssl-sys finds it by pkg-config.
# The `openssl` command makes the TLS tests' certificates.
need_pkg libssl-dev
need pkg-config pkg-config
need openssl openssl

# RabbitMQ: the tests run on a node of the project's own on 5673
# (.ci/rabbitmq-restartable.sh, started below), never on the machine's
# shared broker, which they could disturb and which a restart test must not
# touch; only the package is needed.
need rabbitmqctl rabbitmq-server

if ! port_open 4222; then
    echo "starting NATS (JetStream)"
    need nats-server nats-server
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_port 4222 NATS 60
fi

if ! port_open 5432; then
    # A fresh machine: Debian's PostgreSQL, with a password for TCP logins
    # and the database the dedup-store tests use.
    echo "starting PostgreSQL"
    need pg_ctlcluster postgresql
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    # The package may have started it already.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port 5432 PostgreSQL 60
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
fi
if ! su postgres -c "psql -lqt" 2>/dev/null | cut -d'|' -f1 | grep -qw test; then
    su postgres -c "createdb test" 2>/dev/null || true
fi

# The Python CloudEvents SDK and the brokers' Python clients for the
# foreign-client interop test (tests/cloudevents_sdk.rs), in a virtualenv.
venv="$HOME/.cache/busline-interop-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check -q -r interop/requirements.txt

bash .ci/nats-restartable.sh start
bash .ci/nats-cluster.sh start
bash .ci/rabbitmq-restartable.sh start
bash .ci/rabbitmq-cluster.sh start
bash .ci/rabbitmq-restartable.sh reset   # an empty node for every run

# Kafka protocol: tansu, built from crates.io the first time (~15 minutes),
# then reused from ~/.cargo/bin.
bash .ci/tansu.sh install
bash .ci/tansu.sh start
echo "brokers up: RabbitMQ (own node) 127.0.0.1:5673, NATS 127.0.0.1:4222 (+ restartable on 4223, 3-node cluster on 4231-4233), PostgreSQL 127.0.0.1:5432, tansu 127.0.0.1:9092"
