#!/usr/bin/env bash
# The edge proxy side by side with nginx (one worker) and haproxy (one thread), each set up as an
# equivalent keep-alive reverse proxy in front of one upstream that answers 1 KB.
#
# Every proxy gets core 1 (`taskset`); the client (wrk) and the upstream share core 0. The
# upstream is `examples/upstream.rs`, which answers from memory without parsing, so that core 0
# is well above every proxy: the first line of each table is wrk against the upstream alone.
#
# Measured, in this order, for each proxy:
#   ka      saturation, 64 kept-alive connections: requests/s and p99
#   new     saturation, a new connection per request (64 at a time): requests/s and p99
#   5k/20k  paced at 5,000 and 20,000 requests/s (wrk's `delay()`, bench/proxy/paced.lua), kept
#           alive: p99, and the proxy's CPU time per 1,000 requests (utime + stime from
#           /proc/PID/stat, all threads)
#   tls-new HTTPS, a new connection per request: handshakes/s, and the proxy's CPU time per 1,000
#           handshakes (the client, wrk on one core, does as much crypto per handshake as the
#           server and may be the limit of the rate; nginx and Dropship, same RSA-2048
#           certificate). wrk offers the previous session again, and both servers resume it (nginx
#           from its session cache, Dropship from its stateless session tickets), so this is
#           mostly the rate of resumed handshakes; `openssl s_client -reconnect` shows both reuse.
#           nginx is given TLS 1.3 (`ssl_protocols TLSv1.2 TLSv1.3`, its default since 1.23.4;
#           Debian's 1.22 offers only up to TLS 1.2 by default): a TLS 1.2 resumption skips the key
#           exchange that every TLS 1.3 one does, so without it the two would not do the same work.
#   tls-ka  HTTPS, 64 kept-alive connections: requests/s and p99
#
# Usage: bench/proxy/run.sh [SECONDS]
#   (needs: apt-get install wrk nginx-light haproxy sqlite3 openssl)
# DROPSHIP_BIN=path skips the build; BENCH_ONLY="ka new" runs only those measures;
# BENCH_PERF=/tmp/perf.data records Dropship under `perf record -g` during its first measure
# (and nginx's worker during its own, into /tmp/perf.data.nginx).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
only=${BENCH_ONLY:-ka new 5k 20k tls-new tls-ka}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -F "$work/nginx.pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for tool in wrk nginx haproxy sqlite3 openssl; do command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "needs $tool" >&2; exit 1; }; done
bin=${DROPSHIP_BIN:-target/release/dropship}
[ -n "${DROPSHIP_BIN:-}" ] || cargo build --release --quiet --bin dropship
cargo build --release --quiet --example upstream
upstream_bin=${CARGO_TARGET_DIR:-target}/release/examples/upstream

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
wants() { [[ " $only " == *" $1 "* ]]; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ms per 1,000 requests from ticks (1/100 s) over the measure: ticks * 10 * 1000 / (rate * seconds).
cpu_per_1k() { awk -v t="$1" -v r="$2" -v s="$seconds" 'BEGIN {printf "%.1fms/1k", t * 10000 / (r * s)}'; }

# The upstream, on core 0 with wrk.
taskset -c 0 "$upstream_bin" 127.0.0.1:19101 1024 &
wait_port 19101

openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 2>/dev/null

# nginx as the reverse proxy: one worker, pooled keep-alive to the upstream.
cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon on; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:19101; keepalive 64; }
  server { listen 127.0.0.1:19102; listen 127.0.0.1:19202 ssl;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:1m;
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
listen_tls = "127.0.0.1:19204"
[[proxy.certificates]]
hosts = ["bench.test"]
cert = "$work/cert.pem"
key = "$work/key.pem"
TOML
"$bin" serve --config "$work/dropship.toml" >/dev/null 2>&1 &
wait_port 19110
kill %%; wait %% 2>/dev/null || true
sqlite3 "$work/data/dropship.db" "INSERT INTO routes VALUES ('acme/bench', 'production', 'web', '[\"bench.test\"]', '/', '[{\"address\":\"127.0.0.1:19101\",\"container\":\"bench\"}]', 0)"

# wrk, pinned to core 0, parsed into "requests/s p99".
wrk_run() { # url connections [extra wrk arguments...]
  local url=$1 connections=$2; shift 2
  taskset -c 0 wrk -t1 -c"$connections" -d"${seconds}s" --latency -H "Host: bench.test" "$@" "$url" > "$work/wrk.out"
  if grep -q "Non-2xx\|Socket errors" "$work/wrk.out"; then grep "Non-2xx\|Socket errors" "$work/wrk.out" | sed 's/^/    /' >&2; fi
  awk '/Requests\/sec/ {rate=$2} / 99%/ {p99=$2} END {printf "%d %s\n", rate, p99}' "$work/wrk.out"
}

# One proxy through every wanted measure. name pid http_port tls_port(or -)
measure() {
  local name=$1 pid=$2 port=$3 tls=$4 line="" result before after
  for kind in $only; do
    case $kind in
      ka) result=$(wrk_run "http://127.0.0.1:$port/" 64) ;;
      new) result=$(wrk_run "http://127.0.0.1:$port/" 64 -H "Connection: close") ;;
      5k|20k)
        # 50 connections each sending every 10 ms ≈ 5,000/s; 200 ≈ 20,000/s.
        local connections=$([ "$kind" = 5k ] && echo 50 || echo 200)
        before=$(cpu_ticks "$pid")
        result=$(DELAY_MS=10 wrk_run "http://127.0.0.1:$port/" "$connections" -s bench/proxy/paced.lua)
        after=$(cpu_ticks "$pid")
        local rate=${result%% *} ticks=$((after - before))
        result="$result $(cpu_per_1k "$ticks" "$rate")"
        ;;
      tls-new)
        if [ "$tls" = - ]; then result="-"; else
          before=$(cpu_ticks "$pid")
          result=$(wrk_run "https://127.0.0.1:$tls/" 64 -H "Connection: close")
          after=$(cpu_ticks "$pid")
          result="$result $(cpu_per_1k "$((after - before))" "${result%% *}")"
        fi ;;
      tls-ka) [ "$tls" = - ] && result="-" || result=$(wrk_run "https://127.0.0.1:$tls/" 64) ;;
    esac
    line="$line | $result"
  done
  echo "| $name$line | $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status) |"
}

header="| proxy |" rule="|---|"
for kind in $only; do header="$header $kind |" rule="$rule---|"; done
echo "$header peak RSS |"
echo "$rule---|"
echo "| upstream alone (keep-alive) | $(wrk_run http://127.0.0.1:19101/ 64) |"

taskset -c 1 nginx -c "$work/nginx.conf" -p "$work"
wait_port 19102
nginx_worker=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
if [ -n "${BENCH_PERF:-}" ]; then
  perf record -g -o "$BENCH_PERF.nginx" -p "$nginx_worker" -- sleep "$seconds" >/dev/null 2>&1 &
fi
measure "nginx $(nginx -v 2>&1 | sed 's|.*/||') (1 worker)" "$nginx_worker" 19102 19202
pkill -F "$work/nginx.pid"

taskset -c 1 haproxy -f "$work/haproxy.cfg" >/dev/null 2>&1 &
haproxy_pid=$!
wait_port 19103
measure "haproxy $(haproxy -v | head -1 | awk '{print $3}') (1 thread)" "$haproxy_pid" 19103 -
kill "$haproxy_pid"; wait "$haproxy_pid" 2>/dev/null || true

RUST_LOG=error taskset -c 1 "$bin" serve --config "$work/dropship.toml" >/dev/null 2>&1 &
dropship_pid=$!
wait_port 19104
wait_port 19204
if [ -n "${BENCH_PERF:-}" ]; then
  perf record -g -o "$BENCH_PERF" -p "$dropship_pid" -- sleep "$seconds" >/dev/null 2>&1 &
fi
measure "Dropship" "$dropship_pid" 19104 19204
