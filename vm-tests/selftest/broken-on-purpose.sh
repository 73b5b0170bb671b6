# A scenario that must fail: CI runs it to prove a failing scenario fails the suite
# and is named in the report.
. "$VM_SCENARIOS/lib.sh"

rcrun pull -q "$BUSYBOX_LAYOUT" >/dev/null
expect_eq "what the container says" "goodbye" "$(rcrun run --rm busybox:1.35 echo hello)"
