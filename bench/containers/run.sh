#!/usr/bin/env bash
# Webhook to `success` for a one-server image deploy whose image is already present, on this
# machine's Docker engine, broken into image (pull: none needed), start, health and switch,
# and Dropship's own overhead (total minus start and health wait).
# Usage: bench/containers/run.sh [DEPLOYMENTS]   (needs dockerd running and busybox-static)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-20}
secret=bench-secret
token=bench-token
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; /usr/bin/docker ps -aq --filter label=dropship.repo=acme/bench | xargs -r /usr/bin/docker rm -f >/dev/null; rm -rf "$work"' EXIT

bin=${DROPSHIP_BIN:-target/release/dropship}
[ -n "${DROPSHIP_BIN:-}" ] || cargo build --release --quiet --bin dropship

# The app: busybox httpd FROM scratch, healthy at /up.
mkdir -p "$work/image/www"
cp /bin/busybox "$work/image/busybox"
echo ok > "$work/image/www/up"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]\n' > "$work/image/Dockerfile"
/usr/bin/docker build -q -t dropship-bench/web:1 "$work/image" >/dev/null

cat > "$work/dropship.yml" <<'YAML'
version: 1
environments:
  production:
    servers: [local]
tasks:
  deploy:
    - name: web
      container:
        image: dropship-bench/web:1
        ports: ["8080"]
        keep: 1
        stop_timeout: 5s
        init: true
        healthcheck:
          path: /up
          interval: 10ms
YAML
cat > "$work/dropship.toml" <<TOML
[server]
listen = "127.0.0.1:18090"
data_dir = "$work/data"
[github]
api_url = "http://127.0.0.1:18091"
token = "bench"
webhook_secrets = ["$secret"]
[[api.users]]
name = "bench"
role = "admin"
token_sha256 = "$(printf %s "$token" | sha256sum | cut -d' ' -f1)"
[[servers]]
name = "local"
host = "local"
docker = "local"
[[repos]]
name = "acme/bench"
servers = ["local"]
TOML

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
python3 bench/containers/github.py 18091 "$work/dropship.yml" &
wait_port 18091
RUST_LOG=error "$bin" serve --config "$work/dropship.toml" &
wait_port 18090
echo "docker: $(/usr/bin/docker version --format '{{.Server.Version}}'), dropship: $bin, $runs deployments"
python3 bench/containers/drive.py http://127.0.0.1:18090 http://127.0.0.1:18091 "$secret" "$token" "$runs" 1
