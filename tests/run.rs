//! `rcrun pull/images/run/ps/logs/stop/kill/rm/exec/inspect/rmi/gc` on real images
//! (scripts/fixtures builds them from Debian packages), each test with its own data
//! directory.

mod common;

use std::path::Path;
use std::process::Output;

use serde_json::Value;

const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

use common::{Env, fixture};

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn busybox_runs_with_exit_codes_and_rm_leaves_nothing() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    let images = env.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["names"][0], "localhost/busybox:1.35");

    assert_eq!(
        env.ok(&["run", "--rm", "busybox:1.35", "echo", "hi"]),
        "hi\n"
    );
    let out = env.rcrun(&["run", "--rm", "busybox:1.35", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = env.rcrun(&["run", "--rm", "busybox:1.35", "no-such-program"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(env.ps(true).is_empty(), "--rm left {:?}", env.ps(true));
    assert!(env.entries("containers").is_empty());
}

#[test]
fn flags_shape_the_process_and_writes_stay_in_the_container() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let envfile = env.dir.path().join("envfile");
    std::fs::write(&envfile, "FROM_FILE=yes\n").unwrap();
    let volume = format!("{}:/data", shared.path().display());
    let out = env.ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hello",
        "--env-file",
        envfile.to_str().unwrap(),
        "-w",
        "/tmp/work",
        "-u",
        "1000:1000",
        "-v",
        &volume,
        "--hostname",
        "box",
        "busybox:1.35",
        "sh",
        "-c",
        "echo $GREETING $FROM_FILE; pwd; id -u; id -g; hostname; echo written > /data/out",
    ]);
    assert_eq!(out, "hello yes\n/tmp/work\n1000\n1000\nbox\n");
    assert_eq!(
        std::fs::read_to_string(shared.path().join("out")).unwrap(),
        "written\n"
    );

    // The rootfs is per container: a write is not seen by the next one.
    env.ok(&[
        "run",
        "--name",
        "writer",
        "busybox:1.35",
        "sh",
        "-c",
        "echo x > /bin/marker",
    ]);
    let out = env.rcrun(&["run", "--rm", "busybox:1.35", "cat", "/bin/marker"]);
    assert_eq!(out.status.code(), Some(1), "a write leaked into the image");
    let out = env.rcrun(&["run", "--rm", "--read-only", "busybox:1.35", "touch", "/x"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "--read-only rootfs was writable"
    );
    let writer = env.ps(true);
    assert_eq!(writer.len(), 1);
    assert_eq!(writer[0]["status"], "exited (0)");
    assert_eq!(writer[0]["exit_code"], 0);
}

#[test]
fn redis_runs_as_its_user_with_its_entrypoint() {
    let env = Env::new();
    env.pull_fixture("redis", "7.0");
    let version = env.ok(&["run", "--rm", "redis:7.0", "--version"]);
    assert!(version.starts_with("Redis server v=7.0"), "{version}");
    let id = env.ok(&["run", "--rm", "--entrypoint", "id", "redis:7.0"]);
    assert!(id.starts_with("uid=100(redis) gid=101(redis)"), "{id}");
    let owner = env.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "stat",
        "redis:7.0",
        "-c",
        "%U:%G",
        "/var/lib/redis",
    ]);
    assert_eq!(owner, "redis:redis\n");
}

#[test]
fn detached_containers_log_exec_stop_and_remove() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "busybox:1.35",
        "sh",
        "-c",
        "echo started; exec sleep 1000",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");
    let running = env.ps(false);
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0]["name"], "srv");
    assert_eq!(running[0]["status"], "running");

    assert!(
        common::wait_until(WAIT, || {
            stdout_of(&env.rcrun(&["logs", "srv"])).contains("started")
        }),
        "the log never showed the output"
    );
    assert_eq!(
        env.ok(&["exec", "srv", "cat", "/etc/hostname"]),
        format!("{}\n", &id[..12])
    );
    let out = env.rcrun(&["exec", "srv", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));

    // A second container cannot take the name; the first is untouched.
    env.fails(
        &["run", "-d", "--name", "srv", "busybox:1.35", "true"],
        "already in use",
    );
    assert_eq!(env.ps(true).len(), 1);

    env.fails(&["rm", "srv"], "is running");
    // sleep as pid 1 ignores SIGTERM: stop falls back to SIGKILL.
    env.ok(&["stop", "-t", "1", "srv"]);
    let all = env.ps(true);
    assert_eq!(all[0]["status"], "exited (137)", "{all:?}");
    let inspect: Value = serde_json::from_str(&env.ok(&["inspect", "srv"])).unwrap();
    assert_eq!(inspect[0]["exit_code"], 137);
    assert_eq!(inspect[0]["running"], false);
    env.ok(&["rm", "srv"]);
    assert!(env.ps(true).is_empty());
    assert!(env.entries("containers").is_empty());
}

#[test]
fn rm_force_kills_a_running_container() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "busybox:1.35",
        "sleep",
        "1000",
    ]);
    let pid = env.ps(false)[0]["pid"].as_i64().expect("a running pid");
    env.ok(&["rm", "-f", "busy"]);
    assert!(env.ps(true).is_empty());
    assert!(env.entries("containers").is_empty());
    assert!(
        common::wait_until(WAIT, || {
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        }),
        "the container's process outlived rm -f"
    );
}

#[test]
fn detached_rm_removes_itself_on_exit() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env.ok(&[
        "run",
        "-d",
        "--rm",
        "--name",
        "brief",
        "busybox:1.35",
        "true",
    ]);
    assert!(
        common::wait_until(WAIT, || {
            env.ps(true).is_empty() && env.entries("containers").is_empty()
        }),
        "the --rm container did not remove itself"
    );
}

#[test]
fn bad_input_fails_cleanly() {
    let env = Env::new();
    env.fails(
        &["run", "--rm", "oci:/nonexistent/layout:1", "true"],
        "nonexistent",
    );
    env.fails(&["run", "--rm", "localhost/never-pulled:1"], "");
    env.pull_fixture("busybox", "1.35");
    env.fails(
        &[
            "run",
            "--rm",
            "-v",
            "/no/such/dir:/data",
            "busybox:1.35",
            "true",
        ],
        "does not exist",
    );
    env.fails(
        &["run", "--rm", "--name", "bad/name", "busybox:1.35", "true"],
        "invalid container name",
    );
    env.fails(
        &["run", "--rm", "-u", "nobody-here", "busybox:1.35", "true"],
        "unable to find user",
    );
    env.fails(
        &[
            "run",
            "--rm",
            "--network",
            "bridge0",
            "busybox:1.35",
            "true",
        ],
        "network \"bridge0\" not found",
    );
    env.fails(&["logs", "no-such-container"], "no such container");
    env.fails(&["rmi", "localhost/never-pulled:1"], "no such image");
    assert!(env.ps(true).is_empty(), "a failed run left a container");
    assert!(env.entries("containers").is_empty());
}

#[test]
fn rmi_gc_and_shared_layers() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env.pull_fixture("redis", "7.0");
    env.ok(&["run", "--name", "keep", "busybox:1.35", "true"]);
    env.fails(&["rmi", "busybox:1.35"], "in use by container(s) keep");
    env.ok(&["rm", "keep"]);
    let out = env.ok(&["rmi", "busybox:1.35"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert_eq!(env.images().len(), 1);
    // The redis image is intact and still runs after gc.
    env.ok(&["gc"]);
    assert!(
        env.ok(&["run", "--rm", "redis:7.0", "--version"])
            .contains("v=7.0")
    );
    env.ok(&["rmi", "redis:7.0"]);
    assert!(
        env.entries("snapshots").is_empty(),
        "{:?}",
        env.entries("snapshots")
    );
    assert!(env.entries("blobs/sha256").is_empty());
}

#[test]
fn concurrent_pulls_of_one_image_both_succeed() {
    let env = Env::new();
    let link = env.dir.path().join("redis");
    std::os::unix::fs::symlink(fixture("redis"), &link).unwrap();
    let reference = format!("oci:{}:7.0", link.display());
    let children: Vec<_> = (0..2)
        .map(|_| {
            env.cmd(&["pull", &reference])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let images = env.images();
    assert_eq!(images.len(), 1);
    let layers = images[0]["layers"].as_array().unwrap().len();
    assert_eq!(
        env.entries("snapshots").len(),
        layers,
        "{:?}",
        env.entries("snapshots")
    );
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "--entrypoint",
            "cat",
            "redis:7.0",
            "/etc/hostname"
        ])
        .len(),
        13
    );
}

#[test]
fn gc_removes_what_a_crashed_rcrun_left_behind() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    env.ok(&["run", "--name", "kept", "busybox:1.35", "true"]);
    // What a kill -9 mid-pull or mid-run leaves: a half-unpacked snapshot, a partial
    // ingest, an unrecorded container directory, an unreferenced blob.
    let data = env.data();
    std::fs::create_dir_all(data.join("snapshots/.prep-deadbeef-1-0/fs")).unwrap();
    std::fs::write(data.join("ingest/partial"), b"half a layer").unwrap();
    std::fs::create_dir_all(data.join("containers/0123456789abcdef/upper")).unwrap();
    let stray = data.join("blobs/sha256").join("ab".repeat(32));
    std::fs::write(&stray, b"unreferenced").unwrap();
    let out = env.ok(&["gc"]);
    assert!(out.contains("removed 1 blobs"), "{out}");
    assert!(!data.join("snapshots/.prep-deadbeef-1-0").exists());
    assert!(!data.join("ingest/partial").exists());
    assert!(!data.join("containers/0123456789abcdef").exists());
    assert!(!stray.exists());
    // What is in use stays: the image runs and the stopped container is intact.
    assert_eq!(
        env.ok(&["run", "--rm", "busybox:1.35", "echo", "still"]),
        "still\n"
    );
    assert_eq!(env.ps(true).len(), 1);
    assert_eq!(env.entries("containers").len(), 1);
}

#[test]
fn the_copy_fallback_runs_containers_without_overlay() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    let run = |args: &[&str]| {
        let out = env.cmd(args).env("RCRUN_ROOTFS", "copy").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout_of(&out)
    };
    assert_eq!(
        run(&[
            "run",
            "--name",
            "one",
            "busybox:1.35",
            "sh",
            "-c",
            "echo x > /bin/marker; cat /bin/marker"
        ]),
        "x\n"
    );
    // The copy is the container's own: the image and the next container are untouched.
    let out = env
        .cmd(&["run", "--rm", "busybox:1.35", "cat", "/bin/marker"])
        .env("RCRUN_ROOTFS", "copy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rootfs = env
        .data()
        .join("containers")
        .join(env.ps(true)[0]["id"].as_str().unwrap())
        .join("rootfs");
    assert!(
        rootfs.join("bin/marker").exists(),
        "the write is not in the container's copy"
    );
    assert!(rootfs.join("bin/busybox").is_file());
    env.ok(&["rm", "one"]);
    assert!(env.entries("containers").is_empty());
    let out = env
        .cmd(&["run", "--rm", "busybox:1.35", "true"])
        .env("RCRUN_ROOTFS", "zfs")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn run_t_gives_an_interactive_terminal_that_follows_the_window_size() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    let size = |rows, cols| nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size(40, 120)), None).unwrap();
    let mut cmd = env.cmd(&[
        "run",
        "--rm",
        "-it",
        "busybox:1.35",
        "sh",
        "-c",
        "stty size; while read line; do echo \"$line: $(stty size)\"; done; echo bye",
    ]);
    let slave = std::fs::File::from(pty.slave);
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and TIOCSCTTY in the child before exec: the pty becomes
    // rcrun's controlling terminal, as in an interactive shell.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let seen = common::read_until(&mut master, WAIT, |s| s.contains("40 120"));
    assert!(
        seen.contains("40 120"),
        "the window size at start: {seen:?}"
    );
    // Resizing our terminal sends rcrun SIGWINCH; it passes the size on.
    // SAFETY: TIOCSWINSZ with a valid winsize.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size(50, 132)) },
        0
    );
    let mut resized = false;
    for n in 0..50 {
        master.write_all(format!("probe{n}\n").as_bytes()).unwrap();
        let seen = common::read_until(&mut master, WAIT, |s| {
            s.contains(&format!("probe{n}: ")) && s.ends_with('\n')
        });
        if seen.contains(&format!("probe{n}: 50 132")) {
            resized = true;
            break;
        }
    }
    assert!(resized, "the container never saw 50 rows and 132 columns");
    master.write_all(b"\x04").unwrap();
    let seen = common::read_until(&mut master, WAIT, |s| s.contains("bye"));
    assert!(
        seen.contains("bye"),
        "EOF from the terminal ends the read loop: {seen:?}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn resource_flags_reach_the_cgroup_or_are_named_in_one_warning() {
    let env = Env::new();
    env.pull_fixture("busybox", "1.35");
    let run = |extra: &[&str], vars: &[(&str, &str)]| {
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["busybox:1.35", "echo", "ran"]);
        env.cmd(&args).envs(vars.iter().copied()).output().unwrap()
    };
    let limits = ["--memory", "64m", "--pids-limit", "50", "--cpus", "0.5"];
    let out = run(&limits, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_of(&out), "ran\n");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if err.contains("not applied") {
        // No usable cgroup v2 tree for these controllers (this CI host: rootless has
        // none delegated; root finds memory and pids bound to v1): one warning, naming
        // them, and RCRUN_CGROUPS=required turns it into an error.
        assert_eq!(err.matches("warning").count(), 1, "{err}");
        assert!(err.contains("memory") && err.contains("pids"), "{err}");
        let out = run(&limits, &[("RCRUN_CGROUPS", "required")]);
        assert_eq!(out.status.code(), Some(125));
        assert!(!stdout_of(&out).contains("ran"));
        assert!(env.ps(true).is_empty(), "{:?}", env.ps(true));
    }
    // Enforcement itself is shown in the vm-tests guest (scenario run-limits).
    for (flags, needle) in [
        (&["--memory", "12x"][..], "--memory \"12x\""),
        (&["--memory-swap", "1g"][..], "needs --memory"),
        (&["--pids-limit", "0"][..], "--pids-limit 0"),
        (&["--cpus", "0"][..], "--cpus \"0\""),
    ] {
        let out = run(flags, &[]);
        assert_eq!(out.status.code(), Some(125), "{flags:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{flags:?}: {err}");
        assert!(!stdout_of(&out).contains("ran"));
    }
    assert!(env.ps(true).is_empty());
}
