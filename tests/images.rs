//! Unpacking imported images into chain-id snapshots inside the user namespace.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

mod common;

use rcrun::images::Images;
use snapshots::testing::{Layer, Layout};
use snapshots::{Compression, Platform, import_layout};

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

/// The merged tree as seen inside the user namespace: "path type uid:gid" lines.
fn merged_listing(lowers: &[std::path::PathBuf], scratch: &Path) -> String {
    common::inspect_merged(lowers, scratch, |mnt| {
        let mut lines = Vec::new();
        let mut stack = vec![mnt.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).map_err(|e| e.to_string())? {
                let e = e.map_err(|e| e.to_string())?;
                let md = std::fs::symlink_metadata(e.path()).map_err(|e| e.to_string())?;
                let kind = if md.is_dir() {
                    "dir"
                } else if md.file_type().is_symlink() {
                    "link"
                } else {
                    "file"
                };
                lines.push(format!(
                    "{} {kind} {}:{}",
                    e.path().strip_prefix(mnt).unwrap().display(),
                    md.uid(),
                    md.gid()
                ));
                if md.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        lines.sort();
        Ok(lines.join("\n"))
    })
}

#[test]
fn layers_unpack_into_shared_snapshots_with_owners_and_whiteouts() {
    let base = Layer::new()
        .owner(0, 0)
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .file("etc/gone", b"deleted above", 0o644)
        .dir("var/cache")
        .file("var/cache/a", b"a", 0o644)
        .file("var/cache/b", b"b", 0o644)
        .dir("var/old")
        .file(
            "var/old/child",
            b"a lower directory the top layer deletes",
            0o644,
        )
        .dir("usr/lib")
        .symlink("lib", "usr/lib")
        .owner(1000, 1000)
        .dir("home/app")
        .file("home/app/data", b"app data", 0o600)
        .bytes();
    let top = Layer::new()
        .owner(0, 0)
        .file("etc/.wh.gone", b"", 0o644)
        .file("var/.wh.old", b"", 0o644)
        .file("var/cache/.wh..wh..opq", b"", 0o644)
        .file("var/cache/c", b"c", 0o644)
        .file("lib/libnew.so", b"through the image's symlink", 0o755)
        .bytes();
    let other_top = Layer::new()
        .owner(0, 0)
        .file("only-in-b", b"b", 0o644)
        .bytes();
    let mut layout = Layout::new();
    let a = layout.image(&[base.clone(), top], Compression::Gzip, "amd64");
    layout.tag(a, "a");
    let b = layout.image(&[base, other_top], Compression::Zstd, "amd64");
    layout.tag(b, "b");

    let data = tempfile::tempdir().unwrap();
    let images = Images::open(data.path()).unwrap();
    let image_a = import_layout(images.content(), layout.path(), Some("a"), &amd64()).unwrap();
    let report = images.unpack(&image_a).unwrap();
    assert_eq!((report.unpacked, report.reused), (2, 0), "{report:?}");
    assert!(
        report.warnings.is_empty(),
        "ids 0 and 1000 are mapped: {:?}",
        report.warnings
    );
    // The shared base layer is unpacked once.
    let image_b = import_layout(images.content(), layout.path(), Some("b"), &amd64()).unwrap();
    let report = images.unpack(&image_b).unwrap();
    assert_eq!((report.unpacked, report.reused), (1, 1), "{report:?}");
    assert_eq!(
        images.unpack(&image_a).unwrap().unpacked,
        0,
        "nothing twice"
    );
    assert_eq!(images.snapshots().list().unwrap().len(), 3);

    let chains = image_a.chain_ids();
    let listing = merged_listing(&images.snapshots().lowerdirs(&chains).unwrap(), data.path());
    let expected = "\
etc dir 0:0
etc/passwd file 0:0
home dir 0:0
home/app dir 1000:1000
home/app/data file 1000:1000
lib link 0:0
usr dir 0:0
usr/lib dir 0:0
usr/lib/libnew.so file 0:0
var dir 0:0
var/cache dir 0:0
var/cache/c file 0:0";
    assert_eq!(listing, expected);

    // On the host: the deletion is an overlay whiteout in the top layer's diff, and
    // uid 1000 of the image sits on the subordinate id that maps to it.
    let top_fs = images.snapshots().fs(&chains[1]);
    let whiteout = std::fs::symlink_metadata(top_fs.join("etc/gone")).unwrap();
    assert!(
        whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
        "etc/gone is a whiteout"
    );
    let data_owner = std::fs::metadata(images.snapshots().fs(&chains[0]).join("home/app/data"))
        .unwrap()
        .uid();
    if common::is_root() {
        assert_eq!(data_owner, 1000);
    } else {
        let (uids, _, ranges) = runtime::current_user_mappings();
        assert!(
            ranges,
            "the test user needs subordinate ids (scripts/setup adds them)"
        );
        assert_eq!(data_owner, uids[1].host_id() + 999);
    }
}
