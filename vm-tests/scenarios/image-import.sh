# Images imported from OCI layouts in the payload: gzip and zstd layers, listed, run.
. "$VM_SCENARIOS/lib.sh"

rcrun pull "$BUSYBOX_LAYOUT"
expect_contains "images" "busybox" "$(rcrun images)"
expect_eq "run" "hello from $(uname -r)" "$(rcrun run --rm busybox:1.35 sh -c 'echo hello from $(uname -r)')"

rcrun pull "oci:$LAYERS_LAYOUT:zstd"
expect_eq "zstd image" "re-added after whiteout" "$(rcrun run --rm layers:zstd cat /data/sub/again.txt)"

# a layout that is not there: a clear error, exit 125
expect_status "missing layout" 125 rcrun pull "oci:$HOME/nowhere:1"
expect_contains "the error" "nowhere" "$out"
echo "imported and ran busybox and layers:zstd"
