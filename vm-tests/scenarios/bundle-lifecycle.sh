# A bundle through the runc-compatible interface: create, state, start, kill, delete,
# and run's exit code, rootless.
. "$VM_SCENARIOS/lib.sh"

bundle=$HOME/bundle
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/etc"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for applet in sh sleep cat echo id hostname; do ln -s busybox "$bundle/rootfs/bin/$applet"; done
rcrun oci spec --rootless -b "$bundle"
# the spec's default process is `sh`: make it a long sleep
sed -i 's|^      "sh"$|      "sh", "-c", "echo started; exec sleep 300"|' "$bundle/config.json"
# create/start detach from this shell: no terminal (it would need a console socket)
sed -i 's|"terminal": true|"terminal": false|' "$bundle/config.json"
grep -q 'exec sleep 300"' "$bundle/config.json" || fail "could not set the bundle's args"
grep -q '"terminal": false' "$bundle/config.json" || fail "could not turn the bundle's terminal off"

rcrun oci create -b "$bundle" life
expect_contains "state after create" '"status": "created"' "$(rcrun oci state life)"
rcrun oci start life
expect_contains "state after start" '"status": "running"' "$(rcrun oci state life)"
pid=$(rcrun oci state life | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
[ -n "$pid" ] && [ "$pid" -gt 1 ] || fail "no pid in the state"
# its own user namespace: root inside is this user, and the subordinate range follows
map=$(tr -s ' ' </proc/"$pid"/uid_map | tr '\n' ';')
expect_contains "the container's uid_map" " 0 $(id -u) 1;" " $map"
expect_contains "the container's uid_map" " 1 100000 65536;" " $map"
rcrun oci kill life KILL
retry 20 sh -c 'rcrun oci state life | grep -q "\"status\": \"stopped\""'
rcrun oci delete life
expect_status "state of a deleted container" 125 rcrun oci state life
expect_contains "the error" "life" "$out"

# run in the foreground returns the process's exit code
sed -i 's|"echo started; exec sleep 300"|"exit 7"|' "$bundle/config.json"
expect_status "oci run" 7 rcrun oci run -b "$bundle" seven
rcrun oci delete seven 2>/dev/null || true
echo "create/start/state/kill/delete and run's exit code work"
