# Throwaway MariaDB and Redis servers for the tests and the store benchmarks. Source this file,
# then call `start_test_servers`: it starts both on free local ports with their data under
# target/test-servers/, exports
#   GAMESERVER_TEST_MYSQL_URL    mysql://gameserver:gameserver@127.0.0.1:PORT  (no database:
#                                each test creates its own)
#   GAMESERVER_TEST_REDIS_URL    redis://127.0.0.1:PORT
#   GAMESERVER_TEST_REDIS_SERVER the redis-server binary (a test restarts a Redis of its own)
# and stops them when the calling script exits, on failure too. When the two URL variables are
# already set, it uses those servers and starts nothing (a developer's own servers).
# When the binaries are missing it installs the Debian packages mariadb-server and
# redis-server if it runs as root, and otherwise says what to install.

find_bin() {
  local name
  for name in "$@"; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    local dir
    for dir in /usr/sbin /usr/local/sbin /sbin; do
      if [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
    done
  done
  return 1
}

# A TCP port on 127.0.0.1 that nothing answers on, from $1 upwards.
free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    port=$((port + 1))
  done
  echo "$port"
}

ensure_server_binaries() {
  if find_bin mariadbd mysqld >/dev/null && find_bin mariadb-install-db mysql_install_db >/dev/null \
    && find_bin redis-server >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing mariadb-server and redis-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq mariadb-server redis-server >/dev/null
    return 0
  fi
  echo "scripts/test: MariaDB and Redis are needed: install the packages mariadb-server and redis-server (or set GAMESERVER_TEST_MYSQL_URL and GAMESERVER_TEST_REDIS_URL to servers of your own)" >&2
  exit 1
}

TEST_SERVERS_DIR=""
TEST_SERVERS_PIDS=()

stop_test_servers() {
  local pid
  for pid in "${TEST_SERVERS_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${TEST_SERVERS_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  TEST_SERVERS_PIDS=()
  if [ -n "$TEST_SERVERS_DIR" ]; then
    rm -rf "$TEST_SERVERS_DIR"
    TEST_SERVERS_DIR=""
  fi
}

# Waits up to $1 seconds for the command "${@:2}" to succeed.
wait_for() {
  local secs=$1
  shift
  local i
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

start_test_servers() {
  ensure_server_binaries
  export GAMESERVER_TEST_REDIS_SERVER="${GAMESERVER_TEST_REDIS_SERVER:-$(find_bin redis-server)}"
  if [ -n "${GAMESERVER_TEST_MYSQL_URL:-}" ] && [ -n "${GAMESERVER_TEST_REDIS_URL:-}" ]; then
    echo "== using the servers of GAMESERVER_TEST_MYSQL_URL and GAMESERVER_TEST_REDIS_URL"
    return 0
  fi
  trap stop_test_servers EXIT
  local root
  root="$(pwd)/target/test-servers"
  mkdir -p "$root"
  TEST_SERVERS_DIR="$(mktemp -d "$root/run.XXXXXX")"
  local dir=$TEST_SERVERS_DIR
  local user
  user="$(id -un)"

  local mysql_port redis_port
  mysql_port=$(free_port $((33306 + $$ % 500)))
  redis_port=$(free_port $((36379 + $$ % 500)))

  "$(find_bin mariadb-install-db mysql_install_db)" --no-defaults --datadir="$dir/mysql" \
    --auth-root-authentication-method=normal --skip-test-db --user="$user" \
    >"$dir/mariadb-install.log" 2>&1 || {
    cat "$dir/mariadb-install.log" >&2
    echo "scripts/test: mariadb-install-db failed" >&2
    exit 1
  }
  "$(find_bin mariadbd mysqld)" --no-defaults --datadir="$dir/mysql" --port="$mysql_port" \
    --bind-address=127.0.0.1 --socket="$dir/mysql.sock" --pid-file="$dir/mysql.pid" \
    --skip-name-resolve --skip-log-bin --max-connections=1000 \
    --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 \
    --user="$user" >"$dir/mariadb.log" 2>&1 &
  TEST_SERVERS_PIDS+=($!)

  "$(find_bin redis-server)" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" --protected-mode no --daemonize no >"$dir/redis.log" 2>&1 &
  TEST_SERVERS_PIDS+=($!)

  local client
  client="$(find_bin mariadb mysql)"
  if ! wait_for 60 "$client" --no-defaults --socket="$dir/mysql.sock" -uroot -e "SELECT 1"; then
    cat "$dir/mariadb.log" >&2
    echo "scripts/test: MariaDB did not start" >&2
    exit 1
  fi
  "$client" --no-defaults --socket="$dir/mysql.sock" -uroot -e "
    CREATE USER 'gameserver'@'%' IDENTIFIED BY 'gameserver';
    GRANT ALL PRIVILEGES ON *.* TO 'gameserver'@'%';"
  if ! wait_for 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$redis_port && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG"; then
    cat "$dir/redis.log" >&2
    echo "scripts/test: Redis did not start" >&2
    exit 1
  fi
  export GAMESERVER_TEST_MYSQL_URL="mysql://gameserver:gameserver@127.0.0.1:$mysql_port"
  export GAMESERVER_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
  echo "== MariaDB on 127.0.0.1:$mysql_port, Redis on 127.0.0.1:$redis_port (data in $dir)"
}
