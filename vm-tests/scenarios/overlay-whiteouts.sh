# The overlay rootfs on the guest's kernel, with rcrun's storage on ext4 (an overlay
# upper on tmpfs cannot remove lower directories on 6.1): the layers fixture's
# whiteouts, opaque directory and hard links, then changes made in a container.
. "$VM_SCENARIOS/lib.sh"

expect_eq "storage filesystem" ext2/ext3 "$(stat -f -c %T "$HOME")"
rcrun pull "oci:$LAYERS_LAYOUT:gzip"

# what the layers left: whiteouts applied, /opaque hides everything below it
expect_eq "a whited-out file" "gone" "$(rcrun run --rm layers:gzip sh -c 'test -e /data/remove-me.txt && echo there || echo gone')"
expect_eq "the opaque dir" "new-c" "$(rcrun run --rm layers:gzip ls /opaque)"
expect_eq "re-added after a whiteout" "re-added after whiteout" "$(rcrun run --rm layers:gzip cat /data/sub/again.txt)"
expect_eq "hard links" "2 2" "$(rcrun run --rm layers:gzip sh -c 'echo $(stat -c %h /data/keep.txt) $(stat -c %h /data/hardlink-to-keep)')"
expect_eq "same inode" "yes" "$(rcrun run --rm layers:gzip sh -c '[ $(stat -c %i /data/keep.txt) = $(stat -c %i /data/hardlink-to-keep) ] && echo yes')"
expect_eq "an owner from the image" "1000:1000" "$(rcrun run --rm layers:gzip stat -c %u:%g /data/owned-1000-kept)"

# changes in a container: remove a lower directory and make it again (opaque), remove a
# lower file (whiteout), rename a lower directory; a second container sees the image again
out=$(rcrun run --rm layers:gzip sh -ec '
  rm -r /data/sub; mkdir /data/sub; test ! -e /data/sub/again.txt
  rm /data/keep.txt; test ! -e /data/keep.txt; cat /data/hardlink-to-keep
  mv /data/file-then-dir /data/renamed; test -f /data/renamed/inside
  rm -r /opaque; test ! -e /opaque
  echo changed')
expect_eq "changes in the container" "$(printf 'keep\nchanged')" "$out"
expect_eq "a fresh container" "re-added after whiteout" "$(rcrun run --rm layers:gzip cat /data/sub/again.txt)"

echo "whiteouts, opaque dirs and hard links hold on $(uname -r)"
