#!/usr/bin/env bash
# Builds ferrotun's OCI image (static binaries, FROM scratch) and removes it again; also
# runs podman with the project's containers.conf. See `scripts/container.sh --help`.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
CONTAINERFILE=$repo/config/container/Containerfile
TARGET=x86_64-unknown-linux-gnu
# "under 15 MB": the two stripped binaries are about 4.3 MB each.
MAX_IMAGE_BYTES=15000000

usage() {
  cat <<'EOF'
usage: scripts/container.sh [--image NAME] [--engine podman|docker] COMMAND [ARGS...]

commands:
  build          build the release binaries statically linked (glibc, non-PIE, stripped;
                 `ldd` must say "not a dynamic executable") into
                 TARGET_DIR/x86_64-unknown-linux-gnu/release, then the image NAME:VERSION
                 and NAME:latest from config/container/Containerfile (FROM scratch, the
                 two binaries in /usr/bin, nothing else; refused at 15 MB or more)
  clean          remove NAME:VERSION and NAME:latest and the build context
                 (TARGET_DIR/container); the compiled binaries stay
  info           show the image: tags, size, entrypoint, command, user
  podman ARGS... run podman with the project's containers.conf, e.g.
                 `scripts/container.sh podman run --rm localhost/ferrotun ferrotun-server --version`

options:
  --image NAME       the image's name (default localhost/ferrotun; also FERROTUN_IMAGE)
  --engine ENGINE    podman (default when installed) or docker (also CONTAINER_ENGINE)
  -h, --help         this text

With podman, CONTAINERS_CONF points at config/container/containers.conf unless it is
already set: runc and cgroupfs (crun refuses cgroup v1 in hybrid mode), fixed nofile and
nproc limits (raising them needs CAP_SYS_RESOURCE), no sysctls written into a network
namespace given with --network ns:PATH. Nothing is pulled: the image is FROM scratch.

Running it (README, "Containers"), with the configs in /etc/ferrotun on the host:
  podman run -d --name ferrotun-server --cap-add NET_ADMIN --device /dev/net/tun \
      -v /etc/ferrotun:/etc/ferrotun:ro -p 51820:51820/udp \
      localhost/ferrotun ferrotun-server -c /etc/ferrotun/server.toml
EOF
}

die() {
  echo "container.sh: $*" >&2
  exit 1
}

image=${FERROTUN_IMAGE:-localhost/ferrotun}
engine=${CONTAINER_ENGINE:-}
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --image) [ $# -ge 2 ] || die "--image needs a name"; image=$2; shift 2 ;;
    --image=*) image=${1#--image=}; shift ;;
    --engine) [ $# -ge 2 ] || die "--engine needs podman or docker"; engine=$2; shift 2 ;;
    --engine=*) engine=${1#--engine=}; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { usage >&2; exit 2; }
cmd=$1
shift

if [ -z "$engine" ]; then
  if command -v podman >/dev/null 2>&1; then
    engine=podman
  elif command -v docker >/dev/null 2>&1; then
    engine=docker
  else
    engine=podman
  fi
fi
case "$engine" in
  podman) export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/config/container/containers.conf} ;;
  docker) ;;
  *) die "--engine must be podman or docker, not $engine" ;;
esac

need_engine() {
  command -v "$engine" >/dev/null 2>&1 ||
    die "$engine is not installed (Debian: apt-get install podman runc)"
}

target_dir() {
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in
      /*) echo "$CARGO_TARGET_DIR" ;;
      *) echo "$repo/$CARGO_TARGET_DIR" ;;
    esac
  else
    cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" |
      sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
  fi
}

# The version the binaries report: "ferrotun 0.1.0" -> 0.1.0.
binary_version() {
  "$1" --version | awk '{print $2}'
}

build() {
  need_engine
  local tdir out ctx version bin size
  tdir=$(target_dir)
  [ -n "$tdir" ] || die "cannot find cargo's target directory"
  out=$tdir/$TARGET/release
  ctx=$tdir/container
  echo "container.sh: building static release binaries in $out" >&2
  # +crt-static links glibc statically. On its own that makes a static-pie, for which ldd
  # says "statically linked"; relocation-model=static makes a plain static executable
  # ("not a dynamic executable"), which is what the image promises. Strip: the image stays
  # small (about 4.3 MB per binary instead of 20 with line tables).
  # --target keeps build scripts and proc macros (which cannot be static) out of RUSTFLAGS.
  (
    cd "$repo"
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static -C relocation-model=static" \
      CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
      cargo build --release --locked --target "$TARGET" -p ferrotun \
      --bin ferrotun-server --bin ferrotun-client
  )
  rm -rf "$ctx"
  mkdir -p "$ctx"
  for bin in ferrotun-server ferrotun-client; do
    local ldd_out
    ldd_out=$(ldd "$out/$bin" 2>&1 || true)
    echo "ldd $bin: $(echo "$ldd_out" | tr -s ' \t' ' ' | sed 's/^ //')"
    case "$ldd_out" in
      *"not a dynamic executable"*) ;;
      *) die "$out/$bin is not a static executable: ldd says: $ldd_out" ;;
    esac
    cp "$out/$bin" "$ctx/$bin"
  done
  version=$(binary_version "$ctx/ferrotun-server")
  [ -n "$version" ] || die "ferrotun-server --version printed no version"
  echo "container.sh: building $image:$version and $image:latest with $engine" >&2
  # A rebuild moves the tags to a new image: remember the old one to remove it after.
  local old
  old=$("$engine" image inspect --format '{{.Id}}' "$image:$version" 2>/dev/null || true)
  case "$engine" in
    podman)
      podman build --pull=never --layers=false -f "$CONTAINERFILE" \
        --build-arg "VERSION=$version" -t "$image:$version" -t "$image:latest" "$ctx" >&2
      size=$(podman image inspect --format '{{.Size}}' "$image:$version")
      ;;
    docker)
      docker build -f "$CONTAINERFILE" --build-arg "VERSION=$version" \
        -t "$image:$version" -t "$image:latest" "$ctx" >&2
      size=$(docker image inspect --format '{{.Size}}' "$image:$version")
      ;;
  esac
  if [ -n "$old" ] && [ "$old" != "$("$engine" image inspect --format '{{.Id}}' "$image:$version")" ] &&
    [ -z "$("$engine" image inspect --format '{{join .RepoTags ""}}' "$old" 2>/dev/null)" ]; then
    "$engine" rmi "$old" >/dev/null 2>&1 || true
  fi
  if [ "$size" -ge "$MAX_IMAGE_BYTES" ]; then
    die "$image:$version is $size bytes, the limit is $MAX_IMAGE_BYTES"
  fi
  echo "image $image:$version $size bytes"
}

clean() {
  local tdir version=""
  tdir=$(target_dir)
  if [ -x "$tdir/container/ferrotun-server" ]; then
    version=$(binary_version "$tdir/container/ferrotun-server")
  elif [ -x "$tdir/$TARGET/release/ferrotun-server" ]; then
    version=$(binary_version "$tdir/$TARGET/release/ferrotun-server")
  fi
  if command -v "$engine" >/dev/null 2>&1; then
    for tag in ${version:+"$version"} latest; do
      if "$engine" image inspect "$image:$tag" >/dev/null 2>&1; then
        "$engine" rmi "$image:$tag" >/dev/null
        echo "removed $image:$tag"
      fi
    done
  fi
  rm -rf "$tdir/container"
}

info() {
  need_engine
  "$engine" image inspect --format \
    'tags: {{.RepoTags}}
size: {{.Size}} bytes
entrypoint: {{.Config.Entrypoint}}
command: {{.Config.Cmd}}
user: {{.Config.User}}
labels: {{.Config.Labels}}' "$image:latest"
}

case "$cmd" in
  build) [ $# -eq 0 ] || die "build takes no arguments"; build ;;
  clean) [ $# -eq 0 ] || die "clean takes no arguments"; clean ;;
  info) [ $# -eq 0 ] || die "info takes no arguments"; info ;;
  podman) command -v podman >/dev/null 2>&1 || die "podman is not installed"
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/config/container/containers.conf}
    exec podman "$@" ;;
  help) usage ;;
  *) die "unknown command $cmd (see --help)" ;;
esac
