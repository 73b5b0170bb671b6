#!/usr/bin/env bash
# benches/compare-unpack.sh — image unpack throughput, rcrun against umoci, and the time
# to create a container's rootfs from an already-pulled image.
#
#   sudo benches/compare-unpack.sh            RUNS=5, IMAGE=mariadb (a scripts/fixtures name)
#   sudo RUNS=3 IMAGE=postgres benches/compare-unpack.sh
#
# Run as root, it re-runs itself as $BENCH_USER (default rcrun-ci, made by scripts/setup):
# both tools unpack rootless, into the user's subordinate ids (umoci --rootless maps
# nothing and keeps owners in xattrs; rcrun unpacks inside a user namespace).
#
# 1. unpack: a fresh data dir each run; `rcrun pull oci:LAYOUT:TAG` (verify every blob,
#    scan every layer, unpack into chain-id snapshots) against `umoci unpack --rootless`
#    of the same layout (no digest verification of the blobs by umoci beyond its own).
#    Throughput = compressed layer bytes / wall time, and uncompressed bytes / wall time.
# 2. rootfs: `rcrun run --rm IMAGE true` for busybox and for IMAGE with hyperfine; the
#    overlay rootfs costs the same whatever the image's size.
#
# Environment: RCRUN_BIN (default target/release/rcrun), RUNS, IMAGE, BENCH_USER.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
die() { printf 'compare-unpack: %s\n' "$*" >&2; exit 1; }

RUNS=${RUNS:-5}
IMAGE=${IMAGE:-mariadb}
BENCH_USER=${BENCH_USER:-rcrun-ci}
RCRUN=${RCRUN_BIN:-$REPO/target/release/rcrun}
[ -x "$RCRUN" ] || die "build rcrun first: cargo build --release (or set RCRUN_BIN)"
command -v umoci >/dev/null || die "umoci is missing: sudo scripts/fixtures deps"
command -v hyperfine >/dev/null || die "hyperfine is missing: sudo scripts/setup --deps-only"

if [ "$(id -u)" = 0 ] && [ -z "${_UNPACK_INNER:-}" ]; then
  id "$BENCH_USER" >/dev/null 2>&1 || die "no user $BENCH_USER: run sudo scripts/setup"
  layout=$("$REPO/scripts/fixtures" path "$IMAGE") || die "build it: sudo scripts/fixtures build $IMAGE"
  small=$("$REPO/scripts/fixtures" path busybox) || die "build it: sudo scripts/fixtures build busybox"
  work=$(mktemp -d /tmp/rcrun-unpack-bench.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  cp "$RCRUN" "$work/rcrun"
  cp "$0" "$work/bench.sh"
  chmod -R a+rX "$work"
  chown "$BENCH_USER" "$work"
  su "$BENCH_USER" -s /bin/bash -c "cd '$work' && _UNPACK_INNER=1 RUNS=$RUNS IMAGE=$IMAGE RCRUN_BIN='$work/rcrun' LAYOUT='$layout' SMALL='$small' WORK='$work' bash '$work/bench.sh'"
  exit
fi

LAYOUT=${LAYOUT:?}
SMALL=${SMALL:?}
WORK=${WORK:-$(mktemp -d)}
tag=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]+'/index.json'))['manifests'][0]['annotations']['org.opencontainers.image.ref.name'])" "$LAYOUT")
read -r compressed uncompressed < <(python3 - "$LAYOUT" "$tag" <<'EOF'
import gzip, json, os, sys
import subprocess
layout, tag = sys.argv[1], sys.argv[2]
index = json.load(open(os.path.join(layout, "index.json")))
desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
blob = lambda d: os.path.join(layout, "blobs", *d.split(":"))
manifest = json.load(open(blob(desc["digest"])))
comp = sum(l["size"] for l in manifest["layers"])
unc = 0
for l in manifest["layers"]:
    p = blob(l["digest"])
    if "zstd" in l["mediaType"]:
        unc += int(subprocess.run(["sh", "-c", f"zstd -dc '{p}' | wc -c"], capture_output=True, text=True).stdout)
    elif "gzip" in l["mediaType"]:
        with gzip.open(p) as f:
            while chunk := f.read(1 << 20):
                unc += len(chunk)
    else:
        unc += os.path.getsize(p)
print(comp, unc)
EOF
)

now() { date +%s.%N; }
rate() { python3 -c "import sys; b,t=float(sys.argv[1]),float(sys.argv[2]); print(f'{b/t/1e6:8.1f}')" "$1" "$2"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# A copy of the layout the bench user owns (umoci takes a lock file in it).
cp -r "$LAYOUT" "$WORK/layout"
rc_times=() um_times=()
for i in $(seq "$RUNS"); do
  data="$WORK/data-$i"
  t0=$(now)
  RCRUN_DATA_DIR=$data "$RCRUN_BIN" pull "oci:$WORK/layout:$tag" >/dev/null
  t1=$(now)
  umoci unpack --rootless --image "$WORK/layout:$tag" "$WORK/bundle-$i" >/dev/null 2>&1
  t2=$(now)
  rc_times+=("$(python3 -c "print($t1-$t0)")")
  um_times+=("$(python3 -c "print($t2-$t1)")")
  # Subordinate-owned files go from inside the user namespace; umoci's are ours.
  RCRUN_DATA_DIR=$data "$RCRUN_BIN" rmi "localhost/layout:$tag" >/dev/null
  rm -rf "$data" "$WORK/bundle-$i" 2>/dev/null || chmod -R u+rwX "$WORK/bundle-$i" && rm -rf "$WORK/bundle-$i"
done
rc=$(printf '%s\n' "${rc_times[@]}" | median)
um=$(printf '%s\n' "${um_times[@]}" | median)
echo "unpack of $IMAGE:$tag ($((compressed / 1000000)) MB compressed, $((uncompressed / 1000000)) MB uncompressed), median of $RUNS:"
printf '  %-28s %7.2f s  %s MB/s compressed  %s MB/s uncompressed\n' \
  "rcrun pull (verify+unpack)" "$rc" "$(rate "$compressed" "$rc")" "$(rate "$uncompressed" "$rc")"
printf '  %-28s %7.2f s  %s MB/s compressed  %s MB/s uncompressed\n' \
  "umoci unpack --rootless" "$um" "$(rate "$compressed" "$um")" "$(rate "$uncompressed" "$um")"

echo "rootfs creation (rcrun run --rm IMAGE true), already pulled:"
export RCRUN_DATA_DIR=$WORK/data-run
"$RCRUN_BIN" pull "oci:$WORK/layout:$tag" >/dev/null
cp -r "$SMALL" "$WORK/busybox"
"$RCRUN_BIN" pull "oci:$WORK/busybox:1.35" >/dev/null
hyperfine --warmup 3 --runs 20 -N \
  "$RCRUN_BIN run --rm --entrypoint /bin/true busybox:1.35" \
  "$RCRUN_BIN run --rm --entrypoint /bin/true layout:$tag"
"$RCRUN_BIN" rmi "busybox:1.35" "layout:$tag" >/dev/null
