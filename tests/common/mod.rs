//! Test bundles built from Debian's busybox-static, and a runner for the rcrun binary.
//! Each bundle has its own state root, so tests never see each other's containers.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The rcrun binary: $RCRUN_BIN (set when tests run as another user from a copy),
/// else the one cargo built.
pub fn rcrun() -> PathBuf {
    std::env::var_os("RCRUN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rcrun")))
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub state: tempfile::TempDir,
    /// A host directory (0777) bind-mounted at /data in the container.
    pub data: tempfile::TempDir,
}

fn install_busybox(rootfs: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "install busybox-static (scripts/setup does)"
    );
    for d in ["bin", "tmp", "etc", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
}

impl Bundle {
    /// A busybox bundle with rcrun's default spec (rootless unless we are root),
    /// non-interactive, running `args`.
    pub fn busybox(args: &[&str]) -> Self {
        let b = Bundle {
            dir: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            data: tempfile::tempdir().unwrap(),
        };
        std::fs::set_permissions(b.data.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        install_busybox(&b.dir.path().join("rootfs"));
        let mut spec = Command::new(rcrun());
        spec.args(["oci", "spec", "--bundle"]).arg(b.dir.path());
        if !is_root() {
            spec.arg("--rootless");
        }
        let out = spec.output().unwrap();
        assert!(
            out.status.success(),
            "spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = b.data.path().to_str().unwrap().to_string();
        b.edit(|c| {
            c["process"]["terminal"] = json!(false);
            c["process"]["args"] = json!(args);
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/data", "type": "bind", "source": data, "options": ["rbind"]}));
        });
        b
    }

    /// Like [`busybox`], always with a user namespace: rootless it is there already;
    /// as root, container ids 0..65536 map to host 300000.. .
    pub fn busybox_userns(args: &[&str]) -> Self {
        let b = Self::busybox(args);
        if is_root() {
            b.edit(|c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "user"}));
                let maps = json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
                c["linux"]["uidMappings"] = maps.clone();
                c["linux"]["gidMappings"] = maps;
            });
            // The rootfs must belong to the container's root, as with any runtime.
            chown_tree(&b.rootfs(), 300000);
        }
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.path().join("config.json")).unwrap()).unwrap()
    }

    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut c = self.config();
        f(&mut c);
        std::fs::write(
            self.path().join("config.json"),
            serde_json::to_vec_pretty(&c).unwrap(),
        )
        .unwrap();
    }

    /// The host id a container uid maps to, from the spec's uidMappings.
    pub fn host_uid(&self, container_uid: u64) -> u64 {
        let c = self.config();
        for m in c["linux"]["uidMappings"].as_array().into_iter().flatten() {
            let (cid, hid, size) = (
                m["containerID"].as_u64().unwrap(),
                m["hostID"].as_u64().unwrap(),
                m["size"].as_u64().unwrap(),
            );
            if container_uid >= cid && container_uid < cid + size {
                return hid + container_uid - cid;
            }
        }
        container_uid
    }

    /// `rcrun oci --root <state> ARGS…`
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(rcrun());
        c.arg("oci").arg("--root").arg(self.state.path()).args(args);
        c.stdin(std::process::Stdio::null());
        c
    }

    /// Runs a command, capturing its output in files: `create` and `run --detach` hand
    /// their stdio to the container, so pipes would stay open as long as it runs.
    pub fn oci(&self, args: &[&str]) -> Output {
        output_via_files(self.cmd(args))
    }

    /// `run --detach` of this bundle; panics unless it started.
    pub fn start_detached(&self, id: &str) {
        let out = self.oci(&[
            "run",
            "--detach",
            "--bundle",
            self.path().to_str().unwrap(),
            id,
        ]);
        assert!(
            out.status.success(),
            "run --detach {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Asserts that `out` is a refusal: exit 125, `needle` in stderr, and no
    /// container left in the state root.
    pub fn assert_refused(&self, out: &Output, needle: &str) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
        assert!(
            self.list().is_empty(),
            "state left behind: {:?}",
            self.list()
        );
    }

    /// Foreground `run` of this bundle.
    pub fn run(&self, id: &str) -> Output {
        self.oci(&["run", "--bundle", self.path().to_str().unwrap(), id])
    }

    pub fn status(&self, id: &str) -> String {
        let out = self.oci(&["state", id]);
        assert!(
            out.status.success(),
            "state {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["status"].as_str().unwrap().to_string()
    }

    pub fn list(&self) -> Vec<String> {
        let out = self.oci(&["list", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

pub fn chown_tree(path: &Path, id: u32) {
    std::os::unix::fs::lchown(path, Some(id), Some(id)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), id);
        }
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for id in self.list() {
            let _ = self.oci(&["delete", "--force", &id]);
        }
    }
}

pub fn output_via_files(mut cmd: Command) -> Output {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let status = cmd
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .unwrap();
    let read = |f: &mut std::fs::File| {
        let mut buf = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut buf).unwrap();
        buf
    };
    Output {
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Reads a pty master until `done` holds for what was read, EOF, or `limit`.
pub fn read_until(
    master: &mut std::fs::File,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    use std::io::Read;
    let mut seen = String::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 512];
    while !done(&seen) && Instant::now() < deadline {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(master),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) == 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    seen
}

/// Waits for `cond` with exponential backoff (1 ms doubling to 100 ms), up to `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
    cond()
}

/// Mounts a read-only overlay of `lowers` (top first) inside the user namespace, as
/// a container would see the image, and returns what `look` makes of its mountpoint.
pub fn inspect_merged(
    lowers: &[PathBuf],
    scratch: &Path,
    look: impl FnOnce(&Path) -> Result<String, String>,
) -> String {
    let mnt = scratch.join("merged-view");
    let out = scratch.join("merged-view.txt");
    std::fs::create_dir_all(&mnt).unwrap();
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // Decided out here: inside the namespace everyone is root.
    let userxattr = if is_root() { "" } else { ",userxattr" };
    let options = format!("lowerdir={lowerdir}{userxattr}");
    runtime::run_in_user_namespace("inspect the merged image", || {
        nix::mount::mount(
            Some("overlay"),
            &mnt,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(options.as_str()),
        )
        .map_err(|e| format!("mount overlay ({options}): {e}"))?;
        std::fs::write(&out, look(&mnt)?).map_err(|e| e.to_string())
    })
    .unwrap();
    std::fs::read_to_string(&out).unwrap()
}

/// The checkout (CARGO_MANIFEST_DIR is set by scripts/test when tests run elsewhere).
pub fn repo() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// The layout of a fixture image; fails (not skips) when it was not built.
pub fn fixture(name: &str) -> PathBuf {
    let out = Command::new(repo().join("scripts/fixtures"))
        .args(["path", name])
        .output()
        .expect("run scripts/fixtures");
    assert!(
        out.status.success(),
        "fixture {name} is not built: run `sudo scripts/fixtures build {name}` ({})",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A data directory of its own, removed (inside the user namespace) at the end.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// More environment for every rcrun command (and so for its infra).
    pub vars: Vec<(String, String)>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in self.ps(true) {
            self.rcrun(&["rm", "-f", c["id"].as_str().unwrap()]);
        }
        let _ = rcrun::images::remove_trees("clean up", &[self.data()]);
    }
}

impl Env {
    pub fn new() -> Self {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            vars: Vec::new(),
        };
        std::fs::create_dir(env.data()).unwrap();
        env
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(rcrun());
        // The network infra of a test's data dir goes soon after its last user.
        // Tests never ask the host's resolvers: no upstream unless a test sets one.
        c.env("RCRUN_DATA_DIR", self.data())
            .env("RCRUN_INFRA_LINGER", "1")
            .env("RCRUN_DNS_UPSTREAMS", "")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .args(args);
        c
    }

    pub fn rcrun(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.rcrun(args);
        assert!(
            out.status.success(),
            "rcrun {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and insists on exit code 125 with `needle` in the error.
    pub fn fails(&self, args: &[&str], needle: &str) {
        let out = self.rcrun(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "rcrun {args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "rcrun {args:?}: {stderr:?} lacks {needle:?}"
        );
    }

    /// Imports a fixture layout under `localhost/<name>:<tag>`.
    pub fn pull_fixture(&self, name: &str, tag: &str) {
        let link = self.dir.path().join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(fixture(name), &link).unwrap();
        }
        self.ok(&["pull", &format!("oci:{}:{tag}", link.display())]);
    }

    pub fn ps(&self, all: bool) -> Vec<Value> {
        let mut args = vec!["ps", "--format", "json"];
        if all {
            args.push("-a");
        }
        let out = self.rcrun(&args);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    pub fn images(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["images", "--format", "json"])).unwrap()
    }

    pub fn entries(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.data().join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
