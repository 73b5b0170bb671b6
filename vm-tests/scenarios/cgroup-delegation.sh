# The guest delegates a cgroup v2 subtree to the test user (as systemd does for a user
# session), so cgroup limits can be tested here: controllers, a child group, pids.max
# enforced on a fork storm.
. "$VM_SCENARIOS/lib.sh"

[ -w "$VM_CGROUP/cgroup.subtree_control" ] || fail "$VM_CGROUP is not delegated to $(id -un)"
expect_eq "this scenario's cgroup" "0::/user/scenario" "$(cat /proc/self/cgroup)"
for c in memory pids cpu; do
  expect_contains "controllers offered" "$c" "$(cat "$VM_CGROUP/cgroup.controllers")"
done
echo "+pids +memory" > "$VM_CGROUP/cgroup.subtree_control"
mkdir "$VM_CGROUP/limited"
echo 8 > "$VM_CGROUP/limited/pids.max"
echo 64M > "$VM_CGROUP/limited/memory.max"
out=$(sh -c 'echo $$ > '"$VM_CGROUP"'/limited/cgroup.procs
  n=0; for i in $(seq 1 20); do sleep 60 </dev/null >/dev/null 2>&1 & n=$((n+1)); done; echo started $n' 2>&1 || true)
echo "$out"
expect_contains "fork refused at pids.max" "fork" "$out"
[ "$(cat "$VM_CGROUP/limited/pids.events" | awk '/max/ { print $2 }')" -gt 0 ] || fail "pids.events shows no refusal"
# the shell gave up at the first refused fork, leaving its children: end the group
echo 1 > "$VM_CGROUP/limited/cgroup.kill"
retry 10 sh -c "[ -z \"\$(cat $VM_CGROUP/limited/cgroup.procs)\" ]"
rmdir "$VM_CGROUP/limited"
echo "delegated: $(cat "$VM_CGROUP/cgroup.controllers")"
