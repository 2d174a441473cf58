#!/usr/bin/env bash
# The real servers the tests use, from Debian packages, started without systemd, loopback only.
#
#   scripts/services.sh {install|start|stop|status|env} [postgres|redis|rabbitmq|sshd|all ...]
#
#   install  apt-get install the missing packages (apt-get update once, only when needed)
#   start    start them bound to 127.0.0.1 (no-op when already running)
#   stop     stop them (no-op when already stopped)
#   status   say what is installed and running
#   env      print `export ...` lines for the tests: eval "$(scripts/services.sh env)"
#
# Ports: OPSC_PG_PORT (5432), OPSC_REDIS_PORT (6379), OPSC_RABBITMQ_PORT (5672).
# The `opsc` PostgreSQL role (password `opsc`) is for development and tests on loopback only.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

PG_PORT="${OPSC_PG_PORT:-5432}"
PG_CLUSTER=main
PG_ROLE=opsc
PG_PASSWORD=opsc
REDIS_PORT="${OPSC_REDIS_PORT:-6379}"
RABBITMQ_PORT="${OPSC_RABBITMQ_PORT:-5672}"
ALL_SERVICES=(postgres redis rabbitmq sshd)
# Installed with sshd: the login shells targets' accounts commonly have (bash and dash come with
# Debian); the SSH tests run commands in each.
TARGET_LOGIN_SHELLS=(zsh ksh mksh)

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

package_of() {
    case "$1" in
        postgres) echo postgresql ;;
        redis) echo redis-server ;;
        rabbitmq) echo rabbitmq-server ;;
        sshd) echo openssh-server ;;
    esac
}

is_installed() {
    dpkg-query -W -f='${Status}' "$(package_of "$1")" 2>/dev/null | grep -q '^install ok installed$'
}

require_installed() {
    is_installed "$1" || die "$1 is not installed; run: scripts/services.sh install $1"
}

wait_for() {  # wait_for <seconds> <what> <command...>
    local seconds=$1 what=$2 i
    shift 2
    for ((i = 0; i < seconds * 4; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.25
    done
    die "$what did not become ready within ${seconds}s"
}

# ---------------------------------------------------------------- PostgreSQL

pg_version() {
    # The newest installed major version that has a cluster config directory.
    # shellcheck disable=SC2012 # version directories are plain numbers
    ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1
}

pg_running() {
    local v
    v="$(pg_version)"
    [ -n "$v" ] && pg_ctlcluster "$v" "$PG_CLUSTER" status >/dev/null 2>&1
}

pg_ready() {
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 1
}

pg_psql() {  # runs SQL from stdin as the postgres superuser over the local socket
    as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres
}

# Our settings live in a conf.d drop-in (read by the server and by pg_ctlcluster alike);
# returns 0 when the file changed.
pg_write_settings() {
    local file="/etc/postgresql/$1/$PG_CLUSTER/conf.d/opsconductor.conf" wanted
    wanted="# Written by scripts/services.sh: development and test server, loopback only.
listen_addresses = '127.0.0.1'
port = $PG_PORT"
    if [ -f "$file" ] && [ "$(cat "$file")" = "$wanted" ]; then
        return 1
    fi
    printf '%s\n' "$wanted" | as_root tee "$file" >/dev/null
    return 0
}

start_postgres() {
    require_installed postgres
    local v changed=0
    v="$(pg_version)"
    if [ -z "$v" ] || [ ! -d "/etc/postgresql/$v/$PG_CLUSTER" ]; then
        # shellcheck disable=SC2012 # version directories are plain numbers
        v="${v:-$(ls /usr/lib/postgresql | sort -V | tail -n 1)}"
        say "postgres: creating cluster $v/$PG_CLUSTER"
        as_root pg_createcluster "$v" "$PG_CLUSTER" >/dev/null
    fi
    pg_write_settings "$v" && changed=1
    as_root install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    if pg_running; then
        if [ "$changed" -eq 1 ]; then
            say "postgres: settings changed; restarting cluster $v/$PG_CLUSTER"
            as_root pg_ctlcluster --skip-systemctl-redirect "$v" "$PG_CLUSTER" restart
        else
            say "postgres: already running (cluster $v/$PG_CLUSTER, 127.0.0.1:$PG_PORT)"
        fi
    else
        say "postgres: starting cluster $v/$PG_CLUSTER on 127.0.0.1:$PG_PORT"
        as_root pg_ctlcluster --skip-systemctl-redirect "$v" "$PG_CLUSTER" start
    fi
    wait_for 60 "postgres" pg_ready
    # Idempotent: create the role once, and keep its password and rights as documented.
    pg_psql <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
        CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
        RAISE NOTICE 'role $PG_ROLE created';
    ELSE
        ALTER ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
    END IF;
END
\$\$;
SQL
    say "postgres: ready; role '$PG_ROLE' can log in over 127.0.0.1:$PG_PORT"
}

stop_postgres() {
    if ! pg_running; then
        say "postgres: not running"
        return 0
    fi
    say "postgres: stopping cluster $(pg_version)/$PG_CLUSTER"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" "$PG_CLUSTER" stop -m fast
}

status_postgres() {
    if ! is_installed postgres; then
        echo "postgres: not installed"
    elif pg_running && pg_ready; then
        echo "postgres: running, accepting connections on 127.0.0.1:$PG_PORT"
    elif pg_running; then
        echo "postgres: running, but not accepting connections on 127.0.0.1:$PG_PORT"
    else
        echo "postgres: installed, stopped"
    fi
}

env_postgres() {
    echo "export OPSC_TEST_POSTGRES_URL=postgresql://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres"
}

# ---------------------------------------------------------------- Redis

redis_ready() {
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

start_redis() {
    require_installed redis
    if redis_ready; then
        say "redis: already running on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    say "redis: starting on 127.0.0.1:$REDIS_PORT (no persistence)"
    as_root install -d -o redis -g redis -m 2775 /run/redis
    # "-::1": also IPv6 loopback when the machine has it, without failing when it does not.
    as_root runuser -u redis -- redis-server --daemonize yes --bind 127.0.0.1 -::1 \
        --port "$REDIS_PORT" --save "" --appendonly no --dir /var/lib/redis \
        --pidfile "/run/redis/opsc-redis-$REDIS_PORT.pid" \
        --logfile /var/log/redis/redis-server.log
    wait_for 30 "redis" redis_ready
    say "redis: ready"
}

stop_redis() {
    if ! redis_ready; then
        say "redis: not running"
        return 0
    fi
    say "redis: stopping (127.0.0.1:$REDIS_PORT)"
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    local i
    for ((i = 0; i < 40; i++)); do redis_ready || return 0; sleep 0.25; done
    die "redis did not stop"
}

status_redis() {
    if ! is_installed redis; then
        echo "redis: not installed"
    elif redis_ready; then
        echo "redis: running on 127.0.0.1:$REDIS_PORT"
    else
        echo "redis: installed, stopped"
    fi
}

env_redis() {
    echo "export OPSC_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

# ---------------------------------------------------------------- RabbitMQ

# Every Erlang CLI call starts the port mapper (epmd) when it is not running: keep it on loopback.
rmq() {
    as_root env ERL_EPMD_ADDRESS=127.0.0.1 "$@"
}

rabbitmq_running() {
    rmq rabbitmqctl -q ping >/dev/null 2>&1
}

start_rabbitmq() {
    require_installed rabbitmq
    if rabbitmq_running; then
        say "rabbitmq: already running (127.0.0.1:$RABBITMQ_PORT)"
        return 0
    fi
    say "rabbitmq: starting on 127.0.0.1:$RABBITMQ_PORT"
    # Without these it listens on every interface: AMQP and Erlang distribution.
    rmq RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RABBITMQ_PORT" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        rabbitmq-server -detached
    # await_startup gives up at once while the node has not yet registered with epmd.
    wait_for 30 "rabbitmq node" rabbitmq_running
    if ! rmq rabbitmqctl -q await_startup --timeout 90 >/dev/null; then
        die "rabbitmq did not finish booting within 90s (see /var/log/rabbitmq/)"
    fi
    say "rabbitmq: ready (guest/guest works on loopback)"
}

stop_rabbitmq() {
    if ! rabbitmq_running; then
        say "rabbitmq: not running"
        return 0
    fi
    say "rabbitmq: stopping"
    rmq rabbitmqctl -q shutdown >/dev/null  # waits for the VM to exit, unlike `stop`
    # The port mapper was started for rabbitmq; it refuses to die while a node is still
    # registered, which lasts a moment after `stop` returns.
    local i
    for ((i = 0; i < 20; i++)); do
        rmq epmd -names >/dev/null 2>&1 || break
        rmq epmd -kill >/dev/null 2>&1 && break
        sleep 0.25
    done
}

status_rabbitmq() {
    if ! is_installed rabbitmq; then
        echo "rabbitmq: not installed"
    elif rabbitmq_running; then
        echo "rabbitmq: running on 127.0.0.1:$RABBITMQ_PORT"
    else
        echo "rabbitmq: installed, stopped"
    fi
}

env_rabbitmq() {
    echo "export OPSC_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/"
}

# ---------------------------------------------------------------- OpenSSH
# No long-running sshd: test fixtures run `/usr/sbin/sshd -D -e -f <own config>` as a child
# process, with their own host key and loopback addresses. Here we only make that possible.

start_sshd() {
    require_installed sshd
    as_root install -d -m 0755 /run/sshd
    say "sshd: /usr/sbin/sshd is ready; test fixtures start their own instances (nothing to run)"
}

stop_sshd() {
    say "sshd: nothing to stop (test fixtures stop their own instances)"
}

status_sshd() {
    if is_installed sshd; then
        echo "sshd: installed (/usr/sbin/sshd), started per test session by the fixtures"
    else
        echo "sshd: not installed"
    fi
}

env_sshd() {
    :
}

# ---------------------------------------------------------------- main

[ $# -ge 1 ] || usage
action=$1
shift
services=()
for target in "${@:-all}"; do
    case "$target" in
        all) services+=("${ALL_SERVICES[@]}") ;;
        postgres | redis | rabbitmq | sshd) services+=("$target") ;;
        *) usage ;;
    esac
done

case "$action" in
    install)
        packages=()
        for s in "${services[@]}"; do
            packages+=("$(package_of "$s")")
            if [ "$s" = sshd ]; then packages+=("${TARGET_LOGIN_SHELLS[@]}"); fi
        done
        apt_install_missing "${packages[@]}"
        ;;
    start | stop | status | env)
        for s in "${services[@]}"; do "${action}_$s"; done
        ;;
    *) usage ;;
esac
