#!/usr/bin/env bash
# benches/compare-podman.sh — `podman run --rm` of /bin/true with rcrun-oci, crun and runc
# as podman's OCI runtime, rootless, side by side.
#
#   sudo benches/compare-podman.sh            RUNS=20 WARMUP=2 by default
#   sudo RUNS=40 benches/compare-podman.sh
#
# As in compare-start.sh, the script re-runs itself as $BENCH_USER (default rcrun-ci)
# inside `unshare -m -n` (a private mount namespace and a network namespace with only
# loopback); podman runs with --network none, cgroupfs and file events (no systemd here),
# its own storage and run root in a temp dir, and the busybox fixture image
# (scripts/fixtures). Host workaround inside the private mount namespace only: crun 1.8
# refuses hybrid v1/v2 hosts whose v2 hierarchy owns a controller, so /dev/null is bound
# over /sys/fs/cgroup/unified/cgroup.controllers (CRUN_HYBRID_FIX=0 skips it).
#
# Each round runs the three in a fresh random order (roundrobin.py); the paired ratios
# compare runs of the same round. Podman's own work (storage, conmon, the OCI spec) is in
# every row alike, so the differences are the runtimes'.
#
# Environment: RCRUN_BIN (default target/release/rcrun, else target/debug/rcrun), RUNS,
# WARMUP, BENCH_USER.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { printf 'compare-podman: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ outer (root) part
if [ -z "${_COMPARE_INNER:-}" ]; then
  REPO=$(cd "$HERE/.." && pwd)
  RCRUN=
  for c in "${RCRUN_BIN:-}" "$REPO/target/release/rcrun" "$REPO/target/debug/rcrun"; do
    [ -n "$c" ] && [ -x "$c" ] && { RCRUN=$c; break; }
  done
  [ -n "$RCRUN" ] || die "no rcrun binary: cargo build --release -p rcrun, or set RCRUN_BIN"
  command -v podman >/dev/null || die "podman missing: sudo scripts/setup --deps-only"
  LAYOUT=$("$REPO/scripts/fixtures" path busybox) \
    || die "busybox fixture missing: sudo scripts/fixtures build busybox"
  echo "rcrun binary: $RCRUN"

  # lower case only: podman names an image pulled from oci:DIR after DIR's path
  WORK=/tmp/rcrun-compare-podman-$$
  mkdir -m 755 "$WORK" || die "$WORK exists"
  # root removes podman's storage (files of subordinate ids) once the bench user's
  # namespaces, and their mounts, are gone
  cleanup() { rm -rf "$WORK"; }
  trap cleanup EXIT
  cp "$HERE/compare-podman.sh" "$HERE/roundrobin.py" "$WORK/"
  mkdir "$WORK/bin" && cp "$RCRUN" "$WORK/bin/rcrun-oci"
  cp -r "$LAYOUT" "$WORK/busybox"
  chmod -R a+rX "$WORK"

  BENCH_USER=${BENCH_USER:-rcrun-ci}
  id -u "$BENCH_USER" >/dev/null 2>&1 || die "user $BENCH_USER missing: sudo scripts/setup --deps-only"
  install -d -o "$BENCH_USER" -m 700 "$WORK/u"
  fixes=none
  ns_setup=:
  if [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] \
     && [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ] \
     && [ "${CRUN_HYBRID_FIX:-1}" = 1 ]; then
    ns_setup="mount --bind /dev/null /sys/fs/cgroup/unified/cgroup.controllers"
    fixes=cgroup2-controllers-masked
  fi
  echo "running as $BENCH_USER in unshare -m -n; host fixes in the private mount ns: $fixes"
  # shellcheck disable=SC2016  # "$@" belongs to the inner bash
  unshare -m -n --propagation private -- bash -c "ip link set lo up && $ns_setup"' && exec "$@"' ns-setup \
    runuser -u "$BENCH_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
      HOME="$WORK/u" USER="$BENCH_USER" LOGNAME="$BENCH_USER" LANG=C.UTF-8 \
      HOST_FIXES="$fixes" _COMPARE_INNER=1 WORK="$WORK" RUNS="${RUNS:-20}" WARMUP="${WARMUP:-2}" \
      bash "$WORK/compare-podman.sh" "$@"
  exit 0
fi

# ------------------------------------------------------------------ inner (bench user) part
cd "$WORK/u"
export XDG_RUNTIME_DIR=$WORK/u/xdg XDG_CONFIG_HOME=$WORK/u/config XDG_DATA_HOME=$WORK/u/data
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
PODMAN=(podman --root "$WORK/u/storage" --runroot "$XDG_RUNTIME_DIR/runroot" --storage-driver overlay
        --cgroup-manager cgroupfs --events-backend file)
stop_pause() {
  local pp=$XDG_RUNTIME_DIR/libpod/tmp/pause.pid
  if [ -s "$pp" ]; then kill "$(cat "$pp")" 2>/dev/null || true; fi
}
trap '"${PODMAN[@]}" rm -af -t 0 >/dev/null 2>&1 || true; stop_pause' EXIT

id=$("${PODMAN[@]}" pull -q "oci:$WORK/busybox:1.35")
"${PODMAN[@]}" tag "$id" localhost/busybox:bench

spec=$WORK/u/spec.tsv
: > "$spec"
add() {   # add KEY LABEL RUNTIME
  local key=$1 label=$2 runtime=$3 rc=0 out
  out=$("${PODMAN[@]}" --runtime "$runtime" run --rm --network none localhost/busybox:bench sh -c 'exit 3' 2>&1 </dev/null) || rc=$?
  if [ "$rc" != 3 ]; then
    echo "skipping $label: a container running 'exit 3' gave exit code $rc, not 3: $(printf '%s' "$out" | tail -3)" >&2
    return
  fi
  printf '%s\t%s\t%s\n' "$key" "$label" \
    "${PODMAN[*]@Q} --runtime ${runtime@Q} run --rm --network none localhost/busybox:bench true" >> "$spec"
}
add rcrun "podman run --rm (rcrun-oci)" "$WORK/bin/rcrun-oci"
command -v crun >/dev/null && add crun "podman run --rm (crun)" crun
command -v runc >/dev/null && add runc "podman run --rm (runc)" runc
keys=$(cut -f1 "$spec" | tr '\n' ' ')
[[ " $keys " == *" rcrun "* ]] || die "podman could not run a container with rcrun-oci"

ratios=()
has() { [[ " $keys " == *" $1 "* ]]; }
if has crun; then ratios+=(--ratio rcrun/crun); fi
if has runc; then ratios+=(--ratio rcrun/runc); fi

echo
echo "=== podman run --rm, /bin/true, rootless, --network none: $RUNS runs after $WARMUP warm-up ==="
echo "user $(id -un) ($(id -u)); host fixes: ${HOST_FIXES:-none}; $(nproc) cpus; kernel $(uname -r);" \
     "load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "versions: $("${PODMAN[@]}" --version), $("$WORK/bin/rcrun-oci" --version | head -1)," \
     "$(crun --version 2>/dev/null | head -1), $(runc --version 2>/dev/null | head -1)"
echo
python3 "$WORK/roundrobin.py" --runs "$RUNS" --warmup "$WARMUP" "${ratios[@]}" "$spec"
