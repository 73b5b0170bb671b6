# Subordinate id ranges through the setuid newuidmap/newgidmap: ids inside containers
# map onto the user's range, image files keep their owners, and a file a container user
# writes lands with the mapped id.
. "$VM_SCENARIOS/lib.sh"

rcrun pull -q "$BUSYBOX_LAYOUT" >/dev/null
map=$(rcrun run --rm busybox:1.35 cat /proc/self/uid_map | tr -s ' ' | tr '\n' ';')
expect_contains "uid_map" " 0 $(id -u) 1;" " $map"
expect_contains "uid_map" " 1 100000 65536;" " $map"
gmap=$(rcrun run --rm busybox:1.35 cat /proc/self/gid_map | tr -s ' ' | tr '\n' ';')
expect_contains "gid_map" " 1 100000 65536;" " $gmap"

expect_eq "id -u as 33" 33 "$(rcrun run --rm -u 33:33 busybox:1.35 id -u)"

# a bind-mounted directory shows the mapping from outside: container uid 33 is 100032
mkdir "$HOME/shared"
chmod 0777 "$HOME/shared"
rcrun run --rm -u 33:44 -v "$HOME/shared:/shared" busybox:1.35 sh -c 'echo x > /shared/by-33'
expect_eq "owner seen from outside" "100032:100043" "$(stat -c %u:%g "$HOME/shared/by-33")"
# and this user's own files are root's inside
touch "$HOME/shared/mine"
expect_eq "owner seen inside" "0:0" "$(rcrun run --rm -v "$HOME/shared:/shared" busybox:1.35 stat -c %u:%g /shared/mine)"
echo "ranges mapped: $map"
