//! Real images built from Debian packages by scripts/fixtures (umoci, not this
//! project's code), imported and unpacked by rcrun. `scripts/setup` builds them.

mod common;

use std::path::{Path, PathBuf};

use rcrun::images::Images;
use snapshots::{Platform, import_layout};

use common::{fixture, repo};

/// fixtures/tree-list.py over the merged snapshots of `lowers`.
fn tree_list(lowers: &[PathBuf], scratch: &Path, paths: &[&str]) -> String {
    let script = repo().join("fixtures/tree-list.py");
    common::inspect_merged(lowers, scratch, |mnt| {
        let listed = std::process::Command::new("python3")
            .arg(&script)
            .arg(mnt)
            .args(paths)
            .output()
            .map_err(|e| e.to_string())?;
        if !listed.status.success() {
            return Err(String::from_utf8_lossy(&listed.stderr).into_owned());
        }
        String::from_utf8(listed.stdout).map_err(|e| e.to_string())
    })
}

#[test]
fn layers_fixture_unpacks_to_the_expected_tree_in_every_compression() {
    let layout = fixture("layers");
    let expected = std::fs::read_to_string(repo().join("fixtures/layers-expected.txt")).unwrap();
    for tag in ["gzip", "zstd", "plain"] {
        let data = tempfile::tempdir().unwrap();
        let images = Images::open(data.path()).unwrap();
        let image = import_layout(images.content(), &layout, Some(tag), &Platform::host()).unwrap();
        let report = images.unpack(&image).unwrap();
        assert_eq!(report.unpacked, image.layers.len(), "{tag}: {report:?}");
        assert!(report.warnings.is_empty(), "{tag}: {:?}", report.warnings);
        let lowers = images.snapshots().lowerdirs(&image.chain_ids()).unwrap();
        let tree = tree_list(&lowers, data.path(), &["data", "opaque", "etc/motd"]);
        assert_eq!(tree, expected, "merged tree of layers:{tag}");
    }
}

#[test]
fn busybox_fixture_imports_and_unpacks() {
    let layout = fixture("busybox");
    let data = tempfile::tempdir().unwrap();
    let images = Images::open(data.path()).unwrap();
    let image = import_layout(images.content(), &layout, None, &Platform::host()).unwrap();
    assert_eq!(images.unpack(&image).unwrap().unpacked, 1);
    let fs = images.snapshots().fs(&image.chain_ids()[0]);
    assert!(fs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(fs.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
}

#[test]
fn layers_fixture_copied_without_overlay_matches_the_expected_tree() {
    let layout = fixture("layers");
    let expected = std::fs::read_to_string(repo().join("fixtures/layers-expected.txt")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let images = Images::open(data.path()).unwrap();
    let image = import_layout(images.content(), &layout, Some("zstd"), &Platform::host()).unwrap();
    images.unpack(&image).unwrap();
    let lowers = images.snapshots().lowerdirs(&image.chain_ids()).unwrap();
    let flat = data.path().join("flat");
    let listing = data.path().join("flat.txt");
    let script = repo().join("fixtures/tree-list.py");
    std::fs::create_dir(&flat).unwrap();
    // The copy fallback of `rcrun run`, and the listing, inside the user namespace
    // where the image's owners are real.
    runtime::run_in_user_namespace("flatten the layers image", || {
        snapshots::flatten(&lowers, &flat).map_err(|e| e.to_string())?;
        let listed = std::process::Command::new("python3")
            .arg(&script)
            .arg(&flat)
            .args(["data", "opaque", "etc/motd"])
            .output()
            .map_err(|e| e.to_string())?;
        if !listed.status.success() {
            return Err(String::from_utf8_lossy(&listed.stderr).into_owned());
        }
        std::fs::write(&listing, listed.stdout).map_err(|e| e.to_string())
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(&listing).unwrap(), expected);
}
