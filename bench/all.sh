#!/usr/bin/env bash
# Every benchmark once, then one table of Dropship against its peer in the same run: the proxy
# against nginx, webhook intake against adnanh/webhook, SSH fan-out against plain ssh, and the
# container deploy's own overhead against its target. One command to check that a change kept
# the gains. Each bench's own output is kept in the directory printed at the end.
#
# Usage (as root): bench/all.sh [SECONDS]
#   needs: apt-get install wrk nginx-light haproxy sqlite3 openssl webhook hyperfine
#          docker.io busybox-static (and a running dockerd for the container bench)
# DROPSHIP_BIN=path uses that build instead of building target/release/dropship.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
out=$(mktemp -d /tmp/dropship-bench.XXXX)
if [ -z "${DROPSHIP_BIN:-}" ]; then
  cargo build --release --quiet --bin dropship
  export DROPSHIP_BIN=target/release/dropship
fi

echo "proxy ($seconds s per measure) ..." >&2
# Every measure, in the order the table below reads them.
BENCH_ONLY= bench/proxy/run.sh "$seconds" > "$out/proxy.txt"
echo "webhook intake ..." >&2
bench/webhook/run.sh "$seconds" 300000 > "$out/webhook.txt" 2>&1
echo "ssh fan-out (50 servers) ..." >&2
bench/ssh/run.sh 50 10 > "$out/ssh.txt" 2>&1
if /usr/bin/docker version >/dev/null 2>&1; then
  echo "container deploy ..." >&2
  bench/containers/run.sh 10 > "$out/containers.txt" 2>&1
fi

# A proxy's row of the proxy table, as fields: ka_rate ka_p99 new_rate new_p99 5k_rate 5k_p99
# 5k_cpu 20k_rate 20k_p99 20k_cpu tls_new_rate tls_new_p99 tls_new_cpu tls_ka_rate tls_ka_p99.
row() { grep "^| $1" "$out/proxy.txt" | head -1 | awk -F'|' '{for (i = 3; i <= 8; i++) printf "%s ", $i; print ""}' | sed 's|ms/1k||g'; }
ms() { # a wrk latency (e.g. 1.52ms, 830.00us, 1.02s) in ms
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) print v / 1000; else if (v ~ /ms$/) print v + 0; else if (v ~ /s$/) print v * 1000; else print v }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
line() { # measure dropship peer target  (the ratio is dropship / peer)
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(ratio "$2" "$3")" "$4"
}

echo
echo "| measure | Dropship | peer | ratio | target |"
echo "|---|---|---|---|---|"
read -r -a n <<< "$(row nginx)"
read -r -a d <<< "$(row Dropship)"
line "proxy, kept alive: requests/s (nginx)" "${d[0]}" "${n[0]}" "≥ 1"
line "proxy, kept alive: p99 ms (nginx)" "$(ms "${d[1]}")" "$(ms "${n[1]}")" "≤ 1"
line "proxy, new connections: requests/s (nginx)" "${d[2]}" "${n[2]}" "≥ 1"
line "proxy, new connections: p99 ms (nginx)" "$(ms "${d[3]}")" "$(ms "${n[3]}")" "≤ 1"
line "proxy, paced 5,000/s: CPU ms per 1,000 (nginx)" "${d[6]}" "${n[6]}" "≤ 1"
line "proxy, paced 5,000/s: p99 ms (nginx)" "$(ms "${d[5]}")" "$(ms "${n[5]}")" "≤ 1"
line "proxy, paced 20,000/s: CPU ms per 1,000 (nginx)" "${d[9]}" "${n[9]}" "≤ 1"
line "proxy, paced 20,000/s: p99 ms (nginx)" "$(ms "${d[8]}")" "$(ms "${n[8]}")" "≤ 1"
line "proxy, TLS handshakes/s (nginx)" "${d[10]}" "${n[10]}" "≥ 1"
line "proxy, TLS handshakes: CPU ms per 1,000 (nginx)" "${d[12]}" "${n[12]}" "≤ 1"
line "proxy, TLS kept alive: requests/s (nginx)" "${d[13]}" "${n[13]}" "≥ 1"
line "proxy, TLS kept alive: p99 ms (nginx)" "$(ms "${d[14]}")" "$(ms "${n[14]}")" "≤ 1"
upstream=$(grep "^| upstream alone" "$out/proxy.txt" | awk -F'|' '{print $3}' | awk '{print $1}')
line "proxy bench's own limit: upstream alone requests/s (nginx)" "$upstream" "${n[0]}" "well above 1"

rates=($(grep "Requests/sec" "$out/webhook.txt" | awk '{print $2}'))
line "webhook intake: requests/s (adnanh/webhook)" "${rates[0]%.*}" "${rates[1]%.*}" "≥ 20"
p99=$(grep -m1 " 99%" "$out/webhook.txt" | awk '{print $2}')
line "webhook intake: Dropship's p99 ms (10 ms)" "$(ms "$p99")" 10 "≤ 1"
peak=$(awk '/^peak/ {printf "%.1f", $3 / 1024}' "$out/webhook.txt")
line "webhook intake: peak RSS MiB (64 MiB)" "$peak" 64 "≤ 1"
idle=$(awk '/^idle/ {printf "%.1f", $3 / 1024}' "$out/webhook.txt")
line "webhook intake: idle RSS MiB (25 MiB)" "$idle" 25 "≤ 1"

mean() { grep "^$1: runs" "$out/ssh.txt" | awk '{for (i = 1; i <= NF; i++) if ($i == "mean") print $(i + 1)}'; }
hyper() { grep -A1 "Benchmark .*: $1" "$out/ssh.txt" | awk '/Time \(mean/ {v = $5; u = $6; if (u == "s") v *= 1000; print v}'; }
line "ssh, 50 servers cold: ms (50 parallel ssh)" "$(mean cold)" "$(hyper cold)" "≤ 1"
line "ssh, 50 servers warm: ms (ssh over ControlMaster)" "$(mean warm)" "$(hyper warm)" "≤ 1"
line "ssh, 50 servers, masters opened at start: ms (ssh over ControlMaster)" "$(mean started)" "$(hyper warm)" "(shown)"

if [ -f "$out/containers.txt" ]; then
  overhead=$(awk '/^median overhead/ {print $3}' "$out/containers.txt")
  line "container deploy: median overhead ms (150 ms)" "$overhead" 150 "≤ 1"
fi
echo
echo "each bench's output: $out"
