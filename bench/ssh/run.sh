#!/usr/bin/env bash
# `true` on N local sshd servers (50 by default; 200 works too), cold and warm: Dropship's engine
# against N parallel `ssh` processes and against `ssh` over ControlMaster sockets opened
# beforehand. Every ssh uses the per-server config file Dropship writes (pinned host key,
# BatchMode, same options). Dropship is timed three ways: cold (a fresh engine opens N masters),
# started (a fresh engine whose masters were opened before the deployment, as `[ssh]
# connect_at_start` does at `dropship serve`'s start) and warm (the masters of earlier
# deployments reused); it also prints the resident memory of its open masters, and of ssh's.
# Usage (as root): bench/ssh/run.sh [SERVERS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
servers=${1:-50}
runs=${2:-20}
user=dropship-test
work=$(mktemp -d /tmp/dsb.XXXX)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for s in "$work"/cm-*; do [ -S "$s" ] && ssh -S "$s" -O exit x 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT

command -v hyperfine >/dev/null || { echo "needs: apt-get install hyperfine" >&2; exit 1; }
id "$user" >/dev/null 2>&1 || useradd --system --create-home --home-dir /var/lib/$user --shell /bin/sh "$user"
usermod -p '*' "$user"
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$work/host" && ssh-keygen -q -t ed25519 -N '' -f "$work/client"
cp "$work/client.pub" "$work/authorized_keys"; chmod 644 "$work/authorized_keys" "$work/host.pub"
hostkey=$(cut -d' ' -f1-2 "$work/host.pub")

config="$work/dropship.toml"
printf '[server]\ndata_dir = "%s/data"\n[ssh]\nidle_timeout = "10m"\n\n' "$work" > "$config"
names=()
for i in $(seq 1 "$servers"); do
  port=$((22000 + i))
  cat > "$work/sshd-$i.conf" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $work/host
AuthorizedKeysFile $work/authorized_keys
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers $user
MaxSessions 100
MaxStartups 200:30:400
LogLevel ERROR
CONF
  /usr/sbin/sshd -D -f "$work/sshd-$i.conf" &
  pids+=($!)
  printf '[[servers]]\nname = "s%d"\nhost = "127.0.0.1"\nport = %d\nuser = "%s"\nidentity_file = "%s/client"\nhost_key = "%s"\nroles = ["fleet"]\n\n' \
    "$i" "$port" "$user" "$work" "$hostkey" >> "$config"
  names+=("s$i")
done
# Servers on this machine (loopback) are granted only by their exact names.
granted=$(printf '"%s", ' "${names[@]}")
printf '[[repos]]\nname = "bench/*"\nservers = [%s]\n' "${granted%, }" >> "$config"
printf 'version: 1\nenvironments:\n  fleet:\n    servers: [fleet]\ntasks:\n  deploy:\n    - name: true\n      run: "true"\n' > "$work/dropship.yml"
for i in $(seq 1 "$servers"); do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$((22000 + i))) 2>/dev/null && break; sleep 0.05; done
done

cargo build --release --quiet --example fanout
fanout=target/release/examples/fanout
echo "== dropship engine (includes writing each deployment's records and logs) =="
$fanout "$config" "$work/dropship.yml" fleet cold "$runs"
$fanout "$config" "$work/dropship.yml" fleet started "$runs"
$fanout "$config" "$work/dropship.yml" fleet warm "$runs"

# The config files Dropship wrote above, one per server, for the ssh baselines.
sshcfg="$work/data/ssh"
all_ssh="for i in \$(seq 1 $servers); do ssh -F $sshcfg/s\$i.config dropship-s\$i true & done; wait"
for i in $(seq 1 "$servers"); do ssh -F "$sshcfg/s$i.config" -o ControlMaster=yes -o ControlPersist=yes -S "$work/cm-$i" -fN "dropship-s$i"; done
cm_kib=$(ps -o rss= -p "$(pgrep -d, -f 'ControlMaster=yes')" | awk '{s += $1} END {print s}')
awk -v k="$cm_kib" -v n="$servers" 'BEGIN {printf "ssh ControlMasters: %d, RSS %.1f MiB in all, %.2f MiB each\n", n, k / 1024, k / 1024 / n}'
all_mux="for i in \$(seq 1 $servers); do ssh -F $sshcfg/s\$i.config -S $work/cm-\$i dropship-s\$i true & done; wait"
echo "== ssh baselines =="
hyperfine -N --warmup 2 --runs "$runs" --export-markdown "$work/ssh.md" \
  -n "cold: $servers parallel ssh" "bash -c '$all_ssh'" \
  -n "warm: $servers parallel ssh over ControlMaster" "bash -c '$all_mux'" 2>&1 | grep -vE '^\s*$'
cat "$work/ssh.md"
