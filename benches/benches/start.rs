//! Container start latency through the real `rcrun` binary: `/bin/true` in a busybox bundle.
//!
//! * `start/run`: `rcrun oci --root S run --bundle B ID` (create + start + wait + delete).
//! * `start/create_start_delete`: `create`, `start`, poll `state` until stopped, `delete`.
//!
//! As an ordinary user the bundle is rootless (`rcrun oci spec --rootless`); as root it is
//! a root-mode bundle (`rcrun oci spec`). The binary is `$RCRUN_BIN`, else
//! `target/release/rcrun`, else `target/debug/rcrun` of this workspace.
//!
//! `cargo bench -p benches -- --warm-up-time 1 --measurement-time 5`

use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A unique container id, so a run that failed half-way cannot collide with the next one.
fn fresh_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

fn find_rcrun() -> PathBuf {
    if let Some(bin) = std::env::var_os("RCRUN_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "RCRUN_BIN={} is not a file", bin.display());
        eprintln!("rcrun binary: {} (from RCRUN_BIN)", bin.display());
        return bin;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let bin = workspace.join("target").join(profile).join("rcrun");
        if bin.is_file() {
            let bin = bin.canonicalize().unwrap_or(bin);
            eprintln!("rcrun binary: {} ({profile} build)", bin.display());
            return bin;
        }
    }
    panic!(
        "no rcrun binary: run `cargo build --release -p rcrun` first, or set RCRUN_BIN=/path/to/rcrun"
    );
}

/// Everything one benchmark run needs: the binary, a bundle and a private state root.
struct Fixture {
    rcrun: PathBuf,
    bundle: PathBuf,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let rcrun = find_rcrun();
        let dir = tempfile::Builder::new()
            .prefix("rcrun-bench-")
            .tempdir()
            .expect("create a temp dir");
        let bundle = dir.path().join("bundle");
        let state = dir.path().join("state");
        fs::create_dir_all(&state).expect("create the state root");
        make_rootfs(&bundle.join("rootfs"));

        let fixture = Fixture {
            rcrun,
            bundle,
            state,
            _dir: dir,
        };
        fixture.write_config();
        fixture
    }

    fn rcrun(&self) -> Command {
        let mut cmd = Command::new(&self.rcrun);
        cmd.arg("oci").arg("--root").arg(&self.state);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `rcrun oci spec [--rootless]`, then process.args = ["/bin/true"], no terminal.
    fn write_config(&self) {
        let root = is_root();
        let mut cmd = Command::new(&self.rcrun);
        cmd.args(["oci", "spec"]);
        if !root {
            cmd.arg("--rootless");
        }
        cmd.arg("--bundle").arg(&self.bundle);
        checked(cmd.output(), "rcrun oci spec");

        let path = self.bundle.join("config.json");
        let text = fs::read_to_string(&path).expect("read config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&text).expect("parse config.json");
        cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
        cfg["process"]["terminal"] = serde_json::json!(false);
        fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).expect("write config.json");
        eprintln!(
            "bundle: {} ({} mode)",
            self.bundle.display(),
            if root { "root" } else { "rootless" }
        );
    }

    /// One `rcrun oci run`: create, start, wait, delete.
    fn run_once(&self) {
        let id = fresh_id("run");
        let mut cmd = self.rcrun();
        cmd.arg("run")
            .arg("--bundle")
            .arg(&self.bundle)
            .arg(&id)
            .stdout(Stdio::null());
        checked(cmd.output(), "rcrun oci run");
    }

    /// The same lifecycle as separate commands, the way containerd and podman drive it.
    fn create_start_delete_once(&self) {
        let id = fresh_id("csd");
        // The container inherits create's stdio: a pipe would keep create's output open
        // until the container exits, so stderr goes to a file.
        let err_path = self.state.join(format!("{id}.create.err"));
        let err = File::create(&err_path).expect("create the stderr file");
        let status = self
            .rcrun()
            .arg("create")
            .arg("--bundle")
            .arg(&self.bundle)
            .arg(&id)
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .expect("spawn rcrun oci create");
        if !status.success() {
            panic!(
                "rcrun oci create {id}: {status}: {}",
                fs::read_to_string(&err_path).unwrap_or_default().trim()
            );
        }
        let _ = fs::remove_file(&err_path);

        checked(
            self.rcrun().arg("start").arg(&id).output(),
            "rcrun oci start",
        );

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = checked(
                self.rcrun().arg("state").arg(&id).output(),
                "rcrun oci state",
            );
            let state: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("rcrun oci state prints JSON");
            if state["status"] == "stopped" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} not stopped after 10 s: {state}"
            );
        }

        checked(
            self.rcrun().arg("delete").arg(&id).output(),
            "rcrun oci delete",
        );
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn checked(res: std::io::Result<Output>, what: &str) -> Output {
    let out = res.unwrap_or_else(|e| panic!("{what}: cannot spawn: {e}"));
    if !out.status.success() {
        panic!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out
}

/// rootfs with a static busybox and `true` linked to it.
fn make_rootfs(rootfs: &Path) {
    let busybox =
        std::env::var_os("BUSYBOX").map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from);
    assert!(
        busybox.is_file(),
        "{} not found: install busybox-static (sudo scripts/setup --deps-only)",
        busybox.display()
    );
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(rootfs.join(dir)).expect("create rootfs dirs");
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))
        .expect("chmod rootfs/tmp");
    fs::copy(&busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    fs::set_permissions(
        rootfs.join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod busybox");
    symlink("busybox", rootfs.join("bin/true")).expect("symlink bin/true");
    symlink("busybox", rootfs.join("bin/sh")).expect("symlink bin/sh");
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .expect("write etc/passwd");
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("write etc/group");
}

fn bench_start(c: &mut Criterion) {
    let fixture = Fixture::new();
    // fail fast with rcrun's own message rather than inside criterion's loop
    fixture.run_once();
    fixture.create_start_delete_once();

    let mut group = c.benchmark_group("start");
    group.sample_size(30);
    group.bench_function("run", |b| b.iter(|| fixture.run_once()));
    group.bench_function("create_start_delete", |b| {
        b.iter(|| fixture.create_start_delete_once())
    });
    group.finish();
}

criterion_group!(benches, bench_start);
criterion_main!(benches);
