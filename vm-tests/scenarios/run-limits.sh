# timeout: 240
# `rcrun run`'s docker-style limits, enforced in the delegated cgroup v2 tree (rootless):
# --memory OOM-kills a hog, --pids-limit refuses forks, --cpus becomes cpu.max; a bad
# value is refused with 125 before anything runs.
. "$VM_SCENARIOS/lib.sh"

rcrun pull -q "$BUSYBOX_LAYOUT" >/dev/null

expect_status "a memory hog under --memory 16m" 137 \
  rcrun run --rm --network none --memory 16m busybox:1.35 tail /dev/zero
echo "memory hog OOM-killed: ok"

out=$(rcrun run --rm --network none --pids-limit 8 busybox:1.35 sh -c '
  n=0
  while [ $n -lt 30 ]; do sleep 30 & n=$((n + 1)); done
  echo "forked $n"' 2>&1) || true
case $out in *"forked 30"*) fail "30 forks under --pids-limit 8: $out" ;; esac
expect_contains "a refused fork" "can't fork" "$out"
echo "forks refused at --pids-limit: ok"

# The container's cgroup is rcrun-ID beside the scenario's own, in the delegated tree.
rcrun run -d --name cpu --network none --cpus 1.5 busybox:1.35 sleep 120 >/dev/null
expect_eq "cpu.max of a container with --cpus 1.5" "150000 100000" "$(cat "$VM_CGROUP"/rcrun-*/cpu.max)"
rcrun rm -f cpu >/dev/null
retry 20 sh -c "! ls -d $VM_CGROUP/rcrun-* >/dev/null 2>&1"
echo "--cpus: ok, and rm removed the cgroup"

expect_status "a malformed --memory" 125 rcrun run --rm --network none --memory 12x busybox:1.35 true
expect_contains "the error names the flag" '--memory "12x"' "$out"
expect_eq "nothing left behind" "" "$(rcrun ps -aq)"
