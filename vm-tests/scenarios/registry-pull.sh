# timeout: 240
# needs: registry
# A pull from a registry served in the guest on 127.0.0.1 (Debian's docker-registry),
# verified against the layout the registry was filled from.
. "$VM_SCENARIOS/lib.sh"

[ -n "${VM_REGISTRY:-}" ] || fail "the guest has no registry (see the setup events)"
rcrun pull "$VM_REGISTRY/busybox:1.35"
expect_eq "run" "pulled" "$(rcrun run --rm "$VM_REGISTRY/busybox:1.35" echo pulled)"
want=$(sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*"org.opencontainers.image.ref.name":"1.35".*/\1/p' "$VM_IMAGES/busybox/index.json")
[ -n "$want" ] || fail "no 1.35 digest in the layout's index"
expect_contains "the pulled image's digest" "$want" "$(rcrun images --format json)"

expect_status "unknown tag" 125 rcrun pull "$VM_REGISTRY/busybox:no-such-tag"
expect_contains "the error" "no-such-tag" "$out"
echo "pulled $want"
