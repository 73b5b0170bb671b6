#!/usr/bin/env bash
# benches/compare-dns.sh — rcrun's dnsd against aardvark-dns: queries/s, latency, memory.
#
#   sudo benches/compare-dns.sh                  N=50 SECS=10 ROUNDS=3 RATE=2000
#   sudo SERVERS=aardvark benches/compare-dns.sh the harness and aardvark alone
#
# Run as root, it re-runs itself as $BENCH_USER (default rcrun-ci, made by scripts/setup)
# inside `unshare -n` (ISOLATE=0: without it): a network namespace with only loopback,
# so no query can reach the host's resolvers or the outside, whatever a server does with
# a name it does not know (none is asked). Nothing on the host changes.
#
# Records: one network `bench`, N busybox containers web1..webN, all with the network
# alias `app`, and one client container (the `client` fixture image: dnsperf, dig).
# - dnsd answers on the gateway, port 53 (inside rcrun's infra process, in N0), with
#   RCRUN_DNS_UPSTREAMS empty: nothing to forward to;
# - aardvark-dns (Debian's, $AARDVARK) runs in the same N0 (nsenter into the infra's
#   user and network namespaces), on the same gateway address, port 5353, with a config
#   listing the same containers, addresses, names and alias, and 127.0.0.1 (nothing
#   there in N0) as its network's upstream, so it never forwards to the host's resolver.
#   aardvark answers only the containers in its config: the client is listed too.
# Before timing, each server must answer webN with its address and `app` with N
# addresses; the script waits ~10 s for dnsd and stops with an error if it stays silent.
#
# Queries (UDP, EDNS0 so that the N `app` records fit), the same for both servers,
# all answered from their records: per container `webI A` and `webI AAAA` (NODATA: no IPv6),
# and `app A` once per 5 containers; every name a bare name, since each server has its
# own domain. FQDN=1 adds `webI.DOMAIN A` per container, in each server's own domain
# (webI.bench.rcrun.internal for dnsd, webI.dns.podman for aardvark).
# 1. throughput: `dnsperf -c 4 -q 100 -l SECS` (as fast as answers come, 100 queries
#    outstanding), ROUNDS rounds alternating the servers; the median queries/s is
#    reported, with dnsperf's average latency (at saturation that is mostly queueing).
# 2. latency: dnsperf cannot give percentiles, but `-v` prints each answer's latency:
#    one `dnsperf -v -Q RATE -l SECS` per server at a fixed rate well below either's
#    capacity; p50/p99 (nearest rank) over every answer. Its output goes to a file in
#    the container, so printing does not hold dnsperf back.
# 3. memory: VmRSS (and VmHWM, the peak) from /proc/PID/status of the aardvark-dns
#    process and of the infra process, before and after the load. dnsd is not a process
#    of its own: it lives in the infra, so its figure is the whole infra's (bridges,
#    links, port forwarding and dnsd). Other processes with the infra's command line
#    (`rcrun __infra DIR`, this run's DIR: the host-side half, when it stays) get a
#    line of their own.
# Everything started (containers, network, aardvark-dns, the infra, the work dir) is
# removed on exit, failure included.
#
# Environment: RCRUN_BIN (default target/release/rcrun), AARDVARK (default
# /usr/lib/podman/aardvark-dns), N, SECS, ROUNDS, RATE, SERVERS (default "dnsd aardvark"),
# FQDN, BENCH_USER, ISOLATE, OUT (a directory to keep dnsperf's outputs and aardvark's config in).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
die() { printf 'compare-dns: %s\n' "$*" >&2; exit 1; }

N=${N:-50}
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-2000}
SERVERS=${SERVERS:-dnsd aardvark}
AARDVARK=${AARDVARK:-/usr/lib/podman/aardvark-dns}
BENCH_USER=${BENCH_USER:-rcrun-ci}
RCRUN=${RCRUN_BIN:-$REPO/target/release/rcrun}

if [ -z "${_DNS_INNER:-}" ]; then
  [ "$(id -u)" = 0 ] || die "run it as root (sudo): it runs the benchmark as $BENCH_USER"
  [ -x "$RCRUN" ] || die "build rcrun first: cargo build --release (or set RCRUN_BIN)"
  for s in $SERVERS; do
    case $s in
      dnsd) ;;
      aardvark) [ -x "$AARDVARK" ] || die "no $AARDVARK: apt-get install aardvark-dns (or set AARDVARK)" ;;
      *) die "SERVERS: unknown server $s (dnsd, aardvark)" ;;
    esac
  done
  command -v nsenter >/dev/null || die "nsenter is missing (util-linux)"
  id "$BENCH_USER" >/dev/null 2>&1 || die "no user $BENCH_USER: run sudo scripts/setup"
  small=$("$REPO/scripts/fixtures" path busybox) || die "build it: sudo scripts/fixtures build busybox"
  client=$("$REPO/scripts/fixtures" path client) || die "build it: sudo scripts/fixtures build client"
  work=/tmp/rcrun-dns-bench-$$ # lower case, as in compare-net.sh
  mkdir "$work"
  # shellcheck disable=SC2064 # expand OUT now
  trap "${OUT:+cp -r '$work/out/.' '$OUT' 2>/dev/null;} rm -rf '$work'" EXIT
  [ -z "${OUT:-}" ] || mkdir -p "$OUT"
  cp "$RCRUN" "$work/rcrun"
  cp "${BASH_SOURCE[0]}" "$work/bench.sh"
  ln -s "$small" "$work/busybox"
  ln -s "$client" "$work/client"
  chown -R "$BENCH_USER" "$work"
  home=$(getent passwd "$BENCH_USER" | cut -d: -f6)
  isolate=()
  [ "${ISOLATE:-1}" = 0 ] || isolate=(unshare -n --)
  "${isolate[@]}" runuser -u "$BENCH_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    HOME="$home" USER="$BENCH_USER" LANG=C.UTF-8 _DNS_INNER=1 N="$N" SECS="$SECS" \
    ROUNDS="$ROUNDS" RATE="$RATE" FQDN="${FQDN:-0}" SERVERS="$SERVERS" AARDVARK="$AARDVARK" \
    RCRUN_BIN="$work/rcrun" WORK="$work" bash "$work/bench.sh"
  exit
fi

# ------------------------------------------------------------------ inner part (BENCH_USER)
WORK=${WORK:?}
export RCRUN_DATA_DIR=$WORK/data XDG_RUNTIME_DIR=$WORK/xdg
export RCRUN_INFRA_LINGER=1 # the infra goes soon after the last container, before rm -rf
export RCRUN_DNS_UPSTREAMS= # dnsd forwards nowhere (no name asked needs it anyway)
mkdir -p "$XDG_RUNTIME_DIR" "$WORK/out" && chmod 700 "$XDG_RUNTIME_DIR"
R=$RCRUN
read -ra servers <<<"$SERVERS"
want() { [[ " $SERVERS " == *" $1 "* ]]; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

infra_pid=
aard_pid=
cleanup() {
  set +e
  if [ -n "$aard_pid" ] && [[ $(tr '\0' ' ' <"/proc/$aard_pid/cmdline" 2>/dev/null) == "$AARDVARK "* ]]; then
    kill "$aard_pid"
  fi
  mapfile -t ids < <($R ps -a -q 2>/dev/null)
  [ ${#ids[@]} = 0 ] || $R rm -f "${ids[@]}" >/dev/null
  $R network rm bench >/dev/null 2>&1
  # the infra exits RCRUN_INFRA_LINGER after its last container: wait up to 10 s
  for _ in $(seq 50); do
    if [ -z "$infra_pid" ] || [ ! -e "/proc/$infra_pid" ]; then break; fi
    sleep 0.2
  done
}
trap cleanup EXIT

$R pull "oci:$WORK/busybox:1.35" >/dev/null
$R pull "oci:$WORK/client:latest" >/dev/null
$R network create bench >/dev/null
gw=$($R network inspect bench | json 'd[0]["subnets"][0][1]')
$R run -d --name web1 --network bench --network-alias app busybox:1.35 sleep 3600 >/dev/null
$R run -d --name dnsclient --network bench client:latest sleep 3600 >/dev/null
infra_pid=$($R network infra | json 'd[0]["pid"]')
# it must be this work dir's infra: `rcrun __infra $XDG_RUNTIME_DIR/rcrun/KEY`
infra_cmd=$(tr '\0' ' ' <"/proc/$infra_pid/cmdline")
[[ $infra_cmd == "rcrun __infra $XDG_RUNTIME_DIR/rcrun/"* ]] || die "pid $infra_pid is not this run's infra process"
# other processes of the same infra (the same command line: this run's runtime dir),
# e.g. a host-side helper; their memory is reported beside the infra's
helpers=()
for p in /proc/[0-9]*; do
  if [ "${p#/proc/}" != "$infra_pid" ] && [ -O "$p" ] \
     && [ "$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" = "$infra_cmd" ]; then
    helpers+=("${p#/proc/}")
  fi
done
ip_of() { $R inspect "$1" | json 'd[0]["networks"][0]["addresses"][0]'; }
web1_ip=$(ip_of web1)
x() { $R exec dnsclient "$@"; }

if want dnsd; then
  echo "== waiting for dnsd on $gw:53"
  ok=
  deadline=$((SECONDS + 10))
  while [ $SECONDS -lt $deadline ]; do
    if [ "$(x dig +time=1 +tries=1 +short @"$gw" web1 A 2>/dev/null)" = "$web1_ip" ]; then ok=1; break; fi
    sleep 0.5
  done
  [ -n "$ok" ] || die "nothing answers web1 on $gw:53 after ~10 s: this rcrun has no dnsd in its infra (SERVERS=aardvark measures aardvark-dns alone)"
fi

echo "== $N containers on network bench (gateway $gw)"
for i in $(seq 2 "$N"); do
  $R run -d --name "web$i" --network bench --network-alias app busybox:1.35 sleep 3600 >/dev/null
done
# names, ids, addresses of every container, the client included
mapfile -t names < <(seq -f 'web%.0f' 1 "$N"; echo dnsclient)
$R inspect "${names[@]}" >"$WORK/out/inspect.json"

# the query file (see the header) and aardvark's config: "GATEWAY UPSTREAM", then
# "ID IPV4 IPV6 NAME[,ALIAS]" per container, in a file named after the network
python3 - "$WORK/out/inspect.json" "$N" "$gw" "$WORK/out" "$WORK/aardvark/bench" "${FQDN:-0}" <<'EOF'
import json, os, sys
rows, n, gw, out, conf = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
fqdn = sys.argv[6] == "1"
for server, domain in (("dnsd", "bench.rcrun.internal"), ("aardvark", "dns.podman")):
    with open(f"{out}/queries-{server}.txt", "w") as q:
        for i in range(1, n + 1):
            q.write(f"web{i} A\nweb{i} AAAA\n")
            if fqdn:
                q.write(f"web{i}.{domain} A\n")
            if i % 5 == 0:
                q.write("app A\n")
os.makedirs(os.path.dirname(conf), exist_ok=True)
with open(conf, "w") as c:
    c.write(f"{gw} 127.0.0.1\n")
    for r in rows:
        net = r["networks"][0]
        names = [r["name"]] + net.get("aliases", [])
        v4 = ",".join(a for a in net["addresses"] if ":" not in a)
        v6 = ",".join(a for a in net["addresses"] if ":" in a)
        c.write(f"{r['id']} {v4} {v6} {','.join(names)}\n")
EOF
for s in dnsd aardvark; do
  $R exec -i dnsclient sh -c "cat >/tmp/queries-$s.txt" <"$WORK/out/queries-$s.txt"
done
cp "$WORK/aardvark/bench" "$WORK/out/aardvark-bench.conf"
webn_ip=$(ip_of "web$N")

port_of() { case $1 in dnsd) echo 53 ;; aardvark) echo 5353 ;; esac; }
if want aardvark; then
  # it forks and its parent returns once the child serves; the child writes its pid
  nsenter --preserve-credentials -U -n -t "$infra_pid" \
    "$AARDVARK" --config "$WORK/aardvark" -p "$(port_of aardvark)" run >"$WORK/out/aardvark.log" 2>&1 \
    || die "aardvark-dns failed: $(cat "$WORK/out/aardvark.log")"
  aard_pid=$(cat "$WORK/aardvark/aardvark.pid")
  [ "$(readlink "/proc/$aard_pid/ns/net")" = "$(readlink "/proc/$infra_pid/ns/net")" ] \
    || die "aardvark-dns ($aard_pid) is not in the infra's network namespace"
fi

for s in "${servers[@]}"; do
  port=$(port_of "$s")
  got=$(x dig +time=2 +tries=1 +short -p "$port" @"$gw" "web$N" A)
  [ "$got" = "$webn_ip" ] || die "$s: web$N A is '$got', not $webn_ip"
  if [ "${FQDN:-0}" = 1 ]; then
    if [ "$s" = dnsd ]; then domain=bench.rcrun.internal; else domain=dns.podman; fi
    got=$(x dig +time=2 +tries=1 +short -p "$port" @"$gw" "web$N.$domain" A)
    [ "$got" = "$webn_ip" ] || die "$s: web$N.$domain A is '$got', not $webn_ip"
  fi
  count=$(x dig +time=2 +tries=1 +short +ignore -p "$port" @"$gw" app A | grep -c .)
  [ "$count" = "$N" ] || die "$s: app A has $count addresses, not $N"
done

mem() { # label
  local line="$1"
  want dnsd && line+=$(printf '  infra %s kB (peak %s)' "$(status_kb "$infra_pid" VmRSS)" "$(status_kb "$infra_pid" VmHWM)")
  for p in "${helpers[@]}"; do
    want dnsd && line+=$(printf '  infra-helper(%s) %s kB (peak %s)' "$p" "$(status_kb "$p" VmRSS)" "$(status_kb "$p" VmHWM)")
  done
  want aardvark && line+=$(printf '  aardvark-dns %s kB (peak %s)' "$(status_kb "$aard_pid" VmRSS)" "$(status_kb "$aard_pid" VmHWM)")
  echo "$line"
}
mem "== memory before:" | tee "$WORK/out/mem-before"

perf() { # server round
  x dnsperf -s "$gw" -p "$(port_of "$1")" -d "/tmp/queries-$1.txt" -e -c 4 -q 100 -l "$SECS" \
    >"$WORK/out/tput-$1-$2.txt" 2>&1 || die "dnsperf against $1 failed: $(cat "$WORK/out/tput-$1-$2.txt")"
  awk -v s="$1" '/Queries per second/ { q = $4 } /Queries lost/ { l = $3 }
    /Average Latency/ { a = $4 } /Response codes/ { $1 = $2 = ""; c = $0 }
    END { printf "   %-9s %8.0f queries/s  lost %s  average %.3f ms%s\n", s, q, l, a * 1000,
      c ~ /^ *NOERROR [0-9]+ \(100.00%\)$/ ? "" : "  codes:" c }' \
    "$WORK/out/tput-$1-$2.txt"
}
echo "== throughput: dnsperf -c 4 -q 100 -l $SECS, $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  echo " round $r"
  order=("${servers[@]}")
  [ $((r % 2)) = 1 ] || mapfile -t order < <(printf '%s\n' "${servers[@]}" | tac)
  for s in "${order[@]}"; do perf "$s" "$r"; done
done

echo "== latency: dnsperf -v -Q $RATE -l $SECS"
for s in "${servers[@]}"; do
  x sh -c "dnsperf -s $gw -p $(port_of "$s") -d /tmp/queries-$s.txt -e -c 1 -Q $RATE -l $SECS -v >/tmp/lat.txt 2>&1; rc=\$?; cat /tmp/lat.txt; exit \$rc" \
    >"$WORK/out/lat-$s.txt" || die "dnsperf -v against $s failed: $(tail -5 "$WORK/out/lat-$s.txt")"
done
mem "== memory after: " | tee "$WORK/out/mem-after"

python3 - "$WORK/out" "$ROUNDS" "$SERVERS" <<'EOF'
import re, statistics, sys
out, rounds, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def field(text, key):
    return float(re.search(re.escape(key) + r":\s+([0-9.]+)", text).group(1))
def kb(path, label):
    m = re.search(re.escape(label) + r" (\d+) kB \(peak (\d+)\)", open(path).read())
    return (int(m.group(1)), int(m.group(2))) if m else None
rows = []
for s in servers:
    qps = [field(open(f"{out}/tput-{s}-{r}.txt").read(), "Queries per second") for r in range(1, rounds + 1)]
    lat_text = open(f"{out}/lat-{s}.txt").read()
    lat = sorted(float(m) for m in re.findall(r"^> \S+ \S+ \S+ ([0-9.]+)$", lat_text, re.M))
    codes = re.findall(r"^> (\S+) ", lat_text, re.M)
    bad = sum(c != "NOERROR" for c in codes)
    lost = int(field(lat_text, "Queries lost"))
    pick = lambda p: lat[max(0, -(-len(lat) * p // 100) - 1)] * 1000  # nearest rank
    label = "infra" if s == "dnsd" else "aardvark-dns"
    before, after = kb(f"{out}/mem-before", label), kb(f"{out}/mem-after", label)
    size = int(re.search(r"response (\d+)", lat_text).group(1))
    rows.append((s, statistics.median(qps), pick(50), pick(99), len(lat), lost + bad, size, before[0], after[0], after[1]))
print()
print("| server | queries/s (median of %d) | p50 ms | p99 ms | answers (lost+errors) | reply bytes | RSS before kB | RSS after kB | peak kB |" % rounds)
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for s, q, p50, p99, n, bad, size, rb, ra, hwm in rows:
    name = "dnsd (RSS: the whole infra)" if s == "dnsd" else "aardvark-dns"
    print(f"| {name} | {q:.0f} | {p50:.3f} | {p99:.3f} | {n} ({bad}) | {size} | {rb} | {ra} | {hwm} |")
    if s == "dnsd":
        before = dict(re.findall(r"infra-helper\((\d+)\) (\d+) kB", open(f"{out}/mem-before").read()))
        for pid, ra, hwm in re.findall(r"infra-helper\((\d+)\) (\d+) kB \(peak (\d+)\)", open(f"{out}/mem-after").read()):
            print(f"| + infra's host-side process {pid} | | | | | | {before.get(pid, '?')} | {ra} | {hwm} |")
EOF
