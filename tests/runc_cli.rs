//! runc's command line beyond the lifecycle (tests/oci.rs): console sockets,
//! `exec --process`, `--cap`, `--preserve-fds`, `--keep`, `--no-pivot`, session
//! keyrings, `features`, `--version` and warnings in `--log`.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::{Bundle, stderr, stdout};
use serde_json::json;

/// Accepts one connection and receives the fd runc-style console sockets carry.
fn receive_console(listener: &UnixListener) -> (String, OwnedFd) {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut fd = None;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel installed this fd for us.
            fd = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        }
    }
    let len = msg.bytes;
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    (name, fd.expect("the console socket message carries an fd"))
}

/// Reads from a pty master until `needle` shows up (or 10 s pass).
fn read_until(master: &mut std::fs::File, needle: &str) -> String {
    common::read_until(master, Duration::from_secs(10), |seen| {
        seen.contains(needle)
    })
}

#[test]
fn console_socket_receives_a_working_pty() {
    let b = Bundle::busybox(&["sh", "-c", "tty; read line; echo got:$line"]);
    b.edit(|c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["consoleSize"] = json!({"height": 33, "width": 101});
    });
    let sock = b.state.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let bundle = b.path().to_str().unwrap();
    let out = b.oci(&[
        "create",
        "--bundle",
        bundle,
        "--console-socket",
        sock.to_str().unwrap(),
        "con",
    ]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let (name, master) = receive_console(&listener);
    assert!(name.starts_with("/dev/pts/"), "{name:?}");
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) },
        0
    );
    assert_eq!((ws.ws_row, ws.ws_col), (33, 101), "consoleSize applies");
    let mut master = std::fs::File::from(master);
    let out = b.oci(&["start", "con"]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    let seen = read_until(&mut master, "/dev/pts/");
    assert!(
        seen.contains("/dev/pts/0"),
        "the process's stdio is the pty: {seen:?}"
    );
    master.write_all(b"hello\n").unwrap();
    let seen = read_until(&mut master, "got:hello");
    assert!(
        seen.contains("got:hello"),
        "input reaches the process: {seen:?}"
    );
    assert!(common::wait_until(Duration::from_secs(10), || b
        .status("con")
        == "stopped"));
}

#[test]
fn exec_hands_its_terminal_to_a_console_socket() {
    let b = Bundle::busybox(&["sleep", "30"]);
    b.start_detached("host");
    let sock = b.state.path().join("exec.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let out = b.oci(&[
        "exec",
        "--tty",
        "--detach",
        "--console-socket",
        sock.to_str().unwrap(),
        "host",
        "sh",
        "-c",
        "tty; sleep 5",
    ]);
    assert!(out.status.success(), "exec: {}", stderr(&out));
    let (_, master) = receive_console(&listener);
    let seen = read_until(&mut std::fs::File::from(master), "/dev/pts/");
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
}

#[test]
fn console_socket_errors_leave_nothing_behind() {
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let bundle = b.path().to_str().unwrap();
    let missing = b.state.path().join("no-such.sock");
    let out = b.oci(&[
        "create",
        "--bundle",
        bundle,
        "--console-socket",
        missing.to_str().unwrap(),
        "c1",
    ]);
    b.assert_refused(&out, "no-such.sock");
    assert!(stderr(&out).contains("console socket"), "{}", stderr(&out));
    let out = b.oci(&["create", "--bundle", bundle, "c2"]);
    b.assert_refused(&out, "--console-socket");
    b.edit(|c| c["process"]["terminal"] = json!(false));
    let listener_path = b.state.path().join("unused.sock");
    let _listener = UnixListener::bind(&listener_path).unwrap();
    let out = b.oci(&[
        "create",
        "--bundle",
        bundle,
        "--console-socket",
        listener_path.to_str().unwrap(),
        "c3",
    ]);
    b.assert_refused(&out, "terminal is false");
}

#[test]
fn exec_process_file_and_capabilities() {
    let b = Bundle::busybox(&["sleep", "30"]);
    b.start_detached("box");
    let process = b.state.path().join("process.json");
    std::fs::write(
        &process,
        json!({
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "echo $GREETING; pwd"],
            "env": ["PATH=/bin", "GREETING=from-process-json"],
            "cwd": "/tmp",
            "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]}
        })
        .to_string(),
    )
    .unwrap();
    let out = b.oci(&["exec", "--process", process.to_str().unwrap(), "box"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from-process-json\n/tmp\n");
    // --cap adds to the sets: CAP_NET_RAW is bit 13.
    let cap_eff = |extra: &[&str]| {
        let mut args = vec!["exec", "--process", process.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push("box");
        std::fs::write(
            &process,
            json!({
                "user": {"uid": 0, "gid": 0}, "cwd": "/",
                "args": ["sh", "-c", "grep CapEff /proc/self/status"],
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]}
            })
            .to_string(),
        )
        .unwrap();
        let out = b.oci(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let hex = stdout(&out).split_whitespace().nth(1).unwrap().to_string();
        u64::from_str_radix(&hex, 16).unwrap()
    };
    assert_eq!(cap_eff(&[]), 1 << 0);
    assert_eq!(cap_eff(&["--cap", "CAP_NET_RAW"]), (1 << 0) | (1 << 13));
    let out = b.oci(&["exec", "--cap", "CAP_MADE_UP", "box", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("CAP_MADE_UP"), "{}", stderr(&out));
}

#[test]
fn malformed_process_json_is_an_error() {
    let b = Bundle::busybox(&["sleep", "30"]);
    b.start_detached("box");
    let process = b.state.path().join("process.json");
    std::fs::write(&process, r#"{"args": ["true"], "cwd": 7}"#).unwrap();
    let out = b.oci(&["exec", "--process", process.to_str().unwrap(), "box"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("process.json")
            && stderr(&out).contains("not a runtime-spec process"),
        "{}",
        stderr(&out)
    );
    let out = b.oci(&["exec", "--process", "/nonexistent/p.json", "box"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("/nonexistent/p.json"),
        "{}",
        stderr(&out)
    );
    let out = b.oci(&["exec", "box"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("--process"), "{}", stderr(&out));
}

#[test]
fn preserve_fds_passes_exactly_those_fds() {
    let b = Bundle::busybox(&["sh", "-c", "echo preserved >&3; ls /proc/$$/fd; true"]);
    let sink = tempfile::NamedTempFile::new().unwrap();
    let run = |preserve: &str, id: &str| {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(sink.path())
            .unwrap();
        let mut cmd = b.cmd(&[
            "run",
            "--preserve-fds",
            preserve,
            "--bundle",
            b.path().to_str().unwrap(),
            id,
        ]);
        let raw = file.as_raw_fd();
        // SAFETY: dup2 in the child before exec; fd 3 without close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = common::output_via_files(cmd);
        drop(file);
        out
    };
    let out = run("1", "keeps");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(sink.path()).unwrap(), "preserved\n");
    let fds: Vec<String> = stdout(&out)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(fds.contains(&"3".to_string()), "fd 3 is passed: {fds:?}");
    assert!(!fds.contains(&"4".to_string()), "nothing more: {fds:?}");
    let out = run("0", "drops");
    assert!(
        !stdout(&out).split_whitespace().any(|f| f == "3"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read_to_string(sink.path()).unwrap(), "preserved\n");
    let out = run("3", "too-many");
    b.assert_refused(&out, "fd 4 is not open");
}

#[test]
fn run_keep_leaves_a_stopped_container_and_no_pivot_runs() {
    let b = Bundle::busybox(&["sh", "-c", "ls /; exit 3"]);
    let bundle = b.path().to_str().unwrap();
    let out = b.oci(&["run", "--keep", "--no-pivot", "--bundle", bundle, "kept"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("bin"), "{}", stdout(&out));
    assert_eq!(b.status("kept"), "stopped");
    let out = b.oci(&["delete", "kept"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.oci(&["run", "--bundle", bundle, "gone"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(b.list().is_empty());
    let out = b.oci(&["run", "--keep", "--detach", "--bundle", bundle, "both"]);
    assert_eq!(out.status.code(), Some(125));
}

/// Adds a key that only possessors of our session keyring may see.
fn possessor_only_key(description: &str) {
    const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
    const KEYCTL_SETPERM: libc::c_long = 5;
    let kind = std::ffi::CString::new("user").unwrap();
    let desc = std::ffi::CString::new(description).unwrap();
    // SAFETY: add_key and keyctl with valid strings and payload.
    let id = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            b"x".as_ptr(),
            1usize,
            KEY_SPEC_SESSION_KEYRING,
        )
    };
    assert!(id > 0, "add_key: {}", std::io::Error::last_os_error());
    let ret = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_SETPERM, id, 0x3f00_0000u32) };
    assert_eq!(ret, 0, "setperm: {}", std::io::Error::last_os_error());
}

#[test]
fn containers_get_their_own_session_keyring_unless_told_not_to() {
    let description = format!("rcrun-test-{}", std::process::id());
    possessor_only_key(&description);
    assert!(
        std::fs::read_to_string("/proc/keys")
            .unwrap()
            .contains(&description)
    );
    let b = Bundle::busybox(&["cat", "/proc/keys"]);
    b.edit(|c| {
        let masked = c["linux"]["maskedPaths"].as_array_mut().unwrap();
        masked.retain(|p| p != "/proc/keys");
    });
    let bundle = b.path().to_str().unwrap();
    let out = b.oci(&["run", "--bundle", bundle, "fresh"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("_ses"), "{}", stdout(&out));
    assert!(!stdout(&out).contains(&description), "{}", stdout(&out));
    let out = b.oci(&["run", "--no-new-keyring", "--bundle", bundle, "shared"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&description), "{}", stdout(&out));
}

#[test]
fn delete_force_of_a_missing_container_succeeds_as_with_runc() {
    let b = Bundle::busybox(&["true"]);
    let out = b.oci(&["delete", "--force", "ghost"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.oci(&["delete", "ghost"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("ghost"), "{}", stderr(&out));
}

#[test]
fn features_and_version_describe_rcrun() {
    let b = Bundle::busybox(&["true"]);
    let out = b.oci(&["features"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    let max = f["ociVersionMax"].as_str().unwrap().to_string();
    let caps = f["linux"]["capabilities"].as_array().unwrap();
    assert!(
        caps.contains(&json!("CAP_SYS_ADMIN")) && caps.contains(&json!("CAP_CHECKPOINT_RESTORE"))
    );
    assert!(
        f["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!("user"))
    );
    assert!(
        f["mountOptions"]
            .as_array()
            .unwrap()
            .contains(&json!("rbind"))
    );
    let out = b.oci(&["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().starts_with("rcrun-oci version "),
        "{text}"
    );
    assert_eq!(
        lines.next(),
        Some(format!("spec: {max}").as_str()),
        "{text}"
    );
}

#[test]
fn warnings_go_to_the_log_not_to_the_containers_stderr() {
    let b = Bundle::busybox(&["true"]);
    b.edit(|c| c["linux"]["intelRdt"] = json!({"closID": "x"}));
    let log = b.state.path().join("log.json");
    let out = b.oci(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        "warned",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("intelRdt"), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["level"], "warning");
    assert!(line["msg"].as_str().unwrap().contains("intelRdt"), "{line}");
    assert!(
        line["time"].as_str().is_some_and(|t| t.contains('T')),
        "{line}"
    );
}

#[test]
fn ps_lists_the_containers_processes_as_a_table_and_as_json() {
    let b = Bundle::busybox(&["sh", "-c", "sleep 30 & wait"]);
    b.start_detached("procs");
    let json_pids = || -> Vec<i64> {
        let out = b.oci(&["ps", "--format", "json", "procs"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert!(common::wait_until(Duration::from_secs(10), || json_pids()
        .len()
        == 2));
    let out = b.oci(&["ps", "procs"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("UID"), "{table}");
    assert!(table.contains("sleep 30"), "{table}");
    for pid in json_pids() {
        assert!(table.contains(&format!(" {pid} ")), "{pid} in {table}");
    }
    let out = b.oci(&["ps", "ghost"]);
    assert_eq!(out.status.code(), Some(125));
}
