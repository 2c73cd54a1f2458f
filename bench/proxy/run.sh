#!/usr/bin/env bash
# Requests per second and latency through a reverse proxy to one upstream serving 1 KB, at 64
# connections: Dropship's proxy against nginx (one worker) and haproxy (one thread), each set up
# as an equivalent keep-alive reverse proxy, and against the upstream directly. wrk and the
# upstream (nginx serving a static file, one worker) share core 0; each proxy has core 1.
# Usage: bench/proxy/run.sh [SECONDS]   (needs: apt-get install wrk nginx-light haproxy sqlite3)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -F "$work/upstream.pid" 2>/dev/null || true; pkill -F "$work/nginx.pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for tool in wrk nginx haproxy sqlite3; do command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "needs $tool" >&2; exit 1; }; done
bin=${DROPSHIP_BIN:-target/release/dropship}
[ -n "${DROPSHIP_BIN:-}" ] || cargo build --release --quiet --bin dropship

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# The upstream: 1 KB from nginx, one worker, on core 0 (with wrk).
mkdir -p "$work/www"
chmod 755 "$work" "$work/www"
head -c 1024 /dev/zero | tr '\0' 'x' > "$work/www/index.html"
cat > "$work/upstream.conf" <<CONF
worker_processes 1; daemon on; pid $work/upstream.pid; error_log $work/upstream.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:19101; root $work/www; } }
CONF
taskset -c 0 nginx -c "$work/upstream.conf" -p "$work"
wait_port 19101

# nginx as the reverse proxy: one worker, pooled keep-alive to the upstream.
cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon on; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  upstream app { server 127.0.0.1:19101; keepalive 64; }
  server { listen 127.0.0.1:19102;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; } } }
CONF

# haproxy: one thread, connection reuse to the upstream.
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend web
  bind 127.0.0.1:19103
  default_backend app
backend app
  server up 127.0.0.1:19101
CONF

# Dropship: its proxy, with one route to the upstream, written into its database.
cat > "$work/dropship.toml" <<TOML
[server]
listen = "127.0.0.1:19110"
data_dir = "$work/data"
[github]
api_url = "http://127.0.0.1:9"
token = "bench"
webhook_secrets = ["bench"]
[proxy]
listen = "127.0.0.1:19104"
TOML
"$bin" serve --config "$work/dropship.toml" >/dev/null 2>&1 &
wait_port 19110
kill %1; wait %1 2>/dev/null || true
sqlite3 "$work/data/dropship.db" "INSERT INTO routes VALUES ('acme/bench', 'production', 'web', '[\"bench.test\"]', '/', '[{\"address\":\"127.0.0.1:19101\",\"container\":\"bench\"}]', 0)"

run() { # name port [host]
  echo "== $1 =="
  taskset -c 0 wrk -t1 -c64 -d"${seconds}s" --latency -H "Host: ${3:-bench.test}" "http://127.0.0.1:$2/" | grep -E "Requests/sec|Latency  |50%|90%|99%|Non-2xx|Socket errors"
}
run "upstream directly (nginx, static 1 KB)" 19101

taskset -c 1 nginx -c "$work/nginx.conf" -p "$work"
wait_port 19102
run "nginx 1.22 (1 worker)" 19102
pkill -F "$work/nginx.pid"

taskset -c 1 haproxy -f "$work/haproxy.cfg" >/dev/null 2>&1 &
wait_port 19103
run "haproxy $(haproxy -v | head -1 | awk '{print $3}') (1 thread)" 19103
kill %%; wait 2>/dev/null || true

RUST_LOG=error taskset -c 1 "$bin" serve --config "$work/dropship.toml" >/dev/null 2>&1 &
dropship_pid=$!
wait_port 19104
run "dropship" 19104
grep VmHWM /proc/$dropship_pid/status | sed 's/^/dropship peak /'
