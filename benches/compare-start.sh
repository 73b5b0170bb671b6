#!/usr/bin/env bash
# benches/compare-start.sh — cold start of /bin/true, side by side: rcrun, crun, runc.
#
#   sudo benches/compare-start.sh            RUNS=30 WARMUP=3 by default
#   sudo RUNS=50 benches/compare-start.sh
#   sudo benches/compare-start.sh --hyperfine   time with hyperfine instead (not interleaved)
#
# Every container is rootless: run as root, the script re-runs itself as $BENCH_USER
# (default rcrun-ci, made by scripts/setup) inside `unshare -m -n`, i.e. a private mount
# namespace and a network namespace with only loopback, so nothing can reach the network
# and nothing on the host changes. Run as an ordinary user it just runs as that user
# (no network isolation, no host workaround).
#
# Host workaround, inside the private mount namespace only: on a host with hybrid v1/v2
# cgroups whose v2 hierarchy still owns a controller, crun 1.8 refuses every container
# ("cgroups in hybrid mode not supported"); /dev/null is bound over
# /sys/fs/cgroup/unified/cgroup.controllers. CRUN_HYBRID_FIX=0 skips it. rcrun and runc
# do not need it.
#
# All runtimes run the same bundle: a busybox-static rootfs owned by the bench user and
# one config (`rcrun oci spec --rootless`, or crun's with SPEC_BASE=crun) with
# process.args=/bin/true and a single-id mapping (container 0 -> the user; runc needs the
# mappings spelled out). One more rcrun row uses the same config with the subordinate-range
# mappings of `rcrun oci spec --rootless`, which cost newuidmap/newgidmap spawns.
#
# Environment: RCRUN_BIN (default target/release/rcrun, else target/debug/rcrun),
# RUNS, WARMUP, BENCH_USER, RUNTIMES (default "rcrun rcrun-subid crun runc"), SPEC_BASE.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { printf 'compare-start: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ outer (root) part
if [ -z "${_COMPARE_INNER:-}" ]; then
  REPO=$(cd "$HERE/.." && pwd)
  RUNTIMES=${RUNTIMES:-rcrun rcrun-subid crun runc}
  RCRUN=
  if [[ " $RUNTIMES " == *" rcrun"* ]]; then
    for c in "${RCRUN_BIN:-}" "$REPO/target/release/rcrun" "$REPO/target/debug/rcrun"; do
      [ -n "$c" ] && [ -x "$c" ] && { RCRUN=$c; break; }
    done
    [ -n "$RCRUN" ] || die "no rcrun binary: cargo build --release -p rcrun, or set RCRUN_BIN"
    echo "rcrun binary: $RCRUN"
  fi

  # a work dir every user can traverse, holding copies of what the inner part needs
  # (the checkout may be unreadable to the bench user)
  WORK=$(mktemp -d /tmp/rcrun-compare.XXXXXX)
  chmod 755 "$WORK"
  trap 'rm -rf "$WORK"' EXIT
  cp "$HERE/compare-start.sh" "$HERE/roundrobin.py" "$REPO/scripts/busybox-rootfs" "$WORK/"
  [ -z "$RCRUN" ] || cp "$RCRUN" "$WORK/rcrun"
  chmod 755 "$WORK"/*

  inner_env=(_COMPARE_INNER=1 WORK="$WORK" RUNTIMES="$RUNTIMES" RUNS="${RUNS:-30}" WARMUP="${WARMUP:-3}"
             SPEC_BASE="${SPEC_BASE:-rcrun}")
  if [ "$(id -u)" != 0 ]; then
    echo "not root: running as $(id -un) without network isolation or host workarounds"
    mkdir -m 700 "$WORK/u"
    env "${inner_env[@]}" HOST_FIXES=none bash "$WORK/compare-start.sh" "$@"
    exit
  fi

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
  unshare -m -n --propagation private -- bash -c "$ns_setup"' && exec "$@"' ns-setup \
    runuser -u "$BENCH_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
      HOME="$(getent passwd "$BENCH_USER" | cut -d: -f6)" USER="$BENCH_USER" LOGNAME="$BENCH_USER" \
      LANG=C.UTF-8 HOST_FIXES="$fixes" "${inner_env[@]}" bash "$WORK/compare-start.sh" "$@"
  exit 0
fi

# ------------------------------------------------------------------ inner (bench user) part
cd "$WORK/u"
export XDG_RUNTIME_DIR=$WORK/u/xdg
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
MODE=interleave
for a in "$@"; do
  case $a in
    --hyperfine) MODE=hyperfine ;;
    *) die "unknown argument '$a'" ;;
  esac
done

want() { [[ " $RUNTIMES " == *" $1 "* ]]; }
RCRUN=$WORK/rcrun
ROOTFS=$WORK/u/rootfs
bash "$WORK/busybox-rootfs" "$ROOTFS"

# One base config for every row: `rcrun oci spec --rootless` (SPEC_BASE=rcrun, the
# default) or `crun spec --rootless` (SPEC_BASE=crun, what the peers were measured with),
# with process.args=/bin/true and no terminal, written twice:
#   single/  container 0 -> this user only (every runtime). For the older peers, ociVersion
#            is lowered to 1.0.2 (crun 1.8 rejects 1.2.0) and uid=/gid= mount options naming
#            ids the single-id map lacks (devpts gid=5) are dropped (runc rejects them).
#   subid/   the uid/gid mappings rcrun oci spec --rootless writes (subordinate ranges)
mkdir -p single subid rcspec
base=${SPEC_BASE:-rcrun}
if [ -x "$RCRUN" ]; then
  "$RCRUN" oci spec --rootless --bundle rcspec || die "rcrun oci spec --rootless failed"
fi
case $base in
  rcrun) if [ -f rcspec/config.json ]; then cp rcspec/config.json single/
         else base=crun; fi ;;   # no rcrun asked for
  crun) ;;
  *) die "SPEC_BASE must be rcrun or crun" ;;
esac
if [ "$base" = crun ]; then
  command -v crun >/dev/null || die "SPEC_BASE=crun needs crun (sudo scripts/setup --deps-only)"
  (cd single && crun spec --rootless)
fi
python3 - "$ROOTFS" "$(id -u)" "$(id -g)" <<'PY'
import copy, json, os, re, sys
rootfs, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open("single/config.json") as f:
    cfg = json.load(f)
cfg["root"]["path"] = rootfs
cfg["process"]["args"] = ["/bin/true"]
cfg["process"]["terminal"] = False
if os.path.exists("rcspec/config.json"):
    with open("rcspec/config.json") as f:
        rc = json.load(f)["linux"]
    sub = copy.deepcopy(cfg)
    sub["linux"]["uidMappings"] = rc["uidMappings"]
    sub["linux"]["gidMappings"] = rc["gidMappings"]
    with open("subid/config.json", "w") as f:
        json.dump(sub, f, indent=1)
cfg["ociVersion"] = "1.0.2"
cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
for m in cfg.get("mounts", []):
    if "options" in m:
        m["options"] = [o for o in m["options"] if not re.fullmatch(r"[ug]id=[1-9][0-9]*", o)]
with open("single/config.json", "w") as f:
    json.dump(cfg, f, indent=1)
# sanity bundles: the same configs with a process that must exit 3, so a runtime that
# returns early without running anything cannot look fast
for name in ("single", "subid"):
    if os.path.exists(name + "/config.json"):
        with open(name + "/config.json") as f:
            c = json.load(f)
        c["process"]["args"] = ["/bin/sh", "-c", "exit 3"]
        os.makedirs("check-" + name, exist_ok=True)
        with open("check-%s/config.json" % name, "w") as f:
            json.dump(c, f, indent=1)
PY
B1=$WORK/u/single B2=$WORK/u/subid S=$WORK/u/state

# key, label, command ({n}: unique per run); rows whose runtime is absent or broken are dropped
spec=$WORK/u/spec.tsv
: > "$spec"
add() {   # add KEY LABEL CMD...  (CMD runs bundle $B1 or $B2)
  local key=$1 label=$2; shift 2
  local probe=("${@//\{n\}/probe}") check=() a out rc=0
  for a in "${@//\{n\}/check}"; do
    case $a in "$B1") a=$WORK/u/check-single ;; "$B2") a=$WORK/u/check-subid ;; esac
    check+=("$a")
  done
  if ! out=$("${probe[@]}" 2>&1 </dev/null); then
    echo "skipping $label: '${probe[*]}' failed: $(printf '%s' "$out" | tail -3)" >&2
    return
  fi
  out=$("${check[@]}" 2>&1 </dev/null) || rc=$?
  if [ "$rc" != 3 ]; then
    echo "skipping $label: a container running 'exit 3' gave exit code $rc, not 3: $out" >&2
    return
  fi
  printf '%s\t%s\t%s\n' "$key" "$label" "${*@Q}" >> "$spec"
}
if want rcrun; then add rcrun "rcrun oci run (single-id map)" "$RCRUN" oci --root "$S/rcrun" run --bundle "$B1" 'rc-{n}'; fi
if want rcrun-subid && [ -f subid/config.json ]; then add rcrun-subid "rcrun oci run (subuid ranges)" "$RCRUN" oci --root "$S/rcrun" run --bundle "$B2" 'rs-{n}'; fi
if want crun && command -v crun >/dev/null; then add crun "crun run (single-id map)" crun --root "$S/crun" run --bundle "$B1" 'c-{n}'; fi
if want runc && command -v runc >/dev/null; then add runc "runc run (single-id map)" runc --root "$S/runc" run --bundle "$B1" 'r-{n}'; fi
keys=$(cut -f1 "$spec" | tr '\n' ' ')
[ -n "$keys" ] || die "no runtime could run the bundle"

ratios=()
has() { [[ " $keys " == *" $1 "* ]]; }
if has rcrun && has crun; then ratios+=(rcrun/crun); fi
if has rcrun && has runc; then ratios+=(rcrun/runc); fi
if has rcrun-subid && has rcrun; then ratios+=(rcrun-subid/rcrun); fi
if has runc && has crun; then ratios+=(runc/crun); fi

echo
echo "=== cold start, /bin/true, rootless, no network: $RUNS runs after $WARMUP warm-up ($MODE) ==="
echo "user $(id -un) ($(id -u)); host fixes: ${HOST_FIXES:-none}; spec base: $base; $(nproc) cpus;" \
     "kernel $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"
versions=()
if [ -x "$RCRUN" ]; then versions+=("$("$RCRUN" --version 2>/dev/null | head -1 || echo 'rcrun (no --version)')"); fi
if command -v crun >/dev/null; then versions+=("$(crun --version | head -1)"); fi
if command -v runc >/dev/null; then versions+=("$(runc --version | head -1)"); fi
joined=$(IFS=','; echo "${versions[*]}")
echo "versions: ${joined//,/, }"
echo

if [ "$MODE" = interleave ]; then
  ratio_args=()
  for r in "${ratios[@]}"; do ratio_args+=(--ratio "$r"); done
  python3 "$WORK/roundrobin.py" --runs "$RUNS" --warmup "$WARMUP" "${ratio_args[@]}" "$spec"
else
  command -v hyperfine >/dev/null || die "hyperfine not installed (sudo scripts/setup --deps-only)"
  hf=(hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" --export-json "$WORK/u/hf.json")
  while IFS=$'\t' read -r key label cmd; do
    hf+=(-n "$key: $label" "${cmd//\{n\}/hf}")
  done < "$spec"
  "${hf[@]}"
  python3 - "$WORK/u/hf.json" "${ratios[@]}" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
med = {r["command"].split(":")[0]: r["median"] * 1e3 for r in res}
print()
for r in res:
    print("%-40s median %8.2f ms" % (r["command"], r["median"] * 1e3))
for pair in sys.argv[2:]:
    a, b = pair.split("/")
    print("ratio %-22s %6.2fx  (ratio of medians)" % (pair, med[a] / med[b]))
PY
fi
