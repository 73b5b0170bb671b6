# timeout: 3
# A scenario that must hit its time limit: the agent kills it and reports a timeout,
# and the next scenario still runs.
. "$VM_SCENARIOS/lib.sh"

rcrun pull -q "$BUSYBOX_LAYOUT" >/dev/null
rcrun run -d --name sleeper busybox:1.35 sleep 600 >/dev/null
echo "sleeping past the limit"
sleep 600
