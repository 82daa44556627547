#!/usr/bin/env bash
# The ferrotun namespace lab for people: two hosts in network namespaces joined by a veth
# pair, with the same addresses as ferrotun_lab::Lab::two_hosts(), plus random loss
# (nftables) and rate limits (tbf) on command. See `scripts/lab.sh --help`.
set -euo pipefail

STATE_DIR=/run/ferrotun-lab
LOSS_TABLE=ftlab_loss
IFNAME=veth0

usage() {
  cat <<'EOF'
usage: scripts/lab.sh [--name NAME] COMMAND [ARGS...]

A two-host lab in network namespaces NAME-a and NAME-b, joined by a veth pair
(interface veth0 on both sides), with the addresses the Rust tests use:
  a: 198.18.0.1/24  fd00:198:18::1/64      (RFC 2544 range, ULA; IPv6 without DAD)
  b: 198.18.0.2/24  fd00:198:18::2/64
No namespace gets a default route: traffic stays between a and b.

commands:
  up [NAME]             create the lab (NAME defaults to ftlab)
  down [NAME]           kill every process inside and delete both namespaces
  exec a|b CMD...       run CMD inside host a or b, e.g. `exec a ping 198.18.0.2`
  loss PERCENT [a|b]    drop PERCENT% (0-100) of the IP packets arriving at a, at b,
                        or at both (the default), with an nftables numgen rule
  loss off [a|b]        remove the loss rule(s)
  rate RATE [a|b]       limit what a, b or both (default) send to RATE with tbf;
                        RATE is a number with bit, kbit, mbit or gbit: 10mbit
  rate off [a|b]        remove the rate limit(s)
  status                show the lab: addresses, rate limits, loss rules and their
                        packet counters, processes inside

options:
  --name NAME           the lab to act on (also: LAB_NAME=NAME). Without it, commands
                        other than `up` act on the only lab that is up, else on ftlab.
  -h, --help            this text

Needs root. Installs iproute2, iputils-ping, iperf3, nftables and tcpdump with apt-get
when they are missing. Reordering, duplication and delay come from the seeded relay:
  scripts/lab.sh exec b target/debug/ferrotun-relay --listen 198.18.0.2:51821 \
      --upstream 198.18.0.2:51820 --seed 1 --loss 5%      (then `set reorder=2%` on stdin)

example:
  sudo scripts/lab.sh up
  sudo scripts/lab.sh exec b iperf3 -s -D
  sudo scripts/lab.sh loss 10 b
  sudo scripts/lab.sh exec a ping -c 20 -i 0.05 198.18.0.2
  sudo scripts/lab.sh status
  sudo scripts/lab.sh down
EOF
}

die() {
  echo "lab.sh: $*" >&2
  exit 1
}

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    die "creating network namespaces needs root: run sudo scripts/lab.sh $*"
  fi
}

install_tools() {
  declare -A need=([ip]=iproute2 [tc]=iproute2 [ping]=iputils-ping [iperf3]=iperf3 [nft]=nftables [tcpdump]=tcpdump)
  local missing=() cmd
  for cmd in "${!need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    local pkgs
    pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
    echo "lab.sh: installing $pkgs" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
}

check_name() {
  local name=$1
  [[ $name =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{0,23}$ ]] \
    || die "invalid lab name '$name': use up to 24 letters, digits, _ or -"
  # ft<digits>-... are the Rust lab's names, which it deletes when their pid is gone.
  [[ ! $name =~ ^ft[0-9]+$ ]] || die "lab name '$name' looks like a Rust test's namespace: pick another"
}

ns_exists() {
  [ -e "/run/netns/$1" ]
}

# The lab to act on: --name / LAB_NAME, else the only one up, else ftlab.
pick_lab() {
  if [ -n "$NAME" ]; then
    echo "$NAME"
    return
  fi
  local labs=()
  if [ -d "$STATE_DIR" ]; then
    mapfile -t labs < <(find "$STATE_DIR" -mindepth 1 -maxdepth 1 -type f -printf '%f\n' | sort)
  fi
  if [ ${#labs[@]} -eq 1 ]; then
    echo "${labs[0]}"
  elif [ ${#labs[@]} -gt 1 ]; then
    die "several labs are up (${labs[*]}): choose one with --name NAME"
  else
    echo ftlab
  fi
}

require_up() {
  if ! ns_exists "$1-a" || ! ns_exists "$1-b"; then
    die "lab $1 is not up (scripts/lab.sh up $1)"
  fi
}

# Hosts a command applies to: a, b or both.
hosts_of() {
  case "${1:-}" in
    a | b) echo "$1" ;;
    "") echo "a b" ;;
    *) die "expected a or b, got '$1'" ;;
  esac
}

cmd_up() {
  local name=$1
  check_name "$name"
  if ns_exists "$name-a" || ns_exists "$name-b"; then
    die "lab $name is already up (scripts/lab.sh down $name first)"
  fi
  trap 'echo "lab.sh: setting up $name failed; cleaning up" >&2; teardown "$name"' ERR
  ip netns add "$name-a"
  ip netns add "$name-b"
  ip -n "$name-a" link set lo up
  ip -n "$name-b" link set lo up
  ip -n "$name-a" link add "$IFNAME" type veth peer name "$IFNAME" netns "$name-b"
  ip -n "$name-a" addr add 198.18.0.1/24 dev "$IFNAME"
  ip -n "$name-b" addr add 198.18.0.2/24 dev "$IFNAME"
  ip -n "$name-a" -6 addr add fd00:198:18::1/64 dev "$IFNAME" nodad
  ip -n "$name-b" -6 addr add fd00:198:18::2/64 dev "$IFNAME" nodad
  ip -n "$name-a" link set "$IFNAME" up
  ip -n "$name-b" link set "$IFNAME" up
  mkdir -p "$STATE_DIR"
  : >"$STATE_DIR/$name"
  trap - ERR
  echo "lab $name is up: $name-a (198.18.0.1, fd00:198:18::1) <-> $name-b (198.18.0.2, fd00:198:18::2) on $IFNAME"
}

teardown() {
  local name=$1 ns pids
  for ns in "$name-a" "$name-b"; do
    ns_exists "$ns" || continue
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086 # one pid per word
      kill -TERM $pids 2>/dev/null || true
      for _ in $(seq 1 20); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] && break
        sleep 0.1
      done
      # shellcheck disable=SC2086
      [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns"
  done
  rm -f "$STATE_DIR/$name"
  rmdir "$STATE_DIR" 2>/dev/null || true
}

cmd_down() {
  local name=$1
  check_name "$name"
  if ! ns_exists "$name-a" && ! ns_exists "$name-b"; then
    rm -f "$STATE_DIR/$name"
    rmdir "$STATE_DIR" 2>/dev/null || true
    echo "lab $name is not up; nothing to do"
    return
  fi
  teardown "$name"
  echo "lab $name is down"
}

cmd_exec() {
  local name=$1 host=${2:-}
  shift 2 || true
  [[ $host == a || $host == b ]] || die "usage: lab.sh exec a|b CMD..."
  [ $# -gt 0 ] || die "usage: lab.sh exec a|b CMD..."
  require_up "$name"
  exec ip netns exec "$name-$host" "$@"
}

cmd_loss() {
  local name=$1 pct=${2:-} host
  require_up "$name"
  if [ "$pct" = off ]; then
    for host in $(hosts_of "${3:-}"); do
      ip netns exec "$name-$host" nft delete table inet "$LOSS_TABLE" 2>/dev/null || true
    done
    echo "loss off on $(hosts_of "${3:-}")"
    return
  fi
  if ! [[ $pct =~ ^[0-9]+$ ]] || [ "$pct" -gt 100 ]; then
    die "usage: lab.sh loss PERCENT(0-100)|off [a|b]"
  fi
  for host in $(hosts_of "${3:-}"); do
    # Add-then-delete makes re-running idempotent in one transaction.
    ip netns exec "$name-$host" nft -f - <<EOF
add table inet $LOSS_TABLE
delete table inet $LOSS_TABLE
table inet $LOSS_TABLE {
  chain input {
    type filter hook input priority -150; policy accept;
    numgen random mod 100 < $pct counter drop
  }
}
EOF
  done
  echo "dropping $pct% of packets arriving at $(hosts_of "${3:-}")"
}

cmd_rate() {
  local name=$1 rate=${2:-} host bits burst
  require_up "$name"
  if [ "$rate" = off ]; then
    for host in $(hosts_of "${3:-}"); do
      tc -n "$name-$host" qdisc del dev "$IFNAME" root 2>/dev/null || true
    done
    echo "rate limit off on $(hosts_of "${3:-}")"
    return
  fi
  [[ $rate =~ ^([0-9]+)(bit|kbit|mbit|gbit)$ ]] || die "usage: lab.sh rate RATE|off [a|b], RATE like 500kbit, 10mbit, 1gbit"
  case "${BASH_REMATCH[2]}" in
    bit) bits=${BASH_REMATCH[1]} ;;
    kbit) bits=$((BASH_REMATCH[1] * 1000)) ;;
    mbit) bits=$((BASH_REMATCH[1] * 1000000)) ;;
    gbit) bits=$((BASH_REMATCH[1] * 1000000000)) ;;
  esac
  [ "$bits" -ge 8000 ] || die "rate $rate is below 8kbit"
  # Burst: 10 ms of traffic, at least 16 full frames (as Host::rate_limit in Rust).
  burst=$((bits / 8 / 100))
  [ "$burst" -ge $((16 * 1514)) ] || burst=$((16 * 1514))
  for host in $(hosts_of "${3:-}"); do
    tc -n "$name-$host" qdisc replace dev "$IFNAME" root tbf rate "${bits}bit" burst "${burst}b" latency 50ms
  done
  echo "limiting what $(hosts_of "${3:-}") send(s) to $rate"
}

cmd_status() {
  local name=$1 host ns pids
  require_up "$name"
  echo "lab $name"
  for host in a b; do
    ns="$name-$host"
    echo "== $host ($ns)"
    ip -n "$ns" -br addr show dev "$IFNAME" | sed 's/^/  /'
    tc -n "$ns" qdisc show dev "$IFNAME" | grep -q tbf \
      && tc -n "$ns" qdisc show dev "$IFNAME" | grep tbf | sed 's/^/  rate limit: /'
    if ip netns exec "$ns" nft list table inet "$LOSS_TABLE" >/dev/null 2>&1; then
      ip netns exec "$ns" nft list table inet "$LOSS_TABLE" | grep numgen | sed 's/^[[:space:]]*/  loss rule: /'
    fi
    pids=$(ip netns pids "$ns" | tr '\n' ' ')
    [ -z "$pids" ] || echo "  processes: $pids"
  done
}

NAME=${LAB_NAME:-}
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name) [ $# -ge 2 ] || die "--name needs a value"; NAME=$2; shift 2 ;;
    --name=*) NAME=${1#--name=}; shift ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { usage >&2; exit 2; }
command=$1
shift
case "$command" in
  up | down | exec | loss | rate | status) ;;
  *) echo "lab.sh: unknown command '$command'" >&2; usage >&2; exit 2 ;;
esac
need_root "$command" "$@"
install_tools

if [ "$command" = up ]; then
  cmd_up "${1:-${NAME:-ftlab}}"
  exit
fi
if [ "$command" = down ] && [ $# -gt 0 ]; then
  lab=$1
else
  lab=$(pick_lab) # an assignment, so that a failure in pick_lab stops the script
fi
case "$command" in
  down) cmd_down "$lab" ;;
  exec) cmd_exec "$lab" "$@" ;;
  loss) cmd_loss "$lab" "$@" ;;
  rate) cmd_rate "$lab" "$@" ;;
  status) cmd_status "$lab" ;;
esac
