//! OCI layouts built here, byte by byte, imported into a fresh store.

use std::path::Path;

use serde_json::json;
use snapshots::testing::{Layout, hardlink_tar, tar_of};
use snapshots::{Compression, ContentStore, Digest, Error, Platform, import_layout};

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    (dir, store)
}

#[test]
fn imports_every_compression_and_verifies_diff_ids() {
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut layout = Layout::new();
        let base = tar_of(&[("etc/os-release", b"ID=test\n"), ("bin/sh", b"\x7fELF")]);
        let top = tar_of(&[("etc/.wh.os-release", b""), ("var/.wh..wh..opq", b"")]);
        let desc = layout.image(&[base.clone(), top.clone()], c, "amd64");
        layout.tag(desc, "v1");
        let (_d, store) = store();
        let img = import_layout(&store, layout.path(), Some("v1"), &amd64()).unwrap();
        assert_eq!(img.layers.len(), 2);
        assert_eq!(img.layers[0].diff_id, Digest::of(&base));
        assert_eq!(img.layers[1].compression, c);
        for l in &img.layers {
            assert!(store.contains(&l.digest));
        }
        assert!(store.contains(&img.manifest) && store.contains(&img.config));
        assert_eq!(img.chain_ids()[0], Digest::of(&base));
    }
}

#[test]
fn shared_layers_are_stored_once_and_tags_select_images() {
    let mut layout = Layout::new();
    let base = tar_of(&[("a", b"shared")]);
    let one = layout.image(
        &[base.clone(), tar_of(&[("b", b"1")])],
        Compression::Gzip,
        "amd64",
    );
    let two = layout.image(
        &[base.clone(), tar_of(&[("b", b"2")])],
        Compression::Gzip,
        "amd64",
    );
    layout.tag(one, "one");
    layout.tag(two, "two");
    let (_d, store) = store();
    let a = import_layout(&store, layout.path(), Some("one"), &amd64()).unwrap();
    let b = import_layout(&store, layout.path(), Some("two"), &amd64()).unwrap();
    assert_eq!(a.layers[0].digest, b.layers[0].digest);
    assert_ne!(a.manifest, b.manifest);
    // 2 manifests + 2 configs + 3 distinct layers
    assert_eq!(store.list().unwrap().len(), 7);

    let err = import_layout(&store, layout.path(), None, &amd64()).unwrap_err();
    assert!(
        err.to_string().contains("holds 2 images") && err.to_string().contains("one, two"),
        "{err}"
    );
    let err = import_layout(&store, layout.path(), Some("three"), &amd64()).unwrap_err();
    assert!(
        err.to_string().contains("no image tagged \"three\""),
        "{err}"
    );
}

#[test]
fn an_index_is_resolved_for_the_platform() {
    let mut layout = Layout::new();
    let amd = layout.image(&[tar_of(&[("arch", b"amd64")])], Compression::Gzip, "amd64");
    let arm = layout.image(&[tar_of(&[("arch", b"arm64")])], Compression::Gzip, "arm64");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd.clone(), arm.clone()]
    }))
    .unwrap();
    let index_desc = json!({"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": layout.blob(&index).to_string(), "size": index.len()});
    layout.tag(index_desc, "multi");
    let (_d, store) = store();
    let img = import_layout(
        &store,
        layout.path(),
        Some("multi"),
        &Platform::parse("linux/arm64").unwrap(),
    )
    .unwrap();
    assert_eq!(img.manifest.to_string(), arm["digest"].as_str().unwrap());
    let err = import_layout(
        &store,
        layout.path(),
        Some("multi"),
        &Platform::parse("linux/s390x").unwrap(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("linux/amd64, linux/arm64"),
        "{err}"
    );
}

#[test]
fn a_tampered_blob_is_rejected_and_not_kept() {
    let mut layout = Layout::new();
    let desc = layout.image(&[tar_of(&[("f", b"good")])], Compression::Gzip, "amd64");
    layout.tag(desc, "t");
    // Flip the content of the layer blob, keeping its name.
    let manifest: serde_json::Value = {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.path().join("index.json")).unwrap())
                .unwrap();
        let d: Digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        serde_json::from_slice(
            &std::fs::read(layout.path().join("blobs/sha256").join(d.hex())).unwrap(),
        )
        .unwrap()
    };
    let layer: Digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let path = layout.path().join("blobs/sha256").join(layer.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let (_d, store) = store();
    let err = import_layout(&store, layout.path(), Some("t"), &amd64()).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!store.contains(&layer), "the tampered blob is not kept");
}

#[test]
fn unsafe_and_truncated_layers_are_rejected() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (tar_of(&[("../../etc/passwd", b"x")]), "'..'"),
        (tar_of(&[("/etc/passwd", b"x")]), "absolute"),
        (hardlink_tar("innocent", "../../../etc/shadow"), "hardlink"),
    ];
    for (tar, needle) in cases {
        let mut layout = Layout::new();
        let desc = layout.image(&[tar], Compression::Gzip, "amd64");
        layout.tag(desc, "bad");
        let (_d, store) = store();
        let err = import_layout(&store, layout.path(), Some("bad"), &amd64()).unwrap_err();
        assert!(
            matches!(err, Error::UnsafeEntry { .. }) && err.to_string().contains(needle),
            "{err}"
        );
    }
    // A layer cut in half: its digest matches (the image was built that way), the tar does not.
    let mut layout = Layout::new();
    let mut tar = tar_of(&[("big", &[7u8; 4096][..])]);
    tar.truncate(1024);
    let desc = layout.image(&[tar], Compression::None, "amd64");
    layout.tag(desc, "cut");
    let (_d, store) = store();
    let err = import_layout(&store, layout.path(), Some("cut"), &amd64()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn a_wrong_diff_id_or_a_missing_layout_is_an_error() {
    let mut layout = Layout::new();
    let desc = layout.image(&[tar_of(&[("f", b"x")])], Compression::Zstd, "amd64");
    layout.tag(desc.clone(), "t");
    // Rewrite the config with a wrong diff id (and the manifest to point at it).
    let d: Digest = desc["digest"].as_str().unwrap().parse().unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.path().join("blobs/sha256").join(d.hex())).unwrap(),
    )
    .unwrap();
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"other").to_string()]}}))
    .unwrap();
    manifest["config"]["digest"] = json!(layout.blob(&config).to_string());
    manifest["config"]["size"] = json!(config.len());
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let mut layout2 = Layout {
        dir: layout.dir,
        manifests: vec![],
    };
    let desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": layout2.blob(&manifest).to_string(), "size": manifest.len()});
    layout2.tag(desc, "wrong");
    let (_d, store) = store();
    let err = import_layout(&store, layout2.path(), Some("wrong"), &amd64()).unwrap_err();
    assert!(err.to_string().contains("diff id"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = import_layout(&store, empty.path(), None, &amd64()).unwrap_err();
    assert!(err.to_string().contains("not an OCI image layout"), "{err}");
}

// ---- single-file archives ----

fn tar_dir(dir: &Path) -> tempfile::NamedTempFile {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut b = tar::Builder::new(out.reopen().unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
    out
}

#[test]
fn oci_archive_imports_like_its_layout() {
    let mut layout = Layout::new();
    let desc = layout.image(&[tar_of(&[("f", b"archived")])], Compression::Zstd, "amd64");
    layout.tag(desc, "v2");
    let archive = tar_dir(layout.path());
    let (_d, store) = store();
    let from_archive =
        snapshots::import_oci_archive(&store, archive.path(), Some("v2"), &amd64()).unwrap();
    let from_layout = import_layout(&store, layout.path(), Some("v2"), &amd64()).unwrap();
    assert_eq!(from_archive, from_layout);
    let err =
        snapshots::import_oci_archive(&store, archive.path(), Some("nope"), &amd64()).unwrap_err();
    assert!(err.to_string().contains("tags: v2"), "{err}");
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        junk.path(),
        b"this is not a tar archive at all, just some bytes",
    )
    .unwrap();
    assert!(snapshots::import_oci_archive(&store, junk.path(), None, &amd64()).is_err());
}

fn docker_archive(files: &[(&str, Vec<u8>)], links: &[(&str, &str)]) -> tempfile::NamedTempFile {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut b = tar::Builder::new(out.reopen().unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.finish().unwrap();
    out
}

#[test]
fn docker_archive_with_a_symlinked_duplicate_layer() {
    let layer = tar_of(&[("same", b"twice")]);
    let diff = Digest::of(&layer).to_string();
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff, diff]}}))
    .unwrap();
    let manifest = serde_json::to_vec(
        &json!([{"Config": "cfg.json", "RepoTags": ["busybox:latest", "busybox:1.35"],
        "Layers": ["l1/layer.tar", "l2/layer.tar"]}]),
    )
    .unwrap();
    let archive = docker_archive(
        &[
            ("manifest.json", manifest),
            ("cfg.json", config.clone()),
            ("l1/layer.tar", layer.clone()),
        ],
        &[("l2/layer.tar", "../l1/layer.tar")],
    );
    let (_d, store) = store();
    let img = snapshots::import_docker_archive(&store, archive.path(), Some("busybox"), &amd64())
        .unwrap();
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[0].digest, img.layers[1].digest);
    assert_eq!(img.config, Digest::of(&config));
    let again =
        snapshots::import_docker_archive(&store, archive.path(), Some("busybox:1.35"), &amd64())
            .unwrap();
    assert_eq!(
        again.manifest, img.manifest,
        "the implied manifest is deterministic"
    );
    let err = snapshots::import_docker_archive(&store, archive.path(), Some("redis:7"), &amd64())
        .unwrap_err();
    assert!(
        err.to_string().contains("busybox:latest, busybox:1.35"),
        "{err}"
    );
}

#[test]
fn docker_archive_errors_name_the_problem() {
    let layer = tar_of(&[("f", b"x")]);
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"something else").to_string()]}}))
    .unwrap();
    let manifest =
        serde_json::to_vec(&json!([{"Config": "c.json", "Layers": ["l/layer.tar"]}])).unwrap();
    let (_d, store) = store();
    let wrong = docker_archive(
        &[
            ("manifest.json", manifest.clone()),
            ("c.json", config.clone()),
            ("l/layer.tar", layer),
        ],
        &[],
    );
    let err = snapshots::import_docker_archive(&store, wrong.path(), None, &amd64()).unwrap_err();
    assert!(err.to_string().contains("diff id"), "{err}");
    let missing = docker_archive(&[("manifest.json", manifest), ("c.json", config)], &[]);
    let err = snapshots::import_docker_archive(&store, missing.path(), None, &amd64()).unwrap_err();
    assert!(err.to_string().contains("l/layer.tar"), "{err}");
    let escaping = docker_archive(
        &[("manifest.json", b"[]".to_vec())],
        &[("x/layer.tar", "../../../etc/passwd")],
    );
    let err =
        snapshots::import_docker_archive(&store, escaping.path(), None, &amd64()).unwrap_err();
    assert!(matches!(err, Error::UnsafeEntry { .. }), "{err}");
}
