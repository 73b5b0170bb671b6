# lib.sh: helpers for vm-tests scenarios. Each scenario runs under `sh -e` in the guest
# as the unprivileged user, with its own HOME and XDG_RUNTIME_DIR. Exit 0 passes, 77
# skips, anything else fails; the last lines of output are shown on failure.

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# expect_eq WHAT WANT GOT
expect_eq() {
  [ "$2" = "$3" ] || fail "$1: expected '$2', got '$3'"
}

# expect_contains WHAT NEEDLE HAYSTACK
expect_contains() {
  case $3 in
  *"$2"*) ;;
  *) fail "$1: expected to contain '$2', got '$3'" ;;
  esac
}

# expect_status WHAT CODE CMD...: CMD must exit with CODE; its output is in $out
expect_status() {
  _what=$1 _want=$2
  shift 2
  set +e
  out=$("$@" 2>&1)
  _got=$?
  set -e
  [ "$_got" = "$_want" ] || fail "$_what: expected exit $_want, got $_got: $out"
}

# retry SECONDS CMD...: runs CMD until it succeeds, backing off from 0.05 s to 1 s
retry() {
  _limit=$1 _waited=0 _pause=0.05
  shift
  until "$@"; do
    _waited=$(awk -v w="$_waited" -v p="$_pause" 'BEGIN { print w + p }')
    if awk -v w="$_waited" -v l="$_limit" 'BEGIN { exit !(w > l) }'; then
      fail "no success after ${_limit}s: $*"
    fi
    sleep "$_pause"
    _pause=$(awk -v p="$_pause" 'BEGIN { p *= 2; print (p > 1 ? 1 : p) }')
  done
}

# The fixture images, as OCI layouts in the payload.
BUSYBOX_LAYOUT=oci:$VM_IMAGES/busybox:1.35
LAYERS_LAYOUT=$VM_IMAGES/layers

echo "scenario as $(id -un) ($(id -u)) on $(uname -r)"
