#!/usr/bin/env bash
# Signed deployment webhooks per second and latency at 64 connections: Dropship (every
# delivery committed to SQLite, synchronous=FULL, before the answer) against adnanh/webhook
# (Debian package `webhook`) verifying the same HMAC-SHA256 signature and running /bin/true.
# wrk runs on core 0, each server on core 1. Usage: bench/webhook/run.sh [SECONDS] [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
count=${2:-400000}
secret=bench-secret
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

command -v wrk >/dev/null && command -v webhook >/dev/null || { echo "needs: apt-get install wrk webhook" >&2; exit 1; }
bin=${DROPSHIP_BIN:-target/release/dropship}
[ -n "${DROPSHIP_BIN:-}" ] || cargo build --release --quiet --bin dropship
python3 bench/webhook/gen.py "$secret" "$count" "$work/requests.tsv"

cat > "$work/dropship.toml" <<TOML
[server]
listen = "127.0.0.1:18080"
data_dir = "$work/data"
[github]
# Nothing listens here: deployments are recorded, then end as error without a manifest.
api_url = "http://127.0.0.1:9"
token = "bench"
webhook_secrets = ["$secret"]
[[repos]]
name = "acme/*"
TOML
cat > "$work/hooks.json" <<JSON
[{"id": "deploy", "execute-command": "/bin/true",
  "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": "$secret",
    "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}}}]
JSON

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

echo "== dropship =="
RUST_LOG=error,octocrab=off taskset -c 1 "$bin" serve --config "$work/dropship.toml" &
dropship_pid=$!
if [ -n "${BENCH_PERF:-}" ]; then (sleep 2; perf record -F 999 -g -o "$BENCH_PERF" -p $dropship_pid -- sleep 4 >/dev/null 2>&1) & fi
wait_port 18080
grep VmRSS /proc/$dropship_pid/status | sed 's/^/idle /'
BENCH_REQUESTS="$work/requests.tsv" taskset -c 0 wrk -t1 -c64 -d"${seconds}s" --latency -s bench/webhook/post.lua \
  http://127.0.0.1:18080/webhooks/github | tee "$work/dropship.out"
grep VmHWM /proc/$dropship_pid/status | sed 's/^/peak /'
kill $dropship_pid; wait $dropship_pid 2>/dev/null || true
recorded=$(sqlite3 "$work/data/dropship.db" "SELECT COUNT(*) FROM deployments")
echo "deployments recorded in SQLite: $recorded"

echo "== adnanh/webhook $(webhook -version 2>&1 | head -1) =="
taskset -c 1 webhook -hooks "$work/hooks.json" -ip 127.0.0.1 -port 19000 >/dev/null 2>&1 &
wait_port 19000
BENCH_REQUESTS="$work/requests.tsv" taskset -c 0 wrk -t1 -c64 -d"${seconds}s" --latency -s bench/webhook/post.lua \
  http://127.0.0.1:19000/hooks/deploy | tee "$work/webhook.out"
