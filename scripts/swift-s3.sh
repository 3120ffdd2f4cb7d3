#!/usr/bin/env bash
# Start or stop a one-node OpenStack Swift with its S3 API (s3api) on 127.0.0.1, for tests
# and for trying the S3 store by hand. Everything lives under DIR; nothing is installed.
#
#   scripts/swift-s3.sh install                 # Debian packages (once, as root)
#   scripts/swift-s3.sh start DIR [PORT]        # proxy on PORT (default 8480); prints the endpoint
#   scripts/swift-s3.sh stop DIR
#
# S3 credentials: access key "test:tester", secret "testing", region us-east-1, path-style.
# Swift's s3api refuses conditional PUTs (If-Match / If-None-Match) with 501: the store
# falls back to its lease scheme there (see histo_core/storage.py).
set -euo pipefail

cmd=${1:?usage: $0 install|start DIR [PORT]|stop DIR}

if [ "$cmd" = install ]; then
  command -v swift-proxy-server >/dev/null && exit 0
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq swift swift-proxy swift-account swift-container swift-object >/dev/null
  exit 0
fi

dir=$(realpath -m "${2:?missing DIR}")
port=${3:-8480}
acc=$((port + 2)); con=$((port + 3)); obj=$((port + 4))

if [ "$cmd" = stop ]; then
  for pidfile in "$dir"/run/*.pid; do
    [ -e "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  exit 0
fi

[ "$cmd" = start ] || { echo "unknown command $cmd" >&2; exit 2; }
command -v swift-proxy-server >/dev/null || { echo "Swift is not installed: run '$0 install' first" >&2; exit 1; }
mkdir -p "$dir/srv/d1" "$dir/run" "$dir/log"

cat > "$dir/swift.conf" <<CONF
[swift-hash]
swift_hash_path_suffix = histo-test
swift_hash_path_prefix = histo-test
[storage-policy:0]
name = Policy-0
default = yes
CONF

for kind in account container object; do
  case $kind in account) p=$acc;; container) p=$con;; object) p=$obj;; esac
  cat > "$dir/$kind-server.conf" <<CONF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $p
devices = $dir/srv
mount_check = false
swift_dir = $dir
user = $(id -un)
log_name = $kind-server
[pipeline:main]
pipeline = $kind-server
[app:$kind-server]
use = egg:swift#$kind
[${kind}-replicator]
[${kind}-updater]
[${kind}-auditor]
CONF
done

# The three one-device rings, made in one process with Swift's own RingBuilder: what
# swift-ring-builder's create, add and rebalance make, without nine interpreter starts
# (5 s of CPU each ring, against 1.6 s for all three).
if [ ! -f "$dir/object.ring.gz" ]; then
  swift_python=$(sed -n '1s/^#! *//p' "$(command -v swift-ring-builder)")
  "$swift_python" - "$dir" $acc $con $obj <<'PY'
import sys

from swift.common.ring import RingBuilder

folder, ports = sys.argv[1], dict(zip(("account", "container", "object"), map(int, sys.argv[2:])))
for kind, port in ports.items():
    builder = RingBuilder(10, 1, 1)  # 2**10 partitions, 1 replica, 1 hour between moves
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": port, "device": "d1", "weight": 1,
                     "replication_ip": "127.0.0.1", "replication_port": port})
    builder.rebalance()
    builder.get_ring().save(f"{folder}/{kind}.ring.gz")  # object last: its file says all three are there
PY
fi

cat > "$dir/proxy-server.conf" <<CONF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
swift_dir = $dir
user = $(id -un)
log_name = proxy-server
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit s3api tempauth copy container-quotas account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin .reseller_admin
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
CONF
# The plain filters: section name = entry point, with '-' as '_' (the cache is memcache).
for filter in catch_errors gatekeeper healthcheck proxy-logging listing_formats bulk tempurl ratelimit copy \
              container-quotas account-quotas slo dlo versioned_writes symlink; do
  printf '[filter:%s]\nuse = egg:swift#%s\n' "$filter" "${filter//-/_}" >> "$dir/proxy-server.conf"
done
printf '[filter:cache]\nuse = egg:swift#memcache\n' >> "$dir/proxy-server.conf"

start_server() {
  nohup swift-$1-server "$dir/$1-server.conf" >"$dir/log/$1.log" 2>&1 &
  echo $! > "$dir/run/$1.pid"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
backends_listen() { listening $acc && listening $con && listening $obj; }
# The proxy must not see a backend down on its first request: it would then error-limit
# that node for a minute and answer 503 "reduce your request rate".
proxy_ready() { backends_listen && curl -fsS "http://127.0.0.1:$port/healthcheck" >/dev/null 2>&1; }
fail() {
  echo "$1; logs in $dir/log" >&2
  tail -n 20 "$dir"/log/*.log >&2
  "$0" stop "$dir"
  exit 1
}
# Wait on readiness, not for a fixed time: on a loaded machine the servers have taken
# minutes to listen. Give up early if a server process died, or after the deadline.
deadline=$((SECONDS + ${SWIFT_START_TIMEOUT:-600}))
wait_until() {  # wait_until WHAT CHECK [SERVERS...]
  local what=$1 check=$2; shift 2
  until $check; do
    for server in "$@"; do
      kill -0 "$(cat "$dir/run/$server.pid")" 2>/dev/null || fail "swift-$server-server exited before $what"
    done
    [ "$SECONDS" -lt "$deadline" ] || fail "Swift: $what not ready after ${SWIFT_START_TIMEOUT:-600}s"
    sleep 0.2
  done
}
for kind in account container object; do start_server $kind; done
wait_until "the account, container and object servers listen" backends_listen account container object
start_server proxy
wait_until "the proxy answers its health check" proxy_ready account container object proxy
echo "http://127.0.0.1:$port"
