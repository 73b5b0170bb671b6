# timeout: 300
# linux.resources enforced by rcrun in the delegated cgroup v2 tree, rootless through
# `rcrun oci`: a memory hog is OOM-killed at memory.max, a fork bomb stops at pids.max,
# the process is in its cgroup before it runs anything (and so is an exec'd one),
# update changes limits of a running container, pause/resume freeze and thaw it, and
# delete (or the end of a foreground run) removes the cgroup.
. "$VM_SCENARIOS/lib.sh"

rootfs=$HOME/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in sh sleep cat echo tail seq; do ln -s busybox "$rootfs/bin/$applet"; done
cat >"$rootfs/bomb" <<'EOF'
n=0
while [ $n -lt 40 ]; do
  sleep 120 &
  n=$((n + 1))
done
echo "forked $n"
EOF

# make_bundle NAME SCRIPT RESOURCES_JSON: a rootless bundle running `sh -c SCRIPT` (no
# double quotes in it) with those linux.resources
make_bundle() {
  _b=$HOME/$1
  mkdir -p "$_b"
  rcrun oci spec --rootless -b "$_b"
  sed -i -e 's|"terminal": true|"terminal": false|' \
    -e "s|\"path\": \"rootfs\"|\"path\": \"$rootfs\"|" \
    -e "s|^      \"sh\"\$|      \"sh\", \"-c\", \"$2\"|" \
    -e "s|^  \"linux\": {\$|  \"linux\": { \"resources\": $3,|" "$_b/config.json"
  grep -q '"resources"' "$_b/config.json" || fail "could not set resources in $_b/config.json"
  grep -q "\"$2\"" "$_b/config.json" || fail "could not set the process of $_b/config.json"
}

status_of() { rcrun oci state "$1" | sed -n 's/.*"status": "\([a-z]*\)".*/\1/p'; }
pid_of() { rcrun oci state "$1" | sed -n 's/.*"pid": \([0-9]*\).*/\1/p'; }

# 1. Born in its cgroup: the first command's view, with and without a cgroup namespace.
make_bundle place 'cat /proc/self/cgroup' '{"pids": {"limit": 50}}'
expect_eq "cgroup seen by the first command (cgroup namespace)" "0::/" "$(rcrun oci run -b "$HOME/place" place)"
[ ! -e "$VM_CGROUP/rcrun-place" ] || fail "a foreground run left its cgroup behind"
sed -i 's|"type": "cgroup"|"type": "time"|' "$HOME/place/config.json"
expect_eq "cgroup seen by the first command (host view)" "0::/user/rcrun-place" "$(rcrun oci run -b "$HOME/place" place)"
echo "placed before it runs: ok"

# 2. A memory hog is OOM-killed at memory.max.
make_bundle hog 'tail /dev/zero' '{"memory": {"limit": 16777216}}'
expect_status "memory hog under 16 MiB" 137 rcrun oci run -b "$HOME/hog" hog
rcrun oci create -b "$HOME/hog" hog2
expect_eq "memory.max" 16777216 "$(cat "$VM_CGROUP/rcrun-hog2/memory.max")"
rcrun oci start hog2
retry 60 sh -c '[ "$(rcrun oci state hog2 | sed -n "s/.*\"status\": \"\([a-z]*\)\".*/\1/p")" = stopped ]'
kills=$(awk '/^oom_kill / { print $2 }' "$VM_CGROUP/rcrun-hog2/memory.events")
[ "${kills:-0}" -ge 1 ] || fail "memory.events shows no oom_kill: $(cat "$VM_CGROUP/rcrun-hog2/memory.events")"
rcrun oci delete hog2
[ ! -e "$VM_CGROUP/rcrun-hog2" ] || fail "delete left the cgroup behind"
echo "memory hog OOM-killed ($kills): ok"

# 3. A fork bomb stops at pids.max.
make_bundle bomb 'sh /bomb; exec sleep 120' '{"pids": {"limit": 10}}'
rcrun oci run -d -b "$HOME/bomb" bomb
retry 30 sh -c "[ \"\$(awk '/^max / { print \$2 }' $VM_CGROUP/rcrun-bomb/pids.events)\" -gt 0 ]"
# the bomb's shell gives up at the first refused fork and exits, its sleeps stay
retry 30 sh -c "[ \$(cat $VM_CGROUP/rcrun-bomb/pids.current) -lt 10 ]"
procs=$(wc -l <"$VM_CGROUP/rcrun-bomb/cgroup.procs")
[ "$procs" -ge 5 ] && [ "$procs" -lt 10 ] || fail "$procs processes left in a cgroup with pids.max 10"
expect_eq "ps lists every process" "$procs" "$(rcrun oci ps --format json bomb | tr ',' '\n' | wc -l)"
rcrun oci delete --force bomb
[ ! -e "$VM_CGROUP/rcrun-bomb" ] || fail "delete --force left the cgroup behind"
echo "fork bomb stopped at pids.max ($procs processes): ok"

# 4. update, pause/resume, exec and kill --all on a running container.
make_bundle live 'exec sleep 300' '{"pids": {"limit": 20}, "memory": {"limit": 67108864}}'
rcrun oci run -d -b "$HOME/live" live
cg=$VM_CGROUP/rcrun-live
pid=$(pid_of live)
expect_eq "the container's process in its cgroup" "0::/user/rcrun-live" "$(cat /proc/"$pid"/cgroup)"
rcrun oci update --pids-limit 5 --memory 33554432 live
expect_eq "pids.max after update" 5 "$(cat "$cg/pids.max")"
expect_eq "memory.max after update" 33554432 "$(cat "$cg/memory.max")"
expect_eq "exec'd process's cgroup" "0::/" "$(rcrun oci exec live cat /proc/self/cgroup)"
rcrun oci pause live
expect_eq "state after pause" paused "$(status_of live)"
expect_contains "cgroup.events after pause" "frozen 1" "$(cat "$cg/cgroup.events")"
expect_status "exec into a paused container" 125 rcrun oci exec live true
rcrun oci resume live
expect_eq "state after resume" running "$(status_of live)"
expect_contains "cgroup.events after resume" "frozen 0" "$(cat "$cg/cgroup.events")"
expect_eq "ps" "[$pid]" "$(rcrun oci ps --format json live)"
rcrun oci kill --all live KILL
retry 20 sh -c '[ "$(rcrun oci state live | sed -n "s/.*\"status\": \"\([a-z]*\)\".*/\1/p")" = stopped ]'
rcrun oci delete live
[ ! -e "$cg" ] || fail "delete left $cg behind"
echo "update, pause/resume, exec, kill --all, delete: ok"
