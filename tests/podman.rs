//! Debian's podman drives rcrun through `--runtime rcrun-oci`: run, exec (with a
//! terminal, through a console socket), stop and rm, as root and rootless. Each
//! test has its own podman storage, run root and rcrun state root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture, is_root, stderr, stdout};

struct Podman {
    dir: tempfile::TempDir,
    /// The rcrun-oci link podman runs.
    runtime: PathBuf,
}

impl Podman {
    fn new() -> Self {
        assert!(
            Path::new("/usr/bin/podman").exists(),
            "install podman (scripts/setup does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("bin/rcrun-oci");
        std::fs::create_dir_all(runtime.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(common::rcrun(), &runtime).unwrap();
        for sub in ["xdg", "config/containers"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::set_permissions(
            dir.path().join("xdg"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let p = Podman { dir, runtime };
        let layout = fixture("busybox");
        let out = p.podman(&["pull", "-q", &format!("oci:{}:1.35", layout.display())]);
        assert!(out.status.success(), "pull: {}", stderr(&out));
        let id = stdout(&out).trim().to_string();
        let out = p.podman(&["tag", &id, "localhost/busybox:1.35"]);
        assert!(out.status.success(), "tag: {}", stderr(&out));
        p
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// rcrun's state root for podman's containers: its default, since podman's
    /// cleanup (`podman container cleanup`) does not pass `--runtime-flag`s on.
    fn oci_root(&self) -> PathBuf {
        if is_root() {
            PathBuf::from("/run/rcrun/oci")
        } else {
            self.path("xdg/rcrun/oci")
        }
    }

    /// rcrun's state of podman's container `name`, if rcrun has it.
    fn oci_state(&self, name: &str) -> Option<serde_json::Value> {
        let id = stdout(&self.podman(&["inspect", "--format", "{{.Id}}", name]));
        let out = Command::new(&self.runtime)
            .arg("--root")
            .arg(self.oci_root())
            .args(["state", id.trim()])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        // This host has no systemd and hybrid cgroups: cgroupfs, file events.
        c.env("XDG_RUNTIME_DIR", self.path("xdg"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_DATA_HOME", self.path("data"))
            .arg("--root")
            .arg(self.path("storage"))
            .arg("--runroot")
            .arg(self.path("xdg/runroot"))
            // Root's podman keeps exit files and events under /run/libpod by
            // default, shared by every instance (and emptied by `system reset`).
            .arg("--tmpdir")
            .arg(self.path("xdg/libpod-tmp"))
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args)
            .stdin(std::process::Stdio::null());
        c
    }

    fn podman(&self, args: &[&str]) -> Output {
        common::output_via_files(self.command(args))
    }

    /// `podman run` options every test needs on this host: no network stack
    /// (rootless podman's would need slirp4netns and the host's resolver), and
    /// the caller's open-files limit, which a root without CAP_SYS_RESOURCE
    /// cannot raise to podman's default.
    fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "run",
            "--network",
            "none",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ];
        args.extend_from_slice(extra);
        args
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Rootless podman keeps its user namespace alive with a pause process;
        // `system reset` removes its pid file, and may start another.
        let pause_pids = || -> Vec<i32> {
            ["xdg/libpod-tmp/pause.pid", "xdg/libpod/tmp/pause.pid"]
                .iter()
                .filter_map(|f| std::fs::read_to_string(self.path(f)).ok())
                .filter_map(|pid| pid.trim().parse().ok())
                .collect()
        };
        let mut pauses = pause_pids();
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        let _ = self.podman(&["system", "reset", "-f"]);
        pauses.extend(pause_pids());
        for pid in pauses {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Files of subordinate ids: removed inside our own user namespace.
        let _ = rcrun::images::remove_trees(
            "remove podman's test storage",
            &[self.dir.path().to_path_buf()],
        );
    }
}

#[test]
fn podman_runs_execs_stops_and_removes_containers() {
    let p = Podman::new();
    let out = p.podman(&Podman::run_args(&[
        "--rm",
        "localhost/busybox:1.35",
        "sh",
        "-c",
        "echo hello from $(cat /proc/1/comm); exit 3",
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from sh\n");

    let out = p.podman(&Podman::run_args(&[
        "-d",
        "--name",
        "svc",
        "localhost/busybox:1.35",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 0.1; done",
    ]));
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    let out = p.podman(&["inspect", "--format", "{{.OCIRuntime}}", "svc"]);
    assert_eq!(stdout(&out).trim(), p.runtime.to_str().unwrap());
    // rcrun itself holds the container.
    let state = p.oci_state("svc").expect("rcrun knows the container");
    assert_eq!(state["status"], "running", "{state}");

    let out = p.podman(&["exec", "svc", "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    let out = p.podman(&["stop", "-t", "10", "svc"]);
    assert!(out.status.success(), "stop: {}", stderr(&out));
    let out = p.podman(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        "svc",
    ]);
    assert_eq!(stdout(&out).trim(), "exited 0", "{}", stderr(&out));
    let id = stdout(&p.podman(&["inspect", "--format", "{{.Id}}", "svc"]));
    let out = p.podman(&["rm", "svc"]);
    assert!(out.status.success(), "rm: {}", stderr(&out));
    let out = p.podman(&["ps", "-aq"]);
    assert_eq!(stdout(&out), "");
    let state = p.oci_root().join(id.trim());
    assert!(
        !state.exists(),
        "rcrun's state {} is gone too",
        state.display()
    );
}

#[test]
fn podman_gives_a_terminal_and_kills_with_a_signal() {
    let p = Podman::new();
    let out = p.podman(&Podman::run_args(&[
        "--rm",
        "-t",
        "localhost/busybox:1.35",
        "tty",
    ]));
    assert!(out.status.success(), "run -t: {}", stderr(&out));
    assert!(stdout(&out).starts_with("/dev/pts/"), "{}", stdout(&out));
    let out = p.podman(&Podman::run_args(&[
        "-d",
        "--name",
        "sleeper",
        "localhost/busybox:1.35",
        "sleep",
        "300",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.podman(&["kill", "-s", "KILL", "sleeper"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    let out = p.podman(&["wait", "sleeper"]);
    assert_eq!(stdout(&out).trim(), "137", "{}", stderr(&out));
    if !is_root() {
        // Rootless podman runs rcrun inside its own user namespace, as root there.
        let out = p.podman(&Podman::run_args(&[
            "--rm",
            "localhost/busybox:1.35",
            "cat",
            "/proc/self/uid_map",
        ]));
        let text = stdout(&out);
        let first: Vec<&str> = text.split_whitespace().take(3).collect();
        assert_eq!(
            first[..2],
            ["0", &nix::unistd::getuid().to_string()],
            "{}",
            stdout(&out)
        );
    }
}
