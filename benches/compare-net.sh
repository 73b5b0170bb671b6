#!/usr/bin/env bash
# benches/compare-net.sh — the cost of rcrun's networking, rootless.
#
#   sudo benches/compare-net.sh          RUNS=20, SIZE_MB=1000
#
# Run as root, it re-runs itself as $BENCH_USER (default rcrun-ci, made by scripts/setup).
# 1. start: `rcrun run --rm --network NAME busybox true` against `--network none` (same
#    start without the infra round trip, veth and addresses) and, when podman is
#    installed, `podman run --rm --network NAME busybox true` (netavark bridge).
# 2. attach: `rcrun network connect` + `disconnect` of a running container (veth pair,
#    rename, MAC, address, routes, firewall: one netlink round trip each).
# 3. throughput: SIZE_MB through busybox nc, container -> container on one bridge,
#    and host -> published port (through the infra's splice). nc is not iperf3: the
#    figures are lower bounds, the same tool on both paths.
#
# Environment: RCRUN_BIN (default target/release/rcrun), RUNS, SIZE_MB, BENCH_USER.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
die() { printf 'compare-net: %s\n' "$*" >&2; exit 1; }

RUNS=${RUNS:-20}
SIZE_MB=${SIZE_MB:-1000}
BENCH_USER=${BENCH_USER:-rcrun-ci}
RCRUN=${RCRUN_BIN:-$REPO/target/release/rcrun}
[ -x "$RCRUN" ] || die "build rcrun first: cargo build --release (or set RCRUN_BIN)"
command -v hyperfine >/dev/null || die "hyperfine is missing: sudo scripts/setup --deps-only"

if [ "$(id -u)" = 0 ] && [ -z "${_NET_INNER:-}" ]; then
  id "$BENCH_USER" >/dev/null 2>&1 || die "no user $BENCH_USER: run sudo scripts/setup"
  small=$("$REPO/scripts/fixtures" path busybox) || die "build it: sudo scripts/fixtures build busybox"
  work=$(mktemp -d /tmp/rcrun-net-bench.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  cp "$RCRUN" "$work/rcrun"
  cp "${BASH_SOURCE[0]}" "$work/bench.sh"
  ln -s "$small" "$work/busybox"
  chown -R "$BENCH_USER" "$work"
  home=$(getent passwd "$BENCH_USER" | cut -d: -f6)
  runuser -u "$BENCH_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    HOME="$home" USER="$BENCH_USER" LANG=C.UTF-8 _NET_INNER=1 RUNS="$RUNS" SIZE_MB="$SIZE_MB" \
    RCRUN_BIN="$work/rcrun" WORK="$work" bash "$work/bench.sh"
  exit
fi

export RCRUN_DATA_DIR=$WORK/data
R=$RCRUN
$R pull "oci:$WORK/busybox:1.35" >/dev/null
$R network create bench >/dev/null
$R run --rm --network bench busybox:1.35 true   # starts the infra

echo "== start: run --rm busybox true ($RUNS runs)"
cmds=("$R run --rm --network bench busybox:1.35 true" "$R run --rm --network none busybox:1.35 true")
if command -v podman >/dev/null; then
  podman network exists bench 2>/dev/null || podman network create bench >/dev/null
  podman pull -q "oci:$WORK/busybox:1.35" >/dev/null 2>&1 || true
  cmds+=("podman run --rm --network bench busybox:1.35 true")
fi
hyperfine -N -w 3 -r "$RUNS" "${cmds[@]}"

echo "== attach: network connect + disconnect of a running container ($RUNS runs)"
$R network create other >/dev/null
$R run -d --name target --network bench busybox:1.35 sleep 3600 >/dev/null
hyperfine -N -w 3 -r "$RUNS" "$R network connect other target" \
  --conclude "$R network disconnect other target"
hyperfine -N -w 3 -r "$RUNS" "$R network disconnect other target" \
  --prepare "$R network connect other target"

echo "== throughput: ${SIZE_MB} MB through busybox nc"
$R run -d --name sink --network bench -p 127.0.0.1::5001 busybox:1.35 \
  sh -c 'while true; do nc -l -p 5001 >/dev/null; done' >/dev/null
sink_ip=$($R inspect sink | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["networks"][0]["addresses"][0])')
host_port=$($R port sink | sed 's/.*://')
t0=$(date +%s.%N)
$R run --rm --network bench busybox:1.35 sh -c \
  "dd if=/dev/zero bs=1M count=$SIZE_MB 2>/dev/null | nc $sink_ip 5001"
t1=$(date +%s.%N)
python3 - "$t0" "$t1" "$SIZE_MB" "container -> container" <<'EOF'
import sys
t0, t1, mb, what = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print(f"{what}: {mb / (t1 - t0):.0f} MB/s ({t1 - t0:.2f} s, including one container start)")
EOF
python3 - "$host_port" "$SIZE_MB" <<'EOF'
import socket, sys, time
port, mb = int(sys.argv[1]), int(sys.argv[2])
chunk = b"\0" * (1 << 20)
s = socket.create_connection(("127.0.0.1", port))
t0 = time.monotonic()
for _ in range(mb):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)
t1 = time.monotonic()
print(f"host -> published port: {mb / (t1 - t0):.0f} MB/s ({t1 - t0:.2f} s)")
EOF
$R rm -f sink target >/dev/null
$R network rm bench other >/dev/null
