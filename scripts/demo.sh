#!/usr/bin/env bash
# The ferrotun demo: two hosts (network namespaces joined by a veth), a tunnel between
# them from the example configs in config/, and real traffic through it: ping over IPv4
# and IPv6, a 100 MB file whose sha256 must match on both ends, and the tunnel's
# throughput next to the raw veth's. Everything it creates is removed at the end, also on
# failure or Ctrl-C. Exits non-zero if any step fails.
#
# usage: sudo ./scripts/demo.sh        (env: DEMO_MB=100 file size, DEMO_SECS=5 iperf3 time)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MB=${DEMO_MB:-100}
SECS=${DEMO_SECS:-5}
A=ftdemo-server
B=ftdemo-client
PIDS=()

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'demo: FAILED: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: needs root (network namespaces, /dev/net/tun): sudo ./scripts/demo.sh" >&2
  exit 1
fi

declare -A need=([ip]=iproute2 [ping]=iputils-ping [iperf3]=iperf3 [nc]=netcat-openbsd [sha256sum]=coreutils)
missing=()
for cmd in "${!need[@]}"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -c /dev/net/tun ] || modprobe tun 2>/dev/null || true
[ -c /dev/net/tun ] || fail "/dev/net/tun is missing (modprobe tun)"

WORK=$(mktemp -d /tmp/ferrotun-demo.XXXXXX)
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$WORK"
  if [ $rc -eq 0 ]; then echo; echo "demo: all steps passed"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building (release)"
cargo build --release --locked -p ferrotun 2>&1 | tail -n 2
SERVER=$ROOT/target/release/ferrotun-server
CLIENT=$ROOT/target/release/ferrotun-client

say "two hosts: $A (198.18.0.1, fd00:198:18::1) and $B (198.18.0.2, fd00:198:18::2)"
ip netns del "$A" 2>/dev/null || true
ip netns del "$B" 2>/dev/null || true
ip netns add "$A"
ip netns add "$B"
ip link add ftdemo-s type veth peer name ftdemo-c
ip link set ftdemo-s netns "$A"
ip link set ftdemo-c netns "$B"
ip -n "$A" addr add 198.18.0.1/24 dev ftdemo-s
ip -n "$B" addr add 198.18.0.2/24 dev ftdemo-c
ip -n "$A" addr add fd00:198:18::1/64 dev ftdemo-s nodad
ip -n "$B" addr add fd00:198:18::2/64 dev ftdemo-c nodad
for n in "$A" "$B"; do ip -n "$n" link set lo up; done
ip -n "$A" link set ftdemo-s up
ip -n "$B" link set ftdemo-c up

say "keys and configs (config/ as committed, keys generated into a copy)"
cp -r config/. "$WORK/"
rm -rf "$WORK/keys"
mkdir -m 700 "$WORK/keys"
for who in server alice bob; do
  (umask 077; "$SERVER" genkey > "$WORK/keys/$who.key")
  "$SERVER" pubkey < "$WORK/keys/$who.key" > "$WORK/keys/$who.pub"
done
"$SERVER" check -c "$WORK/server.toml"
"$CLIENT" check -c "$WORK/client.toml"

say "starting ferrotun-server in $A and ferrotun-client in $B"
ip netns exec "$A" "$SERVER" -c "$WORK/server.toml" 2> "$WORK/server.log" &
PIDS+=($!)
ip netns exec "$B" "$CLIENT" -c "$WORK/client.toml" 2> "$WORK/client.log" &
PIDS+=($!)
up=0
for _ in $(seq 1 100); do
  if ip netns exec "$B" ping -n -c 1 -W 1 10.77.0.1 >/dev/null 2>&1; then up=1; break; fi
  sleep 0.1
done
if [ $up -ne 1 ]; then
  echo "--- server log"; cat "$WORK/server.log"; echo "--- client log"; cat "$WORK/client.log"
  fail "the tunnel did not come up"
fi
sed 's/^/  server: /' "$WORK/server.log"
sed 's/^/  client: /' "$WORK/client.log"

say "ping through the tunnel, IPv4 and IPv6"
ip netns exec "$B" ping -n -c 5 -i 0.2 10.77.0.1 || fail "IPv4 ping through the tunnel"
ip netns exec "$B" ping -n -c 5 -i 0.2 fd77::1 || fail "IPv6 ping through the tunnel"

say "moving a ${MB} MB file through the tunnel"
head -c $((MB * 1024 * 1024)) /dev/urandom > "$WORK/file.in"
sent=$(sha256sum < "$WORK/file.in" | cut -d' ' -f1)
ip netns exec "$A" nc -l -N 10.77.0.1 5000 > "$WORK/file.out" &
RX=$!
PIDS+=($RX)
for _ in $(seq 1 50); do
  ip netns exec "$A" ss -ltn 2>/dev/null | grep -q '10.77.0.1:5000' && break
  sleep 0.1
done
t0=$(date +%s.%N)
ip netns exec "$B" nc -N 10.77.0.1 5000 < "$WORK/file.in" || fail "sending the file"
wait $RX || true
t1=$(date +%s.%N)
got=$(sha256sum < "$WORK/file.out" | cut -d' ' -f1)
echo "  sent     sha256 $sent"
echo "  received sha256 $got ($(stat -c %s "$WORK/file.out") bytes)"
[ "$sent" = "$got" ] || fail "the file arrived damaged"
awk -v mb="$MB" -v a="$t0" -v b="$t1" 'BEGIN { printf "  %d MB in %.2f s (%.0f Mbit/s, nc over the tunnel)\n", mb, b - a, mb * 8.388608 / (b - a) }'

say "throughput: iperf3, one TCP stream, ${SECS} s each, same run"
ip netns exec "$A" iperf3 -s -D -p 5201 -I "$WORK/iperf.pid" >/dev/null
sleep 0.3
rate() { ip netns exec "$B" iperf3 -c "$1" -p 5201 -t "$SECS" -f m 2>/dev/null | awk '/receiver/ {print $(NF-2), $(NF-1)}'; }
raw=$(rate 198.18.0.1)
tun=$(rate 10.77.0.1)
kill "$(cat "$WORK/iperf.pid")" 2>/dev/null || true
printf '  %-28s %s\n' "raw veth (198.18.0.1)" "${raw:-failed}" "ferrotun tunnel (10.77.0.1)" "${tun:-failed}"
[ -n "$tun" ] || fail "iperf3 through the tunnel"

say "stopping (SIGTERM): the interfaces go away"
for p in "${PIDS[@]:0:2}"; do kill -TERM "$p"; done
for p in "${PIDS[@]:0:2}"; do wait "$p" || fail "a tunnel process exited with status $?"; done
PIDS=()
if ip -n "$A" link show ftun0 >/dev/null 2>&1 || ip -n "$B" link show ftun1 >/dev/null 2>&1; then
  fail "an interface was left behind"
fi
echo "  ftun0 and ftun1 removed; both processes exited 0"
