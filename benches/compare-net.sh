#!/usr/bin/env bash
# benches/compare-net.sh — the cost of rcrun's networking, rootless.
#
#   sudo benches/compare-net.sh          RUNS=20, SECS=5
#
# Run as root, it re-runs itself as $BENCH_USER (default rcrun-ci, made by scripts/setup).
# 1. start: `rcrun run --rm --network NAME busybox true` against `--network none` (same
#    start without the infra round trip, veth and addresses) and, when podman is
#    installed, `podman run --rm --network NAME busybox true` (netavark bridge).
# 2. attach: `rcrun network connect` + `disconnect` of a running container (veth pair,
#    rename, MAC, address, routes, firewall), beside `rcrun inspect` (the fixed cost of
#    an rcrun command: start, database).
# 3. throughput: iperf3 (from the client image), container -> container on one bridge
#    and host -> published port (rcrun: the infra's splice; podman: rootlessport), for
#    rcrun and, when installed, podman.
#
# Environment: RCRUN_BIN (default target/release/rcrun), RUNS, SECS (iperf3 time), BENCH_USER.
# podman runs with its own --root under the work dir, with runc (crun refuses hybrid cgroups).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
die() { printf 'compare-net: %s\n' "$*" >&2; exit 1; }

RUNS=${RUNS:-20}
SECS=${SECS:-5}
BENCH_USER=${BENCH_USER:-rcrun-ci}
RCRUN=${RCRUN_BIN:-$REPO/target/release/rcrun}
[ -x "$RCRUN" ] || die "build rcrun first: cargo build --release (or set RCRUN_BIN)"
command -v hyperfine >/dev/null || die "hyperfine is missing: sudo scripts/setup --deps-only"

if [ "$(id -u)" = 0 ] && [ -z "${_NET_INNER:-}" ]; then
  id "$BENCH_USER" >/dev/null 2>&1 || die "no user $BENCH_USER: run sudo scripts/setup"
  small=$("$REPO/scripts/fixtures" path busybox) || die "build it: sudo scripts/fixtures build busybox"
  client=$("$REPO/scripts/fixtures" path client) || die "build it: sudo scripts/fixtures build client"
  work=/tmp/rcrun-net-bench-$$ # lower case: podman names pulled layouts after their path
  mkdir "$work"
  trap 'rm -rf "$work"' EXIT
  cp "$RCRUN" "$work/rcrun"
  cp "${BASH_SOURCE[0]}" "$work/bench.sh"
  ln -s "$small" "$work/busybox"
  ln -s "$client" "$work/client"
  chown -R "$BENCH_USER" "$work"
  home=$(getent passwd "$BENCH_USER" | cut -d: -f6)
  runuser -u "$BENCH_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    HOME="$home" USER="$BENCH_USER" LANG=C.UTF-8 _NET_INNER=1 RUNS="$RUNS" SECS="$SECS" \
    RCRUN_BIN="$work/rcrun" WORK="$work" bash "$work/bench.sh"
  exit
fi

WORK=${WORK:?set by the root half}
export RCRUN_DATA_DIR=$WORK/data XDG_RUNTIME_DIR=$WORK/xdg
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
R=$RCRUN
P=()
if command -v podman >/dev/null; then
  P=(podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" --runtime runc)
  trap '"${P[@]}" rm -af >/dev/null 2>&1; "${P[@]}" network rm -f bench >/dev/null 2>&1; "${P[@]}" system reset -f >/dev/null 2>&1' EXIT
  for img in busybox:1.35 client:latest; do
    id=$("${P[@]}" pull -q "oci:$WORK/${img%%:*}:${img#*:}")
    "${P[@]}" tag "$id" "localhost/$img"
  done
  "${P[@]}" network create bench >/dev/null
fi
$R pull "oci:$WORK/busybox:1.35" >/dev/null
$R pull "oci:$WORK/client:latest" >/dev/null
$R network create bench >/dev/null
$R run --rm --network bench busybox:1.35 true   # starts the infra

echo "== start: run --rm busybox true ($RUNS runs)"
cmds=("$R run --rm --network bench busybox:1.35 true" "$R run --rm --network none busybox:1.35 true")
[ ${#P[@]} = 0 ] || cmds+=("${P[*]} run --rm --network bench localhost/busybox:1.35 true"
  "${P[*]} run --rm --network none localhost/busybox:1.35 true")
hyperfine -N -w 3 -r "$RUNS" "${cmds[@]}"

echo "== attach: network connect + disconnect of a running container ($RUNS runs)"
$R network create other >/dev/null
$R run -d --name target --network bench busybox:1.35 sleep 3600 >/dev/null
# (this hyperfine has no --conclude: the pair is one command, through the shell)
hyperfine -w 3 -r "$RUNS" "$R network connect other target && $R network disconnect other target" \
  "$R inspect target"
$R rm -f target >/dev/null

gbits() { python3 -c 'import json,sys; print("%.2f Gbit/s" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'; }
echo "== throughput: iperf3 -t $SECS"
$R run -d --name sink --network bench -p 127.0.0.1::5201 client:latest iperf3 -s >/dev/null
sink_ip=$($R inspect sink | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["networks"][0]["addresses"][0])')
host_port=$($R port sink | sed 's/.*://')
printf 'rcrun  container -> container: %s\n' "$($R run --rm --network bench client:latest iperf3 -c "$sink_ip" -t "$SECS" -J | gbits)"
printf 'rcrun  host -> published port: %s\n' "$(iperf3 -c 127.0.0.1 -p "$host_port" -t "$SECS" -J | gbits)"
$R rm -f sink >/dev/null
if [ ${#P[@]} != 0 ]; then
  "${P[@]}" run -d --name sink --network bench -p 127.0.0.1::5201 localhost/client:latest iperf3 -s >/dev/null
  sink_ip=$("${P[@]}" inspect -f '{{.NetworkSettings.Networks.bench.IPAddress}}' sink)
  host_port=$("${P[@]}" port sink 5201/tcp | sed 's/.*://')
  printf 'podman container -> container: %s\n' "$("${P[@]}" run --rm --network bench localhost/client:latest iperf3 -c "$sink_ip" -t "$SECS" -J | gbits)"
  printf 'podman host -> published port: %s\n' "$(iperf3 -c 127.0.0.1 -p "$host_port" -t "$SECS" -J | gbits)"
  "${P[@]}" rm -f sink >/dev/null
fi
$R network rm bench other >/dev/null
