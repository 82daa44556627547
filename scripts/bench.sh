#!/usr/bin/env bash
# The ferrotun benchmark: two network namespaces joined by a veth, and through each path
# between them the same measurements: iperf3 with one TCP stream and with four (Gbit/s),
# ping RTT (ms) through the idle path and the median ping RTT while the one-stream run
# fills it (from its second second to its last), and the CPU seconds the tunnel processes spent per GB carried in the
# one-stream run (user + system of both ferrotun processes; kernel work done in softirq
# or in iperf3's context is not counted).
#
# Paths: the raw veth, ferrotun UDP/TUN, TCP/TUN and UDP/TAP, from the example configs,
# and a null tunnel (crates/ferrotun-device/examples/nulltun.rs: TUN to plain UDP, no
# encryption, one thread in poll(2)), the floor for any userspace tunnel's RTT.
# Then memory: a server's resident set with no peers and with 1000 idle peers.
# The table's header names the machine and what waking a sleeping thread costs on it, on
# one CPU and across two (ferrotun-wakeprobe, crates/ferrotun-lab): on VMs where that
# crosses the hypervisor it sets much of the rate and of the RTT.
# With --peers, the other tunnels of ../shared/bench/peers.sh are measured after it in the
# same run (it installs what it can), so ratios come from one run.
#
# With --runs N every ferrotun/veth figure is the median of N rounds (single runs on a
# shared VM vary by a third). The rounds go round the paths in turn (raw, null, udp, tcp,
# tap, raw, ...), each with a freshly started tunnel, so that a host that slows down for a
# while weighs on every path alike.
#
# usage: sudo ./scripts/bench.sh [--peers [NAME...]] [--secs N] [--runs N] [--only raw,null,udp,tcp,tap,mem]
#        env: OFFLOAD=off runs ferrotun without TUN/UDP offloads (for comparisons);
#             QUEUES=N gives both ends N device queues ([interface] queues);
#             AEAD=ring (or avx512, rustcrypto) picks the ChaCha20-Poly1305 backend;
#             PIN=1 keeps each end on a CPU of its own (server, iperf3 server and null
#             tunnel end a on the last CPU, their counterparts on the first), as two hosts
#             would be; the peers of --peers are never pinned, so compare them unpinned.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=8
RUNS=1
PEERS=0
PEER_NAMES=()
ONLY="raw,null,udp,tcp,tap,mem"
while [ $# -gt 0 ]; do
  case "$1" in
    --peers) PEERS=1; shift; while [ $# -gt 0 ] && [[ "$1" != --* ]]; do PEER_NAMES+=("$1"); shift; done ;;
    --secs) SECS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --runs takes a whole number from 1" >&2; exit 2; }
[[ "${QUEUES:-1}" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: QUEUES takes a whole number from 1" >&2; exit 2; }
PIN_A=()
PIN_B=()
if [ "${PIN:-0}" = 1 ]; then
  PIN_A=(taskset -c "$(($(nproc) - 1))")
  PIN_B=(taskset -c 0)
fi
[[ "${AEAD:-auto}" =~ ^(auto|avx512|ring|rustcrypto)$ ]] || { echo "bench.sh: AEAD is one of auto, avx512, ring, rustcrypto" >&2; exit 2; }
if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: needs root (network namespaces, /dev/net/tun)" >&2
  exit 1
fi
declare -A need=([ip]=iproute2 [ping]=iputils-ping [iperf3]=iperf3 [python3]=python3 [awk]=gawk)
missing=()
for cmd in "${!need[@]}"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}"); done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

A=ftbench-a
B=ftbench-b
W=$(mktemp -d /tmp/ferrotun-bench.XXXXXX)
PIDS=()
stop_tunnel() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  stop_tunnel
  [ -f "$W/iperf.pid" ] && kill "$(cat "$W/iperf.pid")" 2>/dev/null
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release --locked -p ferrotun >/dev/null 2>&1 || cargo build --release --locked -p ferrotun
cargo build --release --locked -p ferrotun-device --example nulltun >/dev/null 2>&1 ||
  cargo build --release --locked -p ferrotun-device --example nulltun
cargo build --release --locked -p ferrotun-lab --bin ferrotun-wakeprobe >/dev/null 2>&1 ||
  cargo build --release --locked -p ferrotun-lab --bin ferrotun-wakeprobe
NULLTUN=$ROOT/target/release/examples/nulltun
SERVER=$ROOT/target/release/ferrotun-server
CLIENT=$ROOT/target/release/ferrotun-client
# What a thread wake-up costs here, measured before the lab runs (see docs/benchmarks.md).
WAKE=$("$ROOT/target/release/ferrotun-wakeprobe") || WAKE="wake-up probe failed"

ip netns del "$A" 2>/dev/null || true
ip netns del "$B" 2>/dev/null || true
ip netns add "$A"
ip netns add "$B"
ip link add ftbench-s type veth peer name ftbench-c
ip link set ftbench-s netns "$A"
ip link set ftbench-c netns "$B"
ip -n "$A" addr add 198.18.0.1/24 dev ftbench-s
ip -n "$B" addr add 198.18.0.2/24 dev ftbench-c
for n in "$A" "$B"; do ip -n "$n" link set lo up; done
ip -n "$A" link set ftbench-s up
ip -n "$B" link set ftbench-c up

cp -r config/. "$W/"
rm -rf "$W/keys"
mkdir -m 700 "$W/keys"
for who in server alice bob; do
  (umask 077; "$SERVER" genkey > "$W/keys/$who.key")
  "$SERVER" pubkey < "$W/keys/$who.key" > "$W/keys/$who.pub"
done
# Settings added after the [interface] mtu line of every ferrotun config.
extra=""
[ "${OFFLOAD:-on}" = off ] && extra+='\noffload = false'
[ -n "${QUEUES:-}" ] && extra+="\nqueues = $QUEUES"
[ -n "${AEAD:-}" ] && extra+="\naead_backend = \"$AEAD\""
interface="s/^\(mtu = [0-9]*\).*/\1$extra/;"
# Variants of the example configs: TCP transport, TAP mode.
sed -e "$interface" config/server.toml | sed 's|^udp = "\[::\]:51820"|udp = "[::]:51820"\ntcp = "[::]:51820"|' > "$W/server.toml"
sed -e "$interface" config/client.toml > "$W/client-udp.toml"
sed -e "$interface" -e 's/^transport = "udp"/transport = "tcp"/' config/client.toml > "$W/client-tcp.toml"
sed -e 's/^mode = "tun"/mode = "tap"/' "$W/server.toml" > "$W/server-tap.toml"
sed -e "$interface" -e 's/^mode = "tun"/mode = "tap"/' config/client.toml > "$W/client-tap.toml"

wait_ping() {
  for _ in $(seq 1 100); do
    ip netns exec "$B" ping -n -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
cpu_ticks() { # sum of utime+stime of the given pids
  local s=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && s=$((s + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo $s
}
ROWS=()
# One round through one path: one stream (with pings under load from its second second),
# four streams, then pings through the idle path; results in $W/<key>.<round>.*.
round() { # key target round pid...
  local key=$1 target=$2 r=$3; shift 3
  local pids=("$@") c0 c1
  if ! wait_ping "$target"; then return; fi
  ip netns exec "$A" "${PIN_A[@]}" iperf3 -s -D -p 5299 -I "$W/iperf.pid" >/dev/null 2>&1
  sleep 0.3
  c0=$(cpu_ticks "${pids[@]}")
  # Pings at 20 ms through the loaded path, from the stream's second second (past slow
  # start) to its end; one line of RTTs for the median.
  (sleep 1; timeout $((SECS + 5)) ip netns exec "$B" ping -n -i 0.02 -w $((SECS > 2 ? SECS - 2 : 1)) "$target" 2>/dev/null |
    awk -F'time=' '/time=/ {split($2, a, " "); printf "%s ", a[1]}' >"$W/$key.$r.load") &
  local loaded=$!
  timeout $((SECS + 20)) ip netns exec "$B" "${PIN_B[@]}" iperf3 -c "$target" -p 5299 -t "$SECS" -J >"$W/$key.$r.1" 2>/dev/null || true
  c1=$(cpu_ticks "${pids[@]}")
  wait "$loaded" || true
  echo "$((c1 - c0))" >"$W/$key.$r.cpu"
  timeout $((SECS + 20)) ip netns exec "$B" "${PIN_B[@]}" iperf3 -c "$target" -p 5299 -t "$SECS" -P 4 -J >"$W/$key.$r.4" 2>/dev/null || true
  ip netns exec "$B" ping -n -c 20 -i 0.05 -q "$target" 2>/dev/null | awk -F/ '/rtt/ {print $5}' >"$W/$key.$r.rtt"
  kill "$(cat "$W/iperf.pid")" 2>/dev/null || true
  rm -f "$W/iperf.pid"
}
# The row of one path: the medians over its rounds (a round whose iperf3 failed is left
# out; a path no round could ping is a failed row).
summarize() { # label key processes(0: none)
  local label=$1 key=$2 row
  if ! compgen -G "$W/$key.*.1" >/dev/null; then
    ROWS+=("| $label | failed: no ping | | | | |")
    echo "  $label: failed, no ping through it" >&2
    return
  fi
  row=$(python3 - "$W" "$key" "$RUNS" "$(getconf CLK_TCK)" "$3" <<'PY'
import json, os, statistics, sys
w, key, runs, hz, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def read(r, what):
    path = "%s/%s.%d.%s" % (w, key, r, what)
    return open(path).read() if os.path.exists(path) else ""
def rate(r, what):
    try:
        d = json.loads(read(r, what))["end"]["sum_received"]
        return d["bits_per_second"] / 1e9, d["bytes"]
    except Exception:
        return 0.0, 0
g1, g4, rtt, load, cpu = [], [], [], [], []
for r in range(1, runs + 1):
    g, b = rate(r, "1")
    if b:
        g1.append(g)
    g = rate(r, "4")[0]
    if g:
        g4.append(g)
    try:
        rtt.append(float(read(r, "rtt")))
    except ValueError:
        pass
    times = [float(t) for t in read(r, "load").split()]
    if times:
        load.append(statistics.median(times))
    ticks = read(r, "cpu").strip()
    if n and b and ticks:
        cpu.append(int(ticks) / hz / (b / 1e9))
def med(xs):
    return statistics.median(xs) if xs else 0.0
print("%.2f | %.2f | %s | %s | %s" % (med(g1), med(g4), "%.3f" % med(rtt) if rtt else "?",
                                      "%.3f" % med(load) if load else "?",
                                      "%.2f" % med(cpu) if cpu else "-"))
PY
)
  IFS='|' read -r g1 g4 rtt load cpg <<<"$row"
  ROWS+=("| $label | ${g1// /} | ${g4// /} | ${rtt// /} | ${load// /} | ${cpg// /} |")
  echo "  $label: ${g1// /} / ${g4// /} Gbit/s, rtt ${rtt// /} ms idle, ${load// /} ms loaded, ${cpg// /} CPU s/GB" >&2
}
run_ferrotun() { # key server-config client-config round
  ip netns exec "$A" "${PIN_A[@]}" "$SERVER" -q -c "$W/$2" --socket "$W/s.sock" 2>"$W/server.log" &
  PIDS+=($!)
  ip netns exec "$B" "${PIN_B[@]}" "$CLIENT" -q -c "$W/$3" --socket "$W/c.sock" 2>"$W/client.log" &
  PIDS+=($!)
  round "$1" 10.77.0.1 "$4" "${PIDS[@]}"
  stop_tunnel
}
run_null() { # round
  ip netns exec "$A" "${PIN_A[@]}" "$NULLTUN" ftnull0 10.78.0.1/24 198.18.0.1:5000 198.18.0.2:5000 2>"$W/null-a.log" &
  PIDS+=($!)
  ip netns exec "$B" "${PIN_B[@]}" "$NULLTUN" ftnull1 10.78.0.2/24 198.18.0.2:5000 198.18.0.1:5000 2>"$W/null-b.log" &
  PIDS+=($!)
  round null 10.78.0.1 "$1" "${PIDS[@]}"
  stop_tunnel
}
run_path() { # path round
  case $1 in
    raw) round raw 198.18.0.1 "$2" ;;
    null) run_null "$2" ;;
    udp) run_ferrotun udp server.toml client-udp.toml "$2" ;;
    tcp) run_ferrotun tcp server.toml client-tcp.toml "$2" ;;
    tap) run_ferrotun tap server-tap.toml client-tap.toml "$2" ;;
  esac
}

echo "bench.sh: $SECS s per figure, median of $RUNS rounds taken in turn over the paths${PIN_A[*]:+, ends pinned to CPUs}" >&2
PATHS=()
for path in raw null udp tcp tap; do [[ ",$ONLY," == *,$path,* ]] && PATHS+=("$path"); done
for r in $(seq 1 "$RUNS"); do
  for path in "${PATHS[@]}"; do run_path "$path" "$r"; done
  echo "  round $r of $RUNS done" >&2
done
declare -A LABEL=([raw]="raw veth, no tunnel" [null]="null tunnel (no crypto; RTT floor)"
  [udp]="ferrotun UDP, TUN" [tcp]="ferrotun TCP, TUN" [tap]="ferrotun UDP, TAP")
declare -A PROCS=([raw]=0 [null]=2 [udp]=2 [tcp]=2 [tap]=2)
for path in "${PATHS[@]}"; do summarize "${LABEL[$path]}" "$path" "${PROCS[$path]}"; done

# Memory: a server's resident set with no peers and with 1000 configured (idle) peers.
memory() {
  local dir=$W/mem
  rm -rf "$dir"; mkdir -p "$dir/peers" "$dir/keys"
  cp "$W/keys/server.key" "$dir/keys/"
  sed -e 's|"10.77.0.1/24", "fd77::1/64"|"10.77.0.1/16", "fd77::1/64"|' -e 's|^udp = .*|udp = "[::]:51999"|' config/server.toml > "$dir/server.toml"
  rss() { # peers -> kB
    ip netns exec "$A" "$SERVER" -q -c "$dir/server.toml" --socket "$dir/m.sock" 2>/dev/null &
    local p=$! kb=""
    for _ in $(seq 1 50); do [ -S "$dir/m.sock" ] && break; sleep 0.1; done
    sleep 0.3
    kb=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null)
    kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true
    echo "${kb:-0}"
  }
  local r0 r1
  r0=$(rss)
  python3 - "$dir/peers" <<'PY'
import base64, os, sys
for i in range(1000):
    a = 2 + i
    key = base64.b64encode(os.urandom(32)).decode()
    open(os.path.join(sys.argv[1], "p%04d.toml" % i), "w").write(
        'public_key = "%s"\nallowed_ips = ["10.77.%d.%d/32"]\n' % (key, a // 250, a % 250 + 1))
PY
  r1=$(rss)
  MEM="server RSS: $((r0 / 1024)).$(( (r0 % 1024) * 10 / 1024 )) MiB with no peers, $((r1 / 1024)).$(( (r1 % 1024) * 10 / 1024 )) MiB with 1000 idle peers ($(( (r1 - r0) * 1024 / 1000 )) bytes per peer)"
  echo "  $MEM" >&2
}
MEM=""
[[ ",$ONLY," == *,mem,* ]] && memory

echo
echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, iperf3 $SECS s per figure, median of $RUNS${PIN_A[*]:+, each end pinned to a CPU of its own}"
echo "$WAKE"
echo
echo "| path | 1 stream Gbit/s | 4 streams Gbit/s | RTT ms | RTT loaded ms | tunnel CPU s/GB |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
[ -n "$MEM" ] && { echo; echo "$MEM"; }

if [ $PEERS -eq 1 ]; then
  cleanup
  trap - EXIT
  echo
  echo "Peers, measured next by ../shared/bench/peers.sh in the same run:"
  SECS=$SECS "$ROOT/../shared/bench/peers.sh" "${PEER_NAMES[@]}"
fi
