//! Containers on an overlay rootfs, through the runtime's API, as root or as an
//! ordinary user (CI runs this binary as both).
//!
//! No libtest harness: starting a container needs a single-threaded process, so the
//! tests run one after another on the main thread. Arguments: name filters; flags
//! such as --nocapture are accepted and ignored; --list lists the tests.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use runtime::{CreateOptions, ExecOptions, OverlayDriver, RootfsOverlay, RunOptions, Runtime};
use serde_json::json;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A temp directory that also removes what overlay leaves unreadable (its mode-0
/// work dir), which a plain TempDir cannot as an ordinary user.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Self {
        Scratch(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn dir(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

fn make_removable(path: &Path) {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return;
    };
    if md.is_dir() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            make_removable(&entry.path());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        make_removable(self.path());
    }
}

/// Busybox and the usual mount points: the bottom layer.
fn install_busybox(layer: &Path) {
    for d in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(layer.join(d)).unwrap();
    }
    std::fs::set_permissions(layer.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).expect("install busybox-static");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
        }
    }
}

/// The names in a directory (none when it does not exist).
fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

fn whiteout(path: &Path) {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .unwrap();
}

fn is_whiteout(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// Overlay keeps its xattrs under `trusted.` for real root, under `user.` in a user
/// namespace (the `userxattr` option).
fn mark_opaque(dir: &Path, in_userns: bool) {
    let name = if in_userns {
        c"user.overlay.opaque"
    } else {
        c"trusted.overlay.opaque"
    };
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings and buffer.
    let ret = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(ret, 0, "setxattr {}", std::io::Error::last_os_error());
}

/// A bundle with an empty rootfs directory (the overlay's mount point) and the
/// default spec, writable, running `script` with sh.
fn bundle(dir: &Path, script: &str, userns_as_root: bool) -> PathBuf {
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let maps = runtime::current_user_mappings();
    let mut spec = serde_json::to_value(runtime::default_spec(
        (!is_root()).then_some((maps.0.as_slice(), maps.1.as_slice())),
    ))
    .unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["/bin/sh", "-c", script]);
    spec["root"]["readonly"] = json!(false);
    if userns_as_root {
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        let m = json!([{"containerID": 0, "hostID": ROOT_USERNS_HOST_ID, "size": 65536}]);
        spec["linux"]["uidMappings"] = m.clone();
        spec["linux"]["gidMappings"] = m;
        // No cgroup mount: a user namespace may not bind the host's hierarchy.
        spec["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["type"] != "cgroup");
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

const ROOT_USERNS_HOST_ID: u32 = 300000;

fn chown_tree(path: &Path, id: u32) {
    std::os::unix::fs::lchown(path, Some(id), Some(id)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), id);
        }
    }
}

/// Two lowers over busybox: the top one overrides /etc/motd, whites out /etc/gone
/// and makes /opaque opaque (hiding /opaque/old).
struct Layers {
    top: PathBuf,
    bottom: PathBuf,
}

fn two_layers(s: &Scratch, in_userns: bool) -> Layers {
    let bottom = s.dir("layers/bottom");
    install_busybox(&bottom);
    std::fs::write(bottom.join("etc/motd"), "bottom\n").unwrap();
    std::fs::write(bottom.join("etc/gone"), "gone\n").unwrap();
    std::fs::create_dir(bottom.join("opaque")).unwrap();
    std::fs::write(bottom.join("opaque/old"), "").unwrap();
    let top = s.dir("layers/top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/motd"), "top\n").unwrap();
    whiteout(&top.join("etc/gone"));
    std::fs::create_dir(top.join("opaque")).unwrap();
    std::fs::write(top.join("opaque/new"), "").unwrap();
    mark_opaque(&top.join("opaque"), in_userns);
    Layers { top, bottom }
}

fn overlay(lowers: &[&Path], upper: &Path, work: &Path) -> RootfsOverlay {
    RootfsOverlay {
        lowers: lowers.iter().map(|p| p.to_path_buf()).collect(),
        upper: upper.to_path_buf(),
        work: work.to_path_buf(),
        driver: OverlayDriver::Kernel,
    }
}

fn run(state: &Path, id: &str, bundle: &Path, overlay: RootfsOverlay) -> runtime::Result<i32> {
    Runtime::new(state).run(
        id,
        bundle,
        &RunOptions {
            overlay: Some(overlay),
            ..Default::default()
        },
    )
}

/// Each check exits with its own code, so a failure says which one.
const MERGED_VIEW: &str = r#"
[ "$(cat /etc/motd)" = top ] || exit 11
[ ! -e /etc/gone ] || exit 12
[ -e /opaque/new ] || exit 13
[ ! -e /opaque/old ] || exit 14
echo written > /written || exit 15
rm /etc/motd || exit 16
[ ! -e /etc/motd ] || exit 17
exit 0
"#;

fn check_merged_view(userns_as_root: bool) {
    let s = Scratch::new();
    let in_userns = !is_root() || userns_as_root;
    let layers = two_layers(&s, in_userns);
    let (upper, work) = (s.dir("upper"), s.dir("work"));
    let b = bundle(&s.path().join("bundle"), MERGED_VIEW, userns_as_root);
    if userns_as_root {
        // The container's root must own its layers and upper dir, as with any runtime.
        for dir in [&layers.top, &layers.bottom, &upper, &work] {
            chown_tree(dir, ROOT_USERNS_HOST_ID);
        }
    }
    let code = run(
        &s.path().join("state"),
        "merged",
        &b,
        overlay(&[&layers.top, &layers.bottom], &upper, &work),
    )
    .unwrap();
    assert_eq!(code, 0, "failed check {code} of the script {MERGED_VIEW}");
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).unwrap(),
        "written\n"
    );
    assert!(
        is_whiteout(&upper.join("etc/motd")),
        "the deletion is a whiteout in upper"
    );
    assert!(!layers.top.join("written").exists() && !layers.bottom.join("written").exists());
    assert_eq!(
        std::fs::read_to_string(layers.top.join("etc/motd")).unwrap(),
        "top\n"
    );
    assert!(layers.bottom.join("etc/gone").exists());
    assert!(
        entries(&s.path().join("state")).is_empty(),
        "foreground run leaves no state"
    );
}

fn merged_view_and_writes_land_in_upper() {
    check_merged_view(false);
}

/// As root, a container with its own user namespace mounts with `userxattr` too.
fn merged_view_as_root_in_a_user_namespace() {
    if !is_root() {
        println!("  (skipped: needs root)");
        return;
    }
    check_merged_view(true);
}

/// A created container's init is this process's child (create ran in-process).
fn wait_for_exit(pid: i32) {
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
}

/// Force-deletes containers made through `create`, also when a test fails.
struct Created<'a> {
    rt: &'a Runtime,
    ids: Vec<&'static str>,
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.rt.delete(id, true);
        }
    }
}

/// Two created containers share the lowers, each with its own upper, mounted at
/// once on the same bundle's rootfs (each in its own mount namespace). Each waits
/// on a fifo in the bottom layer until `exec` (which must see the overlay) opens it.
fn created_containers_sharing_lowers_are_isolated() {
    let s = Scratch::new();
    let layers = two_layers(&s, !is_root());
    nix::unistd::mkfifo(
        &layers.bottom.join("gate"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let b = bundle(
        &s.path().join("bundle"),
        "cat /gate; if [ -e /mine ]; then echo leaked; else echo isolated; fi > /result; hostname > /mine",
        false,
    );
    let rt = Runtime::new(s.path().join("state"));
    let mut created = Created {
        rt: &rt,
        ids: Vec::new(),
    };
    let mut uppers = Vec::new();
    for id in ["first", "second"] {
        let (upper, work) = (s.dir(&format!("{id}/upper")), s.dir(&format!("{id}/work")));
        let opts = CreateOptions {
            overlay: Some(overlay(&[&layers.top, &layers.bottom], &upper, &work)),
            ..Default::default()
        };
        rt.create(id, &b, &opts).unwrap();
        created.ids.push(id);
        uppers.push(upper);
    }
    let open_gate = ExecOptions {
        args: [
            "/bin/sh",
            "-c",
            "[ \"$(cat /etc/motd)\" = top ] && echo > /gate",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    for id in ["first", "second"] {
        let pid = rt.state(id).unwrap().pid;
        rt.start(id).unwrap();
        assert_eq!(rt.exec(id, &open_gate).unwrap(), 0, "exec into {id}");
        wait_for_exit(pid);
    }
    for upper in &uppers {
        assert_eq!(
            std::fs::read_to_string(upper.join("result")).unwrap(),
            "isolated\n",
            "{}",
            upper.display()
        );
        assert!(upper.join("mine").exists());
    }
    assert!(!layers.top.join("mine").exists() && !layers.bottom.join("mine").exists());
}

fn assert_refused(s: &Scratch, overlay: RootfsOverlay, says: &[&str]) {
    let b = bundle(&s.path().join("bundle"), "exit 0", false);
    let state = s.path().join("state");
    let err = run(&state, "refused", &b, overlay.clone()).unwrap_err();
    let create = Runtime::new(&state)
        .create(
            "refused",
            &b,
            &CreateOptions {
                overlay: Some(overlay),
                ..Default::default()
            },
        )
        .unwrap_err();
    for e in [&err, &create] {
        assert_eq!(e.exit_code(), 125, "{e}");
        for word in says {
            assert!(e.to_string().contains(word), "{e:?} should say {word}");
        }
    }
    let left = entries(&state);
    assert!(left.is_empty(), "state left behind: {left:?}");
}

fn missing_lower_is_refused_before_any_state() {
    let s = Scratch::new();
    let layers = two_layers(&s, !is_root());
    let missing = s.path().join("no-such-layer");
    assert_refused(
        &s,
        overlay(
            &[&layers.top, &missing, &layers.bottom],
            &s.dir("upper"),
            &s.dir("work"),
        ),
        &[&missing.to_string_lossy(), "lower layer"],
    );
}

/// A mount the kernel refuses (work inside upper) is reported with the step.
fn refused_mount_names_the_step() {
    let s = Scratch::new();
    let layers = two_layers(&s, !is_root());
    let upper = s.dir("upper");
    assert_refused(
        &s,
        overlay(&[&layers.top, &layers.bottom], &upper, &s.dir("upper/work")),
        &["mount the overlay rootfs (lowerdir=", "Invalid argument"],
    );
}

fn fuse_driver_without_fuse_overlayfs_is_refused() {
    if Command::new("fuse-overlayfs")
        .arg("--version")
        .output()
        .is_ok()
    {
        println!("  (skipped: fuse-overlayfs is installed)");
        return;
    }
    let s = Scratch::new();
    let layers = two_layers(&s, !is_root());
    let mut o = overlay(
        &[&layers.top, &layers.bottom],
        &s.dir("upper"),
        &s.dir("work"),
    );
    o.driver = OverlayDriver::Fuse;
    assert_refused(&s, o, &["fuse-overlayfs", "not in PATH"]);
}

/// Layers named like snapshots (64 hex digits): 50 fit in one page only when named
/// relative to their parent; 80 need the kernel's `lowerdir+`.
fn many_long_named_lowers_mount() {
    for count in [50, 80] {
        let s = Scratch::new();
        let mut lowers: Vec<PathBuf> = (0..count)
            .map(|i| {
                let layer = s.dir(&format!("snapshots/{i:064x}/fs"));
                std::fs::create_dir(layer.join("layers")).unwrap();
                std::fs::write(layer.join("layers").join(i.to_string()), "").unwrap();
                std::fs::write(layer.join("which"), format!("{i}\n")).unwrap();
                layer
            })
            .collect();
        lowers.reverse(); // top first: the highest number wins
        install_busybox(lowers.last().unwrap());
        let script = format!(
            "[ \"$(ls /layers | wc -l)\" = {count} ] || exit 11; [ \"$(cat /which)\" = {} ] || exit 12",
            count - 1
        );
        let b = bundle(&s.path().join("bundle"), &script, false);
        let refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        let code = run(
            &s.path().join("state"),
            "many",
            &b,
            overlay(&refs, &s.dir("upper"), &s.dir("work")),
        )
        .unwrap_or_else(|e| panic!("{count} layers: {e}"));
        assert_eq!(code, 0, "{count} layers: check {code} of {script}");
    }
}

fn probe_finds_the_kernel_overlay() {
    let s = Scratch::new();
    assert_eq!(
        runtime::probe_overlay(s.path()).unwrap(),
        OverlayDriver::Kernel
    );
    assert!(entries(s.path()).is_empty(), "the probe cleans up");
    assert!(runtime::probe_overlay(&s.path().join("missing")).is_err());
}

const TESTS: &[(&str, fn())] = &[
    (
        "merged_view_and_writes_land_in_upper",
        merged_view_and_writes_land_in_upper,
    ),
    (
        "merged_view_as_root_in_a_user_namespace",
        merged_view_as_root_in_a_user_namespace,
    ),
    (
        "created_containers_sharing_lowers_are_isolated",
        created_containers_sharing_lowers_are_isolated,
    ),
    (
        "missing_lower_is_refused_before_any_state",
        missing_lower_is_refused_before_any_state,
    ),
    ("refused_mount_names_the_step", refused_mount_names_the_step),
    (
        "fuse_driver_without_fuse_overlayfs_is_refused",
        fuse_driver_without_fuse_overlayfs_is_refused,
    ),
    ("many_long_named_lowers_mount", many_long_named_lowers_mount),
    (
        "probe_finds_the_kernel_overlay",
        probe_finds_the_kernel_overlay,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut failed = Vec::new();
    for (name, test) in TESTS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    if !failed.is_empty() {
        eprintln!("failed: {}", failed.join(", "));
        std::process::exit(101);
    }
}
