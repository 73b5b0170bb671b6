//! Debian's containerd runs containers through its runc shim with BinaryName set
//! to rcrun-oci (`ctr run --runc-binary`), as root: containerd needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use common::{fixture, is_root, stderr, stdout};

struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    runtime: PathBuf,
}

impl Containerd {
    fn start() -> Self {
        assert!(
            Path::new("/usr/bin/containerd").exists(),
            "install containerd (scripts/setup does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/containerd.sock\"\n[ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let runtime = dir.path().join("bin/rcrun-oci");
        std::fs::create_dir_all(runtime.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(common::rcrun(), &runtime).unwrap();
        let c = Containerd {
            dir,
            daemon,
            runtime,
        };
        assert!(
            common::wait_until(Duration::from_secs(20), || c
                .ctr(&["version"])
                .status
                .success()),
            "containerd did not come up: {}",
            std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
        );
        let archive = c.dir.path().join("busybox.tar");
        let tar = Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(fixture("busybox"))
            .arg(".")
            .status()
            .unwrap();
        assert!(tar.success());
        let out = c.ctr(&[
            "images",
            "import",
            "--base-name",
            "localhost/busybox",
            archive.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "import: {}", stderr(&out));
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", "rcrun-test"])
            .args(args)
            .stdin(std::process::Stdio::null());
        common::output_via_files(cmd)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for task in stdout(&self.ctr(&["tasks", "ls", "-q"])).lines() {
            let _ = self.ctr(&["tasks", "kill", "-s", "KILL", task]);
            let _ = self.ctr(&["tasks", "rm", "-f", task]);
        }
        for container in stdout(&self.ctr(&["containers", "ls", "-q"])).lines() {
            let _ = self.ctr(&["containers", "rm", container]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // The shim's rootfs mounts are gone with the tasks; anything left would keep
        // the temp dir from being removed.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("state"))
            .output();
    }
}

#[test]
fn containerd_runs_a_container_through_rcrun() {
    if !is_root() {
        eprintln!("containerd runs only as root; this test is part of the root phase");
        return;
    }
    let c = Containerd::start();
    let binary = c.runtime.to_str().unwrap();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        binary,
        "localhost/busybox:1.35",
        "once",
        "sh",
        "-c",
        "echo hello from $(cat /proc/1/comm); exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from sh\n");

    let out = c.ctr(&[
        "run",
        "-d",
        "--runc-binary",
        binary,
        "localhost/busybox:1.35",
        "long",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    let out = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "long",
        "sh",
        "-c",
        "echo exec in $(cat /proc/1/comm)",
    ]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "exec in sleep\n");
    let out = c.ctr(&["tasks", "ps", "long"]);
    assert!(out.status.success(), "ps: {}", stderr(&out));
    let out = c.ctr(&["tasks", "kill", "-s", "KILL", "long"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    assert!(common::wait_until(Duration::from_secs(10), || {
        stdout(&c.ctr(&["tasks", "ls"])).contains("STOPPED")
    }));
    let out = c.ctr(&["tasks", "rm", "long"]);
    assert!(out.status.success(), "tasks rm: {}", stderr(&out));
    let out = c.ctr(&["containers", "rm", "long"]);
    assert!(out.status.success(), "containers rm: {}", stderr(&out));
}
