//! Layers applied onto a directory, as they would be onto a mount of the layers below.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use snapshots::testing::Layer;
use snapshots::{Error, apply};

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn layers_merge_with_whiteouts_opaque_dirs_and_replacements() {
    let root = tempfile::tempdir().unwrap();
    let long = format!("deep/{}", "n".repeat(180));
    let base = Layer::new()
        .dir("etc")
        .file("etc/keep", b"keep", 0o644)
        .file("etc/gone", b"gone", 0o644)
        .link(tar::EntryType::Link, "etc/keep-link", "etc/keep")
        .dir("var/cache")
        .file("var/cache/old1", b"1", 0o644)
        .dir("var/cache/olddir")
        .file("var/cache/olddir/x", b"x", 0o644)
        .dir("usr/lib")
        .file("usr/lib/libx.so", b"lib", 0o755)
        .link(tar::EntryType::Symlink, "lib", "usr/lib")
        .file("replace-me", b"file", 0o644)
        .dir("dir-to-file")
        .file("dir-to-file/child", b"c", 0o644)
        .file("bin/su", b"setuid", 0o4755)
        .file(&long, b"long", 0o644)
        .file("données/été.txt", b"utf8", 0o644)
        .special(tar::EntryType::Fifo, "run/fifo")
        .bytes();
    let report = apply("base", &base[..], root.path()).unwrap();
    assert_eq!(report.entries, 18);

    let top = Layer::new()
        .file("etc/.wh.gone", b"", 0o644)
        .file("var/cache/new", b"new", 0o644)
        .file("var/cache/.wh..wh..opq", b"", 0o644)
        .file("var/cache/sub/deep", b"deep", 0o644)
        .file("lib/newlib.so", b"through the symlink", 0o755)
        .dir("replace-me")
        .file("replace-me/inner", b"i", 0o644)
        .file("dir-to-file", b"now a file", 0o644)
        .bytes();
    apply("top", &top[..], root.path()).unwrap();

    let r = root.path();
    let read = |p: &str| std::fs::read_to_string(r.join(p)).unwrap();
    assert_eq!(read("etc/keep"), "keep");
    assert!(!r.join("etc/gone").exists(), "whiteout deleted it");
    assert_eq!(
        std::fs::metadata(r.join("etc/keep")).unwrap().ino(),
        std::fs::metadata(r.join("etc/keep-link")).unwrap().ino(),
        "hardlink shares the inode"
    );
    let mut cache: Vec<String> = std::fs::read_dir(r.join("var/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    cache.sort();
    assert_eq!(
        cache,
        ["new", "sub"],
        "opaque hid the lower entries, kept this layer's"
    );
    assert_eq!(read("var/cache/sub/deep"), "deep");
    assert_eq!(
        std::fs::read_link(r.join("lib")).unwrap(),
        Path::new("usr/lib"),
        "symlink kept"
    );
    assert_eq!(read("usr/lib/newlib.so"), "through the symlink");
    assert!(r.join("replace-me").is_dir() && r.join("replace-me/inner").is_file());
    assert_eq!(read("dir-to-file"), "now a file");
    let su = std::fs::metadata(r.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid bit kept");
    assert_eq!(su.mtime(), 1_700_000_000);
    assert_eq!(read(&long), "long");
    assert_eq!(read("données/été.txt"), "utf8");
    assert!(
        std::fs::metadata(r.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn ownership_is_kept_where_allowed_and_reported_where_not() {
    let root = tempfile::tempdir().unwrap();
    let layer = Layer::new().file("owned", b"x", 0o640).bytes();
    let report = apply("own", &layer[..], root.path()).unwrap();
    let md = std::fs::metadata(root.path().join("owned")).unwrap();
    if is_root() {
        assert_eq!((md.uid(), md.gid()), (1234, 4321));
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    } else {
        assert_eq!(md.uid(), nix::unistd::Uid::effective().as_raw());
        assert!(
            report.warnings.iter().any(|w| w.contains("ownership")),
            "{:?}",
            report.warnings
        );
    }
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
}

#[test]
fn xattrs_and_devices() {
    let root = tempfile::tempdir().unwrap();
    let layer = Layer::new()
        .xattr_file("tagged", "user.rcrun.test", b"yes")
        .special(tar::EntryType::Char, "dev/null")
        .bytes();
    let report = apply("x", &layer[..], root.path()).unwrap();
    let mut value = [0u8; 8];
    let path = std::ffi::CString::new(root.path().join("tagged").to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("user.rcrun.test").unwrap();
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert_eq!(&value[..n.max(0) as usize], b"yes");
    if is_root() {
        assert!(
            std::fs::metadata(root.path().join("dev/null"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
    } else {
        assert!(!root.path().join("dev/null").exists());
        assert!(
            report.warnings.iter().any(|w| w.contains("device nodes")),
            "{:?}",
            report.warnings
        );
    }
}

#[test]
fn nothing_escapes_through_symlinks_or_links() {
    let outside = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "original").unwrap();
    let base = Layer::new()
        .link(
            tar::EntryType::Symlink,
            "escape",
            outside.path().to_str().unwrap(),
        )
        .link(tar::EntryType::Symlink, "up", "../../../../../../..")
        .link(
            tar::EntryType::Symlink,
            "victim-link",
            victim.to_str().unwrap(),
        )
        .bytes();
    apply("base", &base[..], root.path()).unwrap();
    let top = Layer::new()
        .file("escape/pwned", b"x", 0o644)
        .file("up/tmp/pwned2", b"x", 0o644)
        .file("victim-link", b"overwritten?", 0o644)
        .bytes();
    apply("top", &top[..], root.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "only the victim is outside"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    // Writes landed inside the root, where the symlinks resolve when the root is `/`.
    let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
    assert!(inside.join("pwned").is_file());
    assert!(root.path().join("tmp/pwned2").is_file());
    assert_eq!(
        std::fs::read_to_string(root.path().join("victim-link")).unwrap(),
        "overwritten?"
    );

    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    let target = b"../../../etc/passwd";
    h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
    h.set_path("innocent").unwrap();
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    let err = apply("evil", &b.into_inner().unwrap()[..], root.path()).unwrap_err();
    assert!(
        matches!(err, Error::UnsafeEntry { .. }) && err.to_string().contains("innocent"),
        "{err}"
    );
}

#[test]
fn a_truncated_layer_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let mut layer = Layer::new().file("big", &[1u8; 8192], 0o644).bytes();
    layer.truncate(2048);
    let err = apply("cut", &layer[..], root.path()).unwrap_err();
    assert!(err.to_string().contains("cut"), "{err}");
}
