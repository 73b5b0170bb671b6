#!/usr/bin/env bash
# benches/compare-services.sh — `rcrun up` against podman: from the command to the job's
# first instruction, minus the database's own start-up time (issue 6), rootless.
#
#   sudo benches/compare-services.sh                 N_REDIS=10 N_MARIADB=5
#   sudo DBS=redis TOOLS=rcrun benches/compare-services.sh
#
# Run as root, it re-runs itself as $BENCH_USER (default rcrun-ci, made by scripts/setup)
# inside `unshare -n` (ISOLATE=0: without it): a network namespace with only loopback, so
# nothing can reach the host's resolvers or the outside. A fresh work dir, data dir and
# podman root; the fixture images (redis:7.0, mariadb:10.11, client:latest) are imported
# into both from their OCI layouts first (not timed). Nothing on the host changes.
#
# One iteration, per database (redis, port 6379; mariadb, port 3306):
# - rcrun: an up-file with the service `db` (ports: [DBPORT], so rcrun health-checks the
#   port) and one job (client:latest) bound to it, whose first instruction prints the
#   time. T0 just before `rcrun up -f FILE --grace 0s`; T_job the job's stamp.
# - podman: T0; `podman run -d --network bench --name db` with the same image and
#   wrapper; the wait loop a CI script would write: `until podman exec db bash -c
#   ': >/dev/tcp/127.0.0.1/DBPORT'; do sleep $PODMAN_SLEEP; done` (the same port check as
#   rcrun's, run inside the service with the tool's own exec; the sleep is 0.1 s by
#   default); then `podman run --rm --network bench client:latest` with the same job.
#   The network is made once (not timed); `podman rm -f -v db` after (not timed).
# - The database's own start-up: both tools run the server through the same bash
#   wrapper (the entrypoint, `bash -c WRAPPER wrap SERVER ARGS…`): it starts a
#   background loop that connects to 127.0.0.1:DBPORT (bash's /dev/tcp, no fork per try,
#   $PROBE_PAUSE s between tries: `read -t` on a pipe, a builtin; 0 spins), writes
#   `exec TIME` and execs the server, which keeps the pid (1 in the container), its
#   signals and the container's life: the loop ends at the first accepted connection
#   (`ready TIME`), is killed with the container otherwise, and holds no pipe (its stdio
#   is /dev/null). The stamps are appended to /stamps/log: a cache volume (`cache:
#   { stamps-DB: /stamps }`) for rcrun, since a service's log goes with its container;
#   a bind-mounted host dir (mode 0777) for podman. db_startup = ready − exec.
# - overhead = (T_job − T0) − db_startup, also shown in two parts: before (exec − T0: the
#   container, its network, its process) and after (T_job − ready: noticing the port,
#   then the job's container).
# Every stamp is CLOCK_REALTIME read the same way (bash's $EPOCHREALTIME: on the host
# for T0, in the containers for the others); all processes share the host's clock.
#
# Between iterations the service must be gone: `rcrun service ls` empty, no container in
# `rcrun ps -a` and (INFRA=cold, the default) no network infra either, as podman tears
# its rootless network namespace down after its last container; so every iteration is a
# cold start of the service and its network. INFRA=warm keeps rcrun's infra running
# (RCRUN_INFRA_LINGER=3600). The time from `rcrun up`'s exit until the service is gone
# is reported too (not part of the overhead). One warm-up iteration per tool and database
# (WARMUP) is dropped; the tools alternate which goes first in each round.
#
# Environment: RCRUN_BIN (default target/release/rcrun), DBS ("redis mariadb"), TOOLS
# ("rcrun podman"; podman is skipped when it is not installed), N_REDIS (10), N_MARIADB (5),
# WARMUP (1), PROBE_PAUSE (0.001), PODMAN_SLEEP (0.1), PODMAN_OPTS (extra `podman run -d`
# options, e.g. `--image-volume ignore`), PODMAN_DRIVER (overlay: podman's storage driver),
# INFRA (cold|warm), BENCH_USER, ISOLATE, OUT (a directory to keep the up-files and
# results.txt in: per iteration TOOL DB ROUND T0 T_JOB EXEC READY, and more).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
die() { printf 'compare-services: %s\n' "$*" >&2; exit 1; }

DBS=${DBS:-redis mariadb}
TOOLS=${TOOLS:-rcrun podman}
N_REDIS=${N_REDIS:-10}
N_MARIADB=${N_MARIADB:-5}
WARMUP=${WARMUP:-1}
PROBE_PAUSE=${PROBE_PAUSE:-0.001}
PODMAN_SLEEP=${PODMAN_SLEEP:-0.1}
PODMAN_OPTS=${PODMAN_OPTS:-}
PODMAN_DRIVER=${PODMAN_DRIVER:-overlay}
INFRA=${INFRA:-cold}
BENCH_USER=${BENCH_USER:-rcrun-ci}
RCRUN=${RCRUN_BIN:-$REPO/target/release/rcrun}

if [ -z "${_SVC_INNER:-}" ]; then
  [ "$(id -u)" = 0 ] || die "run it as root (sudo): it runs the benchmark as $BENCH_USER"
  [ -x "$RCRUN" ] || die "build rcrun first: cargo build --release (or set RCRUN_BIN)"
  id "$BENCH_USER" >/dev/null 2>&1 || die "no user $BENCH_USER: run sudo scripts/setup"
  for d in $DBS; do
    case $d in redis | mariadb) ;; *) die "DBS: unknown database $d (redis, mariadb)" ;; esac
  done
  for t in $TOOLS; do
    case $t in rcrun | podman) ;; *) die "TOOLS: unknown tool $t (rcrun, podman)" ;; esac
  done
  case $INFRA in cold | warm) ;; *) die "INFRA: cold or warm, not $INFRA" ;; esac
  [[ $PROBE_PAUSE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "PROBE_PAUSE: seconds, e.g. 0.001 (0: spin)"
  [[ $PODMAN_SLEEP =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "PODMAN_SLEEP: seconds, e.g. 0.1"
  if [[ " $TOOLS " == *" podman "* ]] && ! command -v podman >/dev/null; then
    echo "compare-services: podman is not installed: rcrun alone" >&2
    TOOLS=rcrun
  fi
  work=/tmp/rcrun-svc-bench-$$ # lower case: podman names pulled layouts after their path
  mkdir "$work"
  # shellcheck disable=SC2064 # expand OUT now
  trap "${OUT:+cp -r '$work/out/.' '$OUT' 2>/dev/null;} rm -rf '$work'" EXIT
  [ -z "${OUT:-}" ] || mkdir -p "$OUT"
  cp "$RCRUN" "$work/rcrun"
  cp "${BASH_SOURCE[0]}" "$work/bench.sh"
  for name in client $DBS; do
    layout=$("$REPO/scripts/fixtures" path "$name") || die "build it: sudo scripts/fixtures build $name"
    ln -s "$layout" "$work/$name"
  done
  chown -R "$BENCH_USER" "$work"
  home=$(getent passwd "$BENCH_USER" | cut -d: -f6)
  isolate=()
  [ "${ISOLATE:-1}" = 0 ] || isolate=(unshare -n --)
  "${isolate[@]}" runuser -u "$BENCH_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    HOME="$home" USER="$BENCH_USER" LANG=C.UTF-8 _SVC_INNER=1 DBS="$DBS" TOOLS="$TOOLS" \
    N_REDIS="$N_REDIS" N_MARIADB="$N_MARIADB" WARMUP="$WARMUP" PROBE_PAUSE="$PROBE_PAUSE" \
    PODMAN_SLEEP="$PODMAN_SLEEP" PODMAN_OPTS="$PODMAN_OPTS" PODMAN_DRIVER="$PODMAN_DRIVER" INFRA="$INFRA" \
    RCRUN_BIN="$work/rcrun" WORK="$work" bash "$work/bench.sh"
  exit
fi

# ------------------------------------------------------------------ inner part (BENCH_USER)
WORK=${WORK:?}
export RCRUN_DATA_DIR=$WORK/data XDG_RUNTIME_DIR=$WORK/xdg
export RCRUN_DNS_UPSTREAMS= # dnsd forwards nowhere (nothing here asks it a name anyway)
if [ "$INFRA" = warm ]; then export RCRUN_INFRA_LINGER=3600; else export RCRUN_INFRA_LINGER=1; fi
mkdir -p "$XDG_RUNTIME_DIR" "$WORK/out" && chmod 700 "$XDG_RUNTIME_DIR"
OUTD=$WORK/out
RESULTS=$OUTD/results.txt
: >"$RESULTS"
R=$RCRUN
want() { [[ " $TOOLS " == *" $1 "* ]]; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# overlay, explicitly: with its own --root and no storage.conf, podman 4.3 falls back to
# vfs, which copies the whole image (client: 273 MB) for every container
P=(podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" --runtime runc
  --storage-driver "$PODMAN_DRIVER")
cleanup() {
  set +e
  if want podman; then
    "${P[@]}" rm -af -v -t 0 >/dev/null 2>&1
    "${P[@]}" network rm -f bench >/dev/null 2>&1
    "${P[@]}" system reset -f >/dev/null 2>&1
  fi
  mapfile -t ids < <($R ps -a -q 2>/dev/null)
  [ ${#ids[@]} = 0 ] || $R rm -f "${ids[@]}" >/dev/null 2>&1
  # the services' supervisors and the infra go on their own: give them 15 s
  for _ in $(seq 75); do
    [ "$($R ps -a -q 2>/dev/null | wc -l)" = 0 ] && break
    sleep 0.2
  done
  pid=$(infra_pid 2>/dev/null)
  # INFRA=warm: it would linger an hour; it is this run's (its command line names WORK)
  if [ -n "$pid" ] && [ "$INFRA" = warm ] \
     && [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == "rcrun __infra $XDG_RUNTIME_DIR/"* ]]; then
    kill "$pid"
  fi
  [ -z "$pid" ] || until_within 15 pid_gone "$pid"
}
trap cleanup EXIT

port_of() { case $1 in redis) echo 6379 ;; mariadb) echo 3306 ;; esac; }
image_of() { case $1 in redis) echo redis:7.0 ;; mariadb) echo mariadb:10.11 ;; esac; }
iterations_of() { case $1 in redis) echo "$N_REDIS" ;; mariadb) echo "$N_MARIADB" ;; esac; }
server_of() { # the fixture's entrypoint and command (mariadb: + --skip-name-resolve)
  case $1 in
    redis) echo /usr/bin/redis-server --protected-mode no --dir /var/lib/redis ;;
    mariadb) echo /usr/sbin/mariadbd --bind-address=0.0.0.0 --socket=/tmp/mysqld.sock \
      --pid-file=/tmp/mysqld.pid --skip-name-resolve ;;
  esac
}
# The wrapper (bash -c WRAPPER wrap SERVER ARGS...): the probe loop in the background
# (fd 9: a pipe nobody writes, for `read -t` as a builtin sleep), then the exec stamp, exec.
wrapper() { # port
  local pause=':'
  [[ $PROBE_PAUSE =~ ^0*(\.0*)?$ ]] || pause="read -t $PROBE_PAUSE -u 9"
  cat <<EOF
exec 9<> <(:)
( exec </dev/null >/dev/null 2>&1
  until { : >/dev/tcp/127.0.0.1/$1; } 2>/dev/null; do $pause; done
  echo "ready \$EPOCHREALTIME" >>/stamps/log ) &
exec 9<&-
echo "exec \$EPOCHREALTIME" >>/stamps/log
exec "\$@"
EOF
}
# shellcheck disable=SC2016 # expanded in the job's container
JOB='echo "job $EPOCHREALTIME"'

upfile() { # db
  local db=$1 port arg
  port=$(port_of "$db")
  {
    echo "services:"
    echo "  db:"
    echo "    image: $(image_of "$db")"
    echo "    entrypoint:"
    echo "      - bash"
    echo "      - -c"
    echo "      - |"
    wrapper "$port" | sed 's/^/        /'
    echo "      - wrap"
    echo "    command:"
    for arg in $(server_of "$db"); do echo "      - \"$arg\""; done
    echo "    ports: [$port]"
    echo "    cache: { stamps-$db: /stamps }"
    echo "jobs:"
    echo "  job:"
    echo "    image: client:latest"
    echo "    bind: { db: db }"
    echo "    run: [\"bash\", \"-c\", '$JOB']"
  } >"$OUTD/up-$db.yaml"
}

# the stamps written after line $2 of log $1: "EXEC READY"
stamps_after() { # log skip
  tail -n +"$(($2 + 1))" "$1" 2>/dev/null | awk '
    $1 == "exec" && e == "" { e = $2 } $1 == "ready" && r == "" { r = $2 }
    END { if (e == "" || r == "") exit 1; print e, r }'
}
lines_of() { if [ -e "$1" ]; then wc -l <"$1"; else echo 0; fi; }

until_within() { # seconds command...: 0 once the command succeeds, 1 after the time
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
service_gone() { [ "$($R service ls --format json | json 'len(d)')" = 0 ] && [ -z "$($R ps -a -q)" ]; }
# (asking the infra itself, `rcrun network infra`, counts as use and restarts its linger
# time: it is asked once for its pid, then the pid is watched)
infra_pid() { $R network infra | json 'd[0]["pid"] if d else ""'; }
pid_gone() { [ ! -e "/proc/$1" ]; }

run_rcrun() { # db round
  local db=$1 round=$2 log skip t0 tend tjob st tgone pid
  log=$RCRUN_DATA_DIR/volumes/stamps-$db/_data/log
  skip=$(lines_of "$log")
  t0=$EPOCHREALTIME
  $R up -f "$OUTD/up-$db.yaml" --grace 0s >"$OUTD/job.out" 2>"$OUTD/job.err" \
    || die "rcrun up ($db) failed: $(cat "$OUTD/job.out" "$OUTD/job.err")"
  tend=$EPOCHREALTIME
  tjob=$(awk '$1 == "job" { print $2 }' "$OUTD/job.out")
  [ -n "$tjob" ] || die "rcrun up ($db): the job printed no stamp: $(cat "$OUTD/job.out")"
  st=$(stamps_after "$log" "$skip") || die "rcrun ($db): no exec/ready stamps in $log"
  until_within 30 service_gone || die "rcrun ($db): the service is still there 30 s after up: $($R service ls; $R ps -a)"
  tgone=$EPOCHREALTIME
  if [ "$INFRA" = cold ]; then
    pid=$(infra_pid)
    [ -z "$pid" ] || until_within 30 pid_gone "$pid" || die "rcrun ($db): the infra ($pid) still runs 30 s after up"
  fi
  echo "rcrun $db $round $t0 $tjob $st $(echo "$tgone - $tend" | bc)" >>"$RESULTS"
}

run_podman() { # db round
  local db=$1 round=$2 port log skip t0 tend tjob st server deadline trun twait tries
  port=$(port_of "$db")
  log=$WORK/pstamps-$db/log
  skip=$(lines_of "$log")
  read -ra server <<<"$(server_of "$db")"
  t0=$EPOCHREALTIME
  # shellcheck disable=SC2086 # PODMAN_OPTS: words
  "${P[@]}" run -d --network bench --name db -v "$WORK/pstamps-$db:/stamps" $PODMAN_OPTS \
    --entrypoint bash "localhost/$(image_of "$db")" -c "$(wrapper "$port")" wrap "${server[@]}" \
    >/dev/null 2>"$OUTD/podman.err" || die "podman run -d ($db) failed: $(cat "$OUTD/podman.err")"
  trun=$EPOCHREALTIME
  deadline=$((SECONDS + 120))
  tries=1
  until "${P[@]}" exec db bash -c ": >/dev/tcp/127.0.0.1/$port" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "podman ($db): port $port not open after 120 s: $("${P[@]}" logs db 2>&1 | tail -5)"
    sleep "$PODMAN_SLEEP"
    tries=$((tries + 1))
  done
  twait=$EPOCHREALTIME
  "${P[@]}" run --rm --network bench localhost/client:latest bash -c "$JOB" \
    >"$OUTD/job.out" 2>"$OUTD/podman.err" || die "podman job ($db) failed: $(cat "$OUTD/podman.err")"
  tend=$EPOCHREALTIME
  tjob=$(awk '$1 == "job" { print $2 }' "$OUTD/job.out")
  [ -n "$tjob" ] || die "podman ($db): the job printed no stamp: $(cat "$OUTD/job.out")"
  st=$(stamps_after "$log" "$skip") || die "podman ($db): no exec/ready stamps in $log"
  "${P[@]}" rm -f -v db >/dev/null 2>&1 || die "podman rm -f db failed"
  # podman's rootless network namespace goes with its last container: wait for that too
  for _ in $(seq 100); do
    [ -z "$(ls -A "$XDG_RUNTIME_DIR/netns" 2>/dev/null)" ] && break
    sleep 0.05
  done
  echo "podman $db $round $t0 $tjob $st - $trun $twait $tries" >>"$RESULTS"
}

echo "== load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
echo "== importing images (not timed)"
for db in $DBS client; do
  img=$(image_of "$db"); [ "$db" = client ] && img=client:latest
  $R pull "oci:$WORK/${img%%:*}:${img#*:}" >/dev/null
done
if want podman; then
  for db in $DBS client; do
    img=$(image_of "$db"); [ "$db" = client ] && img=client:latest
    id=$("${P[@]}" pull -q "oci:$WORK/${img%%:*}:${img#*:}" 2>/dev/null)
    "${P[@]}" tag "$id" "localhost/$img"
  done
  "${P[@]}" network create bench >/dev/null 2>&1
  for db in $DBS; do mkdir -p "$WORK/pstamps-$db" && chmod 0777 "$WORK/pstamps-$db"; done
fi
# INFRA=warm: the infra starts now and stays (RCRUN_INFRA_LINGER=3600)
[ "$INFRA" = cold ] || $R run --rm client:latest true

for db in $DBS; do
  upfile "$db"
  n=$(iterations_of "$db")
  echo "== $db: $WARMUP warm-up + $n iterations per tool ($TOOLS)"
  for i in $(seq $((1 - WARMUP)) "$n"); do
    order=()
    for t in $TOOLS; do order+=("$t"); done
    [ $((i % 2)) = 0 ] || mapfile -t order < <(printf '%s\n' "${order[@]}" | tac)
    for t in "${order[@]}"; do "run_$t" "$db" "$i"; done
    tail -n ${#order[@]} "$RESULTS" | awk '{
      printf "   %s%-6s T_job-T0 %.3f s, db start-up %.3f s", ($3 < 1 ? "(warm-up) " : ""), $1, $5 - $4, $7 - $6
      if ($1 == "podman") printf " (run -d %.3f s, wait %.3f s / %d tries, job %.3f s)", $9 - $4, $10 - $9, $11, $5 - $10
      printf "\n" }'
  done
done

echo "== load average $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RESULTS" "$TOOLS" "$DBS" "$PODMAN_SLEEP" "$PROBE_PAUSE" "$INFRA" <<'EOF'
import statistics, sys
path, tools, dbs, sleep, pause, infra = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), *sys.argv[4:]
tools = [t for t in ("rcrun", "podman") if t in tools]
rows = {}
for line in open(path):
    tool, db, rnd, t0, tjob, ex, ready, gone, *extra = line.split()
    if int(rnd) < 1:
        continue  # warm-up
    t0, tjob, ex, ready = map(float, (t0, tjob, ex, ready))
    r = rows.setdefault((tool, db), {})
    add = lambda k, v: r.setdefault(k, []).append(v)
    add("total", tjob - t0)
    add("db", ready - ex)
    add("over", (tjob - t0) - (ready - ex))
    add("start", ex - t0)
    add("after", tjob - ready)
    if gone != "-":
        add("gone", float(gone))
    if extra:  # podman: run -d returned, the wait loop ended, tries
        trun, twait, tries = float(extra[0]), float(extra[1]), int(extra[2])
        add("run", trun - t0)
        add("wait", twait - trun)
        add("tries", tries)
        add("job", tjob - twait)
def values(tool, db, key):
    return rows.get((tool, db), {}).get(key) or []
def cell(tool, db, key):
    v = values(tool, db, key)
    if not v:
        return "–"
    return "%.0f ms (%.0f–%.0f)" % (statistics.median(v) * 1000, min(v) * 1000, max(v) * 1000)
print()
print("Every stamp is CLOCK_REALTIME ($EPOCHREALTIME, on the host for T0, in the containers for")
print("the rest): one clock for both tools. This VM's wall clock may run slow against real")
print("time, so absolute figures may be a little low; the comparison holds.")
print("median (min–max) over the iterations, warm-up dropped. In-container readiness probe:")
print(f"bash /dev/tcp connect to 127.0.0.1:PORT, {pause} s between tries. rcrun infra: {infra}.")
if "podman" in tools:
    print(f"podman: run -d, then `until podman exec db bash -c ': >/dev/tcp/127.0.0.1/PORT'; do sleep {sleep}; done`,")
    print("then run --rm the job; overlay storage, runc, netavark.")
print()
print("| scenario | " + " | ".join(tools) + " |")
print("| --- |" + " --- |" * len(tools))
for db in dbs:
    n = "/".join(str(len(values(t, db, "total"))) for t in tools)
    print(f"| {db}: overhead = (T_job − T0) − db start-up (n={n}) | " + " | ".join(cell(t, db, "over") for t in tools) + " |")
    print(f"| {db}: T_job − T0 | " + " | ".join(cell(t, db, "total") for t in tools) + " |")
    print(f"| {db}: db start-up (exec → port accepts) | " + " | ".join(cell(t, db, "db") for t in tools) + " |")
    print(f"| {db}: overhead before: T0 → exec | " + " | ".join(cell(t, db, "start") for t in tools) + " |")
    print(f"| {db}: overhead after: port accepts → T_job | " + " | ".join(cell(t, db, "after") for t in tools) + " |")
print()
for db in dbs:
    if values("podman", db, "run"):
        print("podman %s, medians: run -d %.0f ms, wait loop %.0f ms (%g tries), job run %.0f ms"
              % (db, statistics.median(values("podman", db, "run")) * 1000,
                 statistics.median(values("podman", db, "wait")) * 1000,
                 statistics.median(values("podman", db, "tries")),
                 statistics.median(values("podman", db, "job")) * 1000))
    g = values("rcrun", db, "gone")
    if g:
        print("rcrun %s: the service is gone %.1f s (%.1f–%.1f) after `rcrun up` exits (not timed above)"
              % (db, statistics.median(g), min(g), max(g)))
EOF
