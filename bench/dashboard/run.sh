#!/usr/bin/env bash
# The people's side under load: the dashboard's deployments page (server-rendered, 100 rows),
# the JSON API's deployment list and /metrics, each at 16 connections for SECONDS, with 2,000
# deployments recorded. wrk runs on core 0, Dropship on core 1.
# Usage: bench/dashboard/run.sh [SECONDS] [DEPLOYMENTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
count=${2:-2000}
secret=bench-secret
token=bench-admin-token
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

command -v wrk >/dev/null && command -v curl >/dev/null || { echo "needs: apt-get install wrk curl" >&2; exit 1; }
bin=${DROPSHIP_BIN:-target/release/dropship}
[ -n "${DROPSHIP_BIN:-}" ] || cargo build --release --quiet --bin dropship
python3 bench/webhook/gen.py "$secret" "$count" "$work/requests.tsv"

cat > "$work/dropship.toml" <<TOML
[server]
listen = "127.0.0.1:18095"
data_dir = "$work/data"
[github]
# Nothing listens here: deployments are recorded, then end as error without a manifest.
api_url = "http://127.0.0.1:9"
token = "bench"
webhook_secrets = ["$secret"]
[[api.users]]
name = "bench"
role = "admin"
token_sha256 = "$(printf %s "$token" | sha256sum | cut -d' ' -f1)"
[[repos]]
name = "acme/*"
TOML

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

RUST_LOG=error,octocrab=off taskset -c 1 "$bin" serve --config "$work/dropship.toml" &
pid=$!
wait_port 18095
python3 - "$work/requests.tsv" <<'PY'
import sys, urllib.request
for line in open(sys.argv[1]):
    sig, body = line.rstrip("\n").split("\t", 1)
    req = urllib.request.Request("http://127.0.0.1:18095/webhooks/github", data=body.encode(),
        headers={"X-GitHub-Event": "deployment", "X-Hub-Signature-256": sig, "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
PY
echo "recorded $(curl -s -H "Authorization: Bearer $token" 'http://127.0.0.1:18095/api/deployments?limit=500' | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')+ deployments (the API shows at most 500)"
cookie=$(curl -s -o /dev/null -D - --data-urlencode name=bench --data-urlencode "password=$token" http://127.0.0.1:18095/login \
  | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p')
[ -n "$cookie" ] || { echo "login failed" >&2; exit 1; }
grep VmRSS /proc/$pid/status | sed 's/^/before /'
echo "== GET / (deployments page, 100 rows, signed in) =="
taskset -c 0 wrk -t1 -c16 -d"${seconds}s" --latency -H "Cookie: $cookie" http://127.0.0.1:18095/
echo "== GET /api/deployments?limit=50 (bearer token) =="
taskset -c 0 wrk -t1 -c16 -d"${seconds}s" --latency -H "Authorization: Bearer $token" 'http://127.0.0.1:18095/api/deployments?limit=50'
echo "== GET /metrics =="
taskset -c 0 wrk -t1 -c16 -d"${seconds}s" --latency http://127.0.0.1:18095/metrics
grep VmHWM /proc/$pid/status | sed 's/^/peak /'
